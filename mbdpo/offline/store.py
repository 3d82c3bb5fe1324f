"""The memory-mapped offline store and its sampler of sub-trajectories."""
from __future__ import annotations

import contextlib
import mmap
import os

import numpy as np
import torch

from mbdpo.offline.chunks import _PAGE, META, PREPARE_HINT, PROGRESS, DatasetError
from mbdpo.offline.convert import _read_json, _store_complete
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
        self.part: slice | None = None  # this process's rows of each batch (torchrun)
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
        """``batch_size`` sub-trajectories; with ``part`` set (a slice: this process's share
        under torchrun) all processes draw the same global batch and read only their rows."""
        starts, ep = self.sample_starts(batch_size, horizon)
        if self.part is not None:
            starts, ep = starts[self.part], ep[self.part]
            batch_size = len(starts)
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
