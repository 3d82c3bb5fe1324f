"""scripts/make_dataset.py: a dataset in the published TD-MPC2 chunk format made from real
rollouts (random actions, or a checkpoint's agent), so that the whole offline pipeline runs
without the 100 GB download."""
from __future__ import annotations

import numpy as np
from tqdm import tqdm

from mbdpo import checkpoint as ckpt
from mbdpo.config import ConfigError
from mbdpo.datasets import segments, write_chunks
from mbdpo.trainers.evaluate import load_agent, run_episodes, task_envs
from mbdpo.trainers.base import writable_dir
from mbdpo.trainers.task_dims import fill_multitask_dims


def make_dataset(cfg) -> list[str]:
    """scripts/make_dataset.py: ``episodes_per_task`` episodes of every task of the set."""
    if not cfg.out:
        raise ConfigError("Pass out=DIR, the folder to write the chunk_*.pt files to.")
    if not isinstance(cfg.episodes_per_task, int) or cfg.episodes_per_task < 1:
        raise ConfigError(f"Bad value episodes_per_task={cfg.episodes_per_task!r}: expected a "
                          "positive integer.")
    writable_dir(str(cfg.out), keep=False, what="the dataset folder",
                 key="an out=")  # before the environments run
    if not cfg.multitask:
        raise ConfigError(f"task={cfg.task} is a single task: make_dataset writes task sets "
                          "(task=mt30, task=mt80, ...).")
    ckpt.seed_everything(cfg.seed)
    agent = None
    if cfg.checkpoint:
        state = ckpt.load(cfg.checkpoint)
        saved = state["config"]
        fill_multitask_dims(cfg, saved["obs_dim"], saved["action_dim"])
        agent = load_agent(cfg, cfg.checkpoint, state)
    else:
        obs_dims, act_dims = [], []
        for t in cfg.tasks:
            env = task_envs(_single(cfg), t, 1, cfg.seed)[0]
            obs_dims.append(env.observation_space.shape[0])
            act_dims.append(env.action_space.shape[0])
            env.close()
        fill_multitask_dims(cfg, max(obs_dims), max(act_dims))
    seg = min(cfg.episode_lengths)  # mt80 stores every task in 100-step pieces (101 entries)
    obs, action, reward, task = [], [], [], []
    for idx, name in enumerate(tqdm(cfg.tasks, desc="Collecting", unit="task")):
        envs = task_envs(cfg, name, cfg.episodes_per_task, cfg.seed + 1000 * idx)
        result = run_episodes(agent, envs, task=idx, seed=cfg.seed + 1000 * idx, record=True)
        used = cfg.action_dims[idx]
        for ep in result["episodes"]:
            ep["action"][:, used:] = 0.0  # padded action dimensions are zero in the data
            for o, a, r in segments(ep, seg):
                obs.append(o)
                action.append(a)
                reward.append(r)
                task.append(np.full(len(r), idx, np.int32))
        for env in envs:
            env.close()
    paths = write_chunks(str(cfg.out), np.stack(obs), np.stack(action), np.stack(reward),
                         np.stack(task))
    print(f"Wrote {len(obs)} episodes of {seg + 1} entries ({len(cfg.tasks)} tasks, "
          f"obs {cfg.obs_dim}, action {cfg.action_dim}) to {', '.join(paths)}")
    return paths


def _single(cfg):
    """The config seen by a task's own env (no padding): used to read each task's sizes."""
    from omegaconf import OmegaConf
    c = OmegaConf.create(OmegaConf.to_container(cfg))
    c.multitask = False
    return c
