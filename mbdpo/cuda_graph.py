"""CUDA graphs for the planner and the update.

At model sizes 1-19 a planner call is thousands of small kernels (N denoising steps x H model
steps x a few layers), so on a GPU its time is launch overhead, not arithmetic. ``Graphed``
records such a call once as a CUDA graph and afterwards replays it with one launch.

Rules the wrapped function must follow (``MBDPO.act`` and ``MBDPO.update`` do): its inputs are
tensors (or None) whose shapes fix the work, it reads the model's parameters and buffers in
place (the optimiser and ``update_target`` write them in place, so replays see the new values),
it draws randomness only from torch's CUDA generator (graph-safe: every replay draws fresh
numbers), and it never reads a value back to the host.
"""
from __future__ import annotations

import warnings

import torch


def _clone(out):
    if isinstance(out, dict):
        return {k: v.clone() for k, v in out.items()}
    return out.clone()


class Graphed:
    """Call ``fn(*tensors)`` eagerly for the first ``warmup`` calls of each input signature
    (shapes, dtypes, which inputs are None), then capture it as a CUDA graph and replay that.

    Each replay copies the arguments into the graph's static inputs and returns a copy of its
    outputs, so results stay valid after later calls. Captured graphs hold references to the
    tensors they read: call ``reset()`` after replacing any of them (an optimiser's
    ``load_state_dict`` does).
    """

    def __init__(self, fn, warmup: int = 3, label: str | None = None):
        self.fn, self.warmup = fn, warmup
        self.label = label or getattr(fn, "__name__", "fn")
        self.entries: dict = {}
        self.failed = False  # a capture failed: run eagerly from then on

    def reset(self) -> None:
        self.entries.clear()

    @property
    def num_graphs(self) -> int:
        return sum("graph" in e for e in self.entries.values())

    def __call__(self, *args):
        if self.failed:
            return self.fn(*args)
        key = tuple(None if a is None else (tuple(a.shape), a.dtype, a.device) for a in args)
        entry = self.entries.setdefault(key, {"calls": 0})
        if "graph" not in entry:
            entry["calls"] += 1
            if entry["calls"] <= self.warmup:
                # warm-up on a side stream, as PyTorch asks before a capture (it lets lazy
                # initialisation, e.g. cuBLAS workspaces and optimiser state, happen outside)
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    out = self.fn(*args)
                torch.cuda.current_stream().wait_stream(side)
                return out
            inputs = [None if a is None else a.clone() for a in args]
            graph = torch.cuda.CUDAGraph()
            try:
                # thread_local: CUDA work of other threads (loggers, loaders) is no error
                with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                    outputs = self.fn(*inputs)
            except Exception as err:  # nothing ran during the capture: state is unchanged
                self.failed = True
                self.entries.clear()
                warnings.warn(f"CUDA-graph capture of {self.label} "
                              f"failed ({type(err).__name__}: {err}); it runs eagerly from "
                              "now on. Set cuda_graphs=false to skip the attempt.")
                return self.fn(*args)
            entry.update(graph=graph, inputs=inputs, outputs=outputs)
            print(f"recorded {self.label} as a CUDA graph (inputs "
                  f"{[None if a is None else tuple(a.shape) for a in args]})", flush=True)
        for static, a in zip(entry["inputs"], args):
            if a is not None:
                static.copy_(a, non_blocking=True)
        entry["graph"].replay()
        return _clone(entry["outputs"])
