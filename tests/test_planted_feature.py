"""The planted-feature check on the embedded demo: the synthetic corpus plants backtracking with exact
labels, and the demo LM is trained to carry it as one direction of its layer-1 MLP output (an auxiliary
loss, docs/profiles.md "The planted backtracking feature"), so the pipeline, SAE and index, unsupervised,
must find a feature that carries it.

- The top candidate by backtracking AUROC (the index's `auroc_notebook`) separates the labelled
  backtracking tokens of HELD-OUT synthetic traces (another generator seed, never seen in training
  or indexing) with token-level AUROC >= 0.9, computed here by brute force from a direct forward pass.
- The lead-lag profile of at least one top-10 candidate rises before the phrase.
- At sentence level: the top candidate by the index's sentence AUROC for the synthetic corpus's
  `uncertainty_management` tags (the corrections, imported as label sets by the demo build) separates
  the held-out traces' uncertainty_management sentences (each sentence's maximum activation, by brute
  force) at sentence AUROC >= 0.9, and within 0.05 of the index's own figure on the indexed corpus. The
  demo LM carries a second plant for this (`DemoLMSpec.plant_label`, docs/profiles.md): without it a
  feature of the phrase and the token before missed each correction's second sentence, and a clean
  clone's build reached only 0.828 (docs/results.md, "Label sets on the demo").

Uses the demo run that `make test` builds first (`make demo-data`); run alone, the fixture builds it.
`PLANTED_RUN=runs/demo-standard pytest tests/test_planted_feature.py` checks another built run instead
(`python -m precompute build --profile demo-standard`, the notebook's standard L1 SAE on the same corpus and
LM, which splits the planted feature over near-duplicate features: docs/sae.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from explorer.feature_db import label_ranking_key, read_candidates, read_feature_card, read_index_runs
from explorer.feature_index import sentence_of_tokens
from explorer.labels import token_group_ids
from explorer.lexicon import GROUPS, NOTEBOOK_GROUPS
from explorer.live import compute_live_activations
from explorer.model_loading import load_model
from explorer.runs import database_path, main_sae_id
from explorer.sae_loading import load_sae
from explorer.synthetic import generate_traces, sentence_tags

REPO = Path(__file__).resolve().parents[1]
DEMO = Path(os.environ.get("PLANTED_RUN", REPO / "runs" / "demo")).resolve()
HELD_OUT_SEED = 20261127
N_HELD_OUT = 300


@pytest.fixture(scope="module")
def demo():
    db = database_path(DEMO)
    if (not db.is_file() or read_index_runs(db).empty) and DEMO != REPO / "runs" / "demo":
        pytest.fail(f"{DEMO} holds no index: build it first (python -m precompute build --profile ... --out {DEMO})")
    if not db.is_file() or read_index_runs(db).empty:
        subprocess.run(
            [sys.executable, "-m", "precompute", "build", "--profile", "demo", "--out", str(DEMO)],
            cwd=REPO, check=True, timeout=1800,
        )
    runs = read_index_runs(db)
    sae_id = main_sae_id(DEMO, sae_ids=runs["sae_id"].tolist())  # the SAE at the profile's hook, where it is planted
    model = load_model(DEMO / "model", device="cpu")
    sae = load_sae(DEMO / "saes" / sae_id).sae
    return db, sae_id, model, sae, runs.loc[runs["sae_id"] == sae_id, "hook_name"].iloc[0]


def brute_force_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(score of a positive > score of a negative) + 1/2 P(equal), by ranks with ties averaged."""
    import pandas as pd

    ranks = pd.Series(scores).rank(method="average").to_numpy()
    n_pos, n_neg = labels.sum(), (~labels).sum()
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def test_top_candidate_separates_held_out_backtracking_tokens(demo):
    db, sae_id, model, sae, hook_name = demo
    feature = int(read_candidates(db, sae_id, "auroc_notebook", limit=1)["feature_id"].iloc[0])
    notebook = [GROUPS.index(g) for g in NOTEBOOK_GROUPS]
    scores, labels = [], []
    for trace in generate_traces(N_HELD_OUT, seed=HELD_OUT_SEED):
        spans = trace.phrase_spans  # exact labels; the same as label_text(text)
        live = compute_live_activations(model, sae, hook_name, trace.record.text)
        groups = token_group_ids(live.offsets, spans)
        valid = live.valid_T.numpy()
        scores.append(live.acts_TF[:, feature].numpy()[valid])
        labels.append(np.isin(groups, notebook)[valid])
    scores, labels = np.concatenate(scores), np.concatenate(labels)
    assert labels.sum() > 300, "the held-out traces should hold hundreds of backtracking tokens"
    auroc = brute_force_auroc(scores, labels)
    print(f"feature {feature}: held-out AUROC {auroc:.3f} over {labels.sum()} backtracking tokens of {len(labels)}")
    assert auroc >= 0.9


def held_out_sentence_auroc(model, sae, hook_name: str, feature: int, tag: str) -> tuple[float, int, int]:
    """Sentence AUROC of `feature` for the synthetic sentence tag `tag` on the held-out traces: each
    sentence's maximum activation over its valid tokens (a token belongs to the sentence holding its last
    character, as in the index) against whether the generator tagged it `tag`."""
    scores, labels = [], []
    for trace in generate_traces(N_HELD_OUT, seed=HELD_OUT_SEED):
        live = compute_live_activations(model, sae, hook_name, trace.record.text)
        tagged = sentence_tags(trace)
        owner = sentence_of_tokens(np.asarray(live.offsets, dtype=np.int64), [(s, e) for s, e, _ in tagged])
        values, valid = live.acts_TF[:, feature].numpy(), live.valid_T.numpy()
        for k, (_, _, tags) in enumerate(tagged):
            member = (owner == k) & valid
            if member.any():
                scores.append(values[member].max())
                labels.append(tag in tags)
    scores, labels = np.asarray(scores), np.asarray(labels)
    return brute_force_auroc(scores, labels), int(labels.sum()), len(labels)


def test_top_candidate_by_sentence_auroc_separates_held_out_uncertainty_sentences(demo):
    db, sae_id, model, sae, hook_name = demo
    top = {}
    for tag in ("uncertainty_management", "self_checking"):
        ranked = read_candidates(db, sae_id, label_ranking_key(f"tag:{tag}", "sentence_auroc"), limit=1)
        assert not ranked.empty, f"the demo's index scored no label set tag:{tag}: is it built with its sentence tags?"
        top[tag] = int(ranked["feature_id"].iloc[0])
    in_index = float(read_candidates(
        db, sae_id, label_ranking_key("tag:uncertainty_management", "sentence_auroc"), limit=1)["score"].iloc[0])
    auroc, n_pos, n = held_out_sentence_auroc(model, sae, hook_name, top["uncertainty_management"], "uncertainty_management")
    print(f"uncertainty_management: feature {top['uncertainty_management']}, held-out sentence AUROC {auroc:.3f} over "
          f"{n_pos} tagged sentences of {n} (the index's: {in_index:.3f}); self_checking's top feature: {top['self_checking']}")
    assert n_pos > 100
    assert abs(auroc - in_index) <= 0.05  # the index's sentence AUROC holds on traces it never saw
    assert auroc >= 0.9


def test_a_top_ten_candidate_rises_before_the_phrase(demo):
    db, sae_id, *_ = demo
    top = read_candidates(db, sae_id, "auroc_notebook", limit=10)
    rising = []
    for feature in top["feature_id"]:
        card = read_feature_card(db, sae_id, int(feature))
        profile = card.lead_lag.set_index("relative_position")["delta"]
        before, far = profile.loc[-8:-1].mean(), profile.loc[-32:-17].mean()
        # Over the 8 tokens before the phrase the mean is a quarter of a baseline standard deviation
        # above the baseline (the leads score), and above the profile's own level far before.
        if card.scores["leads_score"] >= 0.25 and before > far:
            rising.append(int(feature))
    assert rising, f"no top-10 candidate's lead-lag profile rises before the phrase: {list(top['feature_id'])}"


def test_the_index_top_value_equals_a_direct_forward(demo):
    """The precomputed top activation of the top candidate, recomputed from its example's document."""
    db, sae_id, model, sae, hook_name = demo
    from explorer.runs import read_documents

    feature = int(read_candidates(db, sae_id, "auroc_notebook", limit=1)["feature_id"].iloc[0])
    card = read_feature_card(db, sae_id, feature)
    example = card.top_examples.iloc[0]
    docs = read_documents(DEMO, columns=["doc_id", "text"]).set_index("doc_id")
    live = compute_live_activations(model, sae, hook_name, docs.loc[example["doc_id"], "text"])
    position = int(example["token_offset"]) + int(example["position"])
    assert float(live.acts_TF[position, feature]) == pytest.approx(float(example["activation"]), rel=1e-4, abs=1e-5)
    assert torch.isclose(live.acts_TF[:, feature].max(), torch.tensor(float(example["activation"])), rtol=1e-4)


def test_the_ceiling_benchmark_auroc_equals_the_brute_force_one():
    """benchmarks/planted_ceiling.py scores every latent at once; ties (the zeros of sparse latents) count half."""
    from benchmarks.planted_ceiling import auroc_per_column

    generator = torch.Generator().manual_seed(0)
    labels = torch.rand(2000, generator=generator) < 0.05
    scores = torch.relu(torch.randn(2000, 70, generator=generator) + labels[:, None] * torch.linspace(0, 2, 70))
    scores[:, 3] = 0.0  # all tied: 0.5
    got = auroc_per_column(scores, labels)
    expected = [brute_force_auroc(scores[:, f].numpy(), labels.numpy()) for f in range(70)]
    assert got.numpy() == pytest.approx(np.array(expected), abs=1e-9)
    assert float(got[3]) == 0.5
