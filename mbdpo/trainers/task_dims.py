"""What a run takes from its environments or its dataset before the agent is built: the
observation and action sizes recorded in the config, and the tasks a multi-task run evaluates.

Below the trainers (online, offline, evaluate, collect import it; it imports none of them), so
that the trainers import downwards only."""
from __future__ import annotations

from mbdpo.config import ConfigError
from mbdpo.envs import make_env


def fill_env_dims(cfg, env) -> None:
    """Record the observation and action sizes of the task's environment (or of each of a
    vector env's) in the config."""
    cfg.obs_shape = list(getattr(env, "single_observation_space", env.observation_space).shape)
    cfg.obs_dim = int(cfg.obs_shape[0]) if cfg.obs == "state" else 0
    cfg.action_dim = int(getattr(env, "single_action_space", env.action_space).shape[0])
    cfg.action_dims = [cfg.action_dim]
    cfg.num_tasks = len(cfg.tasks)


def fill_multitask_dims(cfg, obs_dim: int, action_dim: int) -> None:
    """Model sizes from the data (padded dims); each task's own action size from its env."""
    cfg.obs_dim, cfg.obs_shape, cfg.action_dim = int(obs_dim), [int(obs_dim)], int(action_dim)
    dims = []
    for task in cfg.tasks:
        env = make_env(cfg, task=task, seed=cfg.seed)
        o, a = env.observation_space.shape[0], env.action_space.shape[0]
        env.close()
        if o > cfg.obs_dim or a > cfg.action_dim:
            raise ConfigError(f"Task {task} has {o} observation and {a} action dimensions but the "
                              f"dataset holds {cfg.obs_dim} and {cfg.action_dim}: check that "
                              f"data_dir holds the {cfg.task} dataset.")
        dims.append(int(a))
    cfg.action_dims = dims
    cfg.num_tasks = len(cfg.tasks)


def eval_task_list(cfg) -> list[str]:
    """The tasks a multi-task run evaluates: ``eval_tasks`` if given (each of the set), else
    the whole set."""
    tasks = list(cfg.get("eval_tasks") or cfg.tasks)
    unknown = [t for t in tasks if t not in cfg.tasks]
    if unknown:
        raise ConfigError(f"eval_tasks has {', '.join(unknown)}, not in task set {cfg.task}: "
                          f"pick tasks of the set (python -m mbdpo.tasks lists them).")
    return tasks
