"""Folders written atomically: a reader finds the old folder or the new one, each complete, never a mix.

A folder is written under a temporary name beside its final one (``<name>.tmp``), every file and the
folder fsynced, then renamed into place. An existing folder is replaced by exchanging the two in one
step (Linux ``renameat2(RENAME_EXCHANGE)``), so the name always holds a complete folder; where that call
is missing, the old folder is first moved aside to ``<name>.old``, and `recover` finishes the swap
after a crash. Files written alone (`write_text`) are replaced in the same way. A write that fails (a full
disk) leaves the old folder as it was (`saving`).
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from safetensors import SafetensorError

from .errors import UserError
from .faults import fault

TMP, OLD = ".tmp", ".old"
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def sibling(folder: Path, suffix: str) -> Path:
    return folder.with_name(folder.name + suffix)


def fsync(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to disk."""
    if os.name == "nt" and path.is_dir():  # Windows cannot open a folder to flush it
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fresh_tmp(folder: Path) -> Path:
    """An empty ``<folder>.tmp`` (a leftover of a crashed write is removed first)."""
    tmp = sibling(folder, TMP)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


@contextmanager
def saving(folder: Path, what: str, kept: str) -> Iterator[None]:
    """The block writes ``folder`` (through ``<folder>.tmp``); when it fails to (a full disk: an OSError,
    or safetensors' SafetensorError, which is none), the temporary folder is removed and a UserError says
    ``what`` could not be saved, why, and what is ``kept``."""
    try:
        yield
    except (OSError, SafetensorError) as err:
        shutil.rmtree(sibling(folder, TMP), ignore_errors=True)
        raise UserError(f"cannot save {what} in {folder} ({' '.join(str(err).split())}); {kept}") from None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step; False where the system cannot (then nothing moved)."""
    try:
        call = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    call.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if call(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # the file system or kernel cannot
        return False
    raise OSError(error, os.strerror(error), str(a))


def publish(tmp: Path, folder: Path, name: str = "folder") -> Path:
    """Move the complete folder ``tmp`` to ``folder``, replacing an existing one atomically. ``name``
    names the fault points (``<name>-swap``) that tests kill at."""
    for path in [*tmp.rglob("*"), tmp]:  # files, then the folders' entries
        fsync(path)
    if not folder.exists():
        os.replace(tmp, folder)
    elif _exchange(tmp, folder):  # tmp now holds the old folder
        fault(f"{name}-swap")
        fsync(folder.parent)
        shutil.rmtree(tmp)
    else:
        old = sibling(folder, OLD)
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
        fault(f"{name}-swap")
        os.replace(tmp, folder)
        fsync(folder.parent)
        shutil.rmtree(old)
    fsync(folder.parent)
    return folder


def recover(folder: Path, valid: Callable[[Path], bool]) -> None:
    """After a crashed write or swap: keep ``folder`` when it is valid, else the valid one of its
    leftovers (``.tmp`` first: the newer when a swap without exchange was cut short); remove the rest.
    Leftovers are validated, never trusted; with none, nothing is read."""
    leftovers = [p for p in (sibling(folder, TMP), sibling(folder, OLD)) if p.exists()]
    if not leftovers:
        return
    if not (folder.exists() and valid(folder)):
        for leftover in leftovers:
            if valid(leftover):
                shutil.rmtree(folder, ignore_errors=True)
                os.replace(leftover, folder)
                break
    for leftover in leftovers:
        shutil.rmtree(leftover, ignore_errors=True)
    fsync(folder.parent)


def write_text(path: Path, text: str) -> None:
    """Replace a file's text atomically: written beside it, fsynced, renamed."""
    tmp = sibling(path, TMP)
    tmp.write_text(text)
    fsync(tmp)
    os.replace(tmp, path)
    fsync(path.parent)
