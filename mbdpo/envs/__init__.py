"""Environments. ``make_env(cfg)`` is the only entry point.

Every environment is a ``gymnasium.Env`` with the same contract, whatever the suite:

* ``reset(seed=None) -> (obs, info)`` and ``step(action) -> (obs, reward, terminated,
  truncated, info)``; ``obs`` is a float32 vector for state observations, or uint8
  ``(9, 64, 64)`` (three stacked RGB frames, channels first) for ``obs=rgb``.
* an action is a float32 vector in ``[-1, 1]^A``; the action repeat of the task is applied
  inside and the rewards of the repeats are summed.
* an episode lasts ``TaskSpec.episode_length`` agent steps, then ``truncated`` is True.
* ``info['success']`` (0.0 or 1.0) is present when the task reports success.
* ``render()`` returns an ``(H, W, 3)`` uint8 frame for videos.
"""
from __future__ import annotations

import importlib
import importlib.util

from mbdpo.tasks import SUITE_EXTRA, SUITE_MODULE, get_task

_SUITE_FILE = {"dmcontrol": "mbdpo.envs.dmcontrol", "metaworld": "mbdpo.envs.metaworld",
               "maniskill2": "mbdpo.envs.maniskill2", "myosuite": "mbdpo.envs.myosuite"}


class MissingSuiteError(RuntimeError):
    pass


def make_env(cfg, task: str | None = None, seed: int | None = None):
    """Make the environment of ``task`` (default ``cfg.task``) as the config asks
    (``cfg.obs`` 'state' or 'rgb')."""
    task = task or cfg.task
    spec = get_task(task)
    if importlib.util.find_spec(SUITE_MODULE[spec.suite]) is None:
        extra = SUITE_EXTRA[spec.suite]
        raise MissingSuiteError(
            f"Task '{task}' needs the {spec.suite} suite, which is not installed: "
            f"run pip install -e '.[{extra}]'.")
    try:
        module = importlib.import_module(_SUITE_FILE[spec.suite])
    except ModuleNotFoundError as err:
        raise MissingSuiteError(f"The {spec.suite} suite is not available yet ({err}).") from err
    return module.make(spec, obs_type=cfg.get("obs", "state"),
                       seed=cfg.seed if seed is None else seed)
