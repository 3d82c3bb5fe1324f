"""DeepMind Control Suite tasks: the 28 standard ones of the registry and our 11 variants.

``make(spec, obs_type, seed)`` gives a gymnasium env with the contract of ``mbdpo.envs``:
float32 state vector (every dm_control observation array flattened, in order) or uint8
``(9, 64, 64)`` pixels, actions in ``[-1, 1]^A``, ``spec.action_repeat`` simulator steps per
agent step (rewards summed), ``spec.episode_length`` agent steps per episode (then
``truncated``), never ``terminated``.

Task names map to the suite as ``domain-task-words`` -> ``(domain, task_words)``, with
``cup`` -> ``ball_in_cup``: cartpole-balance-sparse -> cartpole/balance_sparse.
"""
from __future__ import annotations

import ctypes.util
import os

# Rendering backend: must be chosen before dm_control is imported. EGL (headless) unless the
# user chose one; if no libEGL is installed, leave it to dm_control so that state-based envs
# still import (pixel observations will then need MUJOCO_GL=osmesa or a display).
if "MUJOCO_GL" not in os.environ and ctypes.util.find_library("EGL"):
    os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
from dm_control import suite  # noqa: E402

from mbdpo.envs import dmc_custom  # noqa: E402
from mbdpo.envs.wrappers import PixelStack, TimeLimit  # noqa: E402
from mbdpo.tasks import TaskSpec  # noqa: E402

_DOMAIN_ALIASES = {"cup": "ball_in_cup"}
RENDER_SIZE = 384   # default render() size, for videos
PIXEL_SIZE = 64     # pixel observations
PIXEL_FRAMES = 3


def suite_name(task: str) -> tuple[str, str]:
    """Registry task name -> dm_control (domain, task): 'cup-catch' -> ('ball_in_cup', 'catch')."""
    domain, _, rest = task.partition("-")
    if not rest:
        raise ValueError(f"'{task}' is not a domain-task name")
    return _DOMAIN_ALIASES.get(domain, domain), rest.replace("-", "_")


def camera_id(domain: str) -> int:
    return 2 if domain == "quadruped" else 0


def load_dm_env(task: str, seed: int | None = 0, time_limit: float = float("inf")):
    """The raw ``dm_control.rl.control.Environment`` of a registry task name.

    ``time_limit`` defaults to no limit: episode length is the gym wrapper's business.
    """
    if task in dmc_custom.CUSTOM_TASKS:
        return dmc_custom.load(task, random=seed, time_limit=time_limit)
    domain, name = suite_name(task)
    return suite.load(domain, name, task_kwargs={"random": seed, "time_limit": time_limit},
                      environment_kwargs={"flat_observation": False})


class DMControlEnv(gym.Env):
    """A dm_control environment as a gymnasium env, stepping ``action_repeat`` times per step.

    Observation: the task's observation arrays flattened and concatenated in order, float32.
    Action: float32 in ``[-1, 1]^A``, clipped, then mapped affinely onto the actuator
    bounds. The action repeat is done here rather than by a wrapper so that the
    observation is computed once per agent step instead of once per simulator step.
    There is no episode limit here (see ``TimeLimit``) and no termination.
    """

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, env, action_repeat: int = 1, camera: int = 0):
        if action_repeat < 1:
            raise ValueError(f"action_repeat must be >= 1, got {action_repeat}")
        self.render_mode = "rgb_array"
        self._env = env
        self._physics = env.physics
        self._task = env.task
        self.action_repeat = int(action_repeat)
        self.camera_id = int(camera)
        self._n_sub_steps = max(1, int(round(env.control_timestep() / self._physics.timestep())))

        aspec = env.action_spec()
        low = np.broadcast_to(np.asarray(aspec.minimum, np.float64), aspec.shape)
        high = np.broadcast_to(np.asarray(aspec.maximum, np.float64), aspec.shape)
        self._rescale = not (np.all(low == -1.0) and np.all(high == 1.0))
        self._act_half = ((high - low) / 2.0).copy()
        self._act_mid = ((high + low) / 2.0).copy()
        self._action = np.zeros(aspec.shape, np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, aspec.shape, dtype=np.float32)

        dim = sum(int(np.prod(s.shape)) for s in env.observation_spec().values())
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (dim,), dtype=np.float32)

    # dm_control objects, for code that needs the simulator itself
    @property
    def dm_env(self):
        return self._env

    @property
    def physics(self):
        return self._physics

    @property
    def task(self):
        return self._task

    @staticmethod
    def _flatten(observation) -> np.ndarray:
        return np.concatenate([np.ravel(v) for v in observation.values()], dtype=np.float32)

    def reset(self, *, seed: int | None = None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            # dm_control keeps the task's RandomState privately and offers no setter.
            self._task._random = np.random.RandomState(seed)
        timestep = self._env.reset()
        return self._flatten(timestep.observation), {}

    def step(self, action):
        act = self._action
        np.clip(action, -1.0, 1.0, out=act)
        if self._rescale:
            act *= self._act_half
            act += self._act_mid
        task, physics = self._task, self._physics
        reward = 0.0
        # What dm_control's Environment.step does per control step, minus the observation
        # of the intermediate steps and the TimeStep bookkeeping.
        for _ in range(self.action_repeat):
            task.before_step(act, physics)
            physics.step(self._n_sub_steps)
            task.after_step(physics)
            reward += task.get_reward(physics)
        obs = self._flatten(task.get_observation(physics))
        return obs, float(reward), False, False, {}

    def render(self, width: int = RENDER_SIZE, height: int = RENDER_SIZE,
               camera_id: int | None = None) -> np.ndarray:
        cam = self.camera_id if camera_id is None else camera_id
        return self._physics.render(height=height, width=width, camera_id=cam)

    def close(self):
        self._env.close()


def make(spec: TaskSpec, obs_type: str = "state", seed: int = 0) -> gym.Env:
    """The gymnasium env of a DMControl task of the registry."""
    if spec.suite != "dmcontrol":
        raise ValueError(f"task '{spec.name}' belongs to the {spec.suite} suite, not dmcontrol")
    if obs_type not in ("state", "rgb"):
        raise ValueError(f"obs_type must be 'state' or 'rgb', got {obs_type!r}")
    domain = suite_name(spec.name)[0]
    env: gym.Env = DMControlEnv(load_dm_env(spec.name, seed=seed),
                                action_repeat=spec.action_repeat, camera=camera_id(domain))
    if obs_type == "rgb":
        env = PixelStack(env, num_frames=PIXEL_FRAMES, size=PIXEL_SIZE)
    env = TimeLimit(env, spec.episode_length)
    env.action_space.seed(seed)
    return env
