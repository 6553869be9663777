"""Run a stage of the real command line (`precompute.cli.main`) in a child process that a test may crash:
killed at a named checkpoint (explorer.fault_points), paused at one, or given a file-size limit.

A fresh `python -m precompute` spends about 7 s importing torch, transformers and sae_lens; these
children are forked from a server process that imported them once (multiprocessing's forkserver, which
imports and never computes, so forking it is safe), and start in well under a second."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import types
from pathlib import Path
from typing import NamedTuple

from explorer.fault_points import DIR_VAR, KILL_VAR, PAUSE_VAR

PRELOAD = ["precompute.cli", "precompute.index_stage", "precompute.train_sae_stage", "precompute.steer_cli",
           "precompute.corpus_stage", "explorer.sae_training", "sae_lens", "transformer_lens"]
_CONTEXT: list[multiprocessing.context.BaseContext] = []


def _context():
    if not _CONTEXT:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        _CONTEXT.append(context)
    return _CONTEXT[0]


def _child(argv: list[str], env: dict[str, str], file_size_limit: int | None, log: str) -> None:
    """The child: output into `log`, the fault settings into its environment, then the command line."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    for name in (KILL_VAR, PAUSE_VAR, DIR_VAR):
        os.environ.pop(name, None)
    os.environ.update(env)
    os.environ["OMP_NUM_THREADS"] = "1"
    if file_size_limit is not None:  # what `ulimit -f` sets: a write past it fails with EFBIG
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))
    from precompute.cli import main

    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class StageRun(NamedTuple):
    exitcode: int
    output: str

    @property
    def killed(self) -> bool:
        return self.exitcode == -signal.SIGKILL


def start_stage(argv: list[str], log: Path, *, kill_at: str | None = None, pause_at: str | None = None,
                pause_dir: Path | None = None, file_size_limit: int | None = None):
    """Start `python -m precompute <argv>` in a child; returns the process (join it, or use `run_stage`)."""
    env = {}
    if kill_at:
        env[KILL_VAR] = kill_at
    if pause_at:
        env.update({PAUSE_VAR: pause_at, DIR_VAR: str(pause_dir)})
    process = _context().Process(target=_child, args=(list(argv), env, file_size_limit, str(log)))
    # A child re-runs the parent's __main__ first; under AppTest that is the last page script run.
    main, sys.modules["__main__"] = sys.modules["__main__"], types.ModuleType("__main__")
    try:
        process.start()
    finally:
        sys.modules["__main__"] = main
    return process


def run_stage(argv: list[str], log: Path, *, timeout: float = 300, **faults) -> StageRun:
    """Run `python -m precompute <argv>` in a child to its end (or its crash); its exit code and output."""
    process = start_stage(argv, log, **faults)
    process.join(timeout)
    if process.exitcode is None:
        process.kill()
        process.join()
        raise TimeoutError(f"{argv} ran past {timeout} s; its output:\n{Path(log).read_text()}")
    return StageRun(process.exitcode, Path(log).read_text())
