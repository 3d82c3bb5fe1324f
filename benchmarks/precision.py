"""What bf16 does to the planner's ranking on a trained model: the imagined returns J of the
same candidate plans from the same states, scored under the same Q pair in fp32 and in bf16,
at the candidate widths of the first, a middle and the last denoising step.

    python benchmarks/precision.py checkpoint=logs/cartpole-balance/1/learning/models/final.pt

States: 32 spread over one episode acted by the policy prior's mean (from the start state of
the checkpoint's evaluation). Candidates: 128 plans around zero at each width (the spread of
x_tau/sqrt(abar) + sqrt((1-abar)/abar) eps). For each, against fp32: Spearman correlation of the
candidates' J, overlap of the 32 best, the distance of the return-weighted mean of the elites
(in units of the width) and the mean |J difference|; the row "fp32, other Q pair" is the
planner's own noise (a different draw of the two Q members), the yardstick for bf16.
"""
from __future__ import annotations

import contextlib
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from probe import PriorMean, load_run, parse  # noqa: E402

from mbdpo.trainers.evaluate import run_episodes  # noqa: E402


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Rank correlation over the last dimension, per row."""
    ra, rb = (x.argsort(-1).argsort(-1).float() for x in (a, b))
    ra, rb = ra - ra.mean(-1, keepdim=True), rb - rb.mean(-1, keepdim=True)
    return (ra * rb).sum(-1) / (ra.norm(dim=-1) * rb.norm(dim=-1))


def top_overlap(a: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
    """How many of each row's k best in ``a`` are among its k best in ``b``."""
    ia, ib = a.topk(k, -1).indices, b.topk(k, -1).indices
    return (ia.unsqueeze(-1) == ib.unsqueeze(-2)).any(-1).sum(-1).float()


def elite_mean(J, X, num_elites: int, temperature: float) -> torch.Tensor:
    """The planner's X̄ (§3) from returns J (S, K) of plans X (S, K, H, A)."""
    Js = (J - J.mean(1, keepdim=True)) / (J.std(1, keepdim=True) + 1e-6)
    eJ, idx = Js.topk(num_elites, 1)
    elites = torch.gather(X, 1, idx[:, :, None, None].expand(-1, -1, *X.shape[2:]))
    w = torch.softmax(eJ / temperature, 1)
    return (w[:, :, None, None] * elites).sum(1)


def main():
    args = parse(sys.argv[1:])
    path = args.pop("checkpoint")
    torch.set_num_threads(int(args.pop("threads", "1")))
    K, S = int(args.pop("candidates", "128")), int(args.pop("states", "32"))
    state, cfg, agent, envs, seed = load_run(path, args, 1)
    m, pl = agent.model, agent.planner
    m.eval()
    ep = run_episodes(PriorMean(agent), envs, seed=seed, record=True)["episodes"][0]
    obs = torch.as_tensor(ep["obs"])
    obs = obs[torch.linspace(0, len(obs) - 1, S).long()]
    disc = torch.full((S, 1), float(cfg.discounts[0]))

    def returns(X, bf16: bool, q_seed: int) -> torch.Tensor:
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with torch.no_grad(), ctx:
            z = m.encode(obs[None], None)  # the agent's one seed
            torch.manual_seed(q_seed)  # the same draw of the Q pair
            return pl.returns(z, X[None], None, disc[None])[0][0].float()

    abar = pl.alphas_bar
    N = len(abar)
    steps = sorted({N - 1, N // 2, 1})
    g = torch.Generator().manual_seed(0)
    print(f"{cfg.task}, {path} (step {state.get('step', 0):,}): {S} states, {K} candidates, "
          f"{pl.num_elites} elites")
    print(f"{'step':>4} {'width':>6} {'J std':>7} {'|J|':>7}  {'against fp32':<20} "
          f"{'spearman':>8} {'top-32':>6} {'|dXbar|/w':>9} {'|dJ|':>7}")
    for i in reversed(steps):
        width = float(((1 - abar[i]) / abar[i]).sqrt())
        X = (torch.randn(S, K, pl.H, pl.A, generator=g) * width).clamp(-1, 1)
        ref = returns(X, False, 1)
        x_ref = elite_mean(ref, X, pl.num_elites, pl.temperature)
        for name, J in (("fp32, other Q pair", returns(X, False, 2)),
                        ("bf16", returns(X, True, 1))):
            dx = (elite_mean(J, X, pl.num_elites, pl.temperature) - x_ref).abs().mean() / width
            print(f"{i:>4} {width:>6.3f} {ref.std(1).mean():>7.3f} {ref.abs().mean():>7.1f}  "
                  f"{name:<20} {spearman(ref, J).mean():>8.3f} "
                  f"{top_overlap(ref, J, 32).mean():>6.1f} {dx:>9.3f} "
                  f"{(J - ref).abs().mean():>7.3f}")


if __name__ == "__main__":
    main()
