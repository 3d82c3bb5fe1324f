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


class NormedLinear(nn.Linear):
    """Linear -> (dropout) -> LayerNorm -> activation."""

    def __init__(self, in_features: int, out_features: int, dropout: float = 0.0,
                 act: nn.Module | None = None):
        super().__init__(in_features, out_features)
        self.ln = nn.LayerNorm(out_features)
        self.act = act if act is not None else Mish()
        self.dropout = nn.Dropout(dropout) if dropout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        if self.dropout is not None:
            x = self.dropout(x)
        return self.act(self.ln(x))


def mlp(in_dim: int, hidden: list[int], out_dim: int, last_act: nn.Module | None = None,
        dropout: float = 0.0, zero_last: bool = False) -> nn.Sequential:
    """Normed-linear hidden layers; a plain linear last layer unless ``last_act`` is given
    (then the last layer is normed too, e.g. with SimNorm)."""
    dims = [in_dim] + hidden
    layers: list[nn.Module] = [NormedLinear(dims[i], dims[i + 1], dropout=dropout * (i == 0))
                               for i in range(len(hidden))]
    if last_act is None:
        layers.append(nn.Linear(dims[-1], out_dim))
    else:
        layers.append(NormedLinear(dims[-1], out_dim, act=last_act))
    for layer in layers:
        init_linear(layer.weight, layer.bias)
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
    """``n`` MLPs of the same shape with stacked parameters, evaluated in one batched matmul per
    layer. ``forward(x, idx)`` evaluates only the members in ``idx`` (all when None).

    Layer l: (E, N, d_in) @ (E, d_in, d_out) -> LayerNorm (per member affine) -> Mish;
    dropout after the first linear; the last layer is a plain (zero-initialised) linear.
    """

    def __init__(self, n: int, in_dim: int, hidden: list[int], out_dim: int,
                 dropout: float = 0.0):
        super().__init__()
        self.n, self.dropout = n, dropout
        dims = [in_dim] + hidden + [out_dim]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.ln_w = nn.ParameterList()
        self.ln_b = nn.ParameterList()
        for i in range(len(dims) - 1):
            w = torch.empty(n, dims[i], dims[i + 1])
            b = torch.empty(n, 1, dims[i + 1])
            init_linear(w, b)
            last = i == len(dims) - 2
            if last:  # zero-initialised output layer
                w.zero_()
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(b))
            if not last:
                self.ln_w.append(nn.Parameter(torch.ones(n, 1, dims[i + 1])))
                self.ln_b.append(nn.Parameter(torch.zeros(n, 1, dims[i + 1])))

    def forward(self, x: torch.Tensor, idx: torch.Tensor | None = None,
                detach: bool = False) -> torch.Tensor:
        """x: (N, d_in) shared by all members, or (E, N, d_in). Returns (E, N, d_out)."""
        def p(t):
            t = t if idx is None else t[idx]
            return t.detach() if detach else t
        n = self.n if idx is None else len(idx)
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(n, *x.shape)
        nl = len(self.weights)
        for i in range(nl - 1):
            drop = self.dropout if i == 0 and self.training else 0.0
            x = stacked_layer(x, p(self.weights[i]), p(self.biases[i]), p(self.ln_w[i]),
                              p(self.ln_b[i]), drop)
        return torch.baddbmm(p(self.biases[-1]), x, p(self.weights[-1]))


def stacked_layer(x, w, b, ln_w, ln_b, dropout: float = 0.0):
    """One normed layer of n networks at once: x (n, M, in) @ w (n, in, out) + b (n, 1, out),
    (dropout), LayerNorm with each network's affine ln_w, ln_b (n, 1, out), Mish."""
    x = torch.baddbmm(b, x, w)
    if dropout:
        x = F.dropout(x, dropout, training=True)
    return mish(F.layer_norm(x, x.shape[-1:]) * ln_w + ln_b)


def stack_hidden(mlps: list[nn.Sequential]) -> list[tuple[torch.Tensor, ...]]:
    """The hidden layers (all but the last) of MLPs of one shape built by ``mlp()``, their
    parameters stacked per layer as ``stacked_layer`` takes them: [(w, b, ln_w, ln_b), ...].
    A copy of the parameters (autograd reaches them through it)."""
    depth = len(mlps[0]) - 1
    layers = []
    for i in range(depth):
        ls = [m[i] for m in mlps]
        layers.append((torch.stack([layer.weight.mT for layer in ls]),
                       torch.stack([layer.bias for layer in ls]).unsqueeze(1),
                       torch.stack([layer.ln.weight for layer in ls]).unsqueeze(1),
                       torch.stack([layer.ln.bias for layer in ls]).unsqueeze(1)))
    return layers


def stacked_hidden(x: torch.Tensor, layers) -> torch.Tensor:
    """The hidden layers of n MLPs that read the same input x (M, in), one batched matmul per
    layer (``stack_hidden``): (n, M, hidden)."""
    x = x.unsqueeze(0).expand(len(layers[0][0]), *x.shape)
    for layer in layers:
        x = stacked_layer(x, *layer)
    return x


class ShiftAug(nn.Module):
    """Random shift of images by up to ``pad`` pixels (replicate padding), per sample."""

    def __init__(self, pad: int = 3):
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        n, _, h, w = x.shape
        x = F.pad(x, (self.pad,) * 4, mode="replicate")
        eps = 1.0 / (h + 2 * self.pad)
        arange = torch.linspace(-1 + eps, 1 - eps, h + 2 * self.pad, device=x.device)[:h]
        arange = arange.unsqueeze(0).repeat(h, 1).unsqueeze(2)
        base = torch.cat([arange, arange.transpose(1, 0)], dim=2).unsqueeze(0).repeat(n, 1, 1, 1)
        shift = torch.randint(0, 2 * self.pad + 1, (n, 1, 1, 2), device=x.device,
                              dtype=x.dtype) * (2.0 / (h + 2 * self.pad))
        return F.grid_sample(x, base + shift, padding_mode="zeros", align_corners=False)


class ConvEncoder(nn.Module):
    """Pixels (C, 64, 64) uint8 -> latent: shift aug, scale to [-0.5, 0.5], 4 convs, SimNorm."""

    def __init__(self, in_channels: int, num_channels: int, latent_dim: int, simnorm_dim: int):
        super().__init__()
        c = num_channels
        self.aug = ShiftAug(3)
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels, c, 7, stride=2), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 5, stride=2), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, stride=2), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, stride=1), nn.Flatten())
        flat = c * 4 * 4  # 64 -> 29 -> 13 -> 6 -> 4
        self.proj = nn.Identity() if flat == latent_dim else nn.Linear(flat, latent_dim)
        self.simnorm = SimNorm(simnorm_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-3]
        x = x.reshape(-1, *x.shape[-3:]).float() / 255.0 - 0.5
        x = self.proj(self.convs(self.aug(x)))
        return self.simnorm(x).reshape(*lead, -1)


def time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of diffusion steps t (...,) -> (..., dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    ang = t.float().unsqueeze(-1) * freqs
    return torch.cat([ang.sin(), ang.cos()], dim=-1)
