"""What test_kill_online.py and test_kill_offline.py share (two files, so that two
pytest-xdist workers run them at once). Runs killed and stopped at random moments and at chosen
points, then resumed until done, are the run that was never interrupted: the same rows in
train.csv and eval.csv (all but the wall time), the same counters, the same replay and the same
weights (CPU, one thread: the runs are deterministic). Chosen points (``mbdpo.faults``): SIGKILL
between a checkpoint's replay file and its latest.pt, right after latest.pt, and inside the
pretraining burst; SIGTERM inside an episode, inside the burst and inside an evaluation."""
import os
import random
import signal
import subprocess
import sys
import time

import torch

from mbdpo.checkpoint import unit_file
from tests.conftest import ROOT, TINY, cli, rows

NET = [a for a in TINY if not a.startswith(("eval_episodes", "log_freq"))]
# 6 episodes of 100 steps; burst of 200 updates at step 200; evaluations (and latest.pt) at
# 200 and 400, a checkpoint at 300: the episodes ending at 100 and 500 are boundaries the loop
# runs through without waiting
ONLINE = ["task=mw-reach", "steps=600", "seed_steps=200", "eval_freq=200",
          "save_model_every=300", "eval_episodes=1", "log_freq=100", *NET]


def offline_args(data):
    return ["task=mt30", "multitask=true", f"data_dir={data}", "steps=240", "eval_freq=120",
            "save_model_every=40", "eval_episodes=1", "eval_tasks=[reacher-easy]",
            "log_freq=20", *NET]


def interrupt(args, fault=None, after=None, sig=signal.SIGKILL) -> int:
    """Start (or resume) the run; kill it at the fault point, or send ``sig`` ``after``
    seconds. Returns its exit status (0 when it finished first)."""
    env = dict(os.environ, WANDB_MODE="offline", MUJOCO_GL="egl", PYTHONUNBUFFERED="1")
    if fault:
        env["MBDPO_FAULT"] = fault
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "scripts", "train.py"), *args,
                             "resume=true"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    if after is not None:
        try:
            proc.wait(timeout=after)
        except subprocess.TimeoutExpired:
            t = time.time()
            proc.send_signal(sig)
            proc.wait(timeout=60)
            if sig == signal.SIGTERM:  # answered within seconds: saving (130), or before the
                # run's handler is installed (still importing), ended by the signal itself
                assert time.time() - t < 20, time.time() - t
                assert proc.returncode in (0, 130, -signal.SIGTERM), proc.stderr.read()
    else:
        proc.wait(timeout=600)
    err = proc.stderr.read()
    assert "Traceback" not in err, err
    return proc.returncode


def same_run(a: str, b: str, extra: str) -> None:
    for name in ("train.csv", "eval.csv"):
        ra, rb = rows(os.path.join(a, name)), rows(os.path.join(b, name))
        drop = lambda rs: [{k: v for k, v in r.items() if k != "elapsed_time"} for r in rs]  # noqa
        assert drop(ra) == drop(rb), name
    sa, sb = (torch.load(os.path.join(r, "models", "final.pt"), weights_only=True) for r in (a, b))
    for key in ("step", "last_eval_step", "counters"):
        assert sa[key] == sb[key], key
    for part in ("model", "optim", "pi_optim", "scale"):
        ta, tb = sa["agent"][part], sb["agent"][part]
        flat = lambda t: torch.cat([v.reshape(-1).float() for v in _tensors(t)])  # noqa
        assert torch.equal(flat(ta), flat(tb)), part
    ea, eb = (torch.load(unit_file(os.path.join(r, "models", "latest.pt"), extra),
                         weights_only=True) for r in (a, b))
    assert _equal(ea, eb), extra
    leftovers = [f for f in os.listdir(os.path.join(b, "models")) if f.startswith(".tmp")]
    assert not leftovers


def _tensors(tree):
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, dict):
        for k in sorted(tree, key=str):
            yield from _tensors(tree[k])
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            yield from _tensors(v)


def _equal(x, y) -> bool:
    if isinstance(x, torch.Tensor):
        return torch.equal(x.nan_to_num(), y.nan_to_num())
    if isinstance(x, dict):
        return x.keys() == y.keys() and all(_equal(x[k], y[k]) for k in x)
    return x == y


def at_points(args, faults) -> None:
    """Interrupt the run at each fault point in turn (each must be reached), then let it
    finish."""
    for fault in faults:
        code = interrupt(args, fault=fault)
        assert code in (-signal.SIGKILL, 130), (fault, code)
    assert interrupt(args) == 0


def at_random(args, rng, need, span, same) -> int:
    """Interrupt runs after random delays (SIGKILL; every fourth a SIGTERM), resuming each
    until a delay lets it finish, then compare it with ``same(exp_name)``; start another run
    folder until ``need`` interruptions found a run going (fewer per folder on a fast
    machine). Returns the interruptions."""
    n, i, chain = 0, 0, 0
    while n < need:
        name = f"random{chain}"
        for _ in range(60):
            sig = signal.SIGTERM if i % 4 == 3 else signal.SIGKILL
            i += 1
            if interrupt([*args, f"exp_name={name}"], after=rng.uniform(*span), sig=sig) == 0:
                break
            n += 1
        else:
            assert interrupt([*args, f"exp_name={name}"]) == 0
        same(name)
        chain += 1
    return n


def killed_anywhere(args, work, run, extra, faults, seed) -> None:
    """The whole check of one kind of run: a reference run, then one interrupted at each of
    ``faults`` in turn, then chains interrupted at random (``random.Random(seed)``, at least 20
    interruptions), each resumed until done and compared with the reference (``same_run``:
    ``extra`` is the run's data file, replay.pt or sampler.pt; ``run(name)`` its folder)."""
    cli("train.py", *args, f"work_dir={work}", "exp_name=ref")
    at_points([*args, f"work_dir={work}", "exp_name=points"], faults)
    same_run(run("ref"), run("points"), extra)
    n = at_random([*args, f"work_dir={work}"], random.Random(seed), 20, (2, 9),
                  lambda name: same_run(run("ref"), run(name), extra))
    assert n >= 20, n
