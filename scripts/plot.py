"""Figures of runs, next to published curves (PNG and PDF):

    python scripts/plot.py logs/walker-walk results/mbdpo/walker-walk.csv --out plots/walker
    python scripts/plot.py ours=benchmarks/results/learning tdmpc2=PATH/results/tdmpc2 \\
        --tasks cartpole-balance,cartpole-swingup --max_step 100000 --out plots/cartpole
    python scripts/plot.py --bars logs/mt80/1/default/eval_tasks.csv --out plots/mt80
    python scripts/plot.py logs/walker-walk --metric cross_td_error --out plots/cross_td

Sources are run folders of train.py, curve CSVs in the published format (step,reward,seed: ours
in benchmarks/results/learning, the published MBDPO / TD-MPC2 / DreamerV3 results/<method>/),
or folders of either; ``label=path`` names a method (default: the run's exp_name or the CSVs'
folder). Writes <out>.png/.pdf (one panel per task: mean over seeds and a 95% bootstrap band)
and <out>_iqm.png/.pdf (interquartile mean of normalised scores over tasks and seeds, 95%
stratified bootstrap interval); with --bars, <out>_bars.png/.pdf (normalised score per task of
multi-task evaluations).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> list[str]:
    from mbdpo import plots
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("sources", nargs="*", help="[label=]run folder, curve CSV, or a folder of them")
    p.add_argument("--out", default="plots/curves", help="output path without extension")
    p.add_argument("--tasks", default=None, help="comma-separated tasks to plot (default: all)")
    p.add_argument("--max_step", type=int, default=None, help="plot steps up to this one")
    p.add_argument("--cols", type=int, default=4, help="panels per row")
    p.add_argument("--metric", default=None, help="a column of the runs' train.csv to plot "
                   "instead of the evaluation return (e.g. cross_td_error, action_drift, "
                   "value_loss); run folders only, no IQM figure")
    p.add_argument("--bars", nargs="*", default=[], help="multi-task evaluation CSVs "
                   "(eval_tasks.csv, eval_<ckpt>_<set>.csv), one per seed")
    args = p.parse_args(argv)
    if not args.sources and not args.bars:
        p.error("give run folders or curve CSVs to plot, or --bars with evaluation CSVs")
    written = []
    try:
        if args.cols < 1:
            raise plots.PlotInputError(f"--cols {args.cols}: give 1 or more panels per row.")
        if args.max_step is not None and args.max_step < 0:
            raise plots.PlotInputError(f"--max_step {args.max_step}: give a step of 0 or "
                                       "more (the last one plotted).")
        folder = os.path.dirname(os.path.abspath(args.out))
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as err:
            raise plots.PlotInputError(f"Cannot write the figures to {folder} "
                                       f"({err.strerror or err}): pass --out in a folder you "
                                       "can write to.") from None
        if args.sources:
            methods = plots.merge([plots.load(s, args.metric) for s in args.sources])
            if not any(m.tasks for m in methods):
                raise plots.PlotInputError(f"No source holds an evaluation row yet "
                                           f"({', '.join(args.sources)}): plot runs that have "
                                           "evaluated at least once.")
            tasks = args.tasks.split(",") if args.tasks else None
            missing = [t for t in tasks or [] if not any(t in m.tasks for m in methods)]
            if missing:
                raise plots.PlotInputError(f"no source has a curve of {', '.join(missing)}: "
                                           "check --tasks.")
            written += plots.save(plots.curves_figure(methods, tasks, args.max_step,
                                                      args.cols, args.metric), args.out)
            if args.metric is None:
                written += plots.save(plots.iqm_figure(methods, tasks, args.max_step),
                                      args.out + "_iqm")
        if args.bars:
            scores: dict[str, list[float]] = {}
            for path in args.bars:
                for task, vals in plots.read_task_scores(path).items():
                    scores.setdefault(task, []).extend(vals)
            written += plots.save(plots.bars_figure(scores), args.out + "_bars")
    except (plots.PlotInputError, OSError) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2)
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    main()
