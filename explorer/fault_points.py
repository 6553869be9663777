"""Named points in the stages' writes where the fault-injection tests (tests/faults/) crash or pause a
stage: a test-only hook, so a test kills a stage at an exact step instead of guessing with a sleep.

Each write calls `checkpoint("<stage>:<step>")` at the steps worth crashing at (docs/reliability.md lists
them). Nothing happens unless one of these environment variables names the point:

- `EXPLORER_FAULT_KILL=<point>[#n]`: the process kills itself with SIGKILL (no cleanup, no `finally`,
  as a power cut or the OOM killer would) the n-th time it reaches the point (default: the first).
- `EXPLORER_FAULT_PAUSE=<point>` with `EXPLORER_FAULT_DIR=<folder>`: at the point, the process creates
  `<folder>/<point>.reached` and waits until `<folder>/<point>.go` exists, so a test can read the run
  while the write stands still there.

Unset, as always outside the tests, a checkpoint costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

KILL_VAR = "EXPLORER_FAULT_KILL"
PAUSE_VAR = "EXPLORER_FAULT_PAUSE"
DIR_VAR = "EXPLORER_FAULT_DIR"
PAUSE_LIMIT_S = 300.0
"""A paused process goes on after this long, in case its test died."""

_reached: dict[str, int] = {}


def checkpoint(point: str) -> None:
    """Crash or pause here when the environment names `point` (see the module's docstring)."""
    kill = os.environ.get(KILL_VAR)
    if kill:
        name, _, nth = kill.partition("#")
        if name == point:
            _reached[point] = _reached.get(point, 0) + 1
            if _reached[point] >= int(nth or 1):
                sys.stdout.flush()
                sys.stderr.flush()
                os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get(PAUSE_VAR) == point and os.environ.get(DIR_VAR):
        folder = Path(os.environ[DIR_VAR])
        (folder / f"{point}.reached").touch()
        go, deadline = folder / f"{point}.go", time.monotonic() + PAUSE_LIMIT_S
        while not go.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
