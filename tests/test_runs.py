"""The run folder's API: its typed profile and the paths of its model, SAEs and database; reading its
corpus without the whole text column: the light listing, one document's text from the row group that
holds it, and the steering prompts a batch at a time."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from explorer import artifacts
from explorer.config import DEEPSEEK_R1_DISTILL_QWEN_1_5B, DEMO, CorpusSpec
from explorer.prompts import prompt_of_trace
from explorer.runs import (
    DOCUMENT_LIST_COLUMNS,
    RunFolderError,
    database_path,
    list_sae_ids,
    main_sae_id,
    model_source,
    read_corpus_prompts,
    read_document_list,
    read_document_text,
    read_document_texts,
    read_documents,
    read_profile,
    read_run_summary,
    sae_dir,
)
from precompute.corpus_stage import DOCUMENTS_ROW_GROUP_ROWS, run_corpus_stage

N_TRACES = 2 * DOCUMENTS_ROW_GROUP_ROWS + 10  # three row groups


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "synthetic"
    run_corpus_stage(CorpusSpec(source="synthetic", n_traces=N_TRACES, seed=0), run)
    return run


def test_the_corpus_is_written_in_small_row_groups(run_dir):
    parquet = pq.ParquetFile(run_dir / artifacts.CORPUS_DIR / artifacts.DOCUMENTS_FILE)
    assert parquet.num_row_groups == 3
    assert parquet.metadata.row_group(0).num_rows == DOCUMENTS_ROW_GROUP_ROWS


def test_the_listing_has_no_text(run_dir):
    listing = read_document_list(run_dir)
    assert tuple(listing.columns) == DOCUMENT_LIST_COLUMNS
    assert "text" not in listing.columns and "metadata_json" not in listing.columns
    full = read_documents(run_dir)
    pd.testing.assert_frame_equal(listing, full[list(DOCUMENT_LIST_COLUMNS)])


def test_one_document_is_read_alone_and_exactly(run_dir):
    texts = read_documents(run_dir, columns=["doc_id", "text"]).set_index("doc_id")["text"]
    for doc_id in (texts.index[0], texts.index[DOCUMENTS_ROW_GROUP_ROWS + 3], texts.index[-1]):  # three row groups
        assert read_document_text(run_dir, doc_id) == texts[doc_id]
    assert read_document_text(run_dir, "no-such-doc") is None
    wanted = [texts.index[-1], texts.index[1], "no-such-doc"]
    assert read_document_texts(run_dir, wanted) == {d: texts[d] for d in wanted[:2]}


def test_corpus_prompts_are_read_in_batches(run_dir):
    texts = read_documents(run_dir, columns=["text"])["text"]
    assert read_corpus_prompts(run_dir) == [prompt_of_trace(t) for t in texts]
    assert read_corpus_prompts(run_dir, max_documents=300) == [prompt_of_trace(t) for t in texts[:300]]


def test_the_run_folder_names_its_model_saes_and_database(tmp_path: Path):
    run = tmp_path / "run"
    assert model_source(run, DEMO) == run / artifacts.MODEL_DIR  # the demo runs the model train-lm wrote
    assert model_source(run, DEEPSEEK_R1_DISTILL_QWEN_1_5B) == "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    assert sae_dir(run, "s") == run / artifacts.SAES_DIR / "s"
    assert database_path(run) == run / artifacts.DATABASE_FILE
    assert list_sae_ids(run) == []
    (sae_dir(run, "b")).mkdir(parents=True)
    (sae_dir(run, "b") / "cfg.json").write_text("{}")
    (sae_dir(run, "a")).mkdir()  # no sae_lens config: not an SAE
    assert list_sae_ids(run) == ["b"]


def write_sae_configs(run: Path, hooks: dict[str, str]) -> None:
    """An SAE folder per id with only a sae_lens cfg.json naming its hook (enough to list and choose)."""
    for sae_id, hook in hooks.items():
        sae_dir(run, sae_id).mkdir(parents=True)
        (sae_dir(run, sae_id) / "cfg.json").write_text(json.dumps({"metadata": {"hook_name": hook}}))


def test_the_main_sae_is_the_one_at_the_profiles_hook(tmp_path: Path):
    """A run with SAEs at further hooks opens on the profile's, though another sorts first."""
    run = tmp_path / "run"
    assert main_sae_id(run) is None
    write_sae_configs(run, {"blocks.0.hook_mlp_out-sae": "blocks.0.hook_mlp_out",
                            "blocks.1.hook_mlp_out-sae": "blocks.1.hook_mlp_out"})
    assert main_sae_id(run) == "blocks.0.hook_mlp_out-sae"  # no profile.json: the first
    (run / artifacts.PROFILE_FILE).write_text(DEMO.to_json())  # hook blocks.1.hook_mlp_out
    assert main_sae_id(run) == "blocks.1.hook_mlp_out-sae"
    assert main_sae_id(run, "blocks.0.hook_mlp_out") == "blocks.0.hook_mlp_out-sae"
    assert main_sae_id(run, "blocks.5.hook_mlp_out") == "blocks.0.hook_mlp_out-sae"  # none there: the first
    assert main_sae_id(run, sae_ids=["blocks.0.hook_mlp_out-sae"]) == "blocks.0.hook_mlp_out-sae"
    (sae_dir(run, "blocks.1.hook_mlp_out-sae") / "cfg.json").write_text("{not json")
    assert main_sae_id(run) == "blocks.0.hook_mlp_out-sae"  # an unreadable config names no hook


def test_the_profile_reads_back_typed(tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(RunFolderError, match="not a run folder"):
        read_profile(run)
    profile = dataclasses.replace(DEMO, n_ctx=64)
    (run / artifacts.PROFILE_FILE).write_text(profile.to_json())
    assert read_profile(run) == profile
    assert read_run_summary(run).profile == profile
    (run / artifacts.PROFILE_FILE).write_text(json.dumps({"name": "x"}))
    with pytest.raises(RunFolderError, match="does not hold a profile"):
        read_profile(run)


def test_the_summary_stamp_moves_when_the_corpus_is_rebuilt_and_profile_json_is_not(tmp_path):
    """The app caches a run's summary under `run_summary_stamp`: profile.json no longer changes on every
    command, so a corpus rebuilt with the same settings must change the stamp by itself."""
    from explorer.runs import run_summary_stamp
    from precompute.cli import save_profile

    run = tmp_path / "run"
    with pytest.raises(OSError):  # not a run folder yet: the app shows its error
        run_summary_stamp(run)
    spec = CorpusSpec(source="synthetic", n_traces=20, seed=0)
    run_corpus_stage(spec, run)
    save_profile(DEMO, run)
    before = run_summary_stamp(run)
    profile_bytes = (run / artifacts.PROFILE_FILE).read_bytes()
    run_corpus_stage(spec, run, force=True)
    assert run_summary_stamp(run) != before
    assert (run / artifacts.PROFILE_FILE).read_bytes() == profile_bytes
