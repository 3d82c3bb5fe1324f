"""Online runs of many tasks x seeds, the published command, on Hydra's multirun:

    python scripts/online_parallel_train.py --config cfgs/online_parallel_config.yaml
    python scripts/online_parallel_train.py --config cfgs/online_parallel_config.yaml \\
        tasks=[walker-walk,cheetah-run] seeds=[1,2] num_gpus=0 workers_per_gpu=2 \\
        common_overrides=[threads=1]
    python scripts/online_parallel_train.py --config cfgs/online_parallel_config.yaml \\
        launcher=submitit_slurm hydra.launcher.partition=gpu hydra.launcher.gpus_per_node=1

One Hydra job per (task, seed), each an ordinary run folder (<work_dir>/<task>/<seed>/<exp_name>)
trained with resume=true: a re-run skips the runs that finished and continues the others.
With job_mode=task, one job per task trains its seeds together in one process (train.py's
seeds=[...]: one batched computation, the same run folders; on a GPU several seeds cost little
more than one). On
this machine Hydra's joblib launcher runs len(GPUs) x workers_per_gpu jobs at once, each on a
GPU slot of its own (at most workers_per_gpu jobs per GPU; on the CPU, workers_per_gpu jobs);
with submitit each job is its own Slurm allocation. A job that fails is reported in the table
at the end without stopping the others; the evaluation curves of every task are merged into
<results_dir>/<task>.csv (step,reward,seed, the published format). Needs the launchers extra:
pip install -e '.[launchers]'.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# Keys of the published file that this project has no use for (its replay export, compile
# modes, its subprocess entry): accepted and named once, so that the published file runs as is.
IGNORED = ("compile_mode", "diffusion_eval_compile", "diffusion_eval_compile_mode",
           "save_replay", "replay_save_dir", "replay_flush_every_episodes",
           "replay_include_terminated", "save_reward_csv", "csv_eval_freq",
           "merge_cleanup_temp", "python_bin", "train_entry", "save_agent",
           "wandb_name_template")
# Published per-run settings of its train.py that are launcher keys here.
RENAMED = {"online_save_root": "work_dir", "reward_csv_dir": "results_dir"}
LAUNCHERS = {"joblib": "hydra_plugins.hydra_joblib_launcher",
             "submitit_slurm": "hydra_plugins.hydra_submitit_launcher",
             "submitit_local": "hydra_plugins.hydra_submitit_launcher"}
# settings each job gets from the grid, not from common_overrides
GRID_SETS = {"steps": "is set per suite by the grid: use dmc_steps, metaworld_steps or "
                      "default_steps.",
             "task": "is set by the grid: list the tasks in tasks=[...] (or task_set).",
             "seed": "is set by the grid: list the seeds in seeds=[...].",
             "seeds": "is set by the grid: list the seeds in seeds=[...] (job_mode=task trains "
                      "a task's seeds together).",
             "resume": "is set by the grid: every job resumes (a re-run continues the grid)."}
PER_JOB = ("obs", "compile", "eval_freq", "save_model_every", "exp_name", "save_video",
           "enable_wandb", "work_dir")


def fail(sentence: str):
    print(f"error: {sentence}", file=sys.stderr, flush=True)
    raise SystemExit(2)


# each launcher's settings (hydra.launcher.*), as its plugin declares them
LAUNCHER_CONF = {"joblib": ("hydra_plugins.hydra_joblib_launcher.config", "JobLibLauncherConf"),
                 "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher.config",
                                    "SlurmQueueConf"),
                 "submitit_local": ("hydra_plugins.hydra_submitit_launcher.config",
                                    "LocalQueueConf")}


def check_launcher_args(launcher: str, hydra_args: list[str]) -> None:
    """hydra.launcher.KEY=VALUE: a setting of the launcher's plugin, of its type; checked here,
    since Hydra answers a mistake with a multi-line error after the grid has started. The
    rest of hydra.* is Hydra's to check."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException
    module, name = LAUNCHER_CONF[launcher]
    conf = OmegaConf.structured(getattr(importlib.import_module(module), name))
    for arg in hydra_args:
        key, _, value = arg.lstrip("+").partition("=")
        if not key.startswith("hydra.launcher."):
            continue
        field = key[len("hydra.launcher."):]
        if field not in conf:
            fail(f"{arg}: launcher={launcher} has no setting {field!r}; it has "
                 f"{', '.join(k for k in conf if not k.startswith('_'))}.")
        try:
            OmegaConf.merge(conf, OmegaConf.from_dotlist([f"{field}={value}"]))
        except OmegaConfBaseException as err:
            fail(f"{arg}: {' '.join(str(err).split(chr(10))[0].split())} "
                 f"(launcher={launcher}).")


def read_config(argv: list[str]):
    """(grid settings, Hydra overrides of the launcher) from the command line."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException
    parser = argparse.ArgumentParser(
        description="Online runs of many tasks x seeds on Hydra's multirun. Settings: the keys "
                    "of cfgs/online_parallel_config.yaml as key=value; hydra.* go to Hydra.")
    parser.add_argument("--config", default=os.path.join(ROOT, "cfgs",
                                                         "online_parallel_config.yaml"))
    parser.add_argument("--num_gpus", type=int, default=None)
    parser.add_argument("--tasks", nargs="*", default=None)
    parser.add_argument("--replay_save_dir", default=None, help="published; ignored here")
    args, rest = parser.parse_known_args(argv)
    if args.tasks:  # --tasks a b key=value: the key=value after the task names are settings
        rest += [t for t in args.tasks if "=" in t]
        args.tasks = [t for t in args.tasks if "=" not in t]
    if not os.path.isfile(args.config):
        fail(f"{args.config} does not exist: pass --config with the launcher's YAML file "
             "(cfgs/online_parallel_config.yaml is the example).")
    default = OmegaConf.load(os.path.join(ROOT, "cfgs", "online_parallel_config.yaml"))
    try:
        cfg = OmegaConf.load(args.config)
        ours = [a for a in rest if not a.lstrip("+").startswith("hydra")]
        bad = [a for a in ours if "=" not in a]
        if bad:
            fail(f"{bad[0]}: expected key=value (the keys of {args.config}).")
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(ours))
    except (OmegaConfBaseException, yaml.YAMLError) as err:
        fail(f"{args.config} or a key=value after it cannot be read as YAML: "
             f"{' '.join(str(err).split())}")
    unknown = [k for k in cfg if k not in default and k not in IGNORED]
    if unknown:
        fail(f"unknown key {unknown[0]!r}: the keys are those of "
             "cfgs/online_parallel_config.yaml.")
    ignored = [k for k in cfg if k in IGNORED]
    if ignored:
        print(f"note: {', '.join(ignored)} (keys of the published launcher) have no use here "
              "and are ignored.", flush=True)
    cfg = OmegaConf.merge(default, OmegaConf.masked_copy(cfg, [k for k in cfg
                                                               if k not in IGNORED]))
    if args.num_gpus is not None:
        cfg.num_gpus, cfg.gpu_ids = args.num_gpus, []
    if args.tasks:
        cfg.tasks = args.tasks
    overrides = []
    for o in cfg.common_overrides:
        key, _, value = str(o).partition("=")
        if key.lstrip("+~") in GRID_SETS:  # the job's value would silently win or lose
            fail(f"common_overrides: {o} {GRID_SETS[key.lstrip('+~')]}")
        if key.lstrip("+~") in PER_JOB:
            fail(f"common_overrides: {o}: {key} is a key of the grid itself, passed to every "
                 f"job: give it as {key}=... after --config.")
        if key in RENAMED:
            if value in ("", "???"):
                fail(f"common_overrides: {key}=??? must be given a folder (here it sets "
                     f"{RENAMED[key]}).")
            cfg[RENAMED[key]] = value
        else:
            overrides.append(str(o))
    if cfg.launcher not in LAUNCHERS:
        fail(f"launcher={cfg.launcher}: expected one of {', '.join(LAUNCHERS)}.")
    if importlib.util.find_spec(LAUNCHERS[cfg.launcher]) is None:
        fail(f"launcher={cfg.launcher} needs Hydra's launcher plugins: pip install -e "
             "'.[launchers]'.")
    from mbdpo.cli import CONFIG_DIR, check_overrides
    check_overrides(overrides, CONFIG_DIR)  # one sentence for a mistyped setting
    hydra_args = [a for a in rest if a.lstrip("+").startswith("hydra")]
    check_launcher_args(cfg.launcher, hydra_args)
    if cfg.launcher == "submitit_slurm" and shutil.which("srun") is None:  # as submitit asks
        fail("launcher=submitit_slurm submits to a Slurm cluster, and srun is not on this "
             "machine's PATH: run it on a node of the cluster, or use launcher=joblib here.")
    return cfg, overrides, hydra_args


def tasks_of(cfg) -> list[str]:
    from mbdpo.tasks import TASK_SETS, UnknownTaskError, get_task
    if cfg.tasks:
        tasks = [str(t) for t in cfg.tasks]
    elif cfg.task_set in TASK_SETS:
        tasks = list(TASK_SETS[cfg.task_set])
    else:
        fail(f"task_set={cfg.task_set}: expected one of {', '.join(TASK_SETS)}, or list "
             "tasks=[...].")
    for t in tasks:
        try:
            get_task(t)
        except UnknownTaskError as err:
            fail(str(err))
    return tasks


def check_jobs(tasks: list[str], seed_arg: str, steps: dict, job_args: list[str],
               overrides: list[str]) -> None:
    """Each task's settings as its job will parse them, before the grid starts: a bad value in
    common_overrides is one sentence here, not a failed job per run, and each setting that has
    no effect on the runs is noted once (what train.py says at its start)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from mbdpo.cli import CONFIG_DIR
    from mbdpo.config import ConfigError, no_effect, parse_cfg
    from mbdpo.grid import steps_for
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    notes = []
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        for task in tasks:
            cfg = compose("config", overrides=[f"task={task}", seed_arg,
                                               f"steps={steps_for(task, steps)}", *job_args,
                                               *overrides])
            raw = OmegaConf.to_container(cfg)
            try:
                parsed = parse_cfg(cfg)
            except ConfigError as err:
                fail(f"{err} (common_overrides, for {task})")
            notes += [n for n in no_effect(parsed, raw, given, "train.py") if n not in notes]
    for line in notes:
        print(f"note: {line} (common_overrides)", flush=True)


def main():
    cfg, overrides, hydra_args = read_config(sys.argv[1:])
    tasks = tasks_of(cfg)
    try:
        seeds, per_gpu = [int(s) for s in cfg.seeds], int(cfg.workers_per_gpu)
        gpu_ids = [int(g) for g in cfg.gpu_ids] or list(range(int(cfg.num_gpus)))
    except (TypeError, ValueError):
        fail(f"seeds={list(cfg.seeds)}, gpu_ids={list(cfg.gpu_ids)}, num_gpus={cfg.num_gpus}, "
             f"workers_per_gpu={cfg.workers_per_gpu}: these are whole numbers (lists of them).")
    if not seeds:
        fail("seeds=[]: list at least one seed.")
    for what, values in (("seeds", seeds), ("tasks", tasks)):
        twice = sorted({v for v in values if values.count(v) > 1}, key=values.index)
        if twice:  # two jobs would write the same run folder at once
            fail(f"{what}={list(values)} lists {', '.join(map(str, twice))} twice: each run "
                 "folder belongs to one job; list each once.")
    if per_gpu < 1:
        fail(f"workers_per_gpu={per_gpu}: at least 1 job at a time.")
    if min(gpu_ids, default=0) < 0 or (not cfg.gpu_ids and int(cfg.num_gpus) < 0):
        fail(f"num_gpus={cfg.num_gpus}, gpu_ids={list(cfg.gpu_ids)}: GPU counts and ids are "
             "0 or more (num_gpus=0 runs the grid on the CPU).")
    if cfg.job_mode not in ("seed", "task"):
        fail(f"job_mode={cfg.job_mode}: expected seed (a job per task and seed) or task (a job "
             "per task, its seeds trained together in one process).")
    together = cfg.job_mode == "task" and len(seeds) > 1
    steps = {"dmc": int(cfg.dmc_steps), "metaworld": int(cfg.metaworld_steps),
             "default": int(cfg.default_steps)}
    seed_arg = (f"seeds=[{','.join(map(str, seeds))}]" if together
                else f"seed={','.join(map(str, seeds))}")
    job_args = [f"{k}={str(cfg[k]).lower() if isinstance(cfg[k], bool) else cfg[k]}"
                for k in PER_JOB]
    check_jobs(tasks, seed_arg if together else f"seed={seeds[0]}", steps, job_args, overrides)
    local = cfg.launcher == "joblib"
    gpus = gpu_ids if local else []
    slots = max(1, len(gpus)) * per_gpu
    sweep = os.path.abspath(os.path.join(str(cfg.work_dir), "multirun", str(cfg.exp_name)))
    os.makedirs(sweep, exist_ok=True)
    from mbdpo import grid
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(sweep, grid.STOP))
    threads = (max(1, (os.cpu_count() or 1) // slots) if local and not gpus else None)
    spec = {"steps": steps, "gpus": gpus, "workers_per_gpu": per_gpu, "threads": threads,
            "where": "the CPU" if local and not gpus else cfg.launcher,
            "launcher_pid": os.getpid()}
    grid_file = os.path.join(sweep, grid.GRID)
    with open(grid_file, "w") as f:
        json.dump(spec, f, indent=1)
    jobs = [(t, s) for t in tasks for s in seeds]
    where = f"GPUs {gpus}" if gpus else ("the CPU" if local else cfg.launcher)
    each = (f" in {len(tasks)} jobs (job_mode=task: a task's seeds together in one process)"
            if together else "")
    print(f"[grid] {len(jobs)} runs ({len(tasks)} tasks x {len(seeds)} seeds){each}, "
          f"{slots if local else 'all'} jobs at once on {where}; sweep folder {sweep}",
          flush=True)
    argv = ["--multirun", f"task={','.join(tasks)}", seed_arg,
            f"+grid_file={grid_file}", f"hydra/launcher={cfg.launcher}",
            f"hydra.sweep.dir={sweep}", *job_args, *overrides, *hydra_args]
    if local:
        argv.append(f"hydra.launcher.n_jobs={slots}")
    sys.argv = [sys.argv[0]] + argv
    stopped = False
    with grid.StopGrid(sweep) as stop:
        try:
            hydra_main()
        except KeyboardInterrupt:
            stop.forward()
            print("\n[grid] stopped at once; the same command continues the grid.",
                  file=sys.stderr, flush=True)
        stopped = stop.signum is not None or os.path.exists(os.path.join(sweep, grid.STOP))
    bad = grid.report(jobs, str(cfg.work_dir), str(cfg.exp_name), str(cfg.results_dir))
    if stopped:
        print("[grid] stopped: the same command continues it (finished runs are skipped).",
              flush=True)
        raise SystemExit(130)
    raise SystemExit(1 if bad else 0)


def hydra_main():
    import hydra

    from mbdpo.cli import CONFIG_DIR
    from mbdpo.grid import run_job

    @hydra.main(config_path=CONFIG_DIR, config_name="config", version_base=None)
    def job(cfg):
        return run_job(cfg)

    job()


if __name__ == "__main__":
    main()
