"""What every training loop shares: seeding, the run folder, checkpoints that resume can read,
a signal flag for Ctrl-C / SIGTERM, and the console progress line."""
from __future__ import annotations

import json
import os
import signal
import time

import torch
from omegaconf import OmegaConf

from mbdpo import checkpoint as ckpt
from mbdpo.config import run_dir


def code_version() -> str:
    """The git commit of the code that runs (``+dirty`` with uncommitted changes), or
    'unknown' outside a git checkout."""
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                                capture_output=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, text=True, capture_output=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit + ("+dirty" if dirty else "")) if commit else "unknown"


def write_metadata(cfg, folder: str) -> None:
    """Facts about a run a reader of its numbers needs (e.g. Meta-World environment version),
    and the code versions that ran it: one entry per start or resume with other code."""
    path = os.path.join(folder, "metadata.json")
    commits = []
    if cfg.get("resume") and os.path.exists(path):
        with open(path) as f:
            commits = json.load(f).get("commits", [])
    version = code_version()
    if not commits or commits[-1] != version:
        commits.append(version)
    meta = {"task": cfg.task, "tasks": list(cfg.tasks), "seed": cfg.seed,
            "model_size": cfg.model_size, "obs": cfg.obs, "commits": commits}
    if any(t.startswith("mw-") for t in cfg.tasks):
        meta["metaworld_env_version"] = "v3"
        meta["note"] = ("Meta-World tasks were evaluated on metaworld's -v3 environments; the "
                        "TD-MPC2 datasets were recorded on -v2.")
    os.makedirs(folder, exist_ok=True)
    with open(path, "w") as f:
        json.dump(meta, f, indent=1)


class StopRequested:
    """Ctrl-C / SIGTERM set a flag; the loop saves a checkpoint and exits at the next step.
    A second Ctrl-C stops at once."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            self._old[s] = signal.signal(s, self._handler)
        return self

    def _handler(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)

    def __bool__(self):
        return self.signum is not None


class Trainer:
    """Subclasses set ``self.agent`` and define ``counters()`` (the loop's step counters, saved
    in every checkpoint) and may add files to ``extra_state()`` (e.g. the replay)."""

    def __init__(self, cfg):
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        ckpt.seed_everything(cfg.seed)
        self.cfg = cfg
        self.dir = run_dir(cfg)
        self.model_dir = os.path.join(self.dir, "models")
        self.step = 0
        self.last_eval_step = -1
        self.elapsed_before = 0.0
        self.t_start = time.time()

    def counters(self) -> dict:
        return {}

    def extra_state(self) -> dict:
        """{file name in models/: state} written before latest.pt at every save."""
        return {}

    def load_extra_state(self, name: str, state) -> None:
        pass

    def elapsed(self) -> float:
        return self.elapsed_before + time.time() - self.t_start

    def save(self, step: int, names=()) -> str:
        """Write the extra state and latest.pt (what resume reads) and link latest.pt under
        ``names`` (e.g. final.pt, <step>.pt). Every file is written atomically."""
        for name, state in self.extra_state().items():
            ckpt.atomic_save(state, os.path.join(self.model_dir, name))
        state = {"agent": self.agent.state_dict(), "config": OmegaConf.to_container(self.cfg),
                 "step": step, "last_eval_step": self.last_eval_step, "rng": ckpt.rng_state(),
                 "elapsed": self.elapsed(), "counters": self.counters()}
        latest = os.path.join(self.model_dir, "latest.pt")
        ckpt.atomic_save(state, latest)
        for name in names:
            ckpt.atomic_link(latest, os.path.join(self.model_dir, name))
        return latest

    def claim_dir(self) -> None:
        """A run folder belongs to one run: a new run (no ``resume=true``) refuses a folder
        that holds one, unless ``overwrite=true``, which moves the old run aside (renamed
        ``<folder>.replaced-<time>``), never deleting it."""
        from mbdpo.config import ConfigError
        if self.cfg.resume or not any(os.path.exists(os.path.join(self.dir, name))
                                      for name in ("models", "eval.csv", "train.csv")):
            return
        if not self.cfg.get("overwrite"):
            raise ConfigError(f"{self.dir} already holds a run: pass resume=true to continue "
                              "it, overwrite=true to move it aside and start anew, or another "
                              "exp_name.")
        aside = f"{self.dir}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
        os.rename(self.dir, aside)
        print(f"overwrite=true: the run that was in {self.dir} is now in {aside}.")

    def resume(self) -> dict | None:
        """Load latest.pt into the agent and counters; None when there is nothing to resume."""
        path = os.path.join(self.model_dir, "latest.pt")
        if not os.path.exists(path):
            print(f"resume=true but {path} does not exist: starting a new run.")
            return None
        state = ckpt.load(path)
        ckpt.check_compatible(self.cfg, state["config"], path)
        self.agent.load_state_dict(state["agent"])
        for name in self.extra_state():
            self.load_extra_state(name, torch.load(os.path.join(self.model_dir, name),
                                                   weights_only=True))
        self.step, self.last_eval_step = state["step"], state["last_eval_step"]
        self.elapsed_before = state["elapsed"]
        for k, v in state["counters"].items():
            setattr(self, k, v)
        ckpt.set_rng_state(state["rng"])
        print(f"Resumed from {path} at step {self.step:,}.")
        return state

    def run_loop(self, what: str):
        """Print the start-up line (with the real parameter count), run ``self._loop`` with
        Ctrl-C / SIGTERM caught, close the logger."""
        from mbdpo.config import human, num_params
        m = self.agent.model
        print(f"MBDPO {what}: {human(num_params(m) - num_params(m.Qs_target))} learnable "
              f"parameters, device {self.cfg.device} -> {self.dir}", flush=True)
        with StopRequested() as stop:
            result = self._loop(stop)
        self.logger.finish()
        return result

    def interrupted(self, step: int) -> None:
        path = self.save(step)
        print(f"\nStopped: saved {path} at step {step:,}; continue with resume=true.",
              flush=True)
        raise SystemExit(130)
