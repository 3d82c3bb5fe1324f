"""The TD-MPC2 offline datasets (mt30, mt80): safe chunk reading, a memory-mapped store, sampling.

A chunk (``chunk_<i>.pt``, docs/algorithm.md §6) is a ``torch.save``d TensorDict with batch shape
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

The package's modules: ``chunks`` (reading, writing, checking chunks), ``convert`` (chunks to
store), ``store`` (the store and its sampler).
"""
from mbdpo.offline.chunks import (ALLOWED_GLOBALS, CHUNK_RE, DATA_FILES, EPISODE_FILES,
                                  FORMAT, FORMAT_VERSION, META, PREPARE_HINT, PROGRESS,
                                  REQUIRED_KEYS, DatasetError, _mapped_ranges, _release,
                                  check_chunk, list_chunks, read_chunk, write_chunk)
from mbdpo.offline.convert import (SANE, _convert_chunk, _RowWriter,
                                   allocate_store, prepare_store)
from mbdpo.offline.store import OfflineStore

__all__ = ["ALLOWED_GLOBALS", "CHUNK_RE", "DATA_FILES", "EPISODE_FILES", "FORMAT", "FORMAT_VERSION",
           "META", "PREPARE_HINT", "PROGRESS", "REQUIRED_KEYS", "SANE", "DatasetError",
           "OfflineStore", "allocate_store", "check_chunk", "list_chunks", "prepare_store",
           "read_chunk", "write_chunk", "_RowWriter", "_convert_chunk", "_mapped_ranges",
           "_release"]
