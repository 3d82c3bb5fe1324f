"""Datasets in the published TD-MPC2 chunk format, made here from real rollouts (so that the
whole offline pipeline runs without the 100 GB download) or exported from online replay."""
from __future__ import annotations

import os

import numpy as np
from tqdm import tqdm

from mbdpo.config import ConfigError

EPISODES_PER_CHUNK = 20_000


def segments(ep: dict, length: int):
    """Split an episode (obs (T+1, D), action (T, A), reward (T,)) into pieces of ``length``
    steps in the dataset layout: entry 0 holds the first observation and NaN action/reward."""
    T = len(ep["reward"])
    for start in range(0, T - length + 1, length):
        obs = ep["obs"][start:start + length + 1]
        action = np.concatenate([np.full((1, ep["action"].shape[1]), np.nan, np.float32),
                                 ep["action"][start:start + length]])
        reward = np.concatenate([[np.nan], ep["reward"][start:start + length]]).astype(
            np.float32)
        yield obs, action, reward


def write_chunks(out: str, obs, action, reward, task) -> list[str]:
    """Stacked episodes -> chunk_0.pt, chunk_1.pt, ... of at most EPISODES_PER_CHUNK each."""
    from mbdpo.offline import write_chunk
    os.makedirs(out, exist_ok=True)
    paths = []
    for i, s in enumerate(range(0, len(obs), EPISODES_PER_CHUNK)):
        sl = slice(s, s + EPISODES_PER_CHUNK)
        path = os.path.join(out, f"chunk_{i}.pt")
        write_chunk(path, obs[sl], action[sl], reward[sl], task[sl])
        paths.append(path)
    return paths


def make_dataset(cfg) -> list[str]:
    """scripts/make_dataset.py: ``episodes_per_task`` episodes of every task of the set."""
    from mbdpo import checkpoint as ckpt
    from mbdpo.trainers.evaluate import load_agent, run_episodes, task_envs
    from mbdpo.trainers.offline import fill_multitask_dims

    if not cfg.out:
        raise ConfigError("Pass out=DIR, the folder to write the chunk_*.pt files to.")
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


def export_replay(buffer, out: str) -> list[str]:
    """save_replay=true: the online replay's complete episodes as chunks (task id 0; the most
    common episode length, since a chunk holds episodes of one length)."""
    import torch
    size, cap = buffer.size, buffer.capacity
    if size == 0:
        return []
    ep, left = buffer.episode[:size], buffer.steps_left[:size].long()
    pos = torch.arange(size)
    prev = ep[(pos - 1) % cap] if size == cap else torch.cat([torch.tensor([-2]), ep[:-1]])
    starts = pos[ep != prev]
    n = left[starts] + 1
    complete = ep[(starts + n - 1) % cap] == ep[starts]
    L = int(torch.mode(n[complete]).values)
    sel = starts[complete & (n == L)]
    idx = (sel[:, None] + torch.arange(L)) % cap
    task = np.zeros(tuple(idx.shape), np.int32)
    return write_chunks(out, buffer.obs[idx].numpy(), buffer.action[idx].numpy(),
                        buffer.reward[idx].numpy(), task)
