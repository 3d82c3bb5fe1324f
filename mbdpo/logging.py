"""Console and CSV logging always; wandb and videos when asked."""
from __future__ import annotations

import csv
import os
import time

from omegaconf import OmegaConf

from mbdpo.config import eta_string


class CSVLog:
    """Append-only CSV; on resume, rows past the checkpoint's step are dropped so that no row
    is written twice. Columns are fixed by the first row written."""

    def __init__(self, path: str, resume_step: int | None = None):
        self.path = path
        self.fields: list[str] | None = None
        if os.path.exists(path):
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
                fields = list(rows[0].keys()) if rows else None
            if resume_step is None:
                os.replace(path, path + ".old")  # a fresh run never mixes with an old one
            else:
                self.fields = fields
                keep = [r for r in rows if float(r["step"]) <= resume_step]
                tmp = path + ".tmp"
                with open(tmp, "w", newline="") as f:
                    if fields:
                        w = csv.DictWriter(f, fieldnames=fields)
                        w.writeheader()
                        w.writerows(keep)
                os.replace(tmp, path)

    def write_all(self, rows: list[dict]) -> None:
        """Several rows at once; a new file gets the union of their columns (e.g. a task table
        where only some tasks report success)."""
        if self.fields is None and rows:
            self.fields = list(dict.fromkeys(k for r in rows for k in r))
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.fields).writeheader()
        for row in rows:
            self.write(row)

    def write(self, row: dict) -> None:
        new = self.fields is None
        if new:
            self.fields = list(row.keys())
        elif any(k not in self.fields for k in row):
            self._widen([k for k in row if k not in self.fields])
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({k: _fmt(row.get(k, "")) for k in self.fields})

    def _widen(self, extra: list[str]) -> None:
        """New columns (e.g. the losses once updates start): the file is rewritten once with
        them added before ``elapsed_time``, earlier rows leaving them empty."""
        at = self.fields.index("elapsed_time") if "elapsed_time" in self.fields else len(self.fields)
        self.fields = self.fields[:at] + extra + self.fields[at:]
        with open(self.path, newline="") as f:
            rows = list(csv.DictReader(f))
        tmp = self.path + ".tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, self.path)


def _fmt(v):
    if hasattr(v, "item"):
        v = v.item()
    return f"{v:.6g}" if isinstance(v, float) else v


class Logger:
    def __init__(self, cfg, run_dir: str, resume_step: int | None = None,
                 resume_eval_step: int | None = None, enabled: bool = True,
                 several: bool = False):
        """On resume, train rows past ``resume_step`` and eval rows past ``resume_eval_step``
        (the last evaluation the checkpoint knows of) are dropped. ``enabled=False`` (the
        processes of a torchrun run other than rank 0) writes nothing. ``several``: other
        runs of this process log at the same time (``seeds=[...]``), each to its own wandb
        run."""
        self.cfg, self.dir = cfg, run_dir
        self.start = time.time()
        self.tag = ""  # after the kind in console lines (" seed 3" with seeds=[...])
        self.wandb = self.tensorboard = None
        self.csv = {}
        if not enabled:
            return
        os.makedirs(run_dir, exist_ok=True)
        self.csv = {"train": CSVLog(os.path.join(run_dir, "train.csv"), resume_step),
                    "eval": CSVLog(os.path.join(run_dir, "eval.csv"), resume_eval_step)}
        if cfg.enable_wandb and cfg.wandb_mode != "disabled":
            self.wandb = _init_wandb(cfg, run_dir, resume_step is not None, several)
        if cfg.get("enable_tensorboard"):
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                from mbdpo.config import ConfigError
                raise ConfigError("enable_tensorboard=true needs the tensorboard package: pip "
                                  "install -e '.[tensorboard]', or drop enable_tensorboard.")
            # purge_step: on resume, events past the checkpoint's step are dropped, as the CSVs'
            self.tensorboard = SummaryWriter(os.path.join(run_dir, "tensorboard"),
                                             purge_step=None if resume_step is None
                                             else resume_step + 1)

    def log(self, name: str, row: dict, step: int) -> None:
        if name not in self.csv:
            return
        self.csv[name].write(row)
        values = {f"{name}/{k}": v.item() if hasattr(v, "item") else v
                  for k, v in row.items() if k != "step"}
        if self.wandb is not None:  # numbers as numbers (wandb plots no strings)
            self.wandb.log(values, step=step)
        if self.tensorboard is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tensorboard.add_scalar(k, v, step)
            self.tensorboard.flush()

    def video(self, path: str, step: int) -> None:
        """An evaluation video (an mp4 already written) to wandb, as media."""
        if self.wandb is not None:
            import wandb
            self.wandb.log({"eval/video": wandb.Video(path, format="mp4")}, step=step)

    def progress_line(self, kind: str, step: int, total: int, steps_per_sec: float,
                      **values) -> str:
        eta = max(total - step, 0) / steps_per_sec if steps_per_sec > 0 else float("inf")
        vals = "  ".join(f"{k} {_fmt(float(v)) if not isinstance(v, str) else v}"
                         for k, v in values.items())
        return (f"[{kind}{self.tag}] step {step:>9,}/{total:,}  {vals}  "
                f"{steps_per_sec:6.1f} steps/s  elapsed {eta_string(time.time() - self.start)}  ETA {eta_string(eta)}")

    def finish(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
        if self.tensorboard is not None:
            self.tensorboard.close()


def _init_wandb(cfg, run_dir: str, resume: bool, several: bool):
    import wandb
    id_file = os.path.join(run_dir, "wandb_id.txt")
    run_id = open(id_file).read().strip() if resume and os.path.exists(id_file) else None
    try:  # mode None: wandb's own choice (WANDB_MODE, else online)
        run = wandb.init(project=cfg.wandb_project, entity=cfg.wandb_entity,
                         mode=cfg.wandb_mode, dir=run_dir,
                         name=f"{cfg.task}-{cfg.seed}-{cfg.exp_name}", id=run_id,
                         resume="allow" if run_id else None,
                         config=OmegaConf.to_container(cfg, resolve=True),
                         **({"reinit": "create_new"} if several else {}))
    except (wandb.errors.UsageError, wandb.errors.CommError) as err:  # no login, no network
        from mbdpo.config import ConfigError
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(
            f"W&B could not start the run ({reason}): log in once with `wandb login` (or set "
            "WANDB_API_KEY) where W&B can be reached, or log offline with wandb_mode=offline "
            "and upload later with `wandb sync`; enable_wandb=false logs to the CSVs "
            "only.") from None
    with open(id_file, "w") as f:
        f.write(run.id)
    return run


def save_video(frames, path: str, fps: int = 15) -> None:
    import imageio
    os.makedirs(os.path.dirname(path), exist_ok=True)
    imageio.mimsave(path, frames, fps=fps, macro_block_size=1)
