"""Our definitions of the 11 custom DMControl tasks (see ``tasks.py`` for what each rewards).

``load(name, random=..., time_limit=...)`` returns a ``dm_control.rl.control.Environment``
built directly from our ``Task`` subclasses; dm_control's suite registry is not modified.
"""
from __future__ import annotations

from mbdpo.envs.dmc_custom.tasks import BUILDERS

CUSTOM_TASKS = tuple(BUILDERS)


def load(name: str, random=None, time_limit: float = float("inf"), environment_kwargs=None):
    """The dm_control environment of custom task ``name`` (e.g. 'cheetah-jump')."""
    try:
        build = BUILDERS[name]
    except KeyError:
        raise ValueError(f"Unknown custom DMControl task '{name}'; "
                         f"known: {', '.join(CUSTOM_TASKS)}") from None
    return build(random=random, time_limit=time_limit, environment_kwargs=environment_kwargs)
