"""Datasets in the published TD-MPC2 chunk format: episodes cut into the dataset's pieces,
written as chunks, or exported from online replay. The rollouts that make a dataset here are
in ``mbdpo.trainers.collect`` (this module imports nothing of the trainers)."""
from __future__ import annotations

import os

import numpy as np

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
