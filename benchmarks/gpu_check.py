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
5. ``learning``: does the fast path learn as eager does (issue 30, point 3)? Seeds 1 and 2 of
   walker-walk (``seeds=[1,2]``, one process), ``train_steps`` steps and an evaluation of 2
   episodes at the end, twice at once: the default path and ``compile=false`` (CUDA graphs of
   the eager operations, the same arithmetic as eager: plain eager at ~3.5 env steps/s would
   not fit the budget). Verdict ``within_seed_noise``: the two paths' mean evaluation returns
   differ by no more than the larger of the two paths' spreads between their seeds. Also
   each seed's env steps/s (``rates``; the two processes share the GPU).

``parts=`` runs a subset (e.g. ``parts=learning out=...`` in a second call for what the budget
cut from the first).

At the end it prints its figures as markdown: a table of the ``speed`` rows and one of the
targets of issues 30 and 31 (act <= 5 ms, update <= 2.5 ms, kernels per act <= 1,000,
walker-walk >= 150 env steps/s, four runs >= 250 in all, S = 4 >= 3x S = 1, the CUDA tests,
the learning check), each with what was measured and whether it is met; ``table=PATH``
prints them again from a JSON (the README's speed section takes them as they are).

Writes ``benchmarks/results/gpu_check.json`` (``out=PATH`` elsewhere) after every part: device,
torch, commit, each part's figures, output tail and seconds. ``tiny=true`` shrinks every
part (model size 1, 64 samples, 4 denoising steps, batch 32, 300 steps) for a dry run.

On an offline GPU machine without this project's dependencies: ``../shared/gpu/README.md`` of
the development workspace, or, by hand, wheels of mujoco, dm_control (+ dm-env, dm-tree,
labmaze, glfw, pyopengl, etils), hydra-core, omegaconf, antlr4-python3-runtime (4.9.3),
tensordict, gymnasium and greenlet (the ``learning`` part's ``seeds=[1,2]``) unpacked with
``pip install --no-index --no-deps --target .site``, then
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


def run_at_once(cmds: list[list[str]], timeout: float, env=None) -> dict:
    """``cmds`` as processes at once in ROOT, each ended at ``timeout`` s: rc 0 when all end
    with 0 (else their codes), seconds, each output's last 1,000 chars."""
    t = time.perf_counter()
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for cmd in cmds]
    rcs, tails = [], []
    for p in procs:
        try:
            o, _ = p.communicate(timeout=max(1.0, timeout - (time.perf_counter() - t)))
        except subprocess.TimeoutExpired:
            p.kill()
            o, _ = p.communicate()
        rcs.append(p.returncode)
        tails.append((o or "")[-1000:])
    return {"rc": 0 if all(rc == 0 for rc in rcs) else rcs,
            "seconds": round(time.perf_counter() - t, 1), "tail": "\n".join(tails)}


def eval_return(run_dir: str) -> float:
    """The mean return of a run's last evaluation (its eval.csv)."""
    with open(os.path.join(run_dir, "eval.csv")) as f:
        return float(list(csv.DictReader(f))[-1]["episode_reward"])


def _importable(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


def learning_verdict(returns: dict[str, list[float]]) -> dict:
    """Two paths' evaluation returns per seed: their means, their spreads between seeds, and
    whether the means differ by no more than the larger spread (within seed noise)."""
    mean = {k: sum(v) / len(v) for k, v in returns.items()}
    spread = {k: max(v) - min(v) for k, v in returns.items()}
    a, b = mean.values()
    return {"eval_returns": returns, "mean": mean, "seed_spread": spread,
            "within_seed_noise": abs(a - b) <= max(spread.values())}


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


# (what, part, the figure from that part, the target, met when ...): issues 30 and 31
TARGETS = (
    ("act ms (size 5, default)", "speed_5", lambda r: _row(r, 5, 1)["act_ms"], "<= 5",
     lambda x: x <= 5),
    ("update ms (size 5, default)", "speed_5", lambda r: _row(r, 5, 1)["update_ms"], "<= 2.5",
     lambda x: x <= 2.5),
    ("kernels per act (size 5, default)", "speed_5",
     lambda r: _row(r, 5, 1)["kernels_per_act"], "<= 1,000", lambda x: x <= 1000),
    ("walker-walk env steps/s, scripts/train.py, no flags", "train",
     lambda p: p.get("steps_per_s_last_episode", p["steps_per_s_run"]), ">= 150",
     lambda x: x >= 150),
    ("four runs at once, env steps/s in all", "parallel", lambda p: p["steps_per_s_sum"],
     ">= 250", lambda x: x >= 250),
    ("S = 4 seeds in one process / S = 1, total env steps/s (size 5)", "speed_5",
     lambda r: _row(r, 5, 4)["steps_ratio_vs_first_seeds"], ">= 3", lambda x: x >= 3),
    ("CUDA tests", "tests", lambda p: p["tail"].strip().splitlines()[-1].strip("= "), "pass",
     lambda x: " passed" in x and " failed" not in x and " error" not in x),
    ("learning, 2 seeds: default vs eager kernels, mean difference (larger seed spread)",
     "learning", lambda p: (abs(p["mean"]["default"] - p["mean"]["eager_kernels"]),
                            max(p["seed_spread"].values()), p["within_seed_noise"]),
     "within seed noise", lambda x: x[2]),
)


def _row(part: dict, size: int, seeds: int) -> dict:
    return next(r for r in part["rows"] if r["model_size"] == size and r["seeds"] == seeds
                and r["variant"] == "default")


def _path(row: dict) -> str:
    """What a speed row ran: compiled kernels, CUDA graphs, TF32 or IEEE matmuls."""
    kind = {(True, True): "compiled kernels in CUDA graphs", (False, True): "CUDA graphs",
            (True, False): "compiled", (False, False): "eager"}[
        (bool(row["compile"]), bool(row["cuda_graphs"]))]
    if row["variant"] == "default":
        return f"default (no flags): {kind}"
    return f"{kind}, {'IEEE fp32' if 'ieee' in row['variant'] else row['variant']}"


def _fmt(x) -> str:
    if isinstance(x, tuple):  # (figure, the bound it is held against, verdict)
        return f"{_fmt(x[0])} ({_fmt(x[1])})"
    if isinstance(x, float):
        return f"{x:,.2f}" if x < 100 else f"{x:,.0f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def summary(result: dict) -> str:
    """The check's figures as markdown: the speed rows, then the targets of issues 30 and 31
    with what was measured and whether it is met (a part that did not run or failed: "not
    measured", with its exit code)."""
    parts = result["parts"]
    tiny = ", tiny dry run: the targets are for the published settings" if result.get("tiny") \
        else ""
    lines = [f"GPU check on {result['device_name']} (torch {result['torch']}, commit "
             f"{result['commit']}, {result['started']}{tiny})",
             "", "| size | path | seeds | act ms | update ms | kernels/act | kernels/update "
             "| env steps/s, 1 env | 8 envs | first call s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name in sorted((n for n in parts if n.startswith("speed_")),
                       key=lambda n: int(n.split("_")[1])):
        for r in parts[name].get("rows", []):
            by = r["env_steps_per_s_by_num_envs"]
            lines.append("| " + " | ".join(_fmt(x) for x in (
                r["model_size"], _path(r), r["seeds"], r["act_ms"],
                r["update_ms"], r["kernels_per_act"], r["kernels_per_update"], by.get("1", "-"),
                by.get("8", "-"), r.get("first_call_s", "-"))) + " |")
    lines += ["", "| target | measured | wanted | met |", "|---|---|---|---|"]
    for what, name, figure, wanted, met in TARGETS:
        part = parts.get(name)
        # pytest's rc 1: tests failed, its last line says how many
        ran = part is not None and part.get("rc") in ((0, 1) if name == "tests" else (0,))
        try:
            x = figure(part) if ran else None
        except (KeyError, StopIteration, IndexError):
            x = None
        if x is None:
            shown = "not measured" + ("" if part is None else f" (rc {part.get('rc')})")
            lines.append(f"| {what} | {shown} | {wanted} | - |")
            continue
        lines.append(f"| {what} | {_fmt(x)} | {wanted} | {'yes' if met(x) else 'no'} |")
    return "\n".join(lines)


# its key=value settings (no others: it runs where this project's dependencies may not be)
KEYS, PASSES_CONFIG = ("device", "budget_s", "tiny", "out", "sizes", "train_steps",
                       "parallel_runs", "parts", "table"), False
PARTS = ("tests", "speed", "train", "parallel", "learning")


def main():
    args = dict(a.partition("=")[::2] for a in sys.argv[1:])
    unknown = set(args) - set(KEYS)
    if unknown:
        sys.exit(f"error: unknown argument(s) {', '.join(sorted(unknown))}: expected device=, "
                 "budget_s=, tiny=true, out=, sizes=, train_steps=, parallel_runs=, parts=, "
                 "table=.")
    if "table" in args:
        try:
            with open(args["table"]) as f:
                print(summary(json.load(f)))
        except (OSError, ValueError, KeyError, TypeError) as err:
            sys.exit(f"error: table={args['table']} is not a JSON this script wrote "
                     f"({type(err).__name__}: {err}): give the path of its out= file.")
        return
    parts = args.get("parts", ",".join(PARTS)).split(",")
    if set(parts) - set(PARTS):
        sys.exit(f"error: parts={args['parts']}: expected a comma-separated subset of "
                 f"{','.join(PARTS)}.")
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
    # -v: a part cut by its time limit still names each test that ended (cold compiles on a
    # fresh machine: 132 s of the 150 here on 2 CPU cores, 30 s with inductor's cache warm)
    tests = [py, "-m", "pytest", "-v", "tests/test_agent.py", "-k", "cuda or compiled",
             "-p", "no:cacheprovider"]
    if "tests" in parts:
        record("tests", run(tests, min(150, left()), env))

    def speed(size: int, seeds: str = "1") -> None:
        if left() < 60 or "speed" not in parts:
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
                    "kernels_per_act", "kernels_per_update", "aten_ops_per_act", "env_steps_per_s",
                    "env_steps_per_s_by_num_envs", "first_call_s")} for r in json.load(f)["rows"]]
        record(f"speed_{size}", part)

    speed(sizes[0], "1,4")  # then the runs, then the other sizes: what the budget cuts goes last
    work = tempfile.mkdtemp(prefix="gpu_check_runs_")
    train = [py, "scripts/train.py", "task=walker-walk", f"device={device}", f"work_dir={work}",
             "seed_steps=1000" if not tiny else "seed_steps=100", "eval_episodes=2",
             "eval_freq=1000000", "save_model_every=0", "log_freq=500", *shrink]
    if tiny:
        train.append("model_size=1")
    if left() > 60 and "train" in parts:
        part = run(train + [f"steps={steps}", "exp_name=one"], min(200, left() - 20), env)
        if part["rc"] == 0:
            part.update(train_rate(os.path.join(work, "walker-walk", "1", "one")))
        record("train", part)
    if left() > 60 and n_par > 1 and "parallel" in parts:
        threads = max(1, (os.cpu_count() or 2) // n_par)
        part = run_at_once([train + [f"steps={steps // 2}", f"seed={s}", "exp_name=par",
                                     f"threads={threads}"] for s in range(1, n_par + 1)],
                           left() - 10, env)
        part.update(runs=n_par, threads_each=threads)
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
    if left() > 60 and "learning" in parts and not _importable("greenlet"):
        record("learning", {"rc": "not run", "output": "seeds=[1,2] needs greenlet, which this "
                            "machine lacks: bring its wheel with the others (this file's "
                            "docstring) and run parts=learning."})
    elif left() > 60 and "learning" in parts:
        threads = max(1, (os.cpu_count() or 2) // 2)
        paths = {"default": [], "eager_kernels": ["compile=false"]}
        # one evaluation, at the last step
        base = [a for a in train if not a.startswith("eval_freq=")] + [
            f"steps={steps}", f"eval_freq={steps}", "seeds=[1,2]", f"threads={threads}"]
        part = run_at_once([base + [f"exp_name=learn_{name}", *extra]
                            for name, extra in paths.items()], left() - 10, env)
        if part["rc"] == 0:
            part.update(learning_verdict({name: [
                eval_return(os.path.join(work, "walker-walk", str(s), f"learn_{name}"))
                for s in (1, 2)] for name in paths}))
            # the seeds' rates through seeds=[...] (lanes taking turns, host_loop.py;
            # speed.py's seeds rows step them in one loop): both paths run at once, so each
            # shares the GPU
            part["rates"] = {name: [train_rate(os.path.join(work, "walker-walk", str(s),
                                                            f"learn_{name}")) for s in (1, 2)]
                             for name in paths}
        record("learning", part)
    print(f"wrote {out}\n")
    print(summary(result))


if __name__ == "__main__":
    main()
