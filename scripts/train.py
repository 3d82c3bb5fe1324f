"""Train MBDPO. Online on one task: python scripts/train.py task=dog-run
Several seeds in one process: python scripts/train.py task=walker-walk seeds=[1,2,3,4]
Multi-task offline: python scripts/train.py task=mt80 multitask=true data_dir=offline_dataset/mt80
On N processes (data parallel): torchrun --nproc_per_node=N scripts/train.py task=mt80 multitask=true ...
"""
from mbdpo.cli import entry


def job(cfg):
    from mbdpo import distributed
    distributed.setup(cfg)  # under torchrun: join the other processes (offline only)
    try:
        if cfg.get("seeds") is not None:
            from mbdpo.config import ConfigError
            from mbdpo.trainers.seeds import train_seeds
            if distributed.active():
                raise ConfigError("seeds=[...] trains its seeds in one process: start it "
                                  "without torchrun.")
            return train_seeds(cfg)
        if cfg.multitask:
            from mbdpo.trainers.offline import OfflineTrainer
            return OfflineTrainer(cfg).train()
        from mbdpo.trainers.online import OnlineTrainer
        return OnlineTrainer(cfg).train()
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    entry(job)
