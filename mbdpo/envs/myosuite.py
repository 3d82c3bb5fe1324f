"""MyoSuite tasks: the 10 ``myo-*`` tasks of the registry (musculoskeletal hand).

``make(spec, obs_type, seed)`` gives a gymnasium env with the contract of ``mbdpo.envs``:
float32 state vector (the MyoSuite observation: 115 values for reach, 108 pose, 91 object
hold, 93 key turn, 83 pen twirl), actions float32 in ``[-1, 1]^39`` (muscle activations,
normalised by MyoSuite), one simulator step per agent step (``spec.action_repeat`` is 1),
``spec.episode_length`` (100) agent steps per episode, then ``truncated``; never
``terminated``, and ``info['success']`` is MyoSuite's ``solved`` (0.0 or 1.0) at every step.

Names, as TD-MPC2 maps them: ``myo-X`` -> ``myoHandXFixed-v0`` and ``myo-X-hard`` ->
``myoHandXRandom-v0`` (reach, pose, obj-hold, key-turn, pen-twirl).

The registered MyoSuite ids carry their own time limits (50 to 200 steps) and some of them
end an episode early (``done`` when the hand strays too far); as in TD-MPC2, both are
ignored: the raw environment (``unwrapped``) runs the registry's 100 steps. Seeding:
MyoSuite's ``reset(seed=...)`` does not reseed its generator, so ``reset(seed=s)`` here calls
``env.seed(s)`` first; two resets with the same seed give the same state.

Rendering (``render()`` for videos; pixel observations are not among the paper's settings
but work) uses the ``hand_side_inter`` camera, through ``mjrender.Frames``.
"""
from __future__ import annotations

import contextlib
import io
import warnings

from mbdpo.envs.mjrender import Frames  # noqa: I001  (chooses the GL backend before mujoco loads)
import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402

from mbdpo.envs.wrappers import ActionRepeat, PixelStack, TimeLimit  # noqa: E402
from mbdpo.tasks import MYOSUITE, TaskSpec  # noqa: E402



@contextlib.contextmanager
def _quiet():
    """MyoSuite prints a banner on import and at its first env, and warns about gym."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


with _quiet():
    import myosuite  # noqa: E402, F401  (registers the ids)
    from myosuite.utils import gym as myo_gym  # noqa: E402

RENDER_SIZE = 384
PIXEL_SIZE = 64
PIXEL_FRAMES = 3
CAMERA = "hand_side_inter"
_IDS = {"reach": "Reach", "pose": "Pose", "obj-hold": "ObjHold", "key-turn": "KeyTurn",
        "pen-twirl": "PenTwirl"}


def env_id(task: str) -> str:
    """Registry task name -> MyoSuite id: 'myo-key-turn-hard' -> 'myoHandKeyTurnRandom-v0'."""
    if not task.startswith("myo-"):
        raise ValueError(f"'{task}' is not a MyoSuite task name (myo-...)")
    base = task[len("myo-"):]
    hard = base.endswith("-hard")
    base = base[:-len("-hard")] if hard else base
    if base not in _IDS:
        raise ValueError(f"'{task}' is not a MyoSuite task of the registry")
    return f"myoHand{_IDS[base]}{'Random' if hard else 'Fixed'}-v0"


class MyoSuiteEnv(gym.Env):
    """A MyoSuite environment without its own time limit or early termination; one
    simulator step per ``step`` (``ActionRepeat`` repeats it)."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, name: str, seed: int = 0, camera: str = CAMERA):
        self.render_mode = "rgb_array"
        self.name = name
        with _quiet():
            self._env = myo_gym.make(name).unwrapped
        self._env.seed(seed)
        self._frames = Frames(self._env.mj_model, lambda: self._env.mj_data, camera,
                              suite="MyoSuite")
        self.action_space = gym.spaces.Box(-1.0, 1.0, self._env.action_space.shape,
                                           dtype=np.float32)
        dim = self._env.observation_space.shape[0]
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (dim,), dtype=np.float32)
        self._action = np.zeros(self.action_space.shape, np.float32)

    @property
    def myo_env(self):
        """The MyoSuite environment itself."""
        return self._env

    def reset(self, *, seed: int | None = None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            self._env.seed(seed)
        obs, _ = self._env.reset()
        return np.asarray(obs, dtype=np.float32), {}

    def step(self, action):
        act = self._action
        np.clip(action, -1.0, 1.0, out=act)
        obs, reward, _, _, info = self._env.step(act.copy())
        out = {"success": float(bool(info["solved"]))}
        return np.asarray(obs, dtype=np.float32), float(reward), False, False, out

    def render(self, width: int = RENDER_SIZE, height: int = RENDER_SIZE) -> np.ndarray:
        return self._frames.render(width, height)

    def close(self):
        self._frames.close()
        self._env.close()


def make(spec: TaskSpec, obs_type: str = "state", seed: int = 0) -> gym.Env:
    """The gymnasium env of a MyoSuite task of the registry."""
    if spec.suite != "myosuite" or spec.name not in MYOSUITE:
        raise ValueError(f"task '{spec.name}' belongs to the {spec.suite} suite, not myosuite")
    if obs_type not in ("state", "rgb"):
        raise ValueError(f"obs_type must be 'state' or 'rgb', got {obs_type!r}")
    env: gym.Env = ActionRepeat(MyoSuiteEnv(env_id(spec.name), seed=seed), spec.action_repeat)
    if obs_type == "rgb":
        env = PixelStack(env, num_frames=PIXEL_FRAMES, size=PIXEL_SIZE)
    env = TimeLimit(env, spec.episode_length)
    env.action_space.seed(seed)
    return env
