"""Configuration: model-size presets, validation with clear messages, derived values.

The YAML in ``cfgs/config.yaml`` holds the names and defaults; ``parse_cfg`` checks every value
a user may set, fills in what follows from others (model size, discount, seed steps, device)
and returns a plain mutable ``DictConfig``.
"""
from __future__ import annotations

import math
import os

import torch
from omegaconf import DictConfig, OmegaConf

from mbdpo.tasks import PIXEL_SUITES, TASK_SETS, TASKS, get_task, resolve_tasks

MODEL_SIZES = {
    1: dict(enc_dim=256, mlp_dim=384, latent_dim=128, num_enc_layers=2, num_q=2),
    5: dict(enc_dim=256, mlp_dim=512, latent_dim=512, num_enc_layers=2, num_q=5),
    19: dict(enc_dim=1024, mlp_dim=1024, latent_dim=768, num_enc_layers=3, num_q=5),
    48: dict(enc_dim=1792, mlp_dim=1792, latent_dim=768, num_enc_layers=4, num_q=5),
    317: dict(enc_dim=4096, mlp_dim=4096, latent_dim=1376, num_enc_layers=5, num_q=8),
}

# Settings that change the shape of a network: a checkpoint must agree on all of them.
SHAPE_KEYS = ("obs", "enc_dim", "mlp_dim", "latent_dim", "num_enc_layers", "num_q", "num_bins",
              "task_dim", "num_channels", "horizon", "use_score_network",
              "diffusion_time_embed_dim", "obs_dim", "action_dim", "num_tasks")


class ConfigError(ValueError):
    """A setting the user gave cannot be used; the message says what to do."""


def _check(cond: bool, key: str, value, allowed: str) -> None:
    if not cond:
        raise ConfigError(f"Bad value {key}={value!r}: {allowed}.")


def _positive_int(cfg, key):
    v = cfg[key]
    _check(isinstance(v, int) and not isinstance(v, bool) and v > 0, key, v,
           "expected a positive integer")


def _non_negative_number(cfg, key):
    v = cfg[key]
    _check(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0, key, v,
           "expected a number >= 0")


def _bool(cfg, key):
    _check(isinstance(cfg[key], bool), key, cfg[key], "expected true or false")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"Bad value device={name!r}: expected auto, cpu, cuda or cuda:N.")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} was asked for but CUDA is not available here: "
                          "use device=auto or device=cpu.")
    return dev


def resolve_flag(setting, device: torch.device, graphs: bool = False) -> bool:
    """``compile`` / ``cuda_graphs`` (auto | true | false) on ``device``: auto is true on CUDA;
    CUDA graphs (``graphs``) are never used off CUDA, whatever the setting."""
    on = device.type == "cuda" if setting == "auto" else bool(setting)
    return on and (not graphs or device.type == "cuda")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 matrices faster than fp32: a CUDA GPU of compute
    capability 8.0 (Ampere) or newer; a CPU with AVX-512 BF16 or AMX instructions on which a
    bf16 matrix multiply is measured faster than an fp32 one (``_cpu_bf16_speedup``)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return (any(getattr(torch.cpu, c, lambda: False)() for c in checks)
                and _cpu_bf16_speedup() > 1.25)
    return False


_BF16_SPEEDUP: list[float] = []


def _cpu_bf16_speedup(n: int = 512, reps: int = 10) -> float:
    """fp32 time / bf16 time of an n x n matrix multiply on this CPU, measured once per
    process (~40 ms): the two alternate and each keeps its fastest of ``reps``, which other
    processes' load leaves nearly alone. The instruction flags alone do not tell: an Intel
    Xeon (family 6, model 207) whose virtual machine exposes AVX-512 BF16 but not AMX
    multiplied bf16 at 0.55x its fp32 rate (79 vs 143 GFLOP/s, one thread, 2048 x 2048), an
    AMD Zen 4 at ~3.5x."""
    if not _BF16_SPEEDUP:
        import time
        gen = torch.Generator().manual_seed(0)  # the run's random streams stay untouched
        pairs = [(torch.randn(n, n, generator=gen).to(dtype),
                  torch.randn(n, n, generator=gen).to(dtype))
                 for dtype in (torch.float32, torch.bfloat16)]
        best = [math.inf, math.inf]
        for rep in range(-2, reps):
            for i, (a, b) in enumerate(pairs):
                t = time.perf_counter()
                a @ b
                if rep >= 0:  # the first two of each warm up
                    best[i] = min(best[i], time.perf_counter() - t)
        _BF16_SPEEDUP.append(best[0] / best[1])
    return _BF16_SPEEDUP[0]


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device`` (None: fp32 throughout)."""
    if precision == "bf16" or (precision == "auto" and native_bf16(device)):
        return torch.bfloat16
    return None


def discount(episode_length: int, cfg) -> float:
    """γ = clip((L/d - 1)/(L/d), γ_min, γ_max) for episode length L (docs/algorithm.md §2)."""
    frac = episode_length / cfg.discount_denom
    return float(min(max((frac - 1) / frac, cfg.discount_min), cfg.discount_max))


def parse_cfg(cfg: DictConfig) -> DictConfig:
    """Validate a composed config and fill in the derived values."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    OmegaConf.set_struct(cfg, False)

    if cfg.get("contrastive_eta") is not None:
        cfg.energy_eta = cfg.contrastive_eta
    # task and task set
    task = str(cfg.task)
    tasks = resolve_tasks(task)  # raises UnknownTaskError with the closest names
    if task in TASK_SETS and not cfg.multitask:
        raise ConfigError(f"task={task} is a task set: add multitask=true to train one agent "
                          f"on its {len(tasks)} tasks, or pick a single task.")
    if cfg.multitask and task not in TASK_SETS:
        raise ConfigError(f"multitask=true needs a task set (one of {', '.join(TASK_SETS)}), "
                          f"not the single task {task!r}.")
    cfg.tasks = tasks
    _check(cfg.obs in ("state", "rgb"), "obs", cfg.obs, "expected state or rgb")
    if cfg.obs == "rgb":
        stateless = [t for t in tasks if TASKS[t].suite not in PIXEL_SUITES]
        if stateless:
            raise ConfigError(f"obs=rgb is not available for {', '.join(stateless)} "
                              f"({TASKS[stateless[0]].suite} runs from state here): use obs=state.")

    # model size preset; explicit enc_dim=... etc. still win
    _check(cfg.model_size in MODEL_SIZES, "model_size", cfg.model_size,
           f"expected one of {', '.join(map(str, MODEL_SIZES))}")
    for k, v in MODEL_SIZES[cfg.model_size].items():
        if cfg.get(k) is None:
            cfg[k] = v
    _check(isinstance(cfg.task_dim, int) and cfg.task_dim >= 0, "task_dim", cfg.task_dim,
           "expected an integer >= 0")
    if not cfg.multitask:
        cfg.task_dim = 0
    elif task == "mt30" and cfg.task_dim == 96 and cfg.model_size in (5, 19, 48):
        cfg.task_dim = 64  # the published mt30 models use 64 at these sizes, 96 at 1 and 317
    if task == "mt30" and cfg.model_size == 19 and cfg.latent_dim == 768:
        cfg.latent_dim = 512  # likewise the published mt30 size-19 model

    for key in ("steps", "batch_size", "horizon", "num_bins", "enc_dim", "mlp_dim", "latent_dim",
                "num_enc_layers", "num_q", "num_channels", "simnorm_dim", "diffusion_steps",
                "diffusion_num_samples", "diffusion_num_elites", "eval_episodes",
                "eval_freq", "buffer_size", "log_freq", "diffusion_time_embed_dim", "num_envs"):
        _positive_int(cfg, key)
    for key in ("lr", "enc_lr_scale", "grad_clip_norm", "consistency_coef", "reward_coef",
                "value_coef", "termination_coef", "energy_coef", "energy_eta",
                "energy_neg_noise", "energy_clip", "entropy_coef", "dropout", "tau",
                "score_loss_coef", "diffusion_action_noise", "save_model_every",
                "diffusion_num_pi_trajs"):
        _non_negative_number(cfg, key)
    _check(isinstance(cfg.utd, (int, float)) and not isinstance(cfg.utd, bool) and cfg.utd > 0,
           "utd", cfg.utd, "expected a number > 0 (updates per environment step)")
    for key in ("multitask", "use_score_network", "score_only_inference", "resume",
                "save_video", "save_replay", "enable_wandb", "enable_tensorboard", "async_envs",
                "load_checkpoint", "compare_scratch", "overwrite"):
        _bool(cfg, key)
    for key in ("compile", "cuda_graphs"):
        _check(cfg[key] == "auto" or isinstance(cfg[key], bool), key, cfg[key],
               "expected auto, true or false")
    _check(0 < cfg.rho <= 1, "rho", cfg.rho, "expected a number in (0, 1]")
    _check(0 < cfg.tau <= 1, "tau", cfg.tau, "expected a number in (0, 1] (the Polyak rate; "
           "published 0.01)")
    _check(cfg.dropout < 1, "dropout", cfg.dropout, "expected a number in [0, 1)")
    _check(cfg.energy_clip > 0, "energy_clip", cfg.energy_clip,
           "expected a number > 0 (the normalised energy is clipped to [-clip, clip])")
    _check(cfg.log_std_min < cfg.log_std_max, "log_std_min", cfg.log_std_min,
           f"expected less than log_std_max ({cfg.log_std_max})")
    _check(str(cfg.work_dir).strip() != "", "work_dir", cfg.work_dir,
           "expected a folder (logs by default)")
    _check(0 <= cfg.energy_momentum < 1, "energy_momentum", cfg.energy_momentum,
           "expected a number in [0, 1)")
    _check(cfg.diffusion_temperature > 0, "diffusion_temperature", cfg.diffusion_temperature,
           "expected a number > 0")
    _check(0 < cfg.diffusion_beta0 <= cfg.diffusion_betaT < 1, "diffusion_betaT",
           cfg.diffusion_betaT, f"expected diffusion_beta0 ({cfg.diffusion_beta0}) <= "
           "diffusion_betaT < 1")
    _check(cfg.diffusion_steps >= 2, "diffusion_steps", cfg.diffusion_steps,
           "expected at least 2")
    _check(cfg.diffusion_num_elites <= cfg.diffusion_num_samples, "diffusion_num_elites",
           cfg.diffusion_num_elites,
           f"expected at most diffusion_num_samples ({cfg.diffusion_num_samples})")
    _check(cfg.diffusion_num_pi_trajs < cfg.diffusion_num_samples, "diffusion_num_pi_trajs",
           cfg.diffusion_num_pi_trajs,
           f"expected fewer than diffusion_num_samples ({cfg.diffusion_num_samples})")
    _check(cfg.latent_dim % cfg.simnorm_dim == 0, "latent_dim", cfg.latent_dim,
           f"expected a multiple of simnorm_dim ({cfg.simnorm_dim})")
    _check(0 < cfg.lr <= 1, "lr", cfg.lr, "expected a number in (0, 1] (Adam's step size; "
           "published 3e-4)")
    _check(cfg.num_bins >= 2, "num_bins", cfg.num_bins,
           "expected at least 2 (values are regressed on bins: two-hot)")
    _check(isinstance(cfg.seed, int) and not isinstance(cfg.seed, bool) and cfg.seed >= 0,
           "seed", cfg.seed, "expected an integer >= 0")
    _check(cfg.num_q >= 2, "num_q", cfg.num_q, "expected at least 2 (two members are drawn)")
    _check(cfg.vmin < cfg.vmax, "vmin", cfg.vmin, f"expected less than vmax ({cfg.vmax})")
    _check(cfg.wandb_mode in (None, "online", "offline", "disabled"), "wandb_mode",
           cfg.wandb_mode, "expected online, offline, disabled or null (wandb's choice: the "
           "WANDB_MODE environment variable, else online)")
    if cfg.plan_horizon is not None:  # None: plan over horizon steps (see plan_horizon())
        _positive_int(cfg, "plan_horizon")
    if cfg.use_score_network and plan_horizon(cfg) != cfg.horizon:
        raise ConfigError(f"plan_horizon={cfg.plan_horizon} differs from horizon={cfg.horizon}, "
                          "but the score network plans exactly horizon steps: drop plan_horizon "
                          "or use_score_network.")
    if cfg.score_only_inference and not cfg.use_score_network:
        raise ConfigError("score_only_inference=true needs use_score_network=true.")
    if cfg.threads is not None:
        _positive_int(cfg, "threads")
    for key in ("precision", "plan_precision"):
        _check(cfg.get(key, "fp32") in ("auto", "fp32", "bf16"), key, cfg.get(key),
               "expected auto, fp32 or bf16")
    _check(cfg.get("matmul_precision", "high") in ("high", "highest"), "matmul_precision",
           cfg.get("matmul_precision"), "expected high (TF32 on a CUDA GPU) or highest")
    _check(isinstance(cfg.seed_episodes, int) and cfg.seed_episodes >= 0, "seed_episodes",
           cfg.seed_episodes, "expected an integer >= 0")
    device = resolve_device(str(cfg.device))
    cfg.device = str(device)
    # auto: compiled kernels in CUDA graphs on a GPU, eager on the CPU (mbdpo/execution.py)
    cfg.compile = resolve_flag(cfg.compile, device)
    cfg.cuda_graphs = resolve_flag(cfg.cuda_graphs, device, graphs=True)

    # derived per-task values
    specs = [get_task(t) for t in tasks]
    cfg.episode_lengths = [s.episode_length for s in specs]
    cfg.discounts = [discount(s.episode_length, cfg) for s in specs]
    cfg.episodic = any(s.episodic for s in specs)
    if cfg.get("seeds") is not None:
        _check_seeds(cfg)
    _check(cfg.horizon < min(cfg.episode_lengths), "horizon", cfg.horizon,
           f"expected fewer steps than an episode of {cfg.task} ({min(cfg.episode_lengths)}): "
           "training samples horizon + 1 steps of one episode")
    if cfg.seed_steps is None:
        cfg.seed_steps = max(1000, 5 * max(cfg.episode_lengths))
    cfg.exp_name = name = str(cfg.exp_name)
    _check(name not in ("", ".", "..") and not set(name) & set("/\\\0")
           and name.strip() == name and name.isprintable(), "exp_name", name,
           "expected one folder name (not empty, '.' or '..'; no '/' or '\\')")
    return cfg


def _check_seeds(cfg) -> None:
    """``seeds=[...]``: distinct integers >= 0, for an online run of one task (the seeds' runs
    step in lockstep, ``mbdpo/trainers/seeds.py``: every task's episodes have a fixed
    length)."""
    from omegaconf import OmegaConf
    seeds = cfg.seeds
    listed = OmegaConf.is_list(seeds) or isinstance(seeds, (list, tuple))
    ints = listed and len(seeds) > 0 and all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
    _check(ints, "seeds", list(seeds) if listed else seeds,
           "expected a list of integers >= 0, e.g. seeds=[1,2,3]")
    _check(len(set(seeds)) == len(seeds), "seeds", list(seeds), "expected distinct seeds")
    if cfg.multitask:
        raise ConfigError("seeds=[...] trains several seeds of an online run of one task in one "
                          "process; multi-task offline training takes one seed per run: pass "
                          "seed=N and start a run per seed.")


def one_seed_only(cfg, script: str, does: str) -> None:
    """Scripts other than train.py run one seed: ``seeds=[...]`` is refused in one sentence."""
    if cfg.get("seeds") is not None:
        raise ConfigError(f"seeds=[...] is for scripts/train.py; {script} {does}: pass seed=N.")


def plan_horizon(cfg) -> int:
    """The planner's look-ahead: ``plan_horizon`` if set, else the training ``horizon``."""
    return int(cfg.get("plan_horizon") or cfg.horizon)


def run_dir(cfg) -> str:
    """logs/<task>/<seed>/<exp_name>"""
    return os.path.join(str(cfg.work_dir), str(cfg.task), str(cfg.seed), cfg.exp_name)


def num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def human(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"


def eta_string(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def command_line_keys() -> set:
    """The settings given on the command line of a Hydra script (empty outside Hydra)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        overrides = HydraConfig.get().overrides.task
    except (ImportError, ValueError):
        return set()
    return {o.split("=", 1)[0].lstrip("+~") for o in overrides}


# settings only some scripts (or runs) read: given elsewhere they would be silently ignored
READ_BY = {"checkpoint": ("evaluate.py", "offline_to_online.py", "make_dataset.py",
                          "visualize_latents.py"),
           "other_task": ("evaluate.py",),
           **{k: ("offline_to_online.py",) for k in ("off2on_task", "save_path", "source_task",
                                                     "load_checkpoint", "compare_scratch",
                                                     "seed_episodes")},
           **{k: ("make_dataset.py",) for k in ("episodes_per_task", "out")}}
OFFLINE_ONLY = ("data_dir", "store_dir", "check_values", "eval_tasks")
ONLINE_ONLY = ("seed_steps", "num_envs", "utd", "buffer_size", "save_replay")
TRAINING = ("steps", "seed_steps", "num_envs", "utd", "batch_size", "lr", "buffer_size",
            "save_model_every", "save_replay", "eval_freq", "log_freq", "resume", "overwrite")


def no_effect(cfg, raw: dict, given: set, script: str) -> list[str]:
    """Sentences naming each setting given on the command line (``given``) that the run of
    ``script`` will not use, and each count that makes no sense, so that nothing is ignored
    silently. ``raw``: the settings as given, before ``parse_cfg`` resolved them."""
    out = []
    if raw.get("cuda_graphs") is True and resolve_device(str(cfg.device)).type != "cuda":
        out.append("cuda_graphs=true has no effect off a GPU (CUDA graphs record GPU work).")
    if "matmul_precision" in given and resolve_device(str(cfg.device)).type != "cuda":
        out.append(f"matmul_precision={cfg.matmul_precision} has no effect off a GPU (it "
                   "chooses TF32 or IEEE float32 for CUDA's matrix multiplies).")
    if "seed" in given and cfg.get("seeds") is not None:
        out.append(f"seed={cfg.seed} has no effect with seeds={list(cfg.seeds)}: the runs are "
                   "those of the seeds listed.")
    out += [f"{key} has no effect in {script}: it is a setting of {', '.join(readers)}."
            for key, readers in READ_BY.items() if key in given and script not in readers]
    if script == "train.py":
        run, other = (("offline pretraining", "online runs") if cfg.multitask else
                      ("an online run", "multi-task offline pretraining (multitask=true)"))
        out += [f"{key} has no effect on {run}: it is a setting of {other}." for key in
                (ONLINE_ONLY if cfg.multitask else OFFLINE_ONLY) if key in given]
        if "save_model_every" in given and 0 < cfg.save_model_every >= cfg.steps:
            out.append(f"save_model_every={cfg.save_model_every:,} is not below steps="
                       f"{cfg.steps:,}: no <step>.pt is written, only final.pt.")
        span = cfg.num_envs * cfg.episode_lengths[0]  # steps between episode boundaries
        if "steps" in given and not cfg.multitask and cfg.steps % span:
            envs = f", {cfg.num_envs} environments at once" if cfg.num_envs > 1 else ""
            out.append(f"steps={cfg.steps:,} ends inside an episode ({cfg.task}'s are "
                       f"{cfg.episode_lengths[0]:,} steps{envs}): the run goes on to the end of "
                       f"the episodes under way (step {-(-cfg.steps // span) * span:,} at full "
                       "length) and evaluates and saves there.")
        if "eval_freq" in given and cfg.eval_freq > cfg.steps:
            out.append(f"eval_freq={cfg.eval_freq:,} is above steps={cfg.steps:,}: the run "
                       "evaluates at its start and end only.")
    if script in ("evaluate.py", "visualize_latents.py"):
        out += [f"{key} has no effect in {script}, which does not train." for key in TRAINING
                if key in given]
    return out
