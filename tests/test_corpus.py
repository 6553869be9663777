"""Corpus readers: every format round-trips to the same `TraceRecord`s, and every error names the
file and the record."""

from __future__ import annotations

import json
import time
from pathlib import Path

import datasets
import pandas as pd
import pytest

from explorer import corpus
from explorer.corpus import CorpusError, load_corpus

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SAMPLE_N10 = SHARED_DATA / "seed_format_sample_n10.json"
SAMPLE_N20 = SHARED_DATA / "seed_format_sample_n20.json"
SEED_FIELDS = {"problem_id", "problem_text", "is_correct", "has_backtracking", "backtracking_phrase"}

NOTEBOOK_RECORDS = [
    {
        "problem_id": 1,
        "problem_text": "What is 1/2 + 1/2?",
        "generated_cot": "<think>\nWait, let me check.\n</think> \\boxed{1}",
        "is_correct": True,
        "has_backtracking": True,
        "backtracking_phrase": "Wait, let me check",
    },
    {
        "problem_id": 2,
        "problem_text": "What is 2 + 2?",
        "generated_cot": "<think>\n2 + 2 = 4\n</think> \\boxed{4}",
        "is_correct": True,
        "has_backtracking": False,
        "backtracking_phrase": "",
    },
]

OPENR1_ROW = {
    "problem": "Find x if 2x = 4.",
    "answer": "2",
    "uuid": "abc-123",
    "source": "olympiads",
    "generations": ["<think>\nx = 2\n</think> \\boxed{2}", "<think>\nWait, x = 3\n</think> \\boxed{3}"],
    "correctness_math_verify": [True, False],
    "finish_reasons": ["stop", "length"],
    "messages": [{"role": "user", "content": "Find x if 2x = 4."}],
}


def write_json(path: Path, records: list) -> Path:
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def assert_notebook_records(records, source: Path) -> None:
    assert [record.doc_id for record in records] == ["1", "2"]
    assert [record.text for record in records] == [r["generated_cot"] for r in NOTEBOOK_RECORDS]
    for index, (record, original) in enumerate(zip(records, NOTEBOOK_RECORDS)):
        expected = {k: v for k, v in original.items() if k != "generated_cot"}
        assert {k: record.metadata[k] for k in expected} == expected
        assert record.metadata["source"] == str(source)
        assert record.metadata["source_index"] == index
        assert "generated_cot" not in record.metadata


# --- formats -----------------------------------------------------------------------------------


def test_json_round_trip(tmp_path):
    path = write_json(tmp_path / "corpus.json", NOTEBOOK_RECORDS)
    assert_notebook_records(load_corpus(path), path)


def test_json_accepts_str_path(tmp_path):
    path = write_json(tmp_path / "corpus.json", NOTEBOOK_RECORDS)
    assert_notebook_records(load_corpus(str(path)), path)


def test_jsonl_round_trip_skips_blank_lines(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text(json.dumps(NOTEBOOK_RECORDS[0]) + "\n\n" + json.dumps(NOTEBOOK_RECORDS[1]) + "\n")
    assert_notebook_records(load_corpus(path), path)


def test_json_file_written_by_dataset_to_json_is_read_as_jsonl(tmp_path):
    path = tmp_path / "corpus.json"
    datasets.Dataset.from_list(NOTEBOOK_RECORDS).to_json(str(path))  # JSON Lines, despite the name
    assert_notebook_records(load_corpus(path), path)


def test_parquet_round_trip(tmp_path):
    path = tmp_path / "corpus.parquet"
    pd.DataFrame(NOTEBOOK_RECORDS).to_parquet(path)
    assert_notebook_records(load_corpus(path), path)


def test_saved_dataset_round_trip(tmp_path):
    folder = tmp_path / "saved"
    datasets.Dataset.from_list(NOTEBOOK_RECORDS).save_to_disk(str(folder))
    records = load_corpus(folder)
    assert_notebook_records(records, folder)
    assert "source_split" not in records[0].metadata


def test_saved_dataset_dict_reads_train_split(tmp_path):
    folder = tmp_path / "saved_dict"
    other = [dict(NOTEBOOK_RECORDS[0], problem_id=99)]
    datasets.DatasetDict(
        {"test": datasets.Dataset.from_list(other), "train": datasets.Dataset.from_list(NOTEBOOK_RECORDS)}
    ).save_to_disk(str(folder))
    records = load_corpus(folder)
    assert_notebook_records(records, folder)
    assert {record.metadata["source_split"] for record in records} == {"train"}


def test_saved_dataset_dict_reads_its_only_split(tmp_path):
    folder = tmp_path / "saved_dict"
    datasets.DatasetDict({"validation": datasets.Dataset.from_list(NOTEBOOK_RECORDS)}).save_to_disk(str(folder))
    records = load_corpus(folder)
    assert_notebook_records(records, folder)
    assert records[0].metadata["source_split"] == "validation"


def test_text_field_is_used_when_there_is_no_generated_cot(tmp_path):
    path = write_jsonl(tmp_path / "corpus.jsonl", [{"text": "a trace", "doc_id": "d0"}])
    [record] = load_corpus(path)
    assert (record.doc_id, record.text) == ("d0", "a trace")
    assert "text" not in record.metadata


# --- generations (OpenR1-Math-220k) ------------------------------------------------------------


def assert_openr1_expansion(records, source: Path) -> None:
    assert [record.doc_id for record in records] == ["abc-123-g0", "abc-123-g1"]
    assert [record.text for record in records] == OPENR1_ROW["generations"]
    first, second = (record.metadata for record in records)
    assert (first["correctness_math_verify"], second["correctness_math_verify"]) == (True, False)
    assert (first["finish_reasons"], second["finish_reasons"]) == ("stop", "length")
    assert (first["generation_index"], second["generation_index"]) == (0, 1)
    for metadata in (first, second):
        assert (metadata["problem"], metadata["answer"], metadata["uuid"]) == ("Find x if 2x = 4.", "2", "abc-123")
        assert metadata["record_source"] == "olympiads"  # the row's own `source` field
        assert metadata["source"] == str(source)
        assert metadata["source_index"] == 0
        assert "generations" not in metadata and "messages" not in metadata


def test_generations_expand_to_one_document_each_json(tmp_path):
    path = write_json(tmp_path / "openr1.json", [OPENR1_ROW])
    assert_openr1_expansion(load_corpus(path), path)


def test_generations_expand_from_saved_dataset(tmp_path):
    folder = tmp_path / "openr1"
    datasets.DatasetDict({"train": datasets.Dataset.from_list([OPENR1_ROW])}).save_to_disk(str(folder))
    assert_openr1_expansion(load_corpus(folder), folder)


def test_generations_expand_from_parquet(tmp_path):
    path = tmp_path / "openr1.parquet"
    pd.DataFrame([OPENR1_ROW]).to_parquet(path)
    assert_openr1_expansion(load_corpus(path), path)


def test_per_generation_field_of_another_length_is_kept_whole(tmp_path):
    row = dict(OPENR1_ROW, correctness_math_verify=[True])
    records = load_corpus(write_json(tmp_path / "openr1.json", [row]))
    assert [record.metadata["correctness_math_verify"] for record in records] == [[True], [True]]


# --- doc ids and limit -------------------------------------------------------------------------


def test_doc_id_prefers_doc_id_then_uuid_then_problem_id_then_index(tmp_path):
    rows = [
        {"text": "a"},
        {"text": "b", "problem_id": 5},
        {"text": "c", "uuid": "u", "problem_id": 6},
        {"text": "d", "doc_id": "d", "uuid": "u2", "problem_id": 7},
    ]
    records = load_corpus(write_json(tmp_path / "c.json", rows))
    assert [record.doc_id for record in records] == ["0", "5", "u", "d"]


def test_repeated_ids_get_deterministic_suffixes(tmp_path):
    rows = [{"text": "a", "problem_id": 7}, {"text": "b", "problem_id": 7}, {"text": "c", "doc_id": "7-1"},
            {"text": "d", "problem_id": 7}]
    records = load_corpus(write_json(tmp_path / "c.json", rows))
    assert [record.doc_id for record in records] == ["7", "7-1", "7-1-1", "7-2"]
    assert len({record.doc_id for record in records}) == len(records)
    assert records[1].metadata["problem_id"] == 7


def test_limit_keeps_the_first_documents_with_the_same_ids(tmp_path):
    path = write_json(tmp_path / "openr1.json", [OPENR1_ROW, dict(OPENR1_ROW, uuid="def-456")])
    everything = load_corpus(path)
    assert len(everything) == 4
    assert load_corpus(path, limit=3) == everything[:3]
    with pytest.raises(CorpusError, match="limit"):
        load_corpus(path, limit=0)


# --- the real samples --------------------------------------------------------------------------


@pytest.mark.skipif(not SAMPLE_N10.exists(), reason="shared seed samples are not present")
@pytest.mark.parametrize("path, n", [(SAMPLE_N10, 10), (SAMPLE_N20, 20)])
def test_seed_samples(path, n):
    records = load_corpus(path)
    assert len(records) == n
    assert [record.doc_id for record in records] == [str(i) for i in range(1, n + 1)]
    for record in records:
        assert record.text.startswith("Solve this math problem step by step.")
        assert "</think>" in record.text
        assert SEED_FIELDS <= record.metadata.keys()
    assert sum(record.metadata["has_backtracking"] for record in records) == n // 2
    assert all(record.metadata["is_correct"] for record in records)


# --- errors ------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(CorpusError, match=r"nope\.json: no such file or folder"):
        load_corpus(path)


def test_missing_relative_file_that_looks_like_owner_name_is_not_a_hub_id():
    with pytest.raises(CorpusError, match=r"data/missing\.jsonl: no such file"):
        load_corpus("data/missing.jsonl")


def test_unknown_format_lists_the_supported_ones(tmp_path):
    path = tmp_path / "corpus.csv"
    path.write_text("a,b\n")
    with pytest.raises(CorpusError) as error:
        load_corpus(path)
    message = str(error.value)
    assert "corpus.csv" in message and "'.csv'" in message
    for supported in (".json", ".jsonl", ".parquet", "save_to_disk", "hub"):
        assert supported in message


def test_folder_that_is_not_a_saved_dataset(tmp_path):
    with pytest.raises(CorpusError, match="not one written by datasets' save_to_disk"):
        load_corpus(tmp_path)


def test_dataset_dict_without_train_or_single_split(tmp_path):
    folder = tmp_path / "two_splits"
    split = datasets.Dataset.from_list(NOTEBOOK_RECORDS)
    datasets.DatasetDict({"a": split, "b": split}).save_to_disk(str(folder))
    with pytest.raises(CorpusError, match=r"two_splits: holds splits a, b"):
        load_corpus(folder)


@pytest.mark.parametrize(
    "bad_record, problem",
    [
        ({"problem_id": 42, "problem_text": "q"}, "fields present: problem_id, problem_text"),
        ({"problem_id": 42, "generated_cot": "  "}, "'generated_cot' is empty"),
        ({"problem_id": 42, "text": 5}, "'text' is a int"),
        ({"problem_id": 42, "generations": []}, "'generations' is an empty list"),
        ({"problem_id": 42, "generations": ["ok", ""]}, "generation 1 of 'generations' is empty"),
    ],
)
def test_record_without_text_names_file_and_record(tmp_path, bad_record, problem):
    path = write_json(tmp_path / "corpus.json", [NOTEBOOK_RECORDS[0], bad_record])
    with pytest.raises(CorpusError) as error:
        load_corpus(path)
    message = str(error.value)
    assert message.startswith(f"{path}: record 1, id '42': no text")
    assert problem in message


def test_record_without_text_in_jsonl_names_the_line(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text(json.dumps(NOTEBOOK_RECORDS[0]) + "\n\n" + json.dumps({"uuid": "u-9"}) + "\n")
    with pytest.raises(CorpusError, match=r"corpus\.jsonl: line 3 \(record 1\), id 'u-9': no text"):
        load_corpus(path)


@pytest.mark.parametrize("suffix, content", [(".json", "[]"), (".jsonl", "\n\n")])
def test_empty_corpus(tmp_path, suffix, content):
    path = tmp_path / f"empty{suffix}"
    path.write_text(content)
    with pytest.raises(CorpusError, match=rf"empty{suffix}: the corpus is empty"):
        load_corpus(path)


def test_empty_parquet(tmp_path):
    path = tmp_path / "empty.parquet"
    pd.DataFrame({"text": pd.Series([], dtype=str)}).to_parquet(path)
    with pytest.raises(CorpusError, match=r"empty\.parquet: the corpus is empty"):
        load_corpus(path)


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_not_utf8_gives_the_byte_offset(tmp_path, suffix):
    path = tmp_path / f"latin1{suffix}"
    good = json.dumps(NOTEBOOK_RECORDS[1]).encode() + b"\n"
    bad = json.dumps({"text": "caf\u00e9"}, ensure_ascii=False).encode("latin-1")
    data = (b"[" + good.strip() + b",\n" + bad + b"]") if suffix == ".json" else good + bad + b"\n"
    path.write_bytes(data)
    offset = data.index(b"\xe9")
    with pytest.raises(CorpusError, match=rf"latin1\{suffix}: not UTF-8 text: byte offset {offset} is 0xe9"):
        load_corpus(path)


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(NOTEBOOK_RECORDS).encode())
    assert_notebook_records(load_corpus(path), path)


def test_malformed_json_gives_line_and_column(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"text": "a"},\n  {"text": "b",}\n]')
    with pytest.raises(CorpusError, match=r"broken\.json: malformed JSON at line 3, column 16"):
        load_corpus(path)


def test_malformed_jsonl_gives_the_line_number(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps({"text": "a"}) + "\n" + json.dumps({"text": "b"}) + '\n{"text": \n')
    with pytest.raises(CorpusError, match=r"broken\.jsonl: malformed JSON on line 3, column 10: Expecting value"):
        load_corpus(path)


def test_json_that_is_not_a_list(tmp_path):
    path = tmp_path / "object.json"
    path.write_text(json.dumps({"records": NOTEBOOK_RECORDS}, indent=2))
    with pytest.raises(CorpusError, match=r"object\.json: expected a JSON list of records .* found a JSON object"):
        load_corpus(path)


def test_record_that_is_not_an_object(tmp_path):
    path = write_json(tmp_path / "mixed.json", [NOTEBOOK_RECORDS[0], "just a string"])
    with pytest.raises(CorpusError, match=r"mixed\.json: record 1 is a JSON string, not an object"):
        load_corpus(path)


def test_file_that_is_not_parquet(tmp_path):
    path = tmp_path / "fake.parquet"
    path.write_text("not parquet")
    with pytest.raises(CorpusError, match=r"fake\.parquet: not a readable Parquet file"):
        load_corpus(path)


# --- the hub -----------------------------------------------------------------------------------

UNCACHED_HUB_ID = "no-such-owner-for-tests/no-such-corpus"


def assert_hub_unreachable_message(message: str) -> None:
    assert message.startswith(f"{UNCACHED_HUB_ID}: cannot reach the Hugging Face hub")
    assert "save_to_disk('no-such-corpus')" in message
    assert "pass its path" in message


def test_hub_id_while_offline_fails_fast_with_a_way_forward(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(CorpusError) as error:
        load_corpus(UNCACHED_HUB_ID)
    assert time.monotonic() - started < 10
    assert_hub_unreachable_message(str(error.value))


def test_hub_id_when_the_hub_is_unreachable_fails_fast(monkeypatch):
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", *corpus._PROXY_ENV_VARS):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(corpus, "_hub_endpoint", lambda: "http://127.0.0.1:1")  # nothing listens there
    started = time.monotonic()
    with pytest.raises(CorpusError) as error:
        load_corpus(UNCACHED_HUB_ID)
    assert time.monotonic() - started < 10
    assert_hub_unreachable_message(str(error.value))


def test_existing_path_wins_over_hub_id(tmp_path, monkeypatch):
    (tmp_path / "owner").mkdir()
    write_json(tmp_path / "owner" / "name", NOTEBOOK_RECORDS)  # a file literally called owner/name
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CorpusError, match=r"owner/name: unknown corpus format '\(no suffix\)'"):
        load_corpus("owner/name")
