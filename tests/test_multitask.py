"""The multi-task agent: task embeddings, padded actions masked everywhere actions are made."""
import torch

from mbdpo.agent import MBDPO, stack_seeds
from tests.conftest import make_cfg


def mt_cfg(*extra):
    cfg = make_cfg("task=mt30", "multitask=true", "model_size=1", "diffusion_num_samples=32",
                   "diffusion_num_elites=8", "diffusion_num_pi_trajs=4", "diffusion_steps=4",
                   "batch_size=16", *extra, obs_dim=24, action_dim=6)
    cfg.action_dims = [1 + i % 6 for i in range(30)]  # mixed action sizes
    return cfg


def test_task_dim_and_discounts_per_task():
    cfg = mt_cfg()
    assert cfg.task_dim == 96  # size 1 keeps 96 for mt30 (the published models)
    assert make_cfg("task=mt30", "multitask=true", "model_size=5").task_dim == 64
    assert make_cfg("task=mt80", "multitask=true", "model_size=5").task_dim == 96
    mt80 = make_cfg("task=mt80", "multitask=true")
    assert len(mt80.tasks) == 80 and mt80.tasks[30] == "mw-assembly"
    assert mt80.discounts[0] == 0.99 and mt80.discounts[30] == 0.95  # L=500 vs L=100


def test_actions_are_masked_for_each_task():
    cfg = mt_cfg()
    torch.manual_seed(0)  # the observations (the agent's weights and draws are its seed's)
    agent = MBDPO(cfg)
    task = torch.tensor([0, 1, 2, 5, 29])
    obs = torch.randn(5, 24)
    for eval_mode in (False, True):  # one seed: inputs and outputs lead with S = 1
        a = agent.act(obs[None], torch.ones(1, 5, dtype=torch.bool), task[None],
                      eval_mode=eval_mode)
        assert a.shape == (1, 5, 6)
        for i, t in enumerate(task.tolist()):
            used = cfg.action_dims[t]
            assert (a[0, i, used:] == 0).all(), (t, a[0, i])
            assert a[0, i, :used].abs().sum() > 0
    plan = agent.warm["train"][0]
    for i, t in enumerate(task.tolist()):
        assert (plan[i, :, cfg.action_dims[t]:] == 0).all()
    m, task = agent.model, task[None]
    z = m.encode(obs[None], m.embed(task))
    pi, _, mu = m.pi(z, m.embed(task), m.action_mask(task))
    pi, mu = pi[0], mu[0]
    for i, t in enumerate(task[0].tolist()):
        assert (pi[i, cfg.action_dims[t]:] == 0).all() and (mu[i, cfg.action_dims[t]:] == 0).all()


def test_multitask_update_learns_task_embeddings():
    cfg = mt_cfg()
    torch.manual_seed(0)  # the batch (the agent's weights and draws are its seed's)
    agent = MBDPO(cfg)
    B, H = 16, cfg.horizon
    task = torch.arange(B) % 30
    batch = {"obs": torch.randn(H + 1, B, 24), "action": torch.rand(H, B, 6) * 2 - 1,
             "reward": torch.rand(H, B), "terminated": torch.zeros(H, B), "task": task}
    batch = stack_seeds([batch])  # one seed: (S = 1, ...)
    emb0 = agent.model.task_emb.weight[0].detach().clone()  # (tasks, T) of the one seed
    first = agent.update(batch)["reward_loss"].item()
    for _ in range(20):
        last = agent.update(batch)["reward_loss"].item()
    assert last < first
    weight = agent.model.task_emb.weight[0]
    moved = (weight - emb0).norm(dim=1)
    assert (moved[:16] > 0).all() and (moved[16:] == 0).all()  # only sampled tasks move
    # max-norm 1: rows are renormalised when looked up (then one Adam step may nudge them)
    assert (weight[:16].norm(dim=1) <= 1.01).all()


def test_padded_policy_dims_do_not_change_the_imagined_return():
    """J's terminal value reads π's action with the padded dimensions masked: shifting what π
    would output there changes nothing (tasks with 1 and 3 of 6 action dims)."""
    cfg = mt_cfg()
    torch.manual_seed(0)  # the inputs and the Q weights drawn below
    agent = MBDPO(cfg)
    m, planner = agent.model, agent.planner
    m.eval()
    with torch.no_grad():
        for w in m.Qs.weights:  # a value that reads every input, padded actions included
            w.normal_(0, 0.3)
    task = torch.tensor([[0, 2]])  # one seed: (S = 1, E = 2)
    e, mask = m.embed(task), m.action_mask(task)
    z = m.encode(torch.randn(1, 2, 24), e)
    X = (torch.rand(1, 2, 8, cfg.horizon, 6) * 2 - 1) * mask[:, :, None, None]
    e3, m3, disc = planner._per_env(e, mask, agent._discount(task, 2))

    def J():  # the same draws (π's samples, the Q pair) each time: the seed's stream (and
        # torch's default generator, which a one-seed stream may draw from) as it is now
        with torch.random.fork_rng(devices=[]), m.noise.fork():
            return planner.returns(z, X, e3, disc, m3)[0]

    before = J()
    assert before.shape == (1, 2, 8)
    a_pad = torch.zeros(1, 2, 6)
    a_pad[..., 3:] = 1.0
    q = m.Q_logits(z, torch.zeros(1, 2, 6), e).sum(), m.Q_logits(z, a_pad, e).sum()
    assert (q[0] - q[1]).abs() > 1e-3  # the value would see padded dimensions
    with torch.no_grad():
        m.pi_head[-1].bias[:, 3:6] += 4.0  # π's means of dims 3-5, padded for both tasks
    assert torch.equal(J(), before)


def test_energy_loss_leaves_task_embeddings_alone():
    cfg = mt_cfg()
    agent = MBDPO(cfg)
    m = agent.model
    with torch.no_grad():  # F's last layer starts at zero, which would pass no gradient back
        m.energy_head[-1].weight.normal_(0, 0.3)
    task = torch.arange(4)[None]  # one seed: (S = 1, B = 4)
    e = m.embed(task)
    z = m.encode(torch.randn(1, cfg.horizon, 4, 24), e)  # (S, H, B, L)
    mask = m.action_mask(task)  # (S, B, A), broadcast over H by the model
    loss = agent._energy_loss(z, torch.rand(1, cfg.horizon, 4, 6) * 2 - 1, e, mask,
                              lambda x: x.mean())
    loss.backward()
    assert m.task_emb.weight.grad is None or not m.task_emb.weight.grad.any()
    assert m.energy_head[-1].weight.grad.abs().sum() > 0
