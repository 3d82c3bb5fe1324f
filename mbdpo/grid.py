"""Grids of online runs (tasks x seeds) on Hydra's multirun, for scripts/online_parallel_train.py.

The launcher writes ``grid.json`` into the sweep folder and starts Hydra with one job per
(task, seed) (``task=a,b seed=1,2``), or with job_mode=task one job per task training its seeds
together in one process (``task=a,b seeds=[1,2]``); Hydra's launcher plugin (joblib here,
submitit on Slurm) runs them. Each job is :func:`run_job`: an ordinary run folder trained with ``resume=true``, its
console in ``<run>/console.log``, its outcome in ``<run>/grid_status.json``. What Hydra does
not do, and is written here: a GPU slot per job (file locks, at most ``workers_per_gpu`` jobs on
a GPU), skipping runs that finished, one stop for the whole grid (Ctrl-C / SIGTERM reach the
launcher, which passes one SIGTERM to each running job: each saves and stops, the jobs not yet
started do not start), and the table and merged curves at the end.
"""
from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import signal
import time
import traceback

from mbdpo.trainers.base import SignalHandler, StopAtOnce

GRID = "grid.json"
STATUS = "grid_status.json"
STOP = "STOP"          # in the sweep folder: the grid was asked to stop
RUNNING = "running"    # in the sweep folder: <pid> files of the jobs running now
STOPPED = "stopped by a signal; a re-run resumes it"


def steps_for(task: str, steps: dict) -> int:
    """The environment steps of ``task``: dmc_steps, metaworld_steps or default_steps."""
    from mbdpo.tasks import get_task
    suite = get_task(task).suite
    return int(steps["dmc" if suite == "dmcontrol" else
                     "metaworld" if suite == "metaworld" else "default"])


def read_status(folder: str) -> dict:
    path = os.path.join(folder, STATUS)
    if not os.path.exists(path):
        return {"status": "not run"}
    with open(path) as f:
        return json.load(f)


def write_status(folder: str, status: dict) -> None:
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, STATUS + ".tmp")
    with open(tmp, "w") as f:
        json.dump(status, f)
    os.replace(tmp, os.path.join(folder, STATUS))


@contextlib.contextmanager
def gpu_slot(sweep: str, gpus: list[int], per_gpu: int):
    """A free slot on the GPUs: an exclusive lock on one of len(gpus) x per_gpu lock files,
    held while the job runs (the kernel drops it if the process dies). Yields the GPU index,
    or None when the grid runs on the CPU or each job has its own allocation (Slurm)."""
    if not gpus:
        yield None
        return
    while True:
        for k in range(len(gpus) * per_gpu):
            f = open(os.path.join(sweep, f".slot-{k}.lock"), "w")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.close()
                continue
            try:
                yield gpus[k % len(gpus)]  # slot k: GPUs in turn, so that few jobs spread out
            finally:
                f.close()
            return
        time.sleep(1.0)


def say(line: str) -> None:
    """One line on the launcher's console (the job's own output goes to its console.log)."""
    print(line, flush=True)


def seed_folders(cfg) -> dict[int, str]:
    """The run folder of each seed of a job: its ``seeds=[...]`` (job_mode=task: the task's
    seeds trained together in one process) or its ``seed``."""
    from types import SimpleNamespace

    from mbdpo.config import run_dir
    seeds = [int(s) for s in cfg.seeds] if cfg.get("seeds") is not None else [int(cfg.seed)]
    return {s: run_dir(SimpleNamespace(work_dir=cfg.work_dir, task=cfg.task, seed=s,
                                       exp_name=cfg.exp_name)) for s in seeds}


class _Tee(io.TextIOBase):
    """A console written to several files: a job of several seeds writes its console into
    each seed's run folder (the standard library has no tee for streams)."""

    def __init__(self, files):
        self.files = files

    def write(self, text):
        for f in self.files:
            f.write(text)
        return len(text)

    def flush(self):
        for f in self.files:
            f.flush()


def run_job(cfg) -> dict:
    """The Hydra job of one (task, seed), or of a task's seeds together (job_mode=task): train
    it, or skip the seeds that finished, or all of it if the grid was asked to stop. Never
    raises for a failed run: each seed's outcome is in its run folder's status file."""
    from omegaconf import open_dict

    sweep = os.path.dirname(str(cfg.grid_file))
    with open(cfg.grid_file) as f:
        spec = json.load(f)
    with open_dict(cfg):
        del cfg["grid_file"]
        cfg.steps, cfg.resume = steps_for(cfg.task, spec["steps"]), True
        if spec.get("threads") and cfg.threads is None:
            cfg.threads = spec["threads"]
    folders = seed_folders(cfg)
    todo = {}
    for seed, folder in folders.items():
        old = read_status(folder)
        if old["status"] == "finished" and old.get("steps") == cfg.steps:
            say(f"[grid] {cfg.task} seed {seed}: finished before, skipped")
        else:
            todo[seed] = folder
    if not todo:
        return old
    if os.path.exists(os.path.join(sweep, STOP)):
        return {"status": "not run"}
    if cfg.get("seeds") is not None:
        with open_dict(cfg):  # the seeds left, together (one left: an ordinary run)
            cfg.seed, cfg.seeds = next(iter(todo)), list(todo) if len(todo) > 1 else None
    name = f"{cfg.task} seed{'s' if len(todo) > 1 else ''} {','.join(map(str, todo))}"
    if os.getpid() != spec["launcher_pid"]:
        # a worker process of the launcher: out of the terminal's process group, so that
        # Ctrl-C reaches the launcher alone, which passes one SIGTERM to each job
        with contextlib.suppress(OSError):
            os.setpgrp()
    pidfile = os.path.join(sweep, RUNNING, str(os.getpid()))
    os.makedirs(os.path.dirname(pidfile), exist_ok=True)
    status = {"task": str(cfg.task), "steps": int(cfg.steps)}
    for folder in todo.values():
        os.makedirs(folder, exist_ok=True)
    start = time.time()
    # until the training loop takes them over (while environments start), a stop signal
    # ends the job as Ctrl-C does, not the worker process
    with StopAtOnce() as stop:
        try:
            status = _train(cfg, spec, sweep, todo, name, pidfile, status, stop)
        except KeyboardInterrupt:  # before the run started (waiting for a GPU slot)
            status.update(status="stopped", error=STOPPED)
            open(os.path.join(sweep, STOP), "w").close()
    status["minutes"] = round((time.time() - start) / 60, 2)
    returns = []
    for seed, folder in todo.items():
        mine = {**status, "seed": seed}
        if mine["status"] == "finished":
            last = last_evaluation(folder)
            if last is not None:
                mine["return"] = last
                returns.append(f"{last:.1f}")
        write_status(folder, mine)
    say(f"[grid] {name}: {status['status']} after {status['minutes']:.1f} min"
        + (f", last evaluation {' / '.join(returns)}" if returns else "")
        + (f" ({status['error']})" if status.get("error") else ""))
    return mine


def _train(cfg, spec, sweep, folders, name, pidfile, status, stop) -> dict:
    from omegaconf import open_dict

    from mbdpo.cli import USER_ERRORS
    from mbdpo.config import parse_cfg
    from mbdpo.trainers.online import OnlineTrainer
    from mbdpo.trainers.seeds import train_seeds
    with gpu_slot(sweep, spec["gpus"], spec["workers_per_gpu"]) as gpu:
        if gpu is not None:
            with open_dict(cfg):
                cfg.device = f"cuda:{gpu}"
        logs = [os.path.join(f, "console.log") for f in folders.values()]
        say(f"[grid] {name}: started on {cfg.device if gpu is not None else spec['where']}, "
            f"{cfg.steps:,} steps; console in {' and '.join(logs)}")
        with contextlib.ExitStack() as stack:
            log = _Tee([stack.enter_context(open(f, "a")) for f in logs])
            stack.enter_context(open(pidfile, "w"))
            stack.enter_context(contextlib.redirect_stdout(log))
            stack.enter_context(contextlib.redirect_stderr(log))
            try:
                parsed = parse_cfg(cfg)
                if parsed.get("seeds") is not None:
                    train_seeds(parsed)
                else:
                    OnlineTrainer(parsed).train()
                status["status"] = "finished"
            except USER_ERRORS as err:
                print(f"error: {err}", flush=True)
                status.update(status="failed", error=str(err))
            except (KeyboardInterrupt, SystemExit, Exception) as err:
                if isinstance(err, Exception) and not stop.stopped(err):  # the table reports
                    traceback.print_exc()  # it; the other jobs go on
                    status.update(status="failed", error=f"{type(err).__name__}: {err}")
                    return status
                status.update(status="stopped", error=STOPPED)
                if not isinstance(err, SystemExit) or err.code == 130:
                    open(os.path.join(sweep, STOP), "w").close()
            finally:
                with contextlib.suppress(OSError):
                    os.remove(pidfile)
    return status


def last_evaluation(folder: str) -> float | None:
    from mbdpo.curves import run_curve
    points = run_curve(folder)
    return points[-1][1] if points else None


class StopGrid(SignalHandler):
    """In the launcher: the first Ctrl-C or SIGTERM writes STOP and sends one SIGTERM to each
    running job (each saves and stops; jobs not started see STOP and do not start); a second
    one raises KeyboardInterrupt, which ends the launcher's pool at once."""

    def __init__(self, sweep: str):
        super().__init__()
        self.sweep = sweep

    def _handler(self, signum, frame):
        self.forward()
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        open(os.path.join(self.sweep, STOP), "w").close()
        say("\n[grid] stopping: each running job saves and stops (a second Ctrl-C stops at "
            "once); the same command continues the grid.")

    def forward(self):
        running = os.path.join(self.sweep, RUNNING)
        for pid in os.listdir(running) if os.path.isdir(running) else []:
            with contextlib.suppress(ValueError, OSError):
                if int(pid) != os.getpid():  # a job run in this process has the signal
                    os.kill(int(pid), signal.SIGTERM)


def report(jobs: list[tuple[str, int]], work_dir: str, exp_name: str, results: str) -> int:
    """The table of every job's outcome and the merged curves; the number of runs that did
    not finish."""
    from types import SimpleNamespace

    from mbdpo.config import run_dir
    from mbdpo.curves import write_curve
    bad, by_task = 0, {}
    say(f"\n{'task':<26} {'seed':>4}  {'outcome':<9} {'minutes':>8}  last evaluation / error")
    for task, seed in jobs:
        folder = run_dir(SimpleNamespace(work_dir=work_dir, task=task, seed=seed,
                                         exp_name=exp_name))
        by_task.setdefault(task, {})[seed] = folder
        st = read_status(folder)
        bad += st["status"] != "finished"
        tail = (f"{st['return']:.1f}" if "return" in st else "") or st.get("error", "")
        minutes = f"{st['minutes']:.1f}" if "minutes" in st else ""
        say(f"{task:<26} {seed:>4}  {st['status']:<9} {minutes:>8}  {tail}")
    for task, folders in by_task.items():
        write_curve(os.path.join(results, f"{task}.csv"), folders)
    say(f"{len(jobs) - bad} of {len(jobs)} runs finished; curves in {results}/<task>.csv")
    return bad
