"""Steering on a miniature Qwen2 and a random StandardSAE: coefficient 0 and clamping a feature to its
own value reproduce the baseline token for token, the rate counter on hand-written texts, the
statistics, storage round-trip, and the `steer` command."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig

from explorer import artifacts
from explorer.model_loading import load_model
from explorer.prompts import format_prompt, prompt_of_document, prompt_of_trace
from explorer.runs import database_path, read_documents
from explorer.steering import (
    SteeringConfig,
    SteeringHook,
    SteeringInputError,
    as_prompt,
    compute_estimate,
    compute_steering,
    make_sample,
    parse_coefficients,
    summarise_conditions,
)
from explorer.steering_store import (
    read_causal_effects,
    read_condition_table,
    read_steering_result,
    read_steering_runs,
    write_steering_result,
)
from tests.hub_fixtures import mini_qwen2_dir  # noqa: F401  (fixture)

HOOK = "blocks.1.hook_mlp_out"
D_SAE = 32
PROMPT = format_prompt("What is 3 + 4?")


def random_sae(d_in: int, d_sae: int = D_SAE, seed: int = 0) -> StandardSAE:
    torch.manual_seed(seed)
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae))
    sae.cfg.metadata.hook_name = HOOK
    sae.cfg.metadata.model_name = "mini-qwen2"
    with torch.no_grad():
        sae.W_enc.normal_()
        sae.W_dec.normal_()
        sae.b_enc.normal_()
    return sae


@pytest.fixture(scope="module")
def model(mini_qwen2_dir):  # noqa: F811
    return load_model(mini_qwen2_dir, device="cpu", n_ctx=128)


@pytest.fixture(scope="module")
def sae(model):
    return random_sae(model.cfg.d_model)


def _tokens(result, coef):
    return [s.token_ids for s in result.samples_for(coef)]


# --- generation -----------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_coefficient_zero_reproduces_the_baseline_token_for_token(model, sae, temperature):
    config = SteeringConfig(feature_id=3, coefs=(0.0, 40.0), n_samples=3, max_new_tokens=16, temperature=temperature)
    result = compute_steering(model, sae, HOOK, [PROMPT], config)
    assert result.complete and len(result.samples) == 9
    assert _tokens(result, 0.0) == _tokens(result, None)
    assert _tokens(result, 40.0) != _tokens(result, None)  # the intervention does act
    assert all(s.n_tokens > 0 for s in result.samples)


def test_baseline_equals_transformer_lens_generate(model, sae):
    """The KV-cache loop (shared prompt prefix, rows leaving at EOS) generates what transformer-lens does."""
    config = SteeringConfig(feature_id=0, coefs=(5.0,), n_samples=1, max_new_tokens=20, temperature=0.0)
    ours = compute_steering(model, sae, HOOK, [PROMPT], config).samples_for(None)[0]
    tokens = model.to_tokens(PROMPT)
    reference = model.generate(tokens, max_new_tokens=20, do_sample=False, verbose=False, stop_at_eos=False)
    expected = reference[0, tokens.shape[1] :].tolist()
    eos = model.tokenizer.eos_token_id
    expected = expected[: expected.index(eos)] if eos in expected else expected
    assert list(ours.token_ids) == expected


def test_clamping_a_feature_to_its_own_value_reproduces_the_baseline(model):
    sae = random_sae(model.cfg.d_model, seed=1)
    with torch.no_grad():  # feature 5 reads nothing and always sits at 1.5
        sae.W_enc[:, 5] = 0.0
        sae.b_enc[5] = 1.5
    config = SteeringConfig(feature_id=5, mode="clamp", coefs=(1.5, 60.0), n_samples=3, max_new_tokens=16)
    result = compute_steering(model, sae, HOOK, [PROMPT], config)
    assert _tokens(result, 1.5) == _tokens(result, None)
    assert _tokens(result, 60.0) != _tokens(result, None)


def test_clamp_is_the_sae_spliced_in_with_its_error_term(model, sae):
    """Our clamp equals sae_lens's own route: the SAE attached with use_error_term and the feature set
    in `hook_sae_acts_post`; clamping to the value the feature has changes nothing."""
    tokens = model.to_tokens(PROMPT)
    feature, value = 7, 3.0

    def set_feature(acts, hook):
        acts[..., feature] = value
        return acts

    model.add_sae(sae, use_error_term=True)
    try:
        expected = model.run_with_hooks(tokens, fwd_hooks=[(f"{HOOK}.hook_sae_acts_post", set_feature)])
    finally:
        model.reset_saes()
    hook = SteeringHook(sae, feature, "clamp", torch.tensor([value]), torch.tensor([True]))
    ours = model.run_with_hooks(tokens, fwd_hooks=[(HOOK, hook)])
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)

    _, cache = model.run_with_cache(tokens, names_filter=HOOK)
    x = cache[HOOK]
    own = sae.encode(x)[..., feature]
    # Clamped to the value it has at the last position: that position comes back bit for bit.
    own_hook = SteeringHook(sae, feature, "clamp", own[0, -1:].clone(), torch.tensor([True]))
    assert torch.equal(own_hook(x[:, -1:]), x[:, -1:])


def test_add_hook_adds_the_decoder_direction_to_steered_rows_only(sae):
    x = torch.randn(3, 2, sae.cfg.d_in)
    hook = SteeringHook(sae, 4, "add", torch.tensor([0.0, 2.0, -1.0]), torch.tensor([False, True, True]))
    out = hook(x)
    assert torch.equal(out[0], x[0])
    torch.testing.assert_close(out[1], x[1] + 2.0 * sae.W_dec[4])
    torch.testing.assert_close(out[2], x[2] - sae.W_dec[4])


def test_stop_and_progress(model, sae):
    calls = []
    config = SteeringConfig(feature_id=1, coefs=(4.0,), n_samples=2, max_new_tokens=30, batch_rows=2)
    result = compute_steering(
        model, sae, HOOK, [PROMPT], config, progress=calls.append, should_stop=lambda: len(calls) >= 3
    )
    assert not result.complete
    assert [c.steps_done for c in calls] == [1, 2, 3]
    assert calls[0].n_chunks == 2 and calls[0].steps_total == 60
    assert len(result.samples) == 2 and all(s.n_tokens <= 3 for s in result.samples)  # only the first chunk ran


def test_bounds_are_enforced(model, sae):
    with pytest.raises(SteeringInputError, match="does not exist"):
        compute_steering(model, sae, HOOK, [PROMPT], SteeringConfig(feature_id=D_SAE))
    with pytest.raises(SteeringInputError, match="max new tokens"):
        compute_steering(model, sae, HOOK, [PROMPT], SteeringConfig(feature_id=0, max_new_tokens=10**6))
    with pytest.raises(SteeringInputError, match="samples"):
        compute_steering(model, sae, HOOK, [PROMPT], SteeringConfig(feature_id=0, n_samples=0))
    with pytest.raises(SteeringInputError, match="context"):
        compute_steering(model, sae, HOOK, [PROMPT * 20], SteeringConfig(feature_id=0))
    # A prompt near the end of the context generates only what fits.
    short = compute_steering(model, sae, HOOK, [PROMPT], SteeringConfig(feature_id=0, n_samples=1, max_new_tokens=4000))
    assert short.max_new_tokens == model.cfg.n_ctx - model.to_tokens(PROMPT).shape[1]


# --- metrics and statistics -------------------------------------------------------------------------


def test_the_rate_counter_on_hand_written_texts():
    text = "x = 3. Wait, that's not right. Let me reconsider: x = 4.\nHmm. I'm not sure if that is it.</think> await"
    sample = make_sample(0, 0, None, list(range(40)), text, stopped_at_eos=True)
    assert sample.group_counts == {
        "mistake": 0, "correction": 1, "reconsideration": 1, "miscalculation": 0, "doubt": 1,
        "math_correction": 0, "interjection": 1,
    }
    assert sample.n_phrases == 4 and sample.n_notebook_phrases == 3  # "await" is not "wait"
    assert sample.rate == pytest.approx(100.0)  # 4 phrases in 40 tokens
    assert sample.notebook_rate == pytest.approx(75.0)
    assert sample.group_rate("interjection") == pytest.approx(25.0)
    assert sample.reached_think_close
    plain = make_sample(0, 1, 2.0, [1] * 500, "So the answer is 7.", stopped_at_eos=False)
    assert (plain.rate, plain.reached_think_close, plain.n_tokens) == (0.0, False, 500)
    assert make_sample(0, 2, 2.0, [], "", stopped_at_eos=True).rate == 0.0


def test_estimates_and_paired_differences():
    estimate = compute_estimate([1.0, 2.0, 3.0, 4.0])
    assert estimate.mean == 2.5 and estimate.n == 4
    assert estimate.std == pytest.approx(1.2909944)
    assert estimate.sem == pytest.approx(1.2909944 / 2)
    assert 1.0 <= estimate.ci_low < 2.5 < estimate.ci_high <= 4.0
    single = compute_estimate([5.0])
    assert single.mean == 5.0 and math.isnan(single.sem) and math.isnan(single.ci_low)
    constant = compute_estimate([2.0, 2.0, 2.0])
    assert (constant.std, constant.ci_low, constant.ci_high) == (0.0, 2.0, 2.0)

    wait = "Wait, that's not right. "
    samples = [make_sample(0, i, None, [0] * 100, wait * i, True) for i in range(3)]  # 0, 10, 20 per 1k
    samples += [make_sample(0, i, 1.0, [0] * 100, wait * (i + 2), True) for i in range(3)]  # 20, 30, 40
    base, steered = summarise_conditions(samples, [1.0])
    assert base.rate.mean == pytest.approx(10.0) and base.rate_difference is None
    assert steered.rate.mean == pytest.approx(30.0)
    difference = steered.rate_difference
    spread = (difference.mean, difference.std, difference.ci_low, difference.ci_high)
    assert spread == pytest.approx((20.0, 0.0, 20.0, 20.0))
    assert steered.group_rates["correction"] == pytest.approx(30.0)


def test_prompts_and_coefficients():
    trace = format_prompt("What is 2 + 2?") + "2 + 2 = 4.\n</think>\n\\boxed{4}"
    assert prompt_of_trace(trace) == format_prompt("What is 2 + 2?")
    assert prompt_of_trace("no thinking here") is None
    assert prompt_of_document(trace, {"problem_text": "2 + 2?"}) == format_prompt("What is 2 + 2?")  # the text's own
    assert prompt_of_document("<think>\n4\n</think>", {"problem": " What is 2 + 2? "}) == format_prompt("What is 2 + 2?")
    assert prompt_of_document("<think>\n4\n</think>", {}) is None
    assert as_prompt("What is 2 + 2?") == format_prompt("What is 2 + 2?")
    assert as_prompt(format_prompt("x")) == format_prompt("x")
    with pytest.raises(SteeringInputError):
        as_prompt("   ")
    assert parse_coefficients("-8, 0,8  16") == (-8.0, 0.0, 8.0, 16.0)
    assert parse_coefficients("4, 4") == (4.0,)
    for bad in ("", "a, 2", "inf"):
        with pytest.raises(SteeringInputError):
            parse_coefficients(bad)


# --- storage ----------------------------------------------------------------------------------------


def test_storage_round_trip(model, sae, tmp_path):
    db = database_path(tmp_path)
    config = SteeringConfig(feature_id=2, coefs=(-6.0, 6.0), n_samples=2, max_new_tokens=10)
    result = compute_steering(model, sae, HOOK, [PROMPT, format_prompt("What is 5 * 6?")], config)
    run_id = write_steering_result(db, "sae-a", result, prompt_source="test")
    assert write_steering_result(db, "sae-a", result) == run_id  # the same experiment replaces its rows
    clamp = SteeringConfig(feature_id=2, mode="clamp", coefs=(0.0,), n_samples=1, max_new_tokens=5)
    other = compute_steering(model, sae, HOOK, [PROMPT], clamp)
    write_steering_result(db, "sae-a", other)

    runs = read_steering_runs(db, "sae-a", 2)
    assert len(runs) == 2 and read_steering_runs(db, "sae-b") == []
    stored = read_steering_result(db, run_id)
    assert stored.run.coefs == (-6.0, 6.0) and stored.run.mode == "add" and stored.run.n_prompts == 2
    assert stored.prompts == result.prompts
    key = lambda s: (s.prompt_index, s.coef is not None, s.coef or 0, s.sample_index)  # noqa: E731
    assert [(s.token_ids, s.text, s.coef, s.stopped_at_eos) for s in sorted(stored.samples, key=key)] == [
        (s.token_ids, s.text, s.coef, s.stopped_at_eos) for s in sorted(result.samples, key=key)
    ]
    assert [s.rate for s in stored.summaries] == [s.rate for s in result.summaries]

    table = read_condition_table(db, "sae-a", 2)
    assert len(table) == 3 + 2 and table["coef"].isna().sum() == 2
    effects = read_causal_effects(db, "sae-a")
    assert list(effects) == [2]
    effect, at_six = effects[2], result.summaries[2]
    assert effect.coef == 6.0 and effect.run_id == run_id and effect.n == 4
    assert effect.diff_mean == pytest.approx(at_six.rate_difference.mean)
    assert effect.rate_baseline == pytest.approx(result.summaries[0].rate.mean)
    assert effect.verdict in ("raises", "lowers", "no clear effect on") and "at +6" in effect.label()

    stopped = compute_steering(model, sae, HOOK, [PROMPT], config, should_stop=lambda: True)
    with pytest.raises(ValueError, match="complete"):
        write_steering_result(db, "sae-a", stopped)


def test_readers_of_a_database_without_steering_tables(tmp_path):
    from explorer.database import write_transaction

    db = database_path(tmp_path)
    with write_transaction(db):
        pass
    assert read_steering_runs(db, "x") == [] and read_causal_effects(db, "x") == {}
    assert read_steering_result(db, "nope") is None and read_condition_table(db, "x", 0).empty


# --- the `steer` command ----------------------------------------------------------------------------


def build_tiny_steering_run(root: Path, model_dir: Path, sae_id: str = "mini-sae") -> Path:
    """A run folder on the mini Qwen2: a 20-trace synthetic corpus and a random SAE under saes/."""
    from explorer.config import CorpusSpec, Profile
    from precompute.cli import save_profile
    from precompute.corpus_stage import run_corpus_stage

    run_dir = root / "tiny"
    corpus = CorpusSpec(source="synthetic", n_traces=20, seed=0)
    profile = Profile(name="tiny", model=str(model_dir), hook_name=HOOK, n_ctx=256, corpus=corpus)
    save_profile(profile, run_dir)
    run_corpus_stage(corpus, run_dir)
    from transformers import AutoConfig

    d_model = AutoConfig.from_pretrained(model_dir).hidden_size
    random_sae(d_model).save_model(run_dir / artifacts.SAES_DIR / sae_id)
    return run_dir


def steer_parser() -> argparse.ArgumentParser:
    from precompute.steer_cli import add_parser

    parser = argparse.ArgumentParser(prog="python -m precompute")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def test_steer_command_stores_and_prints_a_table(tmp_path, mini_qwen2_dir, capsys):  # noqa: F811
    from precompute.cli_common import UserError
    from precompute.steer_cli import run

    run_dir = build_tiny_steering_run(tmp_path, mini_qwen2_dir)
    # No --profile: the run's profile.json names its model (the demo profile would look for <run>/model/).
    argv = ["steer", "--out", str(run_dir), "--sae", "mini-sae",
            "--features", "1,2", "--coefs=-5,5", "--from-corpus", "2", "--n-samples", "2", "--max-new-tokens", "6"]
    run(steer_parser().parse_args(argv))
    out = capsys.readouterr().out
    assert "baseline" in out and "add +5" in out and "add -5" in out and "stored as run" in out
    assert set(read_causal_effects(database_path(run_dir), "mini-sae")) == {1, 2}
    run(steer_parser().parse_args(argv))  # the same experiment again: skipped
    assert "already stored" in capsys.readouterr().out

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"problem": "What is 2 + 5?"}\n"What is 9 - 4?"\n')
    from_file = ["--prompts", str(prompts), "--mode", "clamp", "--n-samples", "1", "--max-new-tokens", "4"]
    run(steer_parser().parse_args([*argv[:-6], *from_file]))
    assert len(read_steering_runs(database_path(run_dir), "mini-sae")) == 4
    with pytest.raises(UserError, match="no SAE 'nope'"):
        run(steer_parser().parse_args([*argv[:4], "nope", *argv[5:]]))
    with pytest.raises(UserError, match="does not exist"):
        run(steer_parser().parse_args([*argv[:6], "999", *argv[7:]]))


def openr1_rows(n_problems: int) -> list[dict]:
    """OpenR1-Math-220k rows: a problem, and generations that start at `<think>` (no problem in them)."""
    return [
        {
            "problem": f"Find x if {k + 2}x = {2 * (k + 2)}.",
            "answer": "2",
            "uuid": f"openr1-{k}",
            "generations": [f"<think>\nx = 2, step {g}.\n</think> \\boxed{{2}}" for g in range(2)],
            "correctness_math_verify": [True, True],
        }
        for k in range(n_problems)
    ]


def test_openr1_corpus_gives_each_problem_its_own_prompt(tmp_path):
    import datasets

    from explorer.config import CorpusSpec
    from precompute.corpus_stage import run_corpus_stage
    from precompute.steer_cli import corpus_prompts

    rows = openr1_rows(3)
    saved = tmp_path / "openr1"
    datasets.Dataset.from_list(rows).save_to_disk(str(saved))
    run_dir = tmp_path / "run"
    run_corpus_stage(CorpusSpec(source=str(saved), n_traces=0), run_dir)

    prompts = corpus_prompts(run_dir, 6)
    assert prompts == [format_prompt(row["problem"]) for row in rows]  # one per problem, in corpus order
    assert all(p.endswith("Solution: \n<think>\n") for p in prompts)
    texts = read_documents(run_dir, columns=["text"])["text"]
    assert texts.tolist() == [g for row in rows for g in row["generations"]]  # the SAE still reads generations only
