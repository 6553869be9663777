"""Atomic outputs: a stage writes into a temporary sibling, then swaps it into place.

A crash, a Ctrl-C, a SIGKILL or an exception leaves the previous output (or nothing) and never a
half-written artifact that a later stage would trust. `os.replace` of a file is atomic on one
filesystem; a folder is swapped with its replacement in one step (Linux's `renameat2(RENAME_EXCHANGE)`),
so a reader never finds the folder missing. Where the system cannot exchange two paths, the old folder
is renamed aside first, and a write killed between the two renames is undone by the next write of the
same output, which puts the old folder back before it starts. The temporaries live next to the target
and carry the writer's process id, so the next write removes what a killed writer left.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from explorer.fault_points import checkpoint


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces `target`, on failure it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _recover(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    checkpoint("atomic-dir:written")
    if target.exists() and exchange(tmp, target):
        checkpoint("atomic-dir:swapped")  # the old output now sits at `tmp`
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.rename(target, old)
        checkpoint("atomic-dir:old-aside")
    os.rename(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(target: Path, mode: str = "w") -> Iterator[Path]:
    """Yield a temporary path next to `target`; on success it replaces `target` atomically."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _recover(target)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    checkpoint("atomic-file:written")
    os.replace(tmp, target)


def write_text_atomic(target: Path, text: str) -> None:
    with atomic_file(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


_LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if os.name == "posix" else None
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step; False where the system or filesystem cannot (then nothing moved)."""
    renameat2 = getattr(_LIBC, "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _recover(target: Path) -> None:
    """Undo what a killed writer of `target` left: its old output put back if the new one never arrived,
    its temporaries removed (only those of processes that are gone)."""
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(tmp|old)-(\d+)(-|$)")
    for leftover in sorted(target.parent.iterdir()):
        match = pattern.match(leftover.name)
        if match is None or _alive(int(match.group(2))):
            continue
        if match.group(1) == "old" and not os.path.lexists(target):
            os.rename(leftover, target)
        elif leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
