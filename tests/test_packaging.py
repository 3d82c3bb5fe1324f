"""The install files stay in step: every pin of each conda environment agrees with pyproject."""
import ast
import graphlib
import os
import re
import tomllib

import pytest
from packaging.requirements import Requirement

from tests.conftest import ROOT


def _pins(lines):
    out = {}
    for line in lines:
        m = re.match(r"^\s*-?\s*([A-Za-z0-9_.\-]+)\s*(==|>=|<=|<|>)\s*([^\s,;#]+)", line)
        if m:
            out[m.group(1).lower().replace("_", "-")] = m.group(3)
    return out


def _declared_extras(text):
    """The extras a conda file says it installs: its line '# extras: a,b,c'."""
    m = re.search(r"^#\s*extras:\s*(.+)$", text, re.M)
    assert m, "each conda file names the pyproject extras it installs ('# extras: ...')"
    return [e.strip() for e in m.group(1).split(",") if e.strip()]


def test_conda_envs_match_pyproject():
    """Every conda file pins each package of the core and of the extras it names, at a
    version that pyproject allows, and nothing pyproject does not know of."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    extras = project["optional-dependencies"]
    env_dir = os.path.join(ROOT, "conda_envs")
    files = sorted(f for f in os.listdir(env_dir) if f.endswith(".yml"))
    # the main environment, and the published names (conda env create -f conda_envs/<name>)
    assert {"mbdpo.yml", "mbdpo-mt80.yml", "mbdpo-ms2.yml", "mbdpo-myo.yml"} <= set(files)
    for name in files:
        with open(os.path.join(env_dir, name)) as f:
            text = f.read()
        pins = _pins(text.splitlines())
        wanted = [Requirement(r) for r in project["dependencies"]]
        for extra in _declared_extras(text):
            assert extra in extras, f"{name}: no extra '{extra}' in pyproject"
            wanted += [Requirement(r) for r in extras[extra]]
        known = {r.name.lower().replace("_", "-") for r in wanted}
        for req in wanted:
            key = req.name.lower().replace("_", "-")
            assert key in pins, f"{name} does not pin {req.name}, which pyproject requires"
            assert req.specifier.contains(pins[key], prereleases=True), (
                f"{name}: {req.name}=={pins[key]} is outside pyproject's '{req.specifier}'")
        for pkg in pins:
            assert pkg in known | {"python", "pip"}, f"{name}: {pkg} is not in pyproject"


def test_every_package_has_init():
    for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, "mbdpo")):
        if "__pycache__" in dirpath:
            continue
        if any(f.endswith(".py") for f in filenames):
            assert "__init__.py" in filenames, dirpath


def import_graph(root: str) -> dict[str, set[str]]:
    """Module -> the modules of the package it imports, at the top of the file or inside a
    function (a circle through a function-level import is still a circle)."""
    package = os.path.basename(root)
    modules = {}
    for dirpath, _, filenames in os.walk(root):
        for f in filenames:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                name = os.path.relpath(path[:-3], os.path.dirname(root)).replace(os.sep, ".")
                modules[name.removesuffix(".__init__")] = path
    graph = {}
    for name, path in modules.items():
        deps = set()
        with open(path) as fh:
            tree = ast.parse(fh.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # "from pkg import module" names the module; "from module import name" the module
                deps |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                         else node.module for a in node.names}
        graph[name] = {d for d in deps if d in modules and d != name and
                       d.split(".")[0] == package}
    return graph


def test_mbdpo_imports_downwards_only():
    """No import circle among mbdpo's modules (graphlib's topological sort names one if
    there is), and the trainers' shared pieces live below them."""
    graph = import_graph(os.path.join(ROOT, "mbdpo"))
    assert len(graph) > 40 and "mbdpo.trainers.task_dims" in graph["mbdpo.trainers.evaluate"]
    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as e:
        raise AssertionError(f"import circle: {' -> '.join(e.args[1])}") from None
    assert order.index("mbdpo.trainers.task_dims") < order.index("mbdpo.trainers.online")
    # the checker sees a circle when there is one
    graph["mbdpo.config"].add("mbdpo.trainers.online")
    with pytest.raises(graphlib.CycleError):
        list(graphlib.TopologicalSorter(graph).static_order())
