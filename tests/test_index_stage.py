"""The `index` and `merge` stages end to end on a miniature run (a tiny Qwen2, a random SAE, a small
synthetic corpus): the DuckDB tables against brute force, shard-and-merge against a single run, the
read API, and the bad inputs that must fail with a message and leave the database as it was."""

from __future__ import annotations

import dataclasses
import math
import shutil

import duckdb
import numpy as np
import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig

from explorer import artifacts
from explorer.config import CorpusSpec, IndexSpec, Profile
from explorer.database import DatabaseError
from explorer.feature_db import (
    NoIndexError,
    UnknownFeatureError,
    find_features_by_example_token,
    find_features_by_logit_token,
    read_candidates,
    read_feature_card,
    read_index_run,
    read_lead_lag_profiles,
    read_token_dependence,
    read_token_stats,
    read_vocabulary,
)
from explorer.feature_index import IndexInputError, encode_windows, make_windows
from explorer.model_loading import load_model
from explorer.runs import database_path
from explorer.schema import FEATURE_TABLE_NAMES
from precompute.corpus_stage import run_corpus_stage
from precompute.index_stage import corpus_documents, load_inputs, merge_partials, run_index
from tests.hub_fixtures import build_mini_qwen2_dir, mini_qwen2_dir  # noqa: F401  (fixture)

HOOK, STOP_AT_LAYER, D_SAE, SAE_ID = "blocks.1.hook_resid_post", 2, 48, "mini-sae"  # blocks 0 and 1 run
INDEX = IndexSpec(top_k=5, context_before=6, context_after=3, token_capacity=512)  # the whole mini vocabulary: exact
TIMING_COLUMNS = {"seconds", "tokens_per_second", "built_at", "n_shards", "config_json"}


def _save_random_sae(folder, d_in: int, seed: int = 0) -> None:
    torch.manual_seed(seed)
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=D_SAE))
    with torch.no_grad():
        sae.W_enc.normal_()
        sae.b_enc.fill_(-1.0)  # sparse-ish: most features off on most tokens
    sae.save_model(folder)


@pytest.fixture(scope="module")
def mini_run(tmp_path_factory, mini_qwen2_dir):  # noqa: F811
    run_dir = tmp_path_factory.mktemp("index-run")
    corpus = CorpusSpec(source="synthetic", n_traces=24, seed=0)
    run_corpus_stage(corpus, run_dir)
    profile = Profile(name="mini", model=str(mini_qwen2_dir), hook_name=HOOK, n_ctx=64, corpus=corpus, index=INDEX)
    _save_random_sae(run_dir / artifacts.SAES_DIR / SAE_ID, d_in=64)
    run_index(profile, run_dir, batch_size=4, progress=False)
    return profile, run_dir


@pytest.fixture(scope="module")
def dense(mini_run):
    """Brute force: every window through the model and SAE on its own, as dense [T, F] matrices."""
    profile, run_dir = mini_run
    model = load_model(profile.model, device="cpu")
    from explorer.sae_loading import load_sae

    sae = load_sae(run_dir / artifacts.SAES_DIR / SAE_ID).sae
    windows = make_windows(model.tokenizer, corpus_documents(run_dir), profile.n_ctx, progress=False)
    acts = []
    for w in windows:
        a_TF = encode_windows(model, sae, HOOK, STOP_AT_LAYER, torch.from_numpy(w.token_ids)[None])[0]
        a_TF[~torch.from_numpy(w.valid)] = 0
        acts.append(a_TF)
    return windows, acts


def _table(con, table: str) -> list[tuple]:
    columns = [c[0] for c in con.execute(f"DESCRIBE {table}").fetchall() if c[0] not in TIMING_COLUMNS]
    return con.execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY ALL").fetchall()


def assert_same_index(db, reference_db) -> None:
    """Every feature table and the vocabulary, row for row (timings aside)."""
    got, want = duckdb.connect(str(db), read_only=True), duckdb.connect(str(reference_db), read_only=True)
    try:
        for table in (*FEATURE_TABLE_NAMES, "vocabulary"):
            assert _table(got, table) == _table(want, table), table
    finally:
        got.close()
        want.close()


def test_top_examples_and_stats_equal_brute_force(mini_run, dense):
    profile, run_dir = mini_run
    windows, acts = dense
    db = database_path(run_dir)
    window_max_WF = torch.stack([a.max(0).values for a in acts])
    expected_FK = window_max_WF.topk(INDEX.top_k, dim=0).values.T
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute(
        "SELECT feature_id, rank, activation, context_id, position, first_position, token_ids, activations "
        "FROM feature_top_examples WHERE sae_id = ? ORDER BY feature_id, rank", [SAE_ID]
    ).fetchall()
    got_FK = torch.zeros_like(expected_FK)
    by_context = {w.context_id: (w, a) for w, a in zip(windows, acts)}
    clipped = 0
    for feature, rank, value, context, position, first, token_ids, context_acts in rows:
        got_FK[feature, rank] = value
        w, a_TF = by_context[context]
        assert value == pytest.approx(float(a_TF[position, feature]), abs=1e-5)
        assert value == pytest.approx(float(a_TF[:, feature].max()), abs=1e-5)  # the window's maximum
        # A context is a stretch of the document: a later window's BOS (position 0) is not in it.
        assert first == max(int(w.bos_prefixed), position - INDEX.context_before)
        clipped += w.bos_prefixed and position - INDEX.context_before < 1
        assert token_ids == w.token_ids[first : position + INDEX.context_after + 1].tolist()
        assert context_acts[position - first] == pytest.approx(value, abs=1e-6)
        np.testing.assert_allclose(context_acts, a_TF[first : position + INDEX.context_after + 1, feature], atol=1e-5)
    assert clipped  # the corpus has such examples
    fired = expected_FK > 0
    torch.testing.assert_close(got_FK[fired], expected_FK[fired], atol=1e-5, rtol=1e-5)

    all_TF = torch.cat(acts)
    valid = np.concatenate([w.valid for w in windows])
    stats = con.execute(
        "SELECT feature_id, max_activation, active_count, density FROM feature_activation_stats WHERE sae_id = ? "
        "ORDER BY feature_id", [SAE_ID]
    ).fetchall()
    valid_TF = all_TF[torch.from_numpy(valid)]
    for feature, max_activation, active_count, density in stats:
        assert max_activation == pytest.approx(float(valid_TF[:, feature].max()), abs=1e-5)
        assert active_count == int((valid_TF[:, feature] > 0).sum())
        assert density == pytest.approx(active_count / valid.sum())
    run = read_index_run(db, SAE_ID)
    assert run["n_tokens"] == sum(len(w.token_ids) for w in windows) and run["n_valid_tokens"] == int(valid.sum())
    con.close()


def test_shards_merge_into_the_single_run(mini_run, tmp_path):
    profile, run_dir = mini_run
    sharded = tmp_path / "sharded"
    shutil.copytree(run_dir, sharded, ignore=shutil.ignore_patterns("explorer.duckdb*"))
    for i in range(3):
        run_index(profile, sharded, batch_size=4, shard=(i, 3), progress=False)
    assert not database_path(sharded).exists()  # a shard writes only its partial
    merge_partials(profile, sharded, progress=False)
    assert_same_index(database_path(sharded), database_path(run_dir))
    merged = duckdb.connect(str(database_path(sharded)), read_only=True)
    assert merged.execute("SELECT n_shards FROM feature_index_runs").fetchone()[0] == 3
    merged.close()


def test_contexts_kept_during_the_pass_equal_a_second_forwards(mini_run):
    """The index keeps each example's and each sample's context while the pass runs (no second forward
    over the corpus). Check them against the independent route: re-forward the batches that hold them
    (`fetch_example_contexts`) and read the same positions, bit for bit."""
    from explorer.feature_index import contexts_from_values, fetch_example_contexts, run_index_pass
    from precompute.index_stage import select_examples

    profile, run_dir = mini_run
    inputs = load_inputs(profile, run_dir, None, None, progress=False)
    acc = run_index_pass(
        inputs.model, inputs.sae, HOOK, STOP_AT_LAYER, inputs.windows, inputs.config, batch_size=4, progress=False
    ).accumulators
    totals, selection = select_examples(acc)
    cut = {"before": INDEX.context_before, "after": INDEX.context_after}
    for kept in (totals.examples, selection.samples):
        assert kept.feature_N.numel() >= 15
        ours = contexts_from_values(inputs.windows, kept.context_id_N, kept.position_N, kept.context_values_NL, **cut)
        again = fetch_example_contexts(
            inputs.model, inputs.sae, HOOK, STOP_AT_LAYER, inputs.windows, kept.feature_N, kept.context_id_N,
            kept.position_N, batch_size=4, progress=False, **cut,
        )
        np.testing.assert_array_equal(ours.first_position_N, again.first_position_N)
        assert ours.token_ids == again.token_ids
        assert ours.activations == again.activations  # exactly: the same batch, the same floats
        assert any(any(a > 0 for a in acts[:-1]) for acts in ours.activations)  # not just the example itself


def test_a_partial_saved_before_contexts_were_kept_is_refused_clearly(mini_run, tmp_path):
    profile, run_dir = mini_run
    old = tmp_path / "old"
    shutil.copytree(run_dir, old, ignore=shutil.ignore_patterns("explorer.duckdb*"))
    for i in range(2):
        run_index(profile, old, batch_size=4, shard=(i, 2), progress=False)
    path = old / "index_partials" / SAE_ID / "shard-1-of-2.pt"
    part = torch.load(path, weights_only=True)
    part["state"] = {k: v for k, v in part["state"].items() if "ctx_" not in k}  # as an older version wrote it
    torch.save(part, path)
    with pytest.raises(Exception, match="older version.*index --shard"):
        merge_partials(profile, old, progress=False)
    assert not database_path(old).exists()


def test_a_missing_shard_is_refused(mini_run, tmp_path):
    profile, run_dir = mini_run
    partial = tmp_path / "partial"
    shutil.copytree(run_dir, partial, ignore=shutil.ignore_patterns("explorer.duckdb*"))
    run_index(profile, partial, batch_size=4, shard=(0, 2), progress=False)
    with pytest.raises(Exception, match="exactly shards 0..1"):
        merge_partials(profile, partial, progress=False)


def test_the_read_api(mini_run):
    profile, run_dir = mini_run
    db = database_path(run_dir)
    ranked = read_candidates(db, SAE_ID, "auroc_notebook", limit=10)
    assert list(ranked["score"]) == sorted(ranked["score"], reverse=True) and len(ranked) == 10
    by_group = read_candidates(db, SAE_ID, group="correction", limit=5)
    assert list(by_group["score"]) == sorted(by_group["score"], reverse=True)
    dense_only = read_candidates(db, SAE_ID, "reason_score", min_density=0.2, hide_token_detectors=True, limit=D_SAE)
    assert (dense_only["density"] >= 0.2).all() and not dense_only["is_token_detector"].any()
    # The best candidate that fires often enough to fill its top examples (with a random SAE, dead
    # features' 0.5 can outrank every live one).
    feature = int(read_candidates(db, SAE_ID, "auroc_notebook", min_density=0.01, limit=1)["feature_id"][0])
    card = read_feature_card(db, SAE_ID, feature)
    assert len(card.top_examples) == INDEX.top_k and card.top_examples["activation"].is_monotonic_decreasing
    assert card.histogram["count"].sum() == read_index_run(db, SAE_ID)["n_valid_tokens"]
    assert set(card.logit_lens["direction"]) == {"top", "bottom"} and card.logit_lens["token"].notna().all()
    assert len(card.neighbours) == 10 and feature not in set(card.neighbours["neighbour_id"])
    assert list(card.lead_lag["relative_position"]) == list(range(-INDEX.context_before, INDEX.context_after + 1))
    assert len(card.group_auroc) == 7 and len(card.reason_word_shares) == 10
    assert (card.interval_samples["activation"] >= card.interval_samples["interval_lower"] - 1e-9).all()
    profiles = read_lead_lag_profiles(db, SAE_ID, [feature, 0])
    assert set(profiles["feature_id"]) == {feature, 0}

    vocabulary = read_vocabulary(db)
    top_token = card.logit_lens[card.logit_lens["direction"] == "top"].iloc[0]
    assert vocabulary[int(top_token["token_id"])] == top_token["token"]
    found = find_features_by_logit_token(db, SAE_ID, top_token["token"])
    assert feature in set(found["feature_id"])
    example = card.top_examples.iloc[0]
    peak = vocabulary[int(example["token_ids"][example["position"] - example["first_position"]])]
    assert feature in set(find_features_by_example_token(db, SAE_ID, peak, limit=D_SAE)["feature_id"])

    with pytest.raises(UnknownFeatureError, match="ids run from 0 to 47"):
        read_feature_card(db, SAE_ID, D_SAE)
    with pytest.raises(UnknownFeatureError, match="not a feature id"):
        read_feature_card(db, SAE_ID, "seven")
    with pytest.raises(NoIndexError, match="precompute index"):
        read_feature_card(db, "other-sae", 0)


def test_bad_inputs_fail_clearly_and_leave_the_database(mini_run, tmp_path, capsys):
    profile, run_dir = mini_run
    work = tmp_path / "work"
    shutil.copytree(run_dir, work)
    db = database_path(work)
    before = db.read_bytes()

    run_index(profile, work, batch_size=4, max_tokens=10**9, progress=False)
    assert "more than the corpus has: using all" in capsys.readouterr().out

    with pytest.raises(IndexInputError, match="fewer than top-k"):
        run_index(profile, work, max_tokens=50, progress=False)

    _save_random_sae(work / artifacts.SAES_DIR / "wrong-width", d_in=32)
    with pytest.raises(Exception, match="d_in mismatch"):
        run_index(profile, work, sae_id="wrong-width", progress=False)
    with pytest.raises(Exception, match="No SAE 'missing'"):
        run_index(profile, work, sae_id="missing", progress=False)

    from explorer.feature_aggregates import IndexConfig
    from explorer.feature_index import run_index_pass

    with pytest.raises(IndexInputError, match="corpus is empty"):
        run_index_pass(load_model(profile.model, device="cpu"), None, HOOK, STOP_AT_LAYER, [], IndexConfig(D_SAE, 512))
    con = duckdb.connect(str(db))
    con.execute("UPDATE schema_info SET schema_version = 1")
    con.close()
    old = db.read_bytes()
    with pytest.raises(DatabaseError, match="schema version 1"):
        run_index(profile, work, batch_size=4, progress=False)
    assert db.read_bytes() == old  # nothing half-written
    with pytest.raises(DatabaseError, match="schema version 1"):
        read_candidates(db, SAE_ID)
    assert before  # the original run's file was only copied, never touched


def test_build_skips_a_current_index_and_redoes_a_changed_one(mini_run):
    from precompute.index_stage import index_is_current

    profile, run_dir = mini_run
    assert index_is_current(profile, run_dir)
    for index in (dataclasses.replace(INDEX, n_tokens=1000), dataclasses.replace(INDEX, top_k=6),
                  dataclasses.replace(INDEX, token_capacity=64)):
        assert not index_is_current(dataclasses.replace(profile, index=index), run_dir)


def test_an_interrupted_index_resumes_and_ends_as_an_uninterrupted_one(mini_run, tmp_path, capsys):
    from precompute.index_stage import progress_path

    profile, run_dir = mini_run
    work = tmp_path / "interrupted"
    shutil.copytree(run_dir, work, ignore=shutil.ignore_patterns("explorer.duckdb*"))
    batches = []

    def stop_after_five() -> bool:  # checked before each batch: interrupt as Ctrl-C would
        batches.append(1)
        return len(batches) > 5

    with pytest.raises(KeyboardInterrupt):  # progress saved after every batch
        run_index(profile, work, batch_size=4, progress=False, save_every_s=1e-9, should_stop=stop_after_five)
    saved = progress_path(work, SAE_ID, (0, 1))
    assert saved.is_file() and not database_path(work).exists()
    capsys.readouterr()
    run_index(profile, work, batch_size=4, progress=False)
    out = capsys.readouterr().out
    assert "resuming from" in out and ": 5 batches" in out
    assert not saved.exists()  # done: the progress is gone
    assert_same_index(database_path(work), database_path(run_dir))


def test_progress_saved_for_other_settings_is_not_resumed(mini_run, tmp_path, capsys):
    from precompute.index_stage import progress_path

    profile, run_dir = mini_run
    work = tmp_path / "other"
    shutil.copytree(run_dir, work, ignore=shutil.ignore_patterns("explorer.duckdb*"))
    with pytest.raises(KeyboardInterrupt):
        run_index(profile, work, batch_size=4, progress=False, save_every_s=1e-9, should_stop=lambda: progress_path(work, SAE_ID, (0, 1)).exists())
    capsys.readouterr()
    run_index(profile, work, batch_size=2, progress=False)  # another batch plan: start again
    out = capsys.readouterr().out
    assert "removing progress" in out and "resuming" not in out


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_reduced_precision_index_stays_within_tolerance_of_float32(mini_run, tmp_path, dtype):
    """Tolerance: per feature, the largest activation within 1% of the largest of all features of
    float32's (a 16-bit float keeps 3 significant digits at best), so is each of its top examples' value,
    and the backtracking AUROC is within 0.02."""
    from precompute.index_stage import index_is_current

    profile, run_dir = mini_run
    work = tmp_path / dtype
    shutil.copytree(run_dir, work, ignore=shutil.ignore_patterns("explorer.duckdb*"))
    reduced = dataclasses.replace(profile, dtype=dtype)
    run_index(reduced, work, batch_size=4, progress=False)
    assert index_is_current(reduced, work) and not index_is_current(profile, work)  # a dtype is part of an index

    def read(db, sql):
        con = duckdb.connect(str(db), read_only=True)
        try:
            return con.execute(sql, [SAE_ID]).fetchall()
        finally:
            con.close()

    stats = "SELECT feature_id, max_activation FROM feature_activation_stats WHERE sae_id = ? ORDER BY feature_id"
    full, low = dict(read(database_path(run_dir), stats)), dict(read(database_path(work), stats))
    assert set(full) == set(low)
    scale = max(full.values())
    for feature, value in full.items():
        assert abs(low[feature] - value) <= 0.01 * scale, (feature, low[feature], value, scale)
    scores = "SELECT feature_id, auroc_notebook FROM feature_backtracking_scores WHERE sae_id = ? ORDER BY feature_id"
    for (feature, a), (_, b) in zip(read(database_path(run_dir), scores), read(database_path(work), scores)):
        assert abs(a - b) <= 0.02, feature
    # Every rank of every feature's top examples: the same values, up to the tolerance (which window
    # wins between near-ties may change).
    examples = "SELECT feature_id, rank, activation FROM feature_top_examples WHERE sae_id = ? ORDER BY feature_id, rank"
    full_top, low_top = read(database_path(run_dir), examples), read(database_path(work), examples)
    assert [row[:2] for row in full_top] == [row[:2] for row in low_top] and len(full_top) >= 3 * INDEX.top_k
    for (feature, rank, a), (_, _, b) in zip(full_top, low_top):
        assert abs(a - b) <= 0.01 * scale, (feature, rank)


def test_an_sae_retrained_under_the_same_id_makes_its_index_stale(mini_run, tmp_path):
    from precompute.index_stage import index_is_current

    profile, run_dir = mini_run
    retrained = tmp_path / "retrained"
    shutil.copytree(run_dir, retrained)
    assert index_is_current(profile, retrained)
    _save_random_sae(retrained / artifacts.SAES_DIR / SAE_ID, d_in=64, seed=1)
    assert not index_is_current(profile, retrained)


def test_token_statistics_equal_brute_force(mini_run, dense):
    """Top tokens by mean activation, concentration and entropy against sums over the dense activations
    of the same windows (the sketch holds the whole mini vocabulary, so it is exact)."""
    profile, run_dir = mini_run
    windows, acts = dense
    db = database_path(run_dir)
    valid = torch.from_numpy(np.concatenate([w.valid for w in windows]))
    ids = torch.from_numpy(np.concatenate([w.token_ids for w in windows]))[valid]
    acts_NF = torch.cat(acts)[valid].double()
    V = int(ids.max()) + 1
    count_V = torch.bincount(ids, minlength=V)
    mass_FV = torch.zeros(D_SAE, V, dtype=torch.float64).index_add_(1, ids, acts_NF.T.contiguous())
    dependence = read_token_dependence(db, SAE_ID).set_index("feature_id")
    stats = read_token_stats(db, SAE_ID)
    assert len(dependence) == D_SAE and dependence["exact"].all()
    top = stats[stats["rank"] == 0].set_index("feature_id")
    assert len(top) >= 3 and dependence["n_tokens_tracked"].max() > INDEX.token_top_k  # the random SAE is sparse
    vocabulary = read_vocabulary(db)
    for f in range(D_SAE):
        eligible = torch.nonzero((mass_FV[f] > 0) & (count_V >= INDEX.token_min_count)).flatten()
        mean = mass_FV[f, eligible] / count_V[eligible]
        rows = stats[stats["feature_id"] == f]
        assert len(rows) == min(len(eligible), INDEX.token_top_k)
        if rows.empty:
            continue
        best = int(eligible[int(torch.argmax(mean))])
        assert top.loc[f, "token_id"] == best and top.loc[f, "token"] == vocabulary[best]
        assert top.loc[f, "mean_activation"] == pytest.approx(float(mass_FV[f, best] / count_V[best]), abs=1e-5)
        token_ids = torch.from_numpy(rows["token_id"].to_numpy(dtype=np.int64, copy=True))
        assert list(rows["token_count"]) == count_V[token_ids].tolist()
        np.testing.assert_allclose(rows["activation_sum"], mass_FV[f, token_ids], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(rows["mean_activation"], mean.sort(descending=True).values[: len(rows)], rtol=1e-5)
        total = float(mass_FV[f].sum())
        p = mass_FV[f][mass_FV[f] > 0] / total
        entropy = float(-(p * p.log()).sum() / math.log(len(p))) if len(p) > 1 else 0.0
        row = dependence.loc[f]
        assert row["activation_mass"] == pytest.approx(total, rel=1e-5)
        assert row["concentration"] == pytest.approx(float(mass_FV[f, token_ids].sum()) / total, rel=1e-5)
        assert row["normalized_entropy"] == pytest.approx(entropy, rel=1e-5, abs=1e-9)
        assert row["n_tokens_tracked"] == len(p) and row["top_k"] == len(rows) and row["sketch_error"] == 0


def test_an_index_without_token_statistics_still_reads(mini_run, tmp_path):
    """An index built before the token tables: the readers and the card give empty token statistics."""
    profile, run_dir = mini_run
    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    con = duckdb.connect(str(database_path(old)))
    con.execute("DROP TABLE feature_token_stats")
    con.execute("DROP TABLE feature_token_dependence")
    con.close()
    db = database_path(old)
    feature = int(read_token_stats(database_path(run_dir), SAE_ID)["feature_id"].iloc[0])  # one that fires
    assert read_token_stats(db, SAE_ID).empty and read_token_dependence(db, SAE_ID, [feature]).empty
    card = read_feature_card(db, SAE_ID, feature)
    assert card.token_stats.empty and card.token_dependence == {} and not card.top_examples.empty


def test_build_redoes_an_index_whose_windows_were_cut_without_bos(mini_run, tmp_path):
    """An index from before every window started with BOS (no `windowing` in its configuration)."""
    import json

    from precompute.index_stage import index_is_current

    profile, run_dir = mini_run
    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    con = duckdb.connect(str(database_path(old)))
    config = json.loads(con.execute("SELECT config_json FROM feature_index_runs").fetchone()[0])
    del config["windowing"]
    con.execute("UPDATE feature_index_runs SET config_json = ?", [json.dumps(config)])
    con.close()
    assert not index_is_current(profile, old)


def test_the_forward_stops_right_after_the_hooks_block(tmp_path):
    """On a 3-layer model with the SAE at block 1, the index's passes never run block 2, and give what
    the whole model gives."""
    from explorer.feature_index import fetch_example_contexts, run_index_pass

    model_dir = build_mini_qwen2_dir(tmp_path / "model", n_layers=3)
    run_dir = tmp_path / "run"
    corpus = CorpusSpec(source="synthetic", n_traces=8, seed=0)
    run_corpus_stage(corpus, run_dir)
    profile = Profile(name="mini3", model=str(model_dir), hook_name=HOOK, n_ctx=64, corpus=corpus, index=INDEX)
    _save_random_sae(run_dir / artifacts.SAES_DIR / SAE_ID, d_in=64)
    inputs = load_inputs(profile, run_dir, None, None, progress=False)
    assert inputs.model.cfg.n_layers == 3 and inputs.stop_at_layer == 2
    block_2_runs = []
    handle = inputs.model.blocks[2].register_forward_hook(lambda *_: block_2_runs.append(1))
    try:
        def index_pass(stop_at_layer: int):
            acc = run_index_pass(
                inputs.model, inputs.sae, HOOK, stop_at_layer, inputs.windows, inputs.config, batch_size=4, progress=False
            ).accumulators
            ex = acc.finalise().examples
            contexts = fetch_example_contexts(
                inputs.model, inputs.sae, HOOK, stop_at_layer, inputs.windows, ex.feature_N, ex.context_id_N,
                ex.position_N, before=INDEX.context_before, after=INDEX.context_after, batch_size=4, progress=False,
            )
            return acc.state_dict(), contexts

        state, contexts = index_pass(inputs.stop_at_layer)
        assert not block_2_runs
        whole_state, whole_contexts = index_pass(inputs.model.cfg.n_layers)
        assert block_2_runs  # the hook does see block 2 when it runs
    finally:
        handle.remove()
    assert state.keys() == whole_state.keys()
    for key in state:
        assert torch.equal(state[key], whole_state[key]), key
    assert contexts.token_ids == whole_contexts.token_ids and contexts.activations == whole_contexts.activations


# --- reading the corpus a batch at a time -----------------------------------------------------------


def _read_whole_corpus(run_dir) -> list:
    """The corpus as the index read it before it read in batches: every document's text at once."""
    from explorer.feature_index import CorpusDocument
    from explorer.labels import PhraseSpan
    from explorer.runs import read_documents, read_phrases

    docs = read_documents(run_dir, columns=["doc_id", "text", "has_backtracking"])
    spans: dict = {}
    for row in read_phrases(run_dir).itertuples(index=False):
        spans.setdefault(row.doc_id, []).append(PhraseSpan(int(row.start), int(row.end), row.group, row.phrase))
    return [
        CorpusDocument(doc_id, text, sorted(spans.get(doc_id, [])), bool(flag))
        for doc_id, text, flag in zip(docs["doc_id"], docs["text"], docs["has_backtracking"])
    ]


def _same_windows(got, want) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert (a.context_id, a.doc_id, a.token_offset, a.doc_has_backtracking, a.bos_prefixed) == (
            b.context_id, b.doc_id, b.token_offset, b.doc_has_backtracking, b.bos_prefixed)
        for field in ("token_ids", "valid", "group_ids", "phrase_start"):
            assert np.array_equal(getattr(a, field), getattr(b, field)), (a.context_id, field)


@pytest.fixture(scope="module")
def large_corpora(tmp_path_factory):
    """A corpus of three tokenising chunks' worth of documents, and a balanced one (its phrases file is
    not in document order)."""
    from explorer.feature_index import TOKENISE_CHUNK

    root = tmp_path_factory.mktemp("large")
    plain, balanced = root / "plain", root / "balanced"
    run_corpus_stage(CorpusSpec(source="synthetic", n_traces=2 * TOKENISE_CHUNK + 200, seed=1), plain)
    run_corpus_stage(CorpusSpec(source="synthetic", n_traces=600, seed=2, balanced=300), balanced)
    return plain, balanced


@pytest.mark.parametrize("max_tokens", [None, 20_000, 150_000])
def test_windows_read_in_batches_equal_those_of_the_whole_corpus(large_corpora, mini_qwen2_dir, max_tokens):  # noqa: F811
    from explorer.feature_index import limit_tokens
    from explorer.model_loading import load_tokenizer
    from explorer.runs import read_phrases
    from precompute.index_stage import CorpusReader

    tokenizer = load_tokenizer(mini_qwen2_dir)

    def windows(documents) -> list:
        return limit_tokens(make_windows(tokenizer, documents, 64, progress=False, max_tokens=max_tokens), max_tokens)[0]

    for run_dir in large_corpora:
        whole = _read_whole_corpus(run_dir)
        assert sum(len(d.spans) for d in whole) > 0
        for batch_rows in (256, 7):
            _same_windows(windows(CorpusReader(run_dir, batch_rows=batch_rows)), windows(whole))
    # The balanced corpus's phrases are not in its documents' order: the reader waits for them.
    _, balanced = large_corpora
    phrase_docs = list(dict.fromkeys(read_phrases(balanced)["doc_id"]))
    assert phrase_docs != [d.doc_id for d in _read_whole_corpus(balanced) if d.spans]


def test_the_index_reads_no_more_of_the_corpus_than_its_budget_needs(large_corpora, mini_qwen2_dir):  # noqa: F811
    from explorer.feature_index import TOKENISE_CHUNK
    from explorer.model_loading import load_tokenizer
    from precompute.index_stage import CorpusReader

    tokenizer = load_tokenizer(mini_qwen2_dir)
    plain, _ = large_corpora
    n_documents = 2 * TOKENISE_CHUNK + 200
    for max_tokens, chunks in ((20_000, 1), (150_000, 2), (None, 3)):
        reader = CorpusReader(plain, batch_rows=64)
        assert len(reader) == n_documents and reader.rows_read == 0  # counting read no rows
        windows = make_windows(tokenizer, reader, 64, progress=False, max_tokens=max_tokens)
        assert len({w.doc_id for w in windows}) == min(chunks * TOKENISE_CHUNK, n_documents)
        # Whole batches of 64 rows, up to the last chunk's last document, and not one batch more.
        assert reader.rows_read == min(-(-chunks * TOKENISE_CHUNK // 64) * 64, n_documents), max_tokens
    assert reader.rows_read == n_documents  # without a budget, every document, a batch at a time


def _exact_auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """AUROC by brute force over every (positive, negative) pair, ties counting 1/2."""
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def test_label_set_scores_equal_brute_force(mini_run, dense):
    """Every built-in label set of the run is scored; its token and sentence AUROCs equal a pairwise
    count over the dense activations (within the binning bound), computed from the windows' own label
    bits and sentences."""
    from explorer.feature_index import make_windows
    from explorer.model_loading import load_tokenizer
    from precompute.index_stage import read_index_labels

    profile, run_dir = mini_run
    _, acts = dense
    labels = read_index_labels(run_dir)
    names = [ls.name for ls in labels.label_sets]
    assert "backtracking" in names and "sentence:backtracking" in names
    windows = make_windows(load_tokenizer(profile.model), corpus_documents(run_dir), profile.n_ctx, progress=False,
                           label_sets=labels.label_sets, sentences=labels.sentences)
    con = duckdb.connect(str(database_path(run_dir)), read_only=True)
    stored = con.execute("SELECT label, n_positive_tokens, n_positive_sentences FROM index_label_sets WHERE sae_id = ?",
                         [SAE_ID]).fetchall()
    assert sorted(r[0] for r in stored) == sorted(names)
    scores = con.execute(
        "SELECT label, feature_id, token_auroc, token_auroc_error_bound, sentence_auroc, sentence_auroc_error_bound "
        "FROM feature_label_scores WHERE sae_id = ?", [SAE_ID]).df().set_index(["label", "feature_id"])
    con.close()
    valid = np.concatenate([w.valid for w in windows])
    all_TF = torch.cat(acts).numpy()
    checked = 0
    for name in ("backtracking", "sentence:backtracking"):
        label = names.index(name)
        inside = np.concatenate([(w.label_bits >> label) & 1 for w in windows]).astype(bool) & valid
        # Sentence pieces: (window, sentence), positive by the window's sentence bits.
        piece_max, piece_pos = [], []
        for w, a_TF in zip(windows, acts):
            for k in np.unique(w.sentence_ids[(w.sentence_ids >= 0) & w.valid]):
                member = (w.sentence_ids == k) & w.valid
                piece_max.append(a_TF.numpy()[member].max(0))
                piece_pos.append(bool(((w.sentence_label_bits[member] >> label) & 1).any()))
        piece_max, piece_pos = np.array(piece_max), np.array(piece_pos)
        assert inside.sum() > 0 and piece_pos.sum() > 0
        for f in range(0, D_SAE, 6):
            row = scores.loc[(name, f)]
            token = _exact_auroc(all_TF[inside, f], all_TF[valid & ~inside, f])
            sentence = _exact_auroc(piece_max[piece_pos, f], piece_max[~piece_pos, f])
            assert abs(row.token_auroc - token) <= row.token_auroc_error_bound + 1e-9
            assert abs(row.sentence_auroc - sentence) <= row.sentence_auroc_error_bound + 1e-9
            checked += 1
    assert checked >= 10


def test_across_saes_each_hook_gets_its_best_feature_per_label_set(mini_run, tmp_path):
    """Two SAEs of one run, at two layers, both indexed: the across-SAEs view gives, for each label set
    and SAE, the feature the SAE's own scores rank first, with its hook and layer."""
    from explorer.feature_db import read_best_features_per_label

    profile, run_dir = mini_run
    two = tmp_path / "two"
    shutil.copytree(run_dir, two)
    torch.manual_seed(1)
    early = StandardSAE(StandardSAEConfig(d_in=64, d_sae=D_SAE))
    early.cfg.metadata.hook_name = "blocks.0.hook_resid_post"
    with torch.no_grad():
        early.W_enc.normal_()
        early.b_enc.fill_(-1.0)
    early.save_model(two / artifacts.SAES_DIR / "early-sae")
    run_index(profile, two, sae_id="early-sae", batch_size=4, progress=False)
    best = read_best_features_per_label(database_path(two), "sentence_auroc")
    assert set(best["sae_id"]) == {SAE_ID, "early-sae"}
    assert dict(zip(best["sae_id"], best["layer"])) == {SAE_ID: 1, "early-sae": 0}
    con = duckdb.connect(str(database_path(two)), read_only=True)
    for row in best.itertuples():
        top = con.execute(
            "SELECT feature_id FROM feature_label_scores WHERE sae_id = ? AND label = ? AND NOT isnan(sentence_auroc) "
            "ORDER BY sentence_auroc DESC, feature_id LIMIT 1", [row.sae_id, row.label]).fetchone()[0]
        assert row.feature_id == top
    con.close()
    assert best.groupby("label").size().eq(2).all()  # every label set, once per SAE


def test_the_index_reads_labels_only_for_the_documents_it_reads(large_corpora, mini_qwen2_dir, tmp_path):  # noqa: F811
    """At OpenR1 scale the label store holds millions of rows for documents past the index's token budget:
    the reader reads each batch's labels with a filter on its documents, never the rest. The windows (and
    so every label-set score) are those of labels read for the whole corpus up front, as before."""
    import pandas as pd

    from explorer.label_sets import LabelSet, LabelSetData
    from explorer.model_loading import load_tokenizer
    from explorer.runs import read_documents
    from precompute.index_stage import CorpusReader, read_index_labels, scored_label_sets
    from precompute.label_store import write_label_sets

    run_dir = tmp_path / "run"
    shutil.copytree(large_corpora[0], run_dir)
    doc_ids = read_documents(run_dir, ["doc_id"])["doc_id"].tolist()
    first, far = doc_ids[0], doc_ids[-1]
    spans = pd.DataFrame({"doc_id": [first, far, far], "start": [0, 0, 40], "end": [30, 20, 60]})
    write_label_sets(run_dir, [LabelSetData(LabelSet("far", "span", "test", "spans past the budget"), spans, [first, far])])
    sets = scored_label_sets(run_dir)
    assert "far" in sets and any(name.startswith("tag:") for name in sets)

    tokenizer = load_tokenizer(mini_qwen2_dir)
    reader = CorpusReader(run_dir, batch_rows=64, label_sets=sets)
    windows = make_windows(tokenizer, reader, 64, progress=False, max_tokens=20_000)
    assert reader.rows_read < len(doc_ids)
    # Labels were read for exactly the batches of documents read, so none of the far document's rows.
    assert reader.labelled_doc_ids == doc_ids[: reader.rows_read] and far not in reader.labelled_doc_ids

    # read_index_labels with doc_ids holds those documents' rows only, of every set and of the sentences.
    some = doc_ids[:64]
    part = read_index_labels(run_dir, some, sets)
    assert set(part.sentences) == set(some)
    for label_set in part.label_sets:
        assert set(label_set.spans) <= set(some) and set(label_set.positive_sentences) <= set(some), label_set.name
        assert label_set.documents is None or label_set.documents <= set(some), label_set.name
    far_set = part.label_sets[list(sets).index("far")]
    assert dict(far_set.spans) == {first: [(0, 30)]} and far_set.documents == {first}

    # The same windows, label bits and sentences as with every label read for the whole corpus up front.
    whole = read_index_labels(run_dir, None, sets)
    assert far in whole.label_sets[list(sets).index("far")].spans
    before = make_windows(tokenizer, CorpusReader(run_dir, batch_rows=64), 64, progress=False, max_tokens=20_000,
                          label_sets=whole.label_sets, sentences=whole.sentences)
    _same_windows(windows, before)
    for a, b in zip(windows, before):
        assert a.label_scope == b.label_scope
        for field in ("sentence_ids", "label_bits", "label_start_bits", "sentence_label_bits"):
            assert np.array_equal(getattr(a, field), getattr(b, field)), (a.context_id, field)
    assert any(w.label_bits.any() for w in windows) and any(w.sentence_label_bits.any() for w in windows)
