"""Offline-to-online fine-tuning and evaluation of multi-task checkpoints: seen and unseen tasks,
observation/action padding, the mismatch messages, and the scripts end to end."""
import csv
import json
import os

import pytest
import torch
from omegaconf import OmegaConf

from mbdpo import checkpoint as ckpt
from mbdpo.agent import MBDPO
from mbdpo.config import ConfigError
from mbdpo.tasks import TASK_SETS
from mbdpo.trainers.finetune import FinetuneTrainer, finetune_setup, load_pretrained
from tests.conftest import make_cfg
from tests.test_cli import cli, rows

TINY = ["model_size=1", "mlp_dim=64", "enc_dim=64", "latent_dim=32", "diffusion_num_samples=32",
        "diffusion_num_elites=8", "diffusion_num_pi_trajs=4", "diffusion_steps=3",
        "batch_size=32", "threads=1"]


def write_checkpoint(path, task_set="mt70", drop=(), obs_dim=39, action_dim=6):
    """A multi-task checkpoint of a tiny model, as the offline trainer writes them; tasks in
    ``drop`` are left out of the set. Task i uses 1 + i % action_dim action dimensions."""
    cfg = make_cfg(f"task={task_set}", "multitask=true", *TINY, obs_dim=obs_dim,
                   action_dim=action_dim)
    keep = [i for i, t in enumerate(cfg.tasks) if t not in drop]
    for key in ("tasks", "discounts", "episode_lengths"):
        cfg[key] = [cfg[key][i] for i in keep]
    cfg.action_dims = [1 + i % action_dim for i in range(len(cfg.tasks))]
    cfg.num_tasks = len(cfg.tasks)
    torch.manual_seed(0)
    agent = MBDPO(cfg)
    with torch.no_grad():  # embeddings that differ from row to row
        agent.model.task_emb.weight.copy_(torch.randn_like(agent.model.task_emb.weight) * 0.05)
    ckpt.atomic_save({"agent": agent.state_dict(), "config": OmegaConf.to_container(cfg),
                      "step": 123, "last_eval_step": 123, "counters": {}}, path)
    return cfg, agent


def ft_cfg(task, *extra):
    cfg = make_cfg(f"task={task}", *TINY, "steps=1000", "eval_episodes=1", *extra, parse=False)
    from mbdpo.config import parse_cfg
    return parse_cfg(cfg)


@pytest.fixture(scope="module")
def mt70_ckpt(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("ck") / "mt70.pt")
    cfg, agent = write_checkpoint(path)
    return path, cfg, agent


def test_seen_task_keeps_its_embedding_mask_and_discount(mt70_ckpt, tmp_path):
    path, saved_cfg, saved = mt70_ckpt
    state = ckpt.load(path)
    cfg = ft_cfg("walker-walk", f"save_path={tmp_path}")
    setup = finetune_setup(cfg, state["config"], path)
    tid = TASK_SETS["mt70"].index("walker-walk")
    assert setup == {"task_id": tid, "unseen": False, "source_id": None}
    assert cfg.num_tasks == 70 and cfg.obs_dim == 39 and cfg.mlp_dim == 64
    trainer = FinetuneTrainer(cfg, "finetune", setup, state)
    m = trainer.agent.model
    assert torch.equal(m.task_emb.weight, saved.model.task_emb.weight)
    for a, b in zip(m.parameters(), saved.model.parameters()):
        assert torch.equal(a, b)
    assert m.action_masks[tid].tolist() == [1.0] * saved_cfg.action_dims[tid] + [0.0] * (
        6 - saved_cfg.action_dims[tid])
    assert trainer.random_steps == 0 and trainer.burst == 0  # acts with the agent at once
    cfg2 = ft_cfg("walker-walk", f"save_path={tmp_path}", "seed_episodes=2")
    finetune_setup(cfg2, state["config"], path)
    two = FinetuneTrainer(cfg2, "finetune", setup, state)  # 2 episodes of its own, then a burst
    assert (two.random_steps, two.learn_from, two.burst) == (0, 1000, 1000)
    scratch = FinetuneTrainer(cfg, "scratch", setup, None)  # random seeding as online
    assert scratch.random_steps == scratch.learn_from == cfg.seed_steps == 2500
    assert not torch.equal(scratch.agent.model.task_emb.weight, saved.model.task_emb.weight)
    obs, _ = trainer.env.reset(seed=0)
    assert obs.shape == (39,) and (obs[24:] == 0).all()  # walker's 24 dims, zero-padded
    a = trainer.agent.act(torch.as_tensor(obs)[None, None], torch.tensor([[True]]),
                          trainer.task_t[None])[0]
    assert (a[0, saved_cfg.action_dims[tid]:] == 0).all()


def test_unseen_task_starts_from_its_source_task(mt70_ckpt, tmp_path):
    path, saved_cfg, saved = mt70_ckpt
    state = ckpt.load(path)
    cfg = ft_cfg("walker-run", f"save_path={tmp_path}")
    setup = finetune_setup(cfg, state["config"], path)
    src = TASK_SETS["mt70"].index("walker-walk")  # the paper's map: walker-run <- walker-walk
    assert setup == {"task_id": 70, "unseen": True, "source_id": src}
    assert cfg.tasks[-1] == "walker-run" and cfg.num_tasks == 71 and cfg.action_dims[-1] == 6
    assert cfg.discounts[-1] == pytest.approx(0.99)
    trainer = FinetuneTrainer(cfg, "finetune", setup, state)
    emb = trainer.agent.model.task_emb.weight[0]  # the one seed's
    assert emb.shape == (71, saved_cfg.task_dim)
    assert torch.equal(emb[:70], saved.model.task_emb.weight[0])
    assert torch.equal(emb[70], saved.model.task_emb.weight[0, src])
    assert trainer.agent.model.action_masks[70].tolist() == [1.0] * 6


def test_unseen_task_without_a_source_starts_from_the_mean(tmp_path):
    path = str(tmp_path / "ck.pt")
    _, saved = write_checkpoint(path, drop=("walker-walk",))
    state = ckpt.load(path)
    cfg = ft_cfg("walker-run", f"save_path={tmp_path}")
    setup = finetune_setup(cfg, state["config"], path)
    assert setup == {"task_id": 69, "unseen": True, "source_id": None}
    agent = MBDPO(cfg)
    load_pretrained(agent, state, setup)
    mean = saved.model.task_emb.weight[0].mean(0)
    assert torch.allclose(agent.model.task_emb.weight[0, 69], mean)
    # an explicit source_task wins over the map, and must be in the set
    cfg = ft_cfg("walker-run", "source_task=cheetah-run-backwards")
    assert finetune_setup(cfg, state["config"], path)["source_id"] == cfg.tasks.index(
        "cheetah-run-backwards")
    with pytest.raises(ConfigError, match="source_task=walker-walk is not in the checkpoint"):
        finetune_setup(ft_cfg("walker-run", "source_task=walker-walk"), state["config"], path)


def test_tasks_that_do_not_fit_and_single_task_checkpoints_are_refused(tmp_path):
    path = str(tmp_path / "mt30.pt")
    write_checkpoint(path, task_set="mt30", obs_dim=24)
    state = ckpt.load(path)
    with pytest.raises(ConfigError) as err:
        finetune_setup(ft_cfg("quadruped-walk"), state["config"], path)
    assert "quadruped-walk has 78 observation and 12 action dimensions" in str(err.value)
    assert "takes at most 24 and 6" in str(err.value)
    single = dict(state["config"], multitask=False, task="cartpole-balance")
    with pytest.raises(ConfigError, match="single-task checkpoint"):
        finetune_setup(ft_cfg("walker-walk"), single, path)


@pytest.mark.slow
def test_finetune_with_two_environments_in_workers(mt70_ckpt, tmp_path):
    """num_envs=2 fine-tuning: two padded walker-walk environments in worker processes, one
    planner call for both, their episodes stored with the observation padding and the task's
    action mask; updates from the first stored episodes on (step 1,000: one, then one per
    environment step)."""
    import gymnasium as gym
    path, saved_cfg, _ = mt70_ckpt
    state = ckpt.load(path)
    cfg = ft_cfg("walker-walk", f"save_path={tmp_path}", "num_envs=2", "steps=2000",
                 "eval_freq=2000", "log_freq=1000")
    setup = finetune_setup(cfg, state["config"], path)
    trainer = FinetuneTrainer(cfg, "finetune", setup, state)
    assert isinstance(trainer.envs, gym.vector.AsyncVectorEnv) and trainer.envs.num_envs == 2
    trainer.train()
    buf, used = trainer.buffer, saved_cfg.action_dims[setup["task_id"]]
    assert trainer.step == 2000 and buf.num_episodes == 4 and trainer.updates == 1 + 1000
    obs, act = buf.obs[: buf.num_transitions() + 4], buf.action[: buf.num_transitions() + 4]
    assert (obs[:, 24:] == 0).all() and obs[:, :24].abs().sum() > 0  # walker's 24 of 39
    real = act[~act.isnan().any(-1)]
    assert len(real) == 2000 and (real[:, used:] == 0).all() and real[:, :used].abs().sum() > 0
    returns = [float(r["episode_reward"]) for r in rows(os.path.join(trainer.dir, "train.csv"))]
    assert len(returns) == 4 and len(set(returns)) == 4


def test_offline_to_online_both_arms_and_resume(mt70_ckpt, tmp_path):
    path, _, _ = mt70_ckpt
    out_dir = str(tmp_path / "ft")
    args = [f"checkpoint={path}", f"save_path={out_dir}", "off2on_task=walker-run", "steps=500",
            "seed_steps=250", "eval_freq=500", "eval_episodes=1", "compare_scratch=true",
            "log_freq=250", *TINY]
    out = cli("offline_to_online.py", *args)
    assert "a new embedding starts from the embedding of walker-walk" in out.stdout
    curves = rows(os.path.join(out_dir, "curves.csv"))
    assert [(r["arm"], int(r["step"])) for r in curves] == [
        ("finetune", 0), ("finetune", 500), ("scratch", 0), ("scratch", 500)]
    assert all(0 <= float(r["reward"]) <= 1000 and r["seed"] == "1" for r in curves)
    for arm in ("finetune", "scratch"):
        state = torch.load(os.path.join(out_dir, arm, "models", "final.pt"), weights_only=True)
        assert state["step"] == 500 and state["config"]["tasks"][-1] == "walker-run"
    with open(os.path.join(out_dir, "finetune", "metadata.json")) as f:
        meta = json.load(f)  # mt70 holds Meta-World tasks: the env version is on record
    assert meta["metaworld_env_version"] == "v3" and meta["tasks"][-1] == "walker-run"
    out = cli("offline_to_online.py", *args, "resume=true")
    assert out.stdout.count("already finished") == 2
    # the fine-tuned checkpoint evaluates like any multi-task checkpoint
    ck = os.path.join(out_dir, "finetune", "models", "final.pt")
    out = cli("evaluate.py", "task=walker-run", f"checkpoint={ck}", "eval_episodes=1",
              "diffusion_num_samples=32", "diffusion_num_elites=8", "diffusion_num_pi_trajs=4",
              "diffusion_steps=3", "threads=1")
    assert "walker-run: reward" in out.stdout


@pytest.mark.slow
def test_evaluate_a_task_set_writes_the_table_and_both_csvs(mt70_ckpt):
    path, _, _ = mt70_ckpt
    planner = ["diffusion_num_samples=32", "diffusion_num_elites=8", "diffusion_num_pi_trajs=4",
               "diffusion_steps=3", "threads=1"]
    out = cli("evaluate.py", "task=mt70", f"checkpoint={path}", "eval_episodes=1",
              "eval_tasks=[cartpole-balance,mw-reach]", *planner)
    assert "Evaluated 2 tasks at step 123" in out.stdout and "normalized score" in out.stdout
    folder = os.path.dirname(path)
    wide = rows(os.path.join(folder, "eval_mt70_mt70.csv"))
    assert [r["task"] for r in wide] == ["cartpole-balance", "mw-reach"]
    assert float(wide[0]["score"]) == pytest.approx(float(wide[0]["episode_reward"]) / 10)
    assert float(wide[1]["score"]) == pytest.approx(100 * float(wide[1]["episode_success"]))
    with open(os.path.join(folder, "curve_mt70_mt70.csv")) as f:
        curve = list(csv.reader(f))
    assert curve[0] == ["step", "reward", "seed"] and curve[1][0] == "123"
    assert float(curve[1][1]) == pytest.approx((float(wide[0]["score"]) + float(wide[1]["score"]))
                                               / 2, rel=1e-4)
    for args, msg in [(["task=mt80"], "was trained on mt70, not mt80: pass task=mt70"),
                      (["task=quadruped-walk"], "quadruped-walk is not in the task set"),
                      (["task=mt70", "mlp_dim=128"], "mlp_dim is 64 in the checkpoint but 128")]:
        out = cli("evaluate.py", f"checkpoint={path}", *args, *planner, check=False)
        assert out.returncode == 2 and msg in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
