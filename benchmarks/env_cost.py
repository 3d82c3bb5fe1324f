"""What an environment step costs, suite by suite: make, reset and agent-step time with random
actions (one agent step includes the task's action repeat), from state and from pixels.

    python benchmarks/env_cost.py                       # one task per installed suite + pixels
    python benchmarks/env_cost.py tasks=dog-run,mw-assembly steps=200
    python benchmarks/env_cost.py tasks=walker-walk obs=rgb vector=10 steps=100

With ``vector=N`` it also times one lockstep step of N environments (how an evaluation of N
episodes, or num_envs=N training, steps them) in turn in one process and in N worker
processes (gymnasium's AsyncVectorEnv, ``async_envs=true``).

Prints a table and writes benchmarks/results/env_cost.json (rows of other tasks from earlier
runs are kept). Suites that are not installed (or, for ManiSkill2, have no Vulkan device) are
listed with the reason and skipped. ManiSkill2 runs in its own environment:

    . .vulkan/env.sh && .venv-ms2/bin/python benchmarks/env_cost.py tasks=lift-cube,pick-cube,stack-cube
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from omegaconf import OmegaConf  # noqa: E402

from mbdpo.envs import make_env  # noqa: E402
from mbdpo.tasks import TASKS  # noqa: E402

DEFAULT = [("cartpole-balance", "state"), ("dog-run", "state"), ("humanoid-walk", "state"),
           ("mw-assembly", "state"), ("myo-key-turn", "state"), ("lift-cube", "state"),
           ("walker-walk", "rgb")]


def measure(task: str, obs: str, steps: int) -> dict:
    cfg = OmegaConf.create({"task": task, "obs": obs, "seed": 0})
    t = time.perf_counter()
    env = make_env(cfg)
    make_s = time.perf_counter() - t
    t = time.perf_counter()
    env.reset(seed=0)
    reset_s = time.perf_counter() - t
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (steps, env.action_space.shape[0])).astype(np.float32)
    done, n = False, 0
    t = time.perf_counter()
    for a in actions:
        if done:
            env.reset()
        _, _, term, trunc, _ = env.step(a)
        done = term or trunc
        n += 1
    step_s = (time.perf_counter() - t) / n
    env.close()
    spec = TASKS[task]
    return {"task": task, "suite": spec.suite, "obs": obs, "action_repeat": spec.action_repeat,
            "make_s": round(make_s, 3), "reset_ms": round(reset_s * 1e3, 2),
            "step_ms": round(step_s * 1e3, 3), "steps": n}


def measure_vector(task: str, obs: str, n: int, steps: int) -> dict:
    """ms per lockstep step of ``n`` environments, in turn and in worker processes."""
    import functools

    from mbdpo.trainers.evaluate import vector_env, worker_context
    cfg = OmegaConf.create({"task": task, "obs": obs, "seed": 0})
    fns = [functools.partial(make_env, cfg, seed=i) for i in range(n)]
    out = {}
    for name, venv in (("in_turn_ms", vector_env([fn() for fn in fns])),
                       ("workers_ms", vector_env(fns, workers=True,
                                                 context=worker_context(cfg)))):
        venv.reset(seed=list(range(n)))
        rng = np.random.default_rng(0)
        A = venv.single_action_space.shape[0]
        t = time.perf_counter()
        for _ in range(steps):
            _, _, term, trunc, _ = venv.step(rng.uniform(-1, 1, (n, A)).astype(np.float32))
            if (term | trunc).any():
                venv.reset(options={"reset_mask": term | trunc})
        out[name] = round((time.perf_counter() - t) / steps * 1e3, 2)
        venv.close()
    return {f"vector_{n}_{k}": v for k, v in out.items()}


KEYS, PASSES_CONFIG = ("steps", "tasks", "obs", "vector"), False  # its key=value settings


def main(argv: list[str]) -> None:
    from mbdpo.cli import check_benchmark_args
    check_benchmark_args(argv, KEYS, config=PASSES_CONFIG)
    args = dict(a.split("=", 1) for a in argv)
    steps = int(args.get("steps", 500))
    if "tasks" in args:
        obs = args.get("obs", "state")
        todo = [(t, obs) for t in args["tasks"].split(",")]
    else:
        todo = DEFAULT
    rows, skipped = [], []
    vector = int(args.get("vector", 0))
    for task, obs in todo:
        try:
            rows.append(measure(task, obs, steps))
            if vector:
                rows[-1].update(measure_vector(task, obs, vector, steps))
        except Exception as err:  # noqa: BLE001  (a suite missing here is reported, not fatal)
            skipped.append({"task": task, "obs": obs, "reason": str(err).splitlines()[0]})
    print(f"{'task':18s} {'suite':11s} {'obs':5s} {'repeat':>6s} {'make s':>7s} "
          f"{'reset ms':>9s} {'step ms':>8s}")
    for r in rows:
        print(f"{r['task']:18s} {r['suite']:11s} {r['obs']:5s} {r['action_repeat']:6d} "
              f"{r['make_s']:7.2f} {r['reset_ms']:9.1f} {r['step_ms']:8.2f}")
        if vector:
            print(f"{'':18s} {vector} environments per lockstep step: "
                  f"{r[f'vector_{vector}_in_turn_ms']:.2f} ms in turn, "
                  f"{r[f'vector_{vector}_workers_ms']:.2f} ms in worker processes")
    for s in skipped:
        print(f"{s['task']:18s} skipped: {s['reason']}")
    # Rows of earlier runs for other tasks are kept: ManiSkill2 runs in its own environment,
    # so the table is filled by two runs.
    path = os.path.join(ROOT, "benchmarks", "results", "env_cost.json")
    old_rows = []
    if os.path.exists(path):
        with open(path) as f:
            old_rows = json.load(f).get("rows", [])
    done = {(r["task"], r["obs"]) for r in rows}
    rows = [r for r in old_rows if (r["task"], r["obs"]) not in done] + rows
    out = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
           "steps": steps, "rows": rows, "skipped": skipped}
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
