"""Off-screen frames of a MuJoCo model, for the suites that hold a raw ``mujoco`` model
(Meta-World, MyoSuite); dm_control renders through its own ``physics.render``.

``Frames(model, data, camera)`` keeps one ``mujoco.Renderer`` per frame size, widens the
model's off-screen buffer when a frame asks for more, and draws frames of at most
``NO_SHADOW_SIZE`` pixels a side without shadows: with software GL the 4096² shadow map costs
~0.15 s a frame whatever its size, against ~0.02-0.05 s for a 64×64 frame without it.

The GL backend is chosen when mujoco is first imported, so the suite modules import this one
before anything that imports mujoco (it sets ``MUJOCO_GL=egl`` when libEGL is installed and
the user chose nothing).
"""
from __future__ import annotations

import atexit
import ctypes.util
import os
import weakref

if "MUJOCO_GL" not in os.environ and ctypes.util.find_library("EGL"):
    os.environ.setdefault("MUJOCO_GL", "egl")


def _glfw_by_path() -> None:
    """Meta-World and MyoSuite import gymnasium's MuJoCo renderer, which imports ``glfw``;
    without ``PYGLFW_LIBRARY``, pyglfw finds its library by starting a Python child per
    candidate file that reads the file name from a pipe (~50 ms). A run killed in that moment
    leaves the child to print an ``EOFError`` traceback. GLFW opens no window unless
    ``MUJOCO_GL=glfw``: otherwise name the library pyglfw bundles (its default, X11 build) so
    that it is loaded in-process, with no child."""
    if os.environ.get("MUJOCO_GL", "glfw") == "glfw" or os.environ.get("PYGLFW_LIBRARY"):
        return
    import importlib.util
    spec = importlib.util.find_spec("glfw")
    if spec is None or not spec.origin:
        return
    bundled = os.path.join(os.path.dirname(spec.origin), "x11", "libglfw.so")
    if os.path.isfile(bundled):
        os.environ["PYGLFW_LIBRARY"] = bundled


_glfw_by_path()

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

NO_SHADOW_SIZE = 128


class Frames:
    """RGB frames of ``data`` (a ``mujoco.MjData`` of ``model``) seen by ``camera``
    (a name or an id); ``data`` may also be a callable returning the current MjData."""

    def __init__(self, model: mujoco.MjModel, data, camera: str | int, suite: str = "MuJoCo"):
        self.model = model
        self._data = data
        self.suite = suite
        if isinstance(camera, str):
            cam_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
            if cam_id < 0:
                raise ValueError(f"no camera '{camera}' in the {suite} model")
            camera = cam_id
        self.camera_id = int(camera)
        self._renderers: dict[tuple[int, int], mujoco.Renderer] = {}
        _LIVE.add(self)

    def _renderer(self, width: int, height: int) -> mujoco.Renderer:
        renderer = self._renderers.get((height, width))
        if renderer is None:
            vis = self.model.vis.global_
            vis.offwidth, vis.offheight = max(vis.offwidth, width), max(vis.offheight, height)
            try:
                renderer = mujoco.Renderer(self.model, height=height, width=width)
            except mujoco.FatalError as err:
                raise RuntimeError(
                    f"cannot render {self.suite} ({err}); the GL backend is chosen when mujoco "
                    "is first imported: set MUJOCO_GL=egl before starting Python") from err
            self._renderers[(height, width)] = renderer
            _register_exit_hook()
        return renderer

    def render(self, width: int, height: int) -> np.ndarray:
        renderer = self._renderer(width, height)
        data = self._data() if callable(self._data) else self._data
        renderer.update_scene(data, camera=self.camera_id)
        if max(width, height) <= NO_SHADOW_SIZE:
            renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        return renderer.render()

    def close(self) -> None:
        for renderer in self._renderers.values():
            renderer.close()
        self._renderers.clear()


# Renderers still open at exit are closed before the EGL display goes away (otherwise their
# __del__ prints EGL errors at interpreter shutdown). mujoco registers the display's
# termination with atexit when it makes its first context, so our hook is registered after
# that (atexit runs the last registered first).
_LIVE: weakref.WeakSet[Frames] = weakref.WeakSet()
_EXIT_HOOK = False


def _close_all_at_exit() -> None:
    for frames in list(_LIVE):
        try:
            frames.close()
        except Exception:  # noqa: BLE001  (best effort at shutdown)
            pass


def _register_exit_hook() -> None:
    global _EXIT_HOOK
    if not _EXIT_HOOK:
        atexit.register(_close_all_at_exit)
        _EXIT_HOOK = True
