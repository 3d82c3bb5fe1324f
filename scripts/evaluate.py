"""Evaluate a checkpoint on one task or on its whole task set:

    python scripts/evaluate.py task=dog-run checkpoint=PATH eval_episodes=10
    python scripts/evaluate.py task=mt80 checkpoint=PATH eval_episodes=10
"""
from mbdpo.cli import entry


def before_parse(cfg):
    from mbdpo.tasks import TASK_SETS
    if cfg.task in TASK_SETS:
        cfg.multitask = True  # a task set is evaluated with the checkpoint's multi-task model


def job(cfg):
    from mbdpo.config import one_seed_only
    one_seed_only(cfg, "evaluate.py", "evaluates one checkpoint")
    from mbdpo.trainers.evaluate import evaluate_checkpoint
    return evaluate_checkpoint(cfg)


if __name__ == "__main__":
    entry(job, before_parse)
