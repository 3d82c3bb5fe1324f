"""Train MBDPO. Online on one task: python scripts/train.py task=dog-run
Multi-task offline: python scripts/train.py task=mt80 multitask=true data_dir=offline_dataset/mt80
"""
import hydra

import os
import sys

from mbdpo.cli import check_overrides, run


def job(cfg):
    if cfg.multitask:
        from mbdpo.trainers.offline import OfflineTrainer
        return OfflineTrainer(cfg).train()
    from mbdpo.trainers.online import OnlineTrainer
    return OnlineTrainer(cfg).train()


@hydra.main(config_path="../cfgs", config_name="config", version_base=None)
def main(cfg):
    run(cfg, job)


if __name__ == "__main__":
    check_overrides(sys.argv[1:], os.path.join(os.path.dirname(__file__), "..", "cfgs"))
    main()
