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
                                  "parallel_runs=.")
