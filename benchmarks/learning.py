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
KEYS = ("seeds", "parallel", "collect_only")  # its own keys; the others go to train.py


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
    args = key_values(argv, CPU_DEFAULTS, own=KEYS)
    if "task" not in args:
        sys.exit("error: pass task=NAME (e.g. task=cartpole-balance).")
    seeds = [int(s) for s in args.pop("seeds", "[1,2]").strip("[]").split(",") if s.strip()]
    collect_only, parallel = flag(args, "collect_only"), flag(args, "parallel")
    if parallel:
        args.setdefault("threads", "1")
    return args, seeds, collect_only, parallel


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


def collect(args, seeds, out_dir=os.path.join(ROOT, "benchmarks", "results", "learning")) -> str:
    """Write <task>.csv (step,reward,seed) from the runs' eval.csv, and <task>.json beside it:
    the runs' settings (from their config.yaml), and per seed the steps reached, the wall time
    (evaluations included), the steps per second, the torch threads and the code versions
    (commits) that made the run; settings in which a run differs from the first are listed
    under it."""
    from mbdpo.curves import write_curve
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{args['task']}.csv")
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
    if not collect_only:
        procs = []
        for seed in seeds:
            cmd = [sys.executable, os.path.join(ROOT, "scripts", "train.py"), f"seed={seed}"]
            cmd += [f"{k}={v}" for k, v in args.items()]
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
