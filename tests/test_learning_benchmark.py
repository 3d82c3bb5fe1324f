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


def test_published_mode_runs_the_config_as_it_is_and_says_how_a_run_differs(tmp_path):
    """published=true passes cfgs/config.yaml's method unchanged (only the protocol: 100k
    steps, 10 episodes every 10k), names the curve by device, and the JSON splits a run's
    differences from cfgs/config.yaml into protocol and method, with its last start."""
    from omegaconf import OmegaConf
    learning = load_script()
    args, seeds, _, parallel = learning.parse(
        ["published=true", "task=walker-walk", "together=true", "device=cpu",
         f"work_dir={tmp_path / 'logs'}", f"out_dir={tmp_path / 'results'}"])
    assert not parallel and args["_together"] and args["suffix"] == "cpu"
    assert learning.train_args(args) == [
        "steps=100000", "eval_freq=10000", "eval_episodes=10", "save_model_every=0",
        "exp_name=published", "task=walker-walk", "device=cpu", f"work_dir={tmp_path / 'logs'}"]
    default = OmegaConf.to_container(OmegaConf.load(
        os.path.join(os.path.dirname(SCRIPT), "..", "cfgs", "config.yaml")))
    config = {**default, "task": "walker-walk", "steps": 100000, "eval_freq": 10000,
              "seed_steps": 2500, "compile": False, "device": "cpu", "exp_name": "published",
              "task_dim": 0}  # (zeroed for one task: no difference)
    evals = [[0, 0, 30.0, 1.0, 60.0], [10000, 20, 500.0, 9.0, 1000.0]]
    make_run(learning.run_dir(args, 1), config, evals, ["abc1234"])
    make_run(learning.run_dir(args, 2), {**config, "model_size": 1, "tau": 0.05}, evals,
             ["abc1234"])
    with open(os.path.join(learning.run_dir(args, 2), "metadata.json"), "w") as f:
        json.dump({"commits": ["abc1234"], "starts": [
            {"device": "cuda", "device_name": "old", "torch": "2.12", "commit": "0"},
            {"device": "cuda:0", "device_name": "NVIDIA H200", "torch": "2.13.0",
             "commit": "abc1234", "dirty": False, "host": "x"}]}, f)
    path = learning.collect(args, seeds)
    assert path == str(tmp_path / "results" / "walker-walk_cpu.csv")
    with open(os.path.splitext(path)[0] + ".json") as f:
        runs = json.load(f)["runs"]
    protocol = {"steps": 100000, "eval_freq": 10000, "exp_name": "published", "device": "cpu",
                "compile": False}
    protocol = {k: v for k, v in protocol.items() if default[k] not in (None, "auto")}
    assert runs["1"]["differs_from_config"] == {"protocol": protocol, "method": {}}
    assert runs["2"]["differs_from_config"] == {"protocol": protocol,
                                                "method": {"model_size": 1, "tau": 0.05}}
    assert runs["2"]["last_start"] == {"device": "cuda:0", "device_name": "NVIDIA H200",
                                       "torch": "2.13.0", "commit": "abc1234", "dirty": False}
    assert runs["1"]["last_start"] == {}


@pytest.mark.parametrize("argv, says", [
    (["task=walker-walk", "parallel=true", "together=true"], "exclude each other"),
    (["task=walker-walk", "together=maybe"], "together is true or false"),
])
def test_learning_benchmark_refuses_contradictions(argv, says):
    learning = load_script()
    with pytest.raises(SystemExit) as stop:
        learning.parse(argv)
    assert says in str(stop.value)
