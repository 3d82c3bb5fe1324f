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
    from omegaconf import OmegaConf

    from mbdpo.config import command_line_keys, no_effect

    def body():
        raw = OmegaConf.to_container(cfg)
        parsed = parse_cfg(cfg)
        if os.environ.get("RANK", "0") == "0":  # under torchrun: once
            for line in no_effect(parsed, raw, command_line_keys(),
                                  os.path.basename(sys.argv[0])):
                print(f"note: {line}", flush=True)
        return job(parsed)

    return answered(body, USER_ERRORS, "Stopped at once: nothing more was saved; resume=true "
                    "continues from the last checkpoint, if any (a dataset conversion from the "
                    "chunks it finished).")


def answered(body, errors: tuple, stopped: str):
    """``body()`` with Ctrl-C and SIGTERM raising KeyboardInterrupt (``StopAtOnce``) until a
    training loop takes them over: one of ``errors`` exits with status 2 and its sentence, a
    stop with status 130 and the line ``stopped``."""
    from mbdpo.trainers.base import StopAtOnce
    with StopAtOnce() as stop:
        try:
            return body()
        except errors as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            raise SystemExit(2)
        except (KeyboardInterrupt, Exception) as err:
            if not stop.stopped(err):
                raise
            print(f"\n{stopped}", file=sys.stderr, flush=True)
            raise SystemExit(130)


def check_overrides(argv: list[str], config_dir: str) -> None:
    """Before Hydra parses the command line: an unknown ``key=value`` is named with the closest
    known settings, in one sentence (Hydra's own message suggests ``+key``, which the code would
    then ignore). ``--help`` or ``-h`` prints the help first and exits (``help_if_asked``)."""
    import difflib

    from omegaconf import OmegaConf
    help_if_asked(argv, config_dir)
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


def check_benchmark_args(argv: list[str], own, config: bool = True) -> None:
    """A benchmark's ``key=value`` arguments: its own keys (``own``) and, with ``config``, the
    settings of cfgs/config.yaml it passes on; anything else exits with one sentence naming
    the closest keys, before any work starts (a typo would otherwise be ignored, or end in a
    traceback after minutes)."""
    import difflib

    from omegaconf import OmegaConf
    known = set(own) | (set(OmegaConf.load(os.path.join(CONFIG_DIR, "config.yaml")).keys())
                        if config else set())
    for arg in argv:
        key = arg.split("=", 1)[0]
        if "=" not in arg or key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            print(f"error: {arg}: not a setting of {os.path.basename(sys.argv[0])}, which takes "
                  f"key=value with the keys {', '.join(sorted(own))}"
                  f"{' and those of cfgs/config.yaml' if config else ''}.{hint}",
                  file=sys.stderr, flush=True)
            raise SystemExit(2)


def _value(v) -> str:
    """A default as it would be written on the command line."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_value(x) for x in v) + "]"
    if isinstance(v, int) and abs(v) >= 10_000:
        return f"{v:_}"  # as the file writes it; Hydra reads 4_000_000 too
    return str(v)


def config_help(config_dir: str) -> str:
    """Every top-level key of ``<config_dir>/config.yaml`` (but ``defaults`` and ``hydra``) as
    ``  key = default  comment``, grouped under the file's section comments (a ``# ...`` line at
    the start of a line, just before a block of keys). The comment is the key's trailing
    ``# ...``, joined with the indented comment-only lines that continue it; the defaults are
    the values ``OmegaConf.load`` reads (YAML loaders drop comments, so the text is read here)."""
    import re

    from omegaconf import OmegaConf
    path = os.path.join(config_dir, "config.yaml")
    values = OmegaConf.to_container(OmegaConf.load(path))
    sections: list[tuple[str, list[list[str]]]] = []  # (title, [[key, comment], ...])
    title, last = "", None  # the section comment just read; the key a comment may continue
    with open(path) as f:
        for line in f:
            line = line.rstrip()
            key = re.match(r"([A-Za-z_][\w-]*):(?:\s|$)", line)
            if key and key.group(1) in ("defaults", "hydra"):
                title, last = "", None
            elif key:
                if title or not sections:
                    sections.append((title, []))
                comment = re.search(r"\s#\s?(.*)", line)
                last = [key.group(1), comment.group(1).strip() if comment else ""]
                sections[-1][1].append(last)
                title = ""
            elif line.startswith("#"):
                title, last = line.lstrip("#").strip(), None
            elif line.lstrip().startswith("#") and last is not None:
                last[1] = f"{last[1]} {line.lstrip().lstrip('#').strip()}".strip()
            else:
                last = None
    width = max((len(f"{k} = {_value(values[k])}") for _, keys in sections for k, _ in keys),
                default=0)
    out = []
    for title, keys in sections:
        out += [f"\n{title}"] if title else []
        out += [f"  {f'{k} = {_value(values[k])}':<{width}}  {c}".rstrip() for k, c in keys]
    return "\n".join(out).lstrip("\n")


def help_if_asked(argv: list[str], config_dir: str) -> None:
    """``--help`` or ``-h`` among ``argv``: print the ``__main__`` script's docstring, how
    settings are given, and ``config_help(config_dir)``; exit 0. Hydra's own help stays
    available as ``--hydra-help``."""
    if not {"--help", "-h"} & set(argv):
        return
    doc = (getattr(sys.modules.get("__main__"), "__doc__", None) or "").strip()
    text = (f"{doc}\n\n" if doc else "") + (
        "Settings are given as key=value (Hydra overrides), e.g. seed=2 steps=100_000;\n"
        "--hydra-help shows Hydra's own help.\n\n") + config_help(config_dir)
    try:
        print(text, flush=True)
    except BrokenPipeError:  # e.g. piped into head: the rest is not wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    raise SystemExit(0)


CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "cfgs")


def entry(job, before_parse=None) -> None:
    """The body of every script: ``--help``/``-h`` prints the script's help and exits; else check
    the overrides, compose cfgs/config.yaml with Hydra, apply ``before_parse(cfg)`` if given,
    then ``run(cfg, job)``."""
    import hydra

    @hydra.main(config_path=CONFIG_DIR, config_name="config", version_base=None)
    def main(cfg):
        if before_parse is not None:
            before_parse(cfg)
        run(cfg, job)

    help_if_asked(sys.argv[1:], CONFIG_DIR)
    check_overrides(sys.argv[1:], CONFIG_DIR)
    main()
