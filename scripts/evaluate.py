"""Evaluate a checkpoint: python scripts/evaluate.py task=dog-run checkpoint=PATH eval_episodes=10"""
import hydra

from mbdpo.cli import run


def job(cfg):
    from mbdpo.trainers.evaluate import evaluate_checkpoint
    return evaluate_checkpoint(cfg)


@hydra.main(config_path="../cfgs", config_name="config", version_base=None)
def main(cfg):
    run(cfg, job)


if __name__ == "__main__":
    main()
