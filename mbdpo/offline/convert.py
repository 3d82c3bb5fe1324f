"""Conversion of a folder of chunks into the memory-mapped store: every chunk checked, then
copied a bounded slice of episodes at a time; resumable (``progress.json``) and idempotent,
``meta.json`` written last."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import time

import numpy as np
import torch

from mbdpo import faults
from mbdpo.offline.chunks import (DATA_FILES, EPISODE_FILES, FORMAT, FORMAT_VERSION, META,
                                  PROGRESS, REQUIRED_KEYS, DatasetError, _mapped_ranges,
                                  _release, _signature, check_chunk, list_chunks, read_chunk)
def _episode_slices(num_episodes: int, episode_bytes: int, slice_bytes: int):
    step = max(1, slice_bytes // max(1, episode_bytes))
    for e0 in range(0, num_episodes, step):
        yield e0, min(num_episodes, e0 + step)


def _check_tasks(path: str, task: torch.Tensor, num_tasks, slice_bytes: int) -> tuple[int, int]:
    """Task ids constant along each episode and in [0, num_tasks); returns (min, max)."""
    E, L = task.shape
    lo, hi, ranges = None, None, _mapped_ranges(path)
    for e0, e1 in _episode_slices(E, L * task.element_size(), slice_bytes):
        t = task[e0:e1].numpy()
        bad = np.nonzero((t != t[:, :1]).any(axis=1))[0]
        if len(bad):
            raise DatasetError(f"{path}: the task id changes within episode {e0 + bad[0]}; a "
                               "TD-MPC2 chunk has one task per episode, re-download it.")
        lo = int(t[:, 0].min()) if lo is None else min(lo, int(t[:, 0].min()))
        hi = int(t[:, 0].max()) if hi is None else max(hi, int(t[:, 0].max()))
        _release(task[e0:e1], ranges)
    if num_tasks is not None and (lo < 0 or hi >= num_tasks):
        raise DatasetError(f"{path} holds task ids {lo}..{hi}, outside [0, {num_tasks}) for "
                           "this task set: check that data_dir matches task=.")
    if lo < 0 or hi >= 2 ** 16:
        raise DatasetError(f"{path} holds task ids {lo}..{hi}, outside [0, 65536); it is not a "
                           "TD-MPC2 dataset chunk.")
    return lo, hi


# -- page release ------------------------------------------------------------------------------
def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def allocate_store(store_dir: str, num_entries: int, obs_dim: int, action_dim: int,
                   ep_length, task_dtype: str) -> None:
    """Create the (sparse) data files and the per-episode start/length arrays."""
    os.makedirs(store_dir, exist_ok=True)
    shapes = {"obs": ((num_entries, obs_dim), "float32"),
              "action": ((num_entries, action_dim), "float32"),
              "reward": ((num_entries,), "float32"), "terminated": ((num_entries,), "float32"),
              "task": ((num_entries,), task_dtype)}
    for name, (shape, dtype) in shapes.items():
        m = np.lib.format.open_memmap(os.path.join(store_dir, name + ".npy"), mode="w+",
                                      dtype=dtype, shape=shape)
        del m
    ep_length = np.asarray(ep_length, dtype=np.int64)
    ep_start = np.concatenate([[0], np.cumsum(ep_length)[:-1]]).astype(np.int64)
    np.save(os.path.join(store_dir, "ep_start.npy"), ep_start)
    np.save(os.path.join(store_dir, "ep_length.npy"), ep_length)
    np.save(os.path.join(store_dir, "ep_task.npy"), np.zeros(len(ep_length), dtype=task_dtype))


class _RowWriter:
    """Writes rows into the .npy files with pwrite (no mapping: RSS stays at one slice)."""

    def __init__(self, store_dir: str, names):
        self.files = {}
        for name in names:
            path = os.path.join(store_dir, name + ".npy")
            m = np.load(path, mmap_mode="r")
            row = m.dtype.itemsize * int(np.prod(m.shape[1:], dtype=np.int64))
            self.files[name] = (os.open(path, os.O_WRONLY), int(m.offset), row, m.dtype)
            del m

    def write(self, name: str, first_row: int, arr: np.ndarray) -> None:
        fd, offset, row, dtype = self.files[name]
        buf = memoryview(np.ascontiguousarray(arr, dtype=dtype)).cast("B")
        pos = offset + first_row * row
        while len(buf):
            n = os.pwrite(fd, buf, pos)
            buf, pos = buf[n:], pos + n

    def close(self, sync: bool = True) -> None:
        for fd, *_ in self.files.values():
            if sync:
                os.fsync(fd)
            os.close(fd)
        self.files = {}


SANE = 1e6  # no observation, action or reward of the supported suites comes near it


def _nonfinite(path, key, arr, e0, skip_first: bool):
    """Refuse NaN, inf and values beyond +-SANE (after the NaN placeholders of entry 0)."""
    a = arr[:, 1:] if skip_first else arr
    with np.errstate(invalid="ignore"):
        ok = (np.abs(a) <= SANE).reshape(len(a), -1).all(axis=1)
    if not ok.all():
        ep = e0 + int(np.argmin(ok))
        where = "after entry 0 " if skip_first else ""
        raise DatasetError(f"{path}: {key} holds NaN, inf or values beyond +-{SANE:g} {where}in "
                           f"episode {ep}; the file is corrupt, re-download it.")


def _convert_chunk(path: str, info: dict, plan: dict, store_dir: str, num_ep_tasks: int,
                   slice_bytes: int, check_values: bool, bar) -> dict:
    """Copy one chunk's rows into the store; returns its per-task statistics."""
    data = read_chunk(path)
    ranges = _mapped_ranges(path)
    E, L, A = info["episodes"], info["length"], plan["action_dim"]
    row0, ep0 = info["first_row"], info["first_episode"]
    writer = _RowWriter(store_dir, DATA_FILES + ("ep_task",))
    adims = np.full(num_ep_tasks, -1, dtype=np.int64)
    counts = np.zeros(num_ep_tasks, dtype=np.int64)
    try:
        row_bytes = 4 * (plan["obs_dim"] + A + 3)
        for e0, e1 in _episode_slices(E, L * row_bytes, slice_bytes):
            n, r = (e1 - e0) * L, row0 + e0 * L
            views = {k: data[k][e0:e1] for k in REQUIRED_KEYS}
            obs = views["obs"].numpy().astype(np.float32, copy=False)
            act = views["action"].numpy().astype(np.float32, copy=False)
            rew = views["reward"].numpy().astype(np.float32, copy=False)
            task = views["task"].numpy()
            if check_values:
                _nonfinite(path, "obs", obs, e0, False)
                _nonfinite(path, "action", act, e0, True)
                _nonfinite(path, "reward", rew, e0, True)
            faults.reach("convert-slice")
            writer.write("obs", r, obs.reshape(n, -1))
            writer.write("action", r, act.reshape(n, A))
            writer.write("reward", r, rew.reshape(n))
            if info["terminated"]:
                views["terminated"] = data["terminated"][e0:e1]
                term = views["terminated"].numpy().astype(np.float32)
                term[:, 0] = np.nan_to_num(term[:, 0])
                writer.write("terminated", r, term.reshape(n))
            else:
                writer.write("terminated", r, np.zeros(n, dtype=np.float32))
            writer.write("task", r, task.reshape(n))
            ep_task = task[:, 0].astype(np.int64)
            writer.write("ep_task", ep0 + e0, ep_task)
            # action dims in use: the last non-zero dim of any action after entry 0, per task
            nz = np.nan_to_num(act[:, 1:]).any(axis=1) if L > 1 else np.zeros((e1 - e0, A), bool)
            last = np.where(nz.any(axis=1), A - np.argmax(nz[:, ::-1], axis=1), 0)
            np.maximum.at(adims, ep_task, last)
            np.add.at(counts, ep_task, 1)
            for v in views.values():
                _release(v, ranges)
            if bar is not None:
                bar.update(n)
    finally:
        writer.close(sync=True)
    return {"task_action_dims": adims.tolist(), "episodes_per_task": counts.tolist()}


def _store_complete(store_dir: str, sigs: list | None = None):
    meta = _read_json(os.path.join(store_dir, META))
    if not meta or meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        return None
    if sigs is not None and [{k: c[k] for k in ("name", "size", "mtime_ns")}
                             for c in meta["chunks"]] != sigs:
        return None
    names = DATA_FILES + EPISODE_FILES
    if not all(os.path.isfile(os.path.join(store_dir, n + ".npy")) for n in names):
        return None
    return meta


def prepare_store(data_dir: str, store_dir: str | None = None, progress: bool = True,
                  num_tasks: int | None = None, check_values: bool = True,
                  slice_mb: int = 256) -> str:
    """Convert the chunk_*.pt files of data_dir into a memory-mapped store; returns its folder.

    Every chunk is checked first (keys, dtypes, shapes, task ids, in [0, num_tasks) when
    given), so a bad file stops everything before any conversion. A conversion that was
    interrupted resumes at the first chunk not recorded in progress.json; a complete store
    that matches the chunks (names, sizes, mtimes) is returned at once.
    """
    data_dir = os.fspath(data_dir)
    store_dir = os.fspath(store_dir) if store_dir else os.path.join(data_dir, "store")
    paths = list_chunks(data_dir)
    sigs = [_signature(p) for p in paths]
    if _store_complete(store_dir, sigs) is not None:
        return store_dir
    from tqdm import tqdm
    slice_bytes = max(1, int(slice_mb * 2 ** 20))

    # 1. check every chunk before converting anything
    prog = _read_json(os.path.join(store_dir, PROGRESS))
    infos = []
    with tqdm(paths, desc="Checking chunks", unit="chunk", leave=False,
              disable=not progress) as checking:
        for p in checking:
            data = read_chunk(p)
            info = check_chunk(p, data)
            if infos and (info["obs_dim"], info["action_dim"]) != (infos[0]["obs_dim"],
                                                                   infos[0]["action_dim"]):
                raise DatasetError(
                    f"{p} has obs_dim {info['obs_dim']} and action_dim {info['action_dim']} but "
                    f"{paths[0]} has {infos[0]['obs_dim']} and {infos[0]['action_dim']}: the "
                    "chunks of one folder must come from one dataset.")
            info["task_range"] = list(_check_tasks(p, data["task"], num_tasks, slice_bytes))
            infos.append(info)
            del data
    first_row = first_ep = 0
    for sig, info in zip(sigs, infos):
        info.update(sig, first_row=first_row, first_episode=first_ep)
        first_row += info["episodes"] * info["length"]
        first_ep += info["episodes"]
    max_task = max(i["task_range"][1] for i in infos)
    plan = {"format_version": FORMAT_VERSION, "obs_dim": infos[0]["obs_dim"],
            "action_dim": infos[0]["action_dim"], "num_entries": first_row,
            "num_episodes": first_ep, "task_dtype": "int16" if max_task < 2 ** 15 else "int32",
            "max_task_id": max_task, "chunks": infos}
    plan = json.loads(json.dumps(plan))  # as progress.json holds it

    # 2. allocate (or resume)
    files = [os.path.join(store_dir, n + ".npy") for n in DATA_FILES + EPISODE_FILES]
    if prog and prog.get("plan") == plan and all(os.path.isfile(f) for f in files):
        done = prog.get("done", {})
    else:
        for name in (META, PROGRESS):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(store_dir, name))
        os.makedirs(store_dir, exist_ok=True)
        need = first_row * 4 * (plan["obs_dim"] + plan["action_dim"] + 3) + first_ep * 24
        free = shutil.disk_usage(store_dir).free
        if need > free:
            raise DatasetError(f"The store needs {need / 2 ** 30:.1f} GB but {store_dir} has "
                               f"{free / 2 ** 30:.1f} GB free: free space or pass "
                               "+store_dir=<folder on a larger disk>.")
        ep_length = np.concatenate([np.full(i["episodes"], i["length"]) for i in infos])
        allocate_store(store_dir, first_row, plan["obs_dim"], plan["action_dim"], ep_length,
                       plan["task_dtype"])
        done = {}
        _write_json(os.path.join(store_dir, PROGRESS),
                    {"plan": plan, "done": done, "data_dir": os.path.abspath(data_dir)})

    # 3. convert chunk by chunk, recording each one done
    todo = [(p, i) for p, i in zip(paths, infos) if i["name"] not in done]
    bar = tqdm(total=sum(i["episodes"] * i["length"] for _, i in todo), desc="Converting",
               unit="entries", unit_scale=True, disable=not progress)
    try:
        for p, info in todo:
            bar.set_postfix_str(info["name"])
            done[info["name"]] = _convert_chunk(p, info, plan, store_dir, max_task + 1,
                                                slice_bytes, check_values, bar)
            _write_json(os.path.join(store_dir, PROGRESS),
                        {"plan": plan, "done": done, "data_dir": os.path.abspath(data_dir)})
    finally:
        bar.close()

    # 4. meta.json last: only now is the store complete
    adims = np.full(max_task + 1, -1, dtype=np.int64)
    counts = np.zeros(max_task + 1, dtype=np.int64)
    for stats in done.values():
        adims = np.maximum(adims, stats["task_action_dims"])
        counts += np.asarray(stats["episodes_per_task"], dtype=np.int64)
    seen = np.nonzero(counts)[0]
    entries = first_row
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "obs_dim": plan["obs_dim"],
            "action_dim": plan["action_dim"], "num_entries": entries, "num_episodes": first_ep,
            "num_transitions": entries - first_ep, "task_dtype": plan["task_dtype"],
            "num_tasks_seen": int(len(seen)), "task_ids": seen.tolist(),
            "episodes_per_task": counts.tolist(),
            "task_action_dims": [int(a) if c else None for a, c in zip(adims, counts)],
            "has_terminated": any(i["terminated"] for i in infos),
            "data_dir": os.path.abspath(data_dir),
            "chunks": [{k: i[k] for k in ("name", "size", "mtime_ns", "episodes", "length",
                                          "first_row", "first_episode")} for i in infos],
            "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    _write_json(os.path.join(store_dir, META), meta)
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(store_dir, PROGRESS))
    return store_dir
