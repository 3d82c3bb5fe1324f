"""Where a cartpole checkpoint's return goes, and what its value sees of the cart's position.

    python benchmarks/cartpole_reward.py checkpoint=PATH episodes=3
    python benchmarks/cartpole_reward.py checkpoint=PATH prior=true   # the policy prior's mean

dm_control's cartpole reward is upright x centered x small_control x small_velocity, each in
[0, 1] (centered and small_velocity in [0.5, 1], small_control in [0.8, 1]). For each episode
(the start states of the checkpoint's own evaluation) it prints the return lost to each factor
(1000 x the mean shortfall of the factor; their sum is close to 1000 - return), the mean |a|
and |x|; then Q(z, pi(z)) and the planner's first action at upright, still states across the
cart's position x: the states where centring pays.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from probe import PriorMean, load_run, parse  # noqa: E402

from mbdpo.trainers.evaluate import run_episodes  # noqa: E402


def factors(obs: np.ndarray, action: np.ndarray) -> dict:
    """The reward factors of dm_control's cartpole at observations (L, 5) = (x, cos, sin,
    x', theta') after actions (L,)."""
    from dm_control.utils import rewards
    return {"upright": (obs[:, 1] + 1) / 2,
            "centered": (1 + rewards.tolerance(obs[:, 0], margin=2)) / 2,
            "small_control": (4 + rewards.tolerance(action, margin=1, value_at_margin=0,
                                                    sigmoid="quadratic")) / 5,
            "small_velocity": (1 + rewards.tolerance(obs[:, 4], margin=5)) / 2}


def main():
    args = parse(sys.argv[1:])
    path = args.pop("checkpoint")
    n, prior = int(args.pop("episodes", "3")), args.pop("prior", "false") == "true"
    torch.set_num_threads(int(args.pop("threads", "1")))
    state, cfg, agent, envs, seed = load_run(path, args, n)
    if not str(cfg.task).startswith("cartpole"):
        sys.exit(f"error: {path} is a {cfg.task} checkpoint; this reads cartpole ones.")
    out = run_episodes(PriorMean(agent) if prior else agent, envs, seed=seed, record=True)
    print(f"{cfg.task}, {path} (step {state.get('step', 0):,}), acting with the "
          f"{'policy prior mean' if prior else 'planner'}")
    print(f"{'return':>7}  {'lost to: upright':>16} {'centered':>9} {'control':>8} "
          f"{'velocity':>9}  {'|a|':>6} {'|x|':>6} {'max|x|':>6}")
    for ep in out["episodes"]:
        obs, a = ep["obs"][1:], ep["action"][:, 0]
        lost = {k: 1000 * (1 - v).mean() for k, v in factors(obs, a).items()}
        print(f"{ep['reward'].sum():7.1f}  {lost['upright']:16.1f} {lost['centered']:9.1f} "
              f"{lost['small_control']:8.1f} {lost['small_velocity']:9.1f}  "
              f"{np.abs(a).mean():6.3f} {np.abs(obs[:, 0]).mean():6.3f} "
              f"{np.abs(obs[:, 0]).max():6.2f}")
    m = agent.model
    m.eval()
    xs = torch.linspace(-1.5, 1.5, 13)
    obs = torch.zeros(len(xs), 5)
    obs[:, 0], obs[:, 1] = xs, 1.0  # upright and still, the cart at x
    with torch.no_grad():
        z = m.encode(obs[None], None)  # the agent's one seed
        q = m.Q_avg(z, m.pi(z, None)[0], None)[0]
        first = agent.act(obs[None], torch.ones(1, len(xs), dtype=torch.bool), eval_mode=True,
                          stream="probe")[0, :, 0]
    print("upright, still states:  x " + " ".join(f"{x:+6.2f}" for x in xs.tolist()))
    print("  Q(z, pi(z))            " + " ".join(f"{v:6.1f}" for v in q.tolist()))
    print("  planner's first action " + " ".join(f"{v:+6.2f}" for v in first.tolist()))


if __name__ == "__main__":
    main()
