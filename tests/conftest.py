import os

import pytest
import torch
from hydra import compose, initialize_config_dir

from mbdpo.config import parse_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(min(2, torch.get_num_threads()))


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
