"""The GPU check: one command that measures what the GPU-speed work promises, in a few minutes,
and writes one JSON.

    python benchmarks/gpu_check.py                       # on a machine with a GPU
    python benchmarks/gpu_check.py device=cpu tiny=true  # a dry run of every part on the CPU

In this order (the first size's speed, then the runs, then the other sizes), each part in its
own process with a time limit taken from what is left of ``budget_s`` (default 480 s), so that
a part that hangs or fails costs only itself and what the budget cuts comes last:

1. ``tests``: the CUDA tests (``pytest tests/test_agent.py -k "cuda or compiled"``).
2. ``speed_<size>``: ``benchmarks/speed.py`` at the published planner and batch for eager
   IEEE fp32 (``fp32+ieee``, the old default) and the default path (no speed flags: compiled
   kernels in CUDA graphs, TF32 matmuls; ``speed.py variants=default+ieee`` separates the two),
   act and update ms, kernels per act, env steps/s with
   1 and 8 environments (one update per environment step), sizes 5, 1 and 19; the first size
   also with 4 seeds in one agent (total env steps/s of S = 4 against S = 1).
3. ``train``: ``scripts/train.py task=walker-walk steps=3000 seed_steps=1000`` with no speed
   flags: its env steps/s from train.csv (the last episode's steps over its wall time: acting,
   stepping, updating; and the whole run's), the return.
4. ``parallel``: four such runs at once (1,500 steps each, ``threads`` shared out): the sum
   of their last episodes' env steps/s.

Writes ``benchmarks/results/gpu_check.json`` (``out=PATH`` elsewhere) after every part: device,
torch, commit, each part's figures, output tail and seconds. ``tiny=true`` shrinks every
part (model size 1, 64 samples, 4 denoising steps, batch 32, 300 steps) for a dry run.

On an offline GPU machine without this project's dependencies: ``../shared/gpu/README.md`` of
the development workspace, or, by hand, wheels of mujoco, dm_control (+ dm-env, dm-tree,
labmaze, glfw, pyopengl, etils), hydra-core, omegaconf, antlr4-python3-runtime (4.9.3),
tensordict and gymnasium unpacked with ``pip install --no-index --no-deps --target .site``, then
``PYTHONPATH=$PWD/.site:$PWD MUJOCO_GL=disable python benchmarks/gpu_check.py``.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TINY = ["diffusion_num_samples=64", "diffusion_num_elites=8", "diffusion_num_pi_trajs=4",
        "diffusion_steps=4", "batch_size=32"]


def run(cmd: list[str], timeout: float, env=None) -> dict:
    """``cmd`` in ROOT with a time limit: exit code, seconds, the output's last 4,000 chars."""
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env,
                           timeout=max(1.0, timeout))
        rc, out = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as err:
        rc = "timeout"
        out = "".join(x.decode(errors="replace") if isinstance(x, bytes) else (x or "")
                      for x in (err.stdout, err.stderr))
    return {"cmd": " ".join(cmd), "rc": rc, "seconds": round(time.perf_counter() - t, 1),
            "tail": out[-4000:]}


def train_rate(run_dir: str) -> dict:
    """Env steps/s of a run from its train.csv: the last episode's, and the whole run's."""
    with open(os.path.join(run_dir, "train.csv")) as f:
        rows = list(csv.DictReader(f))
    last, prev = rows[-1], rows[-2] if len(rows) > 1 else None
    step, t = float(last["step"]), float(last["elapsed_time"])
    out = {"steps": step, "elapsed_s": round(t, 1), "steps_per_s_run": round(step / t, 2),
           "last_episode_reward": float(last["episode_reward"])}
    if prev is not None:
        out["steps_per_s_last_episode"] = round(
            (step - float(prev["step"])) / (t - float(prev["elapsed_time"])), 2)
    return out


# its key=value settings (no others: it runs where this project's dependencies may not be)
KEYS, PASSES_CONFIG = ("device", "budget_s", "tiny", "out", "sizes", "train_steps",
                       "parallel_runs"), False


def main():
    args = dict(a.partition("=")[::2] for a in sys.argv[1:])
    unknown = set(args) - set(KEYS)
    if unknown:
        sys.exit(f"error: unknown argument(s) {', '.join(sorted(unknown))}: expected device=, "
                 "budget_s=, tiny=true, out=, sizes=, train_steps=, parallel_runs=.")
    import torch

    from mbdpo.trainers.base import code_version
    device = args.get("device", "auto")
    tiny = args.get("tiny", "false") == "true"
    budget = float(args.get("budget_s", 480))
    sizes = [int(s) for s in args.get("sizes", "1" if tiny else "5,1,19").split(",")]
    steps = int(args.get("train_steps", 300 if tiny else 3000))
    n_par = int(args.get("parallel_runs", 4))
    out = os.path.abspath(args.get("out", os.path.join(ROOT, "benchmarks", "results",
                                                       "gpu_check.json")))
    shrink = TINY if tiny else []
    start = time.perf_counter()
    cuda = torch.cuda.is_available() and device != "cpu"
    result = {"device": device, "device_name": torch.cuda.get_device_name() if cuda else "cpu",
              "torch": torch.__version__, "commit": code_version(), "tiny": tiny,
              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "parts": {}}

    def left() -> float:
        return budget - (time.perf_counter() - start)

    def record(name: str, part: dict) -> None:
        part_ok = part.get("rc") == 0
        result["parts"][name] = part
        result["elapsed_s"] = round(time.perf_counter() - start, 1)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"[gpu_check] {name}: {'ok' if part_ok else 'rc ' + str(part.get('rc'))} in "
              f"{part.get('seconds')} s; {left():.0f} s of the budget left", flush=True)

    py = sys.executable
    env = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "disable"),
               WANDB_MODE="disabled", PYTHONPATH=os.pathsep.join(
                   [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                             if p]))
    tests = [py, "-m", "pytest", "-q", "tests/test_agent.py", "-k", "cuda or compiled",
             "-p", "no:cacheprovider"]
    record("tests", run(tests, min(150, left()), env))

    def speed(size: int, seeds: str = "1") -> None:
        if left() < 60:
            return
        path = os.path.join(tempfile.gettempdir(), f"gpu_check_speed_{size}.json")
        cmd = [py, "benchmarks/speed.py", f"sizes={size}", "variants=fp32+ieee,default",
               "num_envs=1,8", f"seeds={seeds}", f"device={device}", f"out={path}", *shrink]
        part = run(cmd, min(240, left() - 30), env)
        if part["rc"] == 0:
            with open(path) as f:
                part["rows"] = [{k: r[k] for k in (
                    "model_size", "variant", "seeds", "steps_ratio_vs_first_seeds",
                    "compile", "cuda_graphs", "act_ms", "update_ms",
                    "kernels_per_act", "aten_ops_per_act", "env_steps_per_s",
                    "env_steps_per_s_by_num_envs", "first_call_s")} for r in json.load(f)["rows"]]
        record(f"speed_{size}", part)

    speed(sizes[0], "1,4")  # then the runs, then the other sizes: what the budget cuts goes last
    work = tempfile.mkdtemp(prefix="gpu_check_runs_")
    train = [py, "scripts/train.py", "task=walker-walk", f"device={device}", f"work_dir={work}",
             "seed_steps=1000" if not tiny else "seed_steps=100", "eval_episodes=2",
             "eval_freq=1000000", "save_model_every=0", "log_freq=500", *shrink]
    if tiny:
        train.append("model_size=1")
    if left() > 60:
        part = run(train + [f"steps={steps}", "exp_name=one"], min(200, left() - 20), env)
        if part["rc"] == 0:
            part.update(train_rate(os.path.join(work, "walker-walk", "1", "one")))
        record("train", part)
    if left() > 60 and n_par > 1:
        threads = max(1, (os.cpu_count() or 2) // n_par)
        t = time.perf_counter()
        procs = [subprocess.Popen(train + [f"steps={steps // 2}", f"seed={s}", "exp_name=par",
                                           f"threads={threads}"],
                                  cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
                 for s in range(1, n_par + 1)]
        rcs, tails = [], []
        for p in procs:
            try:
                o, _ = p.communicate(timeout=max(1.0, left() - 10))
            except subprocess.TimeoutExpired:
                p.kill()
                o, _ = p.communicate()
            rcs.append(p.returncode)
            tails.append((o or "")[-1000:])
        part = {"rc": 0 if all(rc == 0 for rc in rcs) else rcs, "runs": n_par,
                "threads_each": threads, "seconds": round(time.perf_counter() - t, 1),
                "tail": "\n".join(tails)}
        if part["rc"] == 0:
            rates = [train_rate(os.path.join(work, "walker-walk", str(s), "par"))
                     for s in range(1, n_par + 1)]
            part["each"] = rates
            key = "steps_per_s_last_episode" if "steps_per_s_last_episode" in rates[0] \
                else "steps_per_s_run"
            part["steps_per_s_sum"] = round(sum(r[key] for r in rates), 2)
        record("parallel", part)
    for size in sizes[1:]:
        speed(size)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
