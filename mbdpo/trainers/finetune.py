"""Offline-to-online fine-tuning (scripts/offline_to_online.py): adapt a multi-task pretrained
agent to one task online with the full MBDPO update, and optionally train the same task from
scratch with the same budget and seeds for comparison.

A task of the checkpoint's task set (seen) keeps its embedding, action mask and discount. A task
outside it (unseen) gets a new embedding row, copied from a related seen task (``source_task``,
by default the paper's map in ``mbdpo.tasks.FINETUNE_SOURCE``) or the mean of the embeddings
when no source is in the set; its observation is zero-padded to the model's input size and its
action mask covers its own action dimensions.

Output under ``save_path``: ``finetune/`` and ``scratch/`` (each a normal online run folder with
train.csv, eval.csv, models/) and ``curves.csv`` with both evaluation curves
(``step,reward,seed,arm``).
"""
from __future__ import annotations

import csv
import functools
import os

import torch
from omegaconf import OmegaConf

from mbdpo import checkpoint as ckpt
from mbdpo.agent import MBDPO
from mbdpo.config import ConfigError, discount, run_dir
from mbdpo.envs import make_env
from mbdpo.envs.wrappers import PadObsAction
from mbdpo.tasks import FINETUNE_SOURCE, get_task
from mbdpo.trainers.base import writable_dir
from mbdpo.trainers.online import OnlineTrainer

def task_dims(cfg, task: str) -> tuple[int, int]:
    env = make_env(cfg, task=task, seed=cfg.seed)
    dims = int(env.observation_space.shape[0]), int(env.action_space.shape[0])
    env.close()
    return dims


def finetune_setup(cfg, saved: dict, path: str) -> dict:
    """Fit ``cfg`` (parsed with task=off2on_task) to the checkpoint's model. Returns the task's
    index, whether it is unseen, and the index of the task its new embedding starts from
    (None: the mean embedding)."""
    task = str(cfg.task)
    if not saved.get("multitask"):
        raise ConfigError(f"{path} is a single-task checkpoint (task={saved.get('task')}): "
                          "fine-tune from a multi-task one (scripts/train.py task=mt30 "
                          "multitask=true data_dir=...).")
    if cfg.obs != saved.get("obs", "state"):
        raise ConfigError(f"{path} was trained on obs={saved.get('obs')} observations: pass "
                          f"obs={saved.get('obs')}.")
    ckpt.adopt_model_config(cfg, saved)
    tasks = list(cfg.tasks)
    o, a = task_dims(cfg, task)
    if o > cfg.obs_dim or a > cfg.action_dim:
        hint = ("fine-tune a model pretrained on a larger task set (mt80 takes 39 and 6)"
                if cfg.obs_dim < 39 else "train it from scratch with scripts/train.py")
        raise ConfigError(
            f"{task} has {o} observation and {a} action dimensions but the model in {path} takes "
            f"at most {cfg.obs_dim} and {cfg.action_dim}: pick a task that fits, or {hint}.")
    if task in tasks:
        if cfg.source_task:
            print(f"{task} is in the checkpoint's task set: source_task={cfg.source_task} is "
                  "not used (the task keeps its own embedding).")
        return {"task_id": tasks.index(task), "unseen": False, "source_id": None}
    source = cfg.source_task or FINETUNE_SOURCE.get(task)
    if cfg.source_task and cfg.source_task not in tasks:
        raise ConfigError(f"source_task={cfg.source_task} is not in the checkpoint's task set "
                          f"({saved.get('task')}): pick one of its tasks, or leave source_task "
                          "unset to start from the mean embedding.")
    source_id = tasks.index(source) if source in tasks else None
    spec = get_task(task)
    cfg.tasks = tasks + [task]
    cfg.action_dims = list(cfg.action_dims) + [a]
    cfg.discounts = list(cfg.discounts) + [discount(spec.episode_length, cfg)]
    cfg.episode_lengths = list(cfg.episode_lengths) + [spec.episode_length]
    cfg.num_tasks = len(cfg.tasks)
    how = f"the embedding of {source}" if source_id is not None else "the mean embedding"
    print(f"{task} is not in the checkpoint's task set: a new embedding starts from {how}.")
    return {"task_id": len(tasks), "unseen": True, "source_id": source_id}


def load_pretrained(agent: MBDPO, state: dict, setup: dict) -> None:
    """The checkpoint's networks and running statistics; an unseen task's embedding row is
    appended (a copy of the source task's, or the mean). Optimisers start fresh."""
    model = dict(state["agent"]["model"])
    if setup["unseen"]:
        emb = model["task_emb.weight"]
        emb = emb if emb.dim() == 3 else emb[None]  # (seeds, tasks, dim); older: (tasks, dim)
        row = emb[:, setup["source_id"]] if setup["source_id"] is not None else emb.mean(1)
        model["task_emb.weight"] = torch.cat([emb, row[:, None]], 1)
        model["action_masks"] = agent.model.action_masks
    agent.model.load_state_dict(model)
    agent.scale.load_state_dict(state["agent"]["scale"])


def padded_env(cfg, seed: int):
    """The task's environment padded to the model's observation and action sizes."""
    return PadObsAction(make_env(cfg, seed=seed), cfg.obs_dim, cfg.action_dim)


class FinetuneTrainer(OnlineTrainer):
    """One arm: 'finetune' (pretrained weights, acts with the agent from the first step) or
    'scratch' (fresh weights of the same model, random seeding as in online training)."""

    def __init__(self, cfg, arm: str, setup: dict, pretrained: dict | None):
        self.arm, self.setup, self.pretrained_state = arm, setup, pretrained
        self.task_id = setup["task_id"]
        super().__init__(cfg)
        self.dir = os.path.join(str(cfg.save_path), arm)
        self.model_dir = os.path.join(self.dir, "models")
        if arm == "finetune":  # no random actions; updates after seed_episodes of its own
            self.random_steps = 0
            self.learn_from = self.burst = cfg.seed_episodes * self.episode_length

    def env_factory(self, seed: int):
        return functools.partial(padded_env, self.cfg, seed)

    def make_env(self, seed: int):
        return self.env_factory(seed)()

    def make_agent(self) -> MBDPO:
        agent = MBDPO(self.cfg)
        if self.pretrained_state is not None:
            load_pretrained(agent, self.pretrained_state, self.setup)
        return agent


def write_curves(save_path: str, arms) -> str:
    """Both arms' evaluation curves in one CSV: step,reward,seed,arm (+success)."""
    rows, success = [], False
    for arm, seed in arms:
        path = os.path.join(save_path, arm, "eval.csv")
        if not os.path.exists(path):
            continue
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                row = {"step": int(float(r["step"])), "reward": r["episode_reward"],
                       "seed": seed, "arm": arm}
                if r.get("episode_success") not in (None, ""):
                    row["success"], success = r["episode_success"], True
                rows.append(row)
    out = os.path.join(save_path, "curves.csv")
    fields = ["step", "reward", "seed", "arm"] + (["success"] if success else [])
    with open(out + ".tmp", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(out + ".tmp", out)
    return out


def finished(folder: str, steps: int) -> bool:
    path = os.path.join(folder, "models", "final.pt")
    return os.path.exists(path) and ckpt.load(path)["step"] >= steps


def offline_to_online(cfg) -> dict:
    """scripts/offline_to_online.py"""
    if not cfg.checkpoint:
        raise ConfigError("Pass checkpoint=PATH, the multi-task checkpoint to fine-tune.")
    if not cfg.save_path:
        cfg.save_path = run_dir(cfg)
    writable_dir(str(cfg.save_path), keep=False,  # before the checkpoint and environments
                 key="a save_path (or work_dir)")
    state = ckpt.load(str(cfg.checkpoint))
    setup = finetune_setup(cfg, state["config"], str(cfg.checkpoint))
    arms = []
    if cfg.load_checkpoint:
        arms.append("finetune")
    if cfg.compare_scratch or not cfg.load_checkpoint:
        arms.append("scratch")
    os.makedirs(str(cfg.save_path), exist_ok=True)
    with open(os.path.join(str(cfg.save_path), "config.yaml"), "w") as f:
        f.write(OmegaConf.to_yaml(cfg))
    results = {}
    for arm in arms:
        folder = os.path.join(str(cfg.save_path), arm)
        if cfg.resume and finished(folder, cfg.steps):
            print(f"[{arm}] already finished ({folder}/models/final.pt).")
            continue
        print(f"[{arm}] {cfg.task}, {cfg.steps:,} steps -> {folder}")
        trainer = FinetuneTrainer(cfg, arm, setup, state if arm == "finetune" else None)
        results[arm] = trainer.train()
        write_curves(str(cfg.save_path), [(a, cfg.seed) for a in arms])
    path = write_curves(str(cfg.save_path), [(a, cfg.seed) for a in arms])
    print(f"Evaluation curves: {path}")
    return results
