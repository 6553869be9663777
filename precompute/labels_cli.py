"""`python -m precompute labels`: list, add, remove and compare a run's label sets (docs/labels.md).

    python -m precompute labels --out runs/demo --list
    python -m precompute labels --out runs/demo --add ta --from tags.jsonl          # sets ta:<tag>, one per tag
    python -m precompute labels --out runs/demo --add ta --from math-rollouts/       # Thought Anchors' folders
    python -m precompute labels --out runs/demo --add hedges --phrases hedges.txt    # one phrase a line
    python -m precompute labels --out runs/demo --add checks --regex checks.txt      # one regular expression a line
    python -m precompute labels --out runs/demo --compare 'group:*' tag:uncertainty_management
    python -m precompute labels --out runs/demo --remove hedges

`--add NAME --from FILE` imports sentence tags: a JSONL file (one trace a line) or a folder in Thought
Anchors' layout; each tag becomes the sentence set NAME:<tag>, replacing what an earlier import under NAME
made. `--phrases` and `--regex` make the span set NAME (replacing a set of that name). Bad input stops with
a message and leaves the run's label sets as they were.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from explorer import artifacts
from explorer.label_import import match_label_set, read_phrase_file, read_regex_file, read_tag_jsonl, read_thought_anchors
from explorer.label_sets import (
    LabelSetError,
    check_name,
    compare_label_sets,
    read_label_documents,
    read_label_sets,
    read_label_spans,
    stored_label_sets,
)
from precompute.cli_common import UserError, add_subcommand
from precompute.label_store import ensure_sentences, import_tag_file, remove_label_sets, write_label_sets

MAX_LISTED = 10
"""Unmatched traces and unplaced sentences printed by name; the rest are counted."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `labels` command to `python -m precompute`'s subparsers."""
    parser = add_subcommand(
        subparsers, "labels", "list, add (sentence tags, phrases, regular expressions), remove and compare label sets",
        __doc__,
    )
    parser.add_argument(
        "--out", "--run", dest="out", type=Path, default=artifacts.default_run_dir("demo"),
        help="run folder (default: runs/demo)",
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--list", action="store_true", help="list the run's label sets")
    action.add_argument("--add", metavar="NAME", help="add a label set (with --from, --phrases or --regex)")
    action.add_argument("--remove", metavar="NAME", nargs="+", help="remove stored label sets")
    action.add_argument(
        "--compare", nargs=2, metavar=("A", "B"),
        help="precision and recall of A against B (names or globs such as 'group:*', 'tag:*')",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--from", dest="from_path", type=Path, metavar="PATH",
                        help="sentence tags: a JSONL file, or a folder in Thought Anchors' layout")
    source.add_argument("--phrases", type=Path, metavar="FILE", help="a phrase list, one phrase a line")
    source.add_argument("--regex", type=Path, metavar="FILE", help="regular expressions, one a line")
    parser.add_argument("--description", help="the set's description (--phrases, --regex)")
    parser.add_argument(
        "--allow-unplaced", action="store_true",
        help="JSONL: report and skip unknown traces and sentences not found in their trace instead of stopping "
        "(the Thought Anchors layout always does)",
    )
    parser.add_argument("--unit", choices=("sentence", "span"), help="--compare's unit (default: docs/labels.md)")
    return parser


def run(args: argparse.Namespace) -> None:

    run_dir = Path(args.out)
    if not (run_dir / artifacts.CORPUS_DIR / artifacts.DOCUMENTS_FILE).is_file():
        raise UserError(f"No corpus in {run_dir}: build one first (`python -m precompute corpus --out {run_dir}`).")
    if args.add is None and (args.from_path or args.phrases or args.regex):
        raise UserError("--from, --phrases and --regex go with --add NAME.")
    if args.list:
        list_label_sets(run_dir)
    elif args.add is not None:
        if not (args.from_path or args.phrases or args.regex):
            raise UserError("--add NAME needs --from FILE, --phrases FILE or --regex FILE.")
        add_label_set(run_dir, args)
    elif args.remove:

        for name in remove_label_sets(run_dir, args.remove):
            print(f"removed {name}")
    else:
        print_comparison(run_dir, *args.compare, unit=args.unit)


def list_label_sets(run_dir: Path) -> None:

    ensure_sentences(run_dir)
    sets = read_label_sets(run_dir)
    rows = []
    for name, label_set in sets.items():
        spans = read_label_spans(run_dir, name)
        rows.append((name, label_set.kind, f"{len(read_label_documents(run_dir, name)):,}", f"{len(spans):,}",
                     label_set.source, label_set.description))
    header = ("name", "kind", "documents", "positives", "source", "description")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(4)]
    print(f"label sets of {run_dir} (positives: spans, or sentences for a sentence set)")
    for row in [header, *rows]:
        print("  " + "  ".join(str(v).ljust(w) for v, w in zip(row[:4], widths)) + f"  {row[4]}: {row[5]}")


def add_label_set(run_dir: Path, args: argparse.Namespace) -> None:

    name = args.add
    check_name(name)
    if args.from_path is not None:
        return import_tags(run_dir, name, args.from_path, allow_unplaced=args.allow_unplaced)
    path = args.phrases or args.regex
    kind = "phrases" if args.phrases else "regex"
    patterns = [read_phrase_file(path)] if args.phrases else read_regex_file(path)
    what = f"matches of the phrases in {path.name}" if args.phrases else f"matches of the regular expressions in {path.name}"
    data = match_label_set(
        run_dir, name, patterns, source=f"{kind}: {path}", description=args.description or what
    )
    replaced = name in _stored_names(run_dir)
    write_label_sets(run_dir, [data])
    print(
        f"{'replaced' if replaced else 'added'} {name} (span set): {len(data.spans):,} spans in "
        f"{data.spans['doc_id'].nunique():,} of {len(data.documents):,} documents"
    )


def _stored_names(run_dir: Path) -> set[str]:

    return set(stored_label_sets(run_dir))


def import_tags(run_dir: Path, prefix: str, path: Path, *, allow_unplaced: bool) -> None:

    if path.is_dir():
        traces, source, strict = read_thought_anchors(path), f"thought-anchors: {path}", False
    elif path.is_file():
        traces, source, strict = read_tag_jsonl(path), f"jsonl: {path}", not allow_unplaced
    else:
        raise LabelSetError(f"{path} does not exist (--from takes a JSONL file or a Thought Anchors folder).")
    sets, report, dropped = import_tag_file(run_dir, prefix, traces, source=source, strict=strict)
    print(f"imported {source}")
    print(
        f"  traces: {report.n_traces:,}; matched by doc_id {report.matched_by_id:,}, by text "
        f"{report.matched_by_text:,}; unmatched {len(report.unmatched_traces):,}"
    )
    _print_some(report.unmatched_traces)
    print(f"  sentences: {report.n_sentences:,}; placed {report.n_placed:,}; not placed {len(report.unplaced):,}")
    _print_some(report.unplaced)
    for data in sets:
        print(f"  {data.label_set.name} (sentence set): {len(data.spans):,} sentences")
    if dropped:
        print(f"  removed (no longer tagged in this import): {', '.join(dropped)}")


def _print_some(lines: list[str]) -> None:
    for line in lines[:MAX_LISTED]:
        print(f"    - {line}")
    if len(lines) > MAX_LISTED:
        print(f"    ... and {len(lines) - MAX_LISTED:,} more")


def print_comparison(run_dir: Path, a: str, b: str, unit: str | None = None) -> None:

    table = compare_label_sets(run_dir, a, b, unit=unit)
    print(f"precision and recall of {a} against {b} in {run_dir}")
    print("  (unit sentence: the run's sentences positive for each set; unit span: spans that overlap a span of "
          "the other set; docs/labels.md)")
    header = ("a", "b", "unit", "docs", "n_a", "n_b", "precision", "recall")
    rows = [
        (r.a, r.b, r.unit, f"{r.n_documents:,}", f"{r.n_a:,}", f"{r.n_b:,}", _percent(r.precision), _percent(r.recall))
        for r in table.itertuples()
    ]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  " + "  ".join(str(v).rjust(w) if i > 2 else str(v).ljust(w) for i, (v, w) in enumerate(zip(row, widths))))


def _percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.1f}%"
