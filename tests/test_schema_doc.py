"""docs/schema.md lists every table of the run's database with its columns and types, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb

from explorer import schema

DOC = Path(__file__).resolve().parents[1] / "docs" / "schema.md"


def documented_tables() -> dict[str, list[tuple[str, str]]]:
    tables: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in DOC.read_text().splitlines():
        heading = re.match(r"^### (\w+)\s*$", line)
        if heading:
            current = heading.group(1)
            tables[current] = []
            continue
        if line.startswith("## "):
            current = None
        row = re.match(r"^\| (\w+) \| ([A-Z\[\]]+) \|", line)
        if current and row:
            tables[current].append((row.group(1), row.group(2)))
    return tables


def actual_tables() -> dict[str, list[tuple[str, str]]]:
    con = duckdb.connect()
    for statement in schema.ALL_TABLES:
        con.execute(statement)
    names = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables ORDER BY table_name").fetchall()]
    return {name: [(c[0], c[1]) for c in con.execute(f"DESCRIBE {name}").fetchall()] for name in names}


def test_schema_doc_matches_the_database():
    documented, actual = documented_tables(), actual_tables()
    assert sorted(documented) == sorted(actual)
    for table, columns in actual.items():
        assert documented[table] == columns, table


def test_schema_doc_states_the_current_version():
    assert f"Schema version {schema.SCHEMA_VERSION}." in DOC.read_text()
