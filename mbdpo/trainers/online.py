"""Online training from scratch on one task (docs/algorithm.md §5: seeding, pretraining burst, one
update per environment step), with periodic evaluation, checkpoints and resume."""
from __future__ import annotations

import functools
import os
import time

import gymnasium as gym
import numpy as np
import torch
from tqdm import tqdm

from mbdpo import faults
from mbdpo.agent import MBDPO, stack_seeds
from mbdpo.envs import make_env
from mbdpo.execution import to_host_later
from mbdpo.logging import Logger, save_video
from mbdpo.offline import SANE
from mbdpo.replay import KEYS, EpisodeReplay
from mbdpo.trainers.base import Trainer, write_metadata
from mbdpo.trainers.evaluate import (close_envs, eval_seed, run_episodes, step_or_stop,
                                     summarise, vector_env, worker_context)
from mbdpo.trainers.task_dims import fill_env_dims


class OnlineTrainer(Trainer):
    """Online training on one task. Subclasses (fine-tuning) override ``make_env``,
    ``make_agent`` and the seeding attributes set at the end of ``__init__``."""

    task_id: int | None = None  # the task's index in a multi-task model's task set
    show_bars = True  # progress bars of evaluations and bursts (seeds=[...]: the first seed's)
    several = False  # other runs log from this process at the same time (seeds=[...])
    sent = None  # called between sending actions to worker processes and the wait for them

    def __init__(self, cfg):
        super().__init__(cfg)
        self.env = self.make_env(cfg.seed)
        self.env.action_space.seed(cfg.seed)  # the random seeding actions
        self.envs = self.make_vector_env()
        self.eval_envs = self.make_eval_envs()
        self.agent = self.make_agent()
        L = cfg.episode_lengths[0] if self.task_id is None else cfg.episode_lengths[self.task_id]
        self.episode_length = L
        # finished episodes only; with N environments up to N of them end past ``steps``
        entries = min(cfg.buffer_size, cfg.steps) * (L + 1) // L + cfg.num_envs * (L + 1)
        self.buffer = EpisodeReplay(entries, cfg.obs_shape, cfg.action_dim,
                                    torch.uint8 if cfg.obs == "rgb" else torch.float32,
                                    seed=cfg.seed)
        self.episode, self.updates, self.pretrained = 0, 0, False
        self.update_credit = 0.0  # updates owed (utd x environment steps), carried over
        self.last_update: dict = {}  # the outputs of the last update, for the episode rows
        self._save_at_boundary = False
        # Seeding (docs/algorithm.md §5): random actions for the first ``random_steps`` steps, no
        # update before ``learn_from`` steps, then a burst of ``burst`` updates, then one per step.
        self.random_steps = self.learn_from = self.burst = cfg.seed_steps
        self.task_t = None if self.task_id is None else torch.tensor([self.task_id])

    def env_factory(self, seed: int):
        """A picklable function that makes the task's environment (vector-env workers call it
        in their own process)."""
        return functools.partial(make_env, self.cfg, seed=seed)

    def make_env(self, seed: int):
        env = self.env_factory(seed)()
        fill_env_dims(self.cfg, env)
        return env

    def make_vector_env(self) -> gym.vector.VectorEnv:
        """The ``num_envs`` training environments behind gymnasium's vector API, reset by the
        loop itself (autoreset disabled): one worker process each with ``async_envs=true``
        (for simulators slow per step), else stepped in turn in this process. With one
        environment it is ``self.env`` itself."""
        cfg = self.cfg
        if cfg.num_envs == 1:
            return vector_env([self.env])
        return self._envs([cfg.seed + 1_000 * i for i in range(cfg.num_envs)], cfg.async_envs)

    def make_eval_envs(self) -> gym.vector.VectorEnv:
        """The ``eval_episodes`` evaluation environments, stepped together: one worker process
        each with ``async_envs=true`` (stepped at once, as far as there are cores), else in
        turn in this process."""
        cfg = self.cfg
        seeds = [cfg.seed + 10_000 + i for i in range(cfg.eval_episodes)]
        return self._envs(seeds, cfg.async_envs and cfg.eval_episodes > 1)

    def _envs(self, seeds: list[int], workers: bool) -> gym.vector.VectorEnv:
        if workers:
            return vector_env([self.env_factory(s) for s in seeds], workers=True,
                              context=worker_context(self.cfg))
        return vector_env([self.make_env(s) for s in seeds])

    def make_agent(self) -> MBDPO:
        return MBDPO(self.cfg)

    def counters(self) -> dict:
        return {"episode": self.episode, "updates": self.updates, "pretrained": self.pretrained,
                "update_credit": self.update_credit}

    extra_names = ("replay.pt",)

    def extra_state(self, marked: bool = False) -> dict:
        return {"replay.pt": self.buffer.state_dict(at_mark=marked)}

    def mark_extra(self) -> None:
        self.buffer.mark()

    def load_extra_state(self, name, state) -> None:
        self.buffer.load_state_dict(state)

    def checkpoint_state(self, step: int) -> dict:
        # the random seeding actions' generator (gymnasium's, in the action space)
        return {**super().checkpoint_state(step),
                "action_rng": self.env.action_space.np_random.bit_generator.state}

    def restore(self, state: dict) -> None:
        if "action_rng" in state:
            self.env.action_space.np_random.bit_generator.state = state["action_rng"]

    def expected_extra(self) -> tuple[list, int, int]:
        """The replay at the end of the run: every array at the buffer's capacity (the run's
        steps, and the episodes up to num_envs environments end past them)."""
        b = self.buffer
        per_entry = sum(getattr(b, k)[:1].numel() * getattr(b, k).element_size() for k in KEYS)
        return [{"generator": b.generator.get_state()}], len(KEYS), per_entry * b.capacity

    # -- evaluation -------------------------------------------------------------------------
    def evaluate(self, stop=None) -> dict | None:
        """The evaluation at this step (None when ``stop`` turned true during it)."""
        video = 0 if self.cfg.save_video else None
        result = run_episodes(self.agent, self.eval_envs, task=self.task_id, video_env=video,
                              seed=eval_seed(self.cfg.seed, self.step), stop=stop,
                              bar_steps=self.episode_length if self.show_bars else None,
                              sent=self.sent)
        if result is None:
            return None
        if result["frames"]:
            path = os.path.join(self.dir, "videos", f"{self.step}.mp4")
            save_video(result["frames"], path)
            if getattr(self, "logger", None) is not None:
                self.logger.video(path, self.step)
        return summarise(result)

    # -- the loop ---------------------------------------------------------------------------
    def train(self) -> dict | None:
        """Run (or resume) the training; the environments' worker processes are closed however
        it ends (else they print broken-pipe tracebacks after the run's own message)."""
        try:
            return self._train()
        finally:
            self.close()

    def close(self) -> None:
        close_envs(self.eval_envs, self.envs)

    def _train(self) -> dict | None:
        cfg = self.cfg
        self.claim_dir()
        resume_step = None
        if cfg.resume and self.resume() is not None:
            resume_step = self.step
            print(f"{self.buffer.num_episodes} episodes in replay.")
            if self.finished():
                return None
        self.logger = Logger(cfg, self.dir, resume_step,
                             None if resume_step is None else self.last_eval_step,
                             several=self.several)
        write_metadata(cfg, self.dir)
        return self.run_loop(f"on {cfg.task} ({cfg.obs}, {cfg.steps:,} steps)")

    def _loop(self, stop):
        """Step ``num_envs`` environments at once. An environment whose episode ends starts
        its next one at once, unless an evaluation, a checkpoint or the end of the run is due:
        then it waits (stepped, but its steps neither counted nor stored) until every
        environment has ended its episode, so that evaluations and checkpoints fall where no
        episode is unfinished. With fixed-length episodes no environment ever waits."""
        cfg, N = self.cfg, self.cfg.num_envs
        # read once: an OmegaConf lookup costs ~12 us, ~5% of a GPU step's host time
        steps, eval_freq, log_freq, save_every = (int(cfg.steps), int(cfg.eval_freq),
                                                  int(cfg.log_freq), int(cfg.save_model_every))
        rate_t, rate_step = time.time(), self.step
        eval_next = self.step % eval_freq == 0 and self.last_eval_step < self.step
        last_eval, losses = None, {}
        eps: list[dict | None] = [None] * N  # the episode each environment is in (None: waits)
        obs, self._started = None, self.episode  # episodes started (their reset seeds)
        while True:
            if all(ep is None for ep in eps):  # every environment is at an episode boundary
                if stop:
                    return self.interrupted()
                self.check_finite(losses, self.step)
                self.mark()  # what a stop from here to the next boundary saves
                if eval_next or self.step >= steps:
                    last_eval = self._eval_and_log(rate_t, rate_step, stop)
                    if last_eval is None:  # stopped during it: resume evaluates again
                        return self.interrupted()
                    eval_next = False
                    self.mark()
                if self.step >= steps:
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
                obs = self._start_episodes(eps, np.ones(N, dtype=bool), np.ones(N, dtype=bool))
            if stop:  # the episodes under way are dropped: resume starts them again
                return self.interrupted()
            t0 = torch.tensor([ep is not None and not ep["action"] for ep in eps])
            if self.step >= self.random_steps:
                task = self._task_rows(N)
                actions = to_host_later(self.agent.act(
                    torch.as_tensor(obs)[None], t0[None], None if task is None else task[None])[0])
            else:
                actions = functools.partial(np.stack, [self.env.action_space.sample()
                                                       for _ in range(N)])
            # the updates this step owes, before its environment step (``_learn``): on a GPU
            # the replay is sampled while the action is computed, and the update runs while
            # the environments step
            if self.pretrained:
                losses = self._learn(sum(ep is not None for ep in eps), stop) or losses
            actions = actions()
            out = step_or_stop(self.envs, actions, stop, self.sent)
            if out is None:
                return self.interrupted()
            obs, reward, terminated, truncated, info = out
            faults.reach("env-step")
            self._check_data(obs, reward)
            ended = np.zeros(N, dtype=bool)
            waiting = np.array([ep is None for ep in eps])
            before = self.step
            for i, ep in enumerate(eps):
                if ep is None:
                    continue
                ep["obs"].append(obs[i])
                ep["action"].append(actions[i])
                ep["reward"].append(float(reward[i]))
                ep["terminated"].append(float(terminated[i]))
                if "success" in info and info.get("_success", np.ones(N, bool))[i]:
                    ep["success"] = float(info["success"][i])
                self.step += 1
                if terminated[i] or truncated[i]:
                    self._finish_episode(ep)
                    eps[i], ended[i] = None, True
            if not self.pretrained:  # the burst on the seed data, once they are all in
                losses = self._learn(self.step - before, stop) or losses
            if self.step // eval_freq > before // eval_freq:
                eval_next = True
            if self.step // log_freq > before // log_freq:
                self.check_finite(losses, self.step)
                now = time.time()
                sps = (self.step - rate_step) / max(now - rate_t, 1e-9)
                vals = {k: float(v) for k, v in losses.items() if k in (
                    "consistency_loss", "value_loss", "energy_loss", "pi_loss")}
                print(self.logger.progress_line("train", self.step, steps, sps, **vals),
                      flush=True)
            if save_every and self.step < steps and \
                    self.step // save_every > before // save_every:
                self._save_at_boundary = True
            # restart the environments that ended: those whose episode ended start the next
            # one unless a boundary is due (then they wait); waiting ones just reset
            restart = ended | (waiting & (terminated | truncated))
            if restart.any():
                due = eval_next or self.step >= steps or self._save_at_boundary
                if not due and not stop and all(ep is None for ep in eps):
                    self.check_finite(losses, self.step)  # a boundary the loop runs through
                    self.mark()
                new_obs = self._start_episodes(eps, restart, ended & (not due))
                obs = np.where(restart.reshape(-1, *[1] * (obs.ndim - 1)), new_obs, obs)

    _reported = False

    def _check_data(self, obs, reward) -> None:
        """Report, once per run, an observation or reward that is NaN, infinite or beyond
        +-1e6 as it enters (the networks would turn it into NaN losses, which stop the run)."""
        if self._reported:
            return
        for name, x in (("reward", reward), ("observation", obs)):
            if x.dtype == np.uint8:
                continue
            with np.errstate(invalid="ignore"):
                bad = ~(np.abs(x) <= SANE)
            if bad.any():
                self._reported = True
                print(f"warning: {self.cfg.task} gave a{'n' if name[0] == 'o' else ''} {name} "
                      f"of {x[bad].flat[0]:g} at step {self.step:,} (NaN, infinite or beyond "
                      f"+-{SANE:g}): check the environment; the run stops if a loss becomes "
                      "NaN or infinite.", flush=True)
                return

    def _task_rows(self, n):
        return None if self.task_t is None else self.task_t.expand(n)

    def _start_episodes(self, eps, reset, record):
        """Reset the environments where ``reset`` (bool (N,)) is set; those where ``record``
        is also set start their next episode, reset with its seed (seed x 1,000,003 + its
        number), the others wait. Returns the observations of all environments (those not
        reset: of their last step)."""
        seeds: list[int | None] = [None] * len(eps)
        for i in np.flatnonzero(record):
            seeds[i] = self.cfg.seed * 1_000_003 + self._started
            self._started += 1
        obs, _ = self.envs.reset(seed=seeds, options={"reset_mask": np.asarray(reset)})
        for i in np.flatnonzero(record):
            eps[i] = {"obs": [obs[i]], "action": [], "reward": [], "terminated": [],
                      "success": None}
        return obs

    @functools.cached_property
    def _sampling(self) -> tuple:
        """(batch_size, horizon, utd), read once from the config (see ``_loop``)."""
        return int(self.cfg.batch_size), int(self.cfg.horizon), self.cfg.utd

    def _learn(self, env_steps: int, stop) -> dict:
        """The updates owed for ``env_steps`` environment steps: none before ``learn_from``,
        then the burst on the seed data (after the step that reaches ``learn_from``), then
        ``utd`` per environment step, run before that step (``_loop``).

        Why before: an episode joins the replay when it ends, so an update before the step
        sees what one after it would, except at the step that ends an episode. There the
        published code (TD-MPC2's loop) updates on the replay without that episode: it adds
        an episode at the start of the step after its end. And on a GPU the update, launched
        without waiting for it, runs while the host steps the environments, where it
        would otherwise wait for them."""
        if self.step < self.learn_from or not self.buffer.num_episodes:
            return {}
        if not self.pretrained:
            n = max(1, self.burst)
            if n > 1:
                print(f"Pretraining on {self.buffer.num_transitions():,} seed transitions: "
                      f"{n:,} updates.")
        else:
            self.update_credit += self._sampling[2] * env_steps
            n = int(self.update_credit)
            self.update_credit -= n
        losses = {}
        # the burst takes minutes on a CPU (2,500 updates at ~4/s): a bar with updates/s and ETA
        bar = tqdm(total=n, desc="Pretraining", unit="update", leave=False, mininterval=2,
                   disable=n <= 1 or not self.show_bars)
        for _ in range(n):
            losses = self.agent.update(stack_seeds([self.buffer.sample(*self._sampling[:2])]))
            self.updates += 1
            faults.reach("update")
            bar.update()
            if stop:  # the run saves the state of the last boundary, before these updates
                break
        bar.close()
        self.pretrained = True
        self.last_update = losses or self.last_update
        return losses

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
        # what the last update gave (every loss, grad norm, TD target, Q scale, energy
        # statistics): empty until updates start
        row.update({k: float(v) for k, v in self.last_update.items()})
        if self.last_update:  # the paper's diagnostics on this episode (Figs. 3, 21, 22)
            row.update(self.agent.diagnostics(
                torch.as_tensor(np.stack(ep["obs"])),
                torch.as_tensor(np.stack(ep["action"]), dtype=torch.float32),
                torch.as_tensor(ep["reward"], dtype=torch.float32),
                torch.as_tensor(ep["terminated"], dtype=torch.float32), self.task_id))
        row["elapsed_time"] = self.elapsed()
        self.logger.log("train", row, self.step)

    def _eval_and_log(self, rate_t, rate_step, stop=None) -> dict | None:
        t0 = time.time()
        result = self.evaluate(stop)
        if result is None:
            return None
        row = {"step": self.step, "episode": self.episode, **result}
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

