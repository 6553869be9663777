"""The README and docs/*.md point only at files the repository holds.

Checked in every document: each relative markdown link (`[text](path)`, resolved from the document's
own folder, `#anchor` dropped), and each repo path the text names, in backticks, in a code block or in
prose: a path whose first part is one of the repository's own top-level entries (`explorer/`,
`docs/`, `app.py`, ...), any path that climbs out of the repository (`../`), and any bare `*.md`
name. `<placeholders>` and `*` match any name. Run-time paths (`runs/`, `data/`, `saes/<id>/`) and
hub ids are not repo paths and are not checked.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUNTIME = {"runs", "data", "test-artifacts", ".venv", ".git", ".pytest_cache", "__pycache__"}
"""Top-level names that are build or run outputs, not files the repository ships."""

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
PATH = re.compile(r"(?<![\w.\-/<>*@:])((?:\.\.?/)*[\w.\-<>*]+(?:/[\w.\-<>*]*)*)")
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.\-]*:|#|mailto:)", re.IGNORECASE)


def documents() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def top_level_names(repo: Path) -> set[str]:
    return {p.name for p in repo.iterdir() if p.name not in RUNTIME}


def exists(repo: Path, relative: str) -> bool:
    """Whether `relative` (repo-relative, `<placeholder>` and `*` as wildcards) names something there."""
    pattern = re.sub(r"<[^>]*>", "*", relative).rstrip("/")
    if not pattern:
        return True
    if "*" in pattern:
        return any(repo.glob(pattern))
    return (repo / pattern).exists()


def is_repo_path(token: str, top_level: set[str]) -> bool:
    if token.startswith("../"):
        return True
    if "/" in token:
        return token.removeprefix("./").split("/", 1)[0] in top_level
    return token.endswith(".md")


def broken_references(doc: Path, repo: Path = REPO, folder: Path | None = None) -> list[str]:
    """Every link target and repo path in `doc` that `repo` does not hold, as 'line N: ref'.

    Links resolve from `folder`, the document's own folder unless given."""
    top_level = top_level_names(repo)
    folder = doc.parent if folder is None else folder
    problems = []
    for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), start=1):
        for target in LINK.findall(line):
            if EXTERNAL.match(target):
                continue
            path = target.split("#", 1)[0]
            resolved = (folder / path).resolve()
            if not resolved.is_relative_to(repo.resolve()) or not exists(repo, str(resolved.relative_to(repo.resolve()))):
                problems.append(f"line {number}: link ({target})")
        for token in PATH.findall(LINK.sub(" ", line)):
            token = token.rstrip(".,;:")
            if not is_repo_path(token, top_level):
                continue
            if token.startswith("../") or not exists(repo, token.removeprefix("./")):
                bare_md = "/" not in token and token.endswith(".md")
                if bare_md and (exists(repo, token) or exists(repo, f"docs/{token}")):
                    continue
                problems.append(f"line {number}: path {token}")
    return problems


@pytest.mark.parametrize("doc", documents(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_reference_exists(doc):
    assert broken_references(doc) == []


def test_the_check_finds_planted_broken_references(tmp_path):
    """The same function, on a copy of the README with broken references planted in it."""
    planted = tmp_path / "README.md"
    planted.write_text(
        (REPO / "README.md").read_text(encoding="utf-8")
        + "\nSee [the notes](docs/no-such-page.md), `explorer/no_such_module.py`, research.md,\n"
        + "`../shared/docs/notes.md` and [outside](../elsewhere.md).\n",
        encoding="utf-8",
    )
    found = broken_references(planted, REPO, folder=REPO)
    assert any("docs/no-such-page.md" in p for p in found)
    assert any("explorer/no_such_module.py" in p for p in found)
    assert any("research.md" in p for p in found)
    assert any("../shared/docs/notes.md" in p for p in found)
    assert any("../elsewhere.md" in p for p in found)
    assert len(found) == 5


def test_the_check_accepts_what_exists(tmp_path):
    doc = tmp_path / "ok.md"
    doc.write_text(
        "[schema](docs/schema.md#tables), `explorer/labels.py`, docs/sae.md, `docs/screenshots/*.png`,\n"
        "`runs/<run>/explorer.duckdb`, `saes/<sae_id>/`, `open-r1/OpenR1-Math-220k`, https://example.org/x.md\n",
        encoding="utf-8",
    )
    assert broken_references(doc, REPO, folder=REPO) == []


def test_readme_opens_with_the_two_set_up_commands():
    """The README's first code block is `make demo` and `make test`, and the Makefile has both targets."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    first_block = re.search(r"^```[^\n]*\n(.*?)^```", text, re.MULTILINE | re.DOTALL).group(1)
    commands = [line.split("#", 1)[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    for target in ("demo", "test"):
        assert re.search(rf"^{target}:", makefile, re.MULTILINE), target


PRECOMPUTE = re.compile(r"-m precompute\b([^;#]*)")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
INLINE = re.compile(r"`([^`\n]+)`")


def precompute_commands(doc: Path) -> list[list[str]]:
    """The argv of every `python -m precompute ...` a document shows, in a code block (continuation
    lines joined) or in inline code."""
    text = doc.read_text(encoding="utf-8")
    shown = [line for block in FENCE.findall(text) for line in block.replace("\\\n", " ").splitlines()]
    shown += INLINE.findall(FENCE.sub("", text))
    return [args.split() for line in shown for args in PRECOMPUTE.findall(line)]


def unknown_precompute_arguments(argv: list[str]) -> list[str]:
    """The subcommand and `--options` of `argv` that `python -m precompute` does not have."""
    from precompute.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    words = [w.strip("[]()") for w in argv]
    if not words or words[0] in ("--help", "-h"):
        return []
    if words[0] not in commands:
        return [words[0]]
    options = commands[words[0]]._option_string_actions
    return [w for w in words[1:] if w.startswith("--") and w.split("=", 1)[0] not in options]


@pytest.mark.parametrize("doc", documents(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_precompute_command_shown_exists(doc):
    wrong = [(argv, bad) for argv in precompute_commands(doc) if (bad := unknown_precompute_arguments(argv))]
    assert wrong == []


def test_the_command_check_finds_a_wrong_stage_and_flag(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text(
        "```\npython -m precompute index --tokens 8 --no-such-flag \\\n    --top-k 4   # fine\n"
        "python -m precompute no-such-stage\npython -m precompute steer --coefs=-8,8 --sae S\n```\n"
        "Prose: `python -m precompute merge --no-such-option`, and `python -m precompute` alone.\n",
        encoding="utf-8",
    )
    wrong = [unknown_precompute_arguments(argv) for argv in precompute_commands(doc)]
    assert wrong == [["--no-such-flag"], ["no-such-stage"], [], ["--no-such-option"], []]
