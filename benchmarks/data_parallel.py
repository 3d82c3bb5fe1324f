"""Data-parallel throughput: offline updates per second of one process against N processes
under torchrun, at the same global batch, on this machine (CPU: gloo; GPU: NCCL).

    python benchmarks/data_parallel.py                        # 1 vs 2 processes, 2 cores
    python benchmarks/data_parallel.py procs=1,2,4 threads=8 device=cuda

Each run trains `steps` updates of model_size 1 (``model_size=...`` to change) on an mt30
dataset (data_dir=..., or 1 random episode per task generated into a temporary folder), with
no evaluation but the one at step 0 and the end; the rate is read from train.csv between its
first and last rows, so it counts updates only. ``threads`` is the machine's core budget:
each of N processes gets threads / N. Prints a table and writes
benchmarks/results/data_parallel.json.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.learning import key_values  # noqa: E402


KEYS = ("procs",)  # its own key; the others are settings of cfgs/config.yaml


def updates_per_s(run: str) -> float:
    with open(os.path.join(run, "train.csv")) as f:
        rows = list(csv.DictReader(f))
    a, b = rows[0], rows[-1]
    return (int(b["step"]) - int(a["step"])) / (float(b["elapsed_time"]) - float(a["elapsed_time"]))


def main():
    args = key_values(sys.argv[1:], {"procs": "1,2", "threads": "2", "steps": "300",
                                     "batch_size": "256", "model_size": "1", "log_freq": "50"},
                      own=KEYS)
    procs = [int(p) for p in args.pop("procs").strip("[]").split(",")]
    threads = int(args.pop("threads"))
    tmp = tempfile.mkdtemp(prefix="data-parallel-")
    env = dict(os.environ, WANDB_MODE="disabled", MUJOCO_GL="egl")
    if "data_dir" not in args:
        args["data_dir"] = os.path.join(tmp, "mt30")
        subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make_dataset.py"),
                        "task=mt30", "episodes_per_task=1", f"out={args['data_dir']}",
                        "threads=1"], check=True, env=env, cwd=ROOT, capture_output=True)
    rows = []
    for n in procs:
        work = os.path.join(tmp, f"procs{n}")
        train = [os.path.join(ROOT, "scripts", "train.py"), "task=mt30", "multitask=true",
                 f"eval_freq={10 ** 9}", "eval_episodes=1", "eval_tasks=[cartpole-balance]",
                 # the evaluations at step 0 and the end, cheap: the planner is not timed
                 "diffusion_num_samples=32", "diffusion_num_elites=8",
                 "diffusion_num_pi_trajs=4", "diffusion_steps=2",
                 "save_model_every=0", f"work_dir={work}", "exp_name=dp",
                 f"threads={max(1, threads // n)}", *[f"{k}={v}" for k, v in args.items()]]
        cmd = ([sys.executable, *train] if n == 1 else
               [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={n}", *train])
        subprocess.run(cmd, check=True, env=dict(env, OMP_NUM_THREADS=str(max(1, threads // n))),
                       cwd=ROOT, capture_output=True)
        rate = updates_per_s(os.path.join(work, "mt30", "1", "dp"))
        rows.append({"processes": n, "threads_each": max(1, threads // n),
                     "updates_per_s": rate})
        print(f"  {n} process(es): {rate:.2f} updates/s", flush=True)
    base = rows[0]["updates_per_s"]
    print(f"\n{'processes':>9} {'threads each':>12} {'updates/s':>10} {'x':>6}")
    for r in rows:
        r["speedup"] = r["updates_per_s"] / base
        print(f"{r['processes']:>9} {r['threads_each']:>12} {r['updates_per_s']:>10.2f} "
              f"{r['speedup']:>6.2f}")
    out = os.path.join(ROOT, "benchmarks", "results", "data_parallel.json")
    with open(out, "w") as f:
        json.dump({"settings": args | {"threads": threads}, "rows": rows}, f, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
