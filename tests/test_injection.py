"""The token-injection test (explorer/injection.py, `python -m precompute inject`, docs/injection.md).

- Each strategy's exact output on a fixed example, and the statistics against a computation by hand.
- Ground truth by construction on the demo LM: a token detector (an SAE whose one feature reads a
  token's embedding at blocks.0.hook_resid_pre) comes out token_driven under the simple strategies; a
  context feature (exactly "B right after A", on a one-layer transformer built by hand, with a pair
  from the demo's held-out windows) is not token_driven when B alone is injected and is when "A B"
  is; the nulls of both stay below d 0.2.
- The stage end to end on a copy of the demo run: it writes its tables, re-running replaces them, and
  the readers return them (and empty frames on a database without them).

Uses the demo run that `make test` builds first (`make demo-data`).
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from transformer_lens import HookedTransformer, HookedTransformerConfig

from explorer.database import read_schema_info
from explorer.feature_index import make_windows
from explorer.injection import (
    SIMPLE_STRATEGIES,
    CandidateTokens,
    FrequencyMatcher,
    InjectionInputError,
    InjectionSettings,
    cohens_d,
    inject,
    run_injection,
    select_windows,
    strategy_units,
    t_test_p,
    transfer_ratio,
    verdict,
)
from explorer.injection_store import (
    missing_injection_message,
    read_feature_injection,
    read_injection_examples,
    read_injection_run,
    read_injection_verdicts,
)
from explorer.model_loading import load_model
from explorer.runs import database_path, main_sae_id
from explorer.sae_training import is_heldout
from explorer.schema import INJECTION_TABLE_NAMES, SCHEMA_VERSION
from precompute.cli import main
from precompute.index_stage import corpus_documents

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "runs" / "demo"
M, L = 64, 32
BODY = list(range(10, 20))  # a window's tokens after BOS


# --- the strategies on a fixed example ------------------------------------------------------------


@pytest.mark.parametrize("strategy, units, expected, injected_at", [
    ("prepend", [[1], [2], [3]], [1, 2, 3, 10, 11, 12, 13, 14, 15, 16], [0, 1, 2]),
    ("append", [[1], [2], [3]], [10, 11, 12, 13, 14, 15, 16, 1, 2, 3], [7, 8, 9]),
    # 7 body tokens kept; unit j before kept token (j + 1) * 7 // 4: 1, 3, 5
    ("intersperse", [[1], [2], [3]], [10, 1, 11, 12, 2, 13, 14, 3, 15, 16], [1, 4, 7]),
    # body token (j + 1) * 10 // 4 replaced: 2, 5, 7
    ("replace", [[1], [2], [3]], [10, 11, 1, 13, 14, 2, 16, 3, 18, 19], [2, 5, 7]),
    # 6 kept; sequences before kept tokens 2 and 4
    ("bigram_before", [[1, 2], [3, 4]], [10, 11, 1, 2, 12, 13, 3, 4, 14, 15], [2, 3, 6, 7]),
    ("bigram_after", [[1, 2], [3, 4]], [10, 11, 1, 2, 12, 13, 3, 4, 14, 15], [2, 3, 6, 7]),
    # 4 kept; before kept tokens 1 and 2
    ("trigram", [[1, 2, 3], [4, 5, 6]], [10, 1, 2, 3, 11, 4, 5, 6, 12, 13], [1, 2, 3, 5, 6, 7]),
    # "1 , 2 , 3" (5 tokens) before kept token 5 // 2 = 2
    ("comma_list", [[1], [2], [3]], [10, 11, 1, 99, 2, 99, 3, 12, 13, 14], [2, 3, 4, 5, 6]),
])
def test_each_strategy_gives_the_documented_sequence(strategy, units, expected, injected_at):
    tokens, mask = inject(BODY, strategy, units, len(BODY), comma_token_id=99)
    assert tokens == expected
    assert np.flatnonzero(mask).tolist() == injected_at
    assert len(tokens) == len(BODY)  # windows keep their length: batches stay rectangular


def test_units_take_the_candidates_tokens_in_turn():
    candidate = CandidateTokens(7, (1, 2, 3, 4), bigrams_before=((5, 1), (6, 2), (7, 3)))
    settings = InjectionSettings()
    assert strategy_units(candidate, "prepend", 0, settings) == [(1,), (2,), (3,)]
    assert strategy_units(candidate, "prepend", 1, settings) == [(4,), (1,), (2,)]
    assert strategy_units(candidate, "bigram_before", 1, settings) == [(7, 3), (5, 1)]
    assert strategy_units(candidate, "trigram", 0, settings) == []  # none: the strategy is skipped
    with pytest.raises(InjectionInputError, match="do not fit"):
        inject(BODY, "prepend", [[1]] * 11, 10)


# --- the statistics ---------------------------------------------------------------------------------


def test_cohens_d_and_p_match_a_computation_by_hand():
    rng = np.random.default_rng(1)
    x, y = rng.normal(1.0, 2.0, 40), rng.normal(0.0, 1.0, 25)
    n1, n2 = len(x), len(y)
    s1 = sum((v - sum(x) / n1) ** 2 for v in x) / (n1 - 1)
    s2 = sum((v - sum(y) / n2) ** 2 for v in y) / (n2 - 1)
    pooled = math.sqrt(((n1 - 1) * s1 + (n2 - 1) * s2) / (n1 + n2 - 2))
    d = (sum(x) / n1 - sum(y) / n2) / pooled
    assert cohens_d(x, y) == pytest.approx(d, rel=1e-12)
    # Student's t by hand, its two-sided p from the t distribution's survival function
    from scipy import stats

    t = (x.mean() - y.mean()) / (pooled * math.sqrt(1 / n1 + 1 / n2))
    assert t_test_p(x, y) == pytest.approx(2 * stats.t.sf(abs(t), n1 + n2 - 2), rel=1e-9)
    assert t_test_p(x, y) == pytest.approx(stats.ttest_ind(x, y).pvalue, rel=1e-12)


def test_degenerate_cases_are_defined():
    zeros, twos = np.zeros(5), np.full(5, 2.0)
    assert cohens_d(zeros, zeros) == 0.0 and t_test_p(zeros, zeros) == 1.0
    assert cohens_d(twos, zeros) == math.inf and t_test_p(twos, zeros) == 0.0
    assert math.isnan(cohens_d(np.ones(1), zeros)) and math.isnan(t_test_p(np.ones(1), zeros))
    assert math.isnan(transfer_ratio(1.0, 0.5, 0.5))
    assert transfer_ratio(1.0, 0.0, 2.0) == 0.5
    assert [verdict(d, p) for d, p in [(0.9, 0.001), (0.9, 0.02), (0.6, 0.001), (0.3, 0.04), (0.1, 0.0),
                                        (math.nan, 0.0), (math.inf, 0.0)]] == [
        "token_driven", "weakly_token_driven", "partially_token_driven", "weakly_token_driven",
        "context_dependent", "context_dependent", "token_driven"]


def test_the_null_draws_tokens_of_the_same_frequency_bin():
    counts = np.array([0, 1, 1, 8, 9, 10, 100, 0])
    matcher = FrequencyMatcher(counts, excluded=[5])
    rng = np.random.default_rng(0)
    drawn = {matcher.draw(3, rng, avoid={3}) for _ in range(50)}
    assert drawn == {4}  # 8, 9, 10 share bin 3; 5 is excluded, 3 is the candidate's own
    assert {matcher.draw(1, rng, avoid={1}) for _ in range(20)} == {2}
    assert matcher.draw(6, rng, avoid={6}) in {3, 4}  # alone in its bin: the nearest bin with tokens
    # each bin's allowed tokens are kept while the same avoid set comes back; another set is honoured
    avoid = {4}
    assert {matcher.draw(3, rng, avoid=avoid) for _ in range(20)} == {3}
    assert {matcher.draw(3, rng, avoid={3}) for _ in range(20)} == {4}
    assert {matcher.draw(3, rng, avoid=set()) for _ in range(50)} == {3, 4}


def test_baseline_windows_hold_no_phrase_and_do_not_open_after_one():
    """A window without phrase tokens right after one whose end holds a phrase (the rest of a
    correction) is no baseline window; a clean window of a clean stretch is."""
    from explorer.feature_index import Window
    from explorer.labels import NO_GROUP

    def window(context_id: int, doc_id: str, groups: list[int]) -> Window:
        n = len(groups)
        return Window(context_id, doc_id, 0, np.arange(n, dtype=np.int64) + 10 * context_id, np.ones(n, bool),
                      np.asarray(groups, dtype=np.int8), np.zeros(n, bool), True)

    clean, n = [NO_GROUP] * 8, 8
    phrase_at_end = [NO_GROUP] * 6 + [0, 0]  # group 0: a notebook group
    windows = [window(0, "a", phrase_at_end), window(1, "a", clean), window(2, "a", clean),
               window(3, "b", clean), window(4, "b", phrase_at_end)]
    with pytest.raises(InjectionInputError, match="2 windows of 8 tokens without backtracking and 2 with it"):
        select_windows(windows, 3, n, seed=0)
    chosen = select_windows(windows, 2, n, seed=0)
    assert chosen.baseline_docs == ("a", "b") and chosen.baseline[:, 0].tolist() == [20, 30]  # windows 2 and 3
    assert chosen.target[:, 0].tolist() == [0, 40]


# --- ground truth by construction -------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo():
    if not database_path(DEMO).is_file():
        pytest.skip("the demo run is not built (make demo-data)")
    model = load_model(DEMO / "model", device="cpu")
    heldout = [doc for doc in corpus_documents(DEMO) if is_heldout(doc.doc_id)]
    windows = make_windows(model.tokenizer, heldout, L, progress=False)
    counts = np.bincount(np.concatenate([w.token_ids for w in windows]), minlength=model.cfg.d_vocab)
    return model, select_windows(windows, M, L, seed=0), counts


def _one_feature_sae(model, hook: str, direction: torch.Tensor, threshold: float) -> StandardSAE:
    """An SAE with 2 features at `hook`: feature 0 = relu(direction . x - threshold); feature 1 unused."""
    d = model.cfg.d_model
    cfg = StandardSAEConfig(d_in=d, d_sae=2, apply_b_dec_to_input=False)
    cfg.metadata.hook_name = hook
    sae = StandardSAE(cfg)
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.W_enc[:, 0] = direction
        sae.b_enc.copy_(torch.tensor([-threshold, -1e9]))
        sae.b_dec.zero_()
    return sae


def _run(model, sae, hook, windows, counts, candidate, strategies, n_sequences: int = 2):
    result = run_injection(model, sae, hook, windows, [candidate],
                           InjectionSettings(strategies=strategies, n_sequences=n_sequences),
                           token_counts=counts, stop_at_layer=int(hook.split(".")[1]) + 1, progress=False)
    return result.rows.set_index("strategy")


def test_a_token_detector_by_construction_is_token_driven(demo):
    model, windows, counts = demo
    hook = "blocks.0.hook_resid_pre"  # the token embedding: no positional embedding in this model
    E = model.W_E.detach()
    present = np.mean([np.isin(np.arange(len(E)), w).astype(float) for w in windows.baseline], axis=0)
    # a token in 5-30% of the baseline windows whose embedding stands out most along its own direction
    best, margin = None, -math.inf
    for token in np.flatnonzero((present >= 0.05) & (present <= 0.3)).tolist():
        unit = E[token] / E[token].norm()
        scores = E @ unit
        other = torch.cat([scores[:token], scores[token + 1:]]).max()
        if (scores[token] - other) / scores[token] > margin:
            best, margin, cut = token, float((scores[token] - other) / scores[token]), float((scores[token] + other) / 2)
    assert best is not None and margin > 0
    sae = _one_feature_sae(model, hook, E[best] / E[best].norm(), cut)
    rows = _run(model, sae, hook, windows, counts, CandidateTokens(0, (best,)), SIMPLE_STRATEGIES)
    print("token detector", model.tokenizer.decode([best]), rows[["cohens_d", "p_value", "null_d"]].round(3).to_dict())
    for strategy in SIMPLE_STRATEGIES:
        assert rows.loc[strategy, "cohens_d"] >= 0.8, strategy
        assert verdict(rows.loc[strategy, "cohens_d"], rows.loc[strategy, "p_value"]) == "token_driven"
        assert rows.loc[strategy, "null_d"] < 0.2, strategy


def _previous_token_model(tokenizer, d_vocab: int, n_ctx: int, a: int, b: int) -> HookedTransformer:
    """A one-layer attention-only transformer built by hand whose residual stream after the layer holds,
    exactly, whether each token is B and whether the token before it is A.

    Dimensions: 0 "is A", 1 "is B", 2 "the previous token is A", then one per position. Its one head
    attends from position t to t - 1 (query = position t, key = position s + 1, scores 30 apart, so
    the weight on t - 1 is 1 - 1e-11) and copies "is A" into dimension 2. BOS at position 0 attends
    to itself. No normalisation, so the stream is exact.
    """
    cfg = HookedTransformerConfig(
        n_layers=1, d_model=3 + n_ctx, n_ctx=n_ctx, d_head=n_ctx, n_heads=1, d_vocab=d_vocab, act_fn="relu",
        attn_only=True, normalization_type=None, positional_embedding_type="standard", device="cpu", seed=0)
    model = HookedTransformer(cfg, tokenizer=tokenizer)
    scale = 30.0 * math.sqrt(n_ctx)  # the scores are divided by sqrt(d_head)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        model.W_E[a, 0] = 1.0
        model.W_E[b, 1] = 1.0
        model.W_pos[:, 3:] = torch.eye(n_ctx)
        attn = model.blocks[0].attn
        attn.W_Q[0, 3:, :] = scale * torch.eye(n_ctx)  # query of position t: e_t
        attn.W_K[0, 3:-1, 1:] = torch.eye(n_ctx - 1)  # key of position s: e_(s+1)
        attn.W_V[0, 0, 0] = 1.0  # value: "is A"
        attn.W_O[0, 0, 2] = 1.0  # into "the previous token is A"
    return model


def test_a_context_feature_by_construction_needs_its_context(demo):
    """A feature that fires exactly on B right after A, on a transformer built by hand (above).

    Built, not found in the demo LM: the trained LM changes with every build (its step count follows the
    machine's load), and a probe for a pair on it separated no frequent pair on the build of one CI run.
    The pair comes from the held-out corpus itself, so the baseline holds it in some windows.
    """
    demo_model, windows, counts = demo
    tokenizer = demo_model.tokenizer
    special = set(tokenizer.all_special_ids)
    baseline_pairs = [set(zip(w[1:-1].tolist(), w[2:].tolist())) for w in windows.baseline]
    pairs, unigrams = Counter(), Counter()
    for w in windows.baseline:
        unigrams.update(w[1:].tolist())
    for found in baseline_pairs:
        pairs.update(found)
    # A word pair in 3-15% of the baseline windows (some, so the baseline's spread is not zero; few, so
    # injecting it has room to show) whose B is common on its own (in twice as many windows), so the
    # simple strategies inject a token the corpus often has without A before it.
    share = {pair: n / len(windows.baseline) for pair, n in pairs.items()}
    choices = sorted(
        (pair for pair, s in share.items()
         if 0.03 <= s <= 0.15 and pair[0] != pair[1] and not special & set(pair)
         and tokenizer.decode([pair[1]]).strip().isalpha()
         and sum(pair[1] in w[1:] for w in windows.baseline) >= 2 * pairs[pair]),
        key=lambda pair: (-share[pair], pair))
    assert choices, "no word pair of the demo's held-out windows is in 3-15% of the baseline"
    a, b = choices[0]
    model = _previous_token_model(tokenizer, demo_model.cfg.d_vocab, L, a, b)
    hook = "blocks.0.hook_resid_post"
    is_b, after_a = torch.zeros(model.cfg.d_model), torch.zeros(model.cfg.d_model)
    is_b[1], after_a[2] = 1.0, 1.0
    sae = _one_feature_sae(model, hook, is_b + after_a, 1.5)  # 0.5 on "A B", 0 elsewhere

    # the construction is exact: the feature fires on B after A and nowhere else
    tokens = torch.as_tensor(windows.baseline)
    _, cache = model.run_with_cache(tokens, names_filter=hook)
    fires = sae.encode(cache[hook])[..., 0] > 0
    expected = torch.zeros_like(fires)
    expected[:, 1:] = (tokens[:, 1:] == b) & (tokens[:, :-1] == a)
    assert torch.equal(fires, expected)

    candidate = CandidateTokens(0, (b,), bigrams_before=((a, b),))
    rows = _run(model, sae, hook, windows, counts, candidate, (*SIMPLE_STRATEGIES, "bigram_before"))
    print("context feature", repr(tokenizer.decode([a, b])), rows[["cohens_d", "p_value", "null_d"]].round(3).to_dict())
    for strategy in SIMPLE_STRATEGIES:
        assert verdict(rows.loc[strategy, "cohens_d"], rows.loc[strategy, "p_value"]) != "token_driven", strategy
        assert rows.loc[strategy, "null_d"] < 0.2
    assert rows.loc["bigram_before", "cohens_d"] >= 0.8
    assert verdict(rows.loc["bigram_before", "cohens_d"], rows.loc["bigram_before", "p_value"]) == "token_driven"
    assert rows.loc["bigram_before", "null_d"] < 0.2


# --- the stage end to end ---------------------------------------------------------------------------


def test_the_stage_writes_replaces_and_reads_back(demo, tmp_path, capsys):
    run = tmp_path / "demo"
    shutil.copytree(DEMO, run, ignore=shutil.ignore_patterns("index_partials"))
    db = database_path(run)
    sae_id = main_sae_id(run)
    # A run indexed before the stage and before the index's token statistics (the demo build has both).
    with duckdb.connect(str(db)) as con:
        for table in (*INJECTION_TABLE_NAMES, "feature_token_stats"):
            con.execute(f"DROP TABLE IF EXISTS {table}")
    assert read_injection_verdicts(db, sae_id).empty  # a run indexed before the stage: empty frames
    assert read_feature_injection(db, sae_id, 0).empty and read_injection_examples(db, sae_id, 0).empty
    assert f"python -m precompute inject --run {run}" in missing_injection_message(run, sae_id)
    args = ["inject", "--run", str(run), "--candidates", "2", "--windows", "12", "--window-tokens", "24",
            "--strategies", "prepend,bigram_before", "--top-tokens", "4"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "token_source = feature_top_examples" in out
    verdicts = read_injection_verdicts(db, sae_id)
    assert len(verdicts) >= 2 and set(verdicts["verdict"]) <= {"token_driven", "partially_token_driven",
                                                                "weakly_token_driven", "context_dependent"}
    feature = int(verdicts["feature_id"].iloc[0])
    per_strategy = read_feature_injection(db, sae_id, feature)
    assert set(per_strategy["strategy"]) == {"prepend", "bigram_before"}
    assert (per_strategy["n_windows"] == 12).all()
    examples = read_injection_examples(db, sae_id, feature)
    assert sorted(Counter(examples["condition"]).items()) == [("baseline", 3), ("injected", 3), ("target", 3)]
    assert all(len(t) == 24 == len(a) for t, a in zip(examples["token_ids"], examples["activations"]))
    assert read_schema_info(db).schema_version == SCHEMA_VERSION
    n_tested = sum(len(read_feature_injection(db, sae_id, f)) for f in verdicts["feature_id"])
    # 2M shared windows, then M injected and M null windows per candidate and strategy
    assert read_injection_run(db, sae_id)["n_windows_forwarded"].iloc[0] == 2 * 12 + n_tested * 12 * 2
    assert main(args) == 0 and "up to date" in capsys.readouterr().out  # same settings: skipped
    assert main([*args[:-2], "--top-tokens", "3", "--strategies", "append"]) == 0  # other settings: replaced
    assert set(read_feature_injection(db, sae_id, feature)["strategy"]) == {"append"}
    assert read_injection_run(db, sae_id)["strategies"].iloc[0].tolist() == ["append"]
    assert main([*args, "--features", "3,99999"]) == 2  # an unknown feature id: said, nothing written
    assert "no feature 99999" in capsys.readouterr().err
    assert set(read_feature_injection(db, sae_id, feature)["strategy"]) == {"append"}
    # too few held-out windows: the message says how many there are and which flag lowers M
    assert main([*args, "--windows", "100000", "--force"]) == 2
    err = capsys.readouterr().err
    assert "--windows" in err and "windows of 24 tokens without backtracking" in err


def test_the_windows_benchmark_builds_the_same_windows_by_every_route():
    """benchmarks/injection_windows.py at a small size: streamed with the per-candidate bin cache, and
    all built first with and without it, give the same batches (it asserts so) and print their figures."""
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "injection_windows.py"), "--candidates", "3",
                          "--vocab", "5000", "--windows", "8", "--tokens", "16", "--batch-size", "8"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    assert "the same batches from every route" in out and "before" in out
