"""Several seeds in one agent: seed s of a batched agent is the single agent of seed s."""
import pytest
import torch

from mbdpo.agent import MBDPO, one_seed, stack_seeds
from tests.conftest import make_cfg

SEEDS = {2: [3, 8], 3: [3, 5, 7]}


def cfg_for(*extra):
    return make_cfg("task=cartpole-balance", "model_size=1", "diffusion_num_samples=64",
                    "diffusion_steps=5", "batch_size=32", "diffusion_num_elites=8",
                    "diffusion_num_pi_trajs=8", "device=cpu", *extra, obs_dim=5,
                    action_dim=2)


def replay_batch(cfg, seed, B=32):
    """A replay sample (no seed dimension) of its own for each seed and update."""
    g = torch.Generator().manual_seed(seed)
    H = cfg.horizon
    return {"obs": torch.randn(H + 1, B, 5, generator=g),
            "action": torch.rand(H, B, 2, generator=g) * 2 - 1,
            "reward": torch.randn(H, B, generator=g),
            "terminated": torch.zeros(H, B), "task": torch.zeros(B, dtype=torch.long)}


@pytest.fixture
def one_thread():
    """One thread: batched and single matrix products then agree to the bit on the machine
    these tests were written on (an AMD EPYC; two threads split a small product's sums
    differently for one matrix than for several). BLAS may still round a product of a few rows
    differently for one matrix than for several on another CPU: the checks below allow float
    rounding, and demand bit equality where the inputs are bit-equal."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("S", [2, 3])
def test_seed_s_of_a_batched_agent_is_the_single_agent_of_seed_s(S, one_thread):
    """S seeds in one agent against S single agents: the same initial weights, the same
    actions (exploration noise included) for the same observations, the same losses over 60
    updates on each seed's own batches, the same weights, optimiser moments and statistics
    after them, and again the same actions. The single agents draw from torch's default
    generator seeded with their seed, as a run does; the batched one from a generator per
    seed."""
    seeds = SEEDS[S]
    cfg = cfg_for()
    batched = MBDPO(cfg, seeds)
    singles = []
    for s in seeds:
        singles.append(MBDPO(cfg, [s]))
    streams = []  # each single run's default-generator stream, seeded with its seed
    for s in seeds:
        torch.manual_seed(s)
        streams.append(torch.get_rng_state())

    def single(i, fn):
        torch.set_rng_state(streams[i])
        out = fn(singles[i])
        streams[i] = torch.get_rng_state()
        return out

    for i in range(S):
        for (name, p), q in zip(batched.model.named_parameters(),
                                singles[i].model.parameters()):
            assert torch.equal(p[i:i + 1], q), name
    w0 = next(batched.model.parameters())
    assert not torch.equal(w0[0], w0[1])  # seeds start from weights of their own

    obs = torch.randn(S, 4, 5, generator=torch.Generator().manual_seed(0))
    first = torch.ones(S, 4, dtype=torch.bool)

    def actions(atol):
        acts = batched.act(obs, first)  # training mode: with exploration noise
        for i in range(S):
            ai = single(i, lambda a: a.act(obs[i:i + 1], first[:1]))
            torch.testing.assert_close(acts[i:i + 1], ai, rtol=0, atol=atol)

    actions(1e-5)  # the same weights: the same plans and noise
    for u in range(60):
        per_seed = [replay_batch(cfg, 1000 * u + s) for s in seeds]
        out = batched.update(stack_seeds(per_seed))
        for i in range(S):
            ref = single(i, lambda a: a.update(stack_seeds([per_seed[i]])))
            assert set(out) == set(ref)
            for k in ref:
                assert out[k].shape == (S,), k
                torch.testing.assert_close(out[k][i:i + 1], ref[k], rtol=1e-4, atol=1e-5,
                                           msg=f"{k} of seed {i} at update {u}")
    state = batched.state_dict()
    exact = True
    for i in range(S):
        mine, theirs = one_seed(state, i), singles[i].state_dict()
        for k, v in theirs["model"].items():
            torch.testing.assert_close(mine["model"][k], v, rtol=0, atol=1e-5, msg=k)
            exact &= torch.equal(mine["model"][k], v)
        for opt in ("optim", "pi_optim"):
            for a, b in zip(mine[opt]["state"].values(), theirs[opt]["state"].values()):
                for n in b:
                    torch.testing.assert_close(a[n], b[n], rtol=1e-4, atol=1e-7, msg=opt)
        torch.testing.assert_close(mine["scale"]["value"], theirs["scale"]["value"])
    assert len(set(batched.model.energy_stats.mean.tolist())) == S  # statistics of their own
    # bit-equal weights act bit-equally; weights a rounding apart can make the planner choose
    # another elite, which moves an action by up to ~0.02 (seen with two threads)
    actions(0.0 if exact else 0.05)


def test_one_seed_of_a_batched_checkpoint_loads_as_a_single_agent(one_thread):
    """Seed i's part of a batched agent's state loads into a one-seed agent, which then acts
    as the batched agent's seed i does."""
    cfg = cfg_for()
    batched = MBDPO(cfg, [3, 8])
    for u in range(3):
        batched.update(stack_seeds([replay_batch(cfg, 10 * u + s) for s in (3, 8)]))
    single = MBDPO(cfg, [8])
    part = one_seed(batched.state_dict(), 1)
    single.load_state_dict(part)
    obs = torch.randn(2, 4, 5, generator=torch.Generator().manual_seed(1))
    t0 = torch.ones(2, 4, dtype=torch.bool)
    planned = batched.act(obs, t0)[1]
    torch.set_rng_state(part["stream"])  # a one-seed agent draws from the default generator
    torch.testing.assert_close(single.act(obs[1:], t0[:1])[0], planned, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="holds 2 seeds"):
        single.load_state_dict(batched.state_dict())


def test_a_checkpoint_from_before_the_seed_dimension_loads():
    """A one-seed agent's state written without the leading seed dimension (older
    checkpoints) loads, and gives the same actions as the state it was made from."""
    cfg = cfg_for()
    agent = MBDPO(cfg)
    agent.update(stack_seeds([replay_batch(cfg, 0)]))
    state = agent.state_dict()
    old = {"model": {k: (v if k == "action_masks" else v[0]) for k, v in state["model"].items()},
           "optim": {**state["optim"], "state": {k: {n: (t if n == "step" else t[0])
                                                     for n, t in st.items()}
                                                 for k, st in state["optim"]["state"].items()}},
           "pi_optim": state["pi_optim"], "scale": {"value": state["scale"]["value"][0],
                                                    "q": state["scale"]["q"]}, "warm": {}}
    other = MBDPO(cfg)
    other.load_state_dict(old)
    for k, v in agent.model.state_dict().items():
        assert torch.equal(other.model.state_dict()[k], v), k
    assert torch.equal(other.scale.value, agent.scale.value)
    obs = torch.randn(1, 2, 5)
    t0 = torch.ones(1, 2, dtype=torch.bool)
    torch.manual_seed(4)
    a = agent.act(obs, t0, eval_mode=True)
    torch.manual_seed(4)
    assert torch.equal(other.act(obs, t0, eval_mode=True), a)


def test_gradients_are_clipped_per_seed_as_torch_clips_each_seed_alone():
    """``clip_grad_norm_per_seed``: each seed's slices of all gradients are scaled as
    ``torch.nn.utils.clip_grad_norm_`` scales that seed's gradients alone, to the bit: seed 0
    over the limit (scaled to norm 1), seed 1 under it and seed 2 at zero (both unchanged);
    the norms before clipping are returned per seed."""
    from mbdpo.agent import clip_grad_norm_per_seed
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 4, 5), (3, 7), (3, 2, 3, 3)]
    params = [torch.zeros(s, requires_grad=True) for s in shapes]
    for p, scale in zip(params, (1.0, 2.0, 0.5)):
        p.grad = torch.randn(p.shape, generator=g) * scale
        p.grad[1] *= 0.01
        p.grad[2] = 0
    alone = [[torch.zeros(p.shape[1:], requires_grad=True) for p in params] for _ in range(3)]
    for s, ps in enumerate(alone):
        for p, q in zip(params, ps):
            q.grad = p.grad[s].clone()
    norms = clip_grad_norm_per_seed(params, max_norm=1.0)
    for s, ps in enumerate(alone):
        assert torch.equal(norms[s], torch.nn.utils.clip_grad_norm_(ps, max_norm=1.0))
        for p, q in zip(params, ps):
            assert torch.equal(p.grad[s], q.grad)
    assert norms[0] > 1 > norms[1] > 0 == norms[2]
    seed0 = torch.cat([p.grad[0].flatten() for p in params]).norm()
    assert abs(seed0.item() - 1.0) < 1e-5
