"""Chunks of the TD-MPC2 datasets: safe reading (``weights_only`` and an allow-list of
stand-ins for the TensorDict classes a chunk's pickle names; nothing else is ever run from a
file), writing in the published format, listing and checking; pages of memory-mapped chunks
released as they are consumed."""
from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import pickle
import re
import sys
import threading

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
                           "files there first (see docs/datasets.md).")
    names = [n for n in os.listdir(data_dir) if CHUNK_RE.match(n)]
    if not names:
        raise DatasetError(f"{data_dir} holds no chunk_*.pt files: download the dataset there "
                           "first (see docs/datasets.md).")
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
