"""A clean stop on SIGINT or SIGTERM: the signal only asks; the loop finishes its step, saves the training
state and raises `TrainingStopped`, whose message says how to resume (the command exits with 0)."""

from __future__ import annotations

import signal
import threading


class TrainingStopped(Exception):
    """The run stopped at a signal after saving its state."""


class StopSignals:
    """While active, SIGINT and SIGTERM set ``requested``; the first restores the previous handler, so a
    second signal acts at once, as without this. Signals are caught only in the main thread."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self) -> StopSignals:
        self.requested, self.previous = False, {}
        if threading.current_thread() is threading.main_thread():
            self.previous = {sig: signal.signal(sig, self._ask) for sig in self.SIGNALS}
        return self

    def _ask(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signum, self.previous[signum])

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
