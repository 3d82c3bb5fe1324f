"""What goes wrong around a run is answered by one sentence and loses nothing: a diverged run
stops naming the loss with its last checkpoint kept, a disk that refuses a checkpoint stops the
run with the previous one intact, a run folder that cannot be written or a disk too small is
refused before training, Ctrl-C / SIGTERM sent to the whole process group (a terminal, timeout,
a scheduler) during an evaluation in worker processes saves and exits."""
import os
import resource
import signal
import subprocess
import sys

import pytest
import torch

from mbdpo.checkpoint import unit_file
from tests.conftest import ROOT, TINY, cli, digests, make_cfg, rows

NET = [a for a in TINY if not a.startswith(("eval_episodes", "log_freq"))]
RUN = ["task=mw-reach", "seed_steps=200", "eval_freq=200", "save_model_every=100",
       "eval_episodes=1", "log_freq=100", *NET]


def trainer(tmp_path, *overrides):
    from mbdpo.config import parse_cfg
    from mbdpo.trainers.online import OnlineTrainer
    cfg = parse_cfg(make_cfg(*RUN, *overrides, f"work_dir={tmp_path}", parse=False))
    return OnlineTrainer(cfg)


@pytest.mark.slow
def test_a_diverged_run_stops_naming_the_loss_and_keeps_its_last_checkpoint(tmp_path):
    """A weight turned NaN inside the burst (update 150, step 200): the run stops at the next
    check, before the evaluation and checkpoint of step 200, saying which losses; the step-100
    checkpoint stays as it was and holds finite weights only."""
    from mbdpo.trainers.base import RunDiverged
    threads = torch.get_num_threads()
    t = trainer(tmp_path, "steps=600")
    update = t.agent.update

    def poisoned(batch):
        if t.updates == 150:
            with torch.no_grad():
                next(t.agent.model.dynamics.parameters()).fill_(float("nan"))
        return update(batch)
    t.agent.update = poisoned
    try:
        with pytest.raises(RunDiverged) as err:
            t.train()
    finally:
        torch.set_num_threads(threads)
    msg = str(err.value)
    assert msg.startswith("The run diverged at step 200: consistency_loss") and \
        "became NaN or infinite" in msg and "last checkpoint (step 100) is kept" in msg, msg
    latest = os.path.join(t.model_dir, "latest.pt")
    state = torch.load(latest, weights_only=True)
    assert state["step"] == 100 and sorted(os.listdir(t.model_dir)) == [
        "100.pt", "latest.pt", os.path.basename(unit_file(latest, "replay.pt"))]
    assert all(torch.isfinite(v).all() for v in state["agent"]["model"].values())
    assert [int(r["step"]) for r in rows(os.path.join(t.dir, "eval.csv"))] == [0]


@pytest.mark.parametrize("seeds", [None, "[1,2]"])
def test_a_stop_before_the_first_boundary_saves_the_start(tmp_path, monkeypatch, seeds):
    """A stop that is there when the loop reaches its first boundary, before anything was
    marked (a batched lane waits there for the other seeds to load, so a SIGTERM lands there:
    it once ended in a TypeError): the run saves its start (step 0, its evaluation still to
    come) and exits 130."""
    from mbdpo.config import parse_cfg
    from mbdpo.trainers import base
    from mbdpo.trainers.seeds import train_seeds
    threads = torch.get_num_threads()
    monkeypatch.setattr(base.StopRequested, "__bool__", lambda self: True)
    extra = [f"seeds={seeds}"] if seeds else []
    cfg = parse_cfg(make_cfg(*RUN, "steps=300", *extra, f"work_dir={tmp_path}", parse=False))
    try:
        with pytest.raises(SystemExit) as stop:
            train_seeds(cfg) if seeds else trainer(tmp_path, "steps=300").train()
    finally:
        torch.set_num_threads(threads)
    assert stop.value.code == 130
    for s in (1, 2) if seeds else (1,):
        latest = os.path.join(tmp_path, "mw-reach", str(s), "default", "models", "latest.pt")
        state = torch.load(latest, weights_only=True)
        assert (state["step"], state["last_eval_step"]) == (0, -1)


def simulated_disk(monkeypatch, root, capacity):
    """shutil.disk_usage of a disk of ``capacity`` bytes holding what is under ``root``."""
    import shutil
    from collections import namedtuple

    from mbdpo.trainers.base import models_bytes
    usage = namedtuple("usage", "total used free")

    def disk_usage(path):
        used = sum(models_bytes(d) for d, _, _ in os.walk(root))
        return usage(capacity, used, capacity - used)
    monkeypatch.setattr(shutil, "disk_usage", disk_usage)


def test_a_disk_too_small_for_the_run_is_refused_before_training(tmp_path, monkeypatch):
    """The start check asks for what the run's checkpoints will take (``space_needed``), and
    says how that adds up; nothing is written."""
    from mbdpo.config import ConfigError
    from mbdpo.trainers.base import gb
    t = trainer(tmp_path, "steps=100000")
    need, unit, kept = t.space_needed()
    assert kept == 999 and need > 2 * unit > 0
    import shutil
    from collections import namedtuple
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 10**6, 10**6))
    with pytest.raises(ConfigError) as err:
        t.train()
    assert str(err.value) == (
        f"{t.dir} has 1.0 MB free but this run's checkpoints need ~{gb(need, True)} more (two "
        f"of ~{gb(unit, True)} at its end (a new one is written before the old one is removed) "
        "and 999 kept <step>.pt (save_model_every)): free space, lower steps, buffer_size or "
        "save_model_every, or pick another work_dir.")
    assert not os.path.exists(t.model_dir)


def test_seeds_in_one_process_are_refused_when_the_disk_holds_one_seed_not_all(
        tmp_path, monkeypatch):
    """``seeds=[1,2]``: each seed's folder alone fits a disk of 1.5 seeds' need, both do not;
    the second seed is refused before anything trains, the sentence counts the first seed's
    share, and no checkpoint folder is made."""
    from mbdpo.config import ConfigError, parse_cfg
    from mbdpo.trainers.base import gb
    from mbdpo.trainers.seeds import train_seeds
    one = trainer(tmp_path / "one", "steps=300", "seed=2")
    need = one.space_needed()[0]
    one.close()
    simulated_disk(monkeypatch, tmp_path, int(1.5 * need))
    cfg = parse_cfg(make_cfg(*RUN, "steps=300", "seeds=[1,2]", f"work_dir={tmp_path / 's'}",
                             parse=False))
    with pytest.raises(ConfigError) as err:
        train_seeds(cfg)
    msg = str(err.value)
    seed2 = os.path.join(str(tmp_path / "s"), "mw-reach", "2")
    assert msg.startswith(seed2) and f"need ~{gb(need, True)} more" in msg, msg
    assert f"next to the ~{gb(need, True)} of the seeds before it in this process" in msg, msg
    assert not [d for d, _, _ in os.walk(tmp_path / "s") if d.endswith("models")]


@pytest.mark.slow
def test_a_disk_that_holds_the_run_is_never_refused_and_the_estimate_covers_the_files(
        tmp_path, monkeypatch):
    """On a disk of exactly the space the start check asks for (its run folder's CSVs, videos
    and metadata included), the run trains to the end through every save: the save check uses
    the same estimate. The real files stay under it: a checkpoint unit (latest.pt and its
    replay) under the unit estimate, models/ under the total. One byte less and the run is
    refused at start (an empty disk: the run's own small files do not fit next to it)."""
    from mbdpo.checkpoint import CheckpointError
    from mbdpo.config import ConfigError
    from mbdpo.trainers.base import models_bytes
    threads = torch.get_num_threads()
    t = trainer(tmp_path / "a", "steps=300")
    need, unit, kept = t.space_needed()
    assert kept == 2  # 100.pt, 200.pt (300: final.pt, the last unit)
    simulated_disk(monkeypatch, tmp_path, need + models_bytes(t.dir))  # + what is there
    try:
        t.train()
    finally:
        torch.set_num_threads(threads)
    latest = os.path.join(t.model_dir, "latest.pt")
    assert torch.load(latest, weights_only=True)["step"] == 300
    real_unit = os.path.getsize(latest) + os.path.getsize(unit_file(latest, "replay.pt"))
    assert real_unit <= unit < real_unit + 0.5e6, (real_unit, unit)
    assert models_bytes(t.model_dir) <= need
    # the save check says what it needs and has, and the numbers add up
    with pytest.raises(CheckpointError, match=r"it needs ~\d+\.\d MB and .* has \d+\.\d MB "
                                              r"free; the checkpoint of step 300 is intact"):
        t.check_space(50 * 10**6, 400)
    u = trainer(tmp_path / "b", "steps=300")
    simulated_disk(monkeypatch, tmp_path / "b", u.space_needed()[0] - 1)
    with pytest.raises(ConfigError, match="this run's checkpoints need"):
        u.train()


@pytest.mark.slow
def test_a_refused_checkpoint_write_stops_the_run_with_the_previous_one_intact(tmp_path):
    """A run resumed at step 300 on a disk that refuses files over 600 kB (RLIMIT_FSIZE, as a
    full disk or quota would refuse them): the checkpoint of step 400 cannot be written; one
    sentence, exit 2, the step-300 checkpoint and the CSVs byte for byte as they were (but the
    rows the stopped run appended past step 300, which resume drops); resume then finishes."""
    work = str(tmp_path)
    args = [*RUN, f"work_dir={work}", "exp_name=d"]
    cli("train.py", "steps=300", *args)
    models = os.path.join(work, "mw-reach", "1", "d", "models")
    before = digests(models)
    assert max(os.path.getsize(os.path.join(models, f)) for f in before) > 600_000

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (600_000, 600_000))
    env = dict(os.environ, WANDB_MODE="offline", MUJOCO_GL="egl")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "train.py"),
                           "steps=600", "resume=true", *args], preexec_fn=limit, env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "error: Could not write the checkpoint of step 400 to" in proc.stderr
    assert "the checkpoint of step 300 is intact" in proc.stderr
    assert digests(models) == before
    out = cli("train.py", "steps=600", "resume=true", *args)
    assert "at step 300" in out.stdout
    assert [int(r["step"]) for r in rows(os.path.join(models, "..", "eval.csv"))] == \
        [0, 200, 300, 400, 600]  # 300: the first run's final evaluation


@pytest.mark.parametrize("work_dir, reason", [("a-file", "Not a directory"),
                                             ("/proc/mbdpo", "No such file or directory")])
def test_a_run_folder_that_cannot_be_written_is_refused(tmp_path, work_dir, reason):
    if work_dir == "a-file":
        work_dir = str(tmp_path / "a-file")
        open(work_dir, "w").close()
    out = cli("train.py", *RUN, "steps=300", f"work_dir={work_dir}", check=False, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip() == (
        f"error: Cannot write the run folder {work_dir}/mw-reach/1/default ({reason}): pass a "
        "work_dir (or save_path) that is a folder you can write to.")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_sent_to_the_process_group_during_an_evaluation_saves(tmp_path, sig):
    """A terminal's Ctrl-C, or ``timeout`` / a scheduler's SIGTERM, reaches the run and its
    evaluation workers alike: the run saves and exits 130, no broken pipe reported (workers
    ignore SIGINT; SIGTERM ends them, and the run takes their broken pipe as the stop)."""
    env = dict(os.environ, WANDB_MODE="offline", MUJOCO_GL="egl", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "scripts", "train.py"), "task=cartpole-balance",
         "steps=500", "eval_episodes=2", "diffusion_num_samples=1024", "diffusion_steps=50",
         f"work_dir={tmp_path}", *[a for a in NET if not a.startswith("diffusion_")]],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
        start_new_session=True)
    out = b""
    while b"Evaluating" not in out:
        chunk = os.read(proc.stdout.fileno(), 4096)
        assert chunk, out.decode()
        out += chunk
    os.killpg(proc.pid, sig)
    rest, _ = proc.communicate(timeout=120)
    text = (out + rest).decode()
    assert proc.returncode == 130 and "Stopped: saved" in text, text
    assert "Traceback" not in text and "BrokenPipe" not in text, text


@pytest.mark.slow
def test_an_absurd_observation_is_reported_as_it_enters(tmp_path, capsys):
    """An environment that returns 1e30 once (step 149): one warning naming it and the step
    as it enters; then its NaN losses stop the run at the next check (the burst, step 200)."""
    from mbdpo.trainers.base import RunDiverged
    threads = torch.get_num_threads()
    t = trainer(tmp_path, "steps=200", "eval_freq=1000")
    step = t.envs.step

    def broken(actions):
        out = list(step(actions))
        if t.step == 149:
            out[0] = out[0].copy()
            out[0][0, 3] = 1e30
        return tuple(out)
    t.envs.step = broken
    try:
        with pytest.raises(RunDiverged, match="The run diverged at step 200"):
            t.train()
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert out.count("warning:") == 1
    assert "warning: mw-reach gave an observation of 1e+30 at step 149 (NaN, infinite or " \
           "beyond +-1e+06): check the environment" in out, out


@pytest.mark.slow
def test_resuming_a_finished_run_changes_nothing(tmp_path):
    args = [*RUN, "steps=200", f"work_dir={tmp_path}", "exp_name=f"]
    cli("train.py", *args)
    run = os.path.join(str(tmp_path), "mw-reach", "1", "f")
    before = {k: v for k, v in digests(run).items() if k != "metadata.json"}
    out = cli("train.py", *args, "resume=true")
    assert f"The run in {run} already finished at step 200" in out.stdout
    assert {k: v for k, v in digests(run).items() if k != "metadata.json"} == before


@pytest.mark.slow
def test_a_stop_during_dataset_conversion_keeps_what_was_converted(mt30_data, tmp_path):
    """SIGTERM inside the conversion (before any training loop): exit 130, one line, no
    traceback; the same command then finishes the store."""
    import shutil
    data = str(tmp_path / "mt30")
    shutil.copytree(mt30_data, data, ignore=shutil.ignore_patterns("store"))
    out = cli("prepare_dataset.py", f"data_dir={data}", check=False,
              env={"MBDPO_FAULT": "convert-slice:1:TERM"})
    assert out.returncode == 130 and "Traceback" not in out.stderr, out.stderr
    assert "Stopped: the chunks converted so far are kept" in out.stderr
    out = cli("prepare_dataset.py", f"data_dir={data}")
    assert "Store ready in" in out.stdout and "30 tasks" in out.stdout


@pytest.mark.slow
def test_a_dataset_missing_most_tasks_of_its_set_is_named(mt30_data, tmp_path):
    """A store that holds 3 of mt30's 30 tasks: pretraining says so, naming them."""
    from mbdpo.offline import read_chunk, write_chunk
    data = str(tmp_path / "mt30")
    os.makedirs(data)
    c = read_chunk(os.path.join(mt30_data, "chunk_0.pt"))
    keep = torch.isin(c["task"][:, 0], torch.tensor([0, 1, 2]))
    write_chunk(os.path.join(data, "chunk_0.pt"), *(c[k][keep].numpy() for k in (
        "obs", "action", "reward", "task")))
    out = cli("train.py", "task=mt30", "multitask=true", f"data_dir={data}", "steps=1",
              "eval_freq=1000", "eval_tasks=[reacher-easy]", f"work_dir={tmp_path}", *NET)
    assert "warning: the dataset in " + data + " holds no episode of 27 of the 30 tasks of " \
           "mt30 (" in out.stdout, out.stdout
