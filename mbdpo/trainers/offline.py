"""Multi-task offline pretraining on a TD-MPC2 dataset (mt30, mt80, mt70): ``steps`` gradient
updates on sub-trajectories sampled from the memory-mapped store, periodic evaluation on every
task of the set with a per-task table and the normalized score, checkpoints, resume."""
from __future__ import annotations

import copy
import os
import time

from mbdpo import distributed, faults
from mbdpo.agent import MBDPO, stack_seeds
from mbdpo.compiled import Compiled
from mbdpo.config import ConfigError
from mbdpo.logging import CSVLog, Logger
from mbdpo.trainers.base import Trainer, write_metadata
from mbdpo.trainers.evaluate import eval_seed, evaluate_tasks, print_task_table
from mbdpo.trainers.task_dims import eval_task_list, fill_multitask_dims


class OfflineTrainer(Trainer):
    def __init__(self, cfg):
        super().__init__(cfg)
        from mbdpo.offline import OfflineStore, prepare_store
        if not cfg.data_dir:
            raise ConfigError(f"task={cfg.task} multitask=true pretrains offline: pass "
                              f"data_dir=offline_dataset/{cfg.task} (see docs/datasets.md).")
        if not distributed.is_main():  # under torchrun rank 0 prepares the store alone
            distributed.barrier()
        store_dir = prepare_store(str(cfg.data_dir), store_dir=cfg.get("store_dir"),
                                  num_tasks=len(cfg.tasks),
                                  check_values=bool(cfg.get("check_values", True)))
        if distributed.is_main():
            distributed.barrier()
        # every process draws the same batches (the same seed) and reads its share of them
        self.store = OfflineStore(store_dir, seed=cfg.seed)
        if distributed.active():
            self.store.part = distributed.share(cfg.batch_size)
        fill_multitask_dims(cfg, self.store.obs_dim, self.store.action_dim)
        counts = self.store.meta.get("episodes_per_task") or []
        absent = [t for i, t in enumerate(cfg.tasks) if i >= len(counts) or not counts[i]]
        if absent:
            shown = ", ".join(absent[:5]) + (f" and {len(absent) - 5} more" if len(absent) > 5
                                             else "")
            print(f"warning: the dataset in {cfg.data_dir} holds no episode of {len(absent)} of "
                  f"the {len(cfg.tasks)} tasks of {cfg.task} ({shown}): the model learns "
                  "nothing of them; check data_dir, or set eval_tasks to the tasks it holds.",
                  flush=True)
        self.eval_tasks = eval_task_list(cfg)
        self.agent = MBDPO(cfg)
        distributed.own_noise(cfg.seed)

    extra_names = ("sampler.pt",)

    def extra_state(self, marked: bool = False) -> dict:
        return {"sampler.pt": self._sampler_mark if marked else self.store.state_dict()}

    def mark_extra(self) -> None:
        self._sampler_mark = copy.deepcopy(self.store.state_dict())

    def load_extra_state(self, name, state) -> None:
        self.store.load_state_dict(state)

    def train(self):
        cfg = self.cfg
        if distributed.is_main():
            self.claim_dir()
        distributed.barrier()
        resume_step = None
        if cfg.resume and self.resume() is not None:
            resume_step = self.step
            if self.finished():
                return None
        self.logger = Logger(cfg, self.dir, resume_step,
                             None if resume_step is None else self.last_eval_step,
                             enabled=distributed.is_main())
        if distributed.is_main():
            self.task_csv = CSVLog(os.path.join(self.dir, "eval_tasks.csv"),
                                   None if resume_step is None else self.last_eval_step)
            write_metadata(cfg, self.dir)
        return self.run_loop(f"offline on {cfg.task} ({len(cfg.tasks)} tasks, "
                             f"{self.store.num_transitions:,} transitions, {cfg.steps:,} updates)")

    def _loop(self, stop):
        cfg = self.cfg
        rate_t, rate_step = time.time(), self.step
        losses, result = {}, None
        device = self.agent.device
        # this process's first update compiles (compile=true; not under torchrun)
        first = isinstance(self.agent._model_losses, Compiled)
        while True:
            if self.step % cfg.eval_freq == 0 and self.last_eval_step < self.step \
                    or self.step >= cfg.steps:
                self.check_finite(losses, self.step)
                self.mark()
                # under torchrun rank 0 evaluates while the others wait here
                result = self._evaluate(stop) if distributed.is_main() else {}
                if distributed.any_rank(result is None, device):
                    self.interrupted(marked=True)  # stopped during it: resume evaluates again
                self.last_eval_step = self.step
                if 0 < self.step < cfg.steps:
                    self.save(self.step)
            if self.step >= cfg.steps:
                self.save(self.step, names=["final.pt"])
                print(f"Done: {self.step:,} updates. Final checkpoint in {self.model_dir}")
                return result
            if self._stop_now(stop):
                self.check_finite(losses, self.step)
                self.interrupted(marked=False)
            if first:  # what a stop while it compiles saves (``run_loop``)
                self.mark()
                first = False
            losses = self.agent.update(stack_seeds([self.store.sample(cfg.batch_size,
                                                                      cfg.horizon)]))
            self.step += 1
            faults.reach("update")
            if self.step % cfg.log_freq == 0:
                self.check_finite(losses, self.step)
                sps = (self.step - rate_step) / max(time.time() - rate_t, 1e-9)
                row = {"step": self.step,
                       **{k: float(v) for k, v in distributed.average(losses).items()},
                       "elapsed_time": self.elapsed()}
                self.logger.log("train", row, self.step)
                shown = {k: row[k] for k in ("consistency_loss", "reward_loss", "value_loss",
                                             "energy_loss") if k in row}
                print(self.logger.progress_line("train", self.step, cfg.steps, sps, **shown),
                      flush=True)
            if cfg.save_model_every and self.step % cfg.save_model_every == 0 \
                    and self.step < cfg.steps:
                self.check_finite(losses, self.step)
                self.save(self.step, names=[f"{self.step}.pt"])

    def _stop_now(self, stop) -> bool:
        """A stop, seen alike by every process: under torchrun the processes agree every 8
        updates (one small collective), so all stop at the same update."""
        if not distributed.active():
            return bool(stop)
        return self.step % 8 == 0 and distributed.any_rank(bool(stop), self.agent.device)

    def _evaluate(self, stop=None) -> dict | None:
        cfg = self.cfg
        rows = evaluate_tasks(self.agent, cfg, self.eval_tasks, cfg.eval_episodes,
                              seed=eval_seed(cfg.seed, self.step), stop=stop)
        if rows is None:
            return None
        score = print_task_table(rows, self.step)
        self.task_csv.write_all([{"step": self.step, **r} for r in rows])
        row = {"step": self.step, "score": score,
               "episode_reward": sum(r["episode_reward"] for r in rows) / len(rows),
               "elapsed_time": self.elapsed()}
        self.logger.log("eval", row, self.step)
        return row
