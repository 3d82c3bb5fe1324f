"""torch.compile of the hot paths, with a clean fallback to eager.

``compile`` (auto: on a GPU) compiles the planner's denoising step
(``DiffusionPlanner.denoise``: K-P candidates drawn, rolled out H steps, scored with the
step's P policy candidates, the elites averaged), the policy rollouts of all steps, drawn
once per action (``DiffusionPlanner.policy_rollouts``), and the update's losses
(``MBDPO._model_losses`` and the policy prior's ``MBDPO._pi_loss``: forward and, through
AOTAutograd, backward). Inductor fuses the layer norms, activations and element-wise
arithmetic around each matrix multiply into one kernel: at the published settings an action
goes from ~7,500 operations to ~900 (matrix multiplies and fused kernels, counted on the CPU:
docs/performance.md). On a GPU, ``mbdpo/execution.py`` records the compiled kernels in CUDA
graphs; inductor itself runs without graphs (``mode=None``).

Why compile one denoising step and not the whole plan: the N-1 steps unrolled make a graph N-1
times larger whose compilation took ~4 min on this 2-core CPU for no measurable gain over the
step compiled once (~35 s) and called N-1 times.

Compiling is paid once per process and input shape, and shown with one line; inductor keeps
its kernels in its cache folder (``TORCHINDUCTOR_CACHE_DIR``, by default under /tmp), so the
next process with the same shapes starts in seconds (34 s -> 6 s for the planner on a 2-core
CPU).

The compiled functions draw their random numbers from inductor's generator, seeded from
torch's: the same distributions, other numbers than eager unless
``torch._inductor.config.fallback_random`` is set (the tests set it to compare the two).
"""
from __future__ import annotations

import time
import warnings

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode


# First calls under way (compiling). A first call takes seconds on a CPU and can take minutes
# on a GPU (Triton's kernels); the training loops' stop handler reads this to answer a stop at
# once instead of after the compile (``StopRequested``): with ``fullgraph`` nothing of the
# call has run while it compiles.
_compiling = 0


# Called as a first call starts compiling (set by the training loop's stop handler, which
# raises there when a stop came a moment before: a compile is not worth starting then).
on_compile = None


def compiling() -> bool:
    """Whether a first call of a ``Compiled`` function is compiling now."""
    return _compiling > 0


def stop_in(err: BaseException) -> BaseException | None:
    """The KeyboardInterrupt (a stop) that ``err`` is or was caused by, else None."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, KeyboardInterrupt):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _signature(args) -> tuple:
    return tuple((tuple(a.shape), a.dtype) if torch.is_tensor(a) else a is None for a in args)


class Compiled:
    """``fn`` compiled whole (``fullgraph=True``, ``dynamic=False``). If compiling fails (no
    C++ compiler, an unsupported operation, an internal error), warn once with the reason and
    call ``fn`` eagerly from then on. With ``fullgraph`` a function is traced and compiled
    before any of it runs, so a failed call has changed nothing and is simply run again
    eagerly. Each new input shape (E environments, a batch size) compiles once more; the first
    call of each prints one line with the time it took."""

    def __init__(self, fn, label: str | None = None):
        self.fn, self.failed = fn, False
        self.compiled = torch.compile(fn, fullgraph=True, dynamic=False)
        self.__name__ = getattr(fn, "__name__", "fn")
        self.label = label or self.__name__
        self.seen: set = set()

    def __call__(self, *args, **kwargs):
        # under a dispatch mode (FlopCounterMode, a debugging mode) dynamo compiles nothing:
        # that call runs eagerly and the next one compiled again
        global _compiling
        if self.failed or _get_current_dispatch_mode() is not None:
            return self.fn(*args, **kwargs)
        key = _signature(args)
        first = key not in self.seen
        if first:
            from torch._inductor.runtime.cache_dir_utils import cache_dir
            print(f"compiling {self.label} (once per process and input shape; cache "
                  f"{cache_dir()}) ...", end="", flush=True)
            start = time.perf_counter()
        failed = None
        _compiling += first
        try:
            if first and on_compile is not None:
                on_compile()
            out = self.compiled(*args, **kwargs)
        except Exception as err:  # dynamo / inductor errors have no common base (Ctrl-C is no
            # Exception: it still stops the run, as does one that such an error wraps)
            stop = stop_in(err)
            if stop is not None:
                raise stop from None
            failed = err
        finally:
            _compiling -= first
        if failed is not None:
            self.failed = True
            if first:
                print(" failed", flush=True)
            text = str(failed).strip()
            msg = text.splitlines()[0] if text else ""
            warnings.warn(f"torch.compile of {self.__name__} failed ({type(failed).__name__}: "
                          f"{msg[:200]}); it runs eagerly from now on. Set compile=false "
                          "to skip the attempt.", stacklevel=2)
            return self.fn(*args, **kwargs)
        if first:
            self.seen.add(key)
            print(f" {time.perf_counter() - start:.1f} s", flush=True)
        return out
