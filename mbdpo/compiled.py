"""torch.compile of the hot paths, with a clean fallback to eager.

``compile=true`` compiles the planner's denoising step (``DiffusionPlanner.weighted_mean``:
K candidates drawn, rolled out H steps, scored, the elites averaged) and the update's losses
(``MBDPO._model_losses`` and the policy prior's ``MBDPO._pi_loss``: forward and, through
AOTAutograd, backward). Inductor fuses the layer norms, activations and element-wise
arithmetic around each matrix multiply into one kernel: at model size 1 with 128 samples and 10 steps an action goes from ~4,100 to ~550
top-level aten operations (a CPU-measurable stand-in for GPU launches).

Why compile one denoising step and not the whole plan: the N-1 steps unrolled make a graph N-1
times larger whose compilation took ~4 min on this 2-core CPU for no measurable gain over the
step compiled once (~35 s) and called N-1 times.

The compiled functions draw their random numbers from inductor's generator, seeded from
torch's: the same distributions, other numbers than eager unless
``torch._inductor.config.fallback_random`` is set (the tests set it to compare the two).
"""
from __future__ import annotations

import warnings

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode


class Compiled:
    """``fn`` compiled whole (``fullgraph=True``, ``dynamic=False``). If compiling fails (no
    C++ compiler, an unsupported operation, an internal error), warn once with the reason and
    call ``fn`` eagerly from then on. With ``fullgraph`` a function is traced and compiled
    before any of it runs, so a failed call has changed nothing and is simply run again
    eagerly. Each new input shape (E environments, a batch size) compiles once more."""

    def __init__(self, fn, mode: str | None = None):
        self.fn, self.failed = fn, False
        self.compiled = torch.compile(fn, fullgraph=True, dynamic=False, mode=mode)
        self.__name__ = getattr(fn, "__name__", "fn")

    def __call__(self, *args, **kwargs):
        # under a dispatch mode (FlopCounterMode, a debugging mode) dynamo compiles nothing:
        # that call runs eagerly and the next one compiled again
        if self.failed or _get_current_dispatch_mode() is not None:
            return self.fn(*args, **kwargs)
        try:
            return self.compiled(*args, **kwargs)
        except Exception as err:  # dynamo / inductor errors have no common base (Ctrl-C is no
            # Exception: it still stops the run)
            self.failed = True
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            warnings.warn(f"torch.compile of {self.__name__} failed ({type(err).__name__}: "
                          f"{first[:200]}); it runs eagerly from now on. Set compile=false "
                          "to skip the attempt.", stacklevel=2)
            return self.fn(*args, **kwargs)


def compile_mode(device: torch.device) -> str | None:
    """reduce-overhead (CUDA graphs of the compiled graphs) on a GPU; inductor's default on
    the CPU, where there are no launches to save."""
    return "reduce-overhead" if device.type == "cuda" else None
