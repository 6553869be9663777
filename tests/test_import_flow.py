"""Imports flow one way: data -> model -> SAE -> index -> store -> views -> app and CLI.

Checked from the source's own imports (Python's `ast`, nothing is imported), over every project module:
`explorer/` (the library, with the app's package `explorer/app/`), `precompute/` (the command line),
`app_pages/` and `app.py` (the Streamlit pages and entry point). Tests and benchmarks are not project
modules here. The rules, one function each:

1. no import cycles between project modules (every import counts, at the top or inside a function);
2. the library never imports the command line (`precompute`), the pages (`app_pages`) or `app`;
3. only `APP_MODULES` import Streamlit;
4. only `STORE_MODULES` import duckdb or run SQL (`.execute`, `.executemany`, `.sql`, or a string that
   starts with a SQL statement); `SCHEMA_MODULE` holds every CREATE TABLE;
5. `explorer/errors.py` imports nothing from the project, and every project error derives from its
   `ExplorerError`;
6. project imports sit at the top of a module (under `if TYPE_CHECKING:` counts), except the heavy
   optional ones named in `LAZY_IMPORTS`;
7. no module imports or reads another module's private names (`_name`).

`check(root)` returns one line per violation; the last test plants each kind in a scratch tree
(`PLANTED`) and shows that it is reported.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Iterator, NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT_ROOTS = ("explorer", "precompute", "app_pages", "app.py")
"""Where the project's modules are, relative to the repository root."""
LIBRARY = "explorer"
NOT_FOR_THE_LIBRARY = ("precompute", "app_pages", "app")
"""Top-level modules the library must not import: the command line, the pages, the entry point."""
APP_MODULES = ("app", "app_pages", "explorer.app")
"""The only modules (and packages: every module below them) that import Streamlit."""
STORE_MODULES = ("explorer.database", "explorer.feature_db", "explorer.steering_store", "explorer.injection_store")
"""The only modules that import duckdb or run SQL."""
SCHEMA_MODULE = "explorer.schema"
"""Every table's DDL: SQL text, run by the store modules."""
ERRORS_MODULE = "explorer.errors"
ERROR_BASE = "ExplorerError"
LAZY_IMPORTS = {
    "explorer.demo_lm": "transformers and tokenizers take seconds to import; only stage train-lm needs them",
}
"""Project modules that may be imported inside a function, and why (heavy and optional)."""
SQL_START = re.compile(r"^\s*(SELECT |INSERT INTO |UPDATE \w+ SET |DELETE FROM |(CREATE|ALTER|DROP) TABLE |WITH \w+ AS )")
SQL_METHODS = ("execute", "executemany", "sql")


class Module(NamedTuple):
    name: str
    path: Path
    tree: ast.Module


class Import(NamedTuple):
    target: str
    """The project module imported (a submodule when `from package import submodule`)."""
    names: tuple[str, ...]
    """The names taken from it (`from target import names`); empty for `import target`."""
    line: int
    at_top: bool
    """At module level (also inside a module-level `if` or `try`), not inside a function or class."""


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def project_modules(root: Path) -> dict[str, Module]:
    paths: list[Path] = []
    for entry in PROJECT_ROOTS:
        where = root / entry
        paths += [where] if where.is_file() else sorted(where.rglob("*.py")) if where.is_dir() else []
    return {
        module_name(p, root): Module(module_name(p, root), p, ast.parse(p.read_text(encoding="utf-8"), str(p)))
        for p in paths
        if "__pycache__" not in p.parts
    }


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _top_level_nodes(tree: ast.Module) -> set[int]:
    """ids of the nodes that run when the module is imported (not inside a function or class body)."""
    top: set[int] = set()
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        top.add(id(node))
        if isinstance(node, (ast.If, ast.Try, ast.With)):
            todo += [*node.body, *getattr(node, "orelse", []), *getattr(node, "finalbody", [])]
            todo += [stmt for handler in getattr(node, "handlers", []) for stmt in handler.body]
    return top


def _absolute(node: ast.ImportFrom, module: Module) -> str:
    if not node.level:
        return node.module or ""
    package = module.name.split(".")
    package = package if module.path.name == "__init__.py" else package[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(module: Module, modules: dict[str, Module]) -> Iterator[Import]:
    """Every import of a project module (or of a name from one) in `module`, wherever it is."""
    top = _top_level_nodes(module.tree)
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    yield Import(alias.name, (), node.lineno, id(node) in top)
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(node, module)
            plain = [a.name for a in node.names if f"{source}.{a.name}" not in modules]
            for alias in node.names:
                if f"{source}.{alias.name}" in modules:
                    yield Import(f"{source}.{alias.name}", (), node.lineno, id(node) in top)
            if plain and source in modules:
                yield Import(source, tuple(plain), node.lineno, id(node) in top)


def third_party_imports(module: Module) -> Iterator[tuple[str, int]]:
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            yield from ((alias.name.split(".")[0], node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            yield node.module.split(".")[0], node.lineno


# --- the rules -----------------------------------------------------------------------------------


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(cycles)


def check_cycles(modules: dict[str, Module]) -> list[str]:
    graph = {m.name: {i.target for i in imports_of(m, modules) if i.target != m.name} for m in modules.values()}
    return ["cycle: " + " -> ".join(cycle) for cycle in find_cycles(graph)]


def check_library_imports(modules: dict[str, Module]) -> list[str]:
    return [
        f"library imports the CLI or the app: {m.name}:{i.line} imports {i.target}"
        for m in modules.values()
        if _within(m.name, (LIBRARY,))
        for i in imports_of(m, modules)
        if _within(i.target, NOT_FOR_THE_LIBRARY)
    ]


def check_streamlit(modules: dict[str, Module]) -> list[str]:
    return [
        f"streamlit outside the app: {m.name}:{line}"
        for m in modules.values()
        if not _within(m.name, APP_MODULES)
        for package, line in third_party_imports(m)
        if package == "streamlit"
    ]


def check_sql(modules: dict[str, Module]) -> list[str]:
    found = []
    for m in modules.values():
        if m.name in STORE_MODULES:
            continue
        found += [
            f"duckdb outside the store: {m.name}:{line}" for package, line in third_party_imports(m) if package == "duckdb"
        ]
        if m.name == SCHEMA_MODULE:
            continue
        for node in ast.walk(m.tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in SQL_METHODS:
                found.append(f"SQL outside the store: {m.name}:{node.lineno} calls .{node.func.attr}()")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL_START.match(node.value):
                found.append(f"SQL outside the store: {m.name}:{node.lineno} holds {node.value.strip()[:30]!r}")
    return found


def check_errors(modules: dict[str, Module]) -> list[str]:
    found = []
    if ERRORS_MODULE in modules:
        found += [
            f"{ERRORS_MODULE} imports the project: line {i.line} imports {i.target}"
            for i in imports_of(modules[ERRORS_MODULE], modules)
        ]
    bases: dict[str, tuple[str, set[str]]] = {}
    for m in modules.values():
        for node in ast.walk(m.tree):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Error") and node.name != ERROR_BASE:
                names = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
                bases[node.name] = (f"{m.name}:{node.lineno}", names)
    derived = {ERROR_BASE}
    while True:
        more = {name for name, (_, names) in bases.items() if names & derived} - derived
        if not more:
            break
        derived |= more
    found += [
        f"error without the base class: {where} {name} does not derive from {ERROR_BASE}"
        for name, (where, _) in sorted(bases.items())
        if name not in derived
    ]
    return found


def check_lazy_imports(modules: dict[str, Module]) -> list[str]:
    return [
        f"project import inside a function: {m.name}:{i.line} imports {i.target}"
        for m in modules.values()
        for i in imports_of(m, modules)
        if not i.at_top and i.target not in LAZY_IMPORTS
    ]


def check_private_names(modules: dict[str, Module]) -> list[str]:
    found = []
    for m in modules.values():
        module_aliases: dict[str, str] = {}
        for i in imports_of(m, modules):
            if i.target == m.name:
                continue
            found += [
                f"private name crosses modules: {m.name}:{i.line} imports {i.target}.{name}"
                for name in i.names
                if name.startswith("_") and not name.startswith("__")
            ]
        for node in ast.walk(m.tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in modules:
                        module_aliases[alias.asname or alias.name.split(".")[0]] = alias.name
            elif isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    if f"{node.module}.{alias.name}" in modules:
                        module_aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        for node in ast.walk(m.tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name)
                and node.value.id in module_aliases
                and module_aliases[node.value.id] != m.name
            ):
                found.append(f"private name crosses modules: {m.name}:{node.lineno} reads {node.value.id}.{node.attr}")
    return found


RULES = (
    check_cycles, check_library_imports, check_streamlit, check_sql, check_errors, check_lazy_imports,
    check_private_names,
)


def check(root: Path) -> list[str]:
    """Every violation of the rules in the project under `root`, one line each."""
    modules = project_modules(root)
    return [finding for rule in RULES for finding in rule(modules)]


# --- the project -----------------------------------------------------------------------------------


def test_the_project_follows_the_import_rules():
    assert check(ROOT) == []


def test_the_named_modules_exist():
    """The constants name real modules: a rename that left them stale would silently allow everything."""
    modules = project_modules(ROOT)
    for name in (*STORE_MODULES, SCHEMA_MODULE, ERRORS_MODULE, *LAZY_IMPORTS, "app"):
        assert name in modules, name
    for package in APP_MODULES:
        assert any(_within(m, (package,)) for m in modules), package
    assert len(modules) > 50


# --- planted violations: each rule reports them --------------------------------------------------


def plant(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


CLEAN = {
    "explorer/__init__.py": "",
    "explorer/errors.py": "class ExplorerError(Exception):\n    pass\n",
    "explorer/runs.py": (
        "from explorer.errors import ExplorerError\n\n\nclass RunFolderError(ExplorerError, ValueError):\n    pass\n"
    ),
    "explorer/database.py": "import duckdb\n\n\ndef read(con):\n    return con.execute('SELECT 1')\n",
    "explorer/app/__init__.py": "",
    "explorer/app/pickers.py": "import streamlit as st\n\nfrom explorer.runs import RunFolderError\n",
    "precompute/__init__.py": "",
    "precompute/cli.py": (
        "from explorer.runs import RunFolderError\n\n\ndef main():\n    from explorer.demo_lm import train\n"
    ),
    "explorer/demo_lm.py": "def train():\n    pass\n",
    "app.py": "import streamlit as st\n\nfrom explorer.app import pickers\n",
}


def test_a_clean_tree_has_no_findings(tmp_path):
    assert check(plant(tmp_path, CLEAN)) == []


PLANTED = {
    "a cycle, closed by an import inside a function": (
        {
            "explorer/a.py": "from explorer.b import g\n\n\ndef f():\n    return g()\n",
            "explorer/b.py": "import explorer.c\n",
            "explorer/c.py": "def h():\n    from explorer import a\n",
        },
        [
            "cycle: explorer.a -> explorer.b -> explorer.c",
            "project import inside a function: explorer.c:2 imports explorer.a",
        ],
    ),
    "the library importing the CLI and the app": (
        {"explorer/uses_cli.py": "from precompute.cli import main\n", "explorer/uses_app.py": "import app\n"},
        [
            "library imports the CLI or the app: explorer.uses_cli:1 imports precompute.cli",
            "library imports the CLI or the app: explorer.uses_app:1 imports app",
        ],
    ),
    "Streamlit outside the app": (
        {"explorer/views.py": "import streamlit as st\n"},
        ["streamlit outside the app: explorer.views:1"],
    ),
    "duckdb and SQL outside the store": (
        {"explorer/runs_sql.py": "import duckdb\n\nQUERY = 'SELECT * FROM t'\n\n\ndef f(con):\n    con.execute(QUERY)\n"},
        [
            "duckdb outside the store: explorer.runs_sql:1",
            "SQL outside the store: explorer.runs_sql:3 holds 'SELECT * FROM t'",
            "SQL outside the store: explorer.runs_sql:7 calls .execute()",
        ],
    ),
    "errors.py importing the project, an error without the base": (
        {
            "explorer/errors.py": (
                "from explorer.runs import RunFolderError\n\n\nclass ExplorerError(Exception):\n    pass\n"
            ),
            "explorer/sampling.py": "class SamplingError(ValueError):\n    pass\n",
        },
        [
            "explorer.errors imports the project: line 1 imports explorer.runs",
            "error without the base class: explorer.sampling:1 SamplingError does not derive from ExplorerError",
            "cycle: explorer.errors -> explorer.runs",
        ],
    ),
    "an import inside a function, private names": (
        {
            "explorer/live.py": "_LOCK = None\n",
            "explorer/steering.py": (
                "from explorer.live import _LOCK\nfrom explorer import live\n\n\n"
                "def f():\n    from explorer.runs import RunFolderError\n    return live._LOCK\n"
            ),
        },
        [
            "project import inside a function: explorer.steering:6 imports explorer.runs",
            "private name crosses modules: explorer.steering:1 imports explorer.live._LOCK",
            "private name crosses modules: explorer.steering:7 reads live._LOCK",
        ],
    ),
}
"""Violations planted in the clean tree, with what `check` must report."""


@pytest.mark.parametrize("planted", list(PLANTED))
def test_a_planted_violation_is_reported(tmp_path, planted):
    files, expected = PLANTED[planted]
    findings = check(plant(tmp_path, {**CLEAN, **files}))
    assert sorted(findings) == sorted(expected)
