"""The one base class of the project's errors.

`ExplorerError` marks an error whose message is meant for a person: it says what went wrong and what
to do, so the command line prints it without a traceback (`error: ...`, exit code 2) and the app shows
it as a message. Each module defines its own errors on it (`explorer.runs.RunFolderError`,
`explorer.database.DatabaseError`, ...), keeping the built-in class they also were (`ValueError`,
`RuntimeError`, `LookupError`), so existing `except ValueError` still catch them.

This module imports nothing from the project, so every module can import it.
"""

from __future__ import annotations


class ExplorerError(Exception):
    """An error with an actionable message, shown to the user without a traceback."""
