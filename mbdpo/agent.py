"""MBDPO: acting with the diffusion planner, and one update with the losses of docs/algorithm.md §2.

One agent holds S seeds (``seeds``; S = 1 in an ordinary run): S independent sets of weights,
optimiser moments, running statistics and random streams, stacked along a leading seed
dimension, so that one action plans for all S and one update steps all S. Inputs and outputs
lead with that dimension: ``act(obs (S, E, ...))``, ``update(batch (S, H+1, B, ...))``, losses
(S,). Seed s behaves as the single run of seed s: its weights start from its own seed, its
random numbers come from its own stream (``mbdpo/noise.py``), and its gradient norm is
clipped on its own."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mbdpo import distributed, execution
from mbdpo.config import amp_dtype
from mbdpo.math import RunningScale
from mbdpo.planner import DiffusionPlanner
from mbdpo.world_model import WorldModel


class MBDPO:
    def __init__(self, cfg, seeds=None):
        self.cfg = cfg
        self.seeds = [int(cfg.seed)] if seeds is None else [int(s) for s in seeds]
        self.S = len(self.seeds)
        self.device = torch.device(cfg.device)
        execution.set_matmul_precision(cfg.get("matmul_precision", "high"), self.device)
        self.model = WorldModel(cfg, self.seeds).to(self.device)
        self.planner = DiffusionPlanner(cfg, self.model).to(self.device)
        m = self.model
        enc = list(m.encoder.parameters())
        enc_ids = {id(p) for p in enc}
        pi_ids = {id(p) for p in m.pi_head.parameters()}
        target_ids = {id(p) for p in m.Qs_target.parameters()}
        rest = [p for p in m.parameters()
                if id(p) not in enc_ids | pi_ids | target_ids]
        self.wm_params = enc + rest
        # eager, compiled, CUDA graphs or both (mbdpo/execution.py); in graphs the optimisers
        # step without host syncs
        self.paths = execution.paths(cfg, self.device)
        self.graphs = self.paths.graphs
        # Adam's fused kernel on a GPU: one multi-tensor kernel per step instead of the foreach
        # path's ~dozen launches. Not on the CPU, though 3x faster there: its vectorised body
        # and scalar tail round differently, so a seed's slice of a batched parameter stepped
        # otherwise than the same seed's own run (tests/test_seed_runs.py failed with it)
        self.fused = True if self.device.type == "cuda" else None
        self.optim = torch.optim.Adam(
            [{"params": enc, "lr": cfg.lr * cfg.enc_lr_scale}, {"params": rest}], lr=cfg.lr,
            capturable=self.graphs, fused=self.fused)
        self.pi_optim = torch.optim.Adam(m.pi_head.parameters(), lr=cfg.lr, eps=1e-5,
                                         capturable=self.graphs, fused=self.fused)
        self.scale = RunningScale(cfg.tau, self.S).to(self.device)
        self.discounts = torch.tensor(list(cfg.discounts), device=self.device)
        self.rho = cfg.rho ** torch.arange(cfg.horizon + 1, device=self.device, dtype=torch.float)
        self.warm: dict[str, torch.Tensor] = {}  # last plan per stream ('train', 'eval')
        # read once: an OmegaConf lookup costs ~12 us, act() runs every environment step
        self.action_noise = float(cfg.diffusion_action_noise)
        # precision: bf16 autocast of the update's forward pass (weights, optimiser state,
        # losses, two-hot decoding and statistics stay fp32); plan_precision: the same for the
        # planner's rollouts, fp32 by default: bf16's error on an imagined return exceeds the
        # return's spread over the last denoising steps' candidates (docs/performance.md, Precision)
        self.amp_dtype = amp_dtype(cfg.get("precision", "fp32"), self.device)
        self.plan_amp_dtype = amp_dtype(cfg.get("plan_precision", "fp32"), self.device)
        data_parallel = distributed.active()
        self.plan_fn, self.update_fn = execution.accelerate(self, self.paths, data_parallel)
        self.model_losses, self.pi_loss = self._model_losses, self._pi_loss
        if data_parallel:
            self._data_parallel()

    def _data_parallel(self) -> None:
        """Under torchrun: the world-model losses and the policy loss become the forward of two
        DistributedDataParallel modules, which average the gradients of every process's share
        of the batch (and start every process from rank 0's weights)."""
        from torch.nn.parallel import DistributedDataParallel as DDP
        m = self.model
        distributed.broadcast_state(m)  # the target Qs and statistics too, not only DDP's
        trained = [c for n, c in m.named_children() if n not in ("pi_head", "Qs_target")
                   and any(p.requires_grad for p in c.parameters())]
        ids = None if self.device.type == "cpu" else [self.device]
        self._wm_ddp = DDP(_Forward(self._model_losses, trained), device_ids=ids)
        self._pi_ddp = DDP(_Forward(self._pi_loss, [m.pi_head]), device_ids=ids)
        self.model_losses, self.pi_loss = self._wm_ddp, self._pi_ddp

    def autocast(self, plan: bool = False):
        """The update's autocast context (the planner's with ``plan``)."""
        dtype = self.plan_amp_dtype if plan else self.amp_dtype
        return torch.autocast(self.device.type, dtype=dtype or torch.bfloat16,
                              enabled=dtype is not None)

    @property
    def noise(self):
        """The seeds' random streams (``mbdpo/noise.py``)."""
        return self.model.noise

    # -- acting ---------------------------------------------------------------------------
    def _discount(self, task, n):
        """Discounts (S, n) of tasks (S, n) (of the single task when None)."""
        if task is None:
            return self.discounts[0].expand(self.S, n)
        return self.discounts[task]

    @torch.no_grad()
    def act(self, obs: torch.Tensor, t0: torch.Tensor, task: torch.Tensor | None = None,
            eval_mode: bool = False, stream: str = "train") -> torch.Tensor:
        """Actions (S, E, A) for E observations per seed, obs (S, E, ...). ``t0`` (S, E) bool
        marks the first step of an episode (the warm start is reset there); task (S, E)."""
        m = self.model
        m.eval()
        obs = obs.to(self.device, non_blocking=True)
        task = None if task is None else task.to(self.device, non_blocking=True)
        if obs.shape[0] != self.S:
            raise ValueError(f"act() takes observations (seeds, envs, ...) for the agent's "
                             f"{self.S} seed(s); got shape {tuple(obs.shape)}")
        E = obs.shape[1]
        prev = self.warm.get(stream)
        if prev is None or prev.shape[:3] != (self.S, E, self.planner.H):
            warm = torch.zeros(self.S, E, self.planner.H, self.cfg.action_dim,
                               device=self.device)
        else:  # last plan shifted by one step, zero-padded; zeros at t = 0
            warm = torch.cat([prev[:, :, 1:], torch.zeros_like(prev[:, :, :1])], 2)
            warm = warm * (~t0.to(self.device, non_blocking=True)).float()[..., None, None]
        plan = self.plan_fn(obs, warm, task)
        self.warm[stream] = plan
        a = plan[:, :, 0]
        if not eval_mode:
            a = (a + self.action_noise * self.noise.randn_like(a)).clamp(-1, 1)
            mask = m.action_mask(task)
            if mask is not None:
                a = a * mask
        m.train()
        return a

    def _plan(self, obs, warm, task):
        """Encode, then denoise from the warm start: the plan (S, E, H, A)."""
        m = self.model
        e, mask = m.embed(task), m.action_mask(task)
        with self.autocast(plan=True):
            z = m.encode(obs, e)
            if self.cfg.score_only_inference:
                return self.planner.plan_with_score_net(z, e, mask, warm).float()
            return self.planner.plan(z, e, mask, self._discount(task, obs.shape[1]),
                                     warm).float()

    # -- learning -------------------------------------------------------------------------
    def update(self, batch: dict) -> dict:
        """One update of every seed on its batch: obs (S, H+1, B, ...), action (S, H, B, A),
        reward (S, H, B), terminated (S, H, B), task (S, B) or None. Returns the losses, each
        (S,) (no sync)."""
        batch = {k: (v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v)
                 for k, v in batch.items()}
        return self.update_fn(batch["obs"], batch["action"], batch["reward"],
                              batch["terminated"], batch.get("task"))

    def diagnostics(self, obs, action, reward, terminated, task=None, seed: int = 0) -> dict:
        """The paper's diagnostics (``diagnostics_per_seed``) on one episode the agent's seed
        ``seed`` (its index in ``seeds``) acted in: obs (L+1, ...), action (L, A), reward
        (L,), terminated (L,). Every seed's networks see the episode (one batched call)."""
        S = self.S

        def every(x):
            return torch.as_tensor(x)[None].expand(S, *x.shape)
        return self.diagnostics_per_seed(every(obs), every(action), every(reward),
                                         every(terminated), task)[seed]

    @torch.no_grad()
    def diagnostics_per_seed(self, obs, action, reward, terminated, task=None) -> list[dict]:
        """The paper's diagnostics (Figs. 3, 21, 22) of each seed on an episode of the same
        length it acted in: obs (S, L+1, ...), action (S, L, A), reward (S, L), terminated
        (S, L); one dict per seed. With Q = the mean of every ensemble member and Q' = that of
        the targets, in eval mode; the run's random streams are untouched:
        ``td_error``: mean |Q(z_t, a_t) - (r_t + gamma Q'(z_t+1, mu_pi(z_t+1)))|, the TD error
        with the policy prior's actions, the policy the value is trained with;
        ``cross_td_error``: the same with the action the agent (the planner) took next,
        a_t+1, in place of mu_pi(z_t+1): the value's TD error on the acting policy's own
        trajectory (t < L-1);
        ``action_drift``: mean over steps and used action dimensions of |a_t - mu_pi(z_t)|,
        how far the planner's actions are from the policy prior's;
        ``elite_spread``: the planner's elites' spread around their weighted mean at the last
        denoising step (root mean squared distance per action entry), planning from a cold
        start at up to 8 states of the episode: how concentrated its search ends."""
        m = self.model
        was = m.training
        m.eval()
        try:
            dev, S = self.device, self.S
            obs, action = obs.to(dev).float(), action.to(dev).float()
            reward, term = reward.to(dev).float(), terminated.to(dev).float()
            L = action.shape[1]
            t = None if task is None else torch.full((S, L + 1), int(task), device=dev)
            e, mask = m.embed(t), m.action_mask(t)
            z = m.encode(obs, e)  # (S, L+1, latent)
            e0 = None if e is None else e[:, :L]
            e1 = None if e is None else e[:, 1:]
            mu = m.pi_mean(z, e, mask)  # (S, L+1, A)

            def q(zz, a, ee, target=False):
                return m.two_hot.decode(m.Q_logits(zz, a, ee, target=target)).mean(1)

            disc = self._discount(None if task is None else t[:, :1], 1)  # (S, 1)
            now = q(z[:, :L], action, e0)
            boot = disc * (1 - term)
            td = (now - (reward + boot * q(z[:, 1:], mu[:, 1:], e1, target=True))).abs()
            cross = (now[:, :-1] - (reward[:, :-1] + boot[:, :-1] * q(
                z[:, 1:L], action[:, 1:], None if e is None else e[:, 1:L], target=True))).abs()
            used = action.shape[-1] if mask is None else mask[:, :L].sum(-1)
            drift = ((action - mu[:, :L]).abs().sum(-1) / used).mean(1)
            # the planner from a cold start at up to 8 states of the episode, its random
            # numbers drawn in a fork of the streams
            pick = torch.linspace(0, L - 1, min(8, L), device=dev).round().long()
            H, A = self.planner.H, action.shape[-1]
            forked = [dev.index or 0] if dev.type == "cuda" else []
            with torch.random.fork_rng(devices=forked), self.noise.fork(), \
                    self.autocast(plan=True):
                _, spread = self.planner.plan(
                    z[:, pick], None if e is None else e[:, pick], None if mask is None else
                    mask[:, pick], self._discount(None if t is None else t[:, pick], len(pick)),
                    torch.zeros(S, len(pick), H, A, device=dev), spread=True)
            rows = torch.stack([td.mean(1), cross.mean(1), drift, spread.mean(1)], 1).tolist()
            return [{"td_error": r[0], "cross_td_error": r[1], "action_drift": r[2],
                     "elite_spread": r[3]} for r in rows]
        finally:
            m.train(was)

    def _update(self, obs, action, reward, terminated, task):
        m, cfg = self.model, self.cfg
        m.train()
        e, mask = m.embed(task), m.action_mask(task)
        with self.autocast():
            total, zs, out = self.model_losses(obs, action, reward, terminated, task, e, mask)

        # 4. world-model step (the seeds' losses are independent: the gradient of their sum
        # is each seed's own)
        self.optim.zero_grad(set_to_none=True)
        total.sum().backward()
        out["grad_norm"] = clip_grad_norm_per_seed(self.wm_params, cfg.grad_clip_norm)
        self.optim.step()

        # 5. policy prior step on detached latents
        out["pi_loss"] = self._pi_step(zs.detach(), None if e is None else e.detach(), mask)

        # 6. target network
        m.update_target(cfg.tau)
        out["total_loss"] = total.detach()
        # the running statistics the planner and the policy loss read, as they are now
        out["q_scale"] = self.scale.value.clone()
        out["energy_mean"] = m.energy_stats.mean.clone()
        out["energy_std"] = m.energy_stats.std.clone()
        return {k: v.detach() for k, v in out.items()}

    def _model_losses(self, obs, action, reward, terminated, task, e, mask):
        """Steps 1-3 of §2: the weighted sum of the world-model losses (S,) (fp32), the latent
        rollout (S, H+1, B, L) and the losses by name, each (S,)."""
        m, cfg, H = self.model, self.cfg, self.cfg.horizon
        disc = self._discount(task, obs.shape[2]).unsqueeze(1)  # (S, 1, B)
        rho = self.rho[:H]

        # 1. targets
        with torch.no_grad():
            next_z = m.encode(obs[:, 1:], e)  # (S, H, B, L)
            a_next, _, _ = m.pi(next_z, e, mask)
            td = reward + disc * (1 - terminated) * m.Q_min_target(next_z, a_next, e)

        # 2. latent rollout
        zs = [m.encode(obs[:, 0], e)]
        for t in range(H):
            zs.append(m.next(zs[-1], action[:, t], e))
        zs = torch.stack(zs, 1)  # (S, H+1, B, L)
        _zs = zs[:, :-1]

        def weighted(per_step):  # (S, H, B) -> Σ_t ρ^t mean_b / H per seed, in fp32
            return (per_step.float().mean(2) * rho).sum(1) / H

        # 3. losses
        consistency = weighted((zs[:, 1:].float() - next_z.float()).pow(2).mean(-1))
        reward_loss = weighted(m.two_hot.soft_ce(m.reward_logits(_zs, action, e), reward))
        q_logits = m.Q_logits(_zs, action, e)  # (S, num_q, H, B, bins)
        value_loss = weighted(m.two_hot.soft_ce(q_logits, td.unsqueeze(1)).mean(1))
        total = (cfg.consistency_coef * consistency + cfg.reward_coef * reward_loss
                 + cfg.value_coef * value_loss)
        out = {"consistency_loss": consistency, "reward_loss": reward_loss,
               "value_loss": value_loss, "td_target": td.mean((1, 2))}
        if m.termination_head is not None:
            term_loss = weighted(F.binary_cross_entropy_with_logits(
                m.termination_logit(zs[:, 1:], e).float(), terminated, reduction="none"))
            total = total + cfg.termination_coef * term_loss
            out["termination_loss"] = term_loss
        energy_loss = self._energy_loss(_zs, action, e, mask, weighted)
        total = total + cfg.energy_coef * energy_loss
        out["energy_loss"] = energy_loss
        if m.score_net is not None:
            score_loss = self._score_loss(zs[:, 0].detach(), e, mask, disc[:, 0], action)
            total = total + cfg.score_loss_coef * score_loss
            out["score_loss"] = score_loss
        return total, zs, out

    def _energy_loss(self, z, action, e, mask, weighted):
        """Logistic classifier F: replay actions are positives; the hardest of three
        candidates (a policy sample, it plus noise, a uniform action) is the negative. F reads
        detached latents and task embeddings: this loss trains F alone. z (S, H, B, L)."""
        m, noise = self.model, self.noise
        z, e = z.detach(), None if e is None else e.detach()
        with torch.no_grad():
            a_pi, _, _ = m.pi(z, e, mask)
            negs = torch.stack([
                a_pi, (a_pi + self.cfg.energy_neg_noise * noise.randn_like(a_pi)).clamp(-1, 1),
                noise.rand_like(a_pi) * 2 - 1], 1)  # (S, 3, H, B, A)
            if mask is not None:
                negs = negs * m._rows(mask, negs)
            # choose the hardest candidate without a graph, then score only it and the
            # positive with one: the same logits and gradient as a backward through all
            # four sets, whose unchosen rows carry zero gradient (a quarter less work)
            hardest = m.energy_logit(z.unsqueeze(1).expand(-1, 3, *z.shape[1:]), negs,
                                     e).argmax(1, keepdim=True)  # (S, 1, H, B)
            a_neg = torch.gather(negs, 1, hardest.unsqueeze(-1).expand(
                -1, 1, *negs.shape[2:]))
        logits = m.energy_logit(z.unsqueeze(1).expand(-1, 2, *z.shape[1:]),
                                torch.cat([action.unsqueeze(1), a_neg], 1), e)  # (S, 2, H, B)
        m.energy_stats.update(logits)  # the logits that enter the loss
        pos, neg = logits[:, 0].float(), logits[:, 1].float()
        loss = 0.5 * (F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos), reduction="none")
                      + F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg),
                                                           reduction="none"))
        return weighted(loss)

    def _score_loss(self, z, e, mask, disc, action):
        """Regression on the Monte-Carlo targets, parametrised by the denoised mean X̄ (the
        score is an affine function of it at each τ); per seed (S,)."""
        x0 = action.transpose(1, 2)  # (S, B, H, A): the replay plans
        x_tau, tau, x_bar = self.planner.score_targets(z, e, mask, disc, x0)
        err = (self.model.denoised_mean(z, e, x_tau, tau).float() - x_bar.float()).pow(2)
        return err.reshape(err.shape[0], -1).mean(1)

    def _pi_loss(self, zs, e, mask):
        """The policy prior's loss (S,) on detached latents (S, H+1, B, L); updates the Q
        scale."""
        m, cfg = self.model, self.cfg
        with self.autocast():
            a, scaled_log_prob, _ = m.pi(zs, e, mask)
            q = m.Q_avg(zs, a, e, detach=True)  # (S, H+1, B), fp32
        self.scale.update(q[:, 0])
        q = self.scale(q)
        # maximise scaled Q plus the entropy bonus (TD-MPC2's scaled entropy = -scaled_log_prob)
        return ((cfg.entropy_coef * scaled_log_prob.float().squeeze(-1) - q).mean(2)
                * self.rho).mean(1)

    def _pi_step(self, zs, e, mask):
        loss = self.pi_loss(zs, e, mask)
        self.pi_optim.zero_grad(set_to_none=True)
        loss.sum().backward()
        clip_grad_norm_per_seed(list(self.model.pi_head.parameters()), self.cfg.grad_clip_norm)
        self.pi_optim.step()
        return loss.detach()

    # -- state ------------------------------------------------------------------------------
    def unmade_moments(self) -> tuple[int, int]:
        """(bytes, tensors) one seed's checkpoint will gain when the optimisers make their
        state at the first update (Adam: two moments per parameter and a step counter)."""
        size = count = 0
        for opt in (self.optim, self.pi_optim):
            for group in opt.param_groups:
                for p in group["params"]:
                    if p not in opt.state:
                        size += 2 * p.numel() * p.element_size() // self.S + 4
                        count += 3
        return size, count

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optim": self.optim.state_dict(),
                "pi_optim": self.pi_optim.state_dict(), "scale": self.scale.state_dict(),
                "warm": dict(self.warm), "noise": self.noise.state_dict(),
                "seeds": list(self.seeds)}

    def load_state_dict(self, state: dict) -> None:
        """The state of an agent with as many seeds (a checkpoint from before the seed
        dimension counts as one seed)."""
        saved = state.get("seeds")
        if saved is not None and len(saved) != self.S:
            raise ValueError(f"the checkpoint holds {len(saved)} seeds ({saved}) but this agent "
                             f"has {self.S} ({self.seeds})")
        self.model.load_state_dict(state["model"])
        for opt, name in ((self.optim, "optim"), (self.pi_optim, "pi_optim")):
            opt.load_state_dict(_optim_with_seed_dim(state[name], opt))
            set_step_flags(opt, self.graphs, self.device, self.fused)  # a checkpoint from a
            # CPU run on a GPU, or back, or from before the fused kernel
        for fn in execution.graphed((self.update_fn, self.plan_fn)):  # graphs hold the old
            fn.reset()                                                   # optimiser state
        self.scale.load_state_dict(state["scale"])
        self.warm = {k: (v if v.dim() == 4 else v.unsqueeze(0)).to(self.device)
                     for k, v in state.get("warm", {}).items()}
        if "noise" in state:  # (older checkpoints: the streams start from the seeds)
            self.noise.load_state_dict(state["noise"])


def _optim_with_seed_dim(state: dict, opt: torch.optim.Optimizer) -> dict:
    """An optimiser state from before the seed dimension with its moments given it."""
    params = [p for g in opt.param_groups for p in g["params"]]
    out = {**state, "state": {}}
    for i, st in state["state"].items():
        p = params[int(i)] if int(i) < len(params) else None
        out["state"][i] = {k: (v.unsqueeze(0) if p is not None and torch.is_tensor(v)
                               and v.dim() + 1 == p.dim() and tuple(v.shape) == tuple(
                                   p.shape[1:]) else v) for k, v in st.items()}
    return out


def clip_grad_norm_per_seed(params, max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` for each seed on its own: params lead with the seed
    dimension, and seed s's gradients are scaled by min(1, max_norm / ||g_s||) with ||g_s||
    the norm of its slices of all of them. Returns the norms before clipping (S,). (PyTorch
    clips a whole tensor list by one norm; there is no per-slice form.)"""
    grads = [p.grad for p in params if p.grad is not None]
    S = grads[0].shape[0]
    # each slice's norm on its own (foreach: one kernel for all of them on a GPU), so that a
    # seed's norm is the same number whatever the other seeds hold
    norms = torch._foreach_norm([g[s] for s in range(S) for g in grads])
    total = torch.stack([torch.linalg.vector_norm(torch.stack(norms[s * len(grads):(s + 1) * len(
        grads)])) for s in range(S)])
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for s in range(S):  # one multi-tensor kernel per seed on a GPU (not one per parameter)
        torch._foreach_mul_([g[s] for g in grads], coef[s])
    return total


def one_seed(state: dict, i: int) -> dict:
    """Seed ``i``'s part of a batched agent's ``state_dict()``: the state of a one-seed agent
    (what the single run of that seed would save). A one-seed agent draws from torch's default
    generator: seed i's own stream is under ``"stream"``, for the checkpoint's random state."""
    from mbdpo.world_model import SHARED

    def cut(t):
        return t[i:i + 1].clone()
    model = {k: (v.clone() if k.rsplit(".", 1)[-1] in SHARED else cut(v))
             for k, v in state["model"].items()}

    def optim(st):
        return {**st, "state": {k: {n: (cut(v) if n != "step" else v.clone())
                                    for n, v in s.items()} for k, s in st["state"].items()}}
    scale = {k: (cut(v) if k == "value" else v.clone()) for k, v in state["scale"].items()}
    out = {"model": model, "optim": optim(state["optim"]), "pi_optim": optim(state["pi_optim"]),
           "scale": scale, "warm": {k: cut(v) for k, v in state["warm"].items()},
           "noise": [], "seeds": [state["seeds"][i]]}
    if state["noise"]:  # (one seed: the default generator, saved with the run's streams)
        out["stream"] = state["noise"][i].clone()
    return out


class _Forward(torch.nn.Module):
    """``fn`` as the forward of a module that holds ``nets``, the networks its loss trains
    (DistributedDataParallel synchronises the gradients of a module's parameters)."""

    def __init__(self, fn, nets):
        super().__init__()
        self.nets = torch.nn.ModuleList(nets)
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def set_step_flags(opt: torch.optim.Optimizer, capturable: bool, device,
                   fused: bool | None = None) -> None:
    """Make an optimiser loaded from any checkpoint step the way this agent steps (a
    checkpoint's param groups carry the saving run's flags): with ``capturable`` (inside a CUDA
    graph) or ``fused`` its step counters live on the device, else on the CPU."""
    for group in opt.param_groups:  # (fused and foreach exclude each other)
        group["capturable"], group["fused"], group["foreach"] = capturable, fused, None
    for st in opt.state.values():
        if "step" in st:
            st["step"] = st["step"].to(device if capturable or fused else "cpu", torch.float32)


def stack_seeds(batches: list[dict]) -> dict:
    """One batch per seed (the replay's ``sample()``) -> the batch ``update`` takes, each
    tensor with a leading seed dimension."""
    return {k: (torch.stack([b[k] for b in batches]) if torch.is_tensor(batches[0][k])
                else batches[0][k]) for k in batches[0]}
