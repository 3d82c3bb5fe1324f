"""Fault points for ``tests/faults/``: with ``MBDPO_FAULT=<point>[:<n>[:TERM]]`` in the
environment the process kills itself with SIGKILL (or sends itself SIGTERM, as Ctrl-C would)
the first (n-th) time it reaches the named point, e.g. between writing a checkpoint's replay
and its ``latest.pt``. Without the variable ``reach`` is one comparison. A kill at a chosen point is the only way a test can hit a
window of a few milliseconds every time; a random kill rarely does."""
from __future__ import annotations

import os
import signal

_SPEC = os.environ.get("MBDPO_FAULT", "").split(":")
_count = 0


def reach(point: str) -> None:
    global _count
    if point != _SPEC[0]:
        return
    _count += 1
    if _count == int(_SPEC[1] if len(_SPEC) > 1 else 1):
        sig = signal.SIGTERM if _SPEC[2:] == ["TERM"] else signal.SIGKILL
        os.kill(os.getpid(), sig)
