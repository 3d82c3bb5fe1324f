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


def check_overrides(argv: list[str], config_path: str) -> None:
    """Before Hydra parses the command line: an unknown ``key=value`` is named with the closest
    known settings, in one sentence (Hydra's own message suggests ``+key``, which the code would
    then ignore)."""
    import difflib
    import os

    from omegaconf import OmegaConf
    known = set(OmegaConf.load(os.path.join(config_path, "config.yaml")).keys())
    for arg in argv:
        if "=" not in arg or arg.startswith(("-", "+", "~", "hydra")):
            continue
        key = arg.split("=", 1)[0].split(".")[0]
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            print(f"error: Unknown setting '{key}'.{hint} Every setting is listed in "
                  f"cfgs/config.yaml.", file=sys.stderr, flush=True)
            raise SystemExit(2)
