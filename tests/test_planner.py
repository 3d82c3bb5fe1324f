"""The planner against known answers (docs/algorithm.md §3)."""
import pytest
import torch

from mbdpo.noise import Noise
from mbdpo.planner import DiffusionPlanner
from tests.conftest import make_cfg


def seed_stream(seed):
    """The random stream of one seed ``seed`` (S = 1), which the planner draws its candidates
    from: a ``Noise`` of that seed, with torch's default generator seeded ``seed`` as well (a
    one-seed ``Noise`` may draw from the default generator rather than a generator of its
    own; either way the draws are seed ``seed``'s)."""
    torch.manual_seed(seed)
    return Noise([seed])


class QuadraticModel:
    """A world model whose imagined return is J(X) = -||X - X*||^2: the latent is the time
    index, dynamics add one, the reward of step t is -||a_t - X*_t||^2, values are zero.
    One seed (S = 1): every tensor leads with the seed dimension, and the planner draws its
    candidates from ``noise``, the stream of seed ``seed``."""

    termination_head = None

    def __init__(self, target, seed=0):
        self.target = target  # (H, A)
        self.noise = seed_stream(seed)

    def next(self, z, a, e):
        return z + 1

    def reward(self, z, a, e):
        t = z[..., 0].long().clamp(max=self.target.shape[0] - 1)
        return -(a - self.target[t]).pow(2).sum(-1)

    def energy(self, z, a, e):
        return torch.zeros(a.shape[:-1])

    def stacked_heads(self, energy=True):
        return None

    def step(self, z, a, e, heads):
        return self.reward(z, a, e), self.energy(z, a, e), self.next(z, a, e)

    def Q_pairs(self, n=None, device=None):  # (S, [n,] 2); its values are all zero
        return torch.zeros(1, *(() if n is None else (n,)), 2, dtype=torch.long)

    def Q_avg(self, z, a, e, idx=None):
        return torch.zeros(z.shape[:-1])

    def pi(self, z, e, mask=None):
        a = torch.zeros(*z.shape[:-1], self.target.shape[1])
        return a, None, a


def planner_for(target, seed=0, **kw):
    H, A = target.shape
    cfg = make_cfg("task=cartpole-balance", f"horizon={H}", "energy_eta=0",
                   *[f"{k}={v}" for k, v in kw.items()], action_dim=A)
    return DiffusionPlanner(cfg, QuadraticModel(target, seed))


def test_planner_finds_known_optimum():
    target = torch.tensor([[0.5, -0.3, 0.8], [-0.6, 0.2, 0.0], [0.1, 0.9, -0.4]])
    planner = planner_for(target, seed=0)  # default K=512, N=20, 64 elites, 24 policy plans
    E = 4  # several environments planned in one batch
    z = torch.zeros(1, E, 1)
    plan = planner.plan(z, None, None, torch.ones(1, E), torch.zeros(1, E, 3, 3))
    assert plan.shape == (1, E, 3, 3)
    err = (plan - target).abs().max().item()
    assert err < 0.05, f"planner missed the optimum by {err:.3f}"


def test_planner_without_policy_candidates_also_converges():
    target = torch.tensor([[-0.7, 0.4], [0.3, 0.3]])
    planner = planner_for(target, seed=1, diffusion_num_pi_trajs=0)
    plan = planner.plan(torch.zeros(1, 2, 1), None, None, torch.ones(1, 2),
                        torch.zeros(1, 2, 2, 2))
    assert (plan - target).abs().max().item() < 0.05


def test_plan_horizon_longer_than_the_training_horizon():
    """plan_horizon=5 on a model trained with horizon 3: plans have 5 steps and all 5 reach
    the optimum of a 5-step return."""
    target = torch.tensor([[0.4], [-0.5], [0.7], [-0.2], [0.3]])
    cfg = make_cfg("task=cartpole-balance", "horizon=3", "plan_horizon=5", "energy_eta=0")
    planner = DiffusionPlanner(cfg, QuadraticModel(target, seed=3))
    plan = planner.plan(torch.zeros(1, 2, 1), None, None, torch.ones(1, 2),
                        torch.zeros(1, 2, 5, 1))
    assert plan.shape == (1, 2, 5, 1)
    assert (plan - target).abs().max().item() < 0.05


def test_update_identity_each_step():
    """x_{τ-1} = (x_τ + (1-ᾱ_τ)·ŝ)/sqrt(α_τ) collapses to sqrt(ᾱ_{τ-1})·X̄."""
    target = torch.tensor([[0.2, -0.5], [0.6, 0.1], [-0.3, 0.3]])
    planner = planner_for(target, seed=2)
    seen = []
    orig = planner.weighted_mean

    def recording(*args):
        x_bar = orig(*args)
        seen.append(x_bar)
        return x_bar

    planner.weighted_mean = recording
    xs = []
    orig_plan_abar = planner.alphas_bar
    plan = planner.plan(torch.zeros(1, 1, 1), None, None, torch.ones(1, 1),
                        torch.zeros(1, 1, 3, 2))
    N = len(orig_plan_abar)
    assert len(seen) == N - 1
    # replay the recursion from the recorded X̄: every x_{i-1} equals sqrt(ᾱ_{i-1}) X̄_i
    x = torch.zeros(1, 1, 3, 2)
    for k, i in enumerate(range(N - 1, 0, -1)):
        abar = planner.alphas_bar[i]
        score = (abar.sqrt() * seen[k] - x) / (1 - abar)
        x = (x + (1 - abar) * score) / planner.alphas[i].sqrt()
        xs.append(x)
        assert torch.allclose(x, planner.alphas_bar[i - 1].sqrt() * seen[k], atol=1e-5)
    assert torch.allclose(plan, xs[-1].clamp(-1, 1), atol=1e-6)


def test_sampling_width_schedule():
    """The candidate width sqrt((1-ᾱ)/ᾱ) shrinks from about 0.33 to about 0.025."""
    planner = planner_for(torch.zeros(3, 1))
    abar = planner.alphas_bar
    width = ((1 - abar) / abar).sqrt()
    assert 0.30 < width[-1] < 0.36 and 0.02 < width[1] < 0.03
    assert (width[1:] > width[:-1]).all()


def test_warm_start_is_used():
    """Starting from the optimum keeps the plan there even with tiny sampling budgets."""
    target = torch.tensor([[0.9, -0.9]])
    planner = planner_for(target, seed=3, diffusion_num_samples=16, diffusion_num_elites=4,
                          diffusion_num_pi_trajs=0, diffusion_steps=3)
    warm = planner.plan(torch.zeros(1, 1, 1), None, None, torch.ones(1, 1), target[None, None])
    cold = planner.plan(torch.zeros(1, 1, 1), None, None, torch.ones(1, 1),
                        torch.zeros(1, 1, 1, 2))
    assert (warm - target).abs().max() < (cold - target).abs().max()


class OffsetValueModel(QuadraticModel):
    """The quadratic model whose terminal value is a large offset that stands for the Q pair:
    drawn at random (one per seed, from the seed's stream, as the real model draws its
    pairs), anew for every step of the planner, as different pairs of Q members would give:
    candidates scored under separate draws would be ranked by the offsets, not by their
    returns. Its policy prior proposes zero plans."""

    def Q_pairs(self, n=None, device=None):  # the "pair" is the offset: (S, [n,] 2)
        return 50.0 * self.noise.randn(*(() if n is None else (n,)), 2)

    def Q_avg(self, z, a, e, idx=None):
        offset = (self.Q_pairs() if idx is None else idx)[:, 0]  # (S,)
        return offset.view(-1, *[1] * (z.dim() - 2)).expand(z.shape[:-1])


def test_candidates_of_one_step_are_ranked_under_one_Q_pair():
    """All K candidates of a denoising step, the P policy-prior plans included, are scored in
    one call: the per-call offset cancels and the planner still lands on the optimum (when
    the policy plans were scored apart, they took the elite places whenever their offset was
    the larger, and pulled the plan towards zero)."""
    target = torch.tensor([[0.6, -0.5], [0.4, 0.7], [-0.6, 0.3]])
    H, A = target.shape
    cfg = make_cfg("task=cartpole-balance", f"horizon={H}", "energy_eta=0", action_dim=A)
    planner = DiffusionPlanner(cfg, OffsetValueModel(target))
    errs = []
    for seed in range(4):
        planner.model.noise = seed_stream(seed)
        plan = planner.plan(torch.zeros(1, 2, 1), None, None, torch.ones(1, 2),
                            torch.zeros(1, 2, H, A))
        errs.append((plan - target).abs().max().item())
    assert max(errs) < 0.05, errs


class RandomPolicyModel(QuadraticModel):
    def pi(self, z, e, mask=None):  # its draws from the seed's stream, as the real model's
        a = 0.5 * self.noise.randn(*z.shape[1:-1], self.target.shape[1])
        return a, None, a


def test_policy_candidates_are_fresh_rollouts_at_every_denoising_step():
    """Each of the N-1 steps scores exactly K candidates in one call, the first P of them new
    draws of the policy prior."""
    target = torch.zeros(3, 2)
    cfg = make_cfg("task=cartpole-balance", "horizon=3", "energy_eta=0", "diffusion_steps=6",
                   "diffusion_num_samples=40", "diffusion_num_elites=8",
                   "diffusion_num_pi_trajs=5", action_dim=2)
    planner = DiffusionPlanner(cfg, RandomPolicyModel(target))
    calls = []
    orig = planner.returns

    def recording(*args, **kw):
        J, X = orig(*args, **kw)
        calls.append((J, X))
        return J, X

    planner.returns = recording
    planner.plan(torch.zeros(1, 1, 1), None, None, torch.ones(1, 1), torch.zeros(1, 1, 3, 2))
    assert len(calls) == 5
    assert all(J.shape == (1, 1, 40) and X.shape == (1, 1, 40, 3, 2) for J, X in calls)
    pis = torch.stack([X[0, 0, :5] for _, X in calls])  # (steps, P, H, A)
    assert (pis[1:] - pis[:-1]).abs().amin(dim=(1, 2, 3)).gt(0).all()  # redrawn every step
    # a policy candidate's J is its own return: -||X - 0||^2 summed over the horizon
    J, X = calls[0]
    torch.testing.assert_close(J[0, 0], -X[0, 0].pow(2).sum((-1, -2)))


@pytest.mark.parametrize("episodic", [False, True])
def test_policy_rollouts_drawn_before_denoising_score_as_their_own_plans(episodic):
    """plan() draws the P policy candidates of all N-1 steps in one call (policy_rollouts)
    before it denoises. Their partial returns, terminal weights and latents must be those of
    the plans they hold rolled out like any candidate, and a step's J of them must be G + w ·
    Q_avg(z_H, π(z_H)) beside the other candidates' J, in the same call. Real world model; two
    Q members (so the Q pair is both, in some order)."""
    from mbdpo.world_model import WorldModel
    cfg = make_cfg("task=cartpole-balance", "model_size=1", "mlp_dim=64", "enc_dim=64",
                   "latent_dim=32", "num_q=2", "device=cpu", action_dim=2)
    cfg.episodic = episodic
    model = WorldModel(cfg).eval()
    planner = DiffusionPlanner(cfg, model)
    torch.manual_seed(0)
    obs = torch.randn(1, 3, 5)
    if episodic:  # a termination head that ends about half the imagined rollouts
        with torch.no_grad():
            z, first = model.encode(obs, None).unsqueeze(2).expand(-1, -1, 10, -1), []
            for _ in range(planner.H):
                z = model.next(z, model.pi(z, None)[0], None)
                first.append(model.termination_logit(z, None))
            model.termination_head[-1].bias.sub_(torch.stack(first).amax(0).median())
    with torch.no_grad():
        z = model.encode(obs, None)
        disc = torch.full((1, 3, 1), 0.97)
        heads = model.stacked_heads()
        pi = planner.policy_rollouts(z, None, disc, None, heads, 10)
        G, w, z_H, a_H, plans = pi
        assert plans.shape == (1, 3, 10, planner.H, 2) and a_H.shape == (1, 3, 10, 2)
        G2, w2, z_H2, _ = planner.rollout(z, None, disc, None, heads, X=plans)
        torch.testing.assert_close(G, G2)
        torch.testing.assert_close(w, w2)
        torch.testing.assert_close(z_H, z_H2)
        if episodic:
            assert 0 < (w == 0).float().mean() < 1  # some rollouts terminated, not all
        else:
            torch.testing.assert_close(w, torch.full_like(w, 0.97 ** planner.H))
        X = torch.rand(1, 3, 6, planner.H, 2) * 2 - 1
        torch.manual_seed(5)
        J, scored = planner.returns(z, X, None, disc, pi=pi, heads=heads)
        torch.manual_seed(5)
        J_X, _ = planner.returns(z, X, None, disc, heads=heads)
        assert J.shape == (1, 3, 16) and torch.equal(scored[:, :, :10], plans)
        torch.testing.assert_close(J[..., 10:], J_X)
        torch.testing.assert_close(J[..., :10], G + w * model.Q_avg(z_H, a_H, None))
