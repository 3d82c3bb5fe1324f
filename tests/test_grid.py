"""scripts/online_parallel_train.py: a grid of tasks x seeds on Hydra's joblib launcher, stopped
half-way and continued; failed jobs reported; the published config file's keys."""
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, TINY, cli, digests, rows

SCRIPT = os.path.join(ROOT, "scripts", "online_parallel_train.py")
CONFIG = os.path.join(ROOT, "cfgs", "online_parallel_config.yaml")
NET = [a for a in TINY if not a.startswith(("eval_episodes", "log_freq", "threads"))]
# one 500-step episode per run: 250 seeding steps, 250 with updates, evaluations at 0 and 500
GRID = ["tasks=[cartpole-balance,reacher-easy]", "seeds=[1,2]", "num_gpus=0",
        "workers_per_gpu=2", "dmc_steps=500", "eval_freq=500", "save_model_every=0",
        "compile=false", "exp_name=g",
        f"common_overrides=[seed_steps=250,eval_episodes=1,log_freq=100,{','.join(NET)}]"]
RUNS = [("cartpole-balance", 1), ("cartpole-balance", 2), ("reacher-easy", 1),
        ("reacher-easy", 2)]


def launch(cwd, *args):
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", MUJOCO_GL="egl",
               PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, SCRIPT, "--config", CONFIG, *args], cwd=cwd,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def run(cwd, *args, timeout=600):
    """(exit status, stdout + stderr) of the launcher run in ``cwd``."""
    proc = cli("online_parallel_train.py", "--config", CONFIG, *args, timeout=timeout,
               check=False, cwd=cwd)
    return proc.returncode, proc.stdout + proc.stderr


def run_folder(cwd, task, seed):
    return os.path.join(cwd, "logs", task, str(seed), "g")


@pytest.mark.slow
def test_grid_stopped_half_way_finishes_only_what_is_left(tmp_path):
    cwd = str(tmp_path)
    proc = launch(cwd, *GRID)
    lines, started = [], 0
    for line in proc.stdout:  # stop once all four started: with 2 at once, two finished
        lines.append(line)  # (start and finish lines of different jobs interleave)
        started += "started on the CPU" in line
        if started == 4:
            time.sleep(1)
            proc.send_signal(signal.SIGTERM)
            break
    out = "".join(lines) + proc.communicate(timeout=300)[0]
    assert proc.returncode == 130, out
    assert "each running job saves and stops" in out
    status = {(t, s): line.split()[2] for line in out.splitlines() for t, s in RUNS
              if line.split()[:2] == [t, str(s)]}
    assert sorted(status.values()) == ["finished", "finished", "stopped", "stopped"], out
    done = [r for r in RUNS if status[r] == "finished"]
    before = {r: digests(run_folder(cwd, *r)) for r in done}

    code, out2 = run(cwd, *GRID)
    assert code == 0, out2
    for t, s in done:  # skipped, their files untouched
        assert f"{t} seed {s}: finished before, skipped" in out2
        assert digests(run_folder(cwd, t, s)) == before[(t, s)]
    assert out2.count("started on the CPU") == 2
    assert "4 of 4 runs finished" in out2
    for task in ("cartpole-balance", "reacher-easy"):
        merged = rows(os.path.join(cwd, "results", "g", f"{task}.csv"))
        assert list(merged[0]) == ["step", "reward", "seed"]
        for seed in (1, 2):
            ev = rows(os.path.join(run_folder(cwd, task, seed), "eval.csv"))
            assert [int(r["step"]) for r in ev] == [0, 500]
            mine = [r for r in merged if r["seed"] == str(seed)]
            assert [(int(r["step"]), float(r["reward"])) for r in mine] == \
                [(int(r["step"]), float(r["episode_reward"])) for r in ev]


@pytest.mark.slow
def test_job_mode_task_trains_a_tasks_seeds_in_one_job_as_their_single_runs(tmp_path):
    """job_mode=task: one job (one process) for cartpole-balance's seeds 1 and 2, each seed's
    ordinary run folder with its status, the job's console and its curve; seed 2's evaluations
    and final weights equal those of the job of seed 2 alone (job_mode=seed, one thread). A
    re-run skips both; a seed whose status is lost is the only one the next run takes up."""
    import torch
    cwd = str(tmp_path)
    one = [a.replace("common_overrides=[", "common_overrides=[threads=1,")
           if a.startswith("common_overrides=") else a for a in GRID
           if not a.startswith(("tasks=", "seeds=", "workers_per_gpu="))]
    one += ["tasks=[cartpole-balance]", "workers_per_gpu=1"]
    code, out = run(cwd, *one, "seeds=[1,2]", "job_mode=task")
    assert code == 0, out
    assert "2 runs (1 tasks x 2 seeds) in 1 jobs (job_mode=task" in out, out
    assert out.count("started on the CPU") == 1, out
    assert "cartpole-balance seeds 1,2: started" in out
    assert "2 of 2 runs finished" in out
    for seed in (1, 2):
        folder = run_folder(cwd, "cartpole-balance", seed)
        console = open(os.path.join(folder, "console.log")).read()
        assert "[grid]" not in console and f"[eval seed {seed}] step" in console, console
    merged = rows(os.path.join(cwd, "results", "g", "cartpole-balance.csv"))
    assert sorted({r["seed"] for r in merged}) == ["1", "2"]

    alone = [a.replace("exp_name=g", "exp_name=alone") for a in one]
    code, out_alone = run(cwd, *alone, "seeds=[2]", "job_mode=seed")
    assert code == 0, out_alone
    batched, single = run_folder(cwd, "cartpole-balance", 2), \
        os.path.join(cwd, "logs", "cartpole-balance", "2", "alone")
    ev = [[(r["step"], r["episode_reward"]) for r in rows(os.path.join(f, "eval.csv"))]
          for f in (batched, single)]
    assert ev[0] == ev[1] and len(ev[0]) == 2, ev
    w = [torch.load(os.path.join(f, "models", "final.pt"), weights_only=True)["agent"]["model"]
         for f in (batched, single)]
    assert w[0].keys() == w[1].keys() and all(torch.equal(w[0][k], w[1][k]) for k in w[0])

    before = digests(batched)
    code, out2 = run(cwd, *one, "seeds=[1,2]", "job_mode=task")
    assert code == 0 and out2.count("finished before, skipped") == 2, out2
    assert "started" not in out2.split("sweep folder")[1] and digests(batched) == before
    os.remove(os.path.join(run_folder(cwd, "cartpole-balance", 1), "grid_status.json"))
    code, out3 = run(cwd, *one, "seeds=[1,2]", "job_mode=task")
    assert code == 0 and "cartpole-balance seed 2: finished before, skipped" in out3, out3
    assert "cartpole-balance seed 1: started" in out3 and "2 of 2 runs finished" in out3


@pytest.mark.slow
def test_a_failed_job_is_reported_and_the_others_go_on(tmp_path):
    """A ManiSkill2 task where mani-skill2 is not installed fails at once with its sentence;
    the other job finishes; the launcher exits 1 and says which."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    from mbdpo.tasks import suite_installed
    if suite_installed("maniskill2"):
        pytest.skip("mani-skill2 is installed here: lift-cube would run")
    grid = [a if not a.startswith("tasks=") else "tasks=[lift-cube,cartpole-balance]"
            for a in GRID if not a.startswith("seeds=")] + ["seeds=[1]", "default_steps=100"]
    code, out = run(str(tmp_path), *grid)
    assert code == 1, out
    table = {line.split()[0]: line for line in out.splitlines()
             if line.split()[:2] in (["lift-cube", "1"], ["cartpole-balance", "1"])}
    assert " failed " in table["lift-cube"] and "pip install" in table["lift-cube"], out
    assert " finished " in table["cartpole-balance"], out
    assert "1 of 2 runs finished" in out


@pytest.mark.parametrize("args, says", [
    (["task=walker-walk"], "unknown key 'task'"),
    (["tasks=[walker-wlak]"], "Did you mean walker-walk"),
    (["common_overrides=[steps_per_env=3]"], "Unknown setting 'steps_per_env'"),
    (['common_overrides=["online_save_root=???"]'], "online_save_root=??? must be given a folder"),
    (["common_overrides=[a=???]"], "cannot be read as YAML"),
    (["launcher=ray"], "expected one of joblib, submitit_slurm, submitit_local"),
    (["seeds=[1,2,1]"], "seeds=[1, 2, 1] lists 1 twice: each run folder belongs to one job"),
    (["tasks=[walker-walk,walker-walk]"], "lists walker-walk twice"),
    (["common_overrides=[steps=100]"], "steps=100 is set per suite by the grid: use dmc_steps"),
    (["common_overrides=[seed=3]"], "seed=3 is set by the grid: list the seeds in seeds=[...]"),
    (["common_overrides=[exp_name=x]"], "exp_name is a key of the grid itself, passed to every"),
    (["common_overrides=[model_size=3]"], "Bad value model_size=3: expected one of 1, 5, 19, "
                                          "48, 317. (common_overrides, for walker-stand)"),
    (["job_mode=tasks"], "job_mode=tasks: expected seed (a job per task and seed) or task"),
    (["seeds=[one]"], "these are whole numbers"),
    (["num_gpus=-1"], "GPU counts and ids are 0 or more"),
    (["gpu_ids=[-2]"], "GPU counts and ids are 0 or more"),
    (["hydra.launcher.n_jobs=abc"], "hydra.launcher.n_jobs=abc: Value 'abc' of type 'str' "
                                    "could not be converted to Integer (launcher=joblib)."),
    (["hydra.launcher.foo=1"], "launcher=joblib has no setting 'foo'; it has n_jobs,"),
    (["launcher=submitit_local", "hydra.launcher.timeout_min=x"], "(launcher=submitit_local)"),
    pytest.param(["launcher=submitit_slurm"], "srun is not on this machine's PATH",
                 marks=pytest.mark.skipif(__import__("shutil").which("srun") is not None,
                                          reason="a Slurm cluster")),
])
def test_bad_grid_settings_get_one_sentence(tmp_path, args, says):
    code, out = run(str(tmp_path), *args, timeout=120)
    assert code == 2, out
    assert out.startswith("error: ") and says in out and "Traceback" not in out, out
    assert out.count("\n") == 1  # one sentence
    assert not os.path.exists(tmp_path / "logs")


def test_the_published_config_file_is_accepted(tmp_path, capsys):
    """The published cfgs/online_parallel_config.yaml runs as is once its ??? are filled in:
    its keys with no use here (replay export, compile modes, its entry script) are named as
    ignored, its online_save_root and reward_csv_dir set the run and curve folders, and the
    published --num_gpus / --tasks options work."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("online_parallel_train", SCRIPT)
    launcher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launcher)
    published = tmp_path / "published.yaml"
    published.write_text(
        "task_set: mt80\ntasks: []\ngpu_ids: [0, 1]\nnum_gpus: 2\njob_mode: seed\n"
        "workers_per_gpu: 3\nseeds: [1, 2, 3]\ndmc_steps: 4000000\nmetaworld_steps: 2000000\n"
        "default_steps: 2000000\nobs: state\ncompile: true\n"
        "compile_mode: max-autotune-no-cudagraphs\ndiffusion_eval_compile: true\n"
        "eval_freq: 100000\nsave_model_every: 100000\nsave_replay: true\n"
        "replay_save_dir: ???\npython_bin: python\ntrain_entry: scripts/train.py\n"
        "exp_name: parallel-online-diffusion\nsave_agent: true\nsave_video: false\n"
        "enable_wandb: false\ncommon_overrides:\n  - online_save_root=runs\n"
        "  - reward_csv_dir=curves\n  - threads=1\n")
    cfg, overrides, hydra_args = launcher.read_config(
        ["--config", str(published), "--num_gpus", "1", "--tasks", "walker-walk", "mw-reach",
         "seeds=[4]", "hydra.launcher.n_jobs=5"])
    assert "compile_mode, diffusion_eval_compile, save_replay, replay_save_dir, python_bin, " \
           "train_entry, save_agent (keys of the published launcher)" in capsys.readouterr().out
    assert (cfg.work_dir, cfg.results_dir, overrides) == ("runs", "curves", ["threads=1"])
    assert (cfg.num_gpus, list(cfg.gpu_ids), list(cfg.seeds)) == (1, [], [4])
    assert launcher.tasks_of(cfg) == ["walker-walk", "mw-reach"]
    assert hydra_args == ["hydra.launcher.n_jobs=5"]
    from mbdpo.grid import steps_for
    steps = {"dmc": cfg.dmc_steps, "metaworld": cfg.metaworld_steps, "default": 7}
    assert [steps_for(t, steps) for t in ("walker-walk", "mw-reach", "lift-cube")] == \
        [4_000_000, 2_000_000, 7]
