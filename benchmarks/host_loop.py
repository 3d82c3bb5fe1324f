"""The host's share of an online training step: the time per step of the training loop
(``scripts/train.py``'s trainer: environment step, books, replay sample, episode ends) with
the agent's action, update and episode diagnostics replaced by stand-ins that return at once.
On a GPU this is the time the device's work must hide (the update runs while the host steps
the environments, ``OnlineTrainer._loop``); with ``seeds=[...]`` it is the time of one step of
all S seeds (their loops run one at a time, ``mbdpo/trainers/seeds.py``).

    python benchmarks/host_loop.py                          # walker-walk, S = 1 and 4
    python benchmarks/host_loop.py task=cheetah-run seeds=1,2,4 steps=4000 repeats=3

``S = 1`` is the single run (``seed=1``); ``S > 1`` runs ``seeds=[1..S]``. Runs of the
different S alternate (``repeats`` rounds). The time per step is taken between updates after
the burst on the seed data (one update per step), medians over steps. Prints a table and
writes benchmarks/results/host_loop.json (``out=PATH`` elsewhere).
"""
from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from omegaconf import OmegaConf  # noqa: E402

from mbdpo.agent import MBDPO  # noqa: E402


def run(task: str, S: int, steps: int, seed_steps: int, stamps: list) -> dict:
    """One run of ``steps`` steps with ``S`` seeds; the per-step time after the burst."""
    from hydra import compose, initialize_config_dir

    from mbdpo.config import parse_cfg
    from mbdpo.trainers.online import OnlineTrainer
    from mbdpo.trainers.seeds import train_seeds
    work = tempfile.mkdtemp(prefix="host_loop_")
    seeds = "seed=1" if S == 1 else f"seeds=[{','.join(str(s + 1) for s in range(S))}]"
    with initialize_config_dir(config_dir=os.path.join(ROOT, "cfgs"), version_base=None):
        cfg = compose(config_name="config", overrides=[
            f"task={task}", seeds, f"steps={steps}", f"seed_steps={seed_steps}",
            "eval_freq=100000000", "eval_episodes=1", "log_freq=100000000",
            "save_model_every=0", "model_size=1", "threads=1", f"work_dir={work}"])
    cfg = parse_cfg(cfg)
    stamps.clear()
    t = time.perf_counter()
    if S == 1:
        OnlineTrainer(cfg).train()
    else:
        train_seeds(cfg)
    wall = time.perf_counter() - t
    gaps = np.diff(np.array(stamps[seed_steps:]))  # one update per step after the burst
    return {"S": S, "ms_per_step": round(1e3 * float(np.median(gaps)), 3),
            "ms_per_step_mean": round(1e3 * float(gaps.mean()), 3),
            "steps_timed": int(len(gaps)), "wall_s": round(wall, 1)}


def main(argv: list[str]) -> None:
    args = OmegaConf.from_dotlist(argv)
    task = str(args.get("task", "walker-walk"))
    sizes = [int(s) for s in str(args.get("seeds", "1,4")).split(",")]
    steps, repeats = int(args.get("steps", 3000)), int(args.get("repeats", 2))
    seed_steps = int(args.get("seed_steps", 1000))
    if steps <= seed_steps + 10:
        raise SystemExit(f"steps={steps} leaves no steps to time after seed_steps={seed_steps}:"
                         " give steps > seed_steps + 10.")
    stamps: list[float] = []

    # stand-ins: the host's part alone is under test (an action of zeros, an update that
    # notes when it was called)
    def act(self, obs, t0, task=None, eval_mode=False, stream="train"):
        return torch.zeros(*obs.shape[:2], self.cfg.action_dim)

    def update(self, batch):
        stamps.append(time.perf_counter())
        return {"value_loss": torch.zeros(self.S)}
    MBDPO.act, MBDPO.update = act, update
    MBDPO.diagnostics = lambda self, *a, **k: {}
    MBDPO.diagnostics_per_seed = lambda self, *a, **k: [{} for _ in range(self.S)]
    torch.set_num_threads(1)
    results = {S: [] for S in sizes}
    for r in range(repeats):
        for S in sizes:
            results[S].append(run(task, S, steps, seed_steps, stamps))
            print(f"round {r + 1}/{repeats} S={S}: {results[S][-1]['ms_per_step']:.3f} ms per "
                  "step", flush=True)
    one = float(np.median([x["ms_per_step"] for x in results[sizes[0]]]))
    rows = []
    print(f"\n{task}: host time per step of the online loop, act/update as stand-ins "
          f"({repeats} runs each, {results[sizes[0]][0]['steps_timed']:,} steps timed per run)")
    shown = {S: ", ".join(f"{x['ms_per_step']:.2f}" for x in results[S]) for S in sizes}
    w = max(len(v) for v in shown.values())
    print(f"{'S':>3} {'ms/step (median)':>17}  {'runs':<{w}} {'per seed':>9} "
          f"{'vs S=' + str(sizes[0]):>8}")
    for S in sizes:
        med = float(np.median([x["ms_per_step"] for x in results[S]]))
        rows.append({"S": S, "ms_per_step": med, "runs": results[S],
                     "ms_per_seed": round(med / S, 3), "ratio": round(med / one, 2)})
        print(f"{S:>3} {med:>17.3f}  {shown[S]:<{w}} {med / S:>9.3f} {med / one:>8.2f}")
    out = {"task": task, "machine": platform.machine(), "cpus": os.cpu_count(),
           "torch": torch.__version__, "steps": steps, "seed_steps": seed_steps, "rows": rows}
    path = str(args.get("out", os.path.join(ROOT, "benchmarks", "results", "host_loop.json")))
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(f"written: {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
