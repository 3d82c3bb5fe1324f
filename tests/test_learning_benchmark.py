"""benchmarks/learning.py collect_only: the curve and its JSON describe the runs as they ran."""
import csv
import importlib.util
import json
import os

import pytest
import yaml

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "benchmarks", "learning.py")


def load_script():
    spec = importlib.util.spec_from_file_location("learning_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_run(folder, config, evals, commits):
    os.makedirs(folder)
    with open(os.path.join(folder, "config.yaml"), "w") as f:
        yaml.safe_dump(config, f)
    with open(os.path.join(folder, "eval.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "episode", "episode_reward", "episode_reward_std", "elapsed_time"])
        w.writerows(evals)
    with open(os.path.join(folder, "metadata.json"), "w") as f:
        json.dump({"commits": commits}, f)


def test_collect_records_the_runs_own_settings_not_the_command_line(tmp_path):
    """The runs were started with compile=true, 10 evaluation episodes and one thread; the
    collect_only call names none of that (nor a different diffusion_steps of seed 2), yet the
    JSON says it, with steps/s from the last evaluation's step and elapsed time."""
    learning = load_script()
    config = {"task": "reacher-easy", "steps": 100000, "model_size": 1,
              "diffusion_num_samples": 128, "diffusion_steps": 10, "seed_steps": 2500,
              "eval_freq": 10000, "eval_episodes": 10, "num_envs": 1, "utd": 1,
              "precision": "fp32", "plan_precision": "fp32", "compile": True, "threads": 1}
    args, seeds, collect_only, _ = learning.parse(
        ["task=reacher-easy", f"work_dir={tmp_path / 'logs'}", "exp_name=published100k",
         "seeds=[1,2]", "collect_only=true"])
    assert collect_only and seeds == [1, 2]
    make_run(learning.run_dir(args, 1), config,
             [[0, 0, 0.0, 0.0, 900.0], [10000, 20, 385.0, 429.5, 7348.56]], ["c79d8a1"])
    make_run(learning.run_dir(args, 2), {**config, "diffusion_steps": 20},
             [[0, 0, 2.2, 6.6, 930.8], [10000, 20, 289.4, 439.8, 7372.57]], ["c79d8a1"])

    path = learning.collect(args, seeds, out_dir=str(tmp_path / "results"))

    with open(path) as f:
        assert list(csv.reader(f)) == [["step", "reward", "seed"], ["0", "0.0", "1"],
                                       ["10000", "385.0", "1"], ["0", "2.2", "2"],
                                       ["10000", "289.4", "2"]]
    with open(os.path.splitext(path)[0] + ".json") as f:
        record = json.load(f)
    assert record["settings"] == {k: v for k, v in config.items() if k not in ("task", "threads")}
    assert record["runs"]["1"] == {"steps": 10000, "wall_s": 7349, "steps_per_s": 1.361,
                                   "commits": ["c79d8a1"], "threads": 1}
    assert record["runs"]["2"]["settings"] == {"diffusion_steps": 20}
    assert record["runs"]["2"]["steps_per_s"] == 1.356


def test_collect_with_no_runs_says_so_and_keeps_the_committed_curve(tmp_path):
    """A mistyped exp_name finds no evaluations: one sentence, and the curve already written
    there is not replaced by an empty one."""
    learning = load_script()
    out = tmp_path / "results"
    out.mkdir()
    (out / "reacher-easy.csv").write_text("step,reward,seed\n10000,385.0,1\n")
    args, seeds, _, _ = learning.parse(["task=reacher-easy", f"work_dir={tmp_path / 'logs'}",
                                        "exp_name=typo", "seeds=[1,2]"])
    with pytest.raises(SystemExit) as stop:
        learning.collect(args, seeds, out_dir=str(out))
    assert "no evaluations in" in str(stop.value) and "exp_name" in str(stop.value)
    assert (out / "reacher-easy.csv").read_text() == "step,reward,seed\n10000,385.0,1\n"
    assert not (out / "reacher-easy.json").exists()
