"""What every training loop shares: seeding, the run folder, checkpoints that resume can read,
a signal flag for Ctrl-C / SIGTERM, and the console progress line."""
from __future__ import annotations

import copy
import json
import math
import os
import secrets
import signal
import stat
import sys
import time

import torch
from omegaconf import OmegaConf

from mbdpo import checkpoint as ckpt
from mbdpo import distributed, faults
import mbdpo.compiled as compiled_calls
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


def write_text(path: str, text: str) -> None:
    """Replace ``path`` by ``text`` atomically (a reader never sees half a file)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def packages() -> str:
    """What ``pip freeze`` lists (name==version of every installed distribution), read from
    the installed packages' metadata, without starting pip."""
    from importlib.metadata import distributions
    names = {(d.metadata["Name"] or "?").lower().replace("_", "-"): d.version
             for d in distributions()}
    return "".join(f"{n}=={v}\n" for n, v in sorted(names.items()))


def start_record(cfg, version: str) -> dict:
    """One start (or resume) of a run: when, which code, the command line, where it ran."""
    import platform
    device = str(cfg.device)
    if device.startswith("cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name(torch.device(device))
    else:
        name = platform.processor() or platform.machine()
        if os.path.exists("/proc/cpuinfo"):
            with open("/proc/cpuinfo") as f:
                name = next((ln.split(":", 1)[1].strip() for ln in f
                             if ln.startswith("model name")), name)
    return {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "commit": version.split("+")[0],
            "dirty": version.endswith("+dirty"), "command": " ".join([sys.executable,
                                                                       *sys.argv]),
            "cwd": os.getcwd(), "host": platform.node(), "device": device,
            "device_name": name, "threads": torch.get_num_threads(),
            "world_size": distributed.world(), "python": platform.python_version(),
            "torch": torch.__version__}


def write_metadata(cfg, folder: str) -> None:
    """The run's records, for whoever reads its numbers later: metadata.json (facts about the
    run, e.g. the Meta-World environment version; the code versions that ran it, one entry per
    start or resume with other code; every start with its commit, dirty flag, command line,
    device and versions), config.yaml (the resolved settings of the last start) and
    pip_freeze.txt (the packages of the last start)."""
    path = os.path.join(folder, "metadata.json")
    old = {}
    if cfg.get("resume") and os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
    commits, starts = old.get("commits", []), old.get("starts", [])
    version = code_version()
    if not commits or commits[-1] != version:
        commits.append(version)
    meta = {"task": cfg.task, "tasks": list(cfg.tasks), "seed": cfg.seed,
            "model_size": cfg.model_size, "obs": cfg.obs, "commits": commits,
            "starts": starts + [start_record(cfg, version)]}
    if any(t.startswith("mw-") for t in cfg.tasks):
        meta["metaworld_env_version"] = "v3"
        meta["note"] = ("Meta-World tasks were evaluated on metaworld's -v3 environments; the "
                        "TD-MPC2 datasets were recorded on -v2.")
    os.makedirs(folder, exist_ok=True)
    write_text(path, json.dumps(meta, indent=1))
    write_text(os.path.join(folder, "config.yaml"), OmegaConf.to_yaml(cfg, resolve=True))
    write_text(os.path.join(folder, "pip_freeze.txt"), packages())


class SignalHandler:
    """Ctrl-C and SIGTERM go to ``self._handler`` inside ``with``; the old handlers come back
    after. ``signum``: the last signal seen (None: none), taken over from the handler this one
    replaces when that one saw a signal: a stop whose KeyboardInterrupt was lost is still a
    stop. Python drops an exception raised where it cannot propagate (a ``__del__``, a weakref
    callback such as importlib's module-lock cleanup while a module imports) and prints it as
    "Exception ignored in ..." with a traceback that reads like a crash: inside ``with``, such
    a KeyboardInterrupt after a signal was seen is dropped without a word (the stop is kept in
    ``signum``); anything else goes to the hook that was there before."""

    def __init__(self):
        self.signum = None
        self._old = {}
        self._old_hook = None

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            self._old[s] = signal.signal(s, self._handler)
        outer = getattr(self._old[signal.SIGTERM], "__self__", None)
        if isinstance(outer, SignalHandler) and outer.signum is not None:
            self.signum = outer.signum
        self._old_hook, sys.unraisablehook = sys.unraisablehook, self._unraisable
        return self

    def _handler(self, signum, frame):
        raise NotImplementedError

    def _unraisable(self, unraisable) -> None:
        if not (isinstance(unraisable.exc_value, KeyboardInterrupt) and self.signum is not None):
            self._old_hook(unraisable)

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        sys.unraisablehook = self._old_hook


class StopAtOnce(SignalHandler):
    """Before a training loop takes the signals over: Ctrl-C and SIGTERM raise
    KeyboardInterrupt, and are remembered, as the code running when one comes may turn the
    KeyboardInterrupt into another error (Python 3.11 wraps one raised in a class body's
    ``__set_name__``, as while torch imports torch._dynamo, in a RuntimeError).
    ``stopped(err)``: whether ``err`` is that stop, or has a KeyboardInterrupt (a second
    Ctrl-C inside the loop) as its cause."""

    def _handler(self, signum, frame):
        self.signum = signum
        raise KeyboardInterrupt

    def stopped(self, err: BaseException) -> bool:
        return compiled_calls.stop_in(err) is not None or self.signum is not None


class StopWhileCompiling(KeyboardInterrupt):
    """A first Ctrl-C / SIGTERM that came while a function compiled (``compiled.compiling``):
    raised at once, where the next step may be minutes away; the loop saves its last mark
    as at any other stop (``Trainer.run_loop``)."""


class StopRequested(SignalHandler):
    """Ctrl-C / SIGTERM set a flag; the loop saves a checkpoint and exits at the next step.
    A second Ctrl-C stops at once. One that comes while a function compiles (seconds on a
    CPU, minutes on a GPU) raises ``StopWhileCompiling`` when ``while_compiling`` (off under
    torchrun, whose processes stop together at one update)."""

    def __init__(self, while_compiling: bool = True):
        super().__init__()
        self.while_compiling = while_compiling
        self._outer_hook = None

    def __enter__(self):
        super().__enter__()
        if self.while_compiling:  # a stop that came just before a compile starts ends it too
            self._outer_hook, compiled_calls.on_compile = compiled_calls.on_compile, self._starts
        return self

    def _starts(self):
        if self.signum is not None:
            self._stop_compile()

    def _handler(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        if self.while_compiling:
            self._stop_compile()

    def _stop_compile(self, *_):
        """Raise ``StopWhileCompiling`` while a compile is under way, and again 0.1 s later
        (SIGALRM) until one lands or the compile is over: Python drops an exception raised
        inside a weakref callback, and the compiler runs some (seen: dynamo's
        ``ExactWeakKeyDictionary``; that stop waited 39 s for the compile's end)."""
        if not compiled_calls.compiling():
            return
        if signal.SIGALRM not in self._old:
            self._old[signal.SIGALRM] = signal.signal(signal.SIGALRM, self._stop_compile)
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        raise StopWhileCompiling

    def __exit__(self, *exc):
        if signal.SIGALRM in self._old:
            signal.setitimer(signal.ITIMER_REAL, 0)
        if self.while_compiling:
            compiled_calls.on_compile = self._outer_hook
        super().__exit__(*exc)
        self._old.pop(signal.SIGALRM, None)

    def __bool__(self):
        return self.signum is not None


class RunDiverged(RuntimeError):
    """A loss or a weight became NaN or infinite: the run stops, its last checkpoint kept."""


def clone_tree(obj):
    """A copy of nested dicts / lists / tuples whose tensors are copied to the CPU (a state
    dict holds references to the live weights and optimiser moments; on a GPU the copy would
    double the model's memory there)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: clone_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(clone_tree(v) for v in obj)
    return copy.deepcopy(obj)


def tensor_bytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def tensor_count(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return 1
    if isinstance(obj, dict):
        return sum(tensor_count(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_count(v) for v in obj)
    return 0


# torch.save writes a zip file: per tensor a record (header, name, 64-byte alignment, central
# directory entry) and its share of the pickled structure (config, counters, random states):
# 310-420 bytes per tensor measured on checkpoints and replays of 8 to 259 tensors. Rounded
# up, so that the estimate is never below the file.
PER_TENSOR, PER_FILE = 1024, 64 * 1024


def unit_bytes(*trees, extra_tensors: int = 0, extra_bytes: int = 0) -> int:
    """Bytes on disk of a checkpoint unit whose files hold ``trees`` (latest.pt's state and each
    extra file's), plus ``extra_tensors`` tensors of ``extra_bytes`` not made yet: the one
    estimate of the free-space checks at start and at every save."""
    return (sum(tensor_bytes(t) + PER_TENSOR * tensor_count(t) for t in trees) + extra_bytes
            + PER_TENSOR * extra_tensors + PER_FILE * len(trees))


def models_bytes(folder: str) -> int:
    """Bytes of the files in ``folder`` (each inode once: <step>.pt are hard links), not of its
    subfolders."""
    seen, total = set(), 0
    if os.path.isdir(folder):
        for f in os.listdir(folder):
            st = os.stat(os.path.join(folder, f))
            if stat.S_ISREG(st.st_mode) and st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_size
    return total


def writable_dir(folder: str, keep: bool = True, what: str = "the run folder",
                 key: str = "a work_dir (or save_path)") -> None:
    """Make ``folder`` and write a file in it, or refuse in one sentence (ConfigError) that
    names it as ``what`` and asks for another ``key``; with ``keep=False`` the folders it made
    are removed again (a check before the work starts)."""
    from mbdpo.config import ConfigError
    made, parent = [], os.path.abspath(folder)
    while not os.path.exists(parent) and parent != os.path.dirname(parent):
        made.append(parent)
        parent = os.path.dirname(parent)
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f".write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
        for d in made if not keep else ():  # deepest first
            os.rmdir(d)
    except OSError as err:
        raise ConfigError(f"Cannot write {what} {folder} ({err.strerror or err}): pass {key} "
                          "that is a folder you can write to.") from None


def gb(n: float, up: bool = False) -> str:
    """Bytes in MB or GB; ``up``: rounded up (a need is never shown below the space it is
    compared with, which is rounded down)."""
    unit, digits = (1e9, 2) if n >= 1e8 else (1e6, 1)
    scaled = math.ceil(n / unit * 10**digits) if up else math.floor(n / unit * 10**digits)
    return f"{scaled / 10**digits:.{digits}f} {'GB' if unit == 1e9 else 'MB'}"


class Trainer:
    """Subclasses set ``self.agent`` and define ``counters()`` (the loop's step counters, saved
    in every checkpoint) and may add files to ``extra_state()`` (e.g. the replay).

    A checkpoint is one unit: the extra files are written first under names of their own
    (``replay-<step>-<tag>.pt``), then ``latest.pt``, which names them, atomically; the files
    of the previous checkpoint are removed only after that. A kill at any point leaves the
    previous unit or the new one whole, never a mix; leftovers are removed at the next start.
    """

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
        self._mark = None
        self.saved_step = None  # the step of the last checkpoint written or resumed from

    def counters(self) -> dict:
        return {}

    def extra_state(self, marked: bool = False) -> dict:
        """{file name in models/: state} saved with every checkpoint; with ``marked``, as it
        was at the last ``mark()``."""
        return {}

    def mark_extra(self) -> None:
        """Remember the extra state of this moment (see ``mark``)."""

    def load_extra_state(self, name: str, state) -> None:
        pass

    def restore(self, state: dict) -> None:
        """Subclasses restore what they added to ``checkpoint_state``."""

    def elapsed(self) -> float:
        return self.elapsed_before + time.time() - self.t_start

    def checkpoint_state(self, step: int) -> dict:
        return {"agent": self.agent.state_dict(), "config": OmegaConf.to_container(self.cfg),
                "step": step, "last_eval_step": self.last_eval_step, "rng": ckpt.rng_state(),
                "elapsed": self.elapsed(), "counters": self.counters()}

    def mark(self) -> None:
        """Remember the whole state of this moment in memory: a point where nothing is half
        done (no unfinished episode, no evaluation under way). A stop writes it, so that resume
        continues exactly the run it interrupted, not one that redoes an episode with weights
        already updated by it."""
        self._mark = clone_tree(self.checkpoint_state(self.step))
        self.mark_extra()

    def check_finite(self, losses: dict, step: int) -> None:
        """Stop the run (``RunDiverged``) when a loss of the last update or a weight is NaN or
        infinite; two host syncs, so the loops call it at log intervals and episode
        boundaries (before every save), not at every update."""
        dev = self.agent.device
        finite = torch.stack([torch.isfinite(torch.as_tensor(v, device=dev)).all()
                              for v in losses.values()]).tolist() if losses else []
        bad = [k for k, ok in zip(losses, finite) if not ok]
        params = [p.detach().reshape(-1) for p in self.agent.model.parameters()]
        if not bad and not torch.isfinite(torch.cat(params).float().abs().sum()):
            losses, bad = {"the weights": float("nan")}, ["the weights"]
        if bad:
            kept = (f"its last checkpoint (step {self.saved_step:,}) is kept in "
                    f"{self.model_dir}" if self.saved_step is not None
                    else "no checkpoint had been saved yet")
            names = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            raise RunDiverged(
                f"The run diverged at step {step:,}: {names} became NaN or infinite. It stopped "
                f"without saving; {kept}. Lower lr (now {self.cfg.lr}) or check the task's "
                "observations and rewards.")

    def save(self, step: int, names=(), marked: bool = False) -> str:
        """Write the checkpoint of this moment (with ``marked``: the one remembered by the
        last ``mark()``) as one unit, and link latest.pt under ``names`` (e.g. final.pt,
        <step>.pt)."""
        state = dict(self._mark) if marked else self.checkpoint_state(step)
        if distributed.active():  # torchrun: every process's random streams, rank 0 writes
            state["rng_ranks"] = distributed.gather_objects(state["rng"])
            # the processes' weights must be the same: a checkpoint of one would lose the
            # others' otherwise
            if not marked:
                prints = distributed.gather_objects(distributed.fingerprint(self.agent.model))
                if len(set(prints)) > 1:
                    raise RuntimeError(f"the {len(prints)} processes hold different weights "
                                       f"at step {step:,}: data-parallel training is broken.")
                state["rank_fingerprints"] = prints
            if not distributed.is_main():
                self.saved_step = state["step"]
                return os.path.join(self.model_dir, "latest.pt")
        extras = self.extra_state(marked)
        self.check_space(unit_bytes(state, *extras.values()), state["step"])
        files, written = {}, False
        try:
            for name, extra in extras.items():
                stem = name.rsplit(".", 1)[0]
                files[name] = f"{stem}-{state['step']}-{secrets.token_hex(3)}.pt"
                ckpt.atomic_save(extra, os.path.join(self.model_dir, files[name]))
            faults.reach("save.extra-written")
            state["files"] = files
            latest = os.path.join(self.model_dir, "latest.pt")
            ckpt.atomic_save(state, latest)
            written, self.saved_step = True, state["step"]
            faults.reach("save.latest-written")
            for name in names:
                ckpt.atomic_link(latest, os.path.join(self.model_dir, name))
        except OSError as err:
            for f in files.values() if not written else ():  # the previous unit is untouched
                if os.path.exists(os.path.join(self.model_dir, f)):
                    os.remove(os.path.join(self.model_dir, f))
            raise ckpt.CheckpointError(
                f"Could not write the checkpoint of step {state['step']:,} to {self.model_dir} "
                f"({err.strerror or err}): {self._kept()}; free space or fix the folder's "
                "permissions, then continue with resume=true.") from None
        self.saved_step = state["step"]
        self.remove_leftovers()
        return latest

    def _kept(self) -> str:
        return (f"the checkpoint of step {self.saved_step:,} is intact"
                if self.saved_step is not None else "no earlier checkpoint of this run exists")

    def _latest_files(self) -> set | None:
        """The extra files latest.pt names (None: no latest.pt, or one from before units)."""
        path = os.path.join(self.model_dir, "latest.pt")
        if not os.path.exists(path):
            return None
        try:
            files = ckpt.load(path).get("files")
        except ckpt.CheckpointError:  # unreadable: delete nothing, resume will say why
            return set(os.listdir(self.model_dir))
        return None if files is None else set(files.values())

    def remove_leftovers(self) -> None:
        """Remove what a killed save leaves in models/: temporary files, and extra files of a
        unit whose latest.pt was never written or has been replaced."""
        if not os.path.isdir(self.model_dir):
            return
        keep = self._latest_files()
        stems = tuple(name.rsplit(".", 1)[0] + "-" for name in self.extra_names)
        for f in os.listdir(self.model_dir):
            unit_file = f.startswith(stems) or f in self.extra_names  # (replay.pt: old runs)
            if f.startswith(".tmp-") or f.endswith(".tmp-link") or (
                    unit_file and keep is not None and f not in keep) or (
                    f.startswith(stems) and keep is None):
                os.remove(os.path.join(self.model_dir, f))

    extra_names: tuple = ()  # the names of extra_state() (e.g. "replay.pt")

    def check_space(self, need: int, step: int) -> None:
        """Refuse to save (one sentence) when the disk cannot hold the new unit (``need``
        bytes, ``unit_bytes``) next to the previous one; the previous checkpoint stays whole."""
        import shutil
        os.makedirs(self.model_dir, exist_ok=True)
        free = shutil.disk_usage(self.model_dir).free
        if free < need:
            raise ckpt.CheckpointError(
                f"Not enough free space to save the checkpoint of step {step:,}: it needs "
                f"~{gb(need, up=True)} and {self.model_dir} has {gb(free)} free; "
                f"{self._kept()}. Free space (or move the run folder) and continue with "
                "resume=true.")

    def expected_extra(self) -> tuple[list, int, int]:
        """The extra files of the checkpoint at the end of the run, for ``unit_bytes``: (their
        states as they are now, tensors and bytes still to come). Subclasses whose files grow
        (the replay) say how much."""
        return list(self.extra_state().values()), 0, 0

    def space_needed(self) -> tuple[int, int, int]:
        """(bytes the run's checkpoints take at its end, bytes of one unit then, number of
        <step>.pt kept): two units while one replaces the other, and every <step>.pt, a hard
        link that keeps the latest.pt of its step. The optimisers' moments, made at the first
        update, are counted before they exist (Adam: two per parameter and a step)."""
        state = self.checkpoint_state(self.step)
        moments, count = self.agent.unmade_moments()
        trees, tensors, grow = self.expected_extra()
        unit = unit_bytes(state, *trees, extra_tensors=count + tensors,
                          extra_bytes=moments + grow)
        state_file = unit_bytes(state, extra_tensors=count, extra_bytes=moments)
        every = self.cfg.get("save_model_every") or 0
        kept = max(0, (int(self.cfg.steps) - 1) // every) if every else 0
        return 2 * unit + kept * state_file, unit, kept

    def claim_dir(self, others: int = 0) -> int:
        """A run folder belongs to one run: a new run (no ``resume=true``) refuses a folder
        that holds one, unless ``overwrite=true``, which moves the old run aside (renamed
        ``<folder>.replaced-<time>``), never deleting it. The folder must be writable and
        the disk hold two checkpoints of the run's end (one replaces the other) next to
        ``others`` bytes that runs of the same process will write (``seeds=[...]``: the seeds
        claimed before this one); leftovers of a killed save are removed. Returns the bytes
        this run's checkpoints still need."""
        import shutil
        from mbdpo.config import ConfigError
        writable_dir(self.dir)
        if not self.cfg.resume and any(os.path.exists(os.path.join(self.dir, name))
                                       for name in ("models", "eval.csv", "train.csv")):
            if not self.cfg.get("overwrite"):
                raise ConfigError(f"{self.dir} already holds a run: pass resume=true to "
                                  "continue it, overwrite=true to move it aside and start "
                                  "anew, or another exp_name.")
            aside = f"{self.dir}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
            os.rename(self.dir, aside)
            os.makedirs(self.dir)
            print(f"overwrite=true: the run that was in {self.dir} is now in {aside}.")
        self.remove_leftovers()
        need, unit, kept = self.space_needed()
        held = models_bytes(self.model_dir)  # a resumed run's checkpoints count towards it
        free = shutil.disk_usage(self.dir).free
        more = max(0, need - held)
        if free < more + others:
            parts = [f"two of ~{gb(unit, up=True)} at its end (a new one is written before the "
                     "old one is removed)"]
            if kept:
                parts.append(f"{kept} kept <step>.pt (save_model_every)")
            less = f", less the {gb(held)} already in {self.model_dir}" if held else ""
            also = (f", next to the ~{gb(others, up=True)} of the seeds before it in this "
                    "process" if others else "")
            raise ConfigError(
                f"{self.dir} has {gb(free)} free but this run's checkpoints need ~"
                f"{gb(more, up=True)} more ({' and '.join(parts)}{less}){also}: free space, "
                "lower steps, buffer_size or save_model_every, or pick another work_dir.")
        return more

    def resume(self) -> dict | None:
        """Load latest.pt and the files it names into the agent and counters; None when there
        is nothing to resume."""
        path = os.path.join(self.model_dir, "latest.pt")
        if not os.path.exists(path):
            print(f"resume=true but {path} does not exist: starting a new run.")
            return None
        state = ckpt.load(path)
        ckpt.check_compatible(self.cfg, state["config"], path)
        self.agent.load_state_dict(state["agent"])
        files = state.get("files", {name: name for name in self.extra_state()})  # before units
        for name, fname in files.items():
            extra = os.path.join(self.model_dir, fname)
            if not os.path.exists(extra):
                raise ckpt.CheckpointError(
                    f"{path} names {fname}, which is missing from {self.model_dir}: the run "
                    "folder is incomplete; restore the file, or start anew with overwrite=true.")
            self.load_extra_state(name, torch.load(extra, weights_only=True))
        self.step, self.last_eval_step = state["step"], state["last_eval_step"]
        self.elapsed_before = state["elapsed"]
        for k, v in state["counters"].items():
            setattr(self, k, v)
        ranks = state.get("rng_ranks") or []
        if len(ranks) == distributed.world():
            ckpt.set_rng_state(ranks[distributed.rank()])
        else:  # saved by another number of processes: rank 0's streams, the others reseeded
            ckpt.set_rng_state(state["rng"])
            distributed.own_noise(self.cfg.seed + self.step)
        self.restore(state)
        self.saved_step = self.step
        print(f"Resumed from {path} at step {self.step:,}.")
        return state

    def finished(self) -> bool:
        """A resumed run that already reached ``steps`` and evaluated there: nothing to do."""
        if self.step >= self.cfg.steps and self.last_eval_step >= self.step:
            final = os.path.join(self.model_dir, "final.pt")
            if not os.path.exists(final) and distributed.is_main():
                # killed between latest.pt and its final.pt link
                ckpt.atomic_link(os.path.join(self.model_dir, "latest.pt"), final)
            print(f"The run in {self.dir} already finished at step {self.step:,} (its last "
                  "evaluation is in eval.csv): nothing to do; pass a larger steps= to train "
                  "on.", flush=True)
            return True
        return False

    def run_loop(self, what: str):
        """Print the start-up line (with the real parameter count), run ``self._loop`` with
        Ctrl-C / SIGTERM caught, close the logger."""
        from mbdpo.config import human, num_params
        m = self.agent.model
        print(f"MBDPO {what}: {human(num_params(m) - num_params(m.Qs_target))} learnable "
              f"parameters, device {self.cfg.device} -> {self.dir}", flush=True)
        with StopRequested(while_compiling=not distributed.active()) as stop:
            try:
                result = self._loop(stop)
            except StopWhileCompiling:
                self.interrupted()  # the last mark: the call that compiled is done again
        self.logger.finish()
        return result

    def interrupted(self, marked: bool = True) -> None:
        """Save on a stop and exit: the state remembered by the last ``mark()`` (a stop in the
        middle of an episode or an evaluation), or with ``marked=False`` that of now. A stop
        before the first mark (at the loop's first boundary: with seeds=[...] a lane may wait
        there for the others to load) saves the state of now, which is the run's start."""
        if self._mark is None:
            marked = False
        path = self.save(self.step, marked=marked)
        print(f"\nStopped: saved {path} at step {self.saved_step:,}; continue with "
              "resume=true.", flush=True)
        raise SystemExit(130)
