"""Train MBDPO. Online on one task: python scripts/train.py task=dog-run
Multi-task offline: python scripts/train.py task=mt80 multitask=true data_dir=offline_dataset/mt80
"""
from mbdpo.cli import entry


def job(cfg):
    if cfg.multitask:
        from mbdpo.trainers.offline import OfflineTrainer
        return OfflineTrainer(cfg).train()
    from mbdpo.trainers.online import OnlineTrainer
    return OnlineTrainer(cfg).train()


if __name__ == "__main__":
    entry(job)
