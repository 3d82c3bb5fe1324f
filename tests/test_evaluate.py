"""Evaluation start states: each evaluation of a curve resets its own, reproducibly."""
import numpy as np

from mbdpo.trainers import online
from mbdpo.trainers.evaluate import eval_seed
from tests.conftest import make_cfg


def test_eval_seed_differs_by_step_and_by_run_seed():
    seeds = {eval_seed(s, step) for s in (1, 2) for step in range(0, 100_001, 2500)}
    assert len(seeds) == 2 * 41
    assert eval_seed(1, 2500) == eval_seed(1, 2500)
    assert all(0 <= s < 2**30 for s in seeds)


def test_online_evaluations_start_from_new_states_each_time(tmp_path, monkeypatch):
    cfg = make_cfg("task=cartpole-swingup", "model_size=1", "eval_episodes=3",
                   f"work_dir={tmp_path}", "steps=5000", "threads=1")
    trainer = online.OnlineTrainer(cfg)
    seen = []

    def fake_run_episodes(agent, envs, seed=None, **kw):
        seen.append(seed)
        return {"rewards": np.zeros(len(envs)), "successes": None, "frames": []}

    monkeypatch.setattr(online, "run_episodes", fake_run_episodes)
    starts = {}
    for step in (0, 2500, 2500):
        trainer.step = step
        trainer.evaluate()
        starts.setdefault(step, []).append(
            np.stack([env.reset(seed=seen[-1] + i)[0] for i, env in enumerate(trainer.eval_envs)]))
    assert seen == [eval_seed(1, 0), eval_seed(1, 2500), eval_seed(1, 2500)]
    assert np.array_equal(starts[2500][0], starts[2500][1])  # the same step: the same states
    assert np.abs(starts[0][0] - starts[2500][0]).min() > 0  # another step: other states
    # and the three episodes of one evaluation start apart
    assert np.abs(starts[0][0][0] - starts[0][0][1]).max() > 1e-3
