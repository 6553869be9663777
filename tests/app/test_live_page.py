"""The Live page and `explorer.live` on a real tiny run: a miniature Qwen2, a synthetic corpus and an
SAE trained with sae_lens in seconds."""

import contextlib
import dataclasses
import importlib
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest
from transformer_lens.components import Embed

from explorer import artifacts
from explorer.config import CorpusSpec, Profile, SAERecipe
from explorer.live import EXAMPLE_TRACE, LiveInputError, compute_live_activations, compute_top_features
from explorer.model_loading import load_model
from explorer.sae_loading import load_sae
from precompute.cli import save_profile
from precompute.corpus_stage import run_corpus_stage
from precompute.train_sae_stage import run_train_sae_stage
from tests.hub_fixtures import mini_qwen2_dir  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
LIVE_PAGE = REPO / "app_pages" / "live.py"
HOOK = "blocks.1.hook_mlp_out"
TINY_SAE = SAERecipe(
    expansion_factor=2, l1_coefficient=1.0, lr=3e-3, lr_scheduler_name="constant", training_steps=30,
    train_batch_size_tokens=128, context_size=32, n_checkpoints=0, n_batches_for_norm_estimate=2,
    n_batches_in_buffer=8, store_batch_size_prompts=8,
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, mini_qwen2_dir):  # noqa: F811
    runs = tmp_path_factory.mktemp("runs")
    run_dir = runs / "tiny"
    corpus = CorpusSpec(source="synthetic", n_traces=200, seed=0)
    profile = Profile(name="tiny", model=str(mini_qwen2_dir), hook_name=HOOK, n_ctx=64, corpus=corpus, sae=TINY_SAE)
    save_profile(profile, run_dir)
    run_corpus_stage(corpus, run_dir)
    sae_id = run_train_sae_stage(profile, run_dir)
    return runs, run_dir, sae_id, profile


def live_app(runs: Path, monkeypatch) -> AppTest:
    monkeypatch.setenv("EXPLORER_RUNS_DIR", str(runs))
    import explorer.artifacts

    importlib.reload(explorer.artifacts)  # the pickers read DEFAULT_RUNS_DIR when they run
    return AppTest.from_file(str(LIVE_PAGE), default_timeout=120)


def test_live_values_equal_a_direct_forward_pass(tiny_run):
    _, run_dir, sae_id, profile = tiny_run
    model = load_model(profile.model, device="cpu", n_ctx=profile.n_ctx)
    sae = load_sae(run_dir / artifacts.SAES_DIR / sae_id).sae
    live = compute_live_activations(model, sae, HOOK, "x = 3. Wait, that's not right.")
    # Independent route: the full forward pass (no stop_at_layer), then the SAE.
    tokens = model.to_tokens("x = 3. Wait, that's not right.")
    _, cache = model.run_with_cache(tokens, names_filter=HOOK)
    expected_TF = sae.encode(cache[HOOK][0])
    assert live.token_ids == tokens[0].tolist()
    torch.testing.assert_close(live.acts_TF, expected_TF, rtol=1e-5, atol=1e-6)
    assert not live.valid_T[0] and live.valid_T[1:].all()  # BOS is not a text token
    assert "".join(live.token_texts[1:]) == "x = 3. Wait, that's not right."  # offsets cover the text
    assert [p.group for p in live.phrases] == ["correction"]
    top = compute_top_features(live, k=5)
    assert top == sorted(top, key=lambda f: -f.value)
    assert top[0].value == pytest.approx(float(live.acts_TF[1:].max()))


def test_live_truncates_to_the_context_and_rejects_empty_text(tiny_run):
    _, run_dir, sae_id, profile = tiny_run
    model = load_model(profile.model, device="cpu", n_ctx=profile.n_ctx)
    sae = load_sae(run_dir / artifacts.SAES_DIR / sae_id).sae
    live = compute_live_activations(model, sae, HOOK, EXAMPLE_TRACE)
    assert len(live.token_ids) == 64 and live.truncated and live.n_text_tokens > 64
    with pytest.raises(LiveInputError, match="Type or paste"):
        compute_live_activations(model, sae, HOOK, "   \n")


def test_live_page_runs_and_shows_the_example(tiny_run, monkeypatch):
    runs, _, sae_id, _ = tiny_run
    at = live_app(runs, monkeypatch)
    at.run()
    assert not at.exception
    assert at.sidebar.selectbox(key="sae_picker").value == sae_id
    assert "64 tokens on cpu" in at.caption[0].value
    assert "Live ran the first 64" in at.warning[0].value and "characters are left out" in at.warning[0].value
    bodies = " ".join(h.proto.body for h in at.get("html"))
    assert "title=\"token 1:" in bodies and "<mark" in bodies


def test_live_page_shows_trace_text_as_text(tiny_run, monkeypatch):
    runs, _, _, _ = tiny_run
    at = live_app(runs, monkeypatch)
    at.run()
    at.text_area(key="live_text").set_value('<script>alert(1)</script> <img src=x onerror="alert(2)"> Wait.').run()
    assert not at.exception
    bodies = " ".join(h.proto.body for h in at.get("html"))
    assert "<script>" not in bodies and "<img" not in bodies
    assert "&lt;script&gt;" in bodies


def test_live_page_empty_text_gets_a_hint(tiny_run, monkeypatch):
    runs, _, _, _ = tiny_run
    at = live_app(runs, monkeypatch)
    at.run()
    at.text_area(key="live_text").set_value("").run()
    assert not at.exception
    assert "Type or paste" in at.info[0].value


@contextlib.contextmanager
def counting_forwards():
    """A list holding how many forward passes any transformer_lens model made (each embeds its tokens
    once), counted by a torch forward hook on every module while the block runs."""
    count = [0]

    def hook(module, inputs, output):
        if isinstance(module, Embed):
            count[0] += 1

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield count
    finally:
        handle.remove()


def test_live_page_runs_the_model_once_per_text(tiny_run, monkeypatch):
    runs, _, _, _ = tiny_run
    at = live_app(runs, monkeypatch)
    at.run()
    text = "A text only this test runs: 6 * 7 = 41. Wait, that's not right: 6 * 7 = 42."
    with counting_forwards() as forwards:
        at.text_area(key="live_text").set_value(text).run()
        assert not at.exception and forwards == [1]
        at.slider(key="live_position").set_value(3).run()
        at.number_input(key="live_feature").set_value(1).run()
        assert any(c.value.startswith("Token 3:") for c in at.caption)
        assert forwards == [1]  # the display widgets rerun the page, not the model
        at.checkbox(key="wrap_prompt").check().run()  # another text
        assert forwards == [2]
        at.checkbox(key="wrap_prompt").uncheck().run()  # the first text again: already computed
        assert not at.exception and forwards == [2]


def test_live_page_shows_each_sentence_with_the_features_max_and_mean(tiny_run, monkeypatch):
    runs, run_dir, sae_id, profile = tiny_run
    at = live_app(runs, monkeypatch)
    at.session_state["live_text"] = "I add 2 and 3. Wait, that's not right. It is 5."
    at.run()
    assert not at.exception
    feature = int(at.number_input(key="live_feature").value)
    table = at.dataframe[-1].value
    assert table["text"].tolist() == ["I add 2 and 3.", "Wait, that's not right.", "It is 5."]
    assert table["tags"].tolist()[1] == "sentence:backtracking, sentence:any_phrase"
    # Independent route: the page's own activations, grouped by hand on the token offsets.
    model = load_model(profile.model, device="cpu", n_ctx=profile.n_ctx)
    sae = load_sae(run_dir / artifacts.SAES_DIR / sae_id).sae
    live = compute_live_activations(model, sae, HOOK, at.session_state["live_text"])
    values = live.acts_TF[:, feature]
    first = [i for i, (s, e) in enumerate(live.offsets) if e > s and e - 1 < 14]
    assert table["max_activation"].iloc[0] == pytest.approx(float(values[first].max()), abs=1e-5)
    assert table["mean_activation"].iloc[0] == pytest.approx(float(values[first].mean()), abs=1e-5)
