"""The networks of ALGORITHM.md §1 and nothing else.

Every method that takes a task takes its *embedding* ``e`` (rows aligned with the other
inputs, or None for a single-task model): callers look it up once with ``embed(task)``.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from mbdpo import math as m
from mbdpo.nn import (ConvEncoder, Ensemble, SimNorm, mlp, stack_hidden, stacked_hidden,
                      time_embedding)


class WorldModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        A, L, T = cfg.action_dim, cfg.latent_dim, cfg.task_dim
        hid = [cfg.mlp_dim, cfg.mlp_dim]
        if cfg.multitask:
            self.task_emb = nn.Embedding(len(cfg.tasks), T, max_norm=1)
            nn.init.uniform_(self.task_emb.weight, -0.02, 0.02)
            masks = torch.zeros(len(cfg.tasks), A)
            for i, a in enumerate(cfg.action_dims):
                masks[i, :a] = 1
        else:
            self.task_emb = None
            masks = torch.ones(1, A)
        self.register_buffer("action_masks", masks)
        if cfg.obs == "rgb":
            self.encoder = ConvEncoder(cfg.obs_shape[0], cfg.num_channels, L, cfg.simnorm_dim)
        else:
            self.encoder = mlp(cfg.obs_dim + T, [cfg.enc_dim] * (cfg.num_enc_layers - 1), L,
                               last_act=SimNorm(cfg.simnorm_dim))
        self.dynamics = mlp(L + A + T, hid, L, last_act=SimNorm(cfg.simnorm_dim))
        self.reward_head = mlp(L + A + T, hid, cfg.num_bins, zero_last=True)
        self.termination_head = mlp(L + T, hid, 1) if cfg.episodic else None
        self.pi_head = mlp(L + T, hid, 2 * A)
        self.energy_head = mlp(L + A + T, hid, 1, zero_last=True)
        self.Qs = Ensemble(cfg.num_q, L + A + T, hid, cfg.num_bins, dropout=cfg.dropout)
        self.Qs_target = copy.deepcopy(self.Qs).requires_grad_(False)
        self.score_net = None
        if cfg.use_score_network:
            H = cfg.horizon
            self.score_net = mlp(L + T + H * A + cfg.diffusion_time_embed_dim, hid, H * A)
        self.two_hot = m.TwoHot(cfg.num_bins, cfg.vmin, cfg.vmax)
        self.energy_stats = m.RunningMeanStd(cfg.energy_momentum, cfg.energy_clip)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.two_hot.bins = fn(self.two_hot.bins)
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        self.Qs_target.train(False)
        return self

    # -- inputs -------------------------------------------------------------------------
    def embed(self, task: torch.Tensor | None) -> torch.Tensor | None:
        """Task ids (...,) -> embeddings (..., task_dim), or None for a single-task model."""
        return None if self.task_emb is None else self.task_emb(task)

    def action_mask(self, task: torch.Tensor | None) -> torch.Tensor | None:
        return None if task is None or self.task_emb is None else self.action_masks[task]

    @staticmethod
    def _cat(*xs):
        return torch.cat([x for x in xs if x is not None], dim=-1)

    @staticmethod
    def _rows(e, like):
        """Broadcast an embedding (N, T) over the leading dims of ``like`` (..., N, D)."""
        return None if e is None else e.expand(*like.shape[:-1], e.shape[-1])

    # -- the model ----------------------------------------------------------------------
    def encode(self, obs: torch.Tensor, e: torch.Tensor | None) -> torch.Tensor:
        if self.cfg.obs == "rgb":
            return self.encoder(obs)
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
        h = stacked_hidden(x.reshape(-1, x.shape[-1]), heads)
        h = h.view(h.shape[0], *x.shape[:-1], h.shape[-1])  # (2 or 3, ..., hidden)
        r = self.two_hot.decode(self.reward_head[-1](h[1]))
        f = self.energy_stats(self.energy_head[-1](h[2]).squeeze(-1)) if len(h) > 2 else None
        return r, f, self.dynamics[-1](h[0])

    def termination_logit(self, z, e):
        return self.termination_head(self._cat(z, self._rows(e, z))).squeeze(-1)

    def pi(self, z, e, mask=None):
        """Squashed-Gaussian policy prior: (action sample, scaled log-prob (..., 1), mean
        action). The scaled log-prob is the Gaussian log-prob of the sample before the tanh,
        summed over the used action dimensions, times their number: minus TD-MPC2's "scaled
        entropy", the policy loss's entropy term. Masked action dimensions are zero."""
        mean, log_std = self.pi_head(self._cat(z, self._rows(e, z))).chunk(2, dim=-1)
        action, log_prob, mu = m.squashed_gaussian(mean, log_std, self.cfg.log_std_min,
                                                   self.cfg.log_std_max, mask=mask)
        dims = mean.shape[-1] if mask is None else mask.sum(-1, keepdim=True)
        return action, log_prob * dims, mu

    def pi_mean(self, z, e, mask=None):
        """The policy prior's mean action tanh(mean), drawing no noise (masked dims zero)."""
        mean = self.pi_head(self._cat(z, self._rows(e, z))).chunk(2, dim=-1)[0]
        mu = torch.tanh(mean.float())
        return mu if mask is None else mu * mask

    def Q_logits(self, z, a, e, idx=None, target=False, detach=False):
        """Logits of the ensemble members ``idx`` (all when None): (n, ..., num_bins)."""
        x = self._cat(z, a, self._rows(e, z))
        lead = x.shape[:-1]
        net = self.Qs_target if target else self.Qs
        out = net(x.reshape(-1, x.shape[-1]), idx, detach=detach)
        return out.view(out.shape[0], *lead, -1)

    def Q_two(self, z, a, e, target=False, detach=False):
        """Values of two ensemble members drawn at random: (2, ...)."""
        # argsort of uniform draws: a random permutation from the graph-safe generator
        idx = torch.rand(self.cfg.num_q, device=z.device).argsort()[:2]
        return self.two_hot.decode(self.Q_logits(z, a, e, idx, target=target, detach=detach))

    def Q_avg(self, z, a, e, detach=False):
        return self.Q_two(z, a, e, detach=detach).mean(0)

    def Q_min_target(self, z, a, e):
        return self.Q_two(z, a, e, target=True).min(0).values

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
