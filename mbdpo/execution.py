"""How the agent's two hot functions run: the action (``MBDPO._plan``) and the update
(``MBDPO._update``). One concern with one home: the agent hands them here and gets back the
callables it calls.

Four ways, chosen by ``compile`` and ``cuda_graphs`` (each ``auto``, ``true`` or ``false``;
``auto`` is true on a CUDA device and false on the CPU):

- eager: PyTorch's operations one by one (~8,600 per action at the published settings);
- compiled (``compile``): inductor fuses each denoising step, the world-model losses and the
  policy loss, forward and backward, into few kernels (``mbdpo/compiled.py``);
- graphed (``cuda_graphs``, CUDA only): the whole action and the whole update are recorded once
  as CUDA graphs and replayed with one launch (``mbdpo/cuda_graph.py``);
- both, the default on a GPU: the graphs record the compiled kernels, so an action is one
  replay of fused kernels and nothing waits for the host.

Inductor runs without its own CUDA graphs (``mode=None``): ``Graphed`` records the whole call,
compiled parts and eager glue (optimiser steps, target update) together; torch.compile's
reduce-overhead mode would record graphs per compiled function, which the update's backward
and policy step overwrite while their outputs are still in use (seen on an H200: "accessing
tensor output of CUDAGraphs that has been overwritten by a subsequent run").

Under torchrun (data-parallel pretraining) the update's losses hold collectives: the update
stays eager there; the planner is still compiled and graphed.

Every step falls back on its own: a failed compile warns once and runs that function eagerly;
a failed capture warns once and runs the call uncaptured (still compiled).

What a call launches, measured with torch's profiler (``benchmarks/speed.py``, the tests):
``count_kernels`` (on a GPU the CUDA kernels; on the CPU the top-level aten operations plus
inductor's fused kernels, named in the profiler when compiled with
``torch._inductor.config.cpp.enable_kernel_profile``), ``count_aten_ops`` and ``host_reads``
(operations that wait for a value on the host: inside a CUDA-graph capture they fail).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mbdpo.compiled import Compiled
from mbdpo.config import resolve_flag
from mbdpo.cuda_graph import Graphed


@dataclass(frozen=True)
class Paths:
    """The resolved choice: compile the hot functions, record them as CUDA graphs."""
    compile: bool
    graphs: bool


def paths(cfg, device: torch.device) -> Paths:
    """What ``compile`` and ``cuda_graphs`` (auto | true | false) choose on ``device``: auto is
    true on CUDA; CUDA graphs are never used off CUDA, whatever the setting."""
    return Paths(compile=resolve_flag(cfg.get("compile", False), device),
                 graphs=resolve_flag(cfg.get("cuda_graphs", False), device, graphs=True))


def set_matmul_precision(setting: str, device: torch.device) -> None:
    """``matmul_precision`` on a CUDA device: ``high`` multiplies float32 matrices in TF32 on
    Ampere or newer GPUs (what the published code sets for its whole process with
    ``torch.set_float32_matmul_precision("high")``), ``highest`` in IEEE float32. Only CUDA's
    flag is set: torch's global setting would also move oneDNN's float32 matmuls on the CPU to
    a reduced precision where the CPU has one (it sets ``torch.backends.mkldnn`` too)."""
    if device.type != "cuda":
        return
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9
        matmul.fp32_precision = "tf32" if setting == "high" else "ieee"
    else:
        matmul.allow_tf32 = setting == "high"


def accelerate(agent, chosen: Paths, data_parallel: bool):
    """Wrap the agent's hot functions as ``chosen`` says; returns (plan_fn, update_fn).

    Compiled pieces are installed on the agent and its planner in place (the denoising step
    ``planner.denoise`` and the policy rollouts of all steps ``planner.policy_rollouts``, the
    losses ``agent._model_losses`` and ``agent._pi_loss``), so
    that the whole-call functions, eager or graphed, call the compiled kernels."""
    if chosen.compile:
        agent.planner.denoise = Compiled(agent.planner.denoise,
                                         label="the planner's denoising step")
        agent.planner.policy_rollouts = Compiled(agent.planner.policy_rollouts,
                                                 label="the planner's policy rollouts")
        if not data_parallel:
            agent._model_losses = Compiled(agent._model_losses, label="the world-model losses")
            agent._pi_loss = Compiled(agent._pi_loss, label="the policy prior's loss")
    plan_fn, update_fn = agent._plan, agent._update
    if chosen.graphs:
        plan_fn = Graphed(plan_fn, label="the action")
        if not data_parallel:
            update_fn = Graphed(update_fn, label="the update")
    return plan_fn, update_fn


def graphed(fns) -> list[Graphed]:
    return [f for f in fns if isinstance(f, Graphed)]


def to_host_later(t: torch.Tensor):
    """Start copying ``t`` to the host; the returned function waits for the copy and returns
    it as an array. On a GPU the copy is queued behind the work that makes ``t`` (into pinned
    memory, with an event), so work queued after it (the update, by the online loop) is not
    waited for; a plain ``t.cpu()`` would wait for everything queued on the stream."""
    if t.device.type != "cuda":
        return lambda: t.cpu().numpy()
    host = t.to("cpu", non_blocking=True)  # pinned memory: asynchronous
    copied = torch.cuda.Event()
    copied.record()

    def wait():
        copied.synchronize()
        return host.numpy()
    return wait


def compiled(agent) -> list[Compiled]:
    """The compiled pieces of ``agent`` (empty when compile is off)."""
    fns = (agent.planner.denoise, agent.planner.policy_rollouts, agent._model_losses,
           agent._pi_loss)
    return [f for f in fns if isinstance(f, Compiled)]


def _top_level(events, counted):
    """The events for which ``counted(name)`` holds and that no counted event called."""
    for event in events:
        if not counted(event.name):
            continue
        parent = event.cpu_parent
        while parent is not None and not counted(parent.name):
            parent = parent.cpu_parent
        if parent is None:
            yield event


def _profiled(fn, cuda: bool = False):
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        fn()
        if cuda:
            torch.cuda.synchronize()
    return prof.events()


def count_kernels(fn, device: torch.device) -> int:
    """Kernels ``fn()`` launches: on a GPU the profiler's CUDA activities (kernels, copies),
    on the CPU the top-level aten operations plus inductor's fused C++ kernels (views
    included: the CPU cannot tell them apart)."""
    if device.type == "cuda":
        return sum(e.device_type == torch.autograd.DeviceType.CUDA
                   for e in _profiled(fn, cuda=True))
    return sum(1 for _ in _top_level(
        _profiled(fn), lambda n: n.startswith("aten::") or "cpp_fused" in n))


def count_aten_ops(fn) -> int:
    """Top-level aten operations dispatched by ``fn()`` (those not called by another aten
    operation); a compiled graph's fused kernels count as the operations they call."""
    return sum(1 for _ in _top_level(_profiled(fn), lambda n: n.startswith("aten::")))


# operations that read a tensor's value (or its number of nonzeros) back to the host
HOST_READS = ("aten::_local_scalar_dense", "aten::item", "aten::is_nonzero", "aten::nonzero",
              "aten::masked_select", "aten::_unique2", "aten::unique_dim", "aten::equal")


def host_reads(fn, skip: str | None = None) -> list[str]:
    """The host reads of ``fn()`` (names of ``HOST_READS`` operations), leaving out those
    inside a profiler range whose name contains ``skip`` (e.g. ``"Optimizer.step"``)."""
    reads = []
    for event in _profiled(fn):
        if event.name not in HOST_READS:
            continue
        parent = event.cpu_parent
        while parent is not None and not (skip and skip in parent.name):
            parent = parent.cpu_parent
        if parent is None:
            reads.append(event.name)
    return reads
