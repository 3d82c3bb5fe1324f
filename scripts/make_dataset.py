"""Write a small dataset in exactly the published TD-MPC2 chunk format, from real environment
rollouts: random actions, or a trained agent with checkpoint=PATH.

    python scripts/make_dataset.py task=mt30 episodes_per_task=4 out=offline_dataset/mt30-small
    python scripts/make_dataset.py task=mt80 episodes_per_task=2 out=DIR checkpoint=PATH
"""
from mbdpo.cli import entry
from mbdpo.tasks import TASK_SETS


def job(cfg):
    from mbdpo.trainers.collect import make_dataset
    return make_dataset(cfg)


def task_set_is_multitask(cfg):
    cfg.multitask = cfg.task in TASK_SETS


if __name__ == "__main__":
    entry(job, before_parse=task_set_is_multitask)
