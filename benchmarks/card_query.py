"""How fast a feature card opens: on the demo (query plus render), and the query alone on a synthetic
database at full scale.

    .venv/bin/python benchmarks/card_query.py                   # both parts
    .venv/bin/python benchmarks/card_query.py --skip-synthetic  # the demo only (seconds)
    .venv/bin/python benchmarks/card_query.py --skip-demo --features 24576 --samples 200

(a) The demo (runs/demo; `make demo-data` builds it), each figure over `--cards` distinct features
    never read before in the process (cold caches):
    - query: `read_feature_card` on the shared read-only connection the app uses;
    - build: what the page computes from the card without Streamlit (example HTML, four plotly
      figures, the tables);
    - page: one AppTest rerun of app_pages/features.py after typing a new feature id: the card's
      query, every render call and Streamlit's own work, server side (no browser). Goal: < 300 ms.
(b) A synthetic database at full scale written with `explorer.feature_db.write_feature_index` into a
    temporary file: 24,576 features, 32 top examples each of 41 tokens, 10 intervals x 4 samples,
    histograms, logit lens 10 + 10, 10 neighbours, lead-lag at 41 offsets, scores, group AUROCs and
    word shares. `read_feature_card` for `--samples` random features: p50 and p95. Goal: p95 < 100 ms.
    Writing it takes a few minutes on 2 CPU cores; the file is deleted afterwards unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def percentiles(seconds: list[float]) -> str:
    ms = np.asarray(seconds) * 1000
    return f"p50 {np.percentile(ms, 50):6.1f} ms   p95 {np.percentile(ms, 95):6.1f} ms   max {ms.max():6.1f} ms   (n={len(ms)})"


# --- (a) the demo -----------------------------------------------------------------------------------


def build_card_views(card, vocabulary, run: str, index_run: dict) -> None:
    """Everything the card page derives from a FeatureCard, outside Streamlit."""
    from explorer import feature_views as fv
    from explorer.html import examples_html

    max_activation = float(card.stats["max_activation"])
    examples_html(fv.example_rows(card.top_examples, vocabulary, run, card.sae_id, card.feature_id), max_activation)
    for _, rows in fv.interval_groups(card.interval_samples):
        examples_html(fv.example_rows(rows, vocabulary, run, card.sae_id, card.feature_id), max_activation)
    for fig in (
        fv.histogram_figure(card.histogram),
        fv.lead_lag_figure(card.lead_lag, card.scores.get("baseline_mean")),
        fv.group_auroc_figure(card.group_auroc),
        fv.word_shares_figure(card.reason_word_shares),
    ):
        fig.to_json()  # what st.plotly_chart serialises
    fv.logit_lens_tables(card.logit_lens)
    fv.neighbours_table(card.neighbours, run, card.sae_id)
    fv.evidence_table(card.scores, index_run)


def bench_demo(run_dir: Path, n_cards: int, seed: int) -> None:
    from streamlit.testing.v1 import AppTest

    from explorer.database import open_read_only
    from explorer.feature_db import read_feature_card, read_index_runs, read_index_run, read_vocabulary
    from explorer.runs import database_path, main_sae_id

    db_path = database_path(run_dir)
    if not db_path.is_file():
        print(f"(a) skipped: no database at {db_path} (`make demo-data` builds the demo)")
        return
    con = open_read_only(db_path)
    sae_id = str(main_sae_id(run_dir, sae_ids=read_index_runs(con)["sae_id"].tolist()))  # the app's default
    index_run = read_index_run(con, sae_id)
    d_sae = int(index_run["d_sae"])
    rng = random.Random(seed)
    features = rng.sample(range(d_sae), min(d_sae, 3 * n_cards + 1))
    query_features, page_features = features[:n_cards], features[n_cards + 1 : 2 * n_cards + 1]
    vocabulary = read_vocabulary(con)

    query, build = [], []
    for f in query_features:
        t0 = time.perf_counter()
        card = read_feature_card(con, sae_id, f)
        t1 = time.perf_counter()
        build_card_views(card, vocabulary, run_dir.name, index_run)
        build.append(time.perf_counter() - t1)
        query.append(t1 - t0)

    os.environ["EXPLORER_RUNS_DIR"] = str(run_dir.parent)
    at = AppTest.from_file(str(REPO / "app_pages" / "features.py"), default_timeout=120)
    at.query_params["run"] = run_dir.name
    at.query_params["sae"] = sae_id
    at.query_params["feature"] = str(features[n_cards])
    at.run()  # warm-up: imports, the connection, the vocabulary, the index run
    assert not at.exception, at.exception
    page = []
    for f in page_features:
        widget = at.number_input(key="feature_id").set_value(f)
        t0 = time.perf_counter()
        widget.run()
        page.append(time.perf_counter() - t0)
        assert not at.exception and at.subheader[0].value == f"Feature {f}", (f, at.exception)
    at.number_input(key="feature_id").set_value(page_features[0])
    t0 = time.perf_counter()
    at.run()
    cached = time.perf_counter() - t0

    print(f"(a) demo: {run_dir} · SAE {sae_id} ({d_sae:,} features) · {n_cards} distinct features each")
    print(f"    query  read_feature_card (shared read-only connection): {percentiles(query)}")
    print(f"    build  example HTML + 4 plotly figures (to JSON) + tables:  {percentiles(build)}")
    print(f"    page   AppTest rerun, new feature id (query + render):     {percentiles(page)}   goal < 300 ms")
    print(f"    page   AppTest rerun, a card read before (st.cache_data): {cached * 1000:6.1f} ms")


# --- (b) a synthetic database at full scale -----------------------------------------------------------


def _list_column(values_2d: np.ndarray, pa_type):
    """An Arrow-backed pandas column of fixed-length lists (DuckDB reads it without Python objects)."""
    import pandas as pd
    import pyarrow as pa

    n, width = values_2d.shape
    offsets = pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int32))
    array = pa.ListArray.from_arrays(offsets, pa.array(values_2d.ravel(), type=pa_type))
    return pd.arrays.ArrowExtensionArray(array)


def _examples(rng: np.random.Generator, n_features: int, per_feature: int, n_ctx: int, n_contexts: int,
              vocab: int, width: int, sae_id: str):
    import pandas as pd
    import pyarrow as pa

    n = n_features * per_feature
    feature_N = np.repeat(np.arange(n_features, dtype=np.int32), per_feature)
    position_N = rng.integers(0, n_ctx, n, dtype=np.int32)
    first_N = np.maximum(position_N - 32, 0).astype(np.int32)
    # Every example holds `width` tokens (as if none was cut at a window's start): shape as at scale.
    token_ids_NW = rng.integers(0, vocab, (n, width), dtype=np.int32)
    acts_NW = np.where(rng.random((n, width)) < 0.15, rng.random((n, width), dtype=np.float32) * 5, 0).astype(np.float32)
    activation_N = acts_NW.max(axis=1).astype(np.float64)
    frame = pd.DataFrame(
        {
            "sae_id": sae_id,
            "feature_id": feature_N,
            "activation": activation_N,
            "context_id": rng.integers(0, n_contexts, n, dtype=np.int64),
            "position": position_N,
            "first_position": first_N,
        }
    )
    frame["token_ids"] = _list_column(token_ids_NW, pa.int32())
    frame["activations"] = _list_column(acts_NW, pa.float32())
    return frame


def synthetic_tables(n_features: int, seed: int, sae_id: str):
    """Every feature-index table at full scale, shaped as the index writes them, sorted by key."""
    import pandas as pd

    from explorer.lexicon import GROUPS

    rng = np.random.default_rng(seed)
    vocab, n_ctx, n_contexts, width = 151_936, 1024, 40_000, 41
    F = n_features
    f_id = np.arange(F, dtype=np.int32)

    def per_feature(k: int):
        return np.repeat(f_id, k), np.tile(np.arange(k, dtype=np.int32), F)

    tables = {}
    tables["index_contexts"] = pd.DataFrame(
        {
            "sae_id": sae_id, "context_id": np.arange(n_contexts, dtype=np.int64),
            "doc_id": [f"doc-{i // 2:06d}" for i in range(n_contexts)],
            "token_offset": (np.arange(n_contexts) % 2 * n_ctx).astype(np.int32),
            "n_tokens": np.full(n_contexts, n_ctx, dtype=np.int32), "has_backtracking": rng.random(n_contexts) < 0.4,
        }
    )
    density = rng.random(F) * 0.05
    tables["feature_activation_stats"] = pd.DataFrame(
        {
            "sae_id": sae_id, "feature_id": f_id, "density": density, "active_count": (density * 4e7).astype(np.int64),
            "max_activation": rng.random(F) * 10, "mean_nonzero": rng.random(F), "activation_sum": rng.random(F) * 1e5,
        }
    )
    n_bins = 60
    feat, b = per_feature(n_bins)
    tables["feature_histograms"] = pd.DataFrame(
        {"sae_id": sae_id, "feature_id": feat, "bin": b, "lower": 10 ** (b / 16 - 4), "upper": 10 ** ((b + 1) / 16 - 4),
         "count": rng.integers(1, 10_000, F * n_bins, dtype=np.int64)}
    )
    top = _examples(rng, F, 32, n_ctx, n_contexts, vocab, width, sae_id)
    top.insert(2, "rank", np.tile(np.arange(32, dtype=np.int32), F))
    tables["feature_top_examples"] = top[["sae_id", "feature_id", "rank", "activation", "context_id", "position",
                                          "first_position", "token_ids", "activations"]]
    samples = _examples(rng, F, 40, n_ctx, n_contexts, vocab, width, sae_id)
    samples.insert(2, "interval_index", np.tile(np.repeat(np.arange(10, dtype=np.int32), 4), F))
    samples.insert(3, "rank", np.tile(np.arange(4, dtype=np.int32), F * 10))
    samples.insert(4, "interval_lower", samples["interval_index"] / 10.0)
    samples.insert(5, "interval_upper", (samples["interval_index"] + 1) / 10.0)
    samples.insert(6, "interval_count", np.int64(1000))
    tables["feature_interval_samples"] = samples
    feat, r = per_feature(10)
    tables["feature_logit_lens"] = pd.concat(
        [
            pd.DataFrame({"sae_id": sae_id, "feature_id": feat, "direction": d, "rank": r,
                          "token_id": rng.integers(0, vocab, F * 10, dtype=np.int32), "logit": s * rng.random(F * 10)})
            for d, s in (("bottom", -1.0), ("top", 1.0))
        ]
    ).sort_values(["feature_id", "direction", "rank"], kind="stable")
    tables["feature_neighbours"] = pd.DataFrame(
        {"sae_id": sae_id, "feature_id": feat, "rank": r, "neighbour_id": rng.integers(0, F, F * 10, dtype=np.int32),
         "cosine": rng.random(F * 10)}
    )
    score = lambda: rng.random(F)  # noqa: E731
    tables["feature_backtracking_scores"] = pd.DataFrame(
        {
            "sae_id": sae_id, "feature_id": f_id, "auroc": score(), "auroc_error_bound": score() * 1e-4,
            "auroc_notebook": score(), "auroc_notebook_error_bound": score() * 1e-4, "mean_in_phrases": score(),
            "mean_outside": score(), "reason_score": score() * 1e-3, "reason_entropy": score(), "leads_score": score(),
            "lead_share": score(), "lead_pre_mean": score(), "lead_peak_offset": rng.integers(-32, 9, F, dtype=np.int32),
            "baseline_mean": score(), "baseline_std": score(), "doc_mean_with": score(), "doc_mean_without": score(),
            "doc_mean_delta": score(), "doc_window_max_delta": score(), "doc_active_share_with": score(),
            "doc_active_share_without": score(), "promotes_wait": rng.random(F) < 0.01,
            "wait_logit_rank": pd.array([None] * F, dtype="Int32"), "margin_over_best_token": score(),
            "margin_over_identity": score(), "within_token_auroc": score(), "is_token_detector": rng.random(F) < 0.3,
        }
    )
    feat, g = per_feature(len(GROUPS))
    tables["feature_group_auroc"] = pd.DataFrame(
        {"sae_id": sae_id, "feature_id": feat, "group_name": np.asarray(GROUPS)[g], "auroc": rng.random(len(feat)),
         "error_bound": rng.random(len(feat)) * 1e-4, "mean_activation": rng.random(len(feat))}
    ).sort_values(["feature_id", "group_name"], kind="stable")
    feat, o = per_feature(41)
    tables["feature_lead_lag"] = pd.DataFrame(
        {"sae_id": sae_id, "feature_id": feat, "relative_position": o - 32, "mean_activation": rng.random(len(feat)),
         "delta": rng.random(len(feat)), "n_targets": np.int64(5000)}
    )
    words = ["alternatively", "hmm", "maybe", "wait", "perhaps", "let me", "therefore", "however", "but", "another"]
    feat, w = per_feature(len(words))
    tables["feature_reason_word_shares"] = pd.DataFrame(
        {"sae_id": sae_id, "feature_id": feat, "word": np.asarray(words)[w], "mean_activation": rng.random(len(feat)),
         "share": rng.random(len(feat))}
    ).sort_values(["feature_id", "word"], kind="stable")
    vocabulary = pd.DataFrame({"token_id": np.arange(vocab, dtype=np.int32), "token": [f"tok{i}" for i in range(vocab)]})
    run_row = {
        "sae_id": sae_id, "hook_name": "blocks.17.hook_resid_post", "d_sae": F, "n_tokens": 40_960_000,
        "n_valid_tokens": 40_000_000, "n_windows": n_contexts, "n_documents": n_contexts // 2, "n_shards": 1,
        "context_size": n_ctx, "top_k": 32, "context_before": 32, "context_after": 8, "corpus_hash": "synthetic",
        "config_json": json.dumps({"synthetic": True}), "best_token_id": 1, "best_token_auroc": 0.6, "identity_auroc": 0.9,
        "control_token_ids": [1, 2, 3], "wait_token_ids": [4], "reason_words": words, "device": "none", "seconds": 0.0,
        "tokens_per_second": 0.0, "built_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    return run_row, tables, vocabulary


def bench_synthetic(n_features: int, n_samples: int, seed: int, keep: bool) -> None:
    from explorer.database import Provenance, open_read_only
    from explorer.feature_db import read_feature_card, write_feature_index

    sae_id = f"synthetic-{n_features}"
    t0 = time.perf_counter()
    run_row, tables, vocabulary = synthetic_tables(n_features, seed, sae_id)
    t1 = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="card_query_"))
    db_path = folder / "explorer.duckdb"
    try:
        write_feature_index(db_path, sae_id, run_row, tables, vocabulary, Provenance({"name": "synthetic"}, {}, "synthetic"))
        t2 = time.perf_counter()
        rows = sum(len(t) for t in tables.values())
        print(f"(b) synthetic: {n_features:,} features, {rows:,} rows; generated in {t1 - t0:.0f} s, written in "
              f"{t2 - t1:.0f} s, {db_path.stat().st_size / 2**30:.2f} GiB at {db_path}")
        del tables
        con = open_read_only(db_path)
        rng = random.Random(seed)
        features = [rng.randrange(n_features) for _ in range(n_samples)]
        first = time.perf_counter()
        read_feature_card(con, sae_id, features[0])  # the first read pays for opening the file's metadata
        print(f"    first read after opening: {(time.perf_counter() - first) * 1000:.1f} ms")
        times = []
        for f in features:
            s = time.perf_counter()
            card = read_feature_card(con, sae_id, f)
            times.append(time.perf_counter() - s)
            assert len(card.top_examples) == 32 and len(card.interval_samples) == 40 and len(card.lead_lag) == 41
            assert len(card.top_examples["token_ids"].iloc[0]) == 41 and len(card.logit_lens) == 20
        print(f"    read_feature_card, {n_samples} random features:  {percentiles(times)}   goal p95 < 100 ms")
        con.close()
    finally:
        if keep:
            print(f"    kept {db_path}")
        else:
            for p in folder.iterdir():
                p.unlink()
            folder.rmdir()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=REPO / "runs" / "demo", help="the indexed run for (a)")
    parser.add_argument("--cards", type=int, default=20, help="distinct features timed in (a)")
    parser.add_argument("--features", type=int, default=24_576, help="features in the synthetic database (b)")
    parser.add_argument("--samples", type=int, default=200, help="random cards read in (b)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic database")
    args = parser.parse_args(argv)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"machine: {os.cpu_count()} CPUs, load average {load} (other work inflates every figure); "
          f"python {sys.version.split()[0]}")
    if not args.skip_demo:
        bench_demo(args.run.resolve(), args.cards, args.seed)
    if not args.skip_synthetic:
        bench_synthetic(args.features, args.samples, args.seed, args.keep)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
