"""No run folder yet: how to build one, and a button that builds the demo here with its output shown."""

from __future__ import annotations

import time
from pathlib import Path

import streamlit as st

from explorer import artifacts, build_runner

BUILD_DEMO_KEY = "build_demo"
"""Key of the empty state's "Build the demo now" button."""
BUILD_LOG_LINES = 25
"""Output lines the build's progress box shows (the last ones)."""
REPO = Path(__file__).resolve().parents[2]
"""Where the build runs (`python -m precompute` imports the repository's packages)."""


def render_empty_state() -> None:
    """How to build a run, and the button that builds the demo (the page reruns once it is built)."""
    runs_dir = Path(artifacts.DEFAULT_RUNS_DIR)
    st.info(
        f"No run folder was found under `{runs_dir}/`. Build the embedded demo (a few minutes on 2 CPU cores; the README says how long) "
        "and start the app with\n\n"
        "```\nmake demo\n```\n\n(`make demo-data` builds it without starting the app), or a run of your own with\n\n"
        "```\npython -m precompute build --profile demo --dataset my_traces.json\n```\n\n"
        "then reload this page. Or build the demo from here:"
    )
    if st.button("Build the demo now", key=BUILD_DEMO_KEY, type="primary",
                 help=f"runs `python -m precompute build --profile demo --out {runs_dir / 'demo'}`"):
        if build_demo(runs_dir):
            st.rerun()


def build_demo(runs_dir: Path) -> bool:
    """Run the demo build, its output streamed into a status box; True when it succeeded. A failure
    shows the tail of the output as an error (never a traceback)."""
    if not build_runner.BUILD_LOCK.acquire(blocking=False):
        st.warning("A build is already running (started from another browser tab); reload this page when it is done.")
        return False
    command = build_runner.demo_build_command(runs_dir.resolve())
    stream = build_runner.CommandStream(command, cwd=REPO, tail_lines=BUILD_LOG_LINES)
    try:
        with st.status("Building the demo (a few minutes)…", expanded=True) as status:
            st.caption(f"`python {' '.join(command[1:])}`")
            log = st.empty()
            last_shown = 0.0
            for line in stream:
                now = time.monotonic()
                if now - last_shown > 0.25:  # a code block per line would flood the browser with deltas
                    log.code("\n".join(stream.tail), language=None)
                    last_shown = now
            log.code("\n".join(stream.tail), language=None)
            ok = stream.returncode == 0
            status.update(label="The demo is built." if ok else f"The build failed (exit code {stream.returncode}).",
                          state="complete" if ok else "error", expanded=not ok)
    finally:  # a rerun or a page change stops the script mid-build: stop the build with it
        stream.close()
        build_runner.BUILD_LOCK.release()
    if not ok:
        tail = "\n".join(stream.tail) or "(no output)"
        st.error(f"The demo build failed (exit code {stream.returncode}). The last lines of its output:\n\n"
                 f"```\n{tail}\n```\n\nRun `make demo-data` in a terminal to see it all.")
    return ok
