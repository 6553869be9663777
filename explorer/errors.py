"""The one base class of the project's errors, and the errors every layer shares.

`ExplorerError` marks an error whose message is meant for a person: it says what went wrong and what
to do, so the command line prints it without a traceback (`error: ...`, exit code 2) and the app shows
it as a message. Each module defines its own errors on it (`explorer.runs.RunFolderError`, ...),
keeping the built-in class they also were (`ValueError`, `RuntimeError`, `LookupError`), so existing
`except ValueError` still catch them. `DatabaseError` is the one error a read of a run's DuckDB file
raises (explorer.database turns every DuckDB and OS error of a read into it). `is_out_of_space` tells a
write that failed for want of space (a full disk, a quota, a file-size limit) from other failures.

This module imports nothing from the project, so every module can import it.
"""

from __future__ import annotations

import errno
from pathlib import Path


class ExplorerError(Exception):
    """An error with an actionable message, shown to the user without a traceback."""


class DatabaseError(ExplorerError, RuntimeError):
    """A run's DuckDB file that cannot be used: missing, damaged, unreadable or of another schema version.

    The message says which file, what is wrong with it and what to do; `path` and `problem` (one of
    `PROBLEMS`) say the same to code.
    """

    MISSING = "missing"
    DAMAGED = "damaged"
    UNREADABLE = "unreadable"
    NOT_A_FILE = "not a file"
    SCHEMA = "schema version"
    OUT_OF_SPACE = "out of space"
    PROBLEMS = (MISSING, DAMAGED, UNREADABLE, NOT_A_FILE, SCHEMA, OUT_OF_SPACE)

    def __init__(self, message: str, *, path: Path | str | None = None, problem: str = DAMAGED):
        super().__init__(message)
        self.path = None if path is None else Path(path)
        self.problem = problem

    def __reduce__(self):  # keyword arguments survive pickling (a cached or cross-process error)
        return (_rebuild_database_error, (str(self), self.path, self.problem))


def _rebuild_database_error(message: str, path: Path | None, problem: str) -> DatabaseError:
    return DatabaseError(message, path=path, problem=problem)


_OUT_OF_SPACE_ERRNOS = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}
_OUT_OF_SPACE_WORDS = ("no space left on device", "file too large", "disk quota exceeded")
"""How DuckDB, PyTorch and Arrow word those errnos in the errors they raise instead of an OSError."""


def is_out_of_space(err: BaseException) -> bool:
    """Whether `err` (or an error it was raised from) is a write that ran out of space: a full disk
    (ENOSPC), a quota (EDQUOT) or a file-size limit such as `ulimit -f` (EFBIG)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _OUT_OF_SPACE_ERRNOS:
            return True
        if any(words in str(err).lower() for words in _OUT_OF_SPACE_WORDS):
            return True
        err = err.__cause__ or err.__context__
    return False


def out_of_space_message(err: BaseException, what: str) -> str:
    """What to tell a person whose write of `what` ran out of space."""
    return (
        f"Ran out of space while writing {what} ({type(err).__name__}: {str(err)[:200]}): the disk is full, a quota "
        "is reached, or a file-size limit (`ulimit -f`) is set. Nothing half-written was kept; the previous output "
        "is as it was. Free some space (or lift the limit) and run the command again."
    )


