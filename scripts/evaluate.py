"""Evaluate a checkpoint: python scripts/evaluate.py task=dog-run checkpoint=PATH eval_episodes=10"""
import hydra

import os
import sys

from mbdpo.cli import check_overrides, run


def job(cfg):
    from mbdpo.trainers.evaluate import evaluate_checkpoint
    return evaluate_checkpoint(cfg)


@hydra.main(config_path="../cfgs", config_name="config", version_base=None)
def main(cfg):
    run(cfg, job)


if __name__ == "__main__":
    check_overrides(sys.argv[1:], os.path.join(os.path.dirname(__file__), "..", "cfgs"))
    main()
