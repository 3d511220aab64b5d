"""Test-only fault injection, so tests can kill a run for real at a named point of the code.

``HYPERPELT_TEST_KILL_AT="<point>:<n>[:term|:int][,...]"`` makes this process send itself SIGKILL (or
SIGTERM, SIGINT) the n-th time it reaches ``fault(<point>)``. Unset, a call costs one environment lookup.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "HYPERPELT_TEST_KILL_AT"
SIGNALS = {"term": signal.SIGTERM, "int": signal.SIGINT}
_reached: Counter = Counter()


def fault(point: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    _reached[point] += 1
    for entry in spec.split(","):
        name, count, *how = entry.split(":")
        if name == point and int(count) == _reached[point]:
            os.kill(os.getpid(), SIGNALS[how[0]] if how else signal.SIGKILL)
