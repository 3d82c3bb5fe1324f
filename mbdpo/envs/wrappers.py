"""Generic wrappers that give an environment of any suite the contract of ``mbdpo.envs``.

Each is a ``gymnasium.Wrapper`` (so a ``gymnasium.Env``) and can be stacked in any order,
but the usual stack is ``TimeLimit(PixelStack(ActionRepeat(base)))``:

* ``ActionRepeat``  repeats an action ``k`` times in the inner env and sums the rewards;
* ``TimeLimit``     ends an episode after ``n`` agent steps with ``truncated=True``;
* ``PixelStack``    replaces the observation by the last ``k`` rendered RGB frames,
  stacked channels first as uint8 ``(3k, size, size)``.

All of them forward ``render(width=..., height=...)`` keyword arguments to the inner env,
which ``gymnasium.Wrapper.render`` does not.
"""
from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np


class Wrapper(gym.Wrapper):
    """``gymnasium.Wrapper`` whose ``render`` passes its arguments through."""

    def render(self, *args, **kwargs):
        return self.env.render(*args, **kwargs)


class ActionRepeat(Wrapper):
    """Repeat each action ``repeat`` times and return the summed reward.

    The repeats stop early if the inner env terminates or truncates; ``info`` is the
    last inner step's.
    """

    def __init__(self, env: gym.Env, repeat: int):
        super().__init__(env)
        if repeat < 1:
            raise ValueError(f"action repeat must be >= 1, got {repeat}")
        self.repeat = int(repeat)

    def step(self, action):
        total = 0.0
        for _ in range(self.repeat):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            if terminated or truncated:
                break
        return obs, total, terminated, truncated, info


class TimeLimit(Wrapper):
    """Truncate the episode after ``max_episode_steps`` calls to ``step``.

    Unlike ``gymnasium.wrappers.TimeLimit`` it keeps no env-spec bookkeeping; the step
    counter is reset by ``reset``. ``elapsed_steps`` is the number of steps so far.
    """

    def __init__(self, env: gym.Env, max_episode_steps: int):
        super().__init__(env)
        if max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
        self.max_episode_steps = int(max_episode_steps)
        self.elapsed_steps = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self.elapsed_steps = 0
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.elapsed_steps += 1
        if self.elapsed_steps >= self.max_episode_steps:
            truncated = True
        return obs, reward, terminated, truncated, info


class PixelStack(Wrapper):
    """Observe the last ``num_frames`` frames of ``env.render(width=size, height=size)``.

    The observation is a fresh uint8 array ``(3 * num_frames, size, size)``: frames in
    channels-first layout, oldest first. On reset the first frame fills every slot.
    The inner env's own observation is discarded.
    """

    def __init__(self, env: gym.Env, num_frames: int = 3, size: int = 64):
        super().__init__(env)
        self.num_frames = int(num_frames)
        self.size = int(size)
        shape = (3 * self.num_frames, self.size, self.size)
        self.observation_space = gym.spaces.Box(0, 255, shape, dtype=np.uint8)
        self._stack = np.zeros(shape, dtype=np.uint8)

    def _frame(self) -> np.ndarray:
        frame = self.env.render(width=self.size, height=self.size)
        if frame.shape != (self.size, self.size, 3):
            raise ValueError(f"render returned shape {frame.shape}, expected "
                             f"{(self.size, self.size, 3)}")
        return frame.transpose(2, 0, 1)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        _, info = self.env.reset(seed=seed, options=options)
        frame = self._frame()
        for i in range(self.num_frames):
            self._stack[3 * i:3 * i + 3] = frame
        return self._stack.copy(), info

    def step(self, action):
        _, reward, terminated, truncated, info = self.env.step(action)
        # Shift the stack one frame towards the front, then write the newest at the end.
        self._stack[:-3] = self._stack[3:]
        self._stack[-3:] = self._frame()
        return self._stack.copy(), reward, terminated, truncated, info


class PadObsAction(Wrapper):
    """Present a task to a multi-task model: observations zero-padded to ``obs_dim``, actions
    of the model's ``action_dim`` cut to the task's own size before they reach the env."""

    def __init__(self, env: gym.Env, obs_dim: int, action_dim: int):
        super().__init__(env)
        self.task_obs_dim = int(env.observation_space.shape[0])
        self.task_action_dim = int(env.action_space.shape[0])
        if self.task_obs_dim > obs_dim or self.task_action_dim > action_dim:
            raise ValueError(
                f"the task has {self.task_obs_dim} observation and {self.task_action_dim} action "
                f"dimensions, more than the model's {obs_dim} and {action_dim}")
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (action_dim,), dtype=np.float32)
        self._obs = np.zeros(obs_dim, dtype=np.float32)

    def _pad(self, obs):
        out = self._obs.copy()
        out[:self.task_obs_dim] = obs
        return out

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        return self._pad(obs), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(
            np.asarray(action)[:self.task_action_dim])
        return self._pad(obs), reward, terminated, truncated, info
