"""Ways to break a run's DuckDB file, each as a damaged disk, a bad copy or an old checkout would.

Each function takes the file's path and breaks it in place; `DAMAGES` names them for parametrize, with
the words the app's message must use for it (explorer.errors.DatabaseError's problem)."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Callable, NamedTuple

import duckdb

from explorer.schema import SCHEMA_VERSION

HEADER_BYTES = 3 * 4096
"""DuckDB's file header and its two database headers; the 256 KiB blocks follow."""
BLOCK_BYTES = 262_144


def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(size)


def cut_in_header(path: Path) -> None:
    _truncate(path, 100)


def cut_in_middle(path: Path) -> None:
    _truncate(path, path.stat().st_size // 2)


def cut_in_last_block(path: Path) -> None:
    """Half of the last block gone: the blocks before it are whole (a copy that ran out of space)."""
    _truncate(path, path.stat().st_size - BLOCK_BYTES // 2)


def random_bytes(path: Path) -> None:
    """The whole file replaced by random bytes of the same size."""
    rng = random.Random(0)
    path.write_bytes(rng.randbytes(path.stat().st_size))


def overwritten_block(path: Path) -> None:
    """One block in the middle overwritten: the header reads, a table does not (a checksum error)."""
    used = _used_data_offsets(path)
    rng = random.Random(1)
    with open(path, "r+b") as handle:
        for offset in used:
            handle.seek(offset + 64)
            handle.write(rng.randbytes(4096))


def _used_data_offsets(path: Path) -> list[int]:
    """Where the first blocks of the feature index's largest table lie."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        blocks = con.execute(
            "SELECT DISTINCT block_id FROM pragma_storage_info('feature_top_examples') WHERE block_id >= 0 "
            "ORDER BY block_id LIMIT 4"
        ).fetchall()
    finally:
        con.close()
    return [HEADER_BYTES + b[0] * BLOCK_BYTES for b in blocks]


def zero_length(path: Path) -> None:
    path.write_bytes(b"")


def folder_in_its_place(path: Path) -> None:
    path.unlink()
    path.mkdir()
    (path / "explorer.duckdb").write_bytes(b"")


def symlink_loop(path: Path) -> None:
    """A link that points at itself: every open fails (ELOOP), even as root."""
    path.unlink()
    os.symlink(path.name, path)


def no_read_permission(path: Path) -> None:
    path.chmod(0)


def _set_version(path: Path, version: int, *statements: str) -> None:
    con = duckdb.connect(str(path))
    try:
        for statement in statements:
            con.execute(statement)
        con.execute("UPDATE schema_info SET schema_version = ?", [version])
        con.execute("CHECKPOINT")
    finally:
        con.close()


def older_schema(path: Path) -> None:
    """What a version-2 writer left: no n_sparsity_tokens column."""
    _set_version(path, 2, "ALTER TABLE sae_training_report DROP COLUMN n_sparsity_tokens")


def oldest_schema(path: Path) -> None:
    """Version 1: the SAE reports only, from before the feature index (no migration reaches it)."""
    _set_version(path, 1)


def newer_schema(path: Path) -> None:
    """A file a newer checkout wrote."""
    _set_version(path, SCHEMA_VERSION + 1)


class Damage(NamedTuple):
    name: str
    apply: Callable[[Path], None]
    problem: str
    """The words the message must say about it."""


DAMAGES = (
    Damage("cut-in-header", cut_in_header, "damaged"),
    Damage("cut-in-middle", cut_in_middle, "damaged"),
    Damage("cut-in-last-block", cut_in_last_block, "damaged"),
    Damage("random-bytes", random_bytes, "damaged"),
    Damage("overwritten-block", overwritten_block, "damaged"),
    Damage("zero-length", zero_length, "damaged"),
    Damage("folder", folder_in_its_place, "a folder"),
    Damage("symlink-loop", symlink_loop, "cannot be read"),
    Damage("no-read-permission", no_read_permission, "cannot be read"),
    Damage("older-schema", older_schema, "schema version 2"),
    Damage("oldest-schema", oldest_schema, "schema version 1"),
    Damage("newer-schema", newer_schema, f"schema version {SCHEMA_VERSION + 1}"),
)


def can_read_without_permission() -> bool:
    """Whether this process reads files whose mode forbids it (root does: chmod does not stop it)."""
    return os.geteuid() == 0 if hasattr(os, "geteuid") else False
