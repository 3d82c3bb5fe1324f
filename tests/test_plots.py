"""scripts/plot.py: every figure rendered headless from small generated runs and curve files; the
numbers drawn (read back from the figures' artists) equal those of the CSVs."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT, assert_picture

matplotlib = pytest.importorskip("matplotlib")
from mbdpo import plots  # noqa: E402

TASKS = ("walker-walk", "mw-reach")
STEPS = (0, 5000, 10000)


def write_run(folder, task, seed, values, success=None):
    """A run folder as train.py leaves it: metadata.json and eval.csv."""
    os.makedirs(folder)
    with open(os.path.join(folder, "metadata.json"), "w") as f:
        json.dump({"task": task, "tasks": [task], "seed": seed, "model_size": 1}, f)
    with open(os.path.join(folder, "eval.csv"), "w", newline="") as f:
        cols = ["step", "episode", "episode_reward", "episode_reward_std", "elapsed_time"]
        w = csv.writer(f)
        w.writerow(cols + (["episode_success"] if success else []))
        for i, (s, v) in enumerate(zip(STEPS, values)):
            w.writerow([s, i, v, 1.0, 10.0 * i] + ([success[i]] if success else []))
    with open(os.path.join(folder, "train.csv"), "w") as f:  # diagnostics, none at first
        f.write("step,episode,episode_reward,cross_td_error,elapsed_time\n")
        f.write("500,1,3.0,,1.0\n")
        for i, s in enumerate(STEPS[1:]):
            f.write(f"{s},{i + 2},4.0,{seed + 0.5 * i},2.0\n")


@pytest.fixture
def sources(tmp_path):
    """Our runs (3 seeds of walker-walk as run folders, 3 of mw-reach with success) and a
    published-format curve folder (2 seeds, every 10k)."""
    rng = np.random.default_rng(0)
    ours = {}
    for seed in (1, 2, 3):
        v = rng.uniform(0, 1000, 3)
        write_run(tmp_path / "logs" / "walker-walk" / str(seed) / "default", "walker-walk",
                  seed, v)
        ours[("walker-walk", seed)] = v
        succ = rng.integers(0, 11, 3) / 10
        write_run(tmp_path / "logs" / "mw-reach" / str(seed) / "default", "mw-reach", seed,
                  rng.uniform(0, 4000, 3), success=list(succ))
        ours[("mw-reach", seed)] = 100 * succ
    pub = tmp_path / "published" / "mbdpo"
    os.makedirs(pub)
    theirs = {}
    for task in TASKS:
        with open(pub / f"{task}.csv", "w") as f:
            f.write("step,reward,seed\n")
            for seed in (1, 2):
                v = rng.uniform(0, 100 if task.startswith("mw") else 1000, 2)
                theirs[(task, seed)] = v
                f.write(f"0,{v[0]},{seed}\n10000,{v[1]},{seed}\n")
    return tmp_path, ours, theirs


def test_curves_and_iqm_drawn_are_the_csvs_numbers(sources):
    tmp, ours, theirs = sources
    written = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "plot.py"), f"ours={tmp / 'logs'}",
         str(tmp / "published" / "mbdpo"), "--out", str(tmp / "fig" / "c"), "--cols", "2"],
        capture_output=True, text=True, check=True, env=dict(os.environ, MPLBACKEND="Agg"),
        cwd=ROOT).stdout.split()
    assert written == [str(tmp / "fig" / n) for n in ("c.png", "c.pdf", "c_iqm.png",
                                                       "c_iqm.pdf")]
    assert_picture(written[0], 2 * 4 * 120, 3 * 120)  # two 4x3 in panels at 120 dpi
    assert_picture(written[2], 5 * 120, int(round((0.6 + 0.5 * 2) * 120)))
    for pdf in (written[1], written[3]):
        with open(pdf, "rb") as f:
            assert f.read(5) == b"%PDF-"

    methods = plots.merge([plots.load(f"ours={tmp / 'logs'}"),
                           plots.load(str(tmp / "published" / "mbdpo"))])
    assert [m.label for m in methods] == ["ours", "mbdpo"]
    fig = plots.curves_figure(methods, cols=2)
    for ax in fig.axes:
        task = ax.get_title()
        (ours_line, their_line) = ax.lines
        assert ours_line.get_label() == "ours (3 seeds)"
        np.testing.assert_allclose(ours_line.get_xydata(), np.column_stack(
            [STEPS, np.mean([ours[(task, s)] for s in (1, 2, 3)], axis=0)]))
        np.testing.assert_allclose(their_line.get_xydata(), np.column_stack(
            [(0, 10000), np.mean([theirs[(task, s)] for s in (1, 2)], axis=0)]))
        # the bands: 95% bootstrap intervals of the mean, inside the seeds' range around it
        for band, line, runs in zip(ax.collections, (ours_line, their_line), (ours, theirs)):
            y = band.get_paths()[0].vertices[:, 1]
            vals = np.array([v for (t, _), v in runs.items() if t == task])
            lo, hi = vals.min(axis=0), vals.max(axis=0)
            assert (y.min() >= lo.min() - 1e-6) and (y.max() <= hi.max() + 1e-6)
            n = len(line.get_xydata())
            assert band.get_paths()[0].vertices.shape[0] >= 2 * n
    assert {ax.get_ylabel() for ax in fig.axes} == {"return", "success (%)"}

    # IQM: the middle half of the 6 final normalised scores (return / 10, success in %)
    fig = plots.iqm_figure(methods)
    ax = fig.axes[0]
    points = [line.get_xydata()[0, 0] for line in ax.lines if line.get_marker() == "o"]
    for point, runs in zip(points, (ours, theirs)):
        finals = sorted(v[-1] / (10 if t == "walker-walk" else 1) for (t, _), v in runs.items())
        k = len(finals) // 4
        assert point == pytest.approx(np.mean(finals[k:len(finals) - k]))
    assert [t.get_text() for t in ax.get_yticklabels()] == ["ours (10k)", "mbdpo (10k)"]


def test_bars_of_a_multi_task_evaluation(tmp_path):
    """eval_tasks.csv rows of two seeds: one bar per task at the mean of each seed's last
    score, and the mean over tasks as a line."""
    scores = {"walker-walk": (40.0, 60.0), "mw-reach": (100.0, 80.0), "dog-run": (10.0, 30.0)}
    paths = []
    for seed in (1, 2):
        path = tmp_path / f"eval_tasks_{seed}.csv"
        with open(path, "w") as f:
            f.write("step,task,seed,episode_reward,score\n")
            for task, s in scores.items():
                f.write(f"1000,{task},{seed},0,{s[seed - 1] / 2}\n")  # an earlier evaluation
                f.write(f"2000,{task},{seed},0,{s[seed - 1]}\n")
        paths.append(str(path))
    out = tmp_path / "b"
    written = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "plot.py"),
                              "--bars", *paths, "--out", str(out)], capture_output=True,
                             text=True, check=True, cwd=ROOT).stdout.split()
    assert written == [f"{out}_bars.png", f"{out}_bars.pdf"]
    assert_picture(written[0], 6 * 120, int(3.6 * 120))
    merged: dict = {}
    for p in paths:
        for t, v in plots.read_task_scores(p).items():
            merged.setdefault(t, []).extend(v)
    ax = plots.bars_figure(merged).axes[0]
    heights = [r.get_height() for r in ax.patches]
    assert heights == [50.0, 90.0, 20.0]
    assert [t.get_text() for t in ax.get_xticklabels()] == list(scores)
    assert ax.lines[-1].get_ydata()[0] == pytest.approx(np.mean([50, 90, 20]))


def test_a_diagnostic_of_train_csv_over_steps(sources):
    """--metric plots a column of the runs' train.csv (rows where it is empty skipped): the
    mean over seeds at each step; no IQM figure; a curve CSV or an unknown column is refused."""
    tmp, _, _ = sources
    script = os.path.join(ROOT, "scripts", "plot.py")
    out = subprocess.run([sys.executable, script, str(tmp / "logs" / "walker-walk"),
                          "--metric", "cross_td_error", "--out", str(tmp / "m")],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout.split()
    assert out == [str(tmp / "m.png"), str(tmp / "m.pdf")]
    assert_picture(out[0], 4 * 120, 3 * 120)
    fig = plots.curves_figure([plots.load(str(tmp / "logs" / "walker-walk"),
                                          "cross_td_error")], metric="cross_td_error")
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.lines[0].get_xydata(), [[5000, 2.0], [10000, 2.5]])
    assert ax.get_ylabel() == "cross_td_error"
    for args, says in ((["--metric", "nope"], "has no column 'nope'"),
                       ([str(tmp / "published" / "mbdpo" / "mw-reach.csv"), "--metric",
                         "value_loss"], "a curve file holds returns only")):
        proc = subprocess.run([sys.executable, script, *(args if len(args) == 3 else
                               [str(tmp / "logs" / "walker-walk"), *args]),
                               "--out", str(tmp / "x")], capture_output=True, text=True,
                              cwd=ROOT)
        assert proc.returncode == 2 and says in proc.stderr, proc.stderr


@pytest.mark.parametrize("args, says", [
    (["nowhere"], "nowhere does not exist"),
    (["--tasks", "cartpole-balance", "SRC"], "no source has a curve of cartpole-balance"),
    (["BAD"], "is not a curve file: it needs the columns step,reward,seed"),
])
def test_bad_plot_input_gets_one_sentence(tmp_path, args, says):
    src = tmp_path / "walker-walk.csv"
    src.write_text("step,reward,seed\n0,1,1\n")
    bad = tmp_path / "x.csv"
    bad.write_text("a,b\n1,2\n")
    args = [str(src) if a == "SRC" else str(bad) if a == "BAD" else a for a in args]
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "plot.py"), *args,
                           "--out", str(tmp_path / "o")], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and says in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("o*"))
