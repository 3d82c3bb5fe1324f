"""benchmarks/host_loop.py: the host's time per step of the online loop, one seed and a
batch of seeds, with the agent's calls as stand-ins."""
import json
import os
import subprocess
import sys

from tests.conftest import ROOT


def test_host_loop_times_one_seed_and_a_batch_of_seeds(tmp_path):
    out = tmp_path / "host_loop.json"
    p = subprocess.run([sys.executable, "benchmarks/host_loop.py", "task=cartpole-balance",
                        "steps=1000", "seed_steps=500", "seeds=1,2", "repeats=1", f"out={out}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "MUJOCO_GL": "egl"})
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    result = json.loads(out.read_text())
    assert [r["S"] for r in result["rows"]] == [1, 2]
    for r in result["rows"]:
        run = r["runs"][0]
        # 500 steps after the burst, one update each: 499 gaps between them
        assert run["steps_timed"] == 499 and r["ms_per_step"] > 0
        assert r["ms_per_seed"] == round(r["ms_per_step"] / r["S"], 3)
    one, two = result["rows"]
    assert two["ratio"] == round(two["ms_per_step"] / one["ms_per_step"], 2) > 0
    # the table's row of S = 2 shows the JSON's figures
    assert (f"{2:>3} {two['ms_per_step']:>17.3f}" in p.stdout
            and f"{two['ratio']:>8.2f}" in p.stdout.splitlines()[-2])
    assert "host time per step of the online loop" in p.stdout
