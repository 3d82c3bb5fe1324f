"""The command line, end to end, on real DMControl tasks: training writes CSVs and checkpoints,
resume continues without duplicated rows, a signal saves before exiting, evaluate.py loads the
checkpoint, and user mistakes get one clear sentence."""
import importlib.metadata
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import torch

from mbdpo.checkpoint import unit_file
from mbdpo.trainers.base import code_version
from tests.conftest import ROOT, TINY, assert_picture, cli, rows



@pytest.fixture(scope="module")
def state_run(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("logs"))
    out = cli("train.py", "task=cartpole-balance", "steps=1000", "seed_steps=500",
              "eval_freq=500", "save_model_every=500", f"work_dir={work}", "exp_name=t", *TINY)
    return work, os.path.join(work, "cartpole-balance", "1", "t"), out


@pytest.mark.slow
def test_train_writes_csvs_and_checkpoints(state_run):
    _, run, proc = state_run
    train, ev = rows(os.path.join(run, "train.csv")), rows(os.path.join(run, "eval.csv"))
    assert [int(r["step"]) for r in train] == [500, 1000]
    assert [int(r["step"]) for r in ev] == [0, 500, 1000]
    for r in train + ev:
        assert 0 <= float(r["episode_reward"]) <= 1000
    assert "episode_success" not in ev[0]  # DMControl reports no success
    # episode rows carry the last update's outputs: none before the first update (step 500)
    stats = ("consistency_loss", "reward_loss", "value_loss", "energy_loss", "pi_loss",
             "total_loss", "grad_norm", "td_target", "q_scale", "energy_mean", "energy_std",
             "td_error", "cross_td_error", "action_drift", "elite_spread")
    assert all(train[0][k] == "" for k in stats)
    values = {k: float(train[1][k]) for k in stats}
    assert all(v == v and abs(v) < 1e6 for v in values.values()), values
    assert values["q_scale"] >= 1 and values["energy_std"] > 0 and values["grad_norm"] > 0
    assert list(train[0])[-1] == "elapsed_time"
    models = os.listdir(os.path.join(run, "models"))
    assert {"final.pt", "500.pt", "latest.pt"} <= set(models)
    # one unit: latest.pt names its replay file, the only one left
    replay = os.path.basename(unit_file(os.path.join(run, "models", "latest.pt"), "replay.pt"))
    assert replay.startswith("replay-1000-") and [m for m in models if "replay" in m] == [replay]
    state = torch.load(os.path.join(run, "models", "final.pt"), weights_only=True)
    assert state["step"] == 1000 and state["config"]["model_size"] == 1
    assert {"model", "optim", "pi_optim", "scale", "warm"} <= set(state["agent"])
    assert "steps/s" in proc.stdout and "ETA" in proc.stdout and "Pretraining on" in proc.stdout
    # the burst on the seed data (500 updates) shows a bar with its rate
    assert "Pretraining: " in proc.stderr and "update/s" in proc.stderr and "/500 " in proc.stderr
    with open(os.path.join(run, "metadata.json")) as f:  # the code that made the run
        meta = json.load(f)
    assert meta["commits"] == [code_version()]
    assert code_version() != "unknown"
    # the run's records: every start, the resolved settings, the packages
    (start,) = meta["starts"]
    assert start["commit"] == code_version().split("+")[0]
    assert start["dirty"] == code_version().endswith("+dirty")
    assert "scripts/train.py task=cartpole-balance steps=1000" in start["command"]
    assert (start["device"], start["threads"], start["torch"]) == ("cpu", 1, torch.__version__)
    assert start["device_name"]
    from omegaconf import OmegaConf
    saved = OmegaConf.load(os.path.join(run, "config.yaml"))
    assert (saved.task, saved.steps, saved.seed_steps, saved.mlp_dim, saved.obs_shape) == \
        ("cartpole-balance", 1000, 500, 64, [5])
    with open(os.path.join(run, "pip_freeze.txt")) as f:
        freeze = f.read().splitlines()
    # the installed distribution's version: a PyPI CUDA wheel says 2.11.0 where
    # torch.__version__ says 2.11.0+cu130
    assert f"torch=={importlib.metadata.version('torch')}" in freeze
    assert any(p.startswith("mujoco==") for p in freeze)


@pytest.mark.slow
def test_evaluate_loads_checkpoint(state_run):
    _, run, _ = state_run
    ck = os.path.join(run, "models", "final.pt")
    out = cli("evaluate.py", "task=cartpole-balance", f"checkpoint={ck}", "eval_episodes=2",
              "save_video=true", "plan_horizon=4", *TINY)
    assert "cartpole-balance: reward" in out.stdout and "over 2 episodes" in out.stdout
    assert "(plan_horizon 4, trained with horizon 3)" in out.stdout
    ev = rows(os.path.join(run, "models", "eval_final.csv"))
    assert ev[-1]["task"] == "cartpole-balance" and float(ev[-1]["episode_reward"]) >= 0
    assert os.path.getsize(os.path.join(run, "models", "eval_final_cartpole-balance.mp4")) > 1000


@pytest.mark.slow
def test_evaluate_names_the_mismatching_setting(state_run):
    _, run, _ = state_run
    ck = os.path.join(run, "models", "final.pt")
    args = [a for a in TINY if not a.startswith("mlp_dim")] + ["mlp_dim=128"]
    out = cli("evaluate.py", "task=cartpole-balance", f"checkpoint={ck}", *args, check=False)
    assert out.returncode == 2
    assert "mlp_dim is 64 in the checkpoint but 128 here" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_evaluate_plans_as_the_run_did(state_run):
    """No planner settings given: the run's own (32 samples x 4 steps), named in one line, not
    the default 512 x 20 (an evaluation of seconds would take many minutes)."""
    _, run, _ = state_run
    ck = os.path.join(run, "models", "final.pt")
    out = cli("evaluate.py", "task=cartpole-balance", f"checkpoint={ck}", "eval_episodes=1",
              "threads=1")
    assert "Planner of the checkpoint's run: diffusion_steps=4, diffusion_num_samples=32, " \
           "diffusion_num_elites=8, diffusion_num_pi_trajs=4 (override on the command line)." \
           in out.stdout, out.stdout


@pytest.mark.slow
def test_visualize_latents_of_a_checkpoint(state_run):
    """Two evaluation episodes' latents embedded by LLE: the figure's points are the saved
    embedding of the saved latents, coloured by time step; the title gives the return."""
    import numpy as np

    from mbdpo import plots
    _, run, _ = state_run
    models = os.path.join(run, "models")
    out = cli("visualize_latents.py", "task=cartpole-balance",
              f"checkpoint={os.path.join(models, 'final.pt')}", "eval_episodes=2", "threads=1")
    stem = os.path.join(models, "latents_final_cartpole-balance")
    assert out.stdout.split()[-2:] == [stem + ".png", stem + ".pdf"], out.stdout
    assert "cartpole-balance: return" in out.stdout and "step 1,000" in out.stdout
    assert_picture(stem + ".png", 2 * 540, 480)  # two 4.5 x 4 in panels at 120 dpi
    data = np.load(stem + ".npz")
    assert data["latents"].shape == (2 * 501, 32) and data["embedded"].shape == (2 * 501, 2)
    assert list(np.bincount(data["episode"])) == [501, 501]
    np.testing.assert_allclose(plots.embed_2d(data["latents"], "lle", seed=1),
                               data["embedded"], atol=1e-8)
    points = [data["embedded"][data["episode"] == i] for i in (0, 1)]
    fig = plots.latents_figure(points, "t")
    one, every = fig.axes[:2]
    np.testing.assert_allclose(one.collections[0].get_offsets(), points[0])
    for sc, p in zip(every.collections, points):
        np.testing.assert_allclose(sc.get_offsets(), p)
        assert list(sc.get_array()) == list(range(501))


@pytest.mark.slow
def test_resume_continues_without_duplicate_rows(state_run, tmp_path):
    import shutil
    work, run, _ = state_run
    copy = str(tmp_path / "logs")
    shutil.copytree(work, copy)
    out = cli("train.py", "task=cartpole-balance", "steps=1500", "seed_steps=500",
              "eval_freq=500", "save_model_every=500", f"work_dir={copy}", "exp_name=t",
              "resume=true", *TINY)
    assert "Resumed from" in out.stdout and "at step 1,000" in out.stdout
    run2 = os.path.join(copy, "cartpole-balance", "1", "t")
    steps = [int(r["step"]) for r in rows(os.path.join(run2, "eval.csv"))]
    assert steps == [0, 500, 1000, 1500]
    assert [int(r["step"]) for r in rows(os.path.join(run2, "train.csv"))] == [500, 1000, 1500]
    state = torch.load(os.path.join(run2, "models", "final.pt"), weights_only=True)
    assert state["step"] == 1500 and state["counters"]["episode"] == 3
    replay = torch.load(unit_file(os.path.join(run2, "models", "latest.pt"), "replay.pt"),
                        weights_only=True)
    assert replay["num_episodes"] == 3 and replay["size"] == 3 * 501
    with open(os.path.join(run2, "metadata.json")) as f:  # the same code: one entry
        meta = json.load(f)
    assert meta["commits"] == [code_version()]
    assert len(meta["starts"]) == 2 and "resume=true" in meta["starts"][1]["command"]


@pytest.mark.slow
def test_num_envs_trains_resumes_and_writes_the_same_csvs(state_run, tmp_path):
    """num_envs=2 (worker processes): the same CSV columns as one environment, episodes of
    both environments in replay, one update per environment step after the burst, the same
    episodes and weights with the environments stepped in turn in this process
    (async_envs=false), and a resume that continues the curve."""
    _, run1, _ = state_run
    work = str(tmp_path)
    common = ["task=cartpole-balance", "seed_steps=500", "eval_freq=1000", "num_envs=2",
              f"work_dir={work}", *TINY]
    args = [*common, "exp_name=n2"]
    cli("train.py", "steps=2000", *args)
    run = os.path.join(work, "cartpole-balance", "1", "n2")
    for name in ("eval.csv", "train.csv"):
        assert list(rows(os.path.join(run, name))[0]) == list(rows(os.path.join(run1, name))[0])
    assert [int(r["step"]) for r in rows(os.path.join(run, "eval.csv"))] == [0, 1000, 2000]
    # two 500-step episodes at once: the burst (500) at step 1,000, then 1 per step
    state = torch.load(os.path.join(run, "models", "final.pt"), weights_only=True)
    assert state["counters"]["episode"] == 4 and state["counters"]["updates"] == 500 + 1000
    # the same environments stepped in turn in this process (async_envs=false): the same run
    cli("train.py", "steps=2000", "async_envs=false", *common, "exp_name=n2s")
    sync = os.path.join(work, "cartpole-balance", "1", "n2s")
    assert rows(os.path.join(sync, "train.csv"))[-1]["episode_reward"] == \
        rows(os.path.join(run, "train.csv"))[-1]["episode_reward"]
    replays = [torch.load(unit_file(os.path.join(r, "models", "latest.pt"), "replay.pt"),
                          weights_only=True)
               for r in (run, sync)]
    assert replays[1]["num_episodes"] == 4
    for key in ("obs", "action", "reward"):
        a, b = (r["tensors"][key].nan_to_num() for r in replays)
        assert torch.equal(a, b), key
    weights = [torch.load(os.path.join(r, "models", "final.pt"), weights_only=True)["agent"]
               ["model"] for r in (run, sync)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    out = cli("train.py", "steps=3000", "resume=true", *args)
    assert "at step 2,000" in out.stdout
    assert [int(r["step"]) for r in rows(os.path.join(run, "eval.csv"))] == [0, 1000, 2000, 3000]
    state = torch.load(os.path.join(run, "models", "final.pt"), weights_only=True)
    assert state["counters"]["episode"] == 6 and state["counters"]["updates"] == 2500
    replay = torch.load(unit_file(os.path.join(run, "models", "latest.pt"), "replay.pt"),
                        weights_only=True)
    assert replay["num_episodes"] == 6 and replay["size"] == 6 * 501
    rewards = [float(r["episode_reward"]) for r in rows(os.path.join(run, "train.csv"))]
    assert len(rewards) == 6 and len(set(rewards)) == 6  # distinct start states


@pytest.mark.slow
def test_utd_sets_updates_per_environment_step(tmp_path):
    cli("train.py", "task=cartpole-balance", "steps=1000", "seed_steps=500", "eval_freq=1000",
        "utd=0.5", f"work_dir={tmp_path}", "exp_name=u", *TINY)
    state = torch.load(os.path.join(tmp_path, "cartpole-balance", "1", "u", "models",
                                    "final.pt"), weights_only=True)
    assert state["counters"]["updates"] == 500 + 250  # the burst, then one per two steps


@pytest.mark.slow
def test_sigterm_saves_checkpoint_then_resume(tmp_path):
    work = str(tmp_path)
    env = dict(os.environ, WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "scripts", "train.py"), "task=cartpole-balance",
         "steps=5000", "seed_steps=500", "eval_freq=100000", f"work_dir={work}",
         "exp_name=sig", *TINY], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=env, cwd=ROOT)
    lines = []
    for line in proc.stdout:  # wait until learning has started, past the first episode
        lines.append(line)
        if "step       750" in line:
            break
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, "".join(lines) + rest
    assert "Stopped: saved" in rest and "resume=true" in rest
    run = os.path.join(work, "cartpole-balance", "1", "sig")
    state = torch.load(os.path.join(run, "models", "latest.pt"), weights_only=True)
    assert state["step"] == 500  # the unfinished second episode is dropped
    assert [int(r["step"]) for r in rows(os.path.join(run, "train.csv"))] == [500]


STOP_IN_A_CLASS_BODY = """
import os, signal, sys, time
from mbdpo.cli import run
from mbdpo.trainers.online import OnlineTrainer
from tests.conftest import make_cfg
def send():
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
def job(cfg):
    class Sends:  # as torch importing torch._dynamo while the agent is built
        def __set_name__(self, owner, name):
            if sys.argv[1] == "signal":
                send()
            if sys.argv[1] == "cause":  # a second Ctrl-C inside the loop, wrapped the same way
                raise RuntimeError("wrapped") from KeyboardInterrupt()
            raise RuntimeError("a bug")
    class Dies:
        def __del__(self):
            send()
    if sys.argv[1] == "lost":
        Dies()  # its KeyboardInterrupt is printed and dropped
        return OnlineTrainer(cfg).train()
    class Body:
        x = Sends()
run(make_cfg("task=cartpole-balance", *sys.argv[2:], parse=False), job)
"""


def test_a_stop_that_code_turns_into_another_error_or_drops_still_stops():
    """SIGTERM before the loop takes it over, while a class body's __set_name__ runs: Python
    3.11 turns the KeyboardInterrupt into a RuntimeError (CI saw it while torch imported
    torch._dynamo); the run still ends at once with status 130 and the stop's sentence, as
    it does for an error caused by a KeyboardInterrupt (a second Ctrl-C, which the loop's
    handler raises). The same error with neither is still a traceback. A stop whose
    KeyboardInterrupt is dropped (raised in a ``__del__``) is taken over by the loop, which
    saves the run's start and exits with 130."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    work = tempfile.mkdtemp()
    stopped, caused, bug, lost = (
        subprocess.run([sys.executable, "-c", STOP_IN_A_CLASS_BODY, arg, *extra], env=env,
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
        for arg, extra in (("signal", []), ("cause", []), ("bug", []),
                           ("lost", [*TINY, "steps=1000", f"work_dir={work}"])))
    for out in (stopped, caused):
        assert out.returncode == 130, out.stderr
        assert "Stopped at once" in out.stderr and "Traceback" not in out.stderr
    assert bug.returncode == 1, bug.stderr
    assert "Traceback" in bug.stderr and "RuntimeError: a bug" in bug.stderr, bug.stderr
    # (the traceback quotes cli.py's source, the sentence among it, indented)
    assert not any(line.startswith("Stopped at once") for line in bug.stderr.splitlines())
    assert lost.returncode == 130 and "Stopped: saved" in lost.stdout, lost.stdout + lost.stderr
    assert "Traceback" not in lost.stderr and "Exception ignored" not in lost.stderr, lost.stderr
    latest = os.path.join(work, "cartpole-balance", "1", "default", "models", "latest.pt")
    assert torch.load(latest, weights_only=True)["step"] == 0


def test_a_lost_stop_is_not_printed_and_other_lost_errors_still_are():
    """A stop signal handled inside a weakref callback (CI: importlib's module-lock cleanup
    while the offline run's evaluation imported a task) raises its KeyboardInterrupt where
    Python cannot propagate it: printed as "Exception ignored in ..." with a traceback that
    read like a crash, in a run that then saved and stopped as it should. Dropped silently
    now, the stop kept, also for the loop's second signal; any other lost error still reaches
    the hook that was there before, which comes back after."""
    import weakref

    from mbdpo.trainers.base import StopAtOnce, StopRequested

    class Dies:
        pass

    def lose(fn):  # fn runs in a weakref callback
        obj = Dies()
        refs = [weakref.ref(obj, lambda _: fn())]  # the callback runs only while its ref lives
        del obj
        return refs

    seen, old = [], sys.unraisablehook
    sys.unraisablehook = seen.append
    try:
        with StopAtOnce() as stop:
            lose(lambda: os.kill(os.getpid(), signal.SIGTERM))  # the handler runs in there
            lose(lambda: 1 / 0)
            with StopRequested() as loop:
                assert loop.signum == signal.SIGTERM  # taken over
                lose(lambda: os.kill(os.getpid(), signal.SIGINT))  # a second: stop at once
        assert sys.unraisablehook == seen.append
    finally:
        sys.unraisablehook = old
    assert stop.signum == loop.signum == signal.SIGTERM  # the second is StopRequested's raise
    assert [type(u.exc_value) for u in seen] == [ZeroDivisionError], seen


def test_a_stop_lost_while_compiling_is_raised_again_until_it_lands():
    """A first stop while a function compiles raises ``StopWhileCompiling`` at once; one that
    lands in a weakref callback (dynamo runs some while it compiles: seen, that stop waited
    39 s for the compile's end) is dropped there and raised again 0.1 s later. Outside a
    compile, or with ``while_compiling=False`` (torchrun), a stop only sets the flag."""
    import weakref

    from mbdpo import compiled
    from mbdpo.trainers.base import StopRequested, StopWhileCompiling

    class Dies:
        pass

    def lost_signal():  # the handler runs inside a weakref callback: its raise is dropped
        obj = Dies()
        refs = [weakref.ref(obj, lambda _: os.kill(os.getpid(), signal.SIGTERM))]
        del obj
        return refs

    def compile_for(seconds: float) -> float:
        """Stand in for a compile: busy for ``seconds``; how long it ran."""
        t = time.perf_counter()
        compiled._compiling += 1
        try:
            while time.perf_counter() - t < seconds:
                pass
        finally:
            compiled._compiling -= 1
        return time.perf_counter() - t

    with StopRequested() as stop:
        t = time.perf_counter()
        with pytest.raises(StopWhileCompiling):
            compiled._compiling += 1
            try:
                lost_signal()
                compile_for(5.0)
            finally:
                compiled._compiling -= 1
        assert stop.signum == signal.SIGTERM and time.perf_counter() - t < 2.0
    assert signal.getsignal(signal.SIGALRM) == signal.SIG_DFL  # the retry's timer is gone
    with StopRequested(while_compiling=False) as stop:
        lost_signal()
        assert compile_for(0.3) >= 0.3 and stop.signum == signal.SIGTERM
    with StopRequested() as stop:
        os.kill(os.getpid(), signal.SIGTERM)  # not compiling: the flag only
        assert stop.signum == signal.SIGTERM
        # ... but a compile that would start after it does not (CI: the signal came between
        # the "compiling ..." line and the compile, which then ran 28 s to its end)
        calls = compiled.Compiled(lambda x: x + 1, label="a test function")
        with pytest.raises(StopWhileCompiling):
            calls(torch.zeros(3))
        assert not calls.seen and not calls.failed and not compiled.compiling()
    assert compiled.on_compile is None  # the hook is gone with the handler


@pytest.mark.slow
def test_sigterm_during_an_evaluation_is_answered_at_once(tmp_path):
    """SIGTERM while the step-0 evaluation runs (shown by its progress bar): the run saves and
    exits within seconds, not at the evaluation's end; resume evaluates step 0 again."""
    work = str(tmp_path)
    args = ["task=cartpole-balance", "seed_steps=500", "eval_freq=500", f"work_dir={work}",
            "exp_name=se", *TINY]
    env = dict(os.environ, WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(  # 2 x 500 evaluation steps of a 1,024 x 50 planner: minutes
        [sys.executable, os.path.join(ROOT, "scripts", "train.py"), "steps=500", *args,
         "diffusion_num_samples=1024", "diffusion_steps=50"], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    out = b""
    while b"Evaluating" not in out:  # the bar's first display ends with no newline
        chunk = os.read(proc.stdout.fileno(), 4096)
        assert chunk, out.decode()
        out += chunk
    t = time.time()
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=120)
    waited = time.time() - t
    text = (out + rest).decode()
    assert proc.returncode == 130 and "Stopped: saved" in text, text
    assert waited < 15, waited
    run = os.path.join(work, "cartpole-balance", "1", "se")
    state = torch.load(os.path.join(run, "models", "latest.pt"), weights_only=True)
    assert state["step"] == 0 and state["last_eval_step"] == -1
    assert not os.path.exists(os.path.join(run, "eval.csv")) or not rows(
        os.path.join(run, "eval.csv"))
    cli("train.py", "steps=500", "resume=true", *args)
    assert [int(r["step"]) for r in rows(os.path.join(run, "eval.csv"))] == [0, 500]


COMPILED = ["task=cartpole-balance", "steps=250", "seed_steps=125", "eval_freq=250",
            "compile=true", "save_model_every=0", *TINY]


def cut_while_compiling(work: str, args: list, cache: dict) -> str:
    """Start train.py with ``args`` and an empty inductor cache (``cache``: its compiles take
    seconds here, minutes with Triton on a GPU), SIGTERM it as soon as the step-0
    evaluation's planner starts compiling; its output, once it has stopped (status 130)."""
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "scripts", "train.py"), "exp_name=cut", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT,
        env=dict(os.environ, WANDB_MODE="offline", PYTHONUNBUFFERED="1", **cache))
    out = b""
    while b"compiling the planner's policy rollouts" not in out:  # no newline until done
        chunk = os.read(proc.stdout.fileno(), 4096)
        assert chunk, out.decode()
        out += chunk
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=120)
    text = (out + rest).decode()
    assert proc.returncode == 130 and "Stopped: saved" in text, text
    # cut: the first compile never finished (its line ends with its time) nor the next began
    assert re.search(r"policy rollouts \([^)]*\) \.\.\. \d", text) is None, text
    assert "denoising step" not in text and "Traceback" not in text, text
    return text


def latest_step(run: str) -> tuple:
    state = torch.load(os.path.join(run, "models", "latest.pt"), weights_only=True)
    return state["step"], state["last_eval_step"]


@pytest.mark.slow
def test_sigterm_while_compiling_is_answered_at_once_and_resume_is_the_whole_run(tmp_path):
    """SIGTERM while the step-0 evaluation's planner compiles: the compile is cut (before, the
    stop waited for it: 20 s here), the run saves its last mark (step 0, no evaluation) and
    exits; resumed, it is the run that was never stopped (evaluations and final weights, bit
    for bit)."""
    work = str(tmp_path)
    args, cache = [*COMPILED, f"work_dir={work}"], {
        "TORCHINDUCTOR_CACHE_DIR": os.path.join(work, "inductor")}
    cut_while_compiling(work, args, cache)
    cut, whole = (os.path.join(work, "cartpole-balance", "1", n) for n in ("cut", "whole"))
    assert latest_step(cut) == (0, -1)
    cli("train.py", "exp_name=cut", "resume=true", *args, env=cache)
    cli("train.py", "exp_name=whole", *args, env=cache)
    evals = [[(r["step"], r["episode_reward"]) for r in rows(os.path.join(d, "eval.csv"))]
             for d in (cut, whole)]
    assert evals[0] == evals[1] and len(evals[0]) == 2, evals
    a, b = (torch.load(os.path.join(d, "models", "final.pt"), weights_only=True)["agent"]
            for d in (cut, whole))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_sigterm_while_the_seeds_agent_compiles_saves_every_seed_at_its_mark(tmp_path):
    """``seeds=[1,2]``: the batched agent compiles once for both seeds; a SIGTERM then is
    answered at once and each seed's run saves its own step-0 mark."""
    work = str(tmp_path)
    text = cut_while_compiling(work, [*COMPILED, f"work_dir={work}", "seeds=[1,2]"],
                               {"TORCHINDUCTOR_CACHE_DIR": os.path.join(work, "inductor")})
    assert text.count("Stopped: saved") == 2, text
    for s in (1, 2):
        assert latest_step(os.path.join(work, "cartpole-balance", str(s), "cut")) == (0, -1)


@pytest.mark.slow
def test_a_new_run_never_replaces_an_existing_one(state_run, tmp_path):
    """The same task, seed and exp_name again without resume=true: refused in one sentence,
    nothing of the finished run changed; overwrite=true moves it aside whole and starts anew."""
    import shutil
    work, run, _ = state_run
    copy = os.path.join(str(tmp_path), "cartpole-balance", "1", "t")
    shutil.copytree(run, copy)
    before = {n: os.path.getmtime(os.path.join(copy, "models", n))
              for n in os.listdir(os.path.join(copy, "models"))}
    args = ["task=cartpole-balance", "steps=500", "seed_steps=250", "eval_freq=500",
            "save_model_every=0", f"work_dir={tmp_path}", "exp_name=t", *TINY]
    out = cli("train.py", *args, check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert f"error: {copy} already holds a run: pass resume=true to continue it, " \
        "overwrite=true to move it aside and start anew, or another exp_name." in out.stderr
    assert {n: os.path.getmtime(os.path.join(copy, "models", n))
            for n in os.listdir(os.path.join(copy, "models"))} == before
    out = cli("train.py", *args, "overwrite=true")
    aside = [d for d in os.listdir(os.path.dirname(copy)) if d.startswith("t.replaced-")]
    assert len(aside) == 1 and f"is now in {os.path.join(os.path.dirname(copy), aside[0])}" \
        in out.stdout
    old = os.path.join(os.path.dirname(copy), aside[0])
    assert sorted(os.listdir(os.path.join(old, "models"))) == sorted(before)
    assert [int(r["step"]) for r in rows(os.path.join(old, "eval.csv"))] == [0, 500, 1000]
    assert [int(r["step"]) for r in rows(os.path.join(copy, "eval.csv"))] == [0, 500]


@pytest.mark.slow
def test_pixel_training_runs(tmp_path):
    out = cli("train.py", "task=cartpole-swingup", "obs=rgb", "steps=500", "seed_steps=250",
              "eval_freq=500", "eval_episodes=1", "save_model_every=0", f"work_dir={tmp_path}",
              "exp_name=px", *[a for a in TINY if not a.startswith("eval_episodes")])
    run = os.path.join(str(tmp_path), "cartpole-swingup", "1", "px")
    assert [int(r["step"]) for r in rows(os.path.join(run, "eval.csv"))] == [0, 500]
    state = torch.load(os.path.join(run, "models", "final.pt"), weights_only=True)
    assert state["config"]["obs_shape"] == [9, 64, 64]
    assert any(k.startswith("encoder.convs") for k in state["agent"]["model"])
    assert "(rgb," in out.stdout


def wandb_history(path: str) -> list[dict]:
    """The history rows of an offline wandb run file. wandb 0.31 (its writer is in Go) ships no
    reader for these files: they are LevelDB-style logs (a 7-byte file header ':W&B'..., then
    32 KiB blocks of records with a 7-byte header: crc32, length, kind 1 full / 2 first / 3
    middle / 4 last) of wandb's Record protobufs."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb
    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b":W&B"
    pos, parts, rows = 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        parts = chunk if kind in (1, 2) else parts + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(parts)
            if record.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                             for i in record.history.item})
    return rows


@pytest.mark.slow
def test_wandb_and_tensorboard_hold_the_csvs_numbers_and_wandb_the_video(tmp_path):
    cli("train.py", "task=cartpole-balance", "steps=1000", "seed_steps=500", "eval_freq=1000",
        "save_model_every=0", f"work_dir={tmp_path}", "exp_name=wb", "enable_wandb=true",
        "wandb_mode=offline", "save_video=true", "enable_tensorboard=true", *TINY)
    run = os.path.join(str(tmp_path), "cartpole-balance", "1", "wb")
    runs = [d for d in os.listdir(os.path.join(run, "wandb")) if d.startswith("offline-run")]
    assert len(runs) == 1
    assert os.path.exists(os.path.join(run, "wandb_id.txt"))
    folder = os.path.join(run, "wandb", runs[0])
    history = wandb_history(next(os.path.join(folder, f) for f in os.listdir(folder)
                                 if f.endswith(".wandb")))
    by_step: dict = {}
    for h in history:
        by_step.setdefault(h["_step"], {}).update(h)
    train, ev = rows(os.path.join(run, "train.csv")), rows(os.path.join(run, "eval.csv"))
    assert train[-1]["value_loss"] != ""  # the row after the first updates carries them
    for name, table in (("train", train), ("eval", ev)):
        for r in table:
            logged = by_step[int(r["step"])]
            for k, v in r.items():
                if k != "step" and v != "":
                    assert isinstance(logged[f"{name}/{k}"], (int, float)), (k, logged)
                    assert logged[f"{name}/{k}"] == pytest.approx(float(v), rel=1e-5), k
    # TensorBoard (enable_tensorboard=true): the same numbers as scalars
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(os.path.join(run, "tensorboard"))
    events.Reload()
    for name, table in (("train", train), ("eval", ev)):
        for k in table[0]:
            if k == "step":
                continue
            logged = {e.step: e.value for e in events.Scalars(f"{name}/{k}")}
            want = {int(r["step"]): float(r[k]) for r in table if r[k] != ""}
            assert logged.keys() == want.keys(), k
            assert all(logged[s] == pytest.approx(v, rel=1e-5) for s, v in want.items()), k
    # the evaluation videos as media, at the evaluation steps
    videos = {s: h for s, h in by_step.items() if "eval/video/_type" in h}
    assert sorted(videos) == [0, 1000]
    for step, h in videos.items():
        assert h["eval/video/_type"] == "video-file"
        mine = os.path.getsize(os.path.join(run, "videos", f"{step}.mp4"))
        media = os.path.join(folder, "files", h["eval/video/path"])
        assert h["eval/video/size"] == os.path.getsize(media) == mine > 10_000


@pytest.mark.slow
def test_each_seed_of_a_batched_run_logs_to_a_wandb_run_of_its_own(tmp_path):
    """seeds=[1,2] with wandb: the seeds' runs log from one process at the same time, and
    each seed's folder holds one offline wandb run whose evaluation returns are its own
    eval.csv's (a second ``wandb.init`` in a process would otherwise hand back the first)."""
    cli("train.py", "task=cartpole-balance", "seeds=[1,2]", "steps=500", "seed_steps=500",
        "eval_freq=500", "save_model_every=0", f"work_dir={tmp_path}", "exp_name=wb",
        "enable_wandb=true", *TINY)  # no wandb_mode: WANDB_MODE=offline (cli's) decides
    returns = {}
    for seed in (1, 2):
        run = os.path.join(str(tmp_path), "cartpole-balance", str(seed), "wb")
        runs = [d for d in os.listdir(os.path.join(run, "wandb")) if d.startswith("offline-run")]
        assert len(runs) == 1, (seed, runs)
        folder = os.path.join(run, "wandb", runs[0])
        history = wandb_history(next(os.path.join(folder, f) for f in os.listdir(folder)
                                     if f.endswith(".wandb")))
        logged = {h["_step"]: h["eval/episode_reward"] for h in history
                  if "eval/episode_reward" in h}
        want = {int(r["step"]): float(r["episode_reward"])
                for r in rows(os.path.join(run, "eval.csv"))}
        assert sorted(want) == [0, 500]
        assert logged == pytest.approx(want, rel=1e-5), seed
        returns[seed] = want
    assert returns[1] != returns[2]  # two runs, not one logged twice


@pytest.mark.parametrize("args, message", [
    (["task=cartpole-balanse"], "Unknown task 'cartpole-balanse'. Did you mean cartpole-balance"),
    (["task=dog-rn"], "Did you mean dog-run"),
    (["model_size=3"], "Bad value model_size=3: expected one of 1, 5, 19, 48, 317."),
    (["steps=-5"], "Bad value steps=-5: expected a positive integer."),
    (["obs=depth"], "Bad value obs='depth': expected state or rgb."),
    (["device=tpu"], "Bad value device='tpu'"),
    (["task=mt30"], "task=mt30 is a task set: add multitask=true"),
    (["task=lift-cube", "obs=rgb"],
     "obs=rgb is not available for lift-cube (maniskill2 runs from state here): use obs=state."),
    (["diffusion_num_elites=1000"], "expected at most diffusion_num_samples (512)"),
    (["stepz=10"], "Unknown setting 'stepz'. Did you mean steps"),
    (["plan_horizon=0"], "Bad value plan_horizon=0: expected a positive integer."),
    (["use_score_network=true", "plan_horizon=5"],
     "plan_horizon=5 differs from horizon=3, but the score network plans exactly horizon steps"),
    (["compile=fast"], "Bad value compile='fast': expected auto, true or false."),
    (["precision=fp16"], "Bad value precision='fp16': expected auto, fp32 or bf16."),
    (["plan_precision=half"], "Bad value plan_precision='half': expected auto, fp32 or bf16."),
    (["utd=0"], "Bad value utd=0: expected a number > 0 (updates per environment step)."),
    (["num_envs=0"], "Bad value num_envs=0: expected a positive integer."),
    (["exp_name=../../x"], "Bad value exp_name='../../x': expected one folder name"),
    (["exp_name="], "Bad value exp_name='': expected one folder name"),
    (["exp_name=..", "work_dir=/tmp"], "Bad value exp_name='..': expected one folder name"),
    (["exp_name=é"], "exp_name=é: a value with non-ASCII characters must be quoted for Hydra: "
                     "\"exp_name='é'\"."),
])
def test_bad_input_gets_one_clear_sentence(args, message):
    out = cli("train.py", *args, check=False, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_settings_that_have_no_effect_are_said_once():
    """Given on the command line, a setting the run will not use is named once, before the
    run starts (here it then stops at an unwritable work_dir); defaults are not named."""
    out = cli("train.py", "task=cartpole-balance", "cuda_graphs=true", "device=cpu", "seed=3",
              "seeds=[1,2]", "checkpoint=x.pt", "data_dir=foo", "eval_freq=100000",
              "save_model_every=5000", "steps=5000", "work_dir=/proc/x", check=False,
              timeout=120)
    notes = [ln[len("note: "):] for ln in out.stdout.splitlines() if ln.startswith("note: ")]
    assert notes == [
        "cuda_graphs=true has no effect off a GPU (CUDA graphs record GPU work).",
        "seed=3 has no effect with seeds=[1, 2]: the runs are those of the seeds listed.",
        "checkpoint has no effect in train.py: it is a setting of evaluate.py, "
        "offline_to_online.py, make_dataset.py, visualize_latents.py.",
        "data_dir has no effect on an online run: it is a setting of multi-task offline "
        "pretraining (multitask=true).",
        "save_model_every=5,000 is not below steps=5,000: no <step>.pt is written, only "
        "final.pt.",
        "eval_freq=100,000 is above steps=5,000: the run evaluates at its start and end only."]
    assert out.returncode == 2 and out.stderr.startswith("error: Cannot write the run folder")
    out = cli("train.py", "task=cartpole-balance", "steps=5000", "work_dir=/proc/x",
              check=False, timeout=120)
    assert "note:" not in out.stdout and out.returncode == 2


def test_steps_that_end_inside_an_episode_are_said_with_where_the_run_ends():
    """Runs end where every environment ends its episode (evaluations and checkpoints fall
    between episodes): a step count inside an episode is said with the step the run ends at;
    a count on an episode boundary says nothing."""
    from mbdpo.config import no_effect
    from tests.conftest import make_cfg
    cfg = make_cfg("task=walker-walk", "steps=300")
    assert no_effect(cfg, {}, {"steps"}, "train.py") == [
        "steps=300 ends inside an episode (walker-walk's are 500 steps): the run goes on to the "
        "end of the episodes under way (step 500 at full length) and evaluates and saves there."]
    cfg = make_cfg("task=walker-walk", "steps=2500", "num_envs=2")
    assert no_effect(cfg, {}, {"steps", "num_envs"}, "train.py") == [
        "steps=2,500 ends inside an episode (walker-walk's are 500 steps, 2 environments at "
        "once): the run goes on to the end of the episodes under way (step 3,000 at full "
        "length) and evaluates and saves there."]
    for steps, envs in ((1000, 1), (2000, 2), (500, 1)):
        cfg = make_cfg("task=walker-walk", f"steps={steps}", f"num_envs={envs}")
        assert no_effect(cfg, {}, {"steps", "num_envs"}, "train.py") == []


def test_no_effect_names_the_other_scripts_and_run_kinds_settings():
    from mbdpo.config import no_effect
    from tests.conftest import make_cfg
    cfg = make_cfg("task=mt30", "multitask=true", "num_envs=2", "utd=2", "off2on_task=x",
                   "cuda_graphs=false")
    notes = no_effect(cfg, {"cuda_graphs": False}, {"num_envs", "utd", "off2on_task",
                                                    "cuda_graphs"}, "train.py")
    assert notes == ["off2on_task has no effect in train.py: it is a setting of "
                     "offline_to_online.py.",
                     "num_envs has no effect on offline pretraining: it is a setting of online "
                     "runs.",
                     "utd has no effect on offline pretraining: it is a setting of online runs."]
    cfg = make_cfg("task=cartpole-balance", "steps=10", "lr=0.1", "checkpoint=x")
    assert no_effect(cfg, {}, {"steps", "lr", "checkpoint", "task"}, "evaluate.py") == [
        "steps has no effect in evaluate.py, which does not train.",
        "lr has no effect in evaluate.py, which does not train."]


@pytest.mark.parametrize("bench, arg, says", [
    ("speed.py", "sizez=1", "Did you mean sizes"),
    ("env_cost.py", "stepz=3", "the keys obs, steps, tasks, vector. Did you mean steps?"),
    ("learning.py", "stepz=5", "and those of cfgs/config.yaml. Did you mean steps"),
    ("data_parallel.py", "procz=2", "Did you mean procs"),
])
def test_a_benchmark_refuses_a_key_it_does_not_take_before_any_work(bench, arg, says):
    results = os.path.join(ROOT, "benchmarks", "results")
    before = {f: os.path.getmtime(os.path.join(results, f)) for f in os.listdir(results)}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", bench), arg],
                          capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env=dict(os.environ, MUJOCO_GL="egl"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"error: {arg}: not a setting of {bench}") and says in \
        proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert {f: os.path.getmtime(os.path.join(results, f)) for f in os.listdir(results)} == before


def test_missing_checkpoint_is_explained():
    out = cli("evaluate.py", "task=cartpole-balance", "checkpoint=/nope/final.pt", check=False,
              timeout=120)
    assert out.returncode == 2
    assert "Checkpoint /nope/final.pt does not exist" in out.stderr
    out = cli("evaluate.py", "task=mt30", check=False, timeout=120)
    assert out.returncode == 2 and "No checkpoint given: pass checkpoint=" in out.stderr


def test_contrastive_eta_alias():
    from tests.conftest import make_cfg
    cfg = make_cfg("task=cartpole-balance", "contrastive_eta=0.7")
    assert cfg.energy_eta == 0.7
    # device=auto: CUDA where there is one, else the CPU
    assert make_cfg("task=cartpole-balance").device == ("cuda" if torch.cuda.is_available()
                                                        else "cpu")


@pytest.mark.slow
def test_make_dataset_writes_published_format(mt30_data):
    from mbdpo.offline import read_chunk
    d = read_chunk(os.path.join(mt30_data, "chunk_0.pt"))
    assert tuple(d["obs"].shape) == (30, 501, 24) and tuple(d["action"].shape) == (30, 501, 6)
    assert d["task"].dtype == torch.int32 and d["task"][:, 0].tolist() == list(range(30))
    assert torch.isnan(d["action"][:, 0]).all() and torch.isnan(d["reward"][:, 0]).all()
    assert not torch.isnan(d["action"][:, 1:]).any()
    assert (d["action"][0, 1:, 6 - 0:] == 0).all()
    # walker-stand (6 action dims) uses all six, cartpole-balance (task 8) only the first
    assert (d["action"][8, 1:, 1:] == 0).all() and d["action"][8, 1:, 0].abs().sum() > 0


@pytest.mark.slow
def test_offline_pretraining_and_resume(mt30_data, tmp_path):
    args = ["task=mt30", "multitask=true", f"data_dir={mt30_data}", "eval_freq=40",
            "eval_episodes=1", "eval_tasks=[cartpole-balance,walker-walk]", "log_freq=20",
            f"work_dir={tmp_path}",
            *[a for a in TINY if not a.startswith(("eval_episodes", "log_freq"))]]
    out = cli("train.py", "steps=40", *args)
    assert "Evaluated 2 tasks at step 40" in out.stdout and "normalized score" in out.stdout
    run = os.path.join(str(tmp_path), "mt30", "1", "default")
    assert [int(r["step"]) for r in rows(os.path.join(run, "eval.csv"))] == [0, 40]
    per_task = rows(os.path.join(run, "eval_tasks.csv"))
    assert [r["task"] for r in per_task] == ["cartpole-balance", "walker-walk"] * 2
    assert float(per_task[0]["score"]) == pytest.approx(float(per_task[0]["episode_reward"]) / 10)
    assert [int(r["step"]) for r in rows(os.path.join(run, "train.csv"))] == [20, 40]
    out = cli("train.py", "steps=80", "resume=true", *args)
    assert "Resumed from" in out.stdout and "at step 40" in out.stdout
    assert [int(r["step"]) for r in rows(os.path.join(run, "eval.csv"))] == [0, 40, 80]
    assert os.path.exists(os.path.join(mt30_data, "store", "meta.json"))
    # the pictures of a multi-task run: normalised-score bars of its evaluations, the
    # latents of one of its tasks and a t-SNE of its 30 task embeddings
    from mbdpo import plots
    bars = cli("plot.py", "--bars", os.path.join(run, "eval_tasks.csv"), "--out",
               os.path.join(run, "mt30")).stdout.split()
    assert bars == [os.path.join(run, "mt30_bars.png"), os.path.join(run, "mt30_bars.pdf")]
    assert_picture(bars[0], 720, 432)
    last = {r["task"]: float(r["score"]) for r in rows(os.path.join(run, "eval_tasks.csv"))
            if r["step"] == "80"}
    ax = plots.bars_figure({t: [v] for t, v in last.items()}).axes[0]
    assert [r.get_height() for r in ax.patches] == pytest.approx(list(last.values()))
    out = cli("visualize_latents.py", "task=walker-walk", "eval_episodes=1", "threads=1",
              f"checkpoint={os.path.join(run, 'models', 'final.pt')}").stdout.split()
    emb = os.path.join(run, "models", "task_embeddings_final")
    assert out[-4:] == [os.path.join(run, "models", "latents_final_walker-walk.png"),
                        os.path.join(run, "models", "latents_final_walker-walk.pdf"),
                        emb + ".png", emb + ".pdf"]
    assert_picture(emb + ".png", 840, 720)


def test_offline_needs_data_dir():
    out = cli("train.py", "task=mt30", "multitask=true", check=False, timeout=120)
    assert out.returncode == 2 and "pass data_dir=offline_dataset/mt30" in out.stderr


@pytest.mark.parametrize("key", [None, "0123456789abcdef" * 2 + "01234567"])
def test_wandb_without_a_login_is_one_sentence(tmp_path, key):
    """enable_wandb=true, online, on a machine with no W&B key, or with a key W&B does not
    take or cannot be reached to check (no network here: wandb's init times out): exit 2 with
    one line that says how to log in or log offline (it was wandb's traceback), before the run
    trains."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path), WANDB_CONFIG_DIR=str(tmp_path), MUJOCO_GL="egl")
    if key:
        env.update(WANDB_API_KEY=key, WANDB_INIT_TIMEOUT="3")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "train.py"),
                          "task=cartpole-balance", "enable_wandb=true", "wandb_mode=online",
                          f"work_dir={tmp_path}", *TINY], env=env, stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert len(lines) == 1 and ("No API key" in lines[0] or key), out.stderr
    assert "`wandb login`" in lines[0] and "wandb_mode=offline" in lines[0]
    run = os.path.join(str(tmp_path), "cartpole-balance", "1", "default")
    # nothing of the run's written (wandb's own scratch folder at most): a retry starts afresh
    assert not os.path.exists(run) or set(os.listdir(run)) <= {"wandb"}, os.listdir(run)


def test_tensorboard_missing_is_one_sentence(tmp_path, monkeypatch):
    """enable_tensorboard=true without the package: a ConfigError (one sentence, exit 2 from
    the scripts) that names the extra to install."""
    from mbdpo.config import ConfigError
    from mbdpo.logging import Logger
    from tests.conftest import make_cfg
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    cfg = make_cfg("task=cartpole-balance", "enable_tensorboard=true")
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[tensorboard\]'"):
        Logger(cfg, str(tmp_path))
