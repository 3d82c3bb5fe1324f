"""The TD-MPC2 offline datasets (mt30, mt80): safe chunk reading, a memory-mapped store, sampling.

A chunk (``chunk_<i>.pt``, ALGORITHM.md §6) is a ``torch.save``d TensorDict with batch shape
``[episodes, L]`` and keys ``obs`` [E, L, obs_dim], ``action`` [E, L, A] (both float32 and
zero-padded), ``reward`` [E, L], ``task`` [E, L] (an integer constant along an episode) and
optionally ``terminated`` [E, L]. Entry 0 of an episode holds the first observation only: its
action and reward are NaN, so a transition t uses obs[t], action[t+1], reward[t+1], obs[t+1].

* :func:`read_chunk` unpickles a chunk with ``weights_only=True`` and an allow-list of a few
  harmless stand-ins for the TensorDict classes the pickle names (:data:`ALLOWED_GLOBALS`):
  no tensordict code and no other object is ever run from a file, and the tensors stay
  memory-mapped (a 13 GB chunk is never read whole into RAM).
* :func:`prepare_store` checks every chunk, then converts them, chunk by chunk and a bounded
  slice of episodes at a time, into a folder of ``.npy`` files read through ``np.memmap``. The
  conversion is resumable (``progress.json`` lists the chunks done) and idempotent;
  ``meta.json`` is written last, and only a folder with it counts as a complete store.
* :class:`OfflineStore` samples sub-trajectories of H+1 entries, uniformly over every start
  that stays inside an episode, in the layout of :meth:`mbdpo.replay.EpisodeReplay.sample`,
  in time that grows only with the log of the number of episodes.

Store files (``<data_dir>/store`` by default): ``obs.npy`` (N, obs_dim) float32,
``action.npy`` (N, A) float32, ``reward.npy`` (N,) float32, ``terminated.npy`` (N,) float32,
``task.npy`` (N,) int16/int32: the chunks' rows as they are, episodes one after another; and
``ep_start.npy``, ``ep_length.npy`` (int64), ``ep_task.npy`` per episode.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import mmap
import os
import pickle
import re
import shutil
import sys
import threading
import time

import numpy as np
import torch

FORMAT = "mbdpo-offline-store"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("obs", "action", "reward", "task")
DATA_FILES = ("obs", "action", "reward", "terminated", "task")
EPISODE_FILES = ("ep_start", "ep_length", "ep_task")
META, PROGRESS = "meta.json", "progress.json"
CHUNK_RE = re.compile(r"^chunk_(\d+)\.pt$")
PREPARE_HINT = "run python scripts/prepare_dataset.py data_dir=<folder with the chunk_*.pt files>"


class DatasetError(ValueError):
    """An offline dataset or store cannot be used; the message names the file and what to do."""


# -- safe reading ------------------------------------------------------------------------------
class _TensorDictStub:
    """Stands in for tensordict's ``TensorDict`` while unpickling: it keeps the entries and the
    batch size of the state and nothing else, and runs no tensordict code."""

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"TensorDict state of type {type(state).__name__}")
        self.entries = dict(state.get("_tensordict") or {})
        self.batch_size = state.get("_batch_size")


def _make_td(cls, state):
    """Stand-in for ``tensordict._reductions._make_td`` (tensordict >= 0.5 pickles)."""
    if cls is not _TensorDictStub:
        raise pickle.UnpicklingError(f"GLOBAL {getattr(cls, '__module__', '?')}."
                                     f"{getattr(cls, '__qualname__', cls)}")
    td = _TensorDictStub()
    td.__setstate__(state)
    return td


_DTYPES = {f"torch.{n}": getattr(torch, n) for n in (
    "float16", "bfloat16", "float32", "float64", "uint8", "int8", "int16", "int32", "int64",
    "bool")}


def _rebuild_consolidated(metadata, storage):
    """Stand-in for ``tensordict._reductions._rebuild_tensordict_files_consolidated``
    (a TensorDict saved after ``consolidate()``): views of the one byte storage."""
    def build(meta):
        meta = dict(meta)
        if meta.pop("cls", None) != "TensorDict" or meta.pop("non_tensors", None):
            raise pickle.UnpicklingError("GLOBAL a consolidated non-TensorDict or non-tensor data")
        cls_meta = meta.pop("cls_metadata", {}) or {}
        meta.pop("size", None)
        td = _TensorDictStub()
        td.entries, td.batch_size = {}, cls_meta.get("batch_size")
        for key, leaf in (meta.pop("leaves", {}) or {}).items():
            dtype, shape, start, stop, pad = leaf[:5]
            if dtype not in _DTYPES or not isinstance(storage, torch.Tensor):
                raise pickle.UnpicklingError(f"GLOBAL {dtype}")
            value = storage[start:stop].view(_DTYPES[dtype])
            shape = torch.Size(shape)
            td.entries[key] = (value[:shape.numel()] if pad else value).view(shape)
        for key, sub in meta.items():
            td.entries[key] = build(sub)
        return td
    return build(metadata)


class _Ignored:
    """Stand-in for tensordict's ``_LockedSchema`` (a locked TensorDict's key cache)."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)


# The only names a chunk's pickle may use beyond torch's own weights_only list (tensors,
# storages, torch.Size, torch.device, OrderedDict): each maps to a stand-in above.
ALLOWED_GLOBALS = [
    (_make_td, "tensordict._reductions._make_td"),                  # tensordict >= 0.5
    (_TensorDictStub, "tensordict._td.TensorDict"),                  # tensordict >= 0.3
    (_TensorDictStub, "tensordict.tensordict.TensorDict"),           # tensordict < 0.3
    (dict, "tensordict.utils._StringOnlyDict"),                      # tensordict <= 0.4
    (_Ignored, "tensordict.utils._LockedSchema"),                    # a locked TensorDict
    (_rebuild_consolidated, "tensordict._reductions._rebuild_tensordict_files_consolidated"),
]
_LOAD_LOCK = threading.Lock()


@contextlib.contextmanager
def _only_allowed_globals():
    """Exactly ALLOWED_GLOBALS while loading: importing tensordict registers its own classes
    process-wide, and those must neither run on a chunk nor shadow the stand-ins."""
    saved = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    try:
        with torch.serialization.safe_globals(ALLOWED_GLOBALS):
            yield
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(saved)


_REFUSED = re.compile(r"GLOBAL (\S+)|unrecognized function (\S+)|but got (<[^>]+>)")


def _to_dict(obj):
    if isinstance(obj, _TensorDictStub):
        return {k: _to_dict(v) for k, v in obj.entries.items()}
    if isinstance(obj, dict):
        return {k: _to_dict(v) for k, v in obj.items()}
    return obj


def read_chunk(path: str) -> dict:
    """Load a chunk (a TensorDict or a plain dict of tensors) as a dict of memory-mapped
    tensors; anything but tensors in the file, or a damaged file, is one clear sentence."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DatasetError(f"Dataset chunk {path} does not exist.")
    try:
        with _LOAD_LOCK, _only_allowed_globals():
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        found = _REFUSED.search(str(err))
        if found:  # a global, a call or a class outside the allow-list: nothing was run
            what = next(g for g in found.groups() if g).rstrip(".")
            raise DatasetError(f"{path} contains objects other than tensors ({what}); it is "
                               "not a TD-MPC2 dataset chunk.") from None
        raise _damaged(path, err) from None
    except Exception as err:  # truncated zip, bad header, short read, ...
        if "mmap can only be used" in str(err):
            raise DatasetError(f"{path} is not in torch's zip format, so it cannot be "
                               "memory-mapped: it is damaged or not a TD-MPC2 dataset chunk, "
                               "re-download it.") from None
        raise _damaged(path, err) from None
    if isinstance(obj, (_TensorDictStub, dict)):
        out = _to_dict(obj)
        if all(isinstance(k, str) for k in out):
            return out
    raise DatasetError(f"{path} contains objects other than tensors ({type(obj).__name__}); "
                       "it is not a TD-MPC2 dataset chunk.")


def _damaged(path, err) -> DatasetError:
    text = str(err).strip()
    first = text.splitlines()[0].split(". ")[0].rstrip(".")[:120] if text else type(err).__name__
    return DatasetError(f"Could not read {path} ({first}): the file is truncated or corrupt, "
                        "re-download it.")


def write_chunk(path, obs, action, reward, task, terminated=None) -> None:
    """Write a chunk in the published format: a TensorDict [E, L] saved with ``torch.save``,
    written to a temporary file and renamed. ``obs`` [E, L, obs_dim] and ``action`` [E, L, A]
    are zero-padded by the caller; entry 0 of ``action`` and ``reward`` is set to NaN;
    ``task`` is [E] or [E, L]."""
    from tensordict import TensorDict

    from mbdpo.checkpoint import atomic_save
    obs = torch.as_tensor(np.asarray(obs), dtype=torch.float32).contiguous()
    action = torch.as_tensor(np.asarray(action), dtype=torch.float32).clone()
    reward = torch.as_tensor(np.asarray(reward), dtype=torch.float32).clone()
    if obs.ndim != 3 or action.ndim != 3 or reward.ndim != 2:
        raise ValueError("write_chunk expects obs [E, L, obs_dim], action [E, L, A], "
                         "reward [E, L].")
    E, L = obs.shape[:2]
    task = torch.as_tensor(np.asarray(task)).to(torch.int32)
    task = (task[:, None].expand(E, L) if task.ndim == 1 else task).contiguous()
    if action.shape[:2] != (E, L) or reward.shape != (E, L) or task.shape != (E, L):
        raise ValueError(f"write_chunk: every key must have batch shape [{E}, {L}].")
    action[:, 0], reward[:, 0] = float("nan"), float("nan")
    data = {"obs": obs, "action": action, "reward": reward, "task": task}
    if terminated is not None:
        data["terminated"] = torch.as_tensor(np.asarray(terminated),
                                             dtype=torch.float32).contiguous()
    atomic_save(TensorDict(data, batch_size=[E, L]), os.fspath(path))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)  # a data file, not a private temporary


# -- validation --------------------------------------------------------------------------------
def list_chunks(data_dir: str) -> list[str]:
    """The ``chunk_<i>.pt`` files of data_dir, in numeric order."""
    if not os.path.isdir(data_dir):
        raise DatasetError(f"The dataset folder {data_dir} does not exist: download the chunk_*.pt "
                           "files there first (see offline_dataset/README.md).")
    names = [n for n in os.listdir(data_dir) if CHUNK_RE.match(n)]
    if not names:
        raise DatasetError(f"{data_dir} holds no chunk_*.pt files: download the dataset there "
                           "first (see offline_dataset/README.md).")
    return [os.path.join(data_dir, n)
            for n in sorted(names, key=lambda n: int(CHUNK_RE.match(n).group(1)))]


def _signature(path: str) -> dict:
    st = os.stat(path)
    return {"name": os.path.basename(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _describe(t) -> str:
    return (f"{str(t.dtype).replace('torch.', '')} {list(t.shape)}" if isinstance(t, torch.Tensor)
            else type(t).__name__)


def check_chunk(path: str, data: dict) -> dict:
    """Keys, dtypes and shapes of one chunk; returns its episodes, length and dims."""
    for key in REQUIRED_KEYS:
        if key not in data:
            raise DatasetError(f"{path} has no '{key}' entry (it has {sorted(data)}); it is not a "
                               "TD-MPC2 dataset chunk.")
    keys = REQUIRED_KEYS + (("terminated",) if "terminated" in data else ())
    for key in keys:
        if not isinstance(data[key], torch.Tensor):
            raise DatasetError(f"{path}: '{key}' is a {_describe(data[key])}, not a tensor; it is "
                               "not a TD-MPC2 dataset chunk.")
    obs, action, reward, task = (data[k] for k in REQUIRED_KEYS)
    if obs.ndim != 3 or obs.shape[0] == 0 or obs.shape[1] == 0:
        raise DatasetError(f"{path}: obs is {_describe(obs)}, expected [episodes, L, obs_dim] "
                           "(image datasets are not supported).")
    E, L = obs.shape[:2]
    want = {"action": 3, "reward": 2, "task": 2, "terminated": 2}
    for key in keys[1:]:
        t = data[key]
        if t.ndim != want[key] or tuple(t.shape[:2]) != (E, L):
            raise DatasetError(f"{path}: {key} is {_describe(t)} but obs is {_describe(obs)}; "
                               f"every entry must have batch shape [{E}, {L}].")
    for key in ("obs", "action", "reward"):
        if not data[key].is_floating_point():
            raise DatasetError(f"{path}: {key} is {_describe(data[key])}, expected float32.")
    if task.is_floating_point() or task.is_complex() or task.dtype == torch.bool:
        raise DatasetError(f"{path}: task is {_describe(task)}, expected an integer task index.")
    return {"episodes": int(E), "length": int(L), "obs_dim": int(obs.shape[2]),
            "action_dim": int(action.shape[2]), "terminated": "terminated" in keys}


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
_PAGE = mmap.PAGESIZE
try:
    _libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
    _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
except (OSError, AttributeError):
    _libc = None


def _mapped_ranges(path: str) -> list[tuple[int, int]]:
    """Address ranges where this process maps the file ``path`` (Linux; else none)."""
    real, out = os.path.realpath(path), []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(None, 5)
                if len(parts) == 6 and parts[5].rstrip("\n") == real:
                    lo, hi = parts[0].split("-")
                    out.append((int(lo, 16), int(hi, 16)))
    except OSError:
        pass
    return out


def _release(t: torch.Tensor, ranges) -> None:
    """Drop the pages of a slice of a memory-mapped chunk from this process's mapping, so
    that converting a 13 GB chunk keeps RSS at one slice; the data stay in the file and the
    page cache. Only whole pages that lie inside a mapping of the chunk file (``ranges``,
    from :func:`_mapped_ranges`) are dropped: never memory the process wrote."""
    if _libc is None or t.numel() == 0 or any(st < 0 for st in t.stride()):
        return
    start = t.data_ptr()
    end = start + (1 + sum((n - 1) * st for n, st in zip(t.shape, t.stride()))) * t.element_size()
    lo, hi = -(-start // _PAGE) * _PAGE, end // _PAGE * _PAGE  # whole pages inside the slice
    if hi > lo and any(a <= lo and hi <= b for a, b in ranges):
        _libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo),
                      getattr(mmap, "MADV_DONTNEED", 4))


# -- the store ---------------------------------------------------------------------------------
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


def _nonfinite(path, key, arr, e0, skip_first: bool):
    a = arr[:, 1:] if skip_first else arr
    ok = np.isfinite(a).reshape(len(a), -1).all(axis=1)
    if not ok.all():
        ep = e0 + int(np.argmin(ok))
        where = "after entry 0 " if skip_first else ""
        raise DatasetError(f"{path}: {key} holds NaN or inf {where}in episode {ep}; the file is "
                           "corrupt, re-download it.")


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


class OfflineStore:
    """Sub-trajectories sampled from a store made by :func:`prepare_store`.

    ``sample(B, H)`` returns obs (H+1, B, obs_dim), action/reward/terminated (H, B, ...) and
    task (B,) int64 tensors, like :meth:`EpisodeReplay.sample`: a start s in an episode of L
    entries is valid when s + H < L, and every valid start of the store is equally likely.
    Drawing the starts costs a binary search over the runs of equal-length episodes.

    The data stay on disk; only small per-episode arrays are held in RAM. Two ways to read:

    * ``"mmap"``: numpy fancy indexing of memory maps, the fastest while the mapped pages stay
      in the process; to keep RSS bounded they are handed back to the OS after about
      ``release_mb`` of pages read (unless the whole store is smaller than that).
    * ``"pread"``: one ``preadv`` per array and sub-trajectory into fresh buffers: a constant
      cost per sample, and nothing mapped, so RSS does not grow with the store.

    ``"pread"`` is the default: its cost per batch does not depend on the size of the store
    (measured 0.95 ms at 1M and 1.22 ms at 550M transitions, batch 256), while mmap is faster
    on a store that stays mapped (0.32 ms at 1M) and slower as the store grows (1.50 ms at
    550M). ``"auto"`` maps stores smaller than ``release_mb`` and preads larger ones.
    ``threads`` > 1 reads parts of a batch at once, which overlaps disk reads when the store
    is not in the page cache (larger than RAM, or cold).
    """

    def __init__(self, store_dir: str, seed: int = 0, backend: str = "pread",
                 threads: int = 1, release_mb: int = 512, sort_indices: bool = False):
        store_dir = os.fspath(store_dir)
        if (not os.path.isfile(os.path.join(store_dir, META))
                and os.path.isfile(os.path.join(store_dir, "store", META))):
            store_dir = os.path.join(store_dir, "store")  # the data_dir was given
        meta = _store_complete(store_dir)
        if meta is None:
            prog = _read_json(os.path.join(store_dir, PROGRESS))
            hint = (f"run python scripts/prepare_dataset.py data_dir={prog['data_dir']}"
                    if prog and prog.get("data_dir") else PREPARE_HINT)
            state = ("is incomplete (its conversion was interrupted)" if prog
                     else "holds no complete offline store" if os.path.isdir(store_dir)
                     else "does not exist")
            raise DatasetError(f"{store_dir} {state}: {hint}.")
        if backend not in ("auto", "mmap", "pread"):
            raise ValueError(f"backend must be auto, mmap or pread, not {backend!r}")
        self.store_dir, self.meta = store_dir, meta
        self.obs_dim, self.action_dim = meta["obs_dim"], meta["action_dim"]
        self.num_entries, self.num_episodes = meta["num_entries"], meta["num_episodes"]
        self.num_transitions = meta["num_transitions"]
        self.num_tasks_seen, self.task_ids = meta["num_tasks_seen"], meta["task_ids"]
        self.task_action_dims = meta.get("task_action_dims")
        self.has_terminated = bool(meta.get("has_terminated", True))
        shapes = {"obs": (self.num_entries, self.obs_dim),
                  "action": (self.num_entries, self.action_dim), "reward": (self.num_entries,),
                  "terminated": (self.num_entries,), "task": (self.num_entries,),
                  "ep_start": (self.num_episodes,), "ep_length": (self.num_episodes,),
                  "ep_task": (self.num_episodes,)}
        arrays = {}
        for name, shape in shapes.items():
            path = os.path.join(store_dir, name + ".npy")
            try:
                arrays[name] = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as err:
                raise DatasetError(f"Could not open {path} ({str(err)[:120]}): the store is "
                                   f"damaged, delete {store_dir} and {PREPARE_HINT}.") from None
            if arrays[name].shape != shape:
                raise DatasetError(f"{path} has shape {arrays[name].shape}, expected {shape}: "
                                   f"the store is damaged, delete {store_dir} and "
                                   f"{PREPARE_HINT}.")
        # the arrays a sample reads (terminated only where the chunks had it: else all zeros)
        self._read = ("obs", "action", "reward") + (("terminated",) if self.has_terminated
                                                    else ())
        self._data = {k: arrays[k] for k in self._read}
        del arrays["task"], arrays["terminated"]
        # small per-episode arrays, in RAM (5.5M episodes for mt80: ~130 MB)
        self.ep_start = np.array(arrays["ep_start"], dtype=np.int64)
        self.ep_length = np.array(arrays["ep_length"], dtype=np.int64)
        self.ep_task = np.array(arrays["ep_task"], dtype=np.int64)
        self.rng = np.random.default_rng(seed)
        self.sort_indices, self.threads, self._pool = sort_indices, max(1, int(threads)), None
        self._cum: dict[int, tuple] = {}
        self._release_bytes, self._read_bytes = int(release_mb * 2 ** 20), 0
        self._fits = sum(m.nbytes for m in self._data.values()) <= self._release_bytes
        self.backend = backend if backend != "auto" else ("mmap" if self._fits else "pread")
        self._fds = {}
        if self.backend == "mmap":
            for m in self._data.values():
                if getattr(m, "_mmap", None) is not None and hasattr(mmap, "MADV_RANDOM"):
                    m._mmap.madvise(mmap.MADV_RANDOM)  # no read-ahead: samples are scattered
        else:
            for name, m in self._data.items():
                fd = os.open(os.path.join(store_dir, name + ".npy"), os.O_RDONLY)
                if hasattr(os, "posix_fadvise"):
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
                row = m.dtype.itemsize * int(np.prod(m.shape[1:], dtype=np.int64))
                self._fds[name] = (fd, int(m.offset), row, m.shape[1:], m.dtype)
            self._data = {}  # nothing mapped

    # -- where to read ---------------------------------------------------------------------
    def _runs(self, horizon: int):
        """Runs of consecutive episodes of one length (one per chunk in the TD-MPC2 sets):
        first episode, first row, length, valid starts per episode, cumulative valid starts.
        Cached per horizon."""
        if horizon not in self._cum:
            L = self.ep_length
            first = np.flatnonzero(np.r_[True, L[1:] != L[:-1]])
            n = np.diff(np.r_[first, len(L)])
            valid = np.maximum(L[first] - horizon, 0)
            self._cum[horizon] = (first, self.ep_start[first], L[first], valid,
                                  np.cumsum(n * valid))
        return self._cum[horizon]

    def sample_starts(self, batch_size: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
        """(B,) start rows and (B,) episode ids, uniform over all valid starts: a binary
        search over the runs of equal-length episodes, then a division."""
        first, row0, length, valid, cum = self._runs(horizon)
        total = int(cum[-1]) if len(cum) else 0
        if total == 0:
            raise DatasetError(f"The store {self.store_dir} holds no sub-trajectory of "
                               f"{horizon + 1} entries: lower horizon.")
        u = self.rng.integers(0, total, size=batch_size)
        r = np.searchsorted(cum, u, side="right")
        local = u - np.where(r > 0, cum[r - 1], 0)
        k, offset = np.divmod(local, valid[r])
        return row0[r] + k * length[r] + offset, first[r] + k

    # -- reading ---------------------------------------------------------------------------
    def _mmap_gather(self, name: str, idx: np.ndarray) -> np.ndarray:
        arr = self._data[name]
        if not self.sort_indices:
            return arr[idx]
        flat = idx.ravel()
        order = np.argsort(flat, kind="stable")
        out = np.empty((flat.size,) + arr.shape[1:], dtype=arr.dtype)
        out[order] = arr[flat[order]]
        return out.reshape(idx.shape + arr.shape[1:])

    def _pread_gather(self, name: str, starts: np.ndarray, n: int) -> np.ndarray:
        fd, offset, row, shape, dtype = self._fds[name]
        buf = np.empty((len(starts), n) + tuple(shape), dtype=dtype)
        view, size = memoryview(buf).cast("B"), n * row
        offsets = (offset + starts * row).tolist()
        order = np.argsort(starts).tolist() if self.sort_indices else range(len(starts))
        pread = os.preadv
        for b in order:
            if pread(fd, [view[b * size:(b + 1) * size]], offsets[b]) != size:
                raise DatasetError(f"{self.store_dir}/{name}.npy is shorter than its header "
                                   f"says: the store is damaged, delete it and {PREPARE_HINT}.")
        return np.ascontiguousarray(buf.swapaxes(0, 1))

    def _gather_part(self, starts: np.ndarray, horizon: int) -> dict:
        """obs at rows s..s+H, action/reward/terminated at rows s+1..s+H, as (n, b, ...)."""
        if self.backend == "mmap":
            idx = starts[None, :] + np.arange(horizon + 1)[:, None]
            return {k: self._mmap_gather(k, idx if k == "obs" else idx[1:]) for k in self._read}
        return {k: self._pread_gather(k, starts if k == "obs" else starts + 1,
                                      horizon + (k == "obs")) for k in self._read}

    def sample(self, batch_size: int, horizon: int) -> dict:
        starts, ep = self.sample_starts(batch_size, horizon)
        if self.threads > 1 and batch_size >= 2 * self.threads:
            # several parts at once: their page faults or reads overlap (numpy indexing and
            # preadv release the GIL)
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="offline")
            parts = list(self._pool.map(lambda s: self._gather_part(s, horizon),
                                        np.array_split(starts, self.threads)))
            out = {k: np.concatenate([p[k] for p in parts], axis=1) for k in parts[0]}
        else:
            out = self._gather_part(starts, horizon)
        out = {k: torch.from_numpy(v) for k, v in out.items()}
        if not self.has_terminated:  # the store's terminated column is all zeros
            out["terminated"] = torch.zeros(horizon, batch_size)
        out["task"] = torch.from_numpy(self.ep_task[ep])
        if self.backend == "mmap" and not self._fits:
            self._read_bytes += batch_size * _PAGE * len(self._read)  # ~ pages touched
            if self._read_bytes >= self._release_bytes:
                self.release_pages()
        return {k: out[k] for k in ("obs", "action", "reward", "terminated", "task")}

    def release_pages(self) -> None:
        """Unmap the pages read so far from this process (they stay in the page cache), so
        that RSS does not grow towards the size of the store as sampling touches it."""
        self._read_bytes = 0
        for m in self._data.values():
            mm = getattr(m, "_mmap", None)
            if mm is not None and hasattr(mmap, "MADV_DONTNEED"):
                mm.madvise(mmap.MADV_DONTNEED)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        for fd, *_ in self._fds.values():
            os.close(fd)
        self._fds = {}

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
