"""benchmarks/gpu_check.py: the parts that need no GPU (its whole dry run, `device=cpu
tiny=true`, takes ~6 min on two cores and is run by hand)."""
import csv
import importlib.util
import json
import os
import subprocess
import sys

from tests.conftest import ROOT

SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_check.py")


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_rate_is_the_last_episodes_steps_over_its_time(tmp_path):
    with open(tmp_path / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "episode", "episode_reward", "elapsed_time"])
        w.writerows([[500, 1, 20.0, 3.0], [1000, 2, 30.0, 40.0], [1500, 3, 95.5, 44.0]])
    rate = load_script().train_rate(str(tmp_path))
    assert rate == {"steps": 1500.0, "elapsed_s": 44.0, "steps_per_s_run": 34.09,
                    "last_episode_reward": 95.5, "steps_per_s_last_episode": 125.0}


def test_an_unknown_argument_is_one_sentence():
    out = subprocess.run([sys.executable, SCRIPT, "budget=100"], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 1
    assert out.stderr.strip() == ("error: unknown argument(s) budget: expected device=, "
                                  "budget_s=, tiny=true, out=, sizes=, train_steps=, "
                                  "parallel_runs=, parts=, table=.")


def test_an_unknown_part_is_one_sentence():
    out = subprocess.run([sys.executable, SCRIPT, "parts=train,learn"], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 1
    assert out.stderr.strip() == ("error: parts=train,learn: expected a comma-separated "
                                  "subset of tests,speed,train,parallel,learning.")


def test_learning_verdict_compares_the_paths_means_with_their_seed_spread(tmp_path):
    """Within seed noise: the means differ by no more than the larger spread between seeds."""
    for name, value in (("a", 300.0), ("b", 340.0)):
        os.makedirs(tmp_path / name)
        with open(tmp_path / name / "eval.csv", "w", newline="") as f:
            csv.writer(f).writerows([["step", "episode_reward"], [0, 1.0], [3000, value]])
    gpu_check = load_script()
    a, b = (gpu_check.eval_return(str(tmp_path / n)) for n in "ab")
    assert (a, b) == (300.0, 340.0)  # the last evaluation's
    near = gpu_check.learning_verdict({"default": [a, b], "eager_kernels": [310.0, 360.0]})
    assert near["mean"] == {"default": 320.0, "eager_kernels": 335.0}
    assert near["seed_spread"] == {"default": 40.0, "eager_kernels": 50.0}
    assert near["within_seed_noise"]  # 15 <= 50
    far = gpu_check.learning_verdict({"default": [a, b], "eager_kernels": [400.0, 420.0]})
    assert not far["within_seed_noise"]  # 90 > 40
    # the larger spread is the bound, itself included: 50 (between the spreads 40 and 50)
    # is within, 51 is not
    edge = gpu_check.learning_verdict({"default": [a, b], "eager_kernels": [345.0, 395.0]})
    assert edge["mean"]["eager_kernels"] - edge["mean"]["default"] == 50.0
    assert edge["within_seed_noise"]
    assert not gpu_check.learning_verdict(
        {"default": [a, b], "eager_kernels": [346.0, 396.0]})["within_seed_noise"]


def _speed_row(size, variant, seeds, act, update, kernels, steps, ratio, compiled=True):
    return {"model_size": size, "variant": variant, "seeds": seeds, "compile": compiled,
            "cuda_graphs": compiled, "act_ms": act, "update_ms": update,
            "kernels_per_act": kernels, "kernels_per_update": 250,
            "env_steps_per_s_by_num_envs": {"1": steps, "8": 2 * steps},
            "steps_ratio_vs_first_seeds": ratio, "first_call_s": 40.0 if compiled else 0.5}


def test_the_summary_sets_each_measured_figure_against_its_target(tmp_path):
    """The markdown the check prints at its end and with table=PATH: a row per speed
    measurement, and each target of issues 30 and 31 with its figure and verdict; parts that
    did not run, or failed, are "not measured"; failed CUDA tests are a "no"."""
    result = {"device_name": "NVIDIA H200", "torch": "2.11.0+cu130", "commit": "abc1234",
              "started": "2026-12-08 10:00:00", "tiny": False, "parts": {
                  "tests": {"rc": 1, "tail": "...\n1 failed, 5 passed in 40.1s\n"},
                  "speed_5": {"rc": 0, "rows": [
                      _speed_row(5, "fp32+ieee", 1, 149.0, 27.0, 7780, 3.5, 1.0, False),
                      _speed_row(5, "default", 1, 4.2, 2.7, 912, 160.0, 1.0),
                      _speed_row(5, "default", 4, 6.0, 4.1, 912, 400.0, 2.5)]},
                  "train": {"rc": 0, "steps_per_s_run": 120.0,
                            "steps_per_s_last_episode": 151.3},
                  "parallel": {"rc": "timeout", "tail": ""},
                  "learning": {"rc": 0, "mean": {"default": 820.5, "eager_kernels": 790.0},
                               "seed_spread": {"default": 12.0, "eager_kernels": 25.0},
                               "within_seed_noise": False}}}
    path = tmp_path / "check.json"
    path.write_text(json.dumps(result))
    out = subprocess.run([sys.executable, SCRIPT, f"table={path}"], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == ("GPU check on NVIDIA H200 (torch 2.11.0+cu130, commit abc1234, "
                        "2026-12-08 10:00:00)")
    assert "| 5 | eager, IEEE fp32 | 1 | 149 | 27.00 | 7,780 | 250 | 3.50 | 7.00 | 0.50 |" in lines
    assert ("| 5 | default (no flags): compiled kernels in CUDA graphs | 4 | 6.00 | 4.10 | 912 "
            "| 250 | 400 | 800 | 40.00 |") in lines
    targets = {row.split(" | ")[0].lstrip("| "): row.split(" | ")[1:]
               for row in lines[lines.index("| target | measured | wanted | met |") + 2:]}
    assert targets == {
        "act ms (size 5, default)": ["4.20", "<= 5", "yes |"],
        "update ms (size 5, default)": ["2.70", "<= 2.5", "no |"],
        "kernels per act (size 5, default)": ["912", "<= 1,000", "yes |"],
        "walker-walk env steps/s, scripts/train.py, no flags": ["151", ">= 150", "yes |"],
        "four runs at once, env steps/s in all": ["not measured (rc timeout)", ">= 250", "- |"],
        "S = 4 seeds in one process / S = 1, total env steps/s (size 5)": ["2.50", ">= 3",
                                                                          "no |"],
        "CUDA tests": ["1 failed, 5 passed in 40.1s", "pass", "no |"],
        "learning, 2 seeds: default vs eager kernels, mean difference (larger seed spread)":
            ["30.50 (25.00)", "within seed noise", "no |"]}
    bad = subprocess.run([sys.executable, SCRIPT, f"table={tmp_path / 'none.json'}"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1
    assert bad.stderr.startswith(f"error: table={tmp_path / 'none.json'} is not a JSON this "
                                 "script wrote (FileNotFoundError")
