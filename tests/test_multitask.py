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
