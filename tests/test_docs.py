"""The user docs cannot drift from the code: every ``key=value`` of a command in the README's
and docs/'s command blocks is a setting of the script it is passed to, every ``--flag`` one of
its flags, every path they name exists, every link resolves, docs/algorithm.md's defaults are
those of cfgs/config.yaml and of ``--help``, and the README stays a landing page."""
import importlib
import importlib.util
import os
import re
import shlex
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from mbdpo.cli import config_help
from tests.conftest import ROOT

DOCS = ["README.md"] + sorted(f"docs/{f}" for f in os.listdir(os.path.join(ROOT, "docs"))
                              if f.endswith(".md") and f != "STATUS.md")  # STATUS: a diary
CONFIG_KEYS = set(OmegaConf.load(os.path.join(ROOT, "cfgs", "config.yaml")).keys())
GRID_KEYS = set(OmegaConf.load(os.path.join(ROOT, "cfgs", "online_parallel_config.yaml")).keys())
LABELS = {"scripts/plot.py"}  # its key=value are label=source pairs
REPO_PATH = re.compile(r"^(?:\./)?((?:mbdpo|scripts|benchmarks|cfgs|docs|tests|conda_envs"
                       r")/[\w./-]*)$")


def read(rel):
    with open(os.path.join(ROOT, rel)) as f:
        return f.read()


def command_lines(text):
    """The shell lines of a markdown text's ```bash blocks, continuations joined."""
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                yield line


def invocations(line):
    """(script, arguments) of each ``python scripts/x.py ...`` / ``torchrun ... x.py`` of a
    line (split at && ; |), its trailing comment dropped."""
    words = shlex.split(line, comments=True)
    cmd = []
    for w in words + ["&&"]:
        if w in ("&&", ";", "|", "||"):
            scripts = [i for i, a in enumerate(cmd) if a.endswith(".py")]
            if scripts:
                i = scripts[0]
                yield cmd[i], cmd[i + 1:]
            cmd = []
        else:
            cmd.append(w)


def all_invocations(rel):
    return [(s, args, line) for line in command_lines(read(rel)) for s, args in invocations(line)]


def allowed(script):
    """The keys ``script`` takes: the settings of cfgs/config.yaml (the scripts); the grid's
    file's keys (the grid launcher); a benchmark's own ``KEYS`` and, unless its
    ``PASSES_CONFIG`` says no, the settings it passes on to cfgs/config.yaml."""
    if script == "scripts/online_parallel_train.py":
        return GRID_KEYS | {"launcher"}
    if not script.startswith("benchmarks/"):
        return CONFIG_KEYS
    spec = importlib.util.spec_from_file_location(script[:-3].replace("/", "."),
                                                  os.path.join(ROOT, script))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return set(module.KEYS) | (CONFIG_KEYS if getattr(module, "PASSES_CONFIG", True) else set())


@pytest.fixture(scope="module")
def flags():
    """The --flags of the argparse scripts, from their --help."""
    out = {}
    for script in ("scripts/plot.py", "scripts/online_parallel_train.py"):
        proc = subprocess.run([sys.executable, os.path.join(ROOT, script), "--help"],
                              capture_output=True, text=True, timeout=120, cwd=ROOT,
                              env=dict(os.environ, MUJOCO_GL="egl"))
        assert proc.returncode == 0, proc.stderr
        out[script] = set(re.findall(r"(--[\w-]+)", proc.stdout))
    return out


def problems_of(rel, flags):
    """Every key, flag and path of ``rel``'s commands that is not real."""
    bad = []
    for script, args, line in all_invocations(rel):
        script = script.removeprefix("./")
        if not os.path.isfile(os.path.join(ROOT, script)):
            bad.append(f"{rel}: {script} does not exist ({line})")
            continue
        for a in args:
            if a.startswith("--"):
                if script in flags and a.split("=")[0] not in flags[script]:
                    bad.append(f"{rel}: {script} has no flag {a}")
            elif "=" in a and script not in LABELS:
                key = a.split("=", 1)[0]
                if key.startswith("hydra.") and script == "scripts/online_parallel_train.py":
                    continue
                if key not in allowed(script):
                    bad.append(f"{rel}: {script} has no setting {key!r} ({line.strip()})")
    return bad


def paths_of(rel):
    """Repository paths a doc names: in its commands, in `code`, and its relative links."""
    text = read(rel)
    names = set()
    for line in command_lines(text):
        for w in shlex.split(line, comments=True):
            names |= {m.group(1) for m in map(REPO_PATH.match, [w, w.split("=", 1)[-1]]) if m}
    names |= {m.group(1) for m in (REPO_PATH.match(c) for c in re.findall(r"`([^`\s]+)`", text))
              if m}
    return names


def slug(header):
    """GitHub's anchor of a markdown header."""
    return re.sub(r"[^\w\- ]", "", header.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("rel", DOCS)
def test_commands_name_real_settings_flags_and_paths(rel, flags):
    assert not problems_of(rel, flags)
    missing = []
    for p in paths_of(rel):
        full = os.path.join(ROOT, p)
        # a result file a command writes (out=...json) exists once run: its folder must
        output = re.search(r"\.(json|png|pdf|csv)$", p) and os.path.isdir(os.path.dirname(full))
        if not os.path.exists(full) and not output:
            missing.append(p)
    assert not missing, f"{rel} names paths that do not exist: {sorted(missing)}"
    # links to files of the repository, and to their headers
    here = os.path.dirname(os.path.join(ROOT, rel))
    for target in re.findall(r"\]\(([^)\s]+)\)", read(rel)):
        if re.match(r"\w+://", target):
            continue
        path, _, anchor = target.partition("#")
        full = os.path.normpath(os.path.join(here, path)) if path else os.path.join(ROOT, rel)
        assert os.path.exists(full), f"{rel}: link {target} leads nowhere"
        if anchor:
            with open(full) as f:
                anchors = {slug(h) for h in re.findall(r"^#+ (.*)$", f.read(), re.M)}
            assert anchor in anchors, f"{rel}: link {target}: no such header"


def test_the_checker_sees_a_wrong_key_a_wrong_flag_and_a_missing_script(flags, tmp_path):
    """The test above fails on a README command with an unknown key (as a user would copy it)."""
    doc = tmp_path / "doc.md"
    doc.write_text("```bash\npython scripts/train.py task=walker-walk energy_etta=0.1\n"
                   "python scripts/plot.py logs/x --outt plots/x\n"
                   "python scripts/trian.py task=walker-walk\n"
                   "python benchmarks/speed.py sizes=1 diffusion_steps=5\n```\n")
    bad = problems_of(os.path.relpath(doc, ROOT), flags)
    assert len(bad) == 3, bad
    assert "'energy_etta'" in bad[0] and "--outt" in bad[1] and "trian.py does not exist" in bad[2]


def defaults_table():
    """(key, default text, read by) of docs/algorithm.md's defaults table."""
    text = read("docs/algorithm.md").split("## 7. Defaults", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `(\w+)` \| ([^|]+?) \| [^|]+ \| (.+) \|$", text, re.M)


def test_algorithm_defaults_are_the_config_and_help():
    rows = defaults_table()
    cfg = OmegaConf.load(os.path.join(ROOT, "cfgs", "config.yaml"))
    helped = {m.group(1): m.group(2) for m in
              re.finditer(r"^\s+(\w+) = (\S+)", config_help(os.path.join(ROOT, "cfgs")), re.M)}
    assert len(rows) >= 45
    for key, default, readers in rows:
        documented = OmegaConf.create(f"v: {default.strip()}").v  # as YAML reads it
        assert cfg[key] == documented, f"{key}: docs/algorithm.md {default}, config {cfg[key]}"
        assert OmegaConf.create(f"v: {helped[key]}").v == documented, (key, helped[key])
        for name in re.findall(r"`([\w.]+)`", readers):  # what reads it exists
            parts, obj = name.split("."), None
            for i in range(len(parts), 0, -1):
                try:
                    obj = importlib.import_module("mbdpo." + ".".join(parts[:i]))
                    break
                except ImportError:
                    continue
            assert obj is not None, name
            for attr in parts[i:]:
                obj = getattr(obj, attr)
    # the published default settings of the method are all there
    for key in ("horizon", "rho", "energy_eta", "diffusion_num_samples", "diffusion_steps",
                "diffusion_temperature", "tau", "entropy_coef", "batch_size"):
        assert key in {r[0] for r in rows}


def test_algorithm_lists_the_differences_from_the_published_code():
    section = read("docs/algorithm.md").split("## 8. Where the code departs", 1)[1]
    rows = re.findall(r"^\| (\d+) \| ([^|]+) \|", section, re.M)
    assert len(rows) >= 8
    named = " ".join(r[1] for r in rows).lower()
    for topic in ("energy positives", "q-ensemble initialisation", "energy and termination",
                  "td target", "task embeddings", "energy negatives", "evaluation seeding",
                  "random-shift augmentation"):
        assert topic in named, topic


def test_readme_is_a_landing_page_with_the_ci_commands():
    readme = read("README.md")
    lines = readme.splitlines()
    assert len(lines) <= 180
    first_screen = "\n".join(lines[:40])
    blocks = re.findall(r"```bash\n(.*?)```", first_screen, re.S)
    assert len(blocks) == 2 and "scripts/train.py" in blocks[0] and "pytest" in blocks[1]
    ci = read(".ci/run").replace(" -q", "")
    install, test = blocks[1].strip().rsplit(" && ", 1)
    assert install in ci and test.replace(" -q", "") in ci  # CI runs what the README says
    assert "docs/figures/cartpole.png" in readme and "| task |" in readme  # figure, table
    cases = len(re.findall(r"^\| \d+ \|", read("docs/errors.md"), re.M))
    assert f"{cases} user errors" in readme  # the count it gives is the catalogue's
    assert not re.search(r"ALGORITHM\.md", readme + "".join(read(d) for d in DOCS))
