"""The offline dataset pipeline: chunks in the published format, safe reading, the
memory-mapped store (validation, resumable and idempotent conversion) and its sampler."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import mbdpo.offline as offline
from mbdpo.offline import (DatasetError, OfflineStore, prepare_store, read_chunk,
                           write_chunk)
from mbdpo.replay import EpisodeReplay
from tests.conftest import ROOT

OBS, ACT = 6, 4  # padded sizes
TASK_ADIMS = {0: 4, 1: 2, 2: 3}  # action dims in use per task (the rest is zero padding)
TASK_ODIMS = {0: 6, 1: 4, 2: 5}


def make_chunk(path, first_ep, E, L, terminated=False, seed=0):
    """Episode id in obs[..., 0], entry index in obs[..., 1]; reward = 1000 * episode + entry;
    action[..., 0] = entry; zero padding beyond each task's obs and action dims."""
    rng = np.random.default_rng(seed + first_ep)
    eps = first_ep + np.arange(E)
    task = eps % 3
    obs = rng.normal(size=(E, L, OBS)).astype(np.float32) + 5
    act = rng.uniform(-1, 1, size=(E, L, ACT)).astype(np.float32)
    obs[..., 0], obs[..., 1] = eps[:, None], np.arange(L)
    act[..., 0] = np.arange(L)
    for e, k in enumerate(task):
        obs[e, :, TASK_ODIMS[k]:] = 0
        act[e, :, TASK_ADIMS[k]:] = 0
    reward = 1000.0 * eps[:, None] + np.arange(L)
    term = None
    if terminated:
        term = np.zeros((E, L), np.float32)
        term[:, -1] = 1
    write_chunk(path, obs, act, reward, task, terminated=term)
    return obs, act, reward, task


def make_dataset(folder, shapes=((5, 12), (7, 9), (4, 20)), **kw):
    os.makedirs(folder, exist_ok=True)
    first = 0
    for i, (E, L) in enumerate(shapes):
        make_chunk(os.path.join(folder, f"chunk_{i}.pt"), first, E, L, **kw)
        first += E
    return str(folder)


def store_files(store):
    return {n: os.stat(os.path.join(store, n)).st_mtime_ns for n in sorted(os.listdir(store))}


# -- the chunk format and safe reading ---------------------------------------------------------
def test_write_chunk_matches_the_published_format(tmp_path):
    from tensordict import TensorDict
    path = tmp_path / "chunk_0.pt"
    make_chunk(path, 0, 3, 5, terminated=True)
    td = torch.load(path, weights_only=True)  # tensordict registers its classes as safe
    assert isinstance(td, TensorDict) and list(td.batch_size) == [3, 5]
    assert td["obs"].dtype == td["action"].dtype == td["reward"].dtype == torch.float32
    assert td["task"].dtype == torch.int32 and td["task"].shape == (3, 5)
    assert (td["task"] == td["task"][:, :1]).all()
    assert torch.isnan(td["action"][:, 0]).all() and torch.isnan(td["reward"][:, 0]).all()
    assert not torch.isnan(td["action"][:, 1:]).any()
    assert not any(n.startswith(".tmp") for n in os.listdir(tmp_path))  # atomic write


def test_read_chunk_is_memory_mapped_and_leaves_tensordict_loading_intact(tmp_path):
    path = str(tmp_path / "chunk_0.pt")
    obs, *_ = make_chunk(path, 0, 3, 5)
    data = read_chunk(path)
    assert set(data) == {"obs", "action", "reward", "task"}
    assert torch.equal(data["obs"], torch.from_numpy(obs))
    if os.path.exists("/proc/self/maps"):  # the tensor lies in a mapping of the chunk file
        ptr, mapped = data["obs"].data_ptr(), False
        with open("/proc/self/maps") as f:
            for line in f:
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                mapped |= lo <= ptr < hi and line.rstrip().endswith("chunk_0.pt")
        assert mapped
    before = set(torch.serialization.get_safe_globals())
    read_chunk(path)
    assert set(torch.serialization.get_safe_globals()) == before
    assert type(torch.load(path, weights_only=True)).__name__ == "TensorDict"


def test_read_chunk_accepts_plain_dicts_and_consolidated_or_locked_tensordicts(tmp_path):
    from tensordict import TensorDict
    t = {"obs": torch.randn(2, 3, 4), "action": torch.randn(2, 3, 2),
         "reward": torch.randn(2, 3), "task": torch.ones(2, 3, dtype=torch.int32)}
    torch.save(t, tmp_path / "plain.pt")
    torch.save(TensorDict(t, [2, 3]).consolidate(metadata=True), tmp_path / "cons.pt")
    torch.save(TensorDict(t, [2, 3], device="cpu").lock_(), tmp_path / "locked.pt")
    for name in ("plain.pt", "cons.pt", "locked.pt"):
        data = read_chunk(str(tmp_path / name))
        assert set(data) == set(t), name
        for k in t:
            assert torch.equal(data[k], t[k]), (name, k)


def test_read_chunk_reads_pickles_of_old_tensordict_versions(tmp_path):
    """tensordict < 0.3 pickled TensorDict by __dict__ (NEWOBJ + BUILD), from the module
    tensordict.tensordict, with its entries in a tensordict.utils._StringOnlyDict."""
    fake = tmp_path / "fake"
    (fake / "tensordict").mkdir(parents=True)
    (fake / "tensordict" / "__init__.py").write_text("")
    (fake / "tensordict" / "utils.py").write_text("class _StringOnlyDict(dict):\n    pass\n")
    (fake / "tensordict" / "tensordict.py").write_text("class TensorDict:\n    pass\n")
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(fake)!r})
        import torch
        from tensordict.tensordict import TensorDict
        from tensordict.utils import _StringOnlyDict
        td = TensorDict()
        entries = _StringOnlyDict(obs=torch.arange(24.).view(2, 3, 4),
                                  action=torch.ones(2, 3, 2), reward=torch.zeros(2, 3),
                                  task=torch.full((2, 3), 7, dtype=torch.int32))
        td.__dict__.update(_tensordict=entries, _batch_size=torch.Size([2, 3]), _device=None,
                           _is_shared=False, _is_memmap=False, _td_dim_names=[None, None],
                           _is_locked=False, _cache=None, _last_op=None, _safe=False,
                           _lazy=False, _inplace_set=False, is_meta=False,
                           _locked_tensordicts=[])
        torch.save(td, {str(tmp_path / 'old.pt')!r})
    """)
    subprocess.run([sys.executable, "-c", script], check=True)
    data = read_chunk(str(tmp_path / "old.pt"))
    assert torch.equal(data["obs"], torch.arange(24.).view(2, 3, 4))
    assert data["task"].dtype == torch.int32 and (data["task"] == 7).all()


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_with_arbitrary_objects_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "chunk_0.pt"
    torch.save({"obs": torch.zeros(1, 2, 3), "payload": Evil(marker)}, path)
    with pytest.raises(DatasetError) as err:
        read_chunk(str(path))
    msg = str(err.value)
    assert str(path) in msg and "objects other than tensors" in msg and "system" in msg
    assert msg.count(". ") == 0 and "\n" not in msg  # one sentence
    assert not marker.exists()
    # tensordict's own process-wide allow-list (e.g. NonTensorData) is not trusted either
    from tensordict import TensorDict
    td = TensorDict({"obs": torch.zeros(1, 2, 3)}, [1, 2])
    td.set_non_tensor("note", "hello")
    torch.save(td, tmp_path / "chunk_1.pt")
    with pytest.raises(DatasetError, match="NonTensorData"):
        read_chunk(str(tmp_path / "chunk_1.pt"))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_a_damaged_chunk_names_the_file(tmp_path, damage):
    path = tmp_path / "chunk_0.pt"
    make_chunk(path, 0, 3, 5)
    raw = path.read_bytes()
    path.write_bytes({"truncate": raw[: len(raw) // 2], "garbage": os.urandom(4096),
                      "empty": b""}[damage])
    with pytest.raises(DatasetError) as err:
        read_chunk(str(path))
    msg = str(err.value)
    assert str(path) in msg and "re-download" in msg and "\n" not in msg


def rss_file_kb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssFile"))


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="Linux only")
def test_converting_drops_the_chunk_pages_it_has_read(tmp_path):
    path = str(tmp_path / "chunk_0.pt")
    write_chunk(path, np.ones((100, 101, 39)), np.ones((100, 101, 6)), np.ones((100, 101)),
                np.zeros(100))  # ~1.6 MB of obs
    obs = read_chunk(path)["obs"]
    # the same sum on memory of our own first: its kernel's code pages (file-backed, from
    # libtorch) are then in before the measurement, which counts the chunk's pages alone
    assert float(torch.ones_like(obs).sum()) == 100 * 101 * 39
    before = rss_file_kb()
    assert float(obs.sum()) == 100 * 101 * 39  # pages in
    assert rss_file_kb() - before > 1000
    offline._release(obs, offline._mapped_ranges(path))
    assert rss_file_kb() - before < 100
    assert float(obs.sum()) == 100 * 101 * 39  # the data are still there
    mine = torch.ones(1 << 20)  # memory of the process itself is never dropped
    offline._release(mine, offline._mapped_ranges(path))
    assert float(mine.sum()) == 1 << 20


# -- conversion ---------------------------------------------------------------------------------
def test_store_holds_the_chunks_rows_and_task_action_dims(tmp_path):
    data = make_dataset(tmp_path / "d", terminated=True)
    store = prepare_store(data, progress=False)
    assert store == os.path.join(data, "store")
    s = OfflineStore(store)
    assert (s.obs_dim, s.action_dim, s.num_episodes) == (OBS, ACT, 16)
    assert s.num_transitions == 5 * 11 + 7 * 8 + 4 * 19
    assert s.num_tasks_seen == 3 and s.task_ids == [0, 1, 2]
    assert s.task_action_dims == [TASK_ADIMS[k] for k in range(3)]
    obs = np.load(os.path.join(store, "obs.npy"), mmap_mode="r")
    act = np.load(os.path.join(store, "action.npy"), mmap_mode="r")
    term = np.load(os.path.join(store, "terminated.npy"), mmap_mode="r")
    first = 0
    for i in range(3):
        c = read_chunk(os.path.join(data, f"chunk_{i}.pt"))
        n = c["obs"].shape[0] * c["obs"].shape[1]
        assert np.array_equal(obs[first:first + n], c["obs"].reshape(n, OBS).numpy())
        assert np.array_equal(act[first:first + n], c["action"].reshape(n, ACT).numpy(),
                              equal_nan=True)
        assert np.array_equal(term[first:first + n], c["terminated"].reshape(n).numpy())
        first += n
    ep_start, ep_len = np.load(os.path.join(store, "ep_start.npy")), np.load(
        os.path.join(store, "ep_length.npy"))
    assert ep_start[-1] + ep_len[-1] == len(obs) == first
    assert np.array_equal(np.load(os.path.join(store, "ep_task.npy")), np.arange(16) % 3)


def test_a_bad_chunk_stops_everything_before_conversion(tmp_path):
    data = make_dataset(tmp_path / "d")
    path = os.path.join(data, "chunk_2.pt")
    write_chunk(path, np.zeros((2, 5, OBS + 1)), np.zeros((2, 5, ACT)), np.zeros((2, 5)), [0, 1])
    with pytest.raises(DatasetError, match="chunk_2.pt has obs_dim 7"):
        prepare_store(data, progress=False)
    assert not os.path.exists(os.path.join(data, "store"))
    # task ids outside the task set, a task changing within an episode, a missing key
    make_chunk(path, 100, 2, 5)
    with pytest.raises(DatasetError, match=r"chunk_0.pt holds task ids 0..2, outside \[0, 2\)"):
        prepare_store(data, progress=False, num_tasks=2)
    task = np.zeros((2, 5), np.int32)
    task[1, 3] = 1
    write_chunk(path, np.zeros((2, 5, OBS)), np.zeros((2, 5, ACT)), np.zeros((2, 5)), task)
    with pytest.raises(DatasetError, match="chunk_2.pt: the task id changes within episode 1"):
        prepare_store(data, progress=False)
    torch.save({"obs": torch.zeros(2, 5, OBS), "task": torch.zeros(2, 5, dtype=torch.int32)},
               path)
    with pytest.raises(DatasetError, match="chunk_2.pt has no 'action' entry"):
        prepare_store(data, progress=False)
    assert not os.path.exists(os.path.join(data, "store"))


def test_chunks_are_ordered_numerically(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    for i in (10, 2, 1):
        make_chunk(data / f"chunk_{i}.pt", i, 1, 4)
    (data / "notes.pt").write_bytes(b"x")
    meta = OfflineStore(prepare_store(str(data), progress=False)).meta
    assert [c["name"] for c in meta["chunks"]] == ["chunk_1.pt", "chunk_2.pt", "chunk_10.pt"]


def test_interrupted_conversion_resumes_to_the_same_store(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "d", shapes=((3, 7), (4, 5), (2, 9), (3, 6)))
    ref = prepare_store(data, store_dir=str(tmp_path / "ref"), progress=False)
    real_convert, real_write = offline._convert_chunk, offline._RowWriter.write
    calls, writes = [], []

    def counting(path, *args, **kw):
        calls.append(os.path.basename(path))
        return real_convert(path, *args, **kw)

    def crashing(self, *args):  # 6 writes per slice of one episode: dies within chunk_2
        writes.append(1)
        if len(writes) == (3 + 4) * 6 + 8:
            raise KeyboardInterrupt
        return real_write(self, *args)
    monkeypatch.setattr(offline.convert, "_convert_chunk", counting)
    monkeypatch.setattr(offline._RowWriter, "write", crashing)
    store = str(tmp_path / "store")
    with pytest.raises(KeyboardInterrupt):
        prepare_store(data, store_dir=store, progress=False, slice_mb=1e-4)  # 1 episode a slice
    assert calls == ["chunk_0.pt", "chunk_1.pt", "chunk_2.pt"]
    assert not os.path.exists(os.path.join(store, "meta.json"))
    progress = json.load(open(os.path.join(store, "progress.json")))
    assert sorted(progress["done"]) == ["chunk_0.pt", "chunk_1.pt"]
    with pytest.raises(DatasetError, match=r"is incomplete .*prepare_dataset.py data_dir="):
        OfflineStore(store)
    calls.clear()
    monkeypatch.setattr(offline._RowWriter, "write", real_write)
    assert prepare_store(data, store_dir=store, progress=False) == store
    assert calls == ["chunk_2.pt", "chunk_3.pt"]  # resumed, not restarted
    assert not os.path.exists(os.path.join(store, "progress.json"))
    for name in offline.DATA_FILES + offline.EPISODE_FILES:
        a, b = (np.load(os.path.join(d, name + ".npy")) for d in (ref, store))
        assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True), name
    ma, mb = (json.load(open(os.path.join(d, "meta.json"))) for d in (ref, store))
    ma.pop("created"), mb.pop("created")
    assert ma == mb


def test_prepare_store_is_idempotent_and_notices_changed_chunks(tmp_path):
    data = make_dataset(tmp_path / "d")
    store = prepare_store(data, progress=False)
    before = store_files(store)
    assert prepare_store(data, progress=False) == store
    assert store_files(store) == before  # nothing rewritten
    make_chunk(os.path.join(data, "chunk_1.pt"), 5, 7, 10)  # a re-downloaded, different chunk
    prepare_store(data, progress=False)
    assert OfflineStore(store).num_entries == 5 * 12 + 7 * 10 + 4 * 20


def test_missing_store_and_missing_data_are_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist: run python scripts/prepare_dataset"):
        OfflineStore(str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError, match="holds no chunk_"):
        prepare_store(str(tmp_path), progress=False)
    with pytest.raises(DatasetError, match="does not exist"):
        prepare_store(str(tmp_path / "nowhere"), progress=False)


@pytest.mark.parametrize("key, entry, value", [("reward", 4, float("nan")),
                                               ("obs", 0, 1e30), ("action", 3, -float("inf"))])
def test_nan_or_absurd_values_are_a_corrupt_chunk(tmp_path, key, entry, value):
    """NaN, inf or 1e30 anywhere but the placeholders of entry 0 is refused at conversion,
    naming the key and episode (it would otherwise reach the networks as NaN losses)."""
    data = make_dataset(tmp_path / "d", shapes=((3, 6),))
    c = {k: v.clone() for k, v in read_chunk(os.path.join(data, "chunk_0.pt")).items()}
    c[key][2, entry] = value
    torch.save(c, os.path.join(data, "chunk_0.pt"))
    where = "" if key == "obs" else "after entry 0 "
    with pytest.raises(DatasetError, match=f"{key} holds NaN, inf or values beyond \\+-1e\\+06 "
                                           f"{where}in episode 2"):
        prepare_store(data, progress=False)


# -- sampling -----------------------------------------------------------------------------------
def test_samples_stay_inside_episodes_and_align_like_the_replay(tmp_path):
    data = make_dataset(tmp_path / "d", shapes=((5, 12), (7, 4), (4, 20), (3, 2)))
    s = OfflineStore(prepare_store(data, progress=False), seed=3)
    H = 3
    for _ in range(50):
        b = s.sample(64, H)
        ep, t = b["obs"][..., 0], b["obs"][..., 1]
        assert (ep == ep[0]).all()  # one episode per sub-trajectory
        assert torch.equal(t, t[0] + torch.arange(H + 1)[:, None].float())
        assert not torch.isnan(b["action"]).any() and not torch.isnan(b["reward"]).any()
        # transition h uses obs[t+h], action[t+h+1], reward[t+h+1]
        assert torch.equal(b["reward"], 1000 * ep[1:] + t[1:])
        assert torch.equal(b["action"][..., 0], t[1:])
        assert torch.equal(b["task"], ep[0].long() % 3)
        for k in range(3):  # zero padding kept
            sel = b["task"] == k
            assert (b["obs"][:, sel, TASK_ODIMS[k]:] == 0).all()
            assert (b["action"][:, sel, TASK_ADIMS[k]:] == 0).all()
    assert not (ep[0] >= 16).any()  # episodes of 2 entries (< H+1) are never drawn


def test_sample_layout_matches_episode_replay(tmp_path):
    data = make_dataset(tmp_path / "d", shapes=((4, 10),))
    b = OfflineStore(prepare_store(data, progress=False)).sample(8, 3)
    replay = EpisodeReplay(100, (OBS,), ACT)
    c = read_chunk(os.path.join(data, "chunk_0.pt"))
    for e in range(4):
        replay.add_episode(c["obs"][e], c["action"][e], c["reward"][e], task=int(c["task"][e, 0]))
    r = replay.sample(8, 3)
    assert set(b) == set(r)
    for k in r:
        assert b[k].shape == r[k].shape and b[k].dtype == r[k].dtype, k


def test_sampling_is_uniform_over_valid_starts(tmp_path):
    # episodes of 5, 9 and 20 entries: 2, 6 and 17 valid starts each for H = 3
    data = make_dataset(tmp_path / "d", shapes=((2, 5), (1, 9), (1, 9), (1, 20), (1, 2),
                                                (1, 5), (1, 20)))
    s = OfflineStore(prepare_store(data, progress=False), seed=0)
    draws = [s.sample_starts(4096, 3) for _ in range(40)]
    starts, eps = (np.concatenate(x) for x in zip(*draws))
    assert np.array_equal(np.searchsorted(s.ep_start, starts, side="right") - 1, eps)
    valid = np.concatenate([st + np.arange(max(n - 3, 0))
                            for st, n in zip(s.ep_start, s.ep_length)])
    counts = np.bincount(starts, minlength=s.num_entries)
    assert set(np.nonzero(counts)[0]) == set(valid)  # every valid start, nothing else
    expected = len(starts) / len(valid)
    chi2 = ((counts[valid] - expected) ** 2 / expected).sum()
    dof = len(valid) - 1
    assert chi2 < dof + 5 * np.sqrt(2 * dof), chi2
    per_ep = np.add.reduceat(counts, s.ep_start)
    share = per_ep / per_ep.sum()
    assert np.allclose(share, np.array([2, 2, 6, 6, 17, 0, 2, 17]) / 52, atol=0.01)
    # same seed, same draws; the RNG state can be saved and restored
    a, b = OfflineStore(s.store_dir, seed=5), OfflineStore(s.store_dir, seed=5)
    assert torch.equal(a.sample(16, 3)["obs"], b.sample(16, 3)["obs"])
    state = a.state_dict()
    x = a.sample(16, 3)["obs"]
    b.load_state_dict(state)
    assert torch.equal(x, b.sample(16, 3)["obs"])
    with pytest.raises(DatasetError, match="no sub-trajectory of 21 entries"):
        s.sample(4, 20)


def test_every_way_of_reading_gives_the_same_batches(tmp_path):
    data = make_dataset(tmp_path / "d", terminated=True)
    store = prepare_store(data, progress=False)
    ref = OfflineStore(store, seed=1, backend="mmap")
    assert OfflineStore(store).backend == "pread"  # the default: same cost at every size
    assert OfflineStore(store, backend="auto").backend == "mmap"  # auto: small stores mapped
    assert OfflineStore(store, backend="auto", release_mb=0).backend == "pread"
    others = [OfflineStore(store, seed=1, backend=b, sort_indices=srt, threads=th)
              for b in ("mmap", "pread") for srt in (False, True) for th in (1, 3)]
    for _ in range(3):
        x = ref.sample(32, 3)
        ep, t = x["obs"][..., 0].long(), x["obs"][..., 1].long()
        last = torch.from_numpy(ref.ep_length)[ep[1:]] - 1
        assert torch.equal(x["terminated"], (t[1:] == last).float())
        for o in others:
            y = o.sample(32, 3)
            for k in x:
                assert torch.equal(x[k], y[k]) and y[k].is_contiguous(), (o.backend, k)
    ref.release_pages()  # unmapping the pages read keeps the data
    assert torch.equal(ref.sample(32, 3)["obs"], others[0].sample(32, 3)["obs"])
    for o in others:
        o.close()


# -- the command line ---------------------------------------------------------------------------
def run_script(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "prepare_dataset.py"),
                           *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_cli_prepares_a_store_and_reports_bad_folders_in_one_sentence(tmp_path):
    proc = run_script(f"data_dir={tmp_path / 'nowhere'}")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not exist" in lines[0] and "Traceback" not in proc.stderr
    proc = run_script()
    assert proc.returncode == 2 and "data_dir=" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    data = make_dataset(tmp_path / "mt80", shapes=((3, 6),))
    proc = run_script(f"data_dir={data}")
    assert proc.returncode == 0, proc.stderr
    assert "Store ready" in proc.stdout and "task set mt80" in proc.stdout
    assert os.path.isfile(os.path.join(data, "store", "meta.json"))
    # store_dir= as docs/datasets.md writes it (a setting of its own, no '+')
    elsewhere = tmp_path / "fast" / "mt80-store"
    proc = run_script(f"data_dir={data}", f"store_dir={elsewhere}", "check_values=false")
    assert proc.returncode == 0, proc.stderr
    assert f"Store ready in {elsewhere}" in proc.stdout
    assert os.path.isfile(os.path.join(elsewhere, "meta.json"))


def test_online_replay_exports_in_the_dataset_format(tmp_path):
    """save_replay=true: complete episodes of the online replay become a chunk that the
    safe reader loads back with the same numbers (NaN entry 0, task id 0)."""
    from mbdpo.datasets import export_replay
    from mbdpo.offline import read_chunk
    from mbdpo.replay import EpisodeReplay
    rb = EpisodeReplay(capacity=40, obs_shape=(2,), action_dim=1)
    for ep in range(5):  # 5 episodes of 11 entries in a ring of 40: the oldest are overwritten
        obs = torch.full((11, 2), float(ep))
        act = torch.cat([torch.full((1, 1), float("nan")), torch.full((10, 1), float(ep))])
        rew = torch.cat([torch.tensor([float("nan")]), torch.arange(10, dtype=torch.float)])
        rb.add_episode(obs, act, rew)
    paths = export_replay(rb, str(tmp_path / "replay"))
    d = read_chunk(paths[0])
    assert tuple(d["obs"].shape) == (3, 11, 2)  # episodes 2, 3, 4 are complete
    assert sorted(d["obs"][:, 0, 0].tolist()) == [2.0, 3.0, 4.0]
    assert torch.isnan(d["action"][:, 0]).all() and torch.isnan(d["reward"][:, 0]).all()
    assert (d["reward"][:, 1:] == torch.arange(10, dtype=torch.float)).all()
    assert (d["task"] == 0).all()
