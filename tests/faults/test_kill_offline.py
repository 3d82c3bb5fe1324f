"""An offline (multi-task) run SIGKILLed and SIGTERMed at chosen points and at random moments,
resumed until done, is the run that was never interrupted (``tests/faults/kill.py`` says what
is compared)."""
import os

import pytest

from tests.faults.kill import killed_anywhere, offline_args


@pytest.mark.slow
def test_an_offline_run_killed_anywhere_resumes_to_the_same_run(mt30_data, tmp_path):
    work = str(tmp_path)
    # SIGKILL between the sampler file and latest.pt (step 80), after latest.pt (step 120);
    # SIGTERM between two updates; SIGTERM inside the final evaluation
    killed_anywhere(offline_args(mt30_data), work,
                    lambda name: os.path.join(work, "mt30", "1", name), "sampler.pt",
                    ["save.extra-written:2", "save.latest-written:1", "update:70:TERM",
                     "eval-step:200:TERM"], seed=1)
