"""Learning benchmark: train on a task for several seeds and collect the evaluation curves in the
published format (benchmarks/results/learning/<task>.csv with columns step,reward,seed).

    python benchmarks/learning.py task=cartpole-balance steps=10000 seeds=[1,2] parallel=true
    python benchmarks/learning.py task=cartpole-swingup steps=30000 seeds=[1,2] resume=true

Every other key=value is passed to scripts/train.py. The defaults below are the small CPU
settings of the issue-2 measurements: model_size=1, 128 samples and 10 denoising steps (with
diffusion_betaT=0.02, so that the sampling width still starts at ~0.33 as with the default 20
steps; with 10 steps and betaT=0.01 it would start at ~0.23), batch 256, seed_steps=1000
(the default max(1000, 5 x 500) = 2,500 would spend a quarter of a 10k budget on random
actions), tau=0.05 (the target Q follows at a time constant of ~1/(tau(1-gamma)) updates:
10,000 at the default 0.01, i.e. the whole budget; 2,000 at 0.05) and plan_horizon=6 (the
model is trained on 3 steps, as published, but plans 6 ahead: a 3-step plan covers 0.06 s of
cartpole and its actions are noisy; the same 10k-step model scored 686 planning 3 steps ahead
and 997 planning 6).
parallel=true runs the seeds at once, one process and one thread each, with each seed's console
output in <work_dir>/<task>/<seed>/<exp_name>.log. Runs are resumable, so a stopped benchmark
continues with resume=true. With collect_only=true the CSV is rebuilt from the runs' eval.csv
without training.
"""
from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from types import SimpleNamespace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU_DEFAULTS = {"model_size": "1", "diffusion_num_samples": "128", "diffusion_steps": "10",
                "diffusion_betaT": "0.02", "batch_size": "256", "seed_steps": "1000",
                "tau": "0.05", "plan_horizon": "6", "eval_freq": "2500",
                "eval_episodes": "5",
                "save_model_every": "0", "exp_name": "learning"}


def parse(argv):
    args = dict(CPU_DEFAULTS)
    for a in argv:
        if "=" not in a:
            sys.exit(f"error: arguments are key=value, got {a!r}.")
        k, v = a.split("=", 1)
        args[k] = v
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


def collect(args, seeds) -> str:
    out_dir = os.path.join(ROOT, "benchmarks", "results", "learning")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{args['task']}.csv")
    rows = []
    for seed in seeds:
        ev = os.path.join(run_dir(args, seed), "eval.csv")
        if not os.path.exists(ev):
            continue
        with open(ev) as f:
            rows += [(int(float(r["step"])), float(r["episode_reward"]), seed)
                     for r in csv.DictReader(f)]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "reward", "seed"])
        w.writerows(sorted(rows, key=lambda r: (r[2], r[0])))
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
