"""The streaming pass of the feature index on a miniature Qwen2 and a random StandardSAE:
top-k values equal a brute-force dense computation; shards merge to the single pass bit for bit;
every window starts with BOS; the batched windowing equals a plain per-document one."""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from sae_lens import StandardSAE, StandardSAEConfig

from explorer.feature_aggregates import IndexConfig
from explorer.feature_index import CorpusDocument, Window, encode_windows, make_windows, stream_index
from explorer.labels import NO_GROUP, has_backtracking, label_text, token_group_ids
from explorer.lexicon import GROUPS, NOTEBOOK_GROUPS
from explorer.model_loading import load_model, load_tokenizer
from explorer.synthetic import generate_traces
from tests.hub_fixtures import MINI_TEXTS, mini_qwen2_dir  # noqa: F401  (fixture)

HOOK, STOP_AT_LAYER, K = "blocks.0.hook_resid_post", 1, 4  # the forward runs block 0 only
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
    windows = make_windows(model.tokenizer, docs, context_size=8, progress=False)  # small: documents split
    config = IndexConfig(n_features=32, vocab_size=model.cfg.d_vocab, k=K)
    return model, sae, windows, config


def _assert_top_k_is(acc, window_maxes: list[torch.Tensor]):
    """The index's top-k values of each feature are the k highest of its window maxima; returns the examples."""
    expected_FK = torch.stack(window_maxes).topk(K, dim=0).values.T
    ex = acc.finalise().examples
    got_FK = torch.zeros_like(expected_FK)
    got_FK[ex.feature_N, ex.rank_N] = ex.value_N.float()
    torch.testing.assert_close(got_FK, expected_FK, atol=1e-4, rtol=1e-4)
    return ex


def test_topk_equals_brute_force_and_shards_merge(mini_qwen2_dir):  # noqa: F811
    model, sae, windows, config = _setup(mini_qwen2_dir)
    assert len({w.doc_id for w in windows}) < len(windows)  # some document was split
    acc, n_tokens = stream_index(model, sae, HOOK, STOP_AT_LAYER, windows, config, batch_size=3, progress=False)
    assert n_tokens == sum(len(w.token_ids) for w in windows)
    maxes = []
    for w in windows:
        acts_TF = encode_windows(model, sae, HOOK, STOP_AT_LAYER, torch.from_numpy(w.token_ids)[None])[0]
        acts_TF[~torch.from_numpy(w.valid)] = 0
        maxes.append(acts_TF.max(0).values)
    _assert_top_k_is(acc, maxes)

    # The batch plan does not depend on the shard, so each window is forwarded in the same batch
    # in both runs and the merge equals the single pass bit for bit, in any merge order.
    single_acc, _ = stream_index(model, sae, HOOK, STOP_AT_LAYER, windows, config, batch_size=3, progress=False)
    parts = [stream_index(model, sae, HOOK, STOP_AT_LAYER, windows, config, batch_size=3, shard=(i, 3), progress=False)[0] for i in range(3)]
    merged, single = parts[2].merge(parts[0]).merge(parts[1]).state_dict(), single_acc.state_dict()
    assert merged.keys() == single.keys()
    for key in single:
        assert torch.equal(merged[key], single[key]), key


def test_max_tokens_stops_early(mini_qwen2_dir):  # noqa: F811
    model, sae, windows, config = _setup(mini_qwen2_dir)
    _, n_tokens = stream_index(model, sae, HOOK, STOP_AT_LAYER, windows, config, max_tokens=10, progress=False)
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


def _document(doc_id: str, text: str) -> CorpusDocument:
    spans = label_text(text)
    return CorpusDocument(doc_id, text, spans, has_backtracking(spans))


def test_every_window_starts_with_bos_and_sees_what_a_direct_forward_sees(mini_qwen2_dir):  # noqa: F811
    """A long document cut into many windows: each later window is BOS and the document's next
    tokens, so no mid-document token sits at position 0 (where Qwen models put attention-sink
    activations the SAE never saw), and the index's values are those of a direct forward of
    `BOS + the window's tokens` of the document."""
    model, sae, _, config = _setup(mini_qwen2_dir)
    tokenizer, bos = model.tokenizer, model.tokenizer.bos_token_id
    text = " ".join(MINI_TEXTS * 3)
    windows = make_windows(tokenizer, [_document("long", text)], context_size=16, progress=False)
    document = [bos] + tokenizer(text, add_special_tokens=False)["input_ids"]  # BOS is the document's token 0
    assert len(windows) > K
    assert [int(w.token_ids[0]) for w in windows] == [bos] * len(windows)
    assert [w.bos_prefixed for w in windows] == [False] + [True] * (len(windows) - 1)
    assert not any(w.valid[0] for w in windows)
    assert max(len(w.token_ids) for w in windows) == 16
    # Together the windows hold each token of the document once, and position p of a window is the
    # document's token `token_offset + p` (what a Live link points at).
    assert np.concatenate([w.token_ids[1:] for w in windows]).tolist() == document[1:]
    for w in windows:
        assert w.token_ids[1:].tolist() == document[w.token_offset + 1 : w.token_offset + len(w.token_ids)]

    acc, _ = stream_index(model, sae, HOOK, STOP_AT_LAYER, windows, config, batch_size=3, progress=False)
    special = torch.tensor(tokenizer.all_special_ids)
    maxes = []
    for w in windows:
        ids_1T = torch.tensor([[bos] + document[w.token_offset + 1 : w.token_offset + len(w.token_ids)]])
        _, cache = model.run_with_cache(ids_1T, names_filter=HOOK)  # the whole model, as it is
        acts_TF = sae.encode(cache[HOOK][0]).float().clamp_min(0)
        acts_TF[torch.isin(ids_1T[0], special)] = 0
        maxes.append(acts_TF.max(0).values)
    ex = _assert_top_k_is(acc, maxes)
    assert (ex.position_N > 0).all()


def _plain_windows(tokenizer, documents, context_size: int) -> list[Window]:
    """The reference: `make_windows` written one document and one token at a time."""
    special, bos = set(tokenizer.all_special_ids), tokenizer.bos_token_id
    notebook = {GROUPS.index(g) for g in NOTEBOOK_GROUPS}
    n_bos = 0 if bos is None else 1
    step = context_size - n_bos
    windows = []
    for doc in documents:
        enc = tokenizer(doc.text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        groups = token_group_ids(list(enc["offset_mapping"]), doc.spans).tolist()
        starts = [g in notebook and (i == 0 or groups[i - 1] != g) for i, g in enumerate(groups)]
        for k in range(max(math.ceil(len(ids) / step), n_bos)):
            part = slice(k * step, (k + 1) * step)
            tokens = [bos] * n_bos + ids[part]
            windows.append(Window(
                len(windows), doc.doc_id, k * step, np.array(tokens, dtype=np.int64),
                np.array([t not in special for t in tokens], dtype=bool),
                np.array([NO_GROUP] * n_bos + groups[part], dtype=np.int8),
                np.array([False] * n_bos + starts[part], dtype=bool), doc.has_backtracking, n_bos == 1 and k > 0,
            ))
    return windows


def test_make_windows_equals_a_plain_per_document_windowing(mini_qwen2_dir):  # noqa: F811
    """Batched tokenising and vectorised masks change nothing: real-format texts (special tokens in
    the text, unicode, an empty document, a long one), more documents than one tokenizer call takes,
    with and without BOS."""
    tokenizer = load_tokenizer(mini_qwen2_dir)
    texts = MINI_TEXTS + ["", " ".join(MINI_TEXTS * 4)] + [t.record.text for t in generate_traces(600, seed=1)]
    documents = [_document(f"d{i}", text) for i, text in enumerate(texts)]
    assert sum(bool(d.spans) for d in documents) > 100
    no_bos = copy.deepcopy(tokenizer)
    no_bos.bos_token = None
    for tok in (tokenizer, no_bos):
        for context_size in (16, 64):
            got = make_windows(tok, documents, context_size, progress=False)
            expected = _plain_windows(tok, documents, context_size)
            assert len(got) == len(expected)
            for g, e in zip(got, expected):
                for name, a, b in zip(Window._fields, g, e):
                    if isinstance(b, np.ndarray):
                        assert a.dtype == b.dtype and np.array_equal(a, b), (g.context_id, name)
                    else:
                        assert a == b, (g.context_id, name)


def test_a_token_budget_stops_tokenising_early_and_keeps_the_same_windows(mini_qwen2_dir):  # noqa: F811
    from explorer.feature_index import limit_tokens
    from explorer.model_loading import load_tokenizer
    from explorer.synthetic import generate_traces

    tokenizer = load_tokenizer(mini_qwen2_dir)
    docs = [CorpusDocument(t.record.doc_id, t.record.text, list(t.phrase_spans), True) for t in generate_traces(1500, seed=3)]
    everything = make_windows(tokenizer, docs, 64, progress=False)
    budget = 5_000
    early = make_windows(tokenizer, docs, 64, progress=False, max_tokens=budget)
    assert len(early) < len(everything) / 2  # it stopped after the first chunk of 512 documents
    kept_early, kept_all = limit_tokens(early, budget)[0], limit_tokens(everything, budget)[0]
    assert len(kept_early) == len(kept_all)
    for a, b in zip(kept_early, kept_all):
        assert a.context_id == b.context_id and a.doc_id == b.doc_id and (a.token_ids == b.token_ids).all()


def test_windows_carry_each_tokens_sentence_and_label_bits(mini_qwen2_dir):  # noqa: F811
    """Per token: the sentence holding its last character, and for each label set whether the token
    overlaps one of its spans and whether it is a span's first token, checked character by character,
    across window cuts (each window carries its own tokens' values)."""
    from explorer.feature_index import LabelSetInput

    tokenizer = load_tokenizer(mini_qwen2_dir)
    docs = [CorpusDocument(f"d{i}", text, (), False) for i, text in enumerate(TEXTS[:4])]
    sentences, spans_a, spans_b = {}, {}, {}
    for doc in docs:
        bounds, start = [], 0
        for i, ch in enumerate(doc.text):
            if ch in ".?!" and (i + 1 == len(doc.text) or doc.text[i + 1] == " "):
                bounds.append((start, i + 1))
                start = i + 2
        sentences[doc.doc_id] = bounds
        spans_a[doc.doc_id] = bounds[1:2]  # a sentence-level set: the second sentence
        spans_b[doc.doc_id] = [(3, 9)]  # a span inside the first word or two
    labels = [LabelSetInput("second", "sentence", "test", spans_a), LabelSetInput("early", "span", "test", spans_b),
              LabelSetInput("none", "span", "test", {})]
    windows = make_windows(tokenizer, docs, context_size=6, progress=False, label_sets=labels, sentences=sentences)
    plain = make_windows(tokenizer, docs, context_size=6, progress=False)
    assert [w.token_ids.tolist() for w in windows] == [w.token_ids.tolist() for w in plain]  # same cuts
    checked = 0
    for doc in docs:
        enc = tokenizer(doc.text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        mine = [w for w in windows if w.doc_id == doc.doc_id]
        for w in mine:
            for p in range(int(w.bos_prefixed or w.token_offset == 0), len(w.token_ids)):
                i = w.token_offset + p - 1  # the document's token i (its BOS is token 0 of the first window)
                if w.token_offset == 0:
                    i = p - 1
                start, end = offsets[i]
                last = end - 1
                expected_sentence = next((k for k, (a, b) in enumerate(sentences[doc.doc_id]) if a <= last < b), -1)
                assert w.sentence_ids[p] == expected_sentence
                for label, ls in enumerate(labels):
                    spans = ls.spans.get(doc.doc_id, ())
                    overlaps = any(start < b and end > a for a, b in spans)
                    first = any(start < b and end > a and not any(s2 < b and e2 > a for s2, e2 in offsets[:i] if e2 > s2)
                                for a, b in spans)
                    assert bool((int(w.label_bits[p]) >> label) & 1) == overlaps
                    assert bool((int(w.label_start_bits[p]) >> label) & 1) == first
                checked += 1
            if w.token_offset == 0:
                assert w.sentence_ids[0] == -1 and w.label_bits[0] == 0  # BOS
    assert checked == sum(len(tokenizer(d.text, add_special_tokens=False)["input_ids"]) for d in docs)
    assert any(int(w.label_bits.max()) & 1 for w in windows) and any(int(w.label_bits.max()) & 2 for w in windows)
