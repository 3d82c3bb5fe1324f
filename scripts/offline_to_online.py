"""Fine-tune a multi-task pretrained agent on one task online, optionally against training from
scratch with the same budget and seeds:

    python scripts/offline_to_online.py checkpoint=PATH save_path=DIR off2on_task=walker-run \
        steps=40000 compare_scratch=true
"""
from mbdpo.cli import entry


def before_parse(cfg):
    if cfg.get("off2on_task"):
        cfg.task = cfg.off2on_task  # validated (closest names) like any task=


def job(cfg):
    from mbdpo.config import ConfigError, one_seed_only
    from mbdpo.trainers.finetune import offline_to_online
    one_seed_only(cfg, "offline_to_online.py", "fine-tunes one seed per run")
    if not cfg.off2on_task:
        raise ConfigError("Pass off2on_task=NAME, the task to fine-tune on "
                          "(e.g. off2on_task=walker-run).")
    return offline_to_online(cfg)


if __name__ == "__main__":
    entry(job, before_parse)
