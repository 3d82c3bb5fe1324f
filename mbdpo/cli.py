"""What the thin scripts share: validate the config, run, turn user mistakes into one sentence."""
from __future__ import annotations

import sys

from mbdpo.checkpoint import CheckpointError
from mbdpo.config import ConfigError, parse_cfg
from mbdpo.envs import MissingSuiteError
from mbdpo.offline import DatasetError
from mbdpo.tasks import UnknownTaskError

USER_ERRORS = (ConfigError, UnknownTaskError, CheckpointError, MissingSuiteError, DatasetError)


def run(cfg, job):
    """parse_cfg(cfg), then job(cfg); a user's mistake exits with status 2 and one line."""
    try:
        return job(parse_cfg(cfg))
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2)
