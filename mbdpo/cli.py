"""What the thin scripts share: validate the config, run, turn user mistakes into one sentence."""
from __future__ import annotations

import os
import sys

from mbdpo.checkpoint import CheckpointError
from mbdpo.config import ConfigError, parse_cfg
from mbdpo.envs import MissingSuiteError
from mbdpo.offline import DatasetError
from mbdpo.tasks import UnknownTaskError
from mbdpo.trainers.base import RunDiverged

USER_ERRORS = (ConfigError, UnknownTaskError, CheckpointError, MissingSuiteError, DatasetError,
               RunDiverged)


def run(cfg, job):
    """parse_cfg(cfg), then job(cfg); a user's mistake exits with status 2 and one line.
    Ctrl-C or SIGTERM before a training loop takes them over (while environments start or a
    dataset is converted), or a second one, exits with status 130 and one line."""
    import signal
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM as Ctrl-C
    try:
        return job(parse_cfg(cfg))
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2)
    except KeyboardInterrupt:
        print("\nStopped at once: nothing more was saved; resume=true continues from the last "
              "checkpoint, if any (a dataset conversion from the chunks it finished).",
              file=sys.stderr, flush=True)
        raise SystemExit(130)


def check_overrides(argv: list[str], config_dir: str) -> None:
    """Before Hydra parses the command line: an unknown ``key=value`` is named with the closest
    known settings, in one sentence (Hydra's own message suggests ``+key``, which the code would
    then ignore)."""
    import difflib

    from omegaconf import OmegaConf
    known = set(OmegaConf.load(os.path.join(config_dir, "config.yaml")).keys())
    for arg in argv:
        if "=" not in arg or arg.startswith(("-", "~", "hydra", "+hydra", "++hydra")):
            continue
        key, value = arg.split("=", 1)
        plus, key = key[:len(key) - len(key.lstrip("+"))], key.lstrip("+").split(".")[0]
        if plus and key in known:
            print(f"error: {arg}: {key} is a setting already: write {key}={value} without "
                  f"'{plus}'.", file=sys.stderr, flush=True)
            raise SystemExit(2)
        if not value.isascii() and value[:1] not in "'\"":
            # Hydra's override grammar reads unquoted values as ASCII only
            print(f"error: {arg}: a value with non-ASCII characters must be quoted for Hydra: "
                  f"\"{key}='{value}'\".", file=sys.stderr, flush=True)
            raise SystemExit(2)
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            print(f"error: Unknown setting '{key}'.{hint} Every setting is listed in "
                  f"cfgs/config.yaml.", file=sys.stderr, flush=True)
            raise SystemExit(2)


CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "cfgs")


def entry(job, before_parse=None) -> None:
    """The body of every script: check the overrides, compose cfgs/config.yaml with Hydra,
    apply ``before_parse(cfg)`` if given, then ``run(cfg, job)``."""
    import hydra

    @hydra.main(config_path=CONFIG_DIR, config_name="config", version_base=None)
    def main(cfg):
        if before_parse is not None:
            before_parse(cfg)
        run(cfg, job)

    check_overrides(sys.argv[1:], CONFIG_DIR)
    main()
