"""Evaluation: run episodes of several environments in lockstep, acting for all of them with one
batched planner call per step."""
from __future__ import annotations

import numpy as np
import torch


def run_episodes(agent, envs, task: int | None = None, video_env: int | None = None,
                 seed: int | None = None) -> dict:
    """One episode in each of ``envs``. Returns rewards (E,), successes (E,) or None, frames."""
    E = len(envs)
    obs = [env.reset(seed=None if seed is None else seed + i)[0] for i, env in enumerate(envs)]
    rewards = np.zeros(E)
    success = np.zeros(E)
    has_success = False
    done = np.zeros(E, dtype=bool)
    frames = [] if video_env is not None else None
    task_t = None if task is None else torch.full((E,), task, dtype=torch.long,
                                                   device=agent.device)
    t = 0
    while not done.all():
        if frames is not None and not done[video_env]:
            frames.append(envs[video_env].render())
        obs_t = torch.as_tensor(np.stack(obs))
        actions = agent.act(obs_t, torch.full((E,), t == 0), task_t, eval_mode=True,
                            stream="eval").cpu().numpy()
        for i, env in enumerate(envs):
            if done[i]:
                continue
            obs[i], r, terminated, truncated, info = env.step(actions[i])
            rewards[i] += r
            if "success" in info:
                has_success = True
                success[i] = float(info["success"])  # at the episode's last step
            done[i] = terminated or truncated
        t += 1
    return {"rewards": rewards, "successes": success if has_success else None,
            "frames": frames}


def summarise(result: dict) -> dict:
    r = result["rewards"]
    row = {"episode_reward": float(r.mean()), "episode_reward_std": float(r.std())}
    if result["successes"] is not None:
        row["episode_success"] = float(result["successes"].mean())
    return row


def evaluate_checkpoint(cfg) -> dict:
    """scripts/evaluate.py: load ``cfg.checkpoint``, run ``eval_episodes`` episodes of
    ``cfg.task`` in lockstep, print mean and std, append them to a CSV next to the checkpoint."""
    import os

    from mbdpo import checkpoint as ckpt
    from mbdpo.agent import MBDPO
    from mbdpo.envs import make_env
    from mbdpo.logging import CSVLog, save_video
    from mbdpo.trainers.online import fill_env_dims

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    state = ckpt.load(cfg.checkpoint)
    ckpt.seed_everything(cfg.seed)
    envs = [make_env(cfg, seed=cfg.seed + 10_000 + i) for i in range(cfg.eval_episodes)]
    fill_env_dims(cfg, envs[0])
    ckpt.check_compatible(cfg, state["config"], cfg.checkpoint)
    agent = MBDPO(cfg)
    agent.model.load_state_dict(state["agent"]["model"])
    result = run_episodes(agent, envs, video_env=0 if cfg.save_video else None,
                          seed=cfg.seed + 10_000)
    row = {"step": state.get("step", 0), "task": cfg.task, "seed": cfg.seed,
           "episodes": cfg.eval_episodes, **summarise(result)}
    msg = (f"{cfg.task}: reward {row['episode_reward']:.1f} ± {row['episode_reward_std']:.1f} "
           f"over {cfg.eval_episodes} episodes")
    if "episode_success" in row:
        msg += f", success {100 * row['episode_success']:.0f}%"
    print(msg, flush=True)
    folder = os.path.dirname(os.path.abspath(cfg.checkpoint))
    stem = os.path.splitext(os.path.basename(cfg.checkpoint))[0]
    CSVLog(os.path.join(folder, f"eval_{stem}.csv"), resume_step=float("inf")).write(row)
    if result["frames"]:
        path = os.path.join(folder, f"eval_{stem}_{cfg.task}.mp4")
        save_video(result["frames"], path)
        print(f"video: {path}")
    return row
