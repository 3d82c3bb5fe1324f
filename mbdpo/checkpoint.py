"""Checkpoints: atomic save, safe load (``weights_only=True``), compatibility checks, RNG state.

A checkpoint is a dict of tensors and plain Python values only: agent state (networks,
optimisers, running statistics, planner warm start), the config as a plain dict, the step
counters and the RNG states. Nothing else is ever unpickled.
"""
from __future__ import annotations

import os
import random
import tempfile

import numpy as np
import torch

from mbdpo.config import SHAPE_KEYS


class CheckpointError(ValueError):
    pass


def atomic_save(obj, path: str) -> None:
    """Write to a temporary file in the same folder, then rename: a reader never sees a
    partial file, and a crash mid-write leaves the previous file intact."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as f:
            out = _Writes(f)
            try:
                torch.save(obj, out)
            except RuntimeError:  # torch reports a failed write (disk full) as its own error
                if out.error is not None:
                    raise out.error from None
                raise
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


class _Writes:
    """A file for ``torch.save`` that keeps the OSError of a failed write (ENOSPC, EFBIG,
    EDQUOT), which torch's writer turns into a RuntimeError without the reason."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.f.flush()


def atomic_link(src: str, dst: str) -> None:
    """Give the file ``src`` a second name ``dst`` (hard link, copy where links fail),
    replacing ``dst`` atomically."""
    tmp = dst + ".tmp-link"
    if os.path.exists(tmp):
        os.remove(tmp)
    try:
        os.link(src, tmp)
    except OSError:
        import shutil
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def load(path: str, map_location="cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``; every failure is one clear sentence."""
    if not path:
        raise CheckpointError("No checkpoint given: pass checkpoint=/path/to/file.pt.")
    if not os.path.isfile(path):
        raise CheckpointError(f"Checkpoint {path} does not exist: check the path "
                              "(checkpoints are written to logs/<task>/<seed>/<exp_name>/models/).")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception:  # corrupt file, or one holding objects other than tensors
        raise CheckpointError(
            f"Could not load {path} as an MBDPO checkpoint: it is truncated, corrupt, or not a "
            "checkpoint written by this project.") from None
    if not isinstance(state, dict) or "agent" not in state or "config" not in state:
        raise CheckpointError(f"{path} is not an MBDPO checkpoint (it has no agent state or "
                              "config): pass a .pt file from a models/ folder.")
    return state


def unit_file(latest: str, name: str) -> str:
    """The path of the file a checkpoint unit stores as ``name`` (e.g. "replay.pt"): the one
    ``latest`` names (``replay-<step>-<tag>.pt``), or ``name`` itself in runs from before units."""
    files = load(latest).get("files", {})
    return os.path.join(os.path.dirname(latest), files.get(name, name))


def check_compatible(cfg, saved_cfg: dict, path: str = "the checkpoint") -> None:
    """Raise naming the first setting whose value changes a network shape."""
    for key in SHAPE_KEYS:
        if key not in saved_cfg or key not in cfg:
            continue
        mine, theirs = cfg[key], saved_cfg[key]
        mine = list(mine) if hasattr(mine, "__iter__") and not isinstance(mine, str) else mine
        if mine != theirs:
            extra = ""
            if key in ("enc_dim", "mlp_dim", "latent_dim", "num_enc_layers", "num_q"):
                extra = f" (it was trained with model_size={saved_cfg.get('model_size')})"
            hint = (f"pass {key}={theirs}" if key not in ("obs_dim", "action_dim", "num_tasks")
                    else "use a task with the same observation and action sizes")
            raise CheckpointError(
                f"{path} does not match this config: {key} is {theirs} in the checkpoint but "
                f"{mine} here{extra}; {hint}.")
    if "tasks" in saved_cfg and list(cfg.tasks) != list(saved_cfg["tasks"]) and cfg.multitask:
        raise CheckpointError(f"{path} was trained on another task set: task was "
                              f"{saved_cfg.get('task')}; pass task={saved_cfg.get('task')}.")


# What a checkpoint's networks are built from. Evaluation and fine-tuning take these from the
# checkpoint's config (except those given on the command line, which must then agree).
NET_KEYS = ("model_size", "obs", "enc_dim", "mlp_dim", "latent_dim", "num_enc_layers", "num_q",
            "num_bins", "vmin", "vmax", "task_dim", "simnorm_dim", "num_channels", "horizon",
            "use_score_network", "diffusion_time_embed_dim", "dropout", "log_std_min",
            "log_std_max")
# A multi-task checkpoint's task set and the per-task values that go with it.
TASK_SET_KEYS = ("obs_dim", "obs_shape", "action_dim", "episodic", "tasks", "action_dims",
                 "discounts", "episode_lengths", "num_tasks")


def adopt_model_config(cfg, saved: dict, keep=()) -> None:
    """Set the network settings of ``cfg`` (all but those in ``keep``) and, for a multi-task
    checkpoint, its task set, from the checkpoint's config ``saved``."""
    keys = NET_KEYS + (TASK_SET_KEYS if saved.get("multitask") else ())
    for key in keys:
        if key in saved and key not in keep:
            cfg[key] = saved[key]
    cfg.multitask = bool(saved.get("multitask", False))


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(np_state[1].copy()),
            "numpy_pos": int(np_state[2]), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32),
                         state["numpy_pos"], 0, 0.0))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
