"""Learning benchmark: train on a task for several seeds and collect the evaluation curves in the
published format (benchmarks/results/learning/<task>.csv with columns step,reward,seed).

    python benchmarks/learning.py task=cartpole-balance steps=10000 seeds=[1,2] parallel=true
    python benchmarks/learning.py task=cartpole-swingup steps=30000 seeds=[1,2] resume=true

Every other key=value is passed to scripts/train.py. The defaults below are the published
algorithm (cfgs/config.yaml: horizon = plan_horizon = 3, tau 0.01, betaT 0.01, 64 elites, 24
policy candidates, batch 256, ...) with only compute and budget reduced for this CPU:
model_size=1, 128 samples and 10 denoising steps (the published beta range 1e-4..1e-2 over 10
steps: the candidates' width starts at ~0.23 instead of ~0.33 and ends at ~0.036 instead of
~0.027), seed_steps=1000 (the default max(1000, 5 x 500) = 2,500 would spend a quarter of a
10k budget on random actions), and evaluations of 5 episodes every 2,500 steps.
parallel=true runs the seeds at once, one process and one thread each, with each seed's console
output in <work_dir>/<task>/<seed>/<exp_name>.log. Runs are resumable, so a stopped benchmark
continues with resume=true. With collect_only=true the CSV is rebuilt from the runs' eval.csv
without training.

The paper's protocol on a GPU (issue 32), the published settings unchanged:

    python benchmarks/learning.py published=true task=walker-walk together=true

published=true takes cfgs/config.yaml as it is (model_size 5, K=512, N=20, batch 256, seed
steps as published) and only sets the protocol: 100,000 steps, 10 evaluation episodes every
10,000 (PROTOCOL below); the curve is <task>_<suffix>.csv (suffix: gpu on CUDA, cpu
elsewhere). together=true trains the seeds in one process, one batched agent (train.py's
seeds=[...]), the fast way on a GPU. The JSON beside a curve gives per seed the device, torch,
commit and steps/s of its last start, and under "differs_from_config" every setting in which
the run differs from cfgs/config.yaml ("protocol": budget and bookkeeping; "method": the rest,
empty for the paper's settings). out_dir= writes the curve elsewhere (a dry run).
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from types import SimpleNamespace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU_DEFAULTS = {"model_size": "1", "diffusion_num_samples": "128", "diffusion_steps": "10",
                "seed_steps": "1000", "eval_freq": "2500", "eval_episodes": "5",
                "save_model_every": "0", "exp_name": "learning"}
KEYS = ("seeds", "parallel", "collect_only", "published", "together", "suffix",
        "out_dir")  # its own keys; the others go to train.py
PROTOCOL = {"steps": "100000", "eval_freq": "10000", "eval_episodes": "10",
            "save_model_every": "0", "exp_name": "published"}
# settings that say how long a run is, where it writes and on what it runs, not the method
BOOKKEEPING = {"steps", "eval_freq", "eval_episodes", "save_model_every", "exp_name", "seed",
               "seeds", "work_dir", "resume", "overwrite", "device", "threads", "compile",
               "cuda_graphs", "enable_wandb", "save_video", "log_freq", "wandb_project",
               "wandb_entity", "wandb_group", "wandb_name"}
OUT_DIR = os.path.join(ROOT, "benchmarks", "results", "learning")


def key_values(argv, defaults=None, own=()) -> dict:
    """key=value command-line arguments over ``defaults``: settings of cfgs/config.yaml or the
    benchmark's ``own`` keys; anything else exits with a sentence."""
    from mbdpo.cli import check_benchmark_args
    check_benchmark_args(argv, set(own) | set(defaults or {}))
    args = dict(defaults or {})
    for a in argv:
        if "=" not in a:
            sys.exit(f"error: arguments are key=value, got {a!r}.")
        k, v = a.split("=", 1)
        args[k] = v
    return args


def parse(argv):
    published = "published=true" in argv
    args = key_values(argv, PROTOCOL if published else CPU_DEFAULTS, own=KEYS)
    if "task" not in args:
        sys.exit("error: pass task=NAME (e.g. task=cartpole-balance).")
    seeds = [int(s) for s in args.pop("seeds", "[1,2]").strip("[]").split(",") if s.strip()]
    collect_only, parallel = flag(args, "collect_only"), flag(args, "parallel")
    flag(args, "published")
    args["_together"] = flag(args, "together")
    if parallel and args["_together"]:
        sys.exit("error: parallel=true (a process per seed) and together=true (the seeds in "
                 "one process) exclude each other: pass one.")
    if published and "suffix" not in args:
        args["suffix"] = "gpu" if device_type(args.get("device", "auto")) == "cuda" else "cpu"
    if parallel:
        args.setdefault("threads", "1")
    return args, seeds, collect_only, parallel


def device_type(device: str) -> str:
    import torch
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device.split(":")[0]


OWN = ("_together", "suffix", "out_dir")  # parse's results that are not train.py settings


def train_args(args) -> list[str]:
    return [f"{k}={v}" for k, v in args.items() if k not in OWN]


def flag(args, key) -> bool:
    value = args.pop(key, "false")
    if value not in ("true", "false"):
        sys.exit(f"error: {key} is true or false, got {value!r}.")
    return value == "true"


def run_dir(args, seed) -> str:
    """The run's directory, as scripts/train.py lays it out (train.py runs in ROOT)."""
    from mbdpo.config import run_dir as train_run_dir
    return train_run_dir(SimpleNamespace(work_dir=os.path.join(ROOT, args.get("work_dir", "logs")),
                                         task=args["task"], seed=seed, exp_name=args["exp_name"]))


# what a curve's JSON records of the runs' own configuration (the collect_only command line
# does not know how the runs were started)
SETTINGS = ("steps", "model_size", "diffusion_num_samples", "diffusion_steps", "seed_steps",
            "eval_freq", "eval_episodes", "num_envs", "utd", "precision", "plan_precision",
            "compile", "cuda_graphs")


def run_config(folder: str) -> dict:
    """The run's configuration at its last start (its config.yaml); {} where there is none."""
    from omegaconf import OmegaConf
    path = os.path.join(folder, "config.yaml")
    return OmegaConf.to_container(OmegaConf.load(path)) if os.path.exists(path) else {}


def config_differences(cfg: dict) -> dict:
    """The settings in which a run's config.yaml differs from cfgs/config.yaml, split into
    "protocol" (BOOKKEEPING) and "method" (the rest). Defaults of null or auto are resolved by
    the run (seed_steps from the episode length, compile by the device), and the task is the
    curve's own: not differences."""
    from omegaconf import OmegaConf
    default = OmegaConf.to_container(OmegaConf.load(os.path.join(ROOT, "cfgs", "config.yaml")))
    out = {"protocol": {}, "method": {}}
    for k, v in default.items():
        if k == "task" or k not in cfg or v is None or v == "auto" or cfg[k] == v or (
                k == "task_dim" and not cfg.get("multitask")):  # zeroed for one task
            continue
        out["protocol" if k in BOOKKEEPING else "method"][k] = cfg[k]
    return out


def last_start(folder: str) -> dict:
    """Device, torch and commit of the run's last start (its metadata.json)."""
    path = os.path.join(folder, "metadata.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        starts = json.load(f).get("starts") or [{}]
    return {k: starts[-1][k] for k in ("device", "device_name", "torch", "commit", "dirty")
            if k in starts[-1]}


def collect(args, seeds, out_dir=OUT_DIR) -> str:
    """Write <task>.csv (step,reward,seed) from the runs' eval.csv, and <task>.json beside it:
    the runs' settings (from their config.yaml), and per seed the steps reached, the wall time
    (evaluations included), the steps per second, the torch threads and the code versions
    (commits) that made the run, the device, torch and commit of its last start and how its
    settings differ from cfgs/config.yaml; settings in which a run differs from the first are
    listed under it. With a ``suffix`` the files are <task>_<suffix>.csv/.json."""
    from mbdpo.curves import write_curve
    out_dir = args.get("out_dir", out_dir)
    os.makedirs(out_dir, exist_ok=True)
    name = args["task"] + (f"_{args['suffix']}" if args.get("suffix") else "")
    path = os.path.join(out_dir, f"{name}.csv")
    runs, settings = {}, None
    for seed in seeds:
        ev = os.path.join(run_dir(args, seed), "eval.csv")
        if not os.path.exists(ev):
            continue
        with open(ev) as f:
            evals = list(csv.DictReader(f))
        if not evals:
            continue
        steps, wall = int(float(evals[-1]["step"])), float(evals[-1]["elapsed_time"])
        meta = os.path.join(run_dir(args, seed), "metadata.json")
        commits = []
        if os.path.exists(meta):
            with open(meta) as f:
                commits = json.load(f).get("commits", [])
        cfg = run_config(run_dir(args, seed))
        own = {k: cfg[k] for k in SETTINGS if k in cfg}
        settings = own if settings is None else settings
        runs[seed] = {"steps": steps, "wall_s": round(wall), "steps_per_s":
                      round(steps / max(wall, 1e-9), 3), "commits": commits,
                      "threads": cfg.get("threads")}
        if args.get("suffix"):  # (the older curves' JSON keeps its fields)
            runs[seed].update(last_start=last_start(run_dir(args, seed)),
                              differs_from_config=config_differences(cfg))
        differ = {k: v for k, v in own.items() if settings.get(k) != v}
        if differ:
            runs[seed]["settings"] = differ
    if not runs:  # a mistyped work_dir / exp_name must not replace a committed curve
        sys.exit(f"error: no evaluations in {run_dir(args, seeds[0]) if seeds else 'no seeds'}"
                 f"{' or the other seeds' if len(seeds) > 1 else ''}: check task, work_dir, "
                 f"exp_name and seeds; {path} was left as it was.")
    write_curve(path, {seed: run_dir(args, seed) for seed in seeds})
    with open(os.path.splitext(path)[0] + ".json", "w") as f:
        json.dump({"task": args["task"], "settings": settings or {}, "runs": runs}, f,
                  indent=1)
    return path


def wait(seed, t0, proc) -> int:
    rc = proc.wait()
    print(f"seed {seed}: exit {rc}, wall {time.time() - t0:.0f} s", flush=True)
    return rc


def main():
    args, seeds, collect_only, parallel = parse(sys.argv[1:])
    if not collect_only and args["_together"]:
        cmd = [sys.executable, os.path.join(ROOT, "scripts", "train.py"),
               f"seeds=[{','.join(map(str, seeds))}]", *train_args(args)]
        print("$ " + " ".join(cmd[1:]), flush=True)
        if wait(",".join(map(str, seeds)), time.time(), subprocess.Popen(cmd, cwd=ROOT)):
            sys.exit(1)
    elif not collect_only:
        procs = []
        for seed in seeds:
            cmd = [sys.executable, os.path.join(ROOT, "scripts", "train.py"), f"seed={seed}"]
            cmd += train_args(args)
            print("$ " + " ".join(cmd[1:]), flush=True)
            out = None
            if parallel:
                log = run_dir(args, seed) + ".log"
                os.makedirs(os.path.dirname(log), exist_ok=True)
                out = open(log, "a")
                print(f"seed {seed}: console output in {log}", flush=True)
            procs.append((seed, time.time(), subprocess.Popen(cmd, cwd=ROOT, stdout=out,
                                                              stderr=out)))
            if out is not None:
                out.close()  # the child holds its own copy
            if not parallel and wait(*procs.pop()):
                sys.exit(1)
        if any([wait(*p) for p in procs]):  # every seed is waited for before exiting
            sys.exit(1)
    path = collect(args, seeds)
    with open(path) as f:
        rows = list(csv.DictReader(f))
    print(f"\n{args['task']}: {path}")
    print(f"{'seed':>4} {'step':>8} {'reward':>8}")
    for r in rows:
        print(f"{r['seed']:>4} {r['step']:>8} {float(r['reward']):8.1f}")


if __name__ == "__main__":
    main()
