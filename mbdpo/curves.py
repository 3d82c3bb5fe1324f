"""Learning curves in the published format (``step,reward,seed``): read from run folders, merged
over seeds, written atomically. The grid launcher, ``benchmarks/learning.py`` and the plots
share them."""
from __future__ import annotations

import csv
import os


def run_curve(folder: str) -> list[tuple[int, float]]:
    """(step, value) of a run folder's eval.csv: the return, or for tasks that report success
    the success rate in % (as the published curves give it); [] if it has none."""
    from mbdpo.trainers.evaluate import curve_value
    path = os.path.join(folder, "eval.csv")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [(int(float(r["step"])), curve_value(
                    {k: float(r[k]) for k in ("episode_reward", "episode_success") if r.get(k)}))
                for r in csv.DictReader(f)]


def write_curve(path: str, folders: dict[int, str]) -> int:
    """{seed: run folder} -> ``path`` (step,reward,seed, by seed then step); the rows written."""
    rows = sorted(((step, value, seed) for seed, folder in folders.items()
                   for step, value in run_curve(folder)), key=lambda r: (r[2], r[0]))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "reward", "seed"])
        w.writerows(rows)
    os.replace(tmp, path)
    return len(rows)
