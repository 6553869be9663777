"""sae-vis 0.3.7 dashboards on a miniature Qwen2 and a random StandardSAE: sae-vis's max activation per
feature equals ours (a dense forward, and the index's top-1), the HTML is written, bad inputs are refused.

BOS: sae-vis counts every position it is given, BOS included; our index never counts BOS. With
`exclude_bos=True` (rows that start at a document start) sae-vis leaves position 0 out and its maxima
equal the index's; with `exclude_bos=False` they equal the dense maxima over every position.
"""

from __future__ import annotations

import json
from importlib import metadata

import pandas as pd
import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig

from explorer.feature_aggregates import IndexConfig
from explorer.feature_index import encode_windows, stream_index
from explorer.model_loading import load_model
from explorer.sae_vis_export import (
    SaeVisExportError,
    compute_sae_vis_data,
    dashboards_html,
    export_to_file,
    max_activations,
    token_rows,
)
from precompute.export_sae_vis_cli import _auto_row_len, corpus_windows, default_html_path, parse_features
from tests.hub_fixtures import mini_qwen2_dir  # noqa: F401  (fixture)

HOOK, STOP_AT_LAYER, D_SAE = "blocks.0.hook_resid_post", 1, 32  # the forward runs block 0 only
TEXTS = [
    "Let me compute 3 + 4. Wait, that is wrong. Maybe it is 7.",
    "The answer is 12 because 3 times 4 is 12. Therefore done.",
    "Hmm, alternatively we could try again. Actually no, the first way works.",
    "So x = 2. But wait, check: 2 + 2 = 4. Yes.",
    "First, 3 + 4 = 7. Wait, let me check: 4 + 3 = 7. Yes.",
    "Divide by 2: x = 5. Hmm, that's right. So the answer is 5.",
]


@pytest.fixture(scope="module")
def setup(mini_qwen2_dir):  # noqa: F811
    model = load_model(mini_qwen2_dir, device="cpu")
    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=model.cfg.d_model, d_sae=D_SAE))
    with torch.no_grad():
        sae.W_enc.normal_()
        sae.b_enc.zero_()
    sae.cfg.metadata.hook_name = HOOK
    docs = pd.DataFrame({"doc_id": [f"d{i}" for i in range(len(TEXTS))], "text": TEXTS})
    # One window per document (n_ctx 64), each cut to the shortest document: every row starts with BOS.
    row_len = min(len(model.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in TEXTS) + 1
    windows, L = corpus_windows(model.tokenizer, docs, n_ctx=64, n_tokens=row_len * len(TEXTS), row_len=row_len)
    assert L == row_len and len(windows) == len(TEXTS)
    tokens_BT = token_rows(windows, L)
    assert (tokens_BT[:, 0] == model.tokenizer.bos_token_id).all()
    return model, sae, windows, tokens_BT


def test_max_activation_equals_ours(setup):
    model, sae, windows, tokens_BT = setup
    hook_names = {name: hook.name for name, hook in sae.hook_dict.items()}
    all_BTF = encode_windows(model, sae, HOOK, STOP_AT_LAYER, tokens_BT)
    # Features whose maximum sits on BOS (the random SAE has some): there the two ways differ.
    bos_led = torch.nonzero(all_BTF[:, 0].amax(0) > all_BTF[:, 1:].amax((0, 1)) + 1e-3).flatten().tolist()
    assert bos_led
    FEATURES = [0, 3, 7, 31] + bos_led[:2]
    dense_BTF = all_BTF[..., FEATURES]

    # Every position, BOS included: sae-vis's maxima are the dense maxima.
    with_bos = max_activations(compute_sae_vis_data(model, sae, HOOK, tokens_BT, FEATURES, exclude_bos=False))
    torch.testing.assert_close(torch.tensor([with_bos[f] for f in FEATURES]), dense_BTF.amax((0, 1)), atol=1e-4, rtol=1e-4)

    # BOS left out, as our index leaves it out: sae-vis's maxima are the index's top-1 values.
    data = compute_sae_vis_data(model, sae, HOOK, tokens_BT, FEATURES, minibatch_size_features=2, minibatch_size_tokens=4)
    no_bos = max_activations(data)
    config = IndexConfig(n_features=D_SAE, vocab_size=model.cfg.d_vocab, k=1)
    acc, n_tokens = stream_index(model, sae, HOOK, STOP_AT_LAYER, windows, config, batch_size=4, progress=False)
    assert n_tokens == tokens_BT.numel()
    ex = acc.finalise().examples
    top1 = torch.zeros(D_SAE)
    top1[ex.feature_N[ex.rank_N == 0]] = ex.value_N[ex.rank_N == 0].float()
    torch.testing.assert_close(torch.tensor([no_bos[f] for f in FEATURES]), top1[FEATURES], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(top1[FEATURES], dense_BTF[:, 1:].amax((0, 1)), atol=1e-4, rtol=1e-4)
    assert all(with_bos[f] > no_bos[f] + 1e-3 for f in bos_led[:2])

    # The caller's SAE is as it was: no sae_lens 5 fields, its hook names, no error term.
    assert not hasattr(sae.cfg, "hook_layer") and not hasattr(sae.cfg, "hook_name")
    assert {name: hook.name for name, hook in sae.hook_dict.items()} == hook_names
    assert sae.use_error_term is False

    html = dashboards_html(data)
    start = html.index("function defineData()")
    for f in FEATURES:
        assert f'"{f}": {{' in html[start:]
    assert f"const START_KEY = {json.dumps(str(min(FEATURES)))}" in html


def test_export_to_file_is_atomic(setup, tmp_path):
    model, sae, _, tokens_BT = setup
    out = tmp_path / "exports" / "dash.html"
    path, maxes = export_to_file(model, sae, HOOK, tokens_BT[:2], [5, 2, 5], out)
    assert path == out and sorted(maxes) == [2, 5]
    html = out.read_text(encoding="utf-8")
    assert '"5": {' in html and '"2": {' in html and "<script>" in html
    assert [p.name for p in out.parent.iterdir()] == ["dash.html"]  # no temporary left behind


def test_bad_inputs(setup, monkeypatch):
    model, sae, _, tokens_BT = setup
    for bad in ([D_SAE], [-1], []):
        with pytest.raises(SaeVisExportError, match="feature"):
            compute_sae_vis_data(model, sae, HOOK, tokens_BT, bad)
    with pytest.raises(SaeVisExportError, match="empty"):
        compute_sae_vis_data(model, sae, HOOK, tokens_BT[:0], [1])
    with pytest.raises(SaeVisExportError, match="2-D"):
        compute_sae_vis_data(model, sae, HOOK, tokens_BT[0], [1])
    with pytest.raises(SaeVisExportError, match="blocks"):
        compute_sae_vis_data(model, sae, "hook_embed", tokens_BT, [1])
    with pytest.raises(SaeVisExportError, match="too short"):
        compute_sae_vis_data(model, sae, HOOK, tokens_BT[:, :11], [1])
    docs = pd.DataFrame({"doc_id": ["a"], "text": [TEXTS[0]]})
    with pytest.raises(SaeVisExportError, match="No document has 60 tokens"):
        corpus_windows(model.tokenizer, docs, n_ctx=64, n_tokens=100, row_len=60)
    with pytest.raises(SaeVisExportError, match="longer than the run's windows"):
        corpus_windows(model.tokenizer, docs, n_ctx=64, n_tokens=100, row_len=65)

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    with pytest.raises(SaeVisExportError, match=r"not installed.*pip install --no-deps -r requirements-sae-vis.txt"):
        compute_sae_vis_data(model, sae, HOOK, tokens_BT, [1])
    monkeypatch.setattr(metadata, "version", lambda name: "0.2.15")
    with pytest.raises(SaeVisExportError, match="random SAE"):
        compute_sae_vis_data(model, sae, HOOK, tokens_BT, [1])


def test_cli_helpers(tmp_path):
    assert parse_features("3, 1,2") == [3, 1, 2]
    with pytest.raises(Exception, match="comma-separated"):
        parse_features("1,x")
    assert default_html_path(tmp_path, "s", [1, 2]) == tmp_path / "exports" / "sae_vis_s_1-2.html"
    # The longest row length <= n_ctx whose windows fill the tokens asked for.
    assert _auto_row_len([100, 300, 200, 50], n_ctx=512, n_tokens=400) == 200
    assert _auto_row_len([100, 300, 200, 50], n_ctx=250, n_tokens=400) == 200
    assert _auto_row_len([600, 600], n_ctx=512, n_tokens=1000) == 512
    assert _auto_row_len([10, 12, 12], n_ctx=512, n_tokens=10_000) == 10  # too few: the length holding most
    with pytest.raises(SaeVisExportError, match="longest has 3"):
        token_rows([type("W", (), {"token_ids": [1, 2, 3]})()], row_len=5)
