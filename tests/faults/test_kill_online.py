"""An online run SIGKILLed and SIGTERMed at chosen points and at random moments, resumed until
done, is the run that was never interrupted (``tests/faults/kill.py`` says what is compared)."""
import os

import pytest

from tests.faults.kill import ONLINE, killed_anywhere


@pytest.mark.slow
def test_an_online_run_killed_anywhere_resumes_to_the_same_run(tmp_path):
    work = str(tmp_path)
    # in order: SIGKILL inside the burst (at step 200); SIGTERM inside the burst (saves the
    # boundary at step 100, one the loop ran through); SIGTERM inside an episode (step 350:
    # saves 300); SIGTERM inside the evaluation of step 400 (saves the state before it);
    # SIGKILL between the replay file and latest.pt of the final save, then after latest.pt
    # before final.pt is linked (resume must still end with final.pt)
    killed_anywhere(ONLINE, work, lambda name: os.path.join(work, "mw-reach", "1", name),
                    "replay.pt", ["update:150", "update:120:TERM", "env-step:250:TERM",
                                  "eval-step:50:TERM", "save.extra-written:2",
                                  "save.latest-written:1"], seed=0)
