"""`explorer.demo_lm`: the demo tokenizer, config, packing and a tiny training run."""

from __future__ import annotations

import dataclasses
import json
import unicodedata
from pathlib import Path

import pytest
import torch

from explorer.config import DemoLMSpec
from explorer.demo_lm import (
    ADDED_TOKENS,
    BOS_TOKEN,
    EOS_TOKEN,
    TrainReport,
    compute_contexts,
    compute_packed_tokens,
    default_sample_prompt,
    demo_model_config,
    extend_before,
    label_direction,
    packed_stream,
    plant_module,
    planted_direction,
    run_config,
    span_token_mask,
    train_demo_lm,
    train_tokenizer,
)
from explorer.labels import label_text
from explorer.prompts import THINK_CLOSE, THINK_OPEN, format_prompt
from explorer.synthetic import generate_traces, sentence_tags
from tests.hub_fixtures import MINI_TEXTS

UNICODE_TEXTS = [
    "naïve café — Σ x² ≥ 0",
    "日本語のテキスト、そして中文。",
    "emoji 🙂🚀 and a ZWJ family 👩‍👩‍👧",
    "tabs\tand\r\nwindows newlines\n\n\n   trailing   ",
    "full-width ｜bars｜ and ▁ lower blocks",
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    """The demo tokenizer after a save/reload, as every consumer sees it."""
    from transformers import AutoTokenizer

    directory = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(MINI_TEXTS * 4, 400).save_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory)


def test_special_tokens_are_single_ids_at_the_end(tokenizer):
    n_bpe = len(tokenizer) - len(ADDED_TOKENS)
    for offset, (content, special) in enumerate(ADDED_TOKENS):
        ids = tokenizer.encode(content, add_special_tokens=False)
        assert ids == [n_bpe + offset], content
        assert (content in tokenizer.all_special_tokens) == special, content
    assert tokenizer.bos_token == BOS_TOKEN and tokenizer.eos_token == EOS_TOKEN
    assert tokenizer.pad_token_id == tokenizer.eos_token_id


def test_encoding_prepends_one_bos(tokenizer):
    for text in ["", "x", MINI_TEXTS[0]]:
        ids = tokenizer(text)["input_ids"]
        assert ids[0] == tokenizer.bos_token_id
        assert ids.count(tokenizer.bos_token_id) == 1


def test_think_tags_round_trip_as_single_tokens(tokenizer):
    text = format_prompt("What is 3 + 4?") + "3 + 4 = 7.\n" + THINK_CLOSE + "\n\\boxed{7}"
    ids = tokenizer.encode(text, add_special_tokens=False)
    think_open = tokenizer.convert_tokens_to_ids(THINK_OPEN)
    think_close = tokenizer.convert_tokens_to_ids(THINK_CLOSE)
    assert ids.count(think_open) == 1 and ids.count(think_close) == 1
    # `<think>` is not special (as in the real tokenizer): skipping special tokens keeps it.
    assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text
    assert tokenizer.decode(ids) == text


@pytest.mark.parametrize("text", UNICODE_TEXTS)
def test_unicode_round_trips(tokenizer, text: str):
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_text_is_nfc_normalised_like_the_real_tokenizer(tokenizer):
    decomposed = "cafe\u0301"
    decoded = tokenizer.decode(tokenizer.encode(decomposed, add_special_tokens=False))
    assert decoded == unicodedata.normalize("NFC", decomposed) == "caf\u00e9"


def test_offsets_tile_ascii_text(tokenizer):
    text = MINI_TEXTS[0]
    encoding = tokenizer(text, return_offsets_mapping=True)
    offsets = encoding["offset_mapping"]
    assert offsets[0] == (0, 0)  # BOS covers no text
    assert "".join(text[start:end] for start, end in offsets[1:]) == text
    assert all(end == next_start for (_, end), (next_start, _) in zip(offsets[1:], offsets[2:]))


@pytest.mark.parametrize("text", UNICODE_TEXTS)
def test_offsets_are_sane_for_multibyte_text(tokenizer, text: str):
    # Byte-level BPE can split one character over several tokens: those tokens share its offsets.
    offsets = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)["offset_mapping"]
    starts = [start for start, _ in offsets]
    assert starts == sorted(starts)
    assert all(0 <= start < end <= len(text) for start, end in offsets)
    covered = set()
    for start, end in offsets:
        covered.update(range(start, end))
    assert covered == set(range(len(text)))


def test_demo_model_config_is_a_miniature_qwen2(tokenizer):
    config = demo_model_config(tokenizer, hidden_size=64, n_layers=3, n_heads=4, n_kv_heads=2, intermediate_size=256)
    assert config.model_type == "qwen2" and config.architectures == ["Qwen2ForCausalLM"]
    assert config.tie_word_embeddings is False
    assert config.vocab_size == len(tokenizer)
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (3, 4, 2)
    assert config.bos_token_id == tokenizer.bos_token_id and config.eos_token_id == tokenizer.eos_token_id
    with pytest.raises(ValueError):
        demo_model_config(tokenizer, hidden_size=64, n_heads=3)


def test_packing_joins_documents_with_eos_each_starting_with_bos(tokenizer):
    texts = ["one", "two three", "four"]
    stream = compute_packed_tokens(tokenizer, texts).tolist()
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    docs, current = [], []
    for token in stream:
        current.append(token)
        if token == eos:
            docs.append(current)
            current = []
    assert current == [] and len(docs) == 3
    for doc, text in zip(docs, texts):
        assert doc[0] == bos and doc[-1] == eos
        assert tokenizer.decode(doc[1:-1]) == text
    rows = compute_contexts(compute_packed_tokens(tokenizer, texts), 4)
    assert rows.shape == (len(stream) // 4, 4)
    assert rows.flatten().tolist() == stream[: rows.numel()]


def test_the_phrase_mask_marks_the_tokens_of_labelled_phrases():
    texts = [trace.record.text for trace in generate_traces(40, seed=3)]
    tokenizer = train_tokenizer(texts, 500)
    tokens, mask, no_labels = packed_stream(tokenizer, texts, phrase_mask=True)
    assert mask is not None and no_labels is None and mask.shape == tokens.shape
    assert (tokens == compute_packed_tokens(tokenizer, texts)).all()
    # Brute force, per document: a token is marked when one of its characters lies in a labelled phrase.
    expected = []
    for text in texts:
        in_phrase = [False] * len(text)
        for span in label_text(text):
            in_phrase[span.start : span.end] = [True] * (span.end - span.start)
        encoding = tokenizer(text, return_offsets_mapping=True)
        expected += [0.0] + [float(any(in_phrase[a:b])) for a, b in encoding["offset_mapping"][1:]] + [0.0]  # BOS .. EOS
    assert mask.tolist() == expected
    assert 0 < mask.sum() < len(mask) / 10


def test_span_token_mask_marks_the_tokens_that_overlap_a_span():
    # Tokens: BOS (no characters), "Wait" [0, 4), "," [4, 5), " that" [5, 10), " is" [10, 13), " wrong" [13, 19),
    # "." [19, 20), " 2" [20, 22), " +" [22, 24), " 2" [24, 26), "\n" [26, 27).
    offsets = [(0, 0), (0, 4), (4, 5), (5, 10), (10, 13), (13, 19), (19, 20), (20, 22), (22, 24), (24, 26), (26, 27)]
    # Two spans: "that is wrong." and a span whose edges cut tokens ("+ 2": " +" and " 2" overlap it).
    assert span_token_mask(offsets, [(6, 20), (23, 26)]).tolist() == [0, 0, 0, 1, 1, 1, 1, 0, 1, 1, 0]
    assert span_token_mask(offsets, []).tolist() == [0.0] * len(offsets)
    assert span_token_mask(offsets, [(0, 27)]).tolist() == [0.0] + [1.0] * 10  # BOS never


def test_the_label_mask_marks_the_tokens_of_each_texts_spans(tokenizer):
    texts = ["Wait, that is wrong. 3 + 4 = 7.\nSo 7.", "No span here.", "3 + 4 = 7. Wait, 8."]
    spans = [[(0, 20), (21, 31)], [], [(11, 19)]]
    tokens, phrases, labels = packed_stream(tokenizer, texts, label_spans=spans)
    assert phrases is None and labels is not None and labels.shape == tokens.shape
    expected = []
    for text, text_spans in zip(texts, spans):
        inside = [any(a <= i < b for a, b in text_spans) for i in range(len(text))]
        encoding = tokenizer(text, return_offsets_mapping=True)
        expected += [0.0] + [float(any(inside[a:b])) for a, b in encoding["offset_mapping"][1:]] + [0.0]  # BOS .. EOS
    assert labels.tolist() == expected
    # By hand: the third text's marked tokens spell its span.
    doc = tokenizer(texts[2])["input_ids"]
    start = len(tokens) - len(doc) - 1
    marked = [t for t, m in zip(tokens[start:].tolist(), labels[start:].tolist()) if m]
    assert tokenizer.decode(marked).strip() == "Wait, 8."
    with pytest.raises(ValueError, match="2 lists of spans for 3 texts"):
        packed_stream(tokenizer, texts, label_spans=spans[:2])


def test_the_label_direction_is_another_zero_mean_unit_direction_orthogonal_to_the_first():
    first, second = planted_direction(128, seed=0), label_direction(128, seed=0)
    assert abs(float(second.norm()) - 1) < 1e-6 and abs(float(second.sum())) < 1e-5
    assert abs(float(first @ second)) < 1e-6
    assert not torch.allclose(label_direction(128, seed=1), second)


def test_extend_before_marks_the_tokens_before_each_phrase():
    import numpy as np

    mask = np.array([0, 0, 1, 1, 0, 0, 0, 1, 0], dtype=np.float32)
    assert extend_before(mask, 0).tolist() == mask.tolist()
    assert extend_before(mask, 1).tolist() == [0, 1, 1, 1, 0, 0, 1, 1, 0]
    assert extend_before(mask, 2).tolist() == [1, 1, 1, 1, 0, 1, 1, 1, 0]
    assert mask.tolist() == [0, 0, 1, 1, 0, 0, 0, 1, 0]  # not modified in place


def test_default_sample_prompt_is_the_prompt_part_of_a_trace():
    trace = format_prompt("What is 3 + 4?") + "3 + 4 = 7\n</think>\n\\boxed{7}"
    longer = format_prompt("What is 30 + 40?") + "30 + 40 = 70, and that is the answer\n</think>\n\\boxed{70}"
    assert default_sample_prompt(["no think tag here", longer, trace]) == format_prompt("What is 3 + 4?")
    assert default_sample_prompt(["nothing"]).endswith(THINK_OPEN + "\n")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TrainReport]:
    out_dir = tmp_path_factory.mktemp("demo-lm") / "model"
    texts = [text.replace("3 + 4", f"{a} + {b}") for a in range(10) for b in range(6) for text in MINI_TEXTS[:2]]
    spec = DemoLMSpec(
        vocab_size=400, hidden_size=64, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=256, context=64,
        batch_size=8, steps=20, lr=3e-3, seed=0, time_budget_s=120,
    )
    report = train_demo_lm(texts, out_dir, spec, sample_tokens=12, progress=False)
    return out_dir, report


def test_the_report_config_keeps_the_keys_saved_runs_hold():
    """train_report.json's `config` held train_demo_lm's keyword arguments before it took a spec; a run
    built then (runs/demo) reads the same as one built now."""
    saved_before = {
        "vocab_size": 2048, "hidden_size": 128, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "intermediate_size": 512,
        "max_position_embeddings": 512, "context": 256, "batch_size": 8, "steps": 1200, "lr": 0.003, "seed": 0,
        "time_budget_s": 140.0, "plant_weight": 0.0, "plant_hook": "blocks.1.hook_mlp_out", "plant_value": 8.0,
        "plant_lead": 0, "plant_value_before": None, "heldout_fraction": 0.02, "sample_prompt": None, "sample_tokens": 120,
    }
    assert run_config(DemoLMSpec(), None, 120) == saved_before


def test_a_tiny_training_run_lowers_the_loss(trained):
    _, report = trained
    first_loss = report.loss_curve[0][1]
    assert report.steps == 20 and report.stopped_by == "steps"
    assert report.loss_curve[-1][0] == 20
    assert report.final_train_loss < first_loss - 1.0
    assert report.heldout_loss < first_loss
    assert report.tokens_seen == 20 * 8 * 64
    assert report.n_params > 0 and report.n_heldout_docs >= 1
    assert report.sample_text.startswith(report.sample_prompt)
    json.dumps(report.to_dict())  # train_report.json must serialise


def test_the_saved_directory_is_a_complete_hf_model(trained):
    out_dir, _ = trained
    expected = ["config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json"]
    for name in expected:
        assert (out_dir / name).is_file(), name
    config = json.loads((out_dir / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"] and config["tie_word_embeddings"] is False


def test_load_model_loads_it_and_matches_transformers(trained):
    from transformers import AutoModelForCausalLM

    from explorer.model_loading import load_model

    out_dir, report = trained
    model = load_model(out_dir, device="cpu")
    hf_model = AutoModelForCausalLM.from_pretrained(out_dir).eval()
    tokens = model.to_tokens(report.sample_prompt)
    with torch.no_grad():
        logits_BTV = model(tokens)
        hf_logits_BTV = hf_model(tokens).logits
    torch.testing.assert_close(logits_BTV.log_softmax(-1), hf_logits_BTV.log_softmax(-1), atol=1e-4, rtol=0)
    # Raw logits differ only by a constant per position (center_unembed).
    centred_BTV = logits_BTV - logits_BTV.mean(-1, keepdim=True)
    hf_centred_BTV = hf_logits_BTV - hf_logits_BTV.mean(-1, keepdim=True)
    torch.testing.assert_close(centred_BTV, hf_centred_BTV, atol=1e-4, rtol=0)


def test_the_plant_hooks_read_what_transformer_lens_calls_those_hooks(trained):
    """The plant's loss reads transformers modules; the SAE reads transformer-lens hooks of the processed
    model. Projected on a planted direction (zero mean, so centring the writing weights keeps it) the
    two agree."""
    from transformers import AutoModelForCausalLM

    from explorer.model_loading import load_model

    out_dir, report = trained
    hf_model = AutoModelForCausalLM.from_pretrained(out_dir).eval()
    tl_model = load_model(out_dir, device="cpu")
    direction_D = planted_direction(hf_model.config.hidden_size, seed=5)
    assert abs(float(direction_D.norm()) - 1) < 1e-6 and abs(float(direction_D.sum())) < 1e-5
    tokens = tl_model.to_tokens(report.sample_prompt)
    hooks = ["blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    outputs = {}
    for hook in hooks:
        module = plant_module(hf_model, hook)
        module.register_forward_hook(lambda m, i, o, hook=hook: outputs.__setitem__(hook, o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        hf_model(tokens)
        _, cache = tl_model.run_with_cache(tokens, names_filter=hooks)
    for hook in hooks:
        torch.testing.assert_close(outputs[hook] @ direction_D, cache[hook] @ direction_D, atol=1e-4, rtol=1e-4)
    for bad in ("blocks.2.hook_mlp_out", "blocks.1.hook_attn_out", "mlp_out"):
        with pytest.raises(ValueError, match="plant_hook must be"):
            plant_module(hf_model, bad)


def test_a_planted_training_run_learns_the_feature(tmp_path: Path):
    traces = generate_traces(300, seed=4)
    texts = [trace.record.text for trace in traces]
    plain = DemoLMSpec(
        vocab_size=500, hidden_size=64, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=256, context=128,
        batch_size=8, steps=150, lr=3e-3, seed=0, time_budget_s=120,
    )
    planted = dataclasses.replace(
        plain, plant_weight=1.0, plant_value=8.0, plant_lead=1, plant_label="tag:uncertainty_management", plant_label_value=4.0
    )
    # The correction lines, as the train-lm stage reads them from the run's label set tag:uncertainty_management.
    spans = [[(s, e) for s, e, tags in sentence_tags(trace) if "uncertainty_management" in tags] for trace in traces]
    report = train_demo_lm(texts, tmp_path / "model", planted, label_spans=spans, sample_tokens=2, progress=False)
    direction, second = torch.tensor(report.planted_direction), torch.tensor(report.label_direction)
    assert direction.shape == second.shape == (64,) and abs(float(direction.norm()) - 1) < 1e-5
    assert abs(float(direction @ second)) < 1e-5
    # Writing 0 everywhere would score value^2 x the share of marked tokens; the model does much better.
    tokenizer = train_tokenizer(texts, 500)
    _, mask, label_mask = packed_stream(tokenizer, texts, phrase_mask=True, label_spans=spans)
    assert report.plant_loss < 0.5 * 8.0**2 * float(extend_before(mask, 1).mean())
    assert report.label_plant_loss < 0.5 * 4.0**2 * float(label_mask.mean())
    assert report.config["plant_label"] == "tag:uncertainty_management"
    unplanted = train_demo_lm(texts, tmp_path / "plain", plain, sample_tokens=2, progress=False)
    assert unplanted.plant_loss is None and unplanted.planted_direction is None
    assert unplanted.label_plant_loss is None and unplanted.label_direction is None


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"plant_weight": 1.0, "plant_hook": "blocks.3.hook_mlp_out"}, "plant_hook must be"),
        ({"plant_weight": 1.0, "plant_hook": "blocks.0.attn.hook_z"}, "plant_hook must be"),
        ({"plant_weight": -1.0}, "must not be negative"),
        ({"plant_weight": 1.0, "plant_lead": -1}, "must not be negative"),
        ({"plant_label": "tag:uncertainty_management"}, "needs plant_weight > 0"),
        ({"plant_weight": 1.0, "plant_label": "tag:uncertainty_management"}, "label_spans must be given exactly when"),
    ],
)
def test_a_bad_plant_setting_fails_before_any_work(tmp_path: Path, settings: dict, message: str):
    with pytest.raises(ValueError, match=message):
        train_demo_lm(MINI_TEXTS, tmp_path / "model", DemoLMSpec(n_layers=2, **settings), progress=False)
    assert not (tmp_path / "model").exists()


def test_training_stops_at_the_time_budget(tmp_path: Path):
    spec = DemoLMSpec(
        vocab_size=300, hidden_size=32, n_layers=1, n_heads=2, n_kv_heads=1, intermediate_size=64, context=32,
        batch_size=2, steps=10**6, time_budget_s=0.5,
    )
    report = train_demo_lm(MINI_TEXTS * 4, tmp_path / "model", spec, sample_tokens=2, progress=False)
    assert report.stopped_by == "time_budget"
    assert 0 < report.steps < 10**6
