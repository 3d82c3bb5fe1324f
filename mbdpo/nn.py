"""Building blocks: normed linear layers, SimNorm, MLPs, the vectorised Q-ensemble, the conv
encoder with random-shift augmentation, and the sinusoidal time embedding."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class _MishFn(torch.autograd.Function):
    """Mish(x) = x·tanh(softplus(x)) computed as x·n/(n+2) with n = eˣ(eˣ+2): one exp instead
    of exp, log1p and tanh, about 3x faster than ``F.mish`` on CPU, same values to 1e-6."""

    @staticmethod
    def forward(ctx, x):
        e = x.clamp(max=20.0).exp_()
        n = (e + 2).mul_(e)
        t = n.div_(n + 2)  # tanh(softplus(x))
        ctx.save_for_backward(x, t, e)
        return t * x

    @staticmethod
    def backward(ctx, g):
        x, t, e = ctx.saved_tensors
        sig = e / (e + 1)  # sigmoid(x)
        return g * (t + x * sig * (1 - t * t))


def mish(x: torch.Tensor) -> torch.Tensor:
    if torch.is_grad_enabled() and x.requires_grad:
        return _MishFn.apply(x)
    # x·n/(n+2) = x - 2x/((eˣ+1)² + 1): five passes over memory; eˣ = inf gives x, as it should
    d = x.exp().add_(1).square_().add_(1)
    return torch.addcdiv(x, x, d, value=-2)


class Mish(nn.Module):
    def forward(self, x):
        return mish(x)


class SimNorm(nn.Module):
    """Split the last dimension into groups of ``dim`` and softmax each group."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        return F.softmax(x.view(*shape[:-1], -1, self.dim), dim=-1).view(shape)


def seed_view(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """A per-seed tensor (S, *tail) viewed as (S, 1, ..., 1, *tail) with ``ndim`` dims, so
    that it broadcasts against a tensor (S, ..., *tail) of ``ndim`` dims."""
    return t.view(t.shape[0], *[1] * (ndim - t.dim()), *t.shape[1:])


# below this many rows per seed a linear layer on the CPU multiplies seed by seed
# (Linear.forward)
SMALL_ROWS = 16


class Linear(nn.Module):
    """S independent linear layers, one per seed: weight (S, out, in), bias (S, out). Input
    (S, ..., in) -> (S, ..., out) in one batched matmul (with S = 1, an ordinary run)."""

    def __init__(self, seeds: int, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(seeds, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(seeds, out_features))
        init_linear(self.weight, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        S = self.weight.shape[0]
        if self.weight.shape[1] == 1:  # one output (energy, termination): a product and a row
            # sum, the same numbers whatever S (a batched matrix-vector product is not: BLAS
            # takes another path for one matrix than for several)
            return (x * self.weight.view(S, *[1] * (x.dim() - 2), -1)).sum(-1, keepdim=True) + \
                self.bias.view(S, *[1] * (x.dim() - 1))
        x2 = x.reshape(S, -1, x.shape[-1])
        if x2.shape[1] < SMALL_ROWS and x2.device.type == "cpu":
            # a few rows (the encoder when acting): one product per seed, each on a fresh
            # (aligned) copy of its rows. The CPU's BLAS rounds a product of 2-3 rows
            # differently in a batch than alone, and differently again when the rows do not
            # start on an aligned address (seed s > 0 of a batch): this way seed s gets the
            # numbers of its own single run
            y = torch.stack([torch.addmm(self.bias[s], x2[s].clone(), self.weight[s].T)
                             for s in range(S)])
        else:
            y = torch.baddbmm(self.bias.unsqueeze(1), x2, self.weight.mT)
        return y.view(*x.shape[:-1], y.shape[-1])


class LayerNorm(nn.Module):
    """LayerNorm over the last dimension with each seed's affine weight and bias (S, d)."""

    def __init__(self, seeds: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(seeds, dim))
        self.bias = nn.Parameter(torch.zeros(seeds, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (F.layer_norm(x, x.shape[-1:]) * seed_view(self.weight, x.dim())
                + seed_view(self.bias, x.dim()))


class NormedLinear(Linear):
    """Linear -> LayerNorm -> activation, S seeds at once."""

    def __init__(self, seeds: int, in_features: int, out_features: int,
                 act: nn.Module | None = None):
        super().__init__(seeds, in_features, out_features)
        self.ln = LayerNorm(seeds, out_features)
        self.act = act if act is not None else Mish()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.ln(super().forward(x)))


def mlp(seeds: int, in_dim: int, hidden: list[int], out_dim: int,
        last_act: nn.Module | None = None, zero_last: bool = False) -> nn.Sequential:
    """Normed-linear hidden layers; a plain linear last layer unless ``last_act`` is given
    (then the last layer is normed too, e.g. with SimNorm). ``seeds`` networks of this shape
    with stacked parameters (inputs and outputs lead with the seed dimension)."""
    dims = [in_dim] + hidden
    layers: list[nn.Module] = [NormedLinear(seeds, dims[i], dims[i + 1])
                               for i in range(len(hidden))]
    if last_act is None:
        layers.append(Linear(seeds, dims[-1], out_dim))
    else:
        layers.append(NormedLinear(seeds, dims[-1], out_dim, act=last_act))
    if zero_last:
        nn.init.zeros_(layers[-1].weight)
    return nn.Sequential(*layers)


def init_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """The TD-MPC2 family's initialisation: truncated normal weights (std 0.02), zero biases.
    Every linear layer is followed by a LayerNorm or is an output head, so this small scale
    sets how fast Adam moves the weights relative to their size (PyTorch's default uniform
    init is about 2.5x larger at these widths and learns measurably slower)."""
    nn.init.trunc_normal_(weight, std=0.02)
    if bias is not None:
        nn.init.zeros_(bias)


class Ensemble(nn.Module):
    """``n`` MLPs of the same shape with stacked parameters, for each of S seeds, evaluated
    in one batched matmul per layer. ``forward(x, idx)`` evaluates only the members in ``idx``
    (per seed; all when None).

    Layer l: (S·n, N, d_in) @ (S·n, d_in, d_out) -> LayerNorm (per member affine) -> Mish;
    dropout after the first linear (its masks drawn from each seed's stream); the
    last layer is a plain (zero-initialised) linear.
    """

    def __init__(self, seeds: int, n: int, in_dim: int, hidden: list[int], out_dim: int,
                 dropout: float = 0.0):
        super().__init__()
        self.n, self.dropout = n, dropout
        dims = [in_dim] + hidden + [out_dim]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.ln_w = nn.ParameterList()
        self.ln_b = nn.ParameterList()
        for i in range(len(dims) - 1):
            w = torch.empty(seeds, n, dims[i], dims[i + 1])
            b = torch.empty(seeds, n, 1, dims[i + 1])
            init_linear(w, b)
            last = i == len(dims) - 2
            if last:  # zero-initialised output layer
                w.zero_()
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(b))
            if not last:
                self.ln_w.append(nn.Parameter(torch.ones(seeds, n, 1, dims[i + 1])))
                self.ln_b.append(nn.Parameter(torch.zeros(seeds, n, 1, dims[i + 1])))

    def forward(self, x: torch.Tensor, idx: torch.Tensor | None = None,
                detach: bool = False, noise=None) -> torch.Tensor:
        """x: (S, N, d_in) shared by the members; idx: (S, k) member indices or None;
        ``noise``: the seeds' random streams (``mbdpo.noise.Noise``), for dropout in training.
        Returns (S, k or n, N, d_out)."""
        S = x.shape[0]
        rows = None if idx is None else torch.arange(S, device=x.device).unsqueeze(1)

        def p(t):  # (S, n, ...) -> (S·k, ...)
            t = t if idx is None else t[rows, idx]
            t = t.detach() if detach else t
            return t.reshape(-1, *t.shape[2:])
        n = self.n if idx is None else idx.shape[1]
        x = x.unsqueeze(1).expand(S, n, *x.shape[1:]).reshape(S * n, *x.shape[1:])
        nl = len(self.weights)
        for i in range(nl - 1):
            mask = None
            if i == 0 and self.dropout and self.training:  # inverted dropout, per seed
                keep = noise.rand(n, x.shape[1], self.weights[i].shape[-1],
                                       device=x.device) >= self.dropout
                mask = (keep.float() / (1 - self.dropout)).view(S * n, *x.shape[1:2], -1)
            x = stacked_layer(x, p(self.weights[i]), p(self.biases[i]), p(self.ln_w[i]),
                              p(self.ln_b[i]), mask)
        out = torch.baddbmm(p(self.biases[-1]), x, p(self.weights[-1]))
        return out.view(S, n, *out.shape[1:])


def stacked_layer(x, w, b, ln_w, ln_b, dropout_mask=None):
    """One normed layer of n networks at once: x (n, M, in) @ w (n, in, out) + b (n, 1, out),
    (times an inverted-dropout mask), LayerNorm with each network's affine ln_w, ln_b
    (n, 1, out), Mish."""
    x = torch.baddbmm(b, x, w)
    if dropout_mask is not None:
        x = x * dropout_mask
    return mish(F.layer_norm(x, x.shape[-1:]) * ln_w + ln_b)


def stack_hidden(mlps: list[nn.Sequential]) -> list[tuple[torch.Tensor, ...]]:
    """The hidden layers (all but the last) of MLPs of one shape built by ``mlp()`` (S seeds
    each), their parameters stacked per layer as ``stacked_layer`` takes them, network-major:
    [(w (n·S, in, out), b, ln_w, ln_b (n·S, 1, out)), ...]. A copy of the parameters (autograd
    reaches them through it)."""
    depth = len(mlps[0]) - 1
    layers = []
    for i in range(depth):
        ls = [m[i] for m in mlps]
        layers.append((torch.cat([layer.weight.mT for layer in ls]),
                       torch.cat([layer.bias for layer in ls]).unsqueeze(1),
                       torch.cat([layer.ln.weight for layer in ls]).unsqueeze(1),
                       torch.cat([layer.ln.bias for layer in ls]).unsqueeze(1)))
    return layers


def stacked_hidden(x: torch.Tensor, layers, n: int) -> torch.Tensor:
    """The hidden layers of ``n`` MLPs (S seeds each) that read the same input x (S, M, in),
    one batched matmul per layer (``stack_hidden``): (n, S, M, hidden)."""
    S = x.shape[0]
    x = x.unsqueeze(0).expand(n, *x.shape).reshape(n * S, *x.shape[1:])
    for layer in layers:
        x = stacked_layer(x, *layer)
    return x.view(n, S, *x.shape[1:])


class ShiftAug(nn.Module):
    """Random shift of images by up to ``pad`` pixels (replicate padding), per sample."""

    def __init__(self, pad: int = 3):
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor, noise) -> torch.Tensor:
        """x (S, n, C, h, w); the shifts drawn from each seed's stream."""
        if not self.training:
            return x
        S, n, c, h, w = x.shape
        x = F.pad(x.reshape(S * n, c, h, w), (self.pad,) * 4, mode="replicate")
        eps = 1.0 / (h + 2 * self.pad)
        arange = torch.linspace(-1 + eps, 1 - eps, h + 2 * self.pad, device=x.device)[:h]
        arange = arange.unsqueeze(0).repeat(h, 1).unsqueeze(2)
        base = torch.cat([arange, arange.transpose(1, 0)], dim=2).unsqueeze(0).repeat(
            S * n, 1, 1, 1)
        shift = noise.randint(0, 2 * self.pad + 1, (n, 1, 1, 2), device=x.device).to(
            x.dtype).reshape(S * n, 1, 1, 2) * (2.0 / (h + 2 * self.pad))
        out = F.grid_sample(x, base + shift, padding_mode="zeros", align_corners=False)
        return out.view(S, n, c, h, w)


class Conv2d(nn.Module):
    """S independent convolutions, one per seed (weight (S, out, in, k, k)), run as one
    grouped convolution on images laid out (n, S·in, h, w)."""

    def __init__(self, seeds: int, in_channels: int, out_channels: int, kernel: int,
                 stride: int = 1):
        super().__init__()
        refs = [nn.Conv2d(in_channels, out_channels, kernel) for _ in range(seeds)]  # its init
        self.weight = nn.Parameter(torch.stack([r.weight.detach() for r in refs]))
        self.bias = nn.Parameter(torch.stack([r.bias.detach() for r in refs]))
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        S = self.weight.shape[0]
        return F.conv2d(x, self.weight.reshape(-1, *self.weight.shape[2:]),
                        self.bias.reshape(-1), stride=self.stride, groups=S)


class ConvEncoder(nn.Module):
    """Pixels (C, 64, 64) uint8 -> latent: shift aug, scale to [-0.5, 0.5], 4 convs, SimNorm;
    S seeds' encoders at once (inputs (S, ..., C, 64, 64))."""

    def __init__(self, seeds: int, in_channels: int, num_channels: int, latent_dim: int,
                 simnorm_dim: int):
        super().__init__()
        c = num_channels
        self.aug = ShiftAug(3)
        self.convs = nn.Sequential(
            Conv2d(seeds, in_channels, c, 7, stride=2), nn.ReLU(inplace=True),
            Conv2d(seeds, c, c, 5, stride=2), nn.ReLU(inplace=True),
            Conv2d(seeds, c, c, 3, stride=2), nn.ReLU(inplace=True),
            Conv2d(seeds, c, c, 3, stride=1))
        flat = c * 4 * 4  # 64 -> 29 -> 13 -> 6 -> 4
        self.proj = nn.Identity() if flat == latent_dim else Linear(seeds, flat, latent_dim)
        self.simnorm = SimNorm(simnorm_dim)

    def forward(self, x: torch.Tensor, noise) -> torch.Tensor:
        S, lead = x.shape[0], x.shape[1:-3]
        x = x.reshape(S, -1, *x.shape[-3:]).float() / 255.0 - 0.5
        x = self.aug(x, noise)  # (S, n, C, h, w)
        n = x.shape[1]
        x = self.convs(x.transpose(0, 1).reshape(n, -1, *x.shape[-2:]))  # (n, S·c, 4, 4)
        x = self.proj(x.reshape(n, S, -1).transpose(0, 1))  # (S, n, latent)
        return self.simnorm(x).reshape(S, *lead, -1)


def time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of diffusion steps t (...,) -> (..., dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    ang = t.float().unsqueeze(-1) * freqs
    return torch.cat([ang.sin(), ang.cos()], dim=-1)
