"""Evaluate a checkpoint: python scripts/evaluate.py task=dog-run checkpoint=PATH eval_episodes=10"""
from mbdpo.cli import entry


def job(cfg):
    from mbdpo.trainers.evaluate import evaluate_checkpoint
    return evaluate_checkpoint(cfg)


if __name__ == "__main__":
    entry(job)
