"""Write a small dataset in exactly the published TD-MPC2 chunk format, from real environment
rollouts: random actions, or a trained agent with checkpoint=PATH.

    python scripts/make_dataset.py task=mt30 episodes_per_task=4 out=offline_dataset/mt30-small
    python scripts/make_dataset.py task=mt80 episodes_per_task=2 out=DIR checkpoint=PATH
"""
import hydra

import os
import sys

from mbdpo.cli import check_overrides, run
from mbdpo.tasks import TASK_SETS


def job(cfg):
    from mbdpo.datasets import make_dataset
    return make_dataset(cfg)


@hydra.main(config_path="../cfgs", config_name="config", version_base=None)
def main(cfg):
    cfg.multitask = cfg.task in TASK_SETS
    run(cfg, job)


if __name__ == "__main__":
    check_overrides(sys.argv[1:], os.path.join(os.path.dirname(__file__), "..", "cfgs"))
    main()
