"""The multi-task agent: task embeddings, padded actions masked everywhere actions are made."""
import torch

from mbdpo.agent import MBDPO
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
    torch.manual_seed(0)
    agent = MBDPO(cfg)
    task = torch.tensor([0, 1, 2, 5, 29])
    obs = torch.randn(5, 24)
    for eval_mode in (False, True):
        a = agent.act(obs, torch.ones(5, dtype=torch.bool), task, eval_mode=eval_mode)
        for i, t in enumerate(task.tolist()):
            used = cfg.action_dims[t]
            assert (a[i, used:] == 0).all(), (t, a[i])
            assert a[i, :used].abs().sum() > 0
    plan = agent.warm["train"]
    for i, t in enumerate(task.tolist()):
        assert (plan[i, :, cfg.action_dims[t]:] == 0).all()
    z = agent.model.encode(obs, agent.model.embed(task))
    pi, _, mu = agent.model.pi(z, agent.model.embed(task), agent.model.action_mask(task))
    for i, t in enumerate(task.tolist()):
        assert (pi[i, cfg.action_dims[t]:] == 0).all() and (mu[i, cfg.action_dims[t]:] == 0).all()


def test_multitask_update_learns_task_embeddings():
    cfg = mt_cfg()
    torch.manual_seed(0)
    agent = MBDPO(cfg)
    B, H = 16, cfg.horizon
    task = torch.arange(B) % 30
    batch = {"obs": torch.randn(H + 1, B, 24), "action": torch.rand(H, B, 6) * 2 - 1,
             "reward": torch.rand(H, B), "terminated": torch.zeros(H, B), "task": task}
    emb0 = agent.model.task_emb.weight.detach().clone()
    first = agent.update(batch)["reward_loss"].item()
    for _ in range(20):
        last = agent.update(batch)["reward_loss"].item()
    assert last < first
    moved = (agent.model.task_emb.weight - emb0).norm(dim=1)
    assert (moved[:16] > 0).all() and (moved[16:] == 0).all()  # only sampled tasks move
    # max-norm 1: rows are renormalised when looked up (then one Adam step may nudge them)
    assert (agent.model.task_emb.weight[:16].norm(dim=1) <= 1.01).all()


def test_padded_policy_dims_do_not_change_the_imagined_return():
    """J's terminal value reads π's action with the padded dimensions masked: shifting what π
    would output there changes nothing (tasks with 1 and 3 of 6 action dims)."""
    cfg = mt_cfg()
    torch.manual_seed(0)
    agent = MBDPO(cfg)
    m, planner = agent.model, agent.planner
    m.eval()
    with torch.no_grad():
        for w in m.Qs.weights:  # a value that reads every input, padded actions included
            w.normal_(0, 0.3)
    task = torch.tensor([0, 2])
    e, mask = m.embed(task), m.action_mask(task)
    z = m.encode(torch.randn(2, 24), e)
    X = (torch.rand(2, 8, cfg.horizon, 6) * 2 - 1) * mask[:, None, None]
    e3, m3, disc = planner._per_env(e, mask, agent._discount(task, 2))

    def J():
        torch.manual_seed(1)
        return planner.returns(z, X, e3, disc, m3)[0]

    before = J()
    a_pad = torch.zeros(2, 6)
    a_pad[:, 3:] = 1.0
    q = m.Q_logits(z, torch.zeros(2, 6), e).sum(), m.Q_logits(z, a_pad, e).sum()
    assert (q[0] - q[1]).abs() > 1e-3  # the value would see padded dimensions
    with torch.no_grad():
        m.pi_head[-1].bias[3:6] += 4.0  # π's means of dims 3-5, padded for both tasks
    assert torch.equal(J(), before)


def test_energy_loss_leaves_task_embeddings_alone():
    cfg = mt_cfg()
    agent = MBDPO(cfg)
    m = agent.model
    with torch.no_grad():  # F's last layer starts at zero, which would pass no gradient back
        m.energy_head[-1].weight.normal_(0, 0.3)
    task = torch.arange(4)
    e = m.embed(task)
    z = m.encode(torch.randn(cfg.horizon, 4, 24), e)
    mask = m.action_mask(task).unsqueeze(0)
    loss = agent._energy_loss(z, torch.rand(cfg.horizon, 4, 6) * 2 - 1, e, mask,
                              lambda x: x.mean())
    loss.backward()
    assert m.task_emb.weight.grad is None or not m.task_emb.weight.grad.any()
    assert m.energy_head[-1].weight.grad.abs().sum() > 0
