"""Numerical helpers: symlog, two-hot regression, squashed Gaussians, running statistics."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mbdpo import distributed


def symlog(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(torch.abs(x))


def symexp(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.expm1(torch.abs(x))


class TwoHot:
    """Discrete regression of scalars on ``num_bins`` bins over [vmin, vmax] in symlog space."""

    def __init__(self, num_bins: int, vmin: float, vmax: float, device=None):
        self.num_bins, self.vmin, self.vmax = num_bins, vmin, vmax
        self.bin_size = (vmax - vmin) / (num_bins - 1)
        self.bins = torch.linspace(vmin, vmax, num_bins, device=device)

    def to(self, device) -> "TwoHot":
        self.bins = self.bins.to(device)
        return self

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(...,) scalars -> (..., num_bins) two-hot targets."""
        x = symlog(x).clamp(self.vmin, self.vmax)
        pos = (x - self.vmin) / self.bin_size
        # a NaN (a diverged run) keeps a valid index, and its NaN weight reaches the loss,
        # where the trainer's finite-value check names it
        lo = pos.nan_to_num(0.0).floor().clamp(0, self.num_bins - 2)
        frac = (pos - lo).unsqueeze(-1)
        lo = lo.long().unsqueeze(-1)
        out = torch.zeros(*x.shape, self.num_bins, device=x.device, dtype=x.dtype)
        out.scatter_(-1, lo, 1 - frac)
        out.scatter_add_(-1, lo + 1, frac)
        return out

    def decode(self, logits: torch.Tensor) -> torch.Tensor:
        """(..., num_bins) logits -> (...,) scalars, in fp32 whatever the logits' precision
        (symexp magnifies a bf16 rounding of the symlog mean by up to e^10)."""
        return symexp((F.softmax(logits.float(), dim=-1) * self.bins).sum(-1))

    def soft_ce(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of logits (..., num_bins) against the two-hot of target (...,), fp32."""
        return -(self.encode(target.float()) * F.log_softmax(logits.float(), dim=-1)).sum(-1)


def row_std(x: torch.Tensor, correction: int = 1, keepdim: bool = False) -> torch.Tensor:
    """Standard deviation over the last dimension, from the row mean and a sum of squares.
    ``torch.std`` is not batch-invariant on the CPU: a row's result may differ in the last bit
    with the number of rows beside it (seen for candidate returns of 32 samples, one seed's row
    against two), which would part seed s of a batched run from its single run."""
    d = x - x.mean(-1, keepdim=True)
    return (d.square().sum(-1, keepdim=keepdim) / (x.shape[-1] - correction)).sqrt()


def squashed_gaussian(mean: torch.Tensor, log_std_raw: torch.Tensor, log_std_min: float,
                      log_std_max: float, noise, mask: torch.Tensor | None = None):
    """Sample a tanh-squashed Gaussian. Returns (action, Gaussian log-prob (..., 1), mean action).

    The log-prob is that of the Gaussian sample *before* the tanh, summed over the used action
    dimensions: the quantity TD-MPC2's scaled entropy is built from (its tanh Jacobian terms
    cancel there, so they are not computed). ``log_std_raw`` is mapped to
    [log_std_min, log_std_max] through tanh. Dimensions where ``mask`` is 0 give action 0 and
    do not count in the log-prob. The Gaussian noise comes from ``noise`` (the seeds' streams;
    the tensors lead with the seed dimension).
    """
    mean, log_std_raw = mean.float(), log_std_raw.float()  # fp32 under bf16 autocast too
    log_std = log_std_min + 0.5 * (log_std_max - log_std_min) * (torch.tanh(log_std_raw) + 1)
    eps = noise.randn_like(mean)
    action = torch.tanh(mean + eps * log_std.exp())
    log_prob = -0.5 * eps.pow(2) - log_std - 0.5 * math.log(2 * math.pi)
    mu = torch.tanh(mean)
    if mask is None:
        return action, log_prob.sum(-1, keepdim=True), mu
    return action * mask, (log_prob * mask).sum(-1, keepdim=True), mu * mask


def quantiles(x: torch.Tensor, qs: tuple[float, ...]) -> list[torch.Tensor]:
    """Quantiles of each row of x (..., n) with torch.quantile's linear interpolation, at
    positions computed on the host from n: no device-to-host read, so it runs in a CUDA
    graph. Returns one (...,) tensor per q."""
    s, n = x.sort(-1).values, x.shape[-1]
    out = []
    for q in qs:
        pos = q * (n - 1)
        i = min(int(pos), n - 1)
        j = min(i + 1, n - 1)
        out.append(s[..., i] + (s[..., j] - s[..., i]) * (pos - i))
    return out


def _per_seed(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-seed values v (S,) shaped to broadcast against x (S, ...)."""
    return v.view(-1, *[1] * (x.dim() - 1))


def _old_scalar(state_dict, key, like) -> None:
    """A checkpoint from before the seed dimension holds a 0-d value: one seed's."""
    v = state_dict.get(key)
    if torch.is_tensor(v) and v.dim() == 0 and like.dim() == 1:
        state_dict[key] = v.reshape(1)


class RunningScale(torch.nn.Module):
    """Smoothed 5th–95th percentile range of a quantity (used to scale Q in the policy loss),
    one per seed: ``value`` (S,)."""

    def __init__(self, tau: float, seeds: int = 1):
        super().__init__()
        self.tau = tau
        self.register_buffer("value", torch.ones(seeds))
        self.register_buffer("q", torch.tensor([0.05, 0.95]))  # kept: checkpoints hold it

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Smooth each seed's range of x (S, ...), clamped to at least 1, into its scale
        (TD-MPC2's order: clamp, then average, so a run of small ranges cannot pull the scale
        below 1)."""
        # under torchrun: the range of the global batch
        x = x.detach().float().reshape(x.shape[0], -1)
        lo, hi = quantiles(distributed.gather(x.T).T, (0.05, 0.95))
        self.value.lerp_((hi - lo).clamp(min=1.0), self.tau)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the clamp only matters for old checkpoints
        return x / _per_seed(self.value.clamp(min=1.0), x)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        _old_scalar(state_dict, prefix + "value", self.value)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class RunningMeanStd(torch.nn.Module):
    """Exponential running mean and std (momentum m) used to normalise energy logits, one
    pair per seed (S,): ``mean <- m·mean + (1-m)·batch mean`` and the same for the (biased)
    batch std, as the published code keeps them; ``forward`` gives
    clip((x - mean)/std, -clip, clip) with each seed's pair."""

    def __init__(self, momentum: float, clip: float, seeds: int = 1):
        super().__init__()
        self.momentum, self.clip = momentum, clip
        self.register_buffer("mean", torch.zeros(seeds))
        self.register_buffer("std", torch.ones(seeds))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """x (S, ...): each seed's batch."""
        # under torchrun: of the global batch
        x = x.detach().float().reshape(x.shape[0], -1)
        if distributed.active():
            mean, std = distributed.mean_and_std(x)
        else:
            mean, std = x.mean(-1), row_std(x, correction=0)
        self.mean.lerp_(mean, 1 - self.momentum)
        self.std.lerp_(std.clamp(min=1e-6), 1 - self.momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - _per_seed(self.mean, x)) / _per_seed(self.std.clamp(min=1e-6), x)).clamp(
            -self.clip, self.clip)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints written before the std was kept held a running variance instead
        var = state_dict.pop(prefix + "var", None)
        if var is not None and prefix + "std" not in state_dict:
            state_dict[prefix + "std"] = var.sqrt()
        for name in ("mean", "std"):
            _old_scalar(state_dict, prefix + name, getattr(self, name))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
