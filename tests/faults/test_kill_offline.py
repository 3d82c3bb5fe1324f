"""An offline (multi-task) run SIGKILLed and SIGTERMed at chosen points and at random moments,
resumed until done, is the run that was never interrupted (``tests/faults/kill.py`` says what
is compared)."""
import os
import random

import pytest

from tests.conftest import cli
from tests.faults.kill import at_points, at_random, offline_args, same_run


@pytest.mark.slow
def test_an_offline_run_killed_anywhere_resumes_to_the_same_run(mt30_data, tmp_path):
    work = str(tmp_path)
    run = lambda name: os.path.join(work, "mt30", "1", name)  # noqa: E731
    args = offline_args(mt30_data)
    cli("train.py", *args, f"work_dir={work}", "exp_name=ref")
    # SIGKILL between the sampler file and latest.pt (step 80), after latest.pt (step 120);
    # SIGTERM between two updates; SIGTERM inside the final evaluation
    at_points([*args, f"work_dir={work}", "exp_name=points"],
              ["save.extra-written:2", "save.latest-written:1", "update:70:TERM",
               "eval-step:200:TERM"])
    same_run(run("ref"), run("points"), "sampler.pt")
    n = at_random([*args, f"work_dir={work}"], random.Random(1), 20, (2, 9),
                  lambda name: same_run(run("ref"), run(name), "sampler.pt"))
    assert n >= 20, n
