"""The run folder: where each of its artifacts is, and reading them back.

One typed API for the paths every stage and page needs: `read_profile` (the `Profile` the run was built
with), `model_source` (what to load as its model), `sae_dir` (one SAE's folder), `list_sae_ids`,
`main_sae_id` (the one at the profile's hook) and `database_path` (its DuckDB file); `explorer.artifacts`
names the files. The app and the CLI also read a run's summary, corpus and labels here. The corpus's
text column is the one large thing here (about 3 GB for OpenR1-Math-220k), so the app never reads it whole: `read_document_list` reads the
light columns, `read_document_texts` the text of the documents asked for only (the corpus stage writes
`documents.parquet` in row groups of a few hundred documents, and only the groups that hold one of them
are read), and `read_corpus_prompts` a batch of rows at a time.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Collection, Iterable, Iterator, NamedTuple

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from explorer import artifacts
from explorer.config import Profile
from explorer.errors import ExplorerError
from explorer.prompts import prompt_of_document

DOCUMENT_LIST_COLUMNS = (
    "doc_id", "has_backtracking", "has_interjection", "n_phrases", "is_correct", "problem_type", "n_chars",
)
"""The documents table's light columns: what a listing of the corpus shows, without text or metadata."""
PROMPT_BATCH_ROWS = 256
"""Documents read at a time by `read_corpus_prompts`."""
DOCUMENT_BATCH_ROWS = 256
"""Documents read at a time by `iter_documents` (the corpus stage's row group size)."""
PHRASE_BATCH_ROWS = 8192
"""Phrases read at a time by `iter_phrases`."""


class RunSummary(NamedTuple):
    run_dir: Path
    profile: Profile
    corpus_manifest: dict[str, Any] | None
    corpus_summary: dict[str, Any] | None
    model_manifest: dict[str, Any] | None
    train_report: dict[str, Any] | None


class RunFolderError(ExplorerError, ValueError):
    """A run folder that is missing or unreadable; the message says how to build one."""


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunFolderError(f"{path} is unreadable ({err}); rebuild it with `python -m precompute build --force`.") from err


def find_runs(root: Path = artifacts.DEFAULT_RUNS_DIR) -> list[Path]:
    """Run folders under `root` (those with a profile.json), sorted by name."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / artifacts.PROFILE_FILE).is_file())


def read_profile(run_dir: Path) -> Profile:
    """The profile the run was built with (its `profile.json`)."""
    path = Path(run_dir) / artifacts.PROFILE_FILE
    data = _read_json(path)
    if data is None:
        raise RunFolderError(f"{run_dir} is not a run folder (no {artifacts.PROFILE_FILE}); build one with `make demo-data`.")
    try:
        return Profile.from_dict(data)
    except (TypeError, KeyError, ValueError) as err:
        raise RunFolderError(
            f"{path} does not hold a profile this code reads ({err}); rebuild it with `python -m precompute build --force`."
        ) from err


def model_source(run_dir: Path, profile: Profile) -> Path | str:
    """What `load_model` should load for this run: its own `model/` for the demo, else the profile's
    hub id or folder."""
    if profile.model == artifacts.DEMO_MODEL:
        return Path(run_dir) / artifacts.MODEL_DIR
    return profile.model


def sae_dir(run_dir: Path, sae_id: str) -> Path:
    """The folder of one of the run's SAEs, `saes/<sae_id>/`."""
    return Path(run_dir) / artifacts.SAES_DIR / sae_id


def list_sae_ids(run_dir: Path) -> list[str]:
    """The SAEs a run holds (folders under `saes/` with a sae_lens config), sorted."""
    root = Path(run_dir) / artifacts.SAES_DIR
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "cfg.json").is_file())


def sae_hook_name(run_dir: Path, sae_id: str) -> str | None:
    """The hook one of the run's SAEs was trained at, as its sae_lens config says (None if it does not,
    or cannot be read: the loader says why when the SAE is opened)."""
    try:
        cfg = _read_json(sae_dir(run_dir, sae_id) / "cfg.json") or {}
    except RunFolderError:
        return None
    return (cfg.get("metadata") or {}).get("hook_name") or cfg.get("hook_name")


def main_sae_id(run_dir: Path, hook_name: str | None = None, sae_ids: Iterable[str] | None = None) -> str | None:
    """The run's main SAE among `sae_ids` (default: all of them): the first at `hook_name` (default: the
    run's profile's hook), else the first; None when there is none. The app's SAE picker, the `--sae`
    defaults and the checks take it, so a run with SAEs at further hooks (`Profile.extra_hooks`) still
    opens on the profile's."""
    ids = list_sae_ids(run_dir) if sae_ids is None else list(sae_ids)
    if not ids:
        return None
    if hook_name is None and (Path(run_dir) / artifacts.PROFILE_FILE).is_file():
        try:
            hook_name = read_profile(run_dir).hook_name
        except RunFolderError:
            hook_name = None
    return next((sae_id for sae_id in ids if sae_hook_name(run_dir, sae_id) == hook_name), ids[0])


def database_path(run_dir: Path) -> Path:
    """The run's DuckDB file (`explorer.database` opens and writes it)."""
    return Path(run_dir) / artifacts.DATABASE_FILE


def corpus_content_hash(run_dir: Path) -> str:
    """sha256 (first 16 hex digits) of the corpus's documents.parquet: the provenance's corpus hash."""
    digest = hashlib.sha256()
    with open(Path(run_dir) / artifacts.CORPUS_DIR / artifacts.DOCUMENTS_FILE, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def read_run_summary(run_dir: Path) -> RunSummary:
    run_dir = Path(run_dir)
    profile = read_profile(run_dir)
    corpus_dir = run_dir / artifacts.CORPUS_DIR
    model_dir = run_dir / artifacts.MODEL_DIR
    return RunSummary(
        run_dir=run_dir,
        profile=profile,
        corpus_manifest=_read_json(corpus_dir / artifacts.STAGE_MANIFEST),
        corpus_summary=_read_json(corpus_dir / artifacts.CORPUS_SUMMARY_FILE),
        model_manifest=_read_json(model_dir / artifacts.STAGE_MANIFEST),
        train_report=_read_json(model_dir / artifacts.TRAIN_REPORT_FILE),
    )


def run_summary_stamp(run_dir: Path) -> tuple[int, ...]:
    """The modification times of the files `read_run_summary` reads (0 for one that is missing): what
    the app caches a run's summary under. profile.json changes only when a command builds something with
    other settings, so a rebuilt corpus or model must show through its own files. Raises OSError when
    the run has no profile.json."""
    run_dir = Path(run_dir)
    stamps = [(run_dir / artifacts.PROFILE_FILE).stat().st_mtime_ns]
    for path in (
        run_dir / artifacts.CORPUS_DIR / artifacts.STAGE_MANIFEST,
        run_dir / artifacts.CORPUS_DIR / artifacts.CORPUS_SUMMARY_FILE,
        run_dir / artifacts.MODEL_DIR / artifacts.STAGE_MANIFEST,
        run_dir / artifacts.MODEL_DIR / artifacts.TRAIN_REPORT_FILE,
    ):
        stamps.append(path.stat().st_mtime_ns if path.is_file() else 0)
    return tuple(stamps)


def documents_path(run_dir: Path) -> Path:
    """The run's `corpus/documents.parquet`; a clear error when the corpus stage has not run."""
    path = Path(run_dir) / artifacts.CORPUS_DIR / artifacts.DOCUMENTS_FILE
    if not path.is_file():
        raise RunFolderError(f"No corpus in {run_dir}: run `python -m precompute corpus --out {run_dir}` first.")
    return path


def read_documents(run_dir: Path, columns: list[str] | None = None, doc_ids: Collection[str] | None = None) -> pd.DataFrame:
    """The corpus documents table of a run (all of it: pass `columns`, and leave out `text` where you can;
    `doc_ids`: only those documents' rows)."""
    return pd.read_parquet(documents_path(run_dir), columns=columns, filters=doc_id_filter(doc_ids))


def doc_id_filter(doc_ids: Collection[str] | None) -> pc.Expression | None:
    """A parquet read filter that keeps the rows of `doc_ids` (None: every row). The reader skips the row
    groups whose doc_id statistics rule them out, and drops the other rows before they become a frame."""
    if doc_ids is None:
        return None
    return pc.field("doc_id").isin(pa.array(sorted(set(doc_ids)), type=pa.string()))


def iter_documents(
    run_dir: Path, columns: list[str], *, batch_rows: int = DOCUMENT_BATCH_ROWS
) -> Iterator[dict[str, list[Any]]]:
    """The corpus documents table, `batch_rows` rows at a time in corpus order, each batch as columns
    of Python values. Nothing is read before it is asked for, so a reader that stops early never reads
    the rest of the text column."""
    parquet = pq.ParquetFile(documents_path(run_dir))
    for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns):
        yield batch.to_pydict()


def count_documents(run_dir: Path) -> int:
    """How many documents the corpus holds (from the file's footer: no column is read)."""
    return pq.ParquetFile(documents_path(run_dir)).metadata.num_rows


def read_document_list(run_dir: Path) -> pd.DataFrame:
    """Every document's light columns (`DOCUMENT_LIST_COLUMNS`), in corpus order: no text, no metadata."""
    return read_documents(run_dir, columns=list(DOCUMENT_LIST_COLUMNS))


def read_document_texts(run_dir: Path, doc_ids: Iterable[str]) -> dict[str, str]:
    """The text of each of `doc_ids` that the corpus holds, by doc id.

    Reads the doc_id column, then the text of only the row groups that hold a wanted document.
    """
    wanted = set(doc_ids)
    parquet = pq.ParquetFile(documents_path(run_dir))
    ids = parquet.read(columns=["doc_id"]).column("doc_id").to_pylist()
    texts: dict[str, str] = {}
    start = 0
    for group in range(parquet.num_row_groups):
        stop = start + parquet.metadata.row_group(group).num_rows
        rows = [i - start for i in range(start, stop) if ids[i] in wanted]
        if rows:
            group_texts = parquet.read_row_group(group, columns=["text"]).column("text").take(rows).to_pylist()
            texts.update(zip((ids[start + r] for r in rows), group_texts))
        start = stop
    return texts


def read_document_text(run_dir: Path, doc_id: str) -> str | None:
    """One document's text, or None when the corpus has no such document."""
    return read_document_texts(run_dir, [doc_id]).get(doc_id)


def read_corpus_prompts(run_dir: Path, *, max_documents: int | None = None) -> list[str]:
    """The generation prompt of every document that gives one (`explorer.prompts.prompt_of_document`:
    the text's own prompt, else the problem in the metadata), in corpus order, repeats kept.

    Reads `PROMPT_BATCH_ROWS` documents at a time, and only the first `max_documents` when given.
    """
    parquet = pq.ParquetFile(documents_path(run_dir))
    columns = [c for c in ("text", "metadata_json") if c in parquet.schema_arrow.names]
    prompts: list[str] = []
    n_read = 0
    for batch in parquet.iter_batches(batch_size=PROMPT_BATCH_ROWS, columns=columns):
        rows = batch.to_pylist()
        if max_documents is not None:
            rows = rows[: max_documents - n_read]
        for row in rows:
            metadata = json.loads(row["metadata_json"]) if row.get("metadata_json") else {}
            prompt = prompt_of_document(row["text"], metadata)
            if prompt is not None:
                prompts.append(prompt)
        n_read += len(rows)
        if max_documents is not None and n_read >= max_documents:
            break
    return prompts


def read_phrases(run_dir: Path, doc_id: str | None = None, *, doc_ids: Collection[str] | None = None) -> pd.DataFrame:
    """Labelled phrases of a run (of one document when `doc_id` is given, of `doc_ids` when they are)."""
    filters = [("doc_id", "==", doc_id)] if doc_id is not None else doc_id_filter(doc_ids)
    return pd.read_parquet(_phrases_path(run_dir), filters=filters)


def _phrases_path(run_dir: Path) -> Path:
    path = Path(run_dir) / artifacts.CORPUS_DIR / artifacts.PHRASES_FILE
    if not path.is_file():
        raise RunFolderError(f"No corpus in {run_dir}: run `python -m precompute corpus --out {run_dir}` first.")
    return path


def iter_phrases(run_dir: Path, *, batch_rows: int = PHRASE_BATCH_ROWS) -> Iterator[dict[str, list[Any]]]:
    """The labelled phrases of a run, `batch_rows` at a time in the file's order, as columns."""
    path = _phrases_path(run_dir)
    yield from (batch.to_pydict() for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows))


def read_error_steps(run_dir: Path, doc_id: str) -> pd.DataFrame:
    """Synthetic corpora: the wrong steps of one document (empty for imported corpora)."""
    path = Path(run_dir) / artifacts.CORPUS_DIR / artifacts.ERROR_STEPS_FILE
    if not path.is_file():
        return pd.DataFrame(columns=["doc_id", "start", "end", "correction_index"])
    return pd.read_parquet(path, filters=[("doc_id", "==", doc_id)])

