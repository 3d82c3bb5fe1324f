"""Evaluation: run episodes of several environments in lockstep, acting for all of them with one
batched planner call per step."""
from __future__ import annotations

import functools
import os
import signal

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector.async_vector_env import _async_worker

from mbdpo import faults
from mbdpo.trainers.task_dims import eval_task_list, fill_env_dims


def eval_seed(seed: int, step: int) -> int:
    """The reset seed of the evaluation at ``step`` of a run with ``seed`` (episode i resets
    with eval_seed + i): every evaluation of a curve starts from its own states, and
    re-evaluating a checkpoint of that step starts from the same ones. A stream apart from the
    training episodes' seeds (seed * 1_000_003 + episode)."""
    state = np.random.SeedSequence([int(seed), int(step), 0xE7A1]).generate_state(1)
    return int(state[0]) % 2**30


def vector_env(envs, workers: bool = False, context: str | None = None) -> gym.vector.VectorEnv:
    """``envs`` behind gymnasium's vector API with autoreset disabled: a list of environments
    stepped in turn in this process, or, with ``workers``, environment factories each run in
    its own worker process (for simulators slow per step), started with the multiprocessing
    ``context`` (None: the platform's default). A vector env is returned as is."""
    if isinstance(envs, gym.vector.VectorEnv):
        return envs
    mode = gym.vector.AutoresetMode.DISABLED
    if workers:
        return gym.vector.AsyncVectorEnv(
            [functools.partial(_in_worker, fn, os.getpid()) for fn in envs],
            autoreset_mode=mode, context=context, worker=_worker)
    return gym.vector.SyncVectorEnv([functools.partial(_itself, e) for e in envs],
                                    autoreset_mode=mode)


def worker_context(cfg) -> str:
    """How worker processes start: from a fresh server process ('forkserver') when this one
    may hold an OpenGL context (pixels, videos), because a worker forked from a process with
    an EGL context hangs at its first render (measured: walker-walk from pixels); else by
    fork, which is cheaper (10 cartpole workers here: ~1.4 s and ~30 MB each forked, ~5.5 s
    and ~70 MB each from a forkserver). Named, not the platform's default: inside a worker of
    Hydra's joblib launcher the default is loky's, which cannot pass the environments' pipes."""
    return "forkserver" if cfg.obs == "rgb" or cfg.get("save_video") else "fork"


def _itself(env):
    return env


def _in_worker(make_env, run_pid: int):
    """Runs in the worker process. A terminal's Ctrl-C reaches the whole process group: the
    workers ignore it and the run answers it (saves, closes them). SIGTERM keeps its default
    (gymnasium ends workers with it); sent to the whole group (``timeout``, a scheduler) it
    ends them, and ``step_or_stop`` turns the broken pipe into the stop it is. gymnasium also
    calls the first factory in the run's own process (``run_pid``; a dummy environment for
    the spaces): there the run's handlers stay."""
    if os.getpid() != run_pid:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the run's (a KeyboardInterrupt)
    return make_env()


def _worker(*args):
    """gymnasium's worker loop, ending quietly when the run is gone: killed (SIGKILL, the
    out-of-memory killer), it leaves each worker to read the end of its pipe, and gymnasium's
    worker, answering that error down the same pipe, fails again and prints two tracebacks
    that read like a crash of the run. A pipe breaks only when the run has ended. (The loop
    is gymnasium's private function; ``worker=`` is its public hook for wrapping it.)"""
    try:
        _async_worker(*args)
    except (BrokenPipeError, EOFError):
        pass


def step_or_stop(venv, actions, stop, sent=None):
    """``venv.step(actions)``, or None when the stop flag is set and the step failed: workers
    ended by the same signal as this process leave a broken pipe, not an error to report.
    ``sent``: with worker processes, called once the actions are sent and before the wait
    for the workers' answer, whether sending failed or not (``seeds=[...]``: the other seeds
    send theirs, so that every seed's workers step at once)."""
    try:
        if sent is None or not isinstance(venv, gym.vector.AsyncVectorEnv):
            return venv.step(actions)
        failed = None
        try:
            venv.step_async(actions)
        except Exception as err:
            failed = err
        sent()
        if failed is not None:
            raise failed
        return venv.step_wait()
    except Exception:
        if stop:
            return None
        raise


def close_envs(*venvs) -> None:
    """Close vector envs, ending worker processes that can no longer take a close command."""
    for venv in venvs:
        try:
            venv.close()
        except Exception:
            venv.close(terminate=True)


def _frame(venv, i: int):
    if isinstance(venv, gym.vector.SyncVectorEnv):
        return venv.envs[i].render()
    return venv.call("render")[i]


def run_episodes(agent, envs, task: int | None = None, video_env: int | None = None,
                 seed: int | None = None, record: bool = False, stop=None,
                 bar_steps: int | None = None, sent=None) -> dict | None:
    """One episode in each of ``envs`` (a list of environments, stepped in turn, or a vector
    env such as worker processes from ``vector_env``), acting for all of them with one batched
    call per step (uniform random actions when ``agent`` is None). Returns rewards (E,),
    successes (E,) or None (success at the last step, as the published curves count it),
    frames, and with ``record`` the episodes themselves (obs (L+1, ...), action (L, A),
    reward (L,)). ``stop`` (e.g. a ``StopRequested``) is read before every step: once true,
    the episodes are abandoned and None is returned. ``bar_steps``: show a progress bar of
    that many steps (the episode length) with steps/s and ETA. ``sent``: see
    ``step_or_stop``."""
    from tqdm import tqdm
    venv = vector_env(envs)
    E = venv.num_envs
    obs, _ = venv.reset(seed=None if seed is None else [seed + i for i in range(E)])
    rewards = np.zeros(E)
    success = np.zeros(E)
    has_success = False
    done = np.zeros(E, dtype=bool)
    frames = [] if video_env is not None else None
    episodes = [{"obs": [o], "action": [], "reward": []} for o in obs] if record else None
    task_t = None
    if task is not None and agent is not None:
        task_t = torch.full((E,), task, dtype=torch.long, device=agent.device)
    t = 0
    bar = tqdm(total=bar_steps, desc="Evaluating", unit="step", leave=False,
               disable=bar_steps is None, mininterval=2)
    while not done.all():
        if stop:
            bar.close()
            return None
        bar.update()
        if frames is not None and not done[video_env]:
            frames.append(_frame(venv, video_env))
        if agent is None:
            actions = np.stack([venv.single_action_space.sample() for _ in range(E)])
        else:
            actions = agent.act(torch.as_tensor(obs)[None], torch.full((1, E), t == 0),
                                None if task_t is None else task_t[None], eval_mode=True,
                                stream="eval")[0].cpu().numpy()
        out = step_or_stop(venv, actions, stop, sent)
        if out is None:
            bar.close()
            return None
        obs, r, terminated, truncated, info = out
        faults.reach("eval-step")
        for i in np.flatnonzero(~done):
            rewards[i] += r[i]
            if "success" in info and info["_success"][i]:
                has_success = True
                success[i] = float(info["success"][i])  # at the episode's last step
            if record:
                episodes[i]["obs"].append(obs[i])
                episodes[i]["action"].append(actions[i])
                episodes[i]["reward"].append(float(r[i]))
        ended = terminated | truncated
        done |= ended
        if ended.any() and not done.all():
            # an environment is never stepped past its episode's end: it restarts, and its
            # steps until the others end are not counted
            venv.reset(options={"reset_mask": ended})
        t += 1
    bar.close()
    if record:
        episodes = [{k: np.asarray(v, dtype=np.float32) for k, v in ep.items()}
                    for ep in episodes]
    return {"rewards": rewards, "successes": success if has_success else None,
            "frames": frames, "episodes": episodes}


def normalized_score(task: str, row: dict) -> float:
    """The TD-MPC2 papers' per-task score: success x 100 where a task reports success
    (Meta-World, ManiSkill2, MyoSuite), else episode return / 10 (DMControl)."""
    if "episode_success" in row:
        return 100.0 * row["episode_success"]
    return row["episode_reward"] / 10.0


def task_envs(cfg, task: str, n: int, seed: int, workers: bool = False):
    """``n`` environments of ``task`` as the config's model sees them (padded when multi-task):
    a list, or with ``workers`` (and n > 1) a vector env of n worker processes."""
    fns = [functools.partial(task_env, cfg, task, seed + i) for i in range(n)]
    if workers and n > 1:
        return vector_env(fns, workers=True, context=worker_context(cfg))
    return [fn() for fn in fns]


def task_env(cfg, task: str, seed: int):
    from mbdpo.envs import make_env
    from mbdpo.envs.wrappers import PadObsAction
    env = make_env(cfg, task=task, seed=seed)
    return PadObsAction(env, cfg.obs_dim, cfg.action_dim) if cfg.multitask else env


def evaluate_tasks(agent, cfg, tasks: list[str], episodes: int, seed: int,
                   progress: bool = True, stop=None) -> list[dict] | None:
    """Evaluate a (multi-task) agent on each of ``tasks`` (names of cfg.tasks), ``episodes``
    episodes per task run in lockstep. One row per task with its normalized score; None when
    ``stop`` turned true during it."""
    from tqdm import tqdm
    rows = []
    bar = tqdm(tasks, desc="Evaluating", unit="task", disable=not progress, leave=False)
    for name in bar:
        bar.set_postfix_str(name)
        envs = task_envs(cfg, name, episodes, seed)
        result = run_episodes(agent, envs, task=list(cfg.tasks).index(name), seed=seed,
                              stop=stop)
        for env in envs:
            env.close()
        if result is None:
            bar.close()
            return None
        row = {"task": name, **summarise(result)}
        row["score"] = normalized_score(name, row)
        rows.append(row)
    return rows


def print_task_table(rows: list[dict], step: int | None = None) -> float:
    """Per-task table and the mean normalized score (returned)."""
    head = f"Evaluated {len(rows)} tasks" + (f" at step {step:,}" if step is not None else "")
    print(head)
    for r in rows:
        succ = f"  success {100 * r['episode_success']:5.1f}%" if "episode_success" in r else ""
        print(f"  {r['task']:<28} reward {r['episode_reward']:8.1f}{succ}  score {r['score']:6.1f}")
    score = float(np.mean([r["score"] for r in rows]))
    print(f"  {'normalized score':<28} {score:.1f}", flush=True)
    return score


def summarise(result: dict) -> dict:
    r = result["rewards"]
    row = {"episode_reward": float(r.mean()), "episode_reward_std": float(r.std())}
    if result["successes"] is not None:
        row["episode_success"] = float(result["successes"].mean())
    return row


def load_agent(cfg, path: str, state: dict | None = None):
    """An agent with the networks of checkpoint ``path``; the config must agree on every
    setting that shapes a network (the message names the first that does not)."""
    from mbdpo import checkpoint as ckpt
    from mbdpo.agent import MBDPO
    state = state or ckpt.load(path)
    ckpt.check_compatible(cfg, state["config"], path)
    agent = MBDPO(cfg)
    agent.model.load_state_dict(state["agent"]["model"])
    return agent


def curve_value(row: dict) -> float:
    """The value the published curves plot: success x 100 where the task reports success,
    else the episode return (for a task set: the normalized score)."""
    if "episode_success" in row:
        return 100.0 * row["episode_success"]
    return row["episode_reward"]


def checkpoint_tasks(cfg, saved: dict, path: str) -> list[str]:
    """The tasks ``task=`` asks to evaluate with a multi-task checkpoint: its whole set (or
    ``eval_tasks``), or one of its tasks."""
    from mbdpo.config import ConfigError
    from mbdpo.tasks import TASK_SETS
    task, trained = str(cfg.task), saved.get("task")
    if task in TASK_SETS:
        if task != trained:
            raise ConfigError(f"{path} was trained on {trained}, not {task}: pass task={trained} "
                              f"or one of its tasks.")
        return eval_task_list(cfg)
    if task not in cfg.tasks:
        raise ConfigError(f"{task} is not in the task set of {path} ({trained}): pick one of its "
                          "tasks, or fine-tune on it with scripts/offline_to_online.py.")
    return [task]


# The planner's settings: evaluate.py plans as the evaluated run did unless given.
PLANNER_KEYS = ("plan_horizon", "diffusion_steps", "diffusion_num_samples",
                "diffusion_num_elites", "diffusion_num_pi_trajs", "diffusion_temperature",
                "diffusion_beta0", "diffusion_betaT", "diffusion_action_noise", "plan_precision",
                "score_only_inference")


def open_checkpoint(cfg) -> tuple[dict, str]:
    """(state, path) of ``cfg.checkpoint`` for a script that acts with it (evaluate.py,
    visualize_latents.py): its network settings into ``cfg`` (those given on the command line
    must agree), its planner settings too unless given, threads and seeds set."""
    from mbdpo import checkpoint as ckpt
    from mbdpo.config import ConfigError
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    state = ckpt.load(cfg.checkpoint)  # None: "No checkpoint given: pass checkpoint=..."
    path = str(cfg.checkpoint)
    saved = state["config"]
    from mbdpo.config import command_line_keys
    given = command_line_keys()
    if "model_size" in given and saved.get("model_size") not in (None, cfg.model_size):
        raise ConfigError(f"{path} holds a model_size={saved['model_size']} network but "
                          f"model_size={cfg.model_size} was given: drop model_size= (evaluate.py "
                          "takes the networks' settings from the checkpoint).")
    ckpt.adopt_model_config(cfg, saved, keep=given)
    adopted = [k for k in PLANNER_KEYS if k not in given and k in saved and saved[k] != cfg[k]]
    for key in PLANNER_KEYS:  # plan as the run being evaluated did, unless told otherwise
        if key not in given and key in saved:
            cfg[key] = saved[key]
    if cfg.diffusion_num_elites > cfg.diffusion_num_samples or \
            cfg.diffusion_num_pi_trajs >= cfg.diffusion_num_samples:
        raise ConfigError(
            f"diffusion_num_samples={cfg.diffusion_num_samples} is too few for the checkpoint "
            f"run's diffusion_num_elites={cfg.diffusion_num_elites} and diffusion_num_pi_trajs="
            f"{cfg.diffusion_num_pi_trajs}: give those too, or more samples.")
    if adopted:
        print("Planner of the checkpoint's run: " + ", ".join(
            f"{k}={cfg[k]}" for k in adopted) + " (override on the command line).")
    ckpt.seed_everything(cfg.seed)
    return state, path


def evaluate_checkpoint(cfg) -> dict:
    """scripts/evaluate.py: load ``cfg.checkpoint`` (its network settings and, for a multi-task
    checkpoint, its task set are taken from it unless given on the command line), run
    ``eval_episodes`` episodes of ``cfg.task`` (a task, or the checkpoint's whole task set) in
    lockstep, print mean and std (a per-task table and the normalized score for a set), and
    append the results to CSVs next to the checkpoint: ``eval_<ckpt>[_<set>].csv`` (one row per
    task) and ``curve_<ckpt>_<task>.csv`` (``step,reward,seed``, the published curve format)."""
    import os

    from mbdpo.config import ConfigError, plan_horizon
    from mbdpo.logging import CSVLog, save_video
    from mbdpo.tasks import TASK_SETS

    state, path = open_checkpoint(cfg)
    saved = state["config"]
    folder = os.path.dirname(os.path.abspath(path))
    stem = os.path.splitext(os.path.basename(path))[0]
    step = state.get("step", 0)
    seed = eval_seed(cfg.seed, step)  # the start states of the run's own evaluation at step
    if cfg.multitask:
        tasks = checkpoint_tasks(cfg, saved, path)
        agent = load_agent(cfg, path, state)
        rows = evaluate_tasks(agent, cfg, tasks, cfg.eval_episodes, seed)
        for r in rows:
            r.update(step=step, seed=cfg.seed, episodes=cfg.eval_episodes)
        if str(cfg.task) in TASK_SETS:
            score = print_task_table(rows, step)
            CSVLog(os.path.join(folder, f"eval_{stem}_{cfg.task}.csv"), float("inf")).write_all(
                [{"step": step, "task": r["task"], "seed": cfg.seed, **r} for r in rows])
            CSVLog(os.path.join(folder, f"curve_{stem}_{cfg.task}.csv"), float("inf")).write(
                {"step": step, "reward": score, "seed": cfg.seed})
            return {"step": step, "score": score, "tasks": rows}
        row = rows[0]
        result = None
    else:
        trained = saved.get("task")
        if str(cfg.task) in TASK_SETS:
            raise ConfigError(f"{path} is a single-task checkpoint ({trained}): pass "
                              f"task={trained} or another single task.")
        from mbdpo.config import command_line_keys
        if "eval_tasks" in command_line_keys():
            print(f"note: eval_tasks has no effect: {path} is a single-task checkpoint "
                  f"({trained}).", flush=True)
        if trained and str(cfg.task) != trained and not cfg.other_task:
            raise ConfigError(f"{path} was trained on {trained}, not {cfg.task}: pass "
                              f"task={trained}, or other_task=true to evaluate it on "
                              f"{cfg.task} all the same.")
        envs = task_envs(cfg, cfg.task, cfg.eval_episodes, seed, workers=cfg.async_envs)
        fill_env_dims(cfg, envs if isinstance(envs, gym.vector.VectorEnv) else envs[0])
        agent = load_agent(cfg, path, state)
        result = run_episodes(agent, envs, video_env=0 if cfg.save_video else None, seed=seed,
                              bar_steps=int(cfg.episode_lengths[0]))
        row = {"step": step, "task": cfg.task, "seed": cfg.seed,
               "episodes": cfg.eval_episodes, **summarise(result)}
        row["score"] = normalized_score(str(cfg.task), row)
    msg = (f"{cfg.task}: reward {row['episode_reward']:.1f} ± {row['episode_reward_std']:.1f} "
           f"over {cfg.eval_episodes} episodes")
    if "episode_success" in row:
        msg += f", success {100 * row['episode_success']:.0f}%"
    if plan_horizon(cfg) != cfg.horizon:
        msg += f" (plan_horizon {plan_horizon(cfg)}, trained with horizon {cfg.horizon})"
    print(msg, flush=True)
    CSVLog(os.path.join(folder, f"eval_{stem}.csv"), resume_step=float("inf")).write(row)
    CSVLog(os.path.join(folder, f"curve_{stem}_{cfg.task}.csv"), float("inf")).write(
        {"step": step, "reward": curve_value(row), "seed": cfg.seed})
    if result is not None and result["frames"]:
        path = os.path.join(folder, f"eval_{stem}_{cfg.task}.mp4")
        save_video(result["frames"], path)
        print(f"video: {path}")
    return row
