"""Online training from scratch on one task (ALGORITHM.md §2: seeding, pretraining burst, one
update per environment step), with periodic evaluation, checkpoints and resume."""
from __future__ import annotations

import os
import time

import numpy as np
import torch

from mbdpo.agent import MBDPO
from mbdpo.envs import make_env
from mbdpo.logging import Logger, save_video
from mbdpo.replay import EpisodeReplay
from mbdpo.trainers.base import Trainer, write_metadata
from mbdpo.trainers.evaluate import eval_seed, run_episodes, summarise


def fill_env_dims(cfg, env) -> None:
    """Record the observation and action sizes of the task's environment in the config."""
    cfg.obs_shape = list(env.observation_space.shape)
    cfg.obs_dim = int(cfg.obs_shape[0]) if cfg.obs == "state" else 0
    cfg.action_dim = int(env.action_space.shape[0])
    cfg.action_dims = [cfg.action_dim]
    cfg.num_tasks = len(cfg.tasks)


class OnlineTrainer(Trainer):
    """Online training on one task. Subclasses (fine-tuning) override ``make_env``,
    ``make_agent`` and the seeding attributes set at the end of ``__init__``."""

    task_id: int | None = None  # the task's index in a multi-task model's task set

    def __init__(self, cfg):
        super().__init__(cfg)
        self.env = self.make_env(cfg.seed)
        self.env.action_space.seed(cfg.seed)  # the random seeding actions
        self.eval_envs = [self.make_env(cfg.seed + 10_000 + i) for i in range(cfg.eval_episodes)]
        self.agent = self.make_agent()
        L = cfg.episode_lengths[0] if self.task_id is None else cfg.episode_lengths[self.task_id]
        self.episode_length = L
        entries = min(cfg.buffer_size, cfg.steps) * (L + 1) // L + L + 1
        self.buffer = EpisodeReplay(entries, cfg.obs_shape, cfg.action_dim,
                                    torch.uint8 if cfg.obs == "rgb" else torch.float32,
                                    seed=cfg.seed)
        self.episode, self.updates, self.pretrained = 0, 0, False
        self._save_at_boundary = False
        # Seeding (ALGORITHM.md §2): random actions for the first ``random_steps`` steps, no
        # update before ``learn_from`` steps, then a burst of ``burst`` updates, then one per step.
        self.random_steps = self.learn_from = self.burst = cfg.seed_steps
        self.task_t = None if self.task_id is None else torch.tensor([self.task_id])

    def make_env(self, seed: int):
        env = make_env(self.cfg, seed=seed)
        fill_env_dims(self.cfg, env)
        return env

    def make_agent(self) -> MBDPO:
        return MBDPO(self.cfg)

    def counters(self) -> dict:
        return {"episode": self.episode, "updates": self.updates, "pretrained": self.pretrained}

    def extra_state(self) -> dict:
        return {"replay.pt": self.buffer.state_dict()}

    def load_extra_state(self, name, state) -> None:
        self.buffer.load_state_dict(state)

    # -- evaluation -------------------------------------------------------------------------
    def evaluate(self) -> dict:
        video = 0 if self.cfg.save_video else None
        result = run_episodes(self.agent, self.eval_envs, task=self.task_id, video_env=video,
                              seed=eval_seed(self.cfg.seed, self.step))
        if result["frames"]:
            save_video(result["frames"], os.path.join(self.dir, "videos", f"{self.step}.mp4"))
        return summarise(result)

    # -- the loop ---------------------------------------------------------------------------
    def train(self) -> dict:
        cfg = self.cfg
        resume_step = None
        if cfg.resume and self.resume() is not None:
            resume_step = self.step
            print(f"{self.buffer.num_episodes} episodes in replay.")
        self.logger = Logger(cfg, self.dir, resume_step,
                             None if resume_step is None else self.last_eval_step)
        write_metadata(cfg, self.dir)
        return self.run_loop(f"on {cfg.task} ({cfg.obs}, {cfg.steps:,} steps)")

    def _loop(self, stop):
        cfg = self.cfg
        rate_t, rate_step = time.time(), self.step
        eval_next = self.step % cfg.eval_freq == 0 and self.last_eval_step < self.step
        last_eval, ep, obs, t = None, None, None, 0
        losses = {}
        while True:
            if ep is None or ep["done"]:
                if ep is not None:  # an episode ended: store it, log it
                    self._finish_episode(ep)
                if eval_next or self.step >= cfg.steps:
                    last_eval = self._eval_and_log(rate_t, rate_step)
                    eval_next = False
                if self.step >= cfg.steps:
                    self.save(self.step, names=["final.pt"])
                    if cfg.save_replay:
                        from mbdpo.datasets import export_replay
                        paths = export_replay(self.buffer, os.path.join(self.dir, "replay"))
                        print(f"Replay exported in the dataset format: {', '.join(paths)}")
                    print(f"Done: {self.step:,} steps. Final checkpoint in {self.model_dir}")
                    return last_eval
                if self._save_at_boundary:
                    self._save_at_boundary = False
                    self.save(self.step, names=[f"{self.step}.pt"])
                obs, _ = self.env.reset(seed=cfg.seed * 1_000_003 + self.episode)
                ep = {"obs": [obs], "action": [], "reward": [], "terminated": [],
                      "success": None, "done": False, "start": self.step}
                t = 0
            if stop:
                return self._interrupted(ep)
            if self.step >= self.random_steps:
                action = self.agent.act(torch.as_tensor(obs).unsqueeze(0), torch.tensor([t == 0]),
                                        self.task_t).squeeze(0).cpu().numpy()
            else:
                action = self.env.action_space.sample()
            obs, reward, terminated, truncated, info = self.env.step(action)
            ep["obs"].append(obs)
            ep["action"].append(action)
            ep["reward"].append(reward)
            ep["terminated"].append(float(terminated))
            if "success" in info:
                ep["success"] = float(info["success"])
            ep["done"] = terminated or truncated
            t += 1
            if self.step >= self.learn_from and self.buffer.num_episodes:
                n = 1 if self.pretrained else max(1, self.burst)  # the burst on seed data
                if n > 1:
                    print(f"Pretraining on {self.buffer.num_transitions():,} seed transitions: "
                          f"{n:,} updates.")
                for i in range(n):
                    losses = self.agent.update(self.buffer.sample(cfg.batch_size, cfg.horizon))
                    self.updates += 1
                    if stop:
                        break
                self.pretrained = True
            self.step += 1
            if self.step % cfg.eval_freq == 0:
                eval_next = True
            if self.step % cfg.log_freq == 0:
                now = time.time()
                sps = (self.step - rate_step) / max(now - rate_t, 1e-9)
                vals = {k: float(v) for k, v in losses.items() if k in (
                    "consistency_loss", "value_loss", "energy_loss", "pi_loss")}
                print(self.logger.progress_line("train", self.step, cfg.steps, sps, **vals),
                      flush=True)
            if cfg.save_model_every and self.step % cfg.save_model_every == 0 and \
                    self.step < cfg.steps:
                self._save_at_boundary = True

    def _finish_episode(self, ep) -> None:
        cfg = self.cfg
        L = len(ep["action"])
        A = cfg.action_dim
        nan = np.full((1, A), np.nan, dtype=np.float32)
        self.buffer.add_episode(
            torch.as_tensor(np.stack(ep["obs"])),
            torch.as_tensor(np.concatenate([nan, np.stack(ep["action"]).astype(np.float32)])),
            torch.as_tensor([np.nan] + ep["reward"], dtype=torch.float32),
            torch.as_tensor([0.0] + ep["terminated"]), task=self.task_id or 0)
        self.episode += 1
        row = {"step": self.step, "episode": self.episode,
               "episode_reward": float(np.sum(ep["reward"])), "episode_length": L}
        if ep["success"] is not None:
            row["episode_success"] = ep["success"]
        row["elapsed_time"] = self.elapsed()
        self.logger.log("train", row, self.step)

    def _eval_and_log(self, rate_t, rate_step) -> dict:
        t0 = time.time()
        row = {"step": self.step, "episode": self.episode, **self.evaluate()}
        row["elapsed_time"] = self.elapsed()
        self.logger.log("eval", row, self.step)
        self.last_eval_step = self.step
        sps = (self.step - rate_step) / max(t0 - rate_t, 1e-9)
        extra = {"reward": row["episode_reward"]}
        if "episode_success" in row:
            extra["success"] = row["episode_success"]
        extra["eval_s"] = f"{time.time() - t0:.1f}"
        print(self.logger.progress_line("eval", self.step, self.cfg.steps, sps, **extra),
              flush=True)
        if self.step and self.step < self.cfg.steps and not self._save_at_boundary:
            self.save(self.step)  # latest.pt for resume after a crash
        return row

    def _interrupted(self, ep) -> dict:
        self.interrupted(ep["start"])  # the unfinished episode is dropped; resume redoes it
