"""One process trains a run folder at a time: it holds ``<run folder>/train.lock`` while it does.

The lock is the operating system's (``flock``, through filelock), so it ends with the process, however
that ends; the file itself stays. A second process that trains or resumes the same run folder is refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from ..errors import UserError

LOCK = "train.lock"


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the block; a UserError at once when another process holds it."""
    lock = FileLock(run_dir / LOCK, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise UserError(f"{run_dir} is being trained by another process (it holds {run_dir / LOCK}); "
                        f"wait for it to end, or stop it and resume") from None
    try:
        yield
    finally:
        lock.release()
