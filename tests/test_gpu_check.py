"""benchmarks/gpu_check.py: the parts that need no GPU (its whole dry run, `device=cpu
tiny=true`, takes ~6 min on two cores and is run by hand)."""
import csv
import importlib.util
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
                                  "parallel_runs=, parts=.")


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
