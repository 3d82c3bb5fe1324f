"""One run on several processes with torch.distributed (launched by torchrun): data-parallel
offline pretraining. Each process (rank) reads its own rows of every global batch; DDP averages
the gradients; the running statistics are computed over the global batch; rank 0 alone logs,
evaluates and writes checkpoints. NCCL on GPUs, gloo on CPUs; torchrun's rendezvous spans
nodes. Outside torchrun every function here is the single-process identity."""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

from mbdpo.config import ConfigError

# evaluations and checkpoints happen on rank 0 while the others wait at a barrier: an mt80
# evaluation takes far longer than torch's default 10-30 minute collective timeout
TIMEOUT = datetime.timedelta(hours=12)


def launched() -> int:
    """The number of processes torchrun started (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(cfg) -> None:
    """Join the process group when launched by torchrun with more than one process (not
    ``distributed=false``), pick this rank's device, and make ``cfg.device`` name it."""
    n = launched()
    if n <= 1 or active():
        return
    if not cfg.get("distributed", True):
        raise ConfigError(f"torchrun started {n} processes but distributed=false: run "
                          "`python scripts/train.py ...` instead, or drop distributed=false.")
    if not cfg.get("multitask"):
        raise ConfigError(f"torchrun started {n} processes for an online run: data-parallel "
                          "training is for offline pretraining (multitask=true data_dir=...); "
                          "start online runs as one process each, side by side (one per task "
                          "and seed).")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(cfg.device)
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        cfg.device = str(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    if rank() > 0:  # rank 0 alone prints (errors still reach stderr)
        import sys
        sys.stdout = open(os.devnull, "w")


def own_noise(seed: int) -> None:
    """After the networks are built alike: every process but rank 0 reseeds its random
    streams (its share of the batch gets noise, dropout and negatives of its own)."""
    if active() and rank() > 0:
        from mbdpo.checkpoint import seed_everything
        seed_everything(seed + 100_003 * rank())


def broadcast_state(module: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers, on every process."""
    if active():
        for t in module.state_dict().values():
            dist.broadcast(t, 0)


def gather_objects(obj) -> list:
    """Every rank's ``obj`` (what a checkpoint may hold: tensors, numbers, strings, lists and
    dicts of them), in rank order; ``[obj]`` outside torchrun. Sent as torch.save bytes and
    read back with ``weights_only=True`` (torch's all_gather_object unpickles tensors badly)."""
    if not active():
        return [obj]
    import io
    buf = io.BytesIO()
    torch.save(obj, buf)
    out = [None] * world()
    dist.all_gather_object(out, buf.getvalue())
    return [torch.load(io.BytesIO(b), weights_only=True) for b in out]


def fingerprint(module: torch.nn.Module) -> str:
    """sha256 of every parameter and buffer's bytes: equal on every process of a run whose
    processes hold the same weights."""
    import hashlib
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group. The DDP wrappers sit in reference cycles (agent <-> its
    forward modules) and would otherwise be freed only at interpreter exit, after the group:
    gloo's threads then still hold their tensors, and freeing those without the interpreter
    aborts the process (seen once in CI: rank 1, SIGABRT "terminate called without an active
    exception" after a run finished). Collecting them first frees them while all is alive."""
    if active():
        import gc
        gc.collect()
        dist.destroy_process_group()


def share(n: int) -> slice:
    """This rank's rows of ``n``: consecutive, disjoint, covering all ranks together."""
    r, w = rank(), world()
    if n % w:
        raise ConfigError(f"batch_size={n} does not split over {w} processes: pick a multiple "
                          f"of {w} (the batch is global: each process reads batch_size / {w}).")
    return slice(r * n // w, (r + 1) * n // w)


def mean_and_std(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (biased) std of each row of ``x`` (S, n) over all ranks' elements (equal
    numbers on each): two (S,) tensors. Under torchrun only (``mbdpo.math`` computes them
    for one process)."""
    x = x.detach().float()
    moments = torch.stack([x.mean(-1), x.pow(2).mean(-1)])
    dist.all_reduce(moments)
    moments /= world()
    mean = moments[0]
    return mean, (moments[1] - mean * mean).clamp(min=0).sqrt()


def gather(x: torch.Tensor) -> torch.Tensor:
    """All ranks' ``x`` concatenated along the first dimension, in rank order."""
    if not active():
        return x
    parts = [torch.empty_like(x) for _ in range(world())]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts)


def average(values: dict) -> dict:
    """0-d tensors averaged over ranks (the losses of the global batch), in one collective."""
    if not active() or not values:
        return values
    keys = list(values)
    flat = torch.stack([values[k].detach().float() for k in keys])
    dist.all_reduce(flat)
    flat /= world()
    return dict(zip(keys, flat.unbind()))


def any_rank(flag: bool, device) -> bool:
    """True on every rank when ``flag`` is true on any (a stop seen by one rank stops all at
    the same update, so no rank waits in a collective the others never reach)."""
    if not active():
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
