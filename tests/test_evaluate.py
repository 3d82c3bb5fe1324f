"""Evaluation start states: each evaluation of a curve resets its own, reproducibly."""
import functools
import os
import signal
import subprocess
import sys
import time

import gymnasium as gym
import numpy as np
import pytest
import torch

from mbdpo.trainers import online
from mbdpo.trainers.evaluate import (eval_seed, run_episodes, task_envs, vector_env,
                                     worker_context)
from tests.conftest import ROOT, make_cfg


def test_eval_seed_differs_by_step_and_by_run_seed():
    seeds = {eval_seed(s, step) for s in (1, 2) for step in range(0, 100_001, 2500)}
    assert len(seeds) == 2 * 41
    assert eval_seed(1, 2500) == eval_seed(1, 2500)
    assert all(0 <= s < 2**30 for s in seeds)


def test_online_evaluations_start_from_new_states_each_time(tmp_path, monkeypatch):
    cfg = make_cfg("task=cartpole-swingup", "model_size=1", "eval_episodes=3",
                   f"work_dir={tmp_path}", "steps=5000", "threads=1")
    trainer = online.OnlineTrainer(cfg)
    assert isinstance(trainer.eval_envs, gym.vector.AsyncVectorEnv)  # one worker per episode
    seen = []

    def fake_run_episodes(agent, envs, seed=None, **kw):
        seen.append(seed)
        return {"rewards": np.zeros(envs.num_envs), "successes": None, "frames": []}

    monkeypatch.setattr(online, "run_episodes", fake_run_episodes)
    starts = {}
    for step in (0, 2500, 2500):
        trainer.step = step
        trainer.evaluate()
        starts.setdefault(step, []).append(
            trainer.eval_envs.reset(seed=[seen[-1] + i for i in range(3)])[0])
    assert seen == [eval_seed(1, 0), eval_seed(1, 2500), eval_seed(1, 2500)]
    assert np.array_equal(starts[2500][0], starts[2500][1])  # the same step: the same states
    assert np.abs(starts[0][0] - starts[2500][0]).min() > 0  # another step: other states
    # and the three episodes of one evaluation start apart
    assert np.abs(starts[0][0][0] - starts[0][0][1]).max() > 1e-3


class CountingEnv(gym.Env):
    """Reward 1 per step; the episode ends after 2 + reset seed % 5 steps (terminated), and a
    step past the end raises, as Meta-World's do."""
    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.length, self.t = 2 + (seed or 0) % 5, 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        if self.t >= self.length:
            raise RuntimeError("stepped past the episode's end")
        self.t += 1
        obs = np.array([self.t / 10, float(action[0])], np.float32)
        return obs, 1.0, self.t == self.length, False, {}


class ObsAgent:
    """Acts deterministically from the observation: the same observations give the same run."""
    device = torch.device("cpu")

    def act(self, obs, t0, task=None, eval_mode=True, stream="eval"):
        assert obs.shape[0] == 1 and t0.shape == obs.shape[:2]  # (seeds, envs, ...)
        return (obs[..., :1] * 3 - 0.2).clamp(-1, 1)


@pytest.mark.parametrize("workers", [False, True])
def test_episodes_of_different_lengths_each_end_once(workers):
    """Episodes of 2..6 steps in lockstep: each is counted to its own end and its environment
    is never stepped past it (it restarts while the others finish)."""
    envs = [CountingEnv for _ in range(4)] if workers else [CountingEnv() for _ in range(4)]
    venv = vector_env(envs, workers=workers)
    out = run_episodes(ObsAgent(), venv, seed=10, record=True)
    assert out["rewards"].tolist() == [2 + (10 + i) % 5 for i in range(4)]  # 2, 3, 4, 5
    assert [len(ep["action"]) for ep in out["episodes"]] == [2, 3, 4, 5]
    venv.close()


def test_evaluation_in_worker_processes_equals_in_process():
    """The same agent and start states give the same returns whether the evaluation's
    cartpole environments step in worker processes or in turn in this process."""
    from mbdpo.envs import make_env
    cfg = make_cfg("task=cartpole-swingup", "model_size=1")
    fns = [functools.partial(make_env, cfg, seed=i) for i in range(3)]
    inproc = run_episodes(ObsAgent(), [fn() for fn in fns], seed=7)
    venv = vector_env(fns, workers=True)
    assert isinstance(venv, gym.vector.AsyncVectorEnv)
    workers = run_episodes(ObsAgent(), venv, seed=7)
    venv.close()
    assert np.abs(inproc["rewards"]).min() > 0
    np.testing.assert_array_equal(workers["rewards"], inproc["rewards"])
    assert len(set(inproc["rewards"].tolist())) == 3  # three different start states


def test_worker_environments_leave_this_processs_signal_handlers_alone():
    """Workers ignore Ctrl-C and keep SIGTERM's default, but gymnasium calls the first
    factory in this process too (a dummy environment for the spaces): this process's
    handlers stay as they were (they had become SIG_IGN / SIG_DFL: a Ctrl-C before the loop
    went unanswered)."""
    from mbdpo.envs import make_env
    cfg = make_cfg("task=cartpole-swingup", "model_size=1")
    handler = signal.default_int_handler
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        venv = vector_env([functools.partial(make_env, cfg, seed=i) for i in range(2)],
                          workers=True)
        venv.close()
        assert all(signal.getsignal(s) is handler for s in old)
    finally:
        for s, h in old.items():
            signal.signal(s, h)


KILLED = """
import sys, time
import gymnasium as gym
from mbdpo.trainers.evaluate import vector_env
from tests.test_evaluate import CountingEnv
if sys.argv[1] == "ours":
    venv = vector_env([CountingEnv, CountingEnv], workers=True, context="fork")
else:
    venv = gym.vector.AsyncVectorEnv([CountingEnv, CountingEnv], context="fork")
venv.reset(seed=0)
print("ready", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("worker", ["ours", "gymnasium"])
def test_workers_of_a_killed_run_end_without_a_traceback(worker):
    """SIGKILL (the out-of-memory killer, ``kill -9``) leaves the evaluation's workers to find
    their pipe closed: they end, and print nothing; gymnasium's own worker prints two
    tracebacks per worker, which read like a crash of the run."""
    proc = subprocess.Popen([sys.executable, "-c", KILLED, worker], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGKILL)
    t = time.time()
    err = proc.stderr.read()  # returns once every worker (holding the same stderr) has ended
    proc.wait()
    assert time.time() - t < 30
    if worker == "ours":
        assert err == "", err
    else:
        assert err.count("BrokenPipeError") == 2 and "EOFError" in err, err


def test_pixel_workers_start_beside_a_pixel_env_in_this_process():
    """With a pixel environment rendering in this process (an EGL context here), evaluation
    workers for pixels still reset and step: they start from a fresh server process (workers
    forked from this one hang at their first render)."""
    from mbdpo.envs import make_env
    cfg = make_cfg("task=walker-walk", "obs=rgb", "model_size=1")
    here = make_env(cfg, seed=0)
    here.reset(seed=0)
    assert worker_context(cfg) == "forkserver" and worker_context(make_cfg()) == "fork"
    venv = task_envs(cfg, "walker-walk", 2, 5, workers=True)
    venv.reset_async(seed=[5, 6])
    obs, _ = venv.reset_wait(timeout=120)  # raises instead of hanging
    venv.step_async(np.zeros((2, 6), np.float32))
    obs2 = venv.step_wait(timeout=60)[0]
    venv.close()
    here.close()
    assert obs.shape[0] == 2 and obs.dtype == np.uint8 and obs.std() > 0
    assert np.abs(obs2.astype(int) - obs.astype(int)).max() > 0


def test_a_stop_abandons_the_episodes_at_the_next_step():
    """run_episodes reads ``stop`` before every step: set during the third action, it returns
    None without stepping again."""
    class Stop:
        value = False

        def __bool__(self):
            return self.value

    stop, calls = Stop(), []

    class StoppingAgent(ObsAgent):
        def act(self, obs, t0, task=None, eval_mode=True, stream="eval"):
            calls.append(1)
            stop.value = len(calls) == 3
            return super().act(obs, t0)

    envs = [CountingEnv() for _ in range(2)]
    assert run_episodes(StoppingAgent(), envs, seed=4, stop=stop) is None  # episodes of 6, 2
    assert len(calls) == 3 and envs[0].t == 3
    assert run_episodes(ObsAgent(), envs, seed=4, stop=Stop())["rewards"].tolist() == [6, 2]
