"""Data-parallel offline pretraining under torchrun: two processes (gloo, CPU) train as one, on
the halves of each global batch; their weights stay identical, their losses are those of a
one-process run with the same global batch and seed, and resume restores every process."""
import os
import subprocess
import sys

import pytest
import torch

from mbdpo import distributed
from mbdpo.agent import MBDPO
from mbdpo.config import ConfigError
from tests.conftest import ROOT, TINY, cli, rows

NET = [a for a in TINY if not a.startswith(("eval_episodes", "log_freq"))]


def offline(data, work, steps, *extra):
    return ["task=mt30", "multitask=true", f"data_dir={data}", f"steps={steps}", "eval_freq=4",
            "save_model_every=0", "eval_episodes=1", "eval_tasks=[reacher-easy]", "log_freq=2",
            f"work_dir={work}", "exp_name=dp", *NET, *extra]


def torchrun(args, n=2, check=True):
    env = dict(os.environ, WANDB_MODE="offline", MUJOCO_GL="egl", PYTHONUNBUFFERED="1",
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={n}", os.path.join(ROOT, "scripts", "train.py"),
                           *args], capture_output=True, text=True, timeout=900, env=env,
                          cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"torchrun failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def final(work):
    return torch.load(os.path.join(work, "mt30", "1", "dp", "models", "final.pt"),
                      weights_only=True)


@pytest.mark.slow
def test_two_processes_train_as_one_and_resume(mt30_data, tmp_path):
    two, one, again, whole = (str(tmp_path / n) for n in ("two", "one", "again", "whole"))
    out = torchrun(offline(mt30_data, two, 8))
    assert out.stdout.count("Done: 8 updates") == 1  # rank 0 alone prints
    cli("train.py", *offline(mt30_data, one, 8))

    # the two processes held the same weights at every checkpoint
    state = final(two)
    prints = state["rank_fingerprints"]
    assert len(prints) == 2 and prints[0] == prints[1]
    agent = MBDPO(_cfg(state["config"]))
    agent.load_state_dict(state["agent"])
    assert distributed.fingerprint(agent.model) == prints[0]
    ranks = state["rng_ranks"]  # each process's own random stream, saved
    assert len(ranks) == 2 and not torch.equal(ranks[0]["torch"], ranks[1]["torch"])

    # the losses of the global batch (averaged over the processes) are the one-process run's
    # to 0.1%: the same batches; only the noise of π's samples, dropout and the energy
    # negatives differs on the second half of each batch (measured: <= 0.03% after 8 updates;
    # the policy loss, a small difference of two terms, moves by up to 25% and is not compared)
    a, b = rows(os.path.join(two, "mt30", "1", "dp", "train.csv")), \
        rows(os.path.join(one, "mt30", "1", "dp", "train.csv"))
    assert [r["step"] for r in a] == [r["step"] for r in b] == ["2", "4", "6", "8"]
    for ra, rb in zip(a, b):
        for key, rtol in (("consistency_loss", 1e-3), ("reward_loss", 1e-3),
                          ("value_loss", 1e-3), ("energy_loss", 1e-3), ("td_target", 1e-3),
                          ("energy_std", 1e-3), ("q_scale", 1e-3)):
            x, y = float(ra[key]), float(rb[key])
            assert abs(x - y) <= rtol * abs(y), (ra["step"], key, x, y)

    # the same run on 2 "machines" of one process each, joined by torchrun's c10d rendezvous
    # (as several nodes join; here both on this host): the same weights, bit for bit
    import socket
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    nodes = str(tmp_path / "nodes")
    env = dict(os.environ, WANDB_MODE="offline", MUJOCO_GL="egl", PYTHONUNBUFFERED="1",
               OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2",
                               "--nproc_per_node=1", "--rdzv_backend=c10d",
                               f"--rdzv_endpoint=localhost:{port}", "--rdzv_id=two-nodes",
                               os.path.join(ROOT, "scripts", "train.py"),
                               *offline(mt30_data, nodes, 8)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
             for _ in range(2)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "".join(outs).count("Done: 8 updates") == 1
    assert final(nodes)["rank_fingerprints"] == prints

    # resume restores every process: 8 then 4 more updates equal 12 at once
    torchrun(offline(mt30_data, again, 8))
    torchrun(offline(mt30_data, again, 12, "resume=true"))
    torchrun(offline(mt30_data, whole, 12))
    resumed, straight = final(again), final(whole)
    assert resumed["step"] == straight["step"] == 12
    for k, v in straight["agent"]["model"].items():
        assert torch.equal(v, resumed["agent"]["model"][k]), k
    assert resumed["rank_fingerprints"] == straight["rank_fingerprints"]
    steps = [r["step"] for r in rows(os.path.join(again, "mt30", "1", "dp", "train.csv"))]
    assert steps == ["2", "4", "6", "8", "10", "12"]


def _cfg(saved):
    from omegaconf import OmegaConf
    return OmegaConf.create(saved)


def test_torchrun_is_refused_where_it_does_not_apply(mt30_data, tmp_path):
    """distributed=false and online runs under torchrun get one sentence each."""
    out = torchrun(offline(mt30_data, str(tmp_path), 4, "distributed=false"), check=False)
    assert out.returncode != 0 and "distributed=false" in out.stderr
    out = torchrun(["task=cartpole-balance", "steps=10", f"work_dir={tmp_path}", *TINY],
                   check=False)
    assert out.returncode != 0 and "one process each" in out.stderr


def test_a_global_batch_that_does_not_split_is_refused(monkeypatch):
    monkeypatch.setattr(distributed, "world", lambda: 2)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    assert distributed.share(32) == slice(16, 32)
    with pytest.raises(ConfigError, match="multiple of 2"):
        distributed.share(33)


@pytest.mark.slow
def test_sigterm_stops_every_process_at_one_update_and_resumes(mt30_data, tmp_path):
    """torchrun passes SIGTERM to its processes; they agree on the update to stop at (every 8),
    rank 0 saves, and resume continues on both."""
    import signal
    import time
    work = str(tmp_path)
    run = os.path.join(work, "mt30", "1", "dp")
    env = dict(os.environ, WANDB_MODE="offline", MUJOCO_GL="egl", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc_per_node=2", os.path.join(ROOT, "scripts", "train.py"),
                             *offline(mt30_data, work, 100_000, "eval_freq=100000",
                                      "log_freq=8")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=ROOT)
    try:
        deadline = time.time() + 600
        while not (os.path.exists(os.path.join(run, "train.csv"))
                   and len(rows(os.path.join(run, "train.csv"))) >= 3):
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        t = time.time()
        out, _ = proc.communicate(timeout=60)
        assert time.time() - t < 30
    finally:
        proc.kill()
    assert "Stopped: saved" in out, out
    state = torch.load(os.path.join(run, "models", "latest.pt"), weights_only=True)
    stopped = state["step"]
    assert stopped >= 24 and stopped % 8 == 0
    assert state["rank_fingerprints"][0] == state["rank_fingerprints"][1]
    torchrun(offline(mt30_data, work, stopped + 16, "eval_freq=100000", "log_freq=8",
                     "resume=true"))
    done = final(work)
    assert done["step"] == stopped + 16
    assert done["rank_fingerprints"][0] == done["rank_fingerprints"][1]
    steps = [int(r["step"]) for r in rows(os.path.join(run, "train.csv"))]
    assert steps == list(range(8, stopped + 17, 8))
