"""The install files stay in step: every pin of the conda environment agrees with pyproject."""
import os
import re
import tomllib

from tests.conftest import ROOT


def _pins(lines):
    out = {}
    for line in lines:
        m = re.match(r"^\s*-?\s*([A-Za-z0-9_.\-]+)\s*(==|>=|<=|<|>)\s*([^\s,;#]+)", line)
        if m:
            out[m.group(1).lower().replace("_", "-")] = m.group(3)
    return out


def test_conda_env_matches_pyproject():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    declared = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        declared += extra
    exact = {k: v for k, v in _pins(declared).items()
             if any(d.replace(" ", "").lower().startswith(f"{k}==") for d in declared)}
    env_dir = os.path.join(ROOT, "conda_envs")
    files = [f for f in os.listdir(env_dir) if f.endswith(".yml")]
    assert files
    names = {re.split(r"[<>=\[]", d)[0].strip().lower() for d in declared}
    for name in files:
        with open(os.path.join(env_dir, name)) as f:
            pins = _pins(f.read().splitlines())
        for pkg, version in exact.items():  # exact pins in pyproject are the same in conda
            if pkg in pins:
                assert pins[pkg] == version, f"{name}: {pkg}=={pins[pkg]} but pyproject {version}"
        for pkg in pins:  # conda installs nothing pyproject does not know of
            assert pkg in names | {"python", "pip", "torch"}, f"{name}: {pkg} not in pyproject"


def test_every_package_has_init():
    for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, "mbdpo")):
        if "__pycache__" in dirpath:
            continue
        if any(f.endswith(".py") for f in filenames):
            assert "__init__.py" in filenames, dirpath
