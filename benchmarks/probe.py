"""What a trained single-task agent's model, value and planner do, measured on its own
evaluation episodes: the figures to look at when a learning curve falls short.

    python benchmarks/probe.py checkpoint=logs/cartpole-balance/1/learning/models/final.pt
    python benchmarks/probe.py checkpoint=PATH episodes=3 replans=8 threads=1

Runs ``episodes`` evaluation episodes with the planner (the start states of the checkpoint's
own evaluation at its step) and as many acting with the policy prior's mean action from the
same start states, then, on the planner's episodes:

- reward model: |R(h(s_t), a_t) - r_t|, against the mean reward;
- dynamics: ||d(h(s_t), a_t) - h(s_{t+1})||^2 against the distance between random latents;
- value: Q_avg(z_t, pi(z_t)) against the discounted return-to-go G_t actually obtained (states
  at least 3/(1-gamma) steps before the episode's end), their ratio and correlation;
- action sensitivity of Q: the std of Q(z_t, a) over 32 uniform random actions a;
- planner vs prior: |plan[0] - tanh(mu_pi(z_t))|, and the spread of plan[0] over ``replans``
  plans of the same state (the planner's own noise);
- energy: normalised F of the episode's actions against uniform random ones.

Other key=value pairs are config overrides (e.g. plan_horizon=6, diffusion_num_samples=512).
"""
from __future__ import annotations

import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mbdpo import checkpoint as ckpt  # noqa: E402
from mbdpo.trainers.evaluate import eval_seed, load_agent, run_episodes, task_envs  # noqa: E402
from mbdpo.trainers.task_dims import fill_env_dims  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from learning import key_values  # noqa: E402


def parse(argv):
    args = key_values(argv)
    if "checkpoint" not in args:
        sys.exit("error: pass checkpoint=PATH (a single-task checkpoint).")
    return args


def config(state, overrides: dict):
    """The checkpoint's config (the run's planner settings included) over today's defaults
    (settings added since the run keep their defaults), with ``overrides``."""
    from omegaconf import OmegaConf

    from mbdpo.config import parse_cfg
    defaults = OmegaConf.load(os.path.join(ROOT, "cfgs", "config.yaml"))
    for key in ("defaults", "hydra"):
        defaults.pop(key, None)
    given = OmegaConf.from_dotlist([f"{k}={v}" for k, v in overrides.items()])
    return parse_cfg(OmegaConf.merge(defaults, OmegaConf.create(state["config"]), given))


class PriorMean:
    """Acts with the policy prior's mean action (what the planner is compared against)."""

    def __init__(self, agent):
        self.agent, self.device = agent, agent.device

    @torch.no_grad()
    def act(self, obs, t0, task=None, eval_mode=True, stream="eval"):
        m = self.agent.model
        m.eval()
        z = m.encode(obs.to(self.device), None)
        return m.pi(z, None)[2]


def returns_to_go(rewards: np.ndarray, gamma: float) -> np.ndarray:
    g, out = 0.0, np.zeros_like(rewards)
    for t in range(len(rewards) - 1, -1, -1):
        g = rewards[t] + gamma * g
        out[t] = g
    return out


@torch.no_grad()
def probe(agent, cfg, episodes: dict, replans: int) -> dict:
    m, gamma = agent.model, float(cfg.discounts[0])
    m.eval()
    obs = torch.cat([torch.as_tensor(ep["obs"]) for ep in episodes])
    keep = 3 * int(1 / (1 - gamma))
    rows = {k: [] for k in ("r_err", "r", "dyn", "q", "g", "q_std", "gap", "spread", "f_data",
                            "f_rand")}
    g = torch.Generator().manual_seed(0)
    for ep in episodes:
        o, a, r = (torch.as_tensor(ep[k]) for k in ("obs", "action", "reward"))
        # the agent's one seed: inputs gain the seed dimension, outputs lose it
        z = m.encode(o[None], None)[0]  # (L+1, latent)
        zt = z[:-1]
        rows["r_err"].append((m.reward(zt[None], a[None], None)[0] - r).abs())
        rows["r"].append(r.abs())
        rows["dyn"].append((m.next(zt[None], a[None], None)[0] - z[1:]).pow(2).sum(-1))
        n = max(0, len(r) - keep)
        if n:
            pi_a = m.pi(zt[None, :n], None)[0]
            rows["q"].append(m.Q_avg(zt[None, :n], pi_a, None)[0])
            rows["g"].append(torch.as_tensor(returns_to_go(r.numpy(), gamma)[:n]))
        rand = torch.rand(32, *a.shape, generator=g) * 2 - 1  # (32, L, A)
        rows["q_std"].append(m.Q_avg(zt.expand(1, 32, *zt.shape), rand[None], None)[0].std(0))
        rows["f_data"].append(m.energy(zt[None], a[None], None)[0])
        rows["f_rand"].append(m.energy(zt[None], rand[None, 0], None)[0])
    # the planner against the prior, on 64 states spread over the episodes
    idx = torch.linspace(0, len(obs) - 1, 64).long()
    o = obs[idx]
    mu = m.pi(m.encode(o[None], None), None)[2][0]
    firsts = torch.stack([agent.act(o[None], torch.ones(1, len(o), dtype=torch.bool),
                                    eval_mode=True, stream="probe")[0]
                          for _ in range(replans)])  # (R, 64, A)
    rows["gap"].append((firsts - mu).abs().mean(0))
    rows["spread"].append(firsts.std(0))
    cat = {k: torch.cat([v.flatten().float() for v in vs]) for k, vs in rows.items() if vs}
    dist = (z.unsqueeze(0) - z.unsqueeze(1)).pow(2).sum(-1).mean()  # random latent pairs
    out = {"reward |error|": cat["r_err"].mean().item(), "reward |r|": cat["r"].mean().item(),
           "dynamics error": cat["dyn"].mean().item(), "latent pair distance": dist.item(),
           "Q std over random actions (median)": cat["q_std"].median().item(),
           "|plan[0] - prior mean|": cat["gap"].mean().item(),
           "plan[0] spread over replans": cat["spread"].mean().item(),
           "energy F^ data actions": cat["f_data"].mean().item(),
           "energy F^ random actions": cat["f_rand"].mean().item()}
    if "q" in cat:
        q, G = cat["q"], cat["g"]
        out.update({"Q(z, pi) mean": q.mean().item(), "return-to-go mean": G.mean().item(),
                    "Q / return-to-go": (q.mean() / G.mean()).item(),
                    "corr(Q, return-to-go)": torch.corrcoef(torch.stack([q, G]))[0, 1].item()})
    return out


def load_run(path: str, overrides: dict, n: int):
    """A single-task checkpoint's state, config (``config``), agent, and ``n`` environments
    with the reset seed of the checkpoint's own evaluation at its step."""
    try:
        state = ckpt.load(path)
    except ckpt.CheckpointError as err:
        sys.exit(f"error: {err}")
    cfg = config(state, overrides)
    if cfg.multitask:
        sys.exit(f"error: {path} is a multi-task checkpoint; this reads single-task ones.")
    seed = eval_seed(cfg.seed, state.get("step", 0))
    envs = task_envs(cfg, cfg.task, n, seed)
    fill_env_dims(cfg, envs[0])
    agent = load_agent(cfg, path, state)
    ckpt.seed_everything(cfg.seed)
    return state, cfg, agent, envs, seed


def main():
    args = parse(sys.argv[1:])
    path = args.pop("checkpoint")
    n, replans = int(args.pop("episodes", "3")), int(args.pop("replans", "8"))
    torch.set_num_threads(int(args.pop("threads", "2")))
    state, cfg, agent, envs, seed = load_run(path, args, n)
    step = state.get("step", 0)
    planned = run_episodes(agent, envs, seed=seed, record=True)
    prior = run_episodes(PriorMean(agent), envs, seed=seed)
    figures = probe(agent, cfg, planned["episodes"], replans)
    print(f"{cfg.task}, {path} (step {step:,}), {n} episodes from the start states of its "
          f"evaluation at that step")
    print(f"  {'return, planner':<38} {planned['rewards'].mean():9.1f}  "
          f"({', '.join(f'{r:.0f}' for r in planned['rewards'])})")
    print(f"  {'return, policy prior mean':<38} {prior['rewards'].mean():9.1f}  "
          f"({', '.join(f'{r:.0f}' for r in prior['rewards'])})")
    for k, v in figures.items():
        print(f"  {k:<38} {v:9.3f}")


if __name__ == "__main__":
    main()
