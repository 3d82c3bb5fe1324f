"""Several seeds in one process (``seeds=[1,2]``) SIGKILLed and SIGTERMed at chosen points and at
random moments, resumed until done, are the runs that were never interrupted: each seed's
folder as ``tests/faults/kill.py`` compares one run's. The chosen points include a kill
between two seeds' saves (which seed's latest.pt is then ahead is up to the threads;
tests/test_seed_runs.py checks each case of the reconciliation that follows)."""
import os
import random

import pytest

from tests.conftest import cli
from tests.faults.kill import ONLINE, at_points, at_random, same_run

SEEDS = (1, 2)


@pytest.mark.slow
def test_a_batched_run_killed_anywhere_resumes_to_the_same_runs(tmp_path):
    work = str(tmp_path)
    args = [*ONLINE, f"seeds=[{','.join(map(str, SEEDS))}]", f"work_dir={work}"]

    def same(name):
        for s in SEEDS:
            same_run(os.path.join(work, "mw-reach", str(s), "ref"),
                     os.path.join(work, "mw-reach", str(s), name), "replay.pt")

    cli("train.py", *args, "exp_name=ref")
    # each resume counts a point's hits anew, the two seeds' threads a hit each: in order,
    # SIGKILL inside the burst at step 200 (75 updates a seed; back to the start); after the
    # first seed's replay file of step 300 (the saves at 200 are hits 1-2; back to 200);
    # SIGTERM inside an episode (step 350) and inside the evaluation at step 400; SIGKILL
    # right after the first seed's latest.pt of the next save (the other seed's may not be
    # written yet: resume takes both back to the step they share)
    at_points([*args, "exp_name=points"],
              ["update:150", "save.extra-written:3", "env-step:300:TERM", "eval-step:50:TERM",
               "save.latest-written:1"])
    same("points")
    n = at_random(args, random.Random(3), 10, (3, 12), same)
    assert n >= 10, n
