"""The online schedule: which replay each update sees, and when it runs."""
import numpy as np
import torch

from mbdpo.trainers.online import OnlineTrainer
from tests.conftest import make_cfg, rows


def test_each_update_sees_the_episodes_that_ended_before_its_step_and_runs_before_it(
        tmp_path):
    """cartpole-balance (500-step episodes), seed_steps 1,000, 2,000 steps: the burst of 1,000
    updates runs once the second seed episode is in the replay; then the update owed for
    step s (0-based) sees the episodes that ended before s, as in the published loop (an
    episode joins the replay at the start of the step after its end), and runs before the
    environment steps and after the action of step s (a GPU samples the replay while it
    computes the action, and updates while the host steps). Act and update are stand-ins:
    the schedule, not the learning, is under test."""
    cfg = make_cfg("task=cartpole-balance", "model_size=1", "steps=2000", "seed_steps=1000",
                   "eval_freq=100000", "eval_episodes=1", "async_envs=false", "threads=1",
                   f"work_dir={tmp_path}")
    trainer = OnlineTrainer(cfg)
    env_steps, acts, seen = [0], [], []
    step = trainer.envs.step

    def counted_step(actions):
        env_steps[0] += 1
        return step(actions)

    def act(obs, t0, task=None, eval_mode=False, stream="train"):
        if stream == "train":
            acts.append(env_steps[0])
        return torch.zeros(obs.shape[0], obs.shape[1], trainer.cfg.action_dim)

    def update(batch):
        assert batch["obs"].shape[:3] == (1, trainer.cfg.horizon + 1, trainer.cfg.batch_size)
        seen.append((env_steps[0], trainer.buffer.num_episodes, len(acts)))
        return {}

    trainer.envs.step = counted_step
    trainer.agent.act, trainer.agent.update = act, update
    trainer.train()
    assert trainer.step == 2000 and env_steps[0] == 2000 and trainer.updates == 2000
    # the burst, after the 1,000th step ended the second episode
    assert seen[:1000] == [(1000, 2, 0)] * 1000
    # step s's update, with s environment steps taken: the episodes that ended before s; the
    # agent acted at steps 1,000 to s
    assert seen[1000:] == [(s, s // 500, s - 999) for s in range(1000, 2000)]
    assert acts == list(range(1000, 2000))
    assert np.array_equal(trainer.buffer.steps_left[:501].numpy(), np.arange(500, -1, -1))


def test_with_worker_processes_every_seeds_workers_step_at_once(tmp_path, monkeypatch):
    """seeds=[1,2], num_envs=2 and eval_episodes=2 in worker processes: the seeds' loops run
    one at a time in the process (``Lanes``), yet at each step, training or evaluating, both
    seeds send their actions before either waits for its workers' answer, so that all four
    workers step at the same time. Each seed runs its 1,000 steps (one episode in each
    environment) and two evaluations. Act and update are stand-ins."""
    import gymnasium as gym

    from mbdpo.agent import MBDPO
    from mbdpo.trainers.seeds import train_seeds
    events = []
    send, wait = gym.vector.AsyncVectorEnv.step_async, gym.vector.AsyncVectorEnv.step_wait

    def step_async(self, actions):
        events.append(("send", id(self)))
        return send(self, actions)

    def step_wait(self, **kwargs):
        events.append(("wait", id(self)))
        return wait(self, **kwargs)
    monkeypatch.setattr(gym.vector.AsyncVectorEnv, "step_async", step_async)
    monkeypatch.setattr(gym.vector.AsyncVectorEnv, "step_wait", step_wait)
    monkeypatch.setattr(MBDPO, "act", lambda self, obs, t0, task=None, eval_mode=False,
                        stream="train": torch.zeros(obs.shape[0], obs.shape[1], 1))
    monkeypatch.setattr(MBDPO, "update", lambda self, batch: {"value_loss": torch.zeros(self.S)})
    monkeypatch.setattr(MBDPO, "diagnostics_per_seed", lambda self, *a: [{}] * self.S)
    cfg = make_cfg("task=cartpole-balance", "seeds=[1,2]", "num_envs=2", "async_envs=true",
                   "model_size=1", "steps=1000", "seed_steps=500", "eval_freq=100000",
                   "eval_episodes=2", "threads=1", f"work_dir={tmp_path}")
    train_seeds(cfg)
    # two seeds: 500 steps of two environments, two evaluations of 500 steps
    assert len(events) == 4 * (500 + 2 * 500)
    for i in range(0, len(events), 4):
        (a, x), (b, y), (c, z), (d, w) = events[i:i + 4]
        assert (a, b, c, d) == ("send", "send", "wait", "wait") and x != y and {z, w} == {x, y}
    for seed in (1, 2):
        train = rows(tmp_path / "cartpole-balance" / str(seed) / "default" / "train.csv")
        assert [r["step"] for r in train] == ["999", "1000"]
        evals = rows(tmp_path / "cartpole-balance" / str(seed) / "default" / "eval.csv")
        assert [r["step"] for r in evals] == ["0", "1000"]
