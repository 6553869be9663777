"""A damaged run database, in every way tests/faults/damage.py breaks one: every page of the app says so
once, naming the file, what is wrong and what to do, and never shows a traceback or calls the damage
"no index yet"; the library's reads raise the project's DatabaseError; and browsing changes no file."""

from __future__ import annotations

import os
import re
import shlex

import pytest

from explorer.database import DatabaseError, read_sae_training_reports, read_schema_info
from explorer.runs import database_path
from explorer.schema import SCHEMA_VERSION
from explorer.feature_db import read_candidates, read_feature_card, read_index_runs
from explorer.steering_store import read_steering_runs
from precompute.cli import main as cli_main
from tests.faults.conftest import PAGES, app_page, messages
from tests.faults.damage import DAMAGES, can_read_without_permission
from tests.faults.fault_runs import RUN, STEERED_FEATURE, folder_hashes

MISLEADING = ("No feature index yet", "no database yet", "No stored steering result", "has no SAE yet")
"""What a page says about a run that lacks something: never about one whose database is damaged."""


def damaged_copy(run_copy, damage):
    if damage.name == "no-read-permission" and can_read_without_permission():
        pytest.skip("running as root, which reads a file whatever its mode: chmod cannot make it unreadable "
                    "here (the symlink-loop case covers a file that cannot be read)")
    db = database_path(run_copy)
    damage.apply(db)
    return db


WHOLE_FILE_DAMAGES = [d for d in DAMAGES if d.name != "overwritten-block"]
"""What opening the file finds; an overwritten block is found by the first read of it (below)."""


@pytest.mark.parametrize("damage", WHOLE_FILE_DAMAGES, ids=lambda d: d.name)
def test_every_page_says_once_what_is_wrong_and_changes_no_file(damage, run_copy, sae_id, monkeypatch):
    db = damaged_copy(run_copy, damage)
    before = folder_hashes(run_copy)
    for name in PAGES:
        at = app_page(name, run_copy.parent, monkeypatch, run=RUN, sae=sae_id, feature=STEERED_FEATURE)
        at.run()
        assert not at.exception, (name, at.exception)
        shown = messages(at)
        about_db = [m for m in shown if str(db) in m]
        assert len(about_db) == 1, (name, shown)
        message = about_db[0]
        assert about_db[0] in [e.value for e in at.error], (name, shown)
        assert damage.problem in message, (name, message)
        assert "python -m precompute" in message or "chmod" in message or "git" in message, (name, message)
        assert not any(words in m for m in shown for words in MISLEADING), (name, shown)
    assert folder_hashes(run_copy) == before


@pytest.mark.parametrize("damage", WHOLE_FILE_DAMAGES, ids=lambda d: d.name)
def test_every_read_raises_the_projects_error(damage, run_copy, sae_id):
    db = damaged_copy(run_copy, damage)
    reads = [
        lambda: read_index_runs(db),
        lambda: read_feature_card(db, sae_id, STEERED_FEATURE),
        lambda: read_candidates(db, sae_id),
        lambda: read_sae_training_reports(db),
        lambda: read_steering_runs(db, sae_id, STEERED_FEATURE),
    ]
    for read in reads:
        with pytest.raises(DatabaseError) as raised:
            read()
        assert str(db) in str(raised.value) and damage.problem in str(raised.value)


def test_a_block_lost_inside_the_file_is_said_by_the_read_that_meets_it_then_by_every_page(
    run_copy, sae_id, monkeypatch
):
    """An overwritten block passes the open's checks; the card's read of it fails with the project's
    error, and from then on every page of the server says it at the top, once."""
    damage = next(d for d in DAMAGES if d.name == "overwritten-block")
    db = damaged_copy(run_copy, damage)
    with pytest.raises(DatabaseError, match="is damaged"):
        read_feature_card(db, sae_id, STEERED_FEATURE)
    before = folder_hashes(run_copy)
    for name in ["features", *(p for p in PAGES if p != "features")]:
        at = app_page(name, run_copy.parent, monkeypatch, run=RUN, sae=sae_id, feature=STEERED_FEATURE)
        at.run()
        assert not at.exception, (name, at.exception)
        about_db = [m for m in messages(at) if str(db) in m]
        assert len(about_db) == 1 and "damaged" in about_db[0], (name, messages(at))
    assert folder_hashes(run_copy) == before


def commands_in(message: str) -> list[list[str]]:
    """The commands a message tells a person to run on the run, in order, as argument lists: each in
    backticks, a `mv` or a `python -m precompute` with an `--out` (a bare command name is a mention)."""
    quoted = re.findall(r"`([^`]+)`", message)
    return [shlex.split(c) for c in quoted if c.startswith("mv ") or (c.startswith("python -m precompute") and "--out" in c)]


@pytest.mark.parametrize("damage", ["cut-in-middle", "folder", "older-schema", "newer-schema"])
def test_the_commands_the_message_gives_repair_the_run(damage, run_copy, sae_id, capsys):
    """A person who runs what the message says gets a run that reads again (stored steering results
    aside, which the message says must be generated again)."""
    db = damaged_copy(run_copy, next(d for d in DAMAGES if d.name == damage))
    with pytest.raises(DatabaseError) as raised:
        read_index_runs(db)
    commands = commands_in(str(raised.value))
    assert commands and commands[-1][:3] == ["python", "-m", "precompute"], str(raised.value)
    for command in commands:
        if command[0] == "mv":
            os.rename(command[1], command[2])
        else:
            assert cli_main(command[3:]) == 0, capsys.readouterr().err
    assert list(read_index_runs(db)["sae_id"]) == [sae_id]
    assert [r.sae_id for r in read_sae_training_reports(db)] == [sae_id]
    assert read_schema_info(db).schema_version == SCHEMA_VERSION
