"""ManiSkill2 tasks: lift-cube, pick-cube, stack-cube, pick-ycb, turn-faucet.

``make(spec, obs_type, seed)`` gives a gymnasium env with the contract of ``mbdpo.envs``:
the task's float32 state vector (lift-cube 42, pick-cube 51, stack-cube 55 values), float32
actions in ``[-1, 1]^A``, ``spec.action_repeat`` (2) environment steps per agent step with
their rewards summed, ``spec.episode_length`` (100) agent steps per episode (then
``truncated``), never ``terminated``, and ``info['success']`` (0.0 or 1.0, the last repeat's)
at every step. Pixel observations are not supported.

Setup as TD-MPC2's ``envs/maniskill.py``: ``lift-cube`` -> ``LiftCube-v0``, ``pick-cube`` ->
``PickCube-v0``, ``stack-cube`` -> ``StackCube-v0`` with the controller ``pd_ee_delta_pos``
(end-effector position deltas and gripper: A = 4), ``pick-ycb`` -> ``PickSingleYCB-v0``,
``turn-faucet`` -> ``TurnFaucet-v0`` with ``pd_ee_delta_pose`` (position and rotation deltas
and gripper: A = 7); ``obs_mode='state'``, the dense reward. Differences: TD-MPC2 ran
ManiSkill2 0.4 (old ``gym`` API), this runs 0.5.3 (gymnasium API; its default reward became
``normalized_dense``, so ``reward_mode='dense'`` is asked for explicitly, and 0.5 reworked some
dense rewards); ManiSkill2's own 200-step limit and its success termination are not used.

Seeding: ``make(seed=s)`` followed by ``reset()`` is ``reset(seed=s)``; a reset without a seed
then draws the next episode seed from ManiSkill2's main generator (seeded by the last seed
given), so runs are reproducible.

Needs (see ``scripts/setup_maniskill2.sh``, which sets all of it up in ``.venv-ms2``):

* its own environment: ``mani-skill2==0.5.3`` pins ``numpy<1.24``;
* a Vulkan device: SAPIEN 2.2.2 creates a renderer even for state observations. Without a
  GPU that is lavapipe (software Vulkan) from Mesa >= 25 plus a small layer that removes one
  device extension SAPIEN asks for; ``source .vulkan/env.sh`` sets the variables. Without a
  usable device SAPIEN segfaults when the scene is created, so ``make`` checks first and raises
  ``VulkanUnavailableError``;
* for pick-ycb and turn-faucet, downloaded assets under ``MS2_ASSET_DIR`` (default ``./data``,
  relative to the working directory; read when mani_skill2 is imported): otherwise
  ``MissingAssetError``.

``mani_skill2`` is imported only here (the registry only looks for it with ``find_spec``).
Rendering: ``render()`` draws the task's ``render_camera`` at 384x384 (TD-MPC2's size); on
lavapipe the first frame of a process takes ~10 s (shader compilation), later ones ~0.1 s.
"""
from __future__ import annotations

import ctypes
import json
import os
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np

from mbdpo.envs import MissingSuiteError
from mbdpo.envs.wrappers import ActionRepeat, TimeLimit
from mbdpo.tasks import TaskSpec

# Task -> (ManiSkill2 environment id, controller), as TD-MPC2.
TASK_IDS = {
    "lift-cube": ("LiftCube-v0", "pd_ee_delta_pos"),
    "pick-cube": ("PickCube-v0", "pd_ee_delta_pos"),
    "stack-cube": ("StackCube-v0", "pd_ee_delta_pos"),
    "pick-ycb": ("PickSingleYCB-v0", "pd_ee_delta_pose"),
    "turn-faucet": ("TurnFaucet-v0", "pd_ee_delta_pose"),
}
REWARD_MODE = "dense"
RENDER_SIZE = 384
SETUP_HINT = ("run `sudo scripts/setup_maniskill2.sh` once and `source .vulkan/env.sh` before "
              "starting Python (software Vulkan, lavapipe), or use a GPU with its Vulkan driver")
# Task -> (asset name, download_asset id) for the tasks that need downloaded assets.
ASSETS = {"pick-ycb": ("YCB object", "ycb"),
          "turn-faucet": ("PartNet-Mobility faucet", "partnet_mobility_faucet")}

# SAPIEN logs a warning each time an env creates its (shared) renderer; ManiSkill2 sets the
# renderer's log level from this variable.
os.environ.setdefault("MS2_RENDERER_LOG_LEVEL", "error")


class VulkanUnavailableError(MissingSuiteError):
    """No usable Vulkan device for SAPIEN."""


class MissingAssetError(MissingSuiteError, FileNotFoundError):
    """A task's downloaded assets are not under MS2_ASSET_DIR."""


# ----------------------------------------------------------------------------- checks
def _vulkan_device_count() -> tuple[int, str]:
    """The number of Vulkan physical devices the loader sees, and why none if 0.

    A bare vkCreateInstance + vkEnumeratePhysicalDevices through ctypes: SAPIEN itself,
    without a device, only logs an error and then crashes the process (segfault)."""
    try:
        vk = ctypes.CDLL("libvulkan.so.1")
    except OSError:
        return 0, "the Vulkan loader libvulkan.so.1 is not installed"

    class InstanceCreateInfo(ctypes.Structure):
        _fields_ = [("sType", ctypes.c_int), ("pNext", ctypes.c_void_p),
                    ("flags", ctypes.c_uint32), ("pApplicationInfo", ctypes.c_void_p),
                    ("enabledLayerCount", ctypes.c_uint32),
                    ("ppEnabledLayerNames", ctypes.c_void_p),
                    ("enabledExtensionCount", ctypes.c_uint32),
                    ("ppEnabledExtensionNames", ctypes.c_void_p)]

    vk.vkCreateInstance.restype = ctypes.c_int
    vk.vkCreateInstance.argtypes = [ctypes.POINTER(InstanceCreateInfo), ctypes.c_void_p,
                                    ctypes.POINTER(ctypes.c_void_p)]
    vk.vkEnumeratePhysicalDevices.restype = ctypes.c_int
    vk.vkEnumeratePhysicalDevices.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32),
                                              ctypes.c_void_p]
    vk.vkDestroyInstance.restype = None
    vk.vkDestroyInstance.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    info = InstanceCreateInfo(sType=1)  # VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO
    instance = ctypes.c_void_p()
    result = vk.vkCreateInstance(ctypes.byref(info), None, ctypes.byref(instance))
    if result != 0:
        names = {-9: "VK_ERROR_INCOMPATIBLE_DRIVER, i.e. no Vulkan driver found",
                 -6: "VK_ERROR_LAYER_NOT_PRESENT, i.e. a layer of VK_INSTANCE_LAYERS is missing",
                 -3: "VK_ERROR_INITIALIZATION_FAILED"}
        return 0, f"vkCreateInstance failed with {names.get(result, result)}"
    try:
        count = ctypes.c_uint32(0)
        result = vk.vkEnumeratePhysicalDevices(instance, ctypes.byref(count), None)
    finally:
        vk.vkDestroyInstance(instance, None)
    if result != 0 or count.value == 0:
        return 0, "the Vulkan loader finds no device"
    return count.value, ""


_VULKAN_PROBLEM: list[str | None] = []   # cached result of vulkan_problem()


def vulkan_problem() -> str | None:
    """None if SAPIEN can create its renderer in this process, else what is wrong (cached).

    Checks that ``mani_skill2``/``sapien`` import (they need libvulkan.so.1), that the Vulkan
    loader finds a device, and that SAPIEN creates its renderer on it."""
    if _VULKAN_PROBLEM:
        return _VULKAN_PROBLEM[0]
    problem = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sapien imports the deprecated pkg_resources
            import sapien.core as sapien
    except ImportError as err:
        problem = f"SAPIEN does not import: {err}"
    else:
        count, why = _vulkan_device_count()
        if count == 0:
            problem = why
        else:
            try:
                sapien.SapienRenderer(offscreen_only=True)  # shared by every later env
            except RuntimeError as err:
                problem = f"SAPIEN cannot create its renderer: {err}"
                if "ExtensionNotPresent" in str(err):
                    problem += (" (lavapipe lacks VK_KHR_external_semaphore_fd, which the "
                                "layer VK_LAYER_MBDPO_strip_semaphore_fd of .vulkan/env.sh "
                                "removes)")
    _VULKAN_PROBLEM.append(problem)
    return problem


def check_vulkan() -> None:
    """Raise ``VulkanUnavailableError`` (one sentence) if SAPIEN has no usable Vulkan device."""
    problem = vulkan_problem()
    if problem is not None:
        raise VulkanUnavailableError(
            f"ManiSkill2 needs a Vulkan device and none is usable here ({problem}): "
            f"{SETUP_HINT}.")


def _asset_dir() -> Path:
    import mani_skill2  # the package itself, without sapien: only paths
    return Path(mani_skill2.ASSET_DIR)


def missing_asset(task: str) -> Path | None:
    """The first file the task needs that is not under MS2_ASSET_DIR, or None."""
    if task == "pick-ycb":
        root = _asset_dir() / "mani_skill2_ycb"
        info = root / "info_pick_v0.json"
        if not info.exists():
            return info
        with open(info) as f:
            models = sorted(json.load(f))
        for model in models:
            path = root / "models" / model / "collision.obj"
            if not path.exists():
                return path
    elif task == "turn-faucet":
        import mani_skill2
        meta = Path(mani_skill2.PACKAGE_ASSET_DIR) / "partnet_mobility/meta/info_faucet_train.json"
        with open(meta) as f:
            models = sorted(json.load(f))
        for model in models:
            path = _asset_dir() / "partnet_mobility/dataset" / str(model) / "mobility_cvx.urdf"
            if not path.exists():
                return path
    return None


def _asset_error(task: str, missing) -> MissingAssetError:
    what, uid = ASSETS[task]
    asset_dir = _asset_dir()
    return MissingAssetError(
        f"Task '{task}' needs the ManiSkill2 {what} assets, which are not under "
        f"MS2_ASSET_DIR={str(asset_dir)!r} ({Path(asset_dir).resolve()}; missing {missing}): "
        f"on a machine with internet run `MS2_ASSET_DIR=DIR python -m "
        f"mani_skill2.utils.download_asset {uid} -y`, copy DIR here and set MS2_ASSET_DIR to "
        f"it before starting Python.")


def check_assets(task: str) -> None:
    """Raise ``MissingAssetError`` (one sentence) if the task's assets are not there."""
    if task in ASSETS:
        missing = missing_asset(task)
        if missing is not None:
            raise _asset_error(task, missing)


# ----------------------------------------------------------------------------- env
class ManiSkill2Env(gym.Env):
    """One ManiSkill2 environment step per ``step`` (``ActionRepeat`` repeats it).

    Observation: the state vector as float32. Action: float32 in ``[-1, 1]^A``, clipped.
    ``info``: ManiSkill2's, with ``success`` as a float. Never terminates (ManiSkill2's own
    termination at success is dropped), no episode limit (see ``TimeLimit``).
    """

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, task: str, seed: int = 0, render_size: int = RENDER_SIZE):
        env_id, control_mode = TASK_IDS[task]
        check_assets(task)
        check_vulkan()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import mani_skill2.envs  # noqa: F401  (registers the environments)
            from mani_skill2.utils.registration import make as ms2_make
        try:
            env = ms2_make(env_id, as_gym=False, obs_mode="state", control_mode=control_mode,
                           reward_mode=REWARD_MODE, render_mode="rgb_array",
                           render_camera_cfgs={"width": render_size, "height": render_size},
                           renderer_kwargs={"offscreen_only": True})
        except FileNotFoundError as err:
            if task not in ASSETS:
                raise
            raise _asset_error(task, err) from err
        except RuntimeError as err:
            if "vk" in str(err).lower() or "render" in str(err).lower():
                raise VulkanUnavailableError(
                    f"ManiSkill2 needs a Vulkan device and SAPIEN could not use the one it "
                    f"found ({err}): {SETUP_HINT}.") from err
            raise
        self._env = env
        self.task, self.env_id, self.control_mode = task, env_id, control_mode
        self.render_mode = "rgb_array"
        self.render_size = int(render_size)
        self._next_seed: int | None = int(seed)
        dim = int(np.prod(env.observation_space.shape))
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (dim,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, env.action_space.shape, dtype=np.float32)
        self._action = np.zeros(self.action_space.shape, np.float32)

    @property
    def ms2_env(self):
        """The ManiSkill2 environment itself (a ``mani_skill2.envs.sapien_env.BaseEnv``)."""
        return self._env

    def reset(self, *, seed: int | None = None, options=None):
        super().reset(seed=seed)
        if seed is None:
            seed, self._next_seed = self._next_seed, None
        else:
            self._next_seed = None
        obs, _ = self._env.reset(seed=seed, options=options)
        return np.asarray(obs, dtype=np.float32).reshape(-1), {}

    def step(self, action):
        act = self._action
        np.clip(action, -1.0, 1.0, out=act)
        obs, reward, _, _, info = self._env.step(act.copy())
        info = dict(info)
        info["success"] = float(info["success"])
        return np.asarray(obs, dtype=np.float32).reshape(-1), float(reward), False, False, info

    def render(self, width: int | None = None, height: int | None = None) -> np.ndarray:
        """An ``(H, W, 3)`` uint8 frame of the ``render_camera`` (resized if asked)."""
        frame = self._env.render()  # render_mode 'rgb_array': its one camera, goal shown
        width, height = width or self.render_size, height or self.render_size
        if frame.shape[:2] != (height, width):
            import cv2  # a dependency of mani-skill2
            frame = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(frame, dtype=np.uint8)

    def close(self):
        self._env.close()


def make(spec: TaskSpec, obs_type: str = "state", seed: int = 0) -> gym.Env:
    """The gymnasium env of a ManiSkill2 task of the registry (state observations only)."""
    if spec.suite != "maniskill2":
        raise ValueError(f"task '{spec.name}' belongs to the {spec.suite} suite, not maniskill2")
    if spec.name not in TASK_IDS:
        raise ValueError(f"no ManiSkill2 environment is known for task '{spec.name}'")
    if obs_type != "state":
        raise ValueError(f"ManiSkill2 tasks support only state observations here "
                         f"(obs=state), not obs={obs_type!r}")
    env: gym.Env = ManiSkill2Env(spec.name, seed=seed)
    env = ActionRepeat(env, spec.action_repeat)
    env = TimeLimit(env, spec.episode_length)
    env.action_space.seed(seed)
    return env
