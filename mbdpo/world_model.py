"""The networks of docs/algorithm.md §1 and nothing else, for S seeds at once.

Every parameter leads with a seed dimension (S = 1 in an ordinary run): S independent world
models with stacked parameters, evaluated in one batched call per layer. Every input and
output leads with it too: ``encode(obs)`` takes obs (S, ..., obs_dim). The random numbers come
from each seed's own stream (``self.noise``, ``mbdpo/noise.py``).

Every method that takes a task takes its *embedding* ``e`` (S, N, T) (rows aligned with the
other inputs' last batch dimension, or None for a single-task model): callers look it up once
with ``embed(task)``. Action masks are passed the same way.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from mbdpo import math as m
from mbdpo.noise import Noise
from mbdpo.nn import (ConvEncoder, Ensemble, SimNorm, mlp, stack_hidden, stacked_hidden,
                      time_embedding)

# buffers every seed shares (all other parameters and buffers lead with the seed dimension)
SHARED = ("action_masks",)


class TaskEmbedding(nn.Module):
    """Each seed's task embeddings (S, tasks, T), rows renormalised to norm <= 1 when looked
    up (nn.Embedding's max_norm, which has no stacked form)."""

    def __init__(self, seeds: int, num_tasks: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(seeds, num_tasks, dim).uniform_(-0.02, 0.02))

    def forward(self, task: torch.Tensor) -> torch.Tensor:
        S, n, T = self.weight.shape
        flat = task + n * torch.arange(S, device=task.device).view(S, *[1] * (task.dim() - 1))
        table = self.weight.view(S * n, T)
        with torch.no_grad():
            torch.embedding_renorm_(table, flat.reshape(-1), 1.0, 2.0)
        return F.embedding(flat, table)


def _seeded(seed: int, build):
    """``build()`` with torch's generator seeded ``seed``, leaving the caller's stream as it
    was: a seed's initial weights depend on its seed alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


class WorldModel(nn.Module):
    def __init__(self, cfg, seeds=None):
        super().__init__()
        seeds = [int(cfg.seed)] if seeds is None else [int(s) for s in seeds]
        self.cfg, self.seeds, self.noise = cfg, seeds, Noise(seeds)
        _seeded(seeds[0], lambda: self._build(cfg, len(seeds)))
        if len(seeds) > 1:  # seed s's weights are those of the single run of seed s
            with torch.no_grad():
                for i, seed in enumerate(seeds):
                    one = _seeded(seed, lambda: WorldModel(cfg, [seed]))
                    for mine, theirs in zip(self.parameters(), one.parameters()):
                        mine[i] = theirs[0]
        self.Qs_target = copy.deepcopy(self.Qs).requires_grad_(False)
        target = {id(x) for x in self.Qs_target.modules()}
        self._modes = [(x, id(x) in target) for x in self.modules()]  # for train()
        self.train()

    def _build(self, cfg, S: int) -> None:
        A, L, T = cfg.action_dim, cfg.latent_dim, cfg.task_dim
        hid = [cfg.mlp_dim, cfg.mlp_dim]
        if cfg.multitask:
            self.task_emb = TaskEmbedding(S, len(cfg.tasks), T)
            masks = torch.zeros(len(cfg.tasks), A)
            for i, a in enumerate(cfg.action_dims):
                masks[i, :a] = 1
        else:
            self.task_emb = None
            masks = torch.ones(1, A)
        self.register_buffer("action_masks", masks)
        if cfg.obs == "rgb":
            self.encoder = ConvEncoder(S, cfg.obs_shape[0], cfg.num_channels, L,
                                       cfg.simnorm_dim)
        else:
            self.encoder = mlp(S, cfg.obs_dim + T, [cfg.enc_dim] * (cfg.num_enc_layers - 1), L,
                               last_act=SimNorm(cfg.simnorm_dim))
        self.dynamics = mlp(S, L + A + T, hid, L, last_act=SimNorm(cfg.simnorm_dim))
        self.reward_head = mlp(S, L + A + T, hid, cfg.num_bins, zero_last=True)
        self.termination_head = mlp(S, L + T, hid, 1) if cfg.episodic else None
        self.pi_head = mlp(S, L + T, hid, 2 * A)
        self.energy_head = mlp(S, L + A + T, hid, 1, zero_last=True)
        self.Qs = Ensemble(S, cfg.num_q, L + A + T, hid, cfg.num_bins, dropout=cfg.dropout)
        self.score_net = None
        if cfg.use_score_network:
            H = cfg.horizon
            self.score_net = mlp(S, L + T + H * A + cfg.diffusion_time_embed_dim, hid, H * A)
        self.two_hot = m.TwoHot(cfg.num_bins, cfg.vmin, cfg.vmax)
        self.energy_stats = m.RunningMeanStd(cfg.energy_momentum, cfg.energy_clip, S)

    @property
    def num_seeds(self) -> int:
        return len(self.seeds)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.two_hot.bins = fn(self.two_hot.bins)
        device = self.two_hot.bins.device
        if device != self.noise.device:  # the streams live where the draws are made
            self.noise = Noise(self.seeds, device)
        return self

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        """Also a checkpoint written before the seed dimension (one seed, tensors without
        it), which gains it here. Weights that do not fit this model, or that are NaN or
        infinite, are refused in one sentence (``check_weights``)."""
        from mbdpo.checkpoint import CheckpointError
        own = self.state_dict()
        state = add_seed_dim(state, own)
        refuse_non_finite(state)
        try:
            return super().load_state_dict(state, strict, assign)
        except RuntimeError:  # PyTorch's list of every mismatch, as a traceback
            why = mismatch(state, own)
            if why is None:
                raise
            raise CheckpointError(why) from None

    def train(self, mode: bool = True):
        """nn.Module's train(mode), the target Q-ensemble always in eval mode. The flags are
        set directly on the modules listed once at construction: nn.Module.train recurses
        through every module's ``__setattr__``, ~0.15 ms for these ~50 modules on a 2-core CPU,
        and ``MBDPO.act`` switches modes twice on the host's path of every action (on a GPU an
        action is a few ms)."""
        if not isinstance(mode, bool):
            raise ValueError("training mode is expected to be boolean")
        for module, target in self._modes:  # every module, the target Q-ensemble's marked
            module.__dict__["training"] = mode and not target
        return self

    # -- inputs -------------------------------------------------------------------------
    def embed(self, task: torch.Tensor | None) -> torch.Tensor | None:
        """Task ids (S, ...) -> embeddings (S, ..., task_dim), or None for a single-task
        model."""
        return None if self.task_emb is None else self.task_emb(task)

    def action_mask(self, task: torch.Tensor | None) -> torch.Tensor | None:
        return None if task is None or self.task_emb is None else self.action_masks[task]

    @staticmethod
    def _cat(*xs):
        return torch.cat([x for x in xs if x is not None], dim=-1)

    @staticmethod
    def _rows(e, like):
        """Broadcast per-row values e (S, N, T) (a task embedding, an action mask) over
        ``like`` (S, ..., N, D): singleton dimensions go after the seed dimension."""
        if e is None:
            return None
        if like.dim() > e.dim():
            e = e.view(e.shape[0], *[1] * (like.dim() - e.dim()), *e.shape[1:])
        return e.expand(*like.shape[:-1], e.shape[-1])

    # -- the model ----------------------------------------------------------------------
    def encode(self, obs: torch.Tensor, e: torch.Tensor | None) -> torch.Tensor:
        if self.cfg.obs == "rgb":
            return self.encoder(obs, self.noise)
        return self.encoder(self._cat(obs, self._rows(e, obs)))

    def next(self, z, a, e):
        return self.dynamics(self._cat(z, a, self._rows(e, z)))

    def reward_logits(self, z, a, e):
        return self.reward_head(self._cat(z, a, self._rows(e, z)))

    def reward(self, z, a, e):
        return self.two_hot.decode(self.reward_logits(z, a, e))

    def energy_logit(self, z, a, e):
        """The implicit energy F(z, a): one logit, high for actions the data supports."""
        return self.energy_head(self._cat(z, a, self._rows(e, z))).squeeze(-1)

    def energy(self, z, a, e):
        """Normalised energy F̂ = clip((F - mean) / std, -clip, clip)."""
        return self.energy_stats(self.energy_logit(z, a, e))

    def stacked_heads(self, energy: bool = True):
        """The hidden layers of dynamics, reward (and energy) stacked, for ``step``: the three
        read the same (z, a, e), so an imagined step evaluates them as one batched matmul per
        layer (on a GPU a third of the launches). Built once per action."""
        heads = [self.dynamics, self.reward_head] + ([self.energy_head] if energy else [])
        return stack_hidden(heads)

    def step(self, z, a, e, heads):
        """One imagined step of (z, a): reward, normalised energy F̂ (None unless ``heads``
        holds the energy network) and next latent, the values of ``reward``, ``energy`` and
        ``next``, with ``heads = stacked_heads()``."""
        x = self._cat(z, a, self._rows(e, z))
        S, n = x.shape[0], len(heads[0][0]) // x.shape[0]
        h = stacked_hidden(x.reshape(S, -1, x.shape[-1]), heads, n)
        h = h.view(n, *x.shape[:-1], h.shape[-1])  # (2 or 3, S, ..., hidden)
        r = self.two_hot.decode(self.reward_head[-1](h[1]))
        f = self.energy_stats(self.energy_head[-1](h[2]).squeeze(-1)) if n > 2 else None
        return r, f, self.dynamics[-1](h[0])

    def termination_logit(self, z, e):
        return self.termination_head(self._cat(z, self._rows(e, z))).squeeze(-1)

    def pi(self, z, e, mask=None):
        """Squashed-Gaussian policy prior: (action sample, scaled log-prob (..., 1), mean
        action). The scaled log-prob is the Gaussian log-prob of the sample before the tanh,
        summed over the used action dimensions, times their number: minus TD-MPC2's "scaled
        entropy", the policy loss's entropy term. Masked action dimensions are zero."""
        mean, log_std = self.pi_head(self._cat(z, self._rows(e, z))).chunk(2, dim=-1)
        mask = self._rows(mask, mean)
        action, log_prob, mu = m.squashed_gaussian(mean, log_std, self.cfg.log_std_min,
                                                   self.cfg.log_std_max, self.noise, mask=mask)
        dims = mean.shape[-1] if mask is None else mask.sum(-1, keepdim=True)
        return action, log_prob * dims, mu

    def pi_mean(self, z, e, mask=None):
        """The policy prior's mean action tanh(mean), drawing no noise (masked dims zero)."""
        mean = self.pi_head(self._cat(z, self._rows(e, z))).chunk(2, dim=-1)[0]
        mu = torch.tanh(mean.float())
        return mu if mask is None else mu * self._rows(mask, mu)

    def Q_logits(self, z, a, e, idx=None, target=False, detach=False):
        """Logits of the ensemble members ``idx`` (S, k) (all when None): (S, k, ...,
        num_bins)."""
        x = self._cat(z, a, self._rows(e, z))
        S, lead = x.shape[0], x.shape[1:-1]
        net = self.Qs_target if target else self.Qs
        out = net(x.reshape(S, -1, x.shape[-1]), idx, detach=detach, noise=self.noise)
        return out.view(S, out.shape[1], *lead, -1)

    def Q_pairs(self, n: int | None = None, device=None) -> torch.Tensor:
        """Two ensemble members drawn at random for each seed, (S, 2); with ``n``, n
        independent draws at once, (S, n, 2)."""
        shape = (self.cfg.num_q,) if n is None else (n, self.cfg.num_q)
        # argsort of uniform draws: a random permutation from graph-safe generators
        return self.noise.rand(*shape, device=device).argsort(-1)[..., :2]

    def Q_two(self, z, a, e, target=False, detach=False, idx=None):
        """Values of the ensemble members ``idx`` (S, 2), by default a pair drawn at random
        for each seed (``Q_pairs``): (S, 2, ...)."""
        if idx is None:
            idx = self.Q_pairs(device=z.device)
        return self.two_hot.decode(self.Q_logits(z, a, e, idx, target=target, detach=detach))

    def Q_avg(self, z, a, e, detach=False, idx=None):
        return self.Q_two(z, a, e, detach=detach, idx=idx).mean(1)

    def Q_min_target(self, z, a, e):
        return self.Q_two(z, a, e, target=True).min(1).values

    def denoised_mean(self, z, e, x, tau):
        """The score network's output: the return-weighted mean X̄ (..., H, A) it predicts for
        a noisy plan x (..., H, A) at step tau (...,). The score follows from it as
        s = (sqrt(ᾱ_τ)·X̄ - x_τ)/(1 - ᾱ_τ) (see DiffusionPlanner.score_from_mean); predicting
        X̄, which lies in [-1, 1], keeps the regression well scaled at every τ."""
        emb = time_embedding(tau, self.cfg.diffusion_time_embed_dim)
        inp = self._cat(z, self._rows(e, z), x.flatten(-2), emb)
        return torch.tanh(self.score_net(inp)).view_as(x)

    @torch.no_grad()
    def update_target(self, tau: float) -> None:
        torch._foreach_lerp_(list(self.Qs_target.parameters()), list(self.Qs.parameters()), tau)


def mismatch(saved: dict, own: dict) -> str | None:
    """One sentence naming the first tensor of a checkpoint's networks that this model has in
    another shape, does not have, or lacks (None if there is none)."""
    fix = ("it was made with other network settings than this run's: give the settings it "
           "was trained with (its run folder's config.yaml), or another checkpoint.")
    for k, v in saved.items():
        if torch.is_tensor(v) and k in own and tuple(v.shape) != tuple(own[k].shape):
            return (f"The checkpoint's {k} has shape {tuple(v.shape)} but this run's network "
                    f"has {tuple(own[k].shape)}: {fix}")
    extra = [k for k in saved if k not in own]
    if extra:
        return f"The checkpoint holds {extra[0]}, which this run's network does not have: {fix}"
    missing = [k for k in own if k not in saved]
    if missing:
        more = f" and {len(missing) - 1} more tensors" if len(missing) > 1 else ""
        return f"The checkpoint lacks {missing[0]}{more} of this run's network: {fix}"
    return None


def refuse_non_finite(saved: dict) -> None:
    """CheckpointError naming the first tensor of a checkpoint's networks that holds NaN or
    infinite values: a diverged run's weights would act and evaluate as nonsense."""
    from mbdpo.checkpoint import CheckpointError
    for k, v in saved.items():
        if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all():
            bad = int((~torch.isfinite(v)).sum())
            raise CheckpointError(
                f"The checkpoint's {k} holds {bad:,} NaN or infinite values of {v.numel():,}: "
                "its run diverged before it was saved; use an earlier checkpoint of that run "
                "(models/<step>.pt) or train again.")


def add_seed_dim(saved: dict, own: dict) -> dict:
    """A state dict written before tensors had a seed dimension (a run of one seed) in the
    layout of ``own``: each tensor that lacks the leading dimension of its counterpart gains
    it; other entries pass unchanged."""
    out = dict(saved)
    for k, v in saved.items():
        mine = own.get(k)
        if torch.is_tensor(v) and mine is not None and mine.dim() == v.dim() + 1 and \
                mine.shape[0] == 1 and tuple(mine.shape[1:]) == tuple(v.shape):
            out[k] = v.unsqueeze(0)
    return out
