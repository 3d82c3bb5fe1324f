"""The model-based diffusion planner (docs/algorithm.md §3) and the score-network sampler (§4).

The planner sees the world model only through ``step`` (reward, energy and next latent of one
imagined step, with the three networks' hidden layers as one batched matmul per layer:
``stacked_heads``), ``termination_logit``, ``Q_avg`` and ``pi``. Shapes: S seeds, E environments (or states) per
seed, K candidates, H horizon, A action dims, L latent dims; every tensor leads with S. Every
candidate of every environment of every seed is evaluated in one batched call per horizon
step; there is no Python loop over candidates, environments or seeds.
"""
from __future__ import annotations

import torch

from mbdpo.config import plan_horizon
from mbdpo.math import row_std


class DiffusionPlanner:
    def __init__(self, cfg, model):
        self.cfg, self.model = cfg, model
        N = cfg.diffusion_steps
        betas = torch.linspace(cfg.diffusion_beta0, cfg.diffusion_betaT, N, dtype=torch.float64)
        alphas = 1 - betas
        self.alphas = alphas.float()
        self.alphas_bar = torch.cumprod(alphas, 0).float()
        self.H, self.A = plan_horizon(cfg), cfg.action_dim
        self.K, self.P = cfg.diffusion_num_samples, cfg.diffusion_num_pi_trajs
        self.num_elites, self.temperature = cfg.diffusion_num_elites, cfg.diffusion_temperature
        self.eta = float(cfg.energy_eta)
        self.to(self.alphas.device)

    def to(self, device) -> "DiffusionPlanner":
        self.alphas, self.alphas_bar = self.alphas.to(device), self.alphas_bar.to(device)
        # (ᾱ_τ, α_τ) of the denoising steps τ = N-1, ..., 1, in the order plan() takes them
        self.schedule = [(self.alphas_bar[i], self.alphas[i])
                         for i in range(len(self.alphas) - 1, 0, -1)]
        return self

    # -- the imagined return -----------------------------------------------------------
    def rollout(self, z, e, discount, mask, heads, X=None, n: int = 0):
        """H imagined steps from the start latents z (S, E, L) of the plans X (S, E, K, H, A),
        or, with X None, of n rollouts of the policy prior (each action drawn from π at the
        latent it reached). Returns (G, w, z_H, plans): G (S, E, K) = Σ_t γ^t [R + η F̂](z_t,
        a_t), w (S, E, K) the weight γ^H of the terminal value (a rollout stops adding once
        the termination head fires: 0 from then on), z_H (S, E, K, L) and the plans rolled
        out (S, E, K, H, A). e: (S, E, 1, T) or None; discount: (S, E, 1); mask: (S, E, 1, A)
        or None; ``heads``: the model's ``stacked_heads()``."""
        model = self.model
        z = z.unsqueeze(2).expand(-1, -1, n if X is None else X.shape[2], -1)
        G = torch.zeros(z.shape[:3], device=z.device)
        gamma = torch.ones_like(discount)
        alive = None
        acts = []
        for t in range(self.H):
            if X is None:
                a = model.pi(z, e, mask)[0]
                acts.append(a)
            else:
                a = X[:, :, :, t]
            r, energy, z = model.step(z, a, e, heads)
            if self.eta:
                r = r + self.eta * energy
            G = G + gamma * (r if alive is None else r * alive)
            gamma = gamma * discount
            if model.termination_head is not None:
                fired = (model.termination_logit(z, e) > 0).float()
                alive = (1 - fired) if alive is None else alive * (1 - fired)
        w = gamma.expand(G.shape) if alive is None else gamma * alive
        return G, w, z, (torch.stack(acts, 3) if X is None else X)

    def policy_rollouts(self, z, e, discount, mask, heads, n: int):
        """n rollouts of the policy prior per environment, up to their terminal value: the
        ``rollout`` of X None and the terminal action π(z_H), a tuple (G, w, z_H, a_H, plans)
        that ``returns`` completes with the Q pair of the step that scores them.

        A denoising step's P policy candidates are fresh draws that do not depend on the plan
        being denoised: ``plan`` draws those of all N-1 steps in one call before it denoises
        (P·(N-1) rows per layer instead of N-1 calls of P rows: on a GPU ~13 fewer kernels
        per step, docs/performance.md). Each step still scores its own P, under its own Q
        pair, with its K-P noisy candidates."""
        G, w, z_H, plans = self.rollout(z, e, discount, mask, heads, n=n)
        return G, w, z_H, self.model.pi(z_H, e, mask)[0], plans

    def returns(self, z: torch.Tensor, X: torch.Tensor, e, discount: torch.Tensor, mask=None,
                pi=None, heads=None, q_pair=None):
        """J(X) = Σ_t γ^t [R + η F̂](z_t, a_t) + γ^H Q_avg(z_H, π(z_H)) of every candidate,
        the terminal values in one call and so under one draw of the Q pair: their ranking is
        never a matter of which ensemble members scored them.

        z: (S, E, L) start latents; X: (S, E, K, H, A) candidate plans; e: (S, E, 1, T) or
        None; discount: (S, E, 1); mask: (S, E, 1, A) or None. ``pi``: policy-prior
        candidates from ``policy_rollouts`` (P per environment), put in front of X and scored
        with it. ``heads``: the model's ``stacked_heads()`` (built here when None).
        ``q_pair``: the two Q-ensemble members (S, 2) of the terminal values (drawn here
        when None). Returns J (S, E, P + K) and the plans it scored (S, E, P + K, H, A).
        """
        model = self.model
        if heads is None:
            heads = model.stacked_heads(energy=bool(self.eta))
        G, w, z_H, X = self.rollout(z, e, discount, mask, heads, X=X)
        a_H = model.pi(z_H, e, mask)[0]  # padded action dimensions masked, as everywhere
        if pi is not None:
            G, w, z_H, a_H, X = (torch.cat(pair, 2) for pair in zip(pi, (G, w, z_H, a_H, X)))
        return G + w * model.Q_avg(z_H, a_H, e, idx=q_pair), X

    # -- one denoising step --------------------------------------------------------------
    def weighted_mean(self, z, e, mask, discount, x, abar, heads, pi=None, q_pair=None,
                      with_spread: bool = False):
        """Draw K candidates around x/sqrt(ᾱ), the first P of them the policy prior's
        rollouts ``pi`` (drawn here when None), score all of them in one call (under the Q
        pair ``q_pair``, drawn here when None), return the
        softmax-weighted mean of the elites X̄ (S, E, H, A). ``abar`` is a scalar or (S, E, 1,
        1, 1); mask is (S, E, 1, A) or None. ``with_spread`` (diagnostics, eager): also the
        elites' spread around X̄ (S, E), the square root of their weighted mean squared
        distance per action entry. The candidates' noise comes from each seed's stream."""
        E = x.shape[1]
        if pi is None and self.P:  # the class's function: the instance's may be compiled
            pi = DiffusionPlanner.policy_rollouts(self, z, e, discount, mask, heads, self.P)
        eps = self.model.noise.randn(E, self.K - self.P, self.H, self.A, device=x.device)
        X = (x.unsqueeze(2) / abar.sqrt() + ((1 - abar) / abar).sqrt() * eps).clamp(-1, 1)
        if mask is not None:
            X = X * mask.unsqueeze(2)
        J, X = self.returns(z, X, e, discount, mask, pi=pi, heads=heads, q_pair=q_pair)
        J = (J - J.mean(-1, keepdim=True)) / (row_std(J, keepdim=True) + 1e-6)
        elite_J, idx = torch.topk(J, self.num_elites, dim=-1)  # (S, E, n_elites)
        elites = torch.gather(X, 2, idx[..., None, None].expand(-1, -1, -1, self.H, self.A))
        w = torch.softmax(elite_J / self.temperature, dim=-1)
        mean = (w[..., None, None] * elites).sum(2)
        if not with_spread:
            return mean
        dev = (elites - mean.unsqueeze(2)).pow(2).mean((3, 4))  # (S, E, n_elites)
        return mean, (w * dev).sum(-1).sqrt()

    # -- the planner -----------------------------------------------------------------------
    @staticmethod
    def _per_env(e, mask, discount):
        """Task embedding (S, E, 1, T), mask (S, E, 1, A) and discount (S, E, 1): broadcast
        over K."""
        return (None if e is None else e.unsqueeze(2), None if mask is None else mask.unsqueeze(2),
                discount.unsqueeze(2))

    @torch.no_grad()
    def plan(self, z, e, mask, discount, mu_warm, spread: bool = False):
        """Denoise from the warm start to a plan. z (S, E, L); e (S, E, T) or None; mask
        (S, E, A) or None; discount (S, E); mu_warm (S, E, H, A). Returns the plan (S, E, H, A)
        in [-1, 1]; with ``spread`` (diagnostics: eager steps) and the elites' spread (S, E) at
        the last step."""
        e, mask, discount = self._per_env(e, mask, discount)
        heads = self.model.stacked_heads(energy=bool(self.eta))  # once per action
        steps = len(self.schedule)
        pis = [None] * steps
        if self.P:  # every step's P policy candidates, drawn in one call
            rolled = self.policy_rollouts(z, e, discount, mask, heads, self.P * steps)
            # (S, E, steps·P, ...) -> one (S, E, P, ...) per step, each contiguous
            pis = list(zip(*(r.unflatten(2, (steps, self.P)).movedim(2, 0).contiguous()
                             for r in rolled)))
        # every step's Q pair, drawn at once: (S, 2) per step, each contiguous
        pairs = self.model.Q_pairs(steps, device=z.device).transpose(0, 1).contiguous().unbind()
        x = self.schedule[0][0].sqrt() * mu_warm
        last = None
        for (abar, alpha), pi, pair in zip(self.schedule, pis, pairs):
            if spread:  # the class's eager step (the instance's may be compiled)
                x_bar, last = DiffusionPlanner.weighted_mean(
                    self, z, e, mask, discount, x, abar, heads, pi, pair, with_spread=True)
                x = self.update_plan(x, x_bar, abar, alpha)
            else:
                x = self.denoise(z, e, mask, discount, x, abar, alpha, heads, pi, pair)
        return (x.clamp(-1, 1), last) if spread else x.clamp(-1, 1)

    def denoise(self, z, e, mask, discount, x, abar, alpha, heads, pi=None, q_pair=None):
        """One denoising step x_τ -> x_τ-1 (ᾱ_τ = abar, α_τ = alpha): the elites' weighted mean
        X̄ (of the K-P noisy candidates and the P policy rollouts ``pi``, scored under the Q
        pair ``q_pair``), the Monte-Carlo score from it, the step. compile=true compiles this
        whole."""
        x_bar = self.weighted_mean(z, e, mask, discount, x, abar, heads, pi, q_pair)
        return self.update_plan(x, x_bar, abar, alpha)

    @classmethod
    def update_plan(cls, x, x_bar, abar, alpha):
        """x_τ-1 = (x_τ + (1 - ᾱ_τ)·ŝ)/sqrt(α_τ), with ŝ the score of X̄."""
        return (x + (1 - abar) * cls.score_from_mean(x, x_bar, abar)) / alpha.sqrt()

    @staticmethod
    def score_from_mean(x, x_bar, abar):
        """ŝ = (sqrt(ᾱ_τ)·X̄ - x_τ)/(1 - ᾱ_τ): the Monte-Carlo score of §3."""
        return (abar.sqrt() * x_bar - x) / (1 - abar)

    @torch.no_grad()
    def plan_with_score_net(self, z, e, mask, mu_warm):
        """score_only_inference: N-1 calls of the score network, no world-model rollouts."""
        x = self.schedule[0][0].sqrt() * mu_warm
        for j, (abar, alpha) in enumerate(self.schedule):
            tau = torch.full(x.shape[:2], len(self.schedule) - j, device=x.device)
            x = self.update_plan(x, self.model.denoised_mean(z, e, x, tau), abar, alpha)
            if mask is not None:
                x = x * mask[:, :, None, :]
        return x.clamp(-1, 1)

    @torch.no_grad()
    def score_targets(self, z, e, mask, discount, x0):
        """Monte-Carlo targets for a batch of B states per seed (§4): τ ~ U[1, N-1], a noisy
        x_τ of the data plans x0 (S, B, H, A), and the return-weighted mean X̄ of candidates
        around it (the score target is score_from_mean(x_τ, X̄, ᾱ_τ)). Returns (x_τ, τ, X̄)."""
        B, N, noise = x0.shape[1], len(self.alphas_bar), self.model.noise
        tau = noise.randint(1, N, (B,), device=x0.device)
        abar = self.alphas_bar[tau][..., None, None]
        x = abar.sqrt() * x0 + (1 - abar).sqrt() * noise.randn_like(x0)
        e, mask, discount = self._per_env(e, mask, discount)
        x_bar = self.weighted_mean(z, e, mask, discount, x, abar[..., None],
                                   self.model.stacked_heads(energy=bool(self.eta)))
        return x, tau, x_bar
