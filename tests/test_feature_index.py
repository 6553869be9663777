"""The streaming pass of the feature index on a miniature Qwen2 and a random StandardSAE:
top-k values equal a brute-force dense computation; shards merge to the single pass bit for bit."""

from __future__ import annotations

import torch
from sae_lens import StandardSAE, StandardSAEConfig

from explorer.feature_aggregates import IndexConfig
from explorer.feature_index import CorpusDocument, encode_windows, make_windows, stream_index
from explorer.labels import label_text, has_backtracking
from explorer.model_loading import load_model
from tests.hub_fixtures import mini_qwen2_dir  # noqa: F401  (fixture)

HOOK, LAYER, K = "blocks.0.hook_resid_post", 0, 4
TEXTS = [
    "Let me compute 3 + 4. Wait, that is wrong. Maybe it is 7.",
    "The answer is 12 because 3 times 4 is 12. Therefore done.",
    "Hmm, alternatively we could try again. Actually no, the first way works.",
    "So x = 2. But wait, check: 2 + 2 = 4. Yes.",
] * 3


def _setup(model_dir):
    model = load_model(model_dir, device="cpu")
    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=model.cfg.d_model, d_sae=32))
    with torch.no_grad():
        sae.W_enc.normal_()
        sae.b_enc.zero_()
    docs = []
    for i, text in enumerate(TEXTS):
        spans = label_text(text)
        docs.append(CorpusDocument(f"d{i}", text, spans, has_backtracking(spans)))
    windows = make_windows(model.tokenizer, docs, context_size=8)  # small: documents split
    config = IndexConfig(n_features=32, vocab_size=model.cfg.d_vocab, k=K)
    return model, sae, windows, config


def test_topk_equals_brute_force_and_shards_merge(mini_qwen2_dir):  # noqa: F811
    model, sae, windows, config = _setup(mini_qwen2_dir)
    assert len({w.doc_id for w in windows}) < len(windows)  # some document was split
    acc, n_tokens = stream_index(model, sae, HOOK, LAYER, windows, config, batch_size=3, progress=False)
    assert n_tokens == sum(len(w.token_ids) for w in windows)
    maxes = []
    for w in windows:
        acts_TF = encode_windows(model, sae, HOOK, LAYER, torch.from_numpy(w.token_ids)[None])[0]
        acts_TF[~torch.from_numpy(w.valid)] = 0
        maxes.append(acts_TF.max(0).values)
    expected_FK = torch.stack(maxes).topk(K, dim=0).values.T
    ex = acc.finalise().examples
    got_FK = torch.zeros_like(expected_FK)
    got_FK[ex.feature_N, ex.rank_N] = ex.value_N.float()
    torch.testing.assert_close(got_FK, expected_FK, atol=1e-4, rtol=1e-4)

    # The batch plan does not depend on the shard, so each window is forwarded in the same batch
    # in both runs and the merge equals the single pass bit for bit, in any merge order.
    single_acc, _ = stream_index(model, sae, HOOK, LAYER, windows, config, batch_size=3, progress=False)
    parts = [stream_index(model, sae, HOOK, LAYER, windows, config, batch_size=3, shard=(i, 3), progress=False)[0] for i in range(3)]
    merged, single = parts[2].merge(parts[0]).merge(parts[1]).state_dict(), single_acc.state_dict()
    assert merged.keys() == single.keys()
    for key in single:
        assert torch.equal(merged[key], single[key]), key


def test_max_tokens_stops_early(mini_qwen2_dir):  # noqa: F811
    model, sae, windows, config = _setup(mini_qwen2_dir)
    _, n_tokens = stream_index(model, sae, HOOK, LAYER, windows, config, max_tokens=10, progress=False)
    assert 10 <= n_tokens < sum(len(w.token_ids) for w in windows)


def test_parse_shard():
    import pytest

    from explorer.feature_index import IndexInputError, parse_shard

    assert parse_shard("1/4") == (1, 4)
    assert parse_shard("auto", {"RANK": "2", "WORLD_SIZE": "8"}) == (2, 8)
    for bad in ("4/4", "x", "1/0"):
        with pytest.raises(IndexInputError):
            parse_shard(bad)
    with pytest.raises(IndexInputError, match="torchrun"):
        parse_shard("auto", {})
