"""Corpus readers: every supported source becomes a list of `TraceRecord`s.

`load_corpus(source)` decides what `source` is:
- an existing path wins: a `.json` file (the original notebook's format, a JSON list of records), a
  `.jsonl` file (one record per line), a `.parquet` file, or a folder that `datasets`' `save_to_disk`
  wrote (a Dataset, or a DatasetDict, of which the "train" split, or else the only split, is read);
- otherwise a string shaped like `owner/name` is a Hugging Face hub dataset id, read with
  `datasets.load_dataset` when the hub can be reached.

Record fields, whatever the format:
- text: `generated_cot`, else `text` (a non-empty string);
- a record whose `generations` field is a list (OpenR1-Math-220k) becomes one document per generation,
  with doc id `<id>-g<k>`; list fields that hold one value per generation (`correctness_math_verify`,
  `finish_reasons`, ...) give each document its own generation's value. `generations` and `messages`
  (which repeats the problem and one generation) are not copied into metadata: they would repeat every
  generation's text in every document;
- doc id: `doc_id`, else `uuid`, else `problem_id`, else the record's index. Ids are made unique in
  reading order: the first use keeps the id, its k-th repeat becomes `<id>-<k>`. So an id never
  depends on records after it, and `limit` does not change ids;
- metadata: the record's other fields as they were, plus `source` (the path or hub id) and
  `source_index` (the record's position there), and where they apply `source_split` (the split read)
  and `generation_index`. A record field that is itself called `source` (OpenR1 has one) or
  `source_index` is kept as `record_source` / `record_source_index`.

Every problem a person can fix raises `CorpusError`, naming the file and the record.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple
from urllib.parse import urlparse

from explorer.errors import ExplorerError
from explorer.records import TraceRecord

logger = logging.getLogger(__name__)

TEXT_FIELDS = ("generated_cot", "text")
"""Fields that hold a record's text, in order of preference."""
ID_FIELDS = ("doc_id", "uuid", "problem_id")
"""Fields that give a record's doc id, in order of preference (else its index)."""
GENERATIONS_FIELD = "generations"
PER_GENERATION_FIELDS = (
    "correctness_math_verify",
    "correctness_llama",
    "is_reasoning_complete",
    "finish_reasons",
    "generation_token_length",
)
"""OpenR1-Math-220k list fields with one value per generation."""
NOT_COPIED_WHEN_EXPANDING = (GENERATIONS_FIELD, "messages")
RESERVED_METADATA = ("source", "source_index")
DEFAULT_SPLIT = "train"

SUPPORTED_SOURCES = (
    "a .json file holding a list of records (the notebook's format), a .jsonl file, a .parquet file, "
    "a folder written by datasets' save_to_disk, or a Hugging Face hub dataset id such as "
    "open-r1/OpenR1-Math-220k"
)
_FILE_SUFFIXES = (".json", ".jsonl", ".parquet")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
_ENV_TRUE = {"1", "ON", "YES", "TRUE"}
_OFFLINE_ENV_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
_PROXY_ENV_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
HUB_PROBE_TIMEOUT_S = 3.0
"""How long to wait for a TCP connection to the hub before calling it unreachable."""


class CorpusError(ExplorerError, ValueError):
    """A corpus that cannot be read, with a message saying which file, which record and what to do."""


class SourceRow(NamedTuple):
    """One record as a reader found it: its position, its fields, and where to point a person."""

    index: int
    fields: dict[str, Any]
    where: str
    """For messages: "record 3", or "line 5 (record 3)" in JSON Lines."""


class _Document(NamedTuple):
    base_id: str
    text: str
    metadata: dict[str, Any]


def load_corpus(source: str | Path, *, limit: int | None = None) -> list[TraceRecord]:
    """Read `source` (see the module docstring for what it may be) as `TraceRecord`s.

    `limit` keeps the first `limit` documents (after expanding `generations`), reading no further
    where the format allows it.
    """
    if limit is not None and limit < 1:
        raise CorpusError(f"limit must be a positive number of documents, got {limit}")
    label, rows, extra_metadata = _open_source(source)
    records = _build_records(rows, label, extra_metadata, limit)
    logger.info("Read %d documents from %s", len(records), label)
    return records


# --- deciding what the source is ---------------------------------------------------------------


def _open_source(source: str | Path) -> tuple[str, Iterator[SourceRow], dict[str, Any]]:
    """The source's label for messages, its rows, and metadata shared by all of them."""
    path = Path(source)
    if path.exists():
        return _open_path(path)
    if isinstance(source, str) and _looks_like_hub_id(source):
        dataset, split = _load_hub_dataset(source)
        return source, _dataset_rows(dataset), {"source_split": split}
    raise CorpusError(
        f"{source}: no such file or folder. A corpus is {SUPPORTED_SOURCES}. "
        "(A hub id is written owner/name.)"
    )


def _looks_like_hub_id(source: str) -> bool:
    # "data/corpus.json" that is missing is a missing file, not a hub dataset called corpus.json.
    return bool(_HUB_ID.fullmatch(source)) and not source.lower().endswith(_FILE_SUFFIXES)


def _open_path(path: Path) -> tuple[str, Iterator[SourceRow], dict[str, Any]]:
    label = str(path)
    if path.is_dir():
        dataset, split = _load_saved_dataset(path)
        extra = {"source_split": split} if split is not None else {}
        return label, _dataset_rows(dataset), extra
    suffix = path.suffix.lower()
    if suffix == ".json":
        return label, _read_json(path), {}
    if suffix == ".jsonl":
        return label, _read_jsonl(path), {}
    if suffix == ".parquet":
        return label, _read_parquet(path), {}
    shown_suffix = suffix or "(no suffix)"
    raise CorpusError(f"{path}: unknown corpus format {shown_suffix!r}. A corpus is {SUPPORTED_SOURCES}.")


# --- files -------------------------------------------------------------------------------------


def _decode_utf8(data: bytes, path: Path, *, first_byte_offset: int = 0) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _not_utf8(path, first_byte_offset + error.start, data[error.start]) from None


def _not_utf8(path: Path, byte_offset: int, bad_byte: int) -> CorpusError:
    return CorpusError(
        f"{path}: not UTF-8 text: byte offset {byte_offset} is 0x{bad_byte:02x}. "
        "Re-save the file as UTF-8."
    )


def _strip_bom(data: bytes) -> tuple[bytes, int]:
    """The bytes without a UTF-8 byte-order mark, and how many bytes were dropped."""
    bom = b"\xef\xbb\xbf"
    return (data[len(bom) :], len(bom)) if data.startswith(bom) else (data, 0)


def _read_json(path: Path) -> Iterator[SourceRow]:
    data, bom_length = _strip_bom(path.read_bytes())
    text = _decode_utf8(data, path, first_byte_offset=bom_length)
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as error:
        # `Dataset.to_json("x.json")` writes JSON Lines under a .json name.
        if error.msg == "Extra data" and text.lstrip().startswith("{"):
            logger.info("%s holds one JSON object per line; reading it as JSON Lines", path)
            return _read_jsonl(path)
        raise CorpusError(
            f"{path}: malformed JSON at line {error.lineno}, column {error.colno}: {error.msg}"
        ) from None
    if not isinstance(parsed, list):
        raise CorpusError(
            f"{path}: expected a JSON list of records (the notebook's format), "
            f"found a JSON {_json_type(parsed)}"
        )
    return (
        SourceRow(index, _as_fields(item, path, f"record {index}"), f"record {index}")
        for index, item in enumerate(parsed)
    )


def _read_jsonl(path: Path) -> Iterator[SourceRow]:
    index = 0
    line_start = 0
    with path.open("rb") as lines:
        for line_number, raw_line in enumerate(lines, start=1):
            line_bytes, bom_length = _strip_bom(raw_line) if line_number == 1 else (raw_line, 0)
            line = _decode_utf8(line_bytes, path, first_byte_offset=line_start + bom_length)
            line_start += len(raw_line)
            if not line.strip():
                continue
            where = f"line {line_number} (record {index})"
            try:
                item = json.loads(line.rstrip("\r\n"))  # so a column past the end is on this line
            except json.JSONDecodeError as error:
                raise CorpusError(
                    f"{path}: malformed JSON on line {line_number}, column {error.colno}: {error.msg}"
                ) from None
            yield SourceRow(index, _as_fields(item, path, where), where)
            index += 1


def _as_fields(item: Any, path: Path | str, where: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise CorpusError(f"{path}: {where} is a JSON {_json_type(item)}, not an object of fields")
    return item


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _read_parquet(path: Path) -> Iterator[SourceRow]:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pyarrow.ArrowException, OSError) as error:
        raise CorpusError(f"{path}: not a readable Parquet file: {error}") from None
    index = 0
    for batch in parquet.iter_batches(batch_size=1024):
        for fields in batch.to_pylist():
            yield SourceRow(index, fields, f"record {index}")
            index += 1


# --- datasets (save_to_disk folders and the hub) ------------------------------------------------


def _load_saved_dataset(folder: Path) -> tuple[Any, str | None]:
    """The `datasets.Dataset` in `folder`, and the split it came from (None for a plain Dataset)."""
    is_dataset_dict = (folder / "dataset_dict.json").is_file()
    is_dataset = (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file()
    if not (is_dataset_dict or is_dataset):
        raise CorpusError(
            f"{folder}: a folder, but not one written by datasets' save_to_disk (it has no "
            f"dataset_dict.json, nor state.json and dataset_info.json). A corpus is {SUPPORTED_SOURCES}."
        )
    import datasets

    try:
        loaded = datasets.load_from_disk(str(folder))
    except (OSError, ValueError) as error:
        raise CorpusError(f"{folder}: cannot read this save_to_disk folder: {error}") from None
    if isinstance(loaded, datasets.DatasetDict):
        return _choose_split(loaded, str(folder))
    return loaded, None


def _choose_split(dataset_dict: Any, label: str) -> tuple[Any, str]:
    splits = list(dataset_dict.keys())
    if DEFAULT_SPLIT in splits:
        split = DEFAULT_SPLIT
    elif len(splits) == 1:
        split = splits[0]
    else:
        raise CorpusError(
            f"{label}: holds splits {', '.join(splits)} and none is called {DEFAULT_SPLIT!r}; "
            "save the split you want on its own and pass that folder"
        )
    logger.info("%s: reading split %r (splits: %s)", label, split, ", ".join(splits))
    return dataset_dict[split], split


def _dataset_rows(dataset: Any) -> Iterator[SourceRow]:
    for index, fields in enumerate(dataset):
        yield SourceRow(index, dict(fields), f"record {index}")


def _load_hub_dataset(hub_id: str) -> tuple[Any, str]:
    """The hub dataset's "train" (or only) split, failing fast when the hub cannot be reached."""
    import datasets

    if _offline_requested() and not datasets.config.HF_HUB_OFFLINE:
        # Offline was asked for after `datasets` was imported, so `datasets` would still try the
        # network (and retry for about 20 s). Don't let it.
        raise _hub_unreachable(hub_id, "offline mode is on (HF_HUB_OFFLINE)")
    if not datasets.config.HF_HUB_OFFLINE and not _hub_reachable():
        raise _hub_unreachable(hub_id, f"no connection to {_hub_endpoint()}")
    # In offline mode `load_dataset` only reads the local cache, so this returns or fails at once.
    try:
        loaded = datasets.load_dataset(hub_id)
    except datasets.exceptions.DatasetNotFoundError as error:
        raise CorpusError(
            f"{hub_id}: no such dataset on the Hugging Face hub, or it is private or gated: {error}"
        ) from None
    except ConnectionError as error:
        raise _hub_unreachable(hub_id, str(error)) from None
    return _choose_split(loaded, hub_id)


def _offline_requested() -> bool:
    """Whether offline mode is on, read from the environment now as well as from the libraries'
    constants (which are read once, at import)."""
    from huggingface_hub import constants

    from_env = any(os.environ.get(name, "").upper() in _ENV_TRUE for name in _OFFLINE_ENV_VARS)
    return from_env or bool(constants.HF_HUB_OFFLINE)


def _hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _hub_reachable(timeout_s: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub opens within `timeout_s`.

    Behind a proxy a direct connection says nothing, so then this answers True and leaves it to
    `load_dataset`.
    """
    if any(os.environ.get(name) for name in _PROXY_ENV_VARS):
        return True
    endpoint = urlparse(_hub_endpoint())
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _hub_unreachable(hub_id: str, reason: str) -> CorpusError:
    folder = hub_id.split("/")[-1]
    return CorpusError(
        f"{hub_id}: cannot reach the Hugging Face hub ({reason}). To use this dataset here: on a "
        f"machine with network, run `datasets.load_dataset({hub_id!r}).save_to_disk({folder!r})`, "
        f"copy the folder {folder!r} to this machine and pass its path instead of the hub id."
    )


# --- rows to records ---------------------------------------------------------------------------


def _build_records(
    rows: Iterable[SourceRow], label: str, extra_metadata: dict[str, Any], limit: int | None
) -> list[TraceRecord]:
    records: list[TraceRecord] = []
    ids = _UniqueIds()
    for row in rows:
        for document in _documents_of_row(row, label):
            metadata = {**document.metadata, **extra_metadata, "source": label, "source_index": row.index}
            records.append(TraceRecord(ids.claim(document.base_id), document.text, metadata))
            if limit is not None and len(records) >= limit:
                return records
    if not records:
        raise CorpusError(f"{label}: the corpus is empty (no records)")
    if ids.n_renamed:
        logger.info("%s: %d repeated doc ids were given suffixes -1, -2, ...", label, ids.n_renamed)
    return records


def _documents_of_row(row: SourceRow, label: str) -> list[_Document]:
    fields = _move_reserved_fields(row.fields)
    base_id = _base_id(fields, row.index)
    generations = fields.get(GENERATIONS_FIELD)
    if isinstance(generations, list):
        return _generation_documents(fields, generations, base_id, row, label)
    text_field, text = _text_of(fields, row, label, base_id)
    metadata = {name: value for name, value in fields.items() if name != text_field}
    return [_Document(base_id, text, metadata)]


def _move_reserved_fields(fields: dict[str, Any]) -> dict[str, Any]:
    if not any(name in fields for name in RESERVED_METADATA):
        return fields
    return {
        (f"record_{name}" if name in RESERVED_METADATA else name): value for name, value in fields.items()
    }


def _base_id(fields: dict[str, Any], index: int) -> str:
    for name in ID_FIELDS:
        value = fields.get(name)
        if value is not None and str(value) != "":
            return str(value)
    return str(index)


def _describe(row: SourceRow, label: str, base_id: str) -> str:
    id_part = "" if base_id == str(row.index) else f", id {base_id!r}"
    return f"{label}: {row.where}{id_part}"


def _text_of(fields: dict[str, Any], row: SourceRow, label: str, base_id: str) -> tuple[str, str]:
    """The field that holds the record's text, and the text."""
    problems = []
    for name in TEXT_FIELDS:
        if name not in fields:
            continue
        value = fields[name]
        if isinstance(value, str) and value.strip():
            return name, value
        problems.append(f"{name!r} is {'empty' if isinstance(value, str) else 'a ' + type(value).__name__}")
    found = "; ".join(problems) if problems else f"fields present: {', '.join(sorted(fields)) or 'none'}"
    raise CorpusError(
        f"{_describe(row, label, base_id)}: no text: expected a non-empty string in "
        f"{' or '.join(map(repr, TEXT_FIELDS))} (or a list in {GENERATIONS_FIELD!r}); {found}"
    )


def _generation_documents(
    fields: dict[str, Any], generations: list[Any], base_id: str, row: SourceRow, label: str
) -> list[_Document]:
    """One document per generation, each with its own value of the per-generation fields."""
    shared = {name: value for name, value in fields.items() if name not in NOT_COPIED_WHEN_EXPANDING}
    per_generation = [
        name
        for name in PER_GENERATION_FIELDS
        if isinstance(fields.get(name), list) and len(fields[name]) == len(generations)
    ]
    documents = []
    for k, text in enumerate(generations):
        if not (isinstance(text, str) and text.strip()):
            state = "empty" if isinstance(text, str) else f"a {type(text).__name__}"
            raise CorpusError(
                f"{_describe(row, label, base_id)}: no text: "
                f"generation {k} of {GENERATIONS_FIELD!r} is {state}"
            )
        metadata = {**shared, **{name: fields[name][k] for name in per_generation}, "generation_index": k}
        documents.append(_Document(f"{base_id}-g{k}", text, metadata))
    if not documents:
        raise CorpusError(
            f"{_describe(row, label, base_id)}: no text: {GENERATIONS_FIELD!r} is an empty list"
        )
    return documents


class _UniqueIds:
    """Hands out unique doc ids in reading order: a repeat of `x` becomes `x-1`, `x-2`, ..."""

    def __init__(self) -> None:
        self._taken: set[str] = set()
        self._last_suffix: Counter[str] = Counter()
        self.n_renamed = 0

    def claim(self, base_id: str) -> str:
        if base_id not in self._taken:
            self._taken.add(base_id)
            return base_id
        suffix = self._last_suffix[base_id]
        candidate = base_id
        while candidate in self._taken:
            suffix += 1
            candidate = f"{base_id}-{suffix}"
        self._last_suffix[base_id] = suffix
        self._taken.add(candidate)
        self.n_renamed += 1
        return candidate
