"""The empty state's "Build the demo now" button and the subprocess runner behind it
(explorer.build_runner). The real demo build takes minutes, so the page tests swap in a quick real
command: `python -m precompute corpus`, which makes a run folder the app can show."""

import importlib
import sys
from pathlib import Path

from streamlit.testing.v1 import AppTest

from explorer import build_runner
from explorer.build_runner import COMMAND_NOT_FOUND, CommandStream, demo_build_command, stream_command

REPO = Path(__file__).resolve().parents[2]


def run_to_end(generator):
    """The lines a `stream_command` generator yields and the exit code it returns."""
    lines = []
    while True:
        try:
            lines.append(next(generator))
        except StopIteration as stop:
            return lines, stop.value


def test_stream_command_yields_lines_as_they_come_and_returns_the_exit_code():
    script = (
        "import sys, time\n"
        "print('first', flush=True)\n"
        "sys.stderr.write('to stderr\\n'); sys.stderr.flush()\n"
        "sys.stdout.write('10%\\r50%\\r100%\\n'); sys.stdout.flush()\n"  # a progress bar's carriage returns
        "print('naïve ☃')\n"
        "sys.exit(3)\n"
    )
    generator = stream_command([sys.executable, "-c", script])
    assert next(generator) == "first"  # before the command has finished
    lines, code = run_to_end(generator)
    assert lines == ["to stderr", "10%", "50%", "100%", "naïve ☃"]
    assert code == 3


def test_stream_command_success_and_a_command_that_cannot_start(tmp_path):
    assert run_to_end(stream_command([sys.executable, "-c", "print('ok')"], cwd=tmp_path)) == (["ok"], 0)
    lines, code = run_to_end(stream_command([str(tmp_path / "no-such-program")]))
    assert code == COMMAND_NOT_FOUND and "could not start" in lines[0]


def test_closing_the_stream_early_stops_the_command(tmp_path):
    marker = tmp_path / "finished"
    script = f"import time\nprint('started', flush=True)\ntime.sleep(30)\nopen({str(marker)!r}, 'w').close()\n"
    stream = CommandStream([sys.executable, "-c", script])
    for line in stream:
        assert line == "started"
        break
    stream.close()  # returns once the process is gone (it is terminated, not left to run)
    assert not marker.exists() and stream.returncode is None


def test_command_stream_keeps_the_exit_code_and_the_tail():
    stream = CommandStream([sys.executable, "-c", "for i in range(100): print(i)"], tail_lines=5)
    assert len(list(stream)) == 100
    assert stream.returncode == 0 and list(stream.tail) == ["95", "96", "97", "98", "99"]


def test_demo_build_command_builds_the_demo_profile_into_the_runs_folder(tmp_path):
    command = demo_build_command(tmp_path)
    assert command[0] == sys.executable
    assert command[1:] == ["-m", "precompute", "build", "--profile", "demo", "--out", str(tmp_path / "demo")]


def home(runs_root: Path, monkeypatch) -> AppTest:
    monkeypatch.setenv("EXPLORER_RUNS_DIR", str(runs_root))
    import explorer.artifacts

    importlib.reload(explorer.artifacts)  # the pickers read DEFAULT_RUNS_DIR when they run
    return AppTest.from_file(str(REPO / "app.py"), default_timeout=120)


def test_the_empty_state_explains_and_offers_the_build_button(tmp_path, monkeypatch):
    at = home(tmp_path, monkeypatch)
    at.run()
    assert not at.exception
    assert "make demo" in at.info[0].value and "python -m precompute build" in at.info[0].value
    button = at.button(key="build_demo")
    assert button.label == "Build the demo now" and not button.value


def test_the_build_button_streams_the_build_and_opens_the_built_run(tmp_path, monkeypatch):
    quick = lambda runs_dir: [sys.executable, "-m", "precompute", "corpus", "--n-traces", "20",  # noqa: E731
                              "--out", str(Path(runs_dir) / "demo")]
    monkeypatch.setattr(build_runner, "demo_build_command", quick)
    at = home(tmp_path, monkeypatch)
    at.run()
    at.button(key="build_demo").click().run()
    assert not at.exception
    assert (tmp_path / "demo" / "profile.json").is_file()
    # st.rerun() after the build: the page now shows the run it built.
    assert at.sidebar.selectbox(key="run_picker").value == "demo"
    assert "**Traces:** 20" in " ".join(m.value for m in at.markdown)
    assert not build_runner.BUILD_LOCK.locked()


def test_a_failed_build_shows_the_tail_of_its_output_not_a_traceback(tmp_path, monkeypatch):
    failing = lambda runs_dir: [sys.executable, "-c",  # noqa: E731
                                "import sys\nprint('step 1 ok')\nprint('disk full: cannot write', file=sys.stderr)\nsys.exit(2)"]
    monkeypatch.setattr(build_runner, "demo_build_command", failing)
    at = home(tmp_path, monkeypatch)
    at.run()
    at.button(key="build_demo").click().run()
    assert not at.exception
    message = at.error[0].value
    assert "exit code 2" in message and "disk full: cannot write" in message and "step 1 ok" in message
    assert at.button(key="build_demo")  # still offered: the user can try again
    assert not build_runner.BUILD_LOCK.locked()


def test_a_second_build_while_one_runs_is_refused(tmp_path, monkeypatch):
    at = home(tmp_path, monkeypatch)
    at.run()
    with build_runner.BUILD_LOCK:  # another session is building
        at.button(key="build_demo").click().run()
    assert not at.exception
    assert "already running" in at.warning[0].value
