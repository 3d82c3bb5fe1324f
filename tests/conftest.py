import csv
import hashlib
import os
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir

from mbdpo.config import parse_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# two pytest-xdist workers share the CI's 2 cores: one torch thread each (two threads each
# would oversubscribe them, many times slower)
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER")
                      else min(2, torch.get_num_threads()))


def make_cfg(*overrides, obs_dim=5, action_dim=1, parse=True):
    """A parsed config for tests, with the environment sizes filled in by hand."""
    with initialize_config_dir(config_dir=os.path.join(ROOT, "cfgs"), version_base=None):
        cfg = compose(config_name="config", overrides=list(overrides))
    if not parse:
        return cfg
    cfg = parse_cfg(cfg)
    cfg.obs_shape = [obs_dim]
    cfg.obs_dim = obs_dim
    cfg.action_dim = action_dim
    cfg.action_dims = [action_dim]
    cfg.num_tasks = len(cfg.tasks)
    return cfg


@pytest.fixture
def small_cfg():
    return make_cfg("task=cartpole-balance", "model_size=1", "diffusion_num_samples=64",
                    "diffusion_steps=5", "batch_size=32", "diffusion_num_elites=8",
                    "diffusion_num_pi_trajs=8")


# a network and planner small enough for end-to-end runs in seconds
TINY = ["model_size=1", "diffusion_num_samples=32", "diffusion_num_elites=8",
        "diffusion_num_pi_trajs=4", "diffusion_steps=4", "batch_size=32", "mlp_dim=64",
        "enc_dim=64", "latent_dim=32", "eval_episodes=2", "log_freq=250", "threads=1"]


def cli(script, *args, timeout=900, check=True, env=None, cwd=ROOT):
    """Run scripts/<script> with ``args`` in a fresh process (in ``cwd``); fail with its
    output unless it exits 0 (with ``check``)."""
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", MUJOCO_GL="egl",
               PYTHONUNBUFFERED="1", **(env or {}))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", script), *args],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def digests(folder) -> dict:
    """{path relative to ``folder``: sha256} of every file under it."""
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                out[os.path.relpath(os.path.join(root, f), folder)] = \
                    hashlib.sha256(fh.read()).hexdigest()
    return out


def assert_picture(path, width, height):
    """A PNG of ``width`` x ``height`` pixels that is not blank."""
    import numpy as np
    from matplotlib.image import imread
    assert os.path.getsize(path) > 5000
    img = imread(path)
    assert img.shape[:2] == (height, width)
    # not blank: many colours, and more than 3% of the pixels not white (an empty figure: 0)
    flat = img[..., :3].reshape(-1, 3)
    assert len(np.unique((flat * 255).astype(np.uint8), axis=0)) > 50
    assert (flat.min(axis=1) < 0.95).mean() > 0.03


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="session")
def mt30_data(tmp_path_factory):
    """An mt30 dataset in the published format: one random episode per task."""
    out = str(tmp_path_factory.mktemp("mt30"))
    cli("make_dataset.py", "task=mt30", "episodes_per_task=1", f"out={out}", "threads=1")
    return out
