"""Convert a TD-MPC2 offline dataset (chunk_*.pt files) into the memory-mapped store that
multi-task pretraining samples from. Run it once; an interrupted conversion resumes.

    python scripts/prepare_dataset.py data_dir=offline_dataset/mt80
    python scripts/prepare_dataset.py data_dir=offline_dataset/mt80 store_dir=/fast/disk/mt80

Task ids are checked against the task set named by task= (or by the folder's name, e.g. mt80).
"""
import os
import sys

import hydra


def job(cfg):
    from mbdpo.offline import OfflineStore, prepare_store
    from mbdpo.tasks import TASK_SETS

    data_dir = str(cfg.data_dir)
    task_set = next((s for s in (str(cfg.get("task")), os.path.basename(os.path.normpath(data_dir)))
                     if s in TASK_SETS), None)
    num_tasks = len(TASK_SETS[task_set]) if task_set else None
    store_dir = prepare_store(data_dir, store_dir=cfg.store_dir, progress=True,
                              num_tasks=num_tasks, check_values=bool(cfg.check_values))
    store = OfflineStore(store_dir)
    print(f"Store ready in {store_dir}: {store.num_transitions:,} transitions in "
          f"{store.num_episodes:,} episodes of {store.num_tasks_seen} tasks"
          f"{f' (task set {task_set})' if task_set else ''}, obs_dim {store.obs_dim}, "
          f"action_dim {store.action_dim}.", flush=True)


@hydra.main(config_path="../cfgs", config_name="config", version_base=None)
def main(cfg):
    from mbdpo.offline import DatasetError
    if cfg.get("data_dir") is None:
        print("error: no dataset given: pass data_dir=<folder with the chunk_*.pt files>, e.g. "
              "data_dir=offline_dataset/mt80.", file=sys.stderr, flush=True)
        raise SystemExit(2)
    from mbdpo.cli import answered
    answered(lambda: job(cfg), (DatasetError,), "Stopped: the chunks converted so far are kept; "
             "run the same command again to continue from them.")


if __name__ == "__main__":
    from mbdpo.cli import check_overrides
    check_overrides(sys.argv[1:], os.path.join(os.path.dirname(__file__), "..", "cfgs"))
    main()
