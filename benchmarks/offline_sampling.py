"""Offline sampling benchmark: latency of OfflineStore.sample and the process's RSS for stores of
mt80's shape (obs 39, action 6, 80 tasks, episodes of 101 entries) from 1M to 550M transitions.

    python benchmarks/offline_sampling.py                       # sizes 1e6,1e7,1e8,5.5e8
    python benchmarks/offline_sampling.py sizes=1e6,1e8 batches=1000 bench_dir=/data/tmp keep=true

The large stores are created directly in the store format as sparse files (nothing is written
but the per-episode arrays), so they cost no disk; a hole reads as zeros, which is fine for
latency. One small store (cold_size transitions) is filled with random data and dropped from
the page cache (posix_fadvise DONTNEED) to time the first batches read from disk. Prints a table
and writes benchmarks/results/offline_sampling.json.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mbdpo import offline  # noqa: E402
from mbdpo.offline import OfflineStore  # noqa: E402

OBS, ACT, TASKS, L = 39, 6, 80, 101
DEFAULTS = dict(sizes="1e6,1e7,1e8,5.5e8", batch=256, horizon=3, batches=500, warmup=50,
                cold_size=2e6, cold_batches=30, bench_dir=None, keep=False,
                out=os.path.join(ROOT, "benchmarks", "results", "offline_sampling.json"))


def rss_mb() -> dict:
    """VmRSS with its anonymous and file-backed parts (MB), from /proc (or psutil)."""
    try:
        with open("/proc/self/status") as f:
            fields = {line.split(":")[0]: line.split()[1] for line in f if line.startswith(
                ("VmRSS", "RssAnon", "RssFile", "VmHWM"))}
        return {k: int(v) / 1024 for k, v in fields.items()}
    except OSError:
        import psutil
        return {"VmRSS": psutil.Process().memory_info().rss / 2 ** 20}


def make_store(folder: str, transitions: int, fill: bool, seed: int = 0) -> None:
    """A store of ceil(transitions / 100) mt80-shaped episodes, written as the converter
    would; sparse unless fill."""
    episodes = -(-int(transitions) // (L - 1))
    n = episodes * L
    offline.allocate_store(folder, n, OBS, ACT, np.full(episodes, L), "int16")
    rng = np.random.default_rng(seed)
    ep_task = rng.integers(0, TASKS, episodes).astype(np.int16)
    np.save(os.path.join(folder, "ep_task.npy"), ep_task)
    if fill:
        step = 200_000
        for name, width in (("obs", OBS), ("action", ACT), ("reward", 0), ("terminated", 0)):
            m = np.load(os.path.join(folder, name + ".npy"), mmap_mode="r+")
            for r in range(0, n, step):
                k = min(step, n - r)
                m[r:r + k] = rng.standard_normal((k, width) if width else k, dtype=np.float32)
            m.flush()
            del m
        m = np.load(os.path.join(folder, "task.npy"), mmap_mode="r+")
        m[:] = np.repeat(ep_task, L)
        m.flush()
        del m
    counts = np.bincount(ep_task, minlength=TASKS)
    meta = {"format": offline.FORMAT, "format_version": offline.FORMAT_VERSION,
            "obs_dim": OBS, "action_dim": ACT, "num_entries": n, "num_episodes": episodes,
            "num_transitions": n - episodes, "task_dtype": "int16",
            "num_tasks_seen": int((counts > 0).sum()), "task_ids": np.nonzero(counts)[0].tolist(),
            "episodes_per_task": counts.tolist(), "task_action_dims": [ACT] * TASKS,
            "has_terminated": False, "data_dir": None, "chunks": [],
            "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    with open(os.path.join(folder, offline.META), "w") as f:
        json.dump(meta, f)


def drop_cache(folder: str) -> None:
    for name in os.listdir(folder):
        fd = os.open(os.path.join(folder, name), os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def time_batches(store, n, batch, horizon) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        store.sample(batch, horizon)
        out.append((time.perf_counter() - t) * 1e3)
    return out


def stats(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"median_ms": float(np.median(a)), "p95_ms": float(np.percentile(a, 95)),
            "max_ms": float(a.max())}


def main(argv):
    args = dict(DEFAULTS)
    for a in argv:
        k, _, v = a.partition("=")
        if k not in args:
            raise SystemExit(f"unknown option {k}; options: {', '.join(args)}")
        args[k] = v
    sizes = [int(float(s)) for s in str(args["sizes"]).split(",")]
    B, H = int(args["batch"]), int(args["horizon"])
    batches, warmup = int(args["batches"]), int(args["warmup"])
    keep = str(args["keep"]).lower() in ("1", "true", "yes")
    root = args["bench_dir"] or tempfile.mkdtemp(prefix="mbdpo-offline-bench-")
    os.makedirs(root, exist_ok=True)
    rows, cold = [], None
    try:
        for size in sizes:
            folder = os.path.join(root, f"sparse_{size}")
            t = time.perf_counter()
            make_store(folder, size, fill=False)
            row = {"transitions": size, "create_s": round(time.perf_counter() - t, 2)}
            # pass 1 reads pages not yet in the page cache (holes: zero-filled on first read);
            # the next passes draw the same batches again, so their pages are in the page
            # cache: the steady state of a store that fits in RAM. "default" is the reader
            # training uses (pread); mmap is timed beside it at every size.
            for key, backend in (("first_touch", None), ("default", None), ("mmap", "mmap"),
                                 ("pread", "pread")):
                store = OfflineStore(folder, seed=0,
                                     **({} if backend is None else {"backend": backend}))
                peak, ms = 0.0, []
                time_batches(store, warmup, B, H)
                for i in range(0, batches, 50):
                    ms += time_batches(store, min(50, batches - i), B, H)
                    peak = max(peak, rss_mb()["VmRSS"])
                row[key] = stats(ms)
                row[key]["backend"] = store.backend
                row[key]["peak_rss_mb"] = round(peak, 1)
                row[key].update({k: round(v, 1) for k, v in rss_mb().items()})
                if key == "default":  # the index part alone: where the starts lie
                    t = time.perf_counter()
                    for _ in range(200):
                        store.sample_starts(B, H)
                    row["index_ms"] = (time.perf_counter() - t) / 200 * 1e3
                store.close()
                del store
            rows.append(row)
            print(f"{size:>13,} transitions: {row['default']['median_ms']:.2f} ms "
                  f"({row['default']['backend']}; mmap {row['mmap']['median_ms']:.2f}, pread "
                  f"{row['pread']['median_ms']:.2f}, first touch "
                  f"{row['first_touch']['median_ms']:.2f}), peak RSS "
                  f"{max(row[k]['peak_rss_mb'] for k in ('first_touch', 'default')):.0f} MB",
                  flush=True)
            if not keep:
                shutil.rmtree(folder)

        # cold: a filled store dropped from the page cache, read from disk
        size = int(float(args["cold_size"]))
        folder = os.path.join(root, f"filled_{size}")
        make_store(folder, size, fill=True)
        cold = {"transitions": size}
        for backend in ("mmap", "pread"):
            for threads, sort in ((1, False), (1, True), (8, False)):
                drop_cache(folder)
                store = OfflineStore(folder, seed=threads + 2 * sort, backend=backend,
                                     sort_indices=sort, threads=threads)
                first = time_batches(store, int(args["cold_batches"]), B, H)
                cold[f"{backend},threads={threads}" + (",sorted" if sort else "")] = {
                    **stats(first), "first_batch_ms": first[0]}
                store.close()
                del store
        if not keep:
            shutil.rmtree(folder)
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)

    print(f"\nbatch {B}, horizon {H}: median and p95 of {batches} batches after {warmup} "
          "warm-up, pages in the page cache; sparse stores of mt80 shape")
    print(f"{'transitions':>13} | {'reader':>6} | {'latency ms':>10} | {'p95 ms':>6} | "
          f"{'mmap ms':>7} | {'pread ms':>8} | {'1st touch ms':>12} | {'index ms':>8} | "
          f"{'RSS MB':>6} | {'peak RSS MB':>11}")
    for r in rows:
        c = r["default"]
        peak = max(r[k]["peak_rss_mb"] for k in ("first_touch", "default"))
        print(f"{r['transitions']:>13,} | {c['backend']:>6} | {c['median_ms']:>10.2f} | "
              f"{c['p95_ms']:>6.2f} | {r['mmap']['median_ms']:>7.2f} | "
              f"{r['pread']['median_ms']:>8.2f} | {r['first_touch']['median_ms']:>12.2f} | "
              f"{r['index_ms']:>8.3f} | {c['VmRSS']:>6.0f} | {peak:>11.0f}")
    ratio = {k: rows[-1][k]["median_ms"] / rows[0][k]["median_ms"]
             for k in ("default", "mmap", "pread")}
    print("largest / smallest latency: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratio.items()))
    if cold:
        print(f"cold (filled store of {cold['transitions']:,} transitions, page cache dropped), "
              f"first {args['cold_batches']} batches:")
        for k, c in cold.items():
            if k != "transitions":
                print(f"  {k:<24} median {c['median_ms']:6.1f} ms, p95 {c['p95_ms']:6.1f} ms, "
                      f"first batch {c['first_batch_ms']:6.1f} ms")
    result = {"config": {k: (v if k != "bench_dir" else None) for k, v in args.items()},
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "python": platform.python_version(), "numpy": np.__version__},
              "sizes": rows, "largest_over_smallest": ratio, "cold": cold}
    os.makedirs(os.path.dirname(args["out"]), exist_ok=True)
    with open(args["out"], "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args['out']}")


if __name__ == "__main__":
    main(sys.argv[1:])
