"""``seeds=[...]``: several seeds of one online run trained in one process, each an ordinary
run in its own folder."""
import os

import pytest
import torch

from mbdpo.agent import MBDPO
from tests.conftest import TINY, cli, make_cfg, rows

UPDATE = ("consistency_loss", "reward_loss", "value_loss", "td_target", "energy_loss",
          "grad_norm", "pi_loss", "total_loss", "q_scale", "energy_mean", "energy_std")


def logged(path):
    """A CSV's rows without the wall-clock column."""
    return [{k: v for k, v in r.items() if k != "elapsed_time"} for r in rows(path)]


@pytest.mark.slow
def test_seeds_in_one_process_are_their_single_runs(tmp_path):
    """seeds=[1,2] and seeds=[1,2,3] write the run folders of seed=1, 2, 3, and each is its
    single run to the bit over 1,000 steps (a random episode, a burst of 500 updates, an
    episode the agent acts in with one update per step, three evaluations): every logged
    training and evaluation row (returns, losses, gradient norm, Q scale, energy statistics,
    planner diagnostics) and the final weights. On one thread, as the runs' ``threads=1``;
    see mbdpo/nn.py (Linear) and mbdpo/math.py (row_std) for the two places where the CPU's
    kernels would otherwise round one seed's rows differently beside another's. A seed's
    folder then resumes as a single run."""
    work = str(tmp_path)
    common = ["task=cartpole-balance", "steps=1000", "seed_steps=500", "eval_freq=500",
              f"work_dir={work}", *TINY]
    assert "threads=1" in TINY
    out = cli("train.py", "seeds=[1,2]", "exp_name=two", *common)
    assert "2 seeds [1, 2] in one agent" in out.stdout
    assert "[eval seed 2] step" in out.stdout  # each seed's console lines name it
    cli("train.py", "seeds=[1,2,3]", "exp_name=three", *common)
    for s in (1, 2, 3):
        cli("train.py", f"seed={s}", "exp_name=single", *common)

    def run(s, name):
        return os.path.join(work, "cartpole-balance", str(s), name)
    finals = {}
    for name, seeds in (("two", (1, 2)), ("three", (1, 2, 3))):
        for s in seeds:
            batched, single = run(s, name), run(s, "single")
            train, evals = logged(os.path.join(batched, "train.csv")), \
                logged(os.path.join(batched, "eval.csv"))
            assert [r["step"] for r in train] == ["500", "1000"]
            assert [r["step"] for r in evals] == ["0", "500", "1000"]
            assert all(train[1][k] for k in UPDATE)  # the updates were logged
            assert train == logged(os.path.join(single, "train.csv")), (name, s)
            assert evals == logged(os.path.join(single, "eval.csv")), (name, s)
            states = [torch.load(os.path.join(r, "models", "final.pt"), weights_only=True)
                      for r in (batched, single)]
            assert states[0]["config"]["seed"] == s and states[0]["agent"]["seeds"] == [s]
            assert states[0]["counters"] == states[1]["counters"]
            model = states[1]["agent"]["model"]
            assert states[0]["agent"]["model"].keys() == model.keys()
            for k, v in model.items():
                assert torch.equal(states[0]["agent"]["model"][k], v), (name, s, k)
            finals[s] = states[0]
    # the seeds are runs of their own
    first = [logged(os.path.join(run(s, "three"), "train.csv"))[0]["episode_reward"]
             for s in (1, 2, 3)]
    assert len(set(first)) == 3, first
    # a seed's folder is its run: resumed as a single run (seed=3 resume=true) with more
    # steps, it continues as the single run of seed 3 does
    longer = [a if not a.startswith("steps=") else "steps=1500" for a in common]
    for name in ("three", "single"):
        cli("train.py", "seed=3", f"exp_name={name}", "resume=true", *longer)
    for csv_name in ("train.csv", "eval.csv"):
        resumed = logged(os.path.join(run(3, "three"), csv_name))
        assert resumed[-1]["step"] == "1500"
        assert resumed == logged(os.path.join(run(3, "single"), csv_name))
    # a seed's checkpoint loads as a one-seed agent
    from omegaconf import OmegaConf
    agent = MBDPO(OmegaConf.create(finals[2]["config"]))
    agent.load_state_dict(finals[2]["agent"])
    assert agent.S == 1 and agent.seeds == [2]


def test_resume_takes_the_seeds_back_to_the_checkpoint_step_they_share(tmp_path, capsys):
    """A kill between two seeds' saves leaves one seed's latest.pt a checkpoint ahead (with
    the unit it replaces kept as previous.pt): resume takes that seed back to the step every
    seed has; a seed whose first save is ahead starts again; a seed ahead with no unit of the
    shared step is refused with one sentence, nothing removed."""
    from mbdpo.config import ConfigError
    from mbdpo.trainers.seeds import reconcile, seed_configs

    cfgs = seed_configs(make_cfg("task=cartpole-balance", "seeds=[1,2]",
                                 f"work_dir={tmp_path}"))
    folders = [os.path.join(tmp_path, "cartpole-balance", str(s), "default", "models")
               for s in (1, 2)]
    assert [c.seed for c in cfgs] == [1, 2] and all(c.seeds is None for c in cfgs)

    def put(i, name, step, evaluated=0):
        os.makedirs(folders[i], exist_ok=True)
        torch.save({"agent": {}, "config": {}, "step": step, "last_eval_step": evaluated,
                    "counters": {"updates": step}}, os.path.join(folders[i], name))

    def steps(i):
        return {n: torch.load(os.path.join(folders[i], n), weights_only=True)["step"]
                for n in sorted(os.listdir(folders[i]))}

    put(0, "latest.pt", 400), put(0, "previous.pt", 300), put(1, "latest.pt", 300)
    reconcile(cfgs)
    assert steps(0) == {"latest.pt": 300} and steps(1) == {"latest.pt": 300}
    assert "seed 1: back to its checkpoint of step 300 (evaluated at step 0)" in \
        capsys.readouterr().out

    put(1, "previous.pt", 300)  # both saved: the leftover previous.pt goes
    reconcile(cfgs)
    assert steps(0) == steps(1) == {"latest.pt": 300}

    # one step, two units: a stop inside the evaluation at step 400 saved step 400 before it,
    # the kill came after seed 1 saved step 400 again after it
    put(0, "latest.pt", 400, 400), put(0, "previous.pt", 400), put(1, "latest.pt", 400)
    reconcile(cfgs)
    assert steps(0) == steps(1) == {"latest.pt": 400}
    assert torch.load(os.path.join(folders[0], "latest.pt"),
                      weights_only=True)["last_eval_step"] == 0

    for i in (0, 1):
        for n in os.listdir(folders[i]):
            os.remove(os.path.join(folders[i], n))
    put(1, "latest.pt", 200)  # seed 2's first save, seed 1's not written
    reconcile(cfgs)
    assert steps(0) == steps(1) == {}
    assert "seed 2: back to its checkpoint of the start" in capsys.readouterr().out

    put(0, "latest.pt", 400), put(1, "latest.pt", 300)  # no unit of step 300 for seed 1
    with pytest.raises(ConfigError, match=r"seed 1: step 400 \(evaluated at step 0\), seed 2: "
                                          r"step 300.*seed=N resume=true"):
        reconcile(cfgs)
    assert steps(0) == {"latest.pt": 400} and steps(1) == {"latest.pt": 300}
