"""``--help`` / ``-h`` of the scripts: every setting of cfgs/config.yaml in one line, by section."""
import os
import re
import subprocess
import sys

import pytest

from mbdpo.cli import config_help

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "cfgs", "config.yaml")


def script_help(script, flag="--help"):
    env = dict(os.environ, MUJOCO_GL="egl", WANDB_MODE="offline")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", script), flag],
                          capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, f"{script} {flag} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def config_layout():
    """(section headers, top-level keys) of cfgs/config.yaml, in file order, read from its text:
    a header is a ``# ...`` line at the start of a line directly above a key."""
    with open(CONFIG) as f:
        lines = f.read().splitlines()
    keys = [m.group(1) for m in (re.match(r"(\w+):", line) for line in lines) if m]
    keys = [k for k in keys if k not in ("defaults", "hydra")]
    headers = [line.lstrip("#").strip() for line, nxt in zip(lines, lines[1:])
               if line.startswith("#") and re.match(r"\w+:", nxt)
               and not re.match(r"(defaults|hydra):", nxt)]
    return headers, keys


@pytest.fixture(scope="module")
def train_help():
    return script_help("train.py")


def test_train_help_lists_every_setting_by_section(train_help):
    lines = train_help.splitlines()
    headers, keys = config_layout()
    assert len(keys) > 80 and len(headers) >= 8
    assert "== Config ==" not in train_help and "Powered by Hydra" not in train_help
    assert lines[0].startswith("Train MBDPO")  # the script's docstring comes first
    assert "--hydra-help" in train_help and "key=value" in train_help
    first_words = [line.split()[0] if line.strip() else "" for line in lines]
    header_at = [lines.index(h) for h in headers]  # each header is a line of its own
    assert header_at == sorted(header_at)
    positions = []
    for key in keys:
        assert first_words.count(key) == 1, key
        i = first_words.index(key)
        parts = lines[i].split(None, 3)
        assert parts[1] == "=" and len(parts) == 4 and parts[3].strip(), lines[i]
        positions.append(i)
    assert positions == sorted(positions)  # file order
    # a key sits under the header of its section: the last header above it in the file
    with open(CONFIG) as f:
        text = f.read().splitlines()
    section = None
    for line in text:
        if line.startswith("#") and line.lstrip("#").strip() in headers:
            section = line.lstrip("#").strip()
        m = re.match(r"(\w+):", line)
        if m and m.group(1) in keys:
            i = first_words.index(m.group(1))
            above = [h for h, at in zip(headers, header_at) if at < i]
            assert above and above[-1] == section, (m.group(1), section)


def test_short_flag_gives_the_same_text(train_help):
    assert script_help("train.py", "-h") == train_help


def test_evaluate_help():
    out = script_help("evaluate.py")
    assert out.startswith("Evaluate a checkpoint")
    assert re.search(r"^  checkpoint = null +\S", out, re.M)
    assert "Powered by Hydra" not in out


def test_config_help_exact_lines(tmp_path):
    (tmp_path / "config.yaml").write_text(
        "# a file header\n"
        "defaults:\n"
        "  - _self_\n"
        "\n"
        "# first section\n"
        "alpha: 1_000_000    # the first\n"
        "beta: null          # a null default,\n"
        "                    # continued here\n"
        "\n"
        "# second (with words)\n"
        "gamma: [a, b]       # a list\n"
        "delta: 3e-4\n"
        "\n"
        "hydra:\n"
        "  run:\n"
        "    dir: .\n")
    assert config_help(str(tmp_path)).splitlines() == [
        "first section",
        "  alpha = 1_000_000  the first",
        "  beta = null        a null default, continued here",
        "",
        "second (with words)",
        "  gamma = [a,b]      a list",
        "  delta = 0.0003",
    ]
