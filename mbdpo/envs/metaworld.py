"""Meta-World tasks: the 50 ``mw-*`` tasks of the registry.

``make(spec, obs_type, seed)`` gives a gymnasium env with the contract of ``mbdpo.envs``:
float32 state vector ``(39,)`` (hand position, gripper opening, object poses, the same 18
values one simulator step earlier, goal position) or uint8 ``(9, 64, 64)`` pixels, actions
float32 in ``[-1, 1]^4`` (hand xyz displacement, gripper effort), ``spec.action_repeat``
simulator steps per agent step (the environment's own dense rewards summed),
``spec.episode_length`` agent steps per episode (then ``truncated``), never ``terminated``,
and ``info['success']`` (0.0 or 1.0, the last repeat's) at every step.

Version. PyPI's metaworld 3.0.0 only has the ``-v3`` environments, while the TD-MPC2
datasets were recorded on ``-v2``: ``mw-NAME`` maps to ``NAME-v3`` (all 50 names exist as
such, none needed renaming; ``METAWORLD_VERSION`` is for run metadata). The v3 reward is the
v2 reward function (``reward_function_version='v2'``, the default of every v3 class).

Environment, as TD-MPC2 builds it: the *goal-observable* class of the task
(``<name>-v3-goal-observable``, the last three observation values are the goal) with
``_freeze_rand_vec = False``, so that every reset draws new object and goal positions from
the task's random-reset space. Unlike TD-MPC2 (which on v2 drew them from numpy's global
RNG), the draws come from the env's own seeded generator, so ``make(seed=...)`` and
``reset(seed=...)`` are deterministic. ``goals='mt1'`` instead samples, at each reset, one
of the 50 fixed goal configurations of ``metaworld.MT1(name, seed)`` (what
``gymnasium.make('Meta-World/MT1', ...)`` does). The environment's own 500-step limit is
lifted: the episode length is ``TimeLimit``'s business. TD-MPC2's reset also takes one
zero-action simulator step after reset while returning the pre-step observation; that
quirk is not reproduced.

Rendering (``render()`` and pixel observations) uses the ``corner2`` camera moved to
TD-MPC2's position ``(0.75, 0.075, 0.7)`` and turned 180 degrees about its axis (as defined
in the Meta-World model it looks upside down; mujoco-py's bottom-up images hid that), through
``mjrender.Frames`` (EGL by default; small frames without shadows).
"""
from __future__ import annotations

import sys

from mbdpo.envs.mjrender import Frames  # noqa: I001  (chooses the GL backend before mujoco loads)
import gymnasium as gym  # noqa: E402
import metaworld  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402
from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE  # noqa: E402

from mbdpo.envs.wrappers import PixelStack, TimeLimit  # noqa: E402
from mbdpo.tasks import METAWORLD, TaskSpec  # noqa: E402

METAWORLD_VERSION = "v3"
# Registry names whose Meta-World name is not simply the name without 'mw-'. In metaworld
# 3.0.0 every one of the 50 names of the TD-MPC2 datasets exists as '<name>-v3'.
_NAME_EXCEPTIONS: dict[str, str] = {}
RENDER_SIZE = 384   # default render() size, for videos (TD-MPC2's)
PIXEL_SIZE = 64     # pixel observations
PIXEL_FRAMES = 3
CAMERA = "corner2"
CAMERA_POS = (0.75, 0.075, 0.7)   # TD-MPC2's adjusted position of 'corner2'
GOAL_MODES = ("random", "mt1")


def env_name(task: str) -> str:
    """Registry task name -> Meta-World environment name: 'mw-reach' -> 'reach-v3'."""
    if not task.startswith("mw-"):
        raise ValueError(f"'{task}' is not a Meta-World task name (mw-...)")
    base = task[len("mw-"):]
    return f"{_NAME_EXCEPTIONS.get(base, base)}-{METAWORLD_VERSION}"


def all_env_names() -> dict[str, str]:
    """Every registry Meta-World task -> its Meta-World environment name."""
    return {t: env_name(t) for t in METAWORLD}


class MetaWorldEnv(gym.Env):
    """A goal-observable Meta-World environment, stepping ``action_repeat`` times per step.

    Observation: the environment's 39 values as float32. Action: float32 in ``[-1, 1]^4``,
    clipped. Reward: the sum of the repeats' rewards. ``info``: the last repeat's info,
    with ``success`` as a float. No episode limit (see ``TimeLimit``), no termination.
    """

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, name: str, seed: int = 0, action_repeat: int = 1,
                 goals: str = "random", camera: str = CAMERA):
        if action_repeat < 1:
            raise ValueError(f"action_repeat must be >= 1, got {action_repeat}")
        if goals not in GOAL_MODES:
            raise ValueError(f"goals must be one of {GOAL_MODES}, got {goals!r}")
        key = f"{name}-goal-observable"
        if key not in ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE:
            raise ValueError(f"the installed metaworld has no environment '{name}'")
        self.render_mode = "rgb_array"
        self.name = name
        self.action_repeat = int(action_repeat)
        self.goals = goals
        env = ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[key](seed=seed)
        env._freeze_rand_vec = False     # new positions at every reset (as TD-MPC2) ...
        env.seeded_rand_vec = True       # ... drawn from env.np_random, not np.random
        env.max_path_length = sys.maxsize  # its 500-step limit would raise in step()
        self._env = env
        self._tasks = metaworld.MT1(name, seed=seed).train_tasks if goals == "mt1" else None
        self._seed(seed)

        self.camera = camera
        self._cam_id = mujoco.mj_name2id(env.model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
        if self._cam_id < 0:
            raise ValueError(f"no camera '{camera}' in {name}")
        if camera == CAMERA:
            model = env.model
            model.cam_pos[self._cam_id] = CAMERA_POS
            # Turn the camera half a turn about its optical axis: the image comes out upright.
            quat = np.empty(4)
            mujoco.mju_mulQuat(quat, model.cam_quat[self._cam_id].copy(),
                               np.array([0.0, 0.0, 0.0, 1.0]))
            model.cam_quat[self._cam_id] = quat
        self._frames = Frames(env.model, lambda: env.data, self._cam_id, suite="Meta-World")

        self.action_space = gym.spaces.Box(-1.0, 1.0, env.action_space.shape, dtype=np.float32)
        dim = env.observation_space.shape[0]
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (dim,), dtype=np.float32)
        self._action = np.zeros(self.action_space.shape, np.float32)

    @property
    def mw_env(self):
        """The Meta-World environment itself (a ``SawyerXYZEnv``)."""
        return self._env

    def _seed(self, seed: int) -> None:
        self._env.seed(seed)  # its np_random: goals, and the task choice of goals='mt1'

    def reset(self, *, seed: int | None = None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            self._seed(seed)
        if self._tasks is not None:
            self._env.set_task(self._tasks[self._env.np_random.choice(len(self._tasks))])
        obs, _ = self._env.reset()
        return obs.astype(np.float32), {}

    def step(self, action):
        act = self._action
        np.clip(action, -1.0, 1.0, out=act)
        reward = 0.0
        for _ in range(self.action_repeat):
            obs, r, _, _, info = self._env.step(act.copy())
            reward += float(r)
        info = dict(info)
        info["success"] = float(info["success"])
        return obs.astype(np.float32), reward, False, False, info

    def render(self, width: int = RENDER_SIZE, height: int = RENDER_SIZE) -> np.ndarray:
        return self._frames.render(width, height)

    def close_renderers(self) -> None:
        self._frames.close()

    def close(self):
        self.close_renderers()
        self._env.close()


def make(spec: TaskSpec, obs_type: str = "state", seed: int = 0,
         goals: str = "random") -> gym.Env:
    """The gymnasium env of a Meta-World task of the registry."""
    if spec.suite != "metaworld":
        raise ValueError(f"task '{spec.name}' belongs to the {spec.suite} suite, not metaworld")
    if obs_type not in ("state", "rgb"):
        raise ValueError(f"obs_type must be 'state' or 'rgb', got {obs_type!r}")
    env: gym.Env = MetaWorldEnv(env_name(spec.name), seed=seed,
                                action_repeat=spec.action_repeat, goals=goals)
    if obs_type == "rgb":
        env = PixelStack(env, num_frames=PIXEL_FRAMES, size=PIXEL_SIZE)
    env = TimeLimit(env, spec.episode_length)
    env.action_space.seed(seed)
    return env
