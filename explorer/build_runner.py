"""Run a command (the demo build) as a subprocess and stream its output, line by line.

No Streamlit here: the empty state (`explorer.app.empty_state.render_empty_state`) shows the lines as
they come. `stream_command` is a generator that yields each output line (stdout and stderr merged,
progress bars' carriage returns count as line ends) and *returns* the exit code, which
`for`-loops drop; `CommandStream` keeps it:

    stream = CommandStream(demo_build_command(Path("runs")))
    for line in stream:
        print(line)
    stream.returncode  # 0 on success

A process-wide lock (`BUILD_LOCK`) lets the app refuse a second build while one runs in another
session.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path

BUILD_LOCK = threading.Lock()
"""Held while the app runs a build: two sessions must not build into the same folder at once."""

DEMO_RUN_NAME = "demo"
COMMAND_NOT_FOUND = 127


def demo_build_command(runs_dir: Path) -> list[str]:
    """`python -m precompute build --profile demo --out <runs_dir>/demo`, with this interpreter."""
    return [sys.executable, "-m", "precompute", "build", "--profile", "demo", "--out", str(Path(runs_dir) / DEMO_RUN_NAME)]


def stream_command(argv: Sequence[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> Generator[str, None, int]:
    """Run `argv`; yield its output lines (without line ends) as they come; return its exit code.

    A command that cannot start yields one line saying why and returns 127. Closing the generator
    early (the page was left mid-build) terminates the process rather than orphaning it.
    """
    environment = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    try:
        process = subprocess.Popen(
            list(argv), cwd=cwd, env=environment, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace", bufsize=1,
        )
    except OSError as err:
        yield f"could not start {argv[0]!r}: {err}"
        return COMMAND_NOT_FOUND
    try:
        assert process.stdout is not None
        for line in process.stdout:  # text mode: "\n", "\r\n" and "\r" all end a line
            yield line.rstrip("\r\n")
        return process.wait()
    finally:
        stop_process(process, timeout_s=10)
        if process.stdout is not None:
            process.stdout.close()


def stop_process(process: subprocess.Popen, *, timeout_s: float) -> None:
    """Terminate `process` if it still runs; kill it if it has not exited `timeout_s` seconds later."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class CommandStream:
    """Iterate over a command's output lines; afterwards `returncode` holds its exit code and `tail`
    its last lines."""

    def __init__(self, argv: Sequence[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
                 tail_lines: int = 40):
        self._generator = stream_command(argv, cwd=cwd, env=env)
        self.returncode: int | None = None
        self.tail: deque[str] = deque(maxlen=tail_lines)

    def __iter__(self) -> Iterator[str]:
        while True:
            try:
                line = next(self._generator)
            except StopIteration as stop:
                self.returncode = stop.value
                return
            self.tail.append(line)
            yield line

    def close(self) -> None:
        """Stop the command if it still runs."""
        self._generator.close()
