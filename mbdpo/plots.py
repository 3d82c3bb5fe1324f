"""Figures of runs: learning curves against published ones, per-task normalised-score bars of
multi-task evaluations, and aggregate IQM across tasks. Statistics as the ``rliable`` package
computes them (interquartile mean = 25%-trimmed mean, percentile bootstrap intervals,
stratified by task), on scipy's ``bootstrap`` and ``trim_mean``; figures with matplotlib
(headless). Each figure function returns the Figure, whose artists hold the plotted numbers."""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field

import numpy as np

RESAMPLES = 2000  # bootstrap resamples (rliable uses 2,000 for its figures too)


class PlotInputError(ValueError):
    """A file or folder given to plot.py that holds no curve."""


@dataclass
class Curves:
    """One method's curves: {task: {seed: (steps, values)}}."""
    label: str
    tasks: dict = field(default_factory=dict)

    def add(self, task: str, seed: int, step: int, value: float) -> None:
        steps, values = self.tasks.setdefault(task, {}).setdefault(seed, ([], []))
        steps.append(step)
        values.append(value)


def number(path: str, line: int, col: str, text, kind=float):
    """A CSV cell as a number, or one sentence naming the file, line and column."""
    try:
        return kind(float(text))
    except (TypeError, ValueError):
        raise PlotInputError(f"{path}, line {line}: {col} is {text!r}, not a number: fix or "
                             "remove that line.") from None


def read_curve_csv(path: str, curves: Curves, task: str | None = None) -> None:
    """A curve file in the published format (``step,reward,seed``; ``success`` is read as
    reward, as the published DreamerV3 Meta-World files name it) of ``task`` (default: the
    file's name)."""
    task = task or os.path.splitext(os.path.basename(path))[0]
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        value = "reward" if "reward" in cols else "success" if "success" in cols else None
        if value is None or "step" not in cols:
            raise PlotInputError(f"{path} is not a curve file: it needs the columns "
                                 f"step,reward,seed (it has {','.join(cols) or 'none'}).")
        for i, r in enumerate(reader, 2):
            curves.add(task, number(path, i, "seed", r.get("seed") or 1, int),
                       number(path, i, "step", r["step"], int), number(path, i, value, r[value]))


def read_run(folder: str, curves: Curves, metric: str | None = None) -> None:
    """A run folder of train.py: its evaluation curve (eval.csv), or with ``metric`` a column
    of its train.csv (a loss, ``td_error``, ``cross_td_error``, ``action_drift``, ...; rows
    where it is empty skipped); task and seed from metadata.json."""
    from mbdpo.curves import run_curve
    meta = os.path.join(folder, "metadata.json")
    if not os.path.exists(meta):
        raise PlotInputError(f"{folder} has no metadata.json: give a run folder of train.py "
                             "(logs/<task>/<seed>/<exp_name>) or a curve CSV.")
    with open(meta) as f:
        m = json.load(f)
    if len(m.get("tasks", [m["task"]])) > 1:
        raise PlotInputError(f"{folder} is a multi-task run: plot its eval_tasks.csv with "
                             "bars=... instead.")
    if metric is None:
        try:
            points = run_curve(folder)
        except (KeyError, TypeError, ValueError) as err:
            raise PlotInputError(f"{folder}/eval.csv has a line that is not a row of numbers "
                                 f"({type(err).__name__}: {err}): fix or remove it.") from None
    else:
        path, rows = os.path.join(folder, "train.csv"), []
        if os.path.exists(path):
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
        if rows and metric not in rows[0]:
            raise PlotInputError(f"{path} has no column {metric!r}: it has "
                                 f"{', '.join(k for k in rows[0] if k != 'step')}.")
        points = [(number(path, i, "step", r["step"], int), number(path, i, metric, r[metric]))
                  for i, r in enumerate(rows, 2) if r.get(metric)]
    for step, value in points:
        curves.add(str(m["task"]), int(m["seed"]), step, value)


def load(spec: str, metric: str | None = None) -> Curves:
    """``[label=]path``: a run folder, a curve CSV, or a folder of either (e.g. the published
    results/mbdpo or logs/walker-walk). The label defaults to the run's exp_name, or the
    folder holding the CSVs. With ``metric``, a column of the runs' train.csv instead (run
    folders only)."""
    label, _, path = ("", "", spec) if os.path.exists(spec) else spec.partition("=")
    if not _:
        label, path = "", spec
    path = os.path.normpath(path)
    if not os.path.exists(path):
        raise PlotInputError(f"{path} does not exist: give run folders, curve CSVs or "
                             "folders of them.")
    if os.path.isfile(path):
        if metric is not None:
            raise PlotInputError(f"{path}: a curve file holds returns only; --metric {metric} "
                                 "reads the train.csv of run folders.")
        curves = Curves(label or os.path.basename(os.path.dirname(os.path.abspath(path))))
        read_curve_csv(path, curves)
        return curves
    if os.path.exists(os.path.join(path, "metadata.json")):
        curves = Curves(label or os.path.basename(path))
        read_run(path, curves, metric)
        return curves
    curves = Curves(label or os.path.basename(path))
    for root, dirs, files in os.walk(path):
        dirs.sort()
        if "metadata.json" in files:
            read_run(root, curves, metric)
            dirs.clear()
        else:
            for f in sorted(files):
                if f.endswith(".csv") and metric is None:
                    read_curve_csv(os.path.join(root, f), curves)
    if not curves.tasks:
        raise PlotInputError(f"{path} holds no run folder and no curve CSV.")
    return curves


def merge(methods: list[Curves]) -> list[Curves]:
    """Sources with the same label as one method (e.g. ours=a.csv ours=b.csv), in order."""
    out: dict[str, Curves] = {}
    for m in methods:
        into = out.setdefault(m.label, Curves(m.label))
        for task, seeds in m.tasks.items():
            for seed, (steps, values) in seeds.items():
                for s, v in zip(steps, values):
                    into.add(task, seed, s, v)
    return list(out.values())


def bootstrap_ci(samples: list[np.ndarray], statistic, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of ``statistic`` over the concatenated samples, each
    sample resampled on its own (stratified); a point when no sample has two values."""
    from scipy.stats import bootstrap
    samples = [np.asarray(s, dtype=float) for s in samples if len(s)]
    if all(len(s) < 2 for s in samples):
        v = float(statistic(np.concatenate(samples)))
        return v, v
    res = bootstrap(samples, lambda *s: statistic(np.concatenate(s)), n_resamples=RESAMPLES,
                    confidence_level=0.95, method="percentile", vectorized=False,
                    random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def iqm(x) -> float:
    from scipy.stats import trim_mean
    return float(trim_mean(np.asarray(x, dtype=float), 0.25))


def has_success(task: str) -> bool:
    from mbdpo.tasks import TASKS
    return task in TASKS and TASKS[task].has_success


def normalised(task: str, value: float) -> float:
    """A curve value on the TD-MPC2 papers' 0-100 scale: DMControl returns / 10; success
    rates are in % already."""
    return value if has_success(task) else value / 10.0


def seed_stats(per_seed: dict, max_step: int | None = None):
    """(steps, mean, low, high) over seeds at every step any seed was evaluated (the seeds
    evaluated there)."""
    at: dict[int, list[float]] = {}
    for steps, values in per_seed.values():
        for s, v in zip(steps, values):
            if max_step is None or s <= max_step:
                at.setdefault(s, []).append(v)
    steps = sorted(at)
    mean = [float(np.mean(at[s])) for s in steps]
    ci = [bootstrap_ci([np.array(at[s])], np.mean) for s in steps]
    return (np.array(steps), np.array(mean), np.array([c[0] for c in ci]),
            np.array([c[1] for c in ci]))


def _figure(n_panels: int, cols: int, size=(4.0, 3.0)):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cols = min(cols, n_panels)
    rows = -(-n_panels // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows),
                             squeeze=False)
    for ax in axes.flat[n_panels:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n_panels])


def curves_figure(methods: list[Curves], tasks: list[str] | None = None,
                  max_step: int | None = None, cols: int = 4, metric: str | None = None):
    """One panel per task: per method the mean over seeds (a line, label = method) and its 95%
    bootstrap interval (a band)."""
    tasks = tasks or sorted({t for m in methods for t in m.tasks})
    fig, axes = _figure(len(tasks), cols)
    for ax, task in zip(axes, tasks):
        for k, m in enumerate(methods):
            if task not in m.tasks:
                continue
            steps, mean, lo, hi = seed_stats(m.tasks[task], max_step)
            n = len(m.tasks[task])
            ax.plot(steps, mean, color=f"C{k}", label=f"{m.label} ({n} seed{'s' * (n > 1)})",
                    marker="o" if len(steps) <= 15 else None, markersize=3)
            ax.fill_between(steps, lo, hi, color=f"C{k}", alpha=0.2, linewidth=0)
        ax.set_title(task)
        ax.set_xlabel("environment steps")
        ax.set_ylabel(metric or ("success (%)" if has_success(task) else "return"))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def final_scores(m: Curves, tasks: list[str], at_step: int | None):
    """({task: normalised score of each seed at its last evaluation up to ``at_step``},
    the steps of those evaluations)."""
    out, used = {}, set()
    for task in tasks:
        vals = []
        for steps, values in m.tasks.get(task, {}).values():
            pts = [(s, v) for s, v in zip(steps, values) if at_step is None or s <= at_step]
            if pts:
                step, value = max(pts)
                vals.append(normalised(task, value))
                used.add(step)
        if vals:
            out[task] = np.array(vals)
    return out, used


def _steps(used: set) -> str:
    lo, hi = min(used), max(used)
    k = (lambda s: f"{s / 1000:g}k")
    return k(hi) if lo == hi else f"{k(lo)}-{k(hi)}"


def iqm_figure(methods: list[Curves], tasks: list[str] | None = None,
               at_step: int | None = None):
    """Aggregate IQM over every (task, seed) of each method, with a 95% stratified bootstrap
    interval (seeds resampled within each task): a point and an error bar per method."""
    tasks = tasks or sorted({t for m in methods for t in m.tasks})
    fig, (ax,) = _figure(1, 1, size=(5.0, 0.6 + 0.5 * len(methods)))
    labels = []
    for k, m in enumerate(methods):
        scores, used = final_scores(m, tasks, at_step)
        labels.append(f"{m.label} ({_steps(used)})" if used else m.label)
        if not scores:
            continue
        point = iqm(np.concatenate(list(scores.values())))
        lo, hi = bootstrap_ci(list(scores.values()), iqm)
        ax.errorbar([point], [k], xerr=[[point - lo], [hi - point]], fmt="o", color=f"C{k}",
                    capsize=4)
    ax.set_yticks(range(len(methods)), labels)
    ax.set_xlabel("IQM normalised score (95% CI)")
    ax.set_title(f"{len(tasks)} task{'s' * (len(tasks) > 1)}, last evaluation"
                 + (f" up to {at_step / 1000:g}k steps" if at_step else ""))
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig


def read_task_scores(path: str) -> dict[str, list[float]]:
    """A multi-task evaluation (an offline run's eval_tasks.csv, or evaluate.py's
    eval_<ckpt>_<set>.csv): {task: normalised score of each seed at its last step}."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "task" not in rows[0] or "score" not in rows[0]:
        raise PlotInputError(f"{path} is not a multi-task evaluation: it needs the columns "
                             "step,task,score (eval_tasks.csv or eval_<ckpt>_<set>.csv).")
    last: dict[tuple[str, str], tuple[int, float]] = {}
    for i, r in enumerate(rows, 2):
        key = (r["task"], r.get("seed", "1"))
        step = number(path, i, "step", r.get("step") or 0, int)
        if key not in last or step >= last[key][0]:
            last[key] = (step, number(path, i, "score", r["score"]))
    out: dict[str, list[float]] = {}
    for (task, _), (_, score) in last.items():
        out.setdefault(task, []).append(score)
    return out


def bars_figure(scores: dict[str, list[float]], title: str = ""):
    """One bar per task (the mean normalised score over seeds, with its bootstrap interval),
    and the mean over tasks as a dashed line."""
    tasks = list(scores)
    fig, (ax,) = _figure(1, 1, size=(max(6.0, 0.28 * len(tasks)), 3.6))
    means = [float(np.mean(scores[t])) for t in tasks]
    ci = [bootstrap_ci([np.array(scores[t])], np.mean) for t in tasks]
    ax.bar(range(len(tasks)), means, yerr=[[m - c[0] for m, c in zip(means, ci)],
                                           [c[1] - m for m, c in zip(means, ci)]],
           color=["C1" if has_success(t) else "C0" for t in tasks])
    overall = float(np.mean(means))
    ax.axhline(overall, color="k", linestyle="--", linewidth=1,
               label=f"mean {overall:.1f}")
    ax.set_xticks(range(len(tasks)), tasks, rotation=90, fontsize=6)
    ax.set_ylabel("normalised score")
    ax.set_ylim(0, 100)
    ax.set_title(title or f"{len(tasks)} tasks")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def save(fig, out: str) -> list[str]:
    """``out``.png and ``out``.pdf; the paths written."""
    import matplotlib.pyplot as plt
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    paths = [f"{out}.png", f"{out}.pdf"]
    for p in paths:
        fig.savefig(p, dpi=120)
    plt.close(fig)
    return paths


def embed_2d(x: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
    """(N, D) -> (N, 2) with scikit-learn: locally linear embedding ('lle', the paper's
    Fig. 11; neighbours: 10, fewer for few points) or t-SNE ('tsne', perplexity below N)."""
    from sklearn.manifold import TSNE, LocallyLinearEmbedding
    x = np.asarray(x, dtype=np.float64)
    if method == "lle":
        lle = LocallyLinearEmbedding(n_neighbors=min(10, len(x) - 1), n_components=2,
                                     random_state=seed, eigen_solver="dense")
        return lle.fit_transform(x)
    return TSNE(n_components=2, perplexity=min(30.0, (len(x) - 1) / 3), random_state=seed,
                init="pca").fit_transform(x)


def latents_figure(points: list[np.ndarray], title: str):
    """Latent trajectories embedded in 2-D: left the first episode, right all of them, each
    point coloured by its time step (one scatter per episode)."""
    fig, (one, every) = _figure(2, 2, size=(4.5, 4.0))
    for ax, eps in ((one, points[:1]), (every, points)):
        for p in eps:
            sc = ax.scatter(p[:, 0], p[:, 1], c=np.arange(len(p)), cmap="viridis", s=6)
        ax.set_title(f"{len(eps)} episode{'s' * (len(eps) > 1)}")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(sc, ax=every, label="time step")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def task_embedding_figure(points: np.ndarray, tasks: list[str], title: str):
    """Task embeddings in 2-D (t-SNE), one colour per suite, each point named."""
    from mbdpo.tasks import TASKS
    suites = [TASKS[t].suite if t in TASKS else "other" for t in tasks]
    fig, (ax,) = _figure(1, 1, size=(7.0, 6.0))
    for k, suite in enumerate(dict.fromkeys(suites)):
        idx = [i for i, s in enumerate(suites) if s == suite]
        ax.scatter(points[idx, 0], points[idx, 1], color=f"C{k}", label=suite, s=18)
    for (x, y), t in zip(points, tasks):
        ax.annotate(t, (x, y), fontsize=5, alpha=0.8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7)
    ax.set_title(title)
    fig.tight_layout()
    return fig
