"""The latent states a checkpoint's world model visits, embedded in 2-D (the paper's Fig. 11):

    python scripts/visualize_latents.py checkpoint=PATH task=walker-walk eval_episodes=4
    python scripts/visualize_latents.py checkpoint=PATH/mt80.pt task=walker-walk   # + task embeddings

Runs ``eval_episodes`` evaluation episodes of ``task`` with the checkpoint's planner, encodes
every observation, and embeds the latents by locally linear embedding: one episode and all of
them, coloured by time, with the return and success rate in the title
(<checkpoint dir>/latents_<ckpt>_<task>.png/.pdf). For a multi-task checkpoint it also draws a
t-SNE of its task embeddings coloured by suite (<checkpoint dir>/task_embeddings_<ckpt>.png/.pdf).
"""
from mbdpo.cli import entry


def job(cfg):
    import os

    import numpy as np
    import torch

    from mbdpo import plots
    from mbdpo.config import ConfigError
    from mbdpo.tasks import TASK_SETS
    from mbdpo.trainers.evaluate import (checkpoint_tasks, eval_seed, load_agent,
                                         open_checkpoint, run_episodes, summarise, task_envs)
    from mbdpo.trainers.task_dims import fill_env_dims

    if cfg.task in TASK_SETS:
        raise ConfigError(f"task={cfg.task} is a task set: pass one of its tasks (the latents "
                          "of one task's episodes are drawn; a multi-task checkpoint's task "
                          "embeddings come with them).")
    state, path = open_checkpoint(cfg)
    saved = state["config"]
    multitask = len(saved.get("tasks") or [saved.get("task")]) > 1
    if multitask:
        cfg.multitask = True
        checkpoint_tasks(cfg, saved, path)  # the task must be one of the checkpoint's
    seed = eval_seed(cfg.seed, state.get("step", 0))
    envs = task_envs(cfg, cfg.task, cfg.eval_episodes, seed)
    if not multitask:
        fill_env_dims(cfg, envs[0])
    agent = load_agent(cfg, path, state)
    task = list(cfg.tasks).index(cfg.task) if multitask else None
    result = run_episodes(agent, envs, task=task, seed=seed, record=True,
                          bar_steps=int(cfg.episode_lengths[0]))
    for env in envs:
        env.close()
    m = agent.model
    latents = []
    with torch.no_grad():
        for ep in result["episodes"]:
            obs = torch.as_tensor(np.asarray(ep["obs"]), device=agent.device)
            e = None if task is None else m.embed(torch.full((1, len(obs)), task,
                                                             device=agent.device))
            latents.append(m.encode(obs[None], e)[0].float().cpu().numpy())  # the one seed
    flat = plots.embed_2d(np.concatenate(latents), "lle", seed=cfg.seed)
    points = np.split(flat, np.cumsum([len(z) for z in latents])[:-1])
    row = summarise(result)
    title = (f"{cfg.task}: return {row['episode_reward']:.1f} ± {row['episode_reward_std']:.1f}"
             + (f", success {100 * row['episode_success']:.0f}%" if "episode_success" in row
                else "") + f" ({os.path.basename(path)}, step {state.get('step', 0):,})")
    folder = os.path.dirname(os.path.abspath(path))
    stem = os.path.splitext(os.path.basename(path))[0]
    written = plots.save(plots.latents_figure(points, title),
                         os.path.join(folder, f"latents_{stem}_{cfg.task}"))
    np.savez(os.path.join(folder, f"latents_{stem}_{cfg.task}.npz"),
             latents=np.concatenate(latents), embedded=flat,
             episode=np.repeat(np.arange(len(latents)), [len(z) for z in latents]))
    if multitask:
        emb = m.task_emb.weight[0].detach().float().cpu().numpy()  # the one seed's
        written += plots.save(
            plots.task_embedding_figure(plots.embed_2d(emb, "tsne", seed=cfg.seed),
                                        list(cfg.tasks), f"task embeddings of {saved['task']}"),
            os.path.join(folder, f"task_embeddings_{stem}"))
    print(title)
    for p in written:
        print(p)
    return written


if __name__ == "__main__":
    entry(job)
