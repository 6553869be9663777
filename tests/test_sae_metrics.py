"""`explorer.sae_metrics`: the report's numbers on SAEs whose answers can be worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig, StandardTrainingSAE, StandardTrainingSAEConfig
from sae_lens.saes.sae import TrainStepInput

from explorer.model_loading import load_model
from explorer.sae_metrics import (
    ReconstructionAccumulator,
    TrainingCurveRecorder,
    compute_ce_loss_recovered,
    compute_reconstruction_metrics,
    compute_sae_report,
)
from explorer.sae_training import compute_packed_contexts, special_token_ids
from tests.hub_fixtures import MINI_TEXTS, mini_qwen2_dir  # noqa: F401

HOOK = "blocks.1.hook_mlp_out"


# --- on paper -------------------------------------------------------------------------------------


def test_reconstruction_metrics_on_two_dimensional_vectors():
    x_ND = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    x_hat_ND = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    feature_acts_NF = torch.tensor([[1.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    metrics = compute_reconstruction_metrics(x_ND, x_hat_ND, feature_acts_NF, dense_threshold=0.1)
    # errors (1, 0) and (0, 1): 1 per token. Mean (1, 1); deviations (1, -1), (-1, 1): variance 2.
    assert metrics.n_tokens == 2
    assert metrics.mse == pytest.approx(1.0)
    assert metrics.explained_variance == pytest.approx(1 - 1 / 2)
    assert metrics.l0 == pytest.approx(1.0)
    assert metrics.frac_dead == pytest.approx(1 / 3)  # feature 2 never fires
    assert metrics.frac_dense == pytest.approx(2 / 3)  # features 0 and 1 fire on half the tokens


def test_accumulating_batches_equals_one_pass():
    torch.manual_seed(1)
    x_ND, x_hat_ND = torch.randn(50, 4) + 3.0, torch.randn(50, 4)
    feature_acts_NF = torch.relu(torch.randn(50, 6))
    accumulator = ReconstructionAccumulator(6)
    for start in range(0, 50, 7):
        accumulator.add(x_ND[start : start + 7], x_hat_ND[start : start + 7], feature_acts_NF[start : start + 7])
    assert accumulator.compute() == pytest.approx(compute_reconstruction_metrics(x_ND, x_hat_ND, feature_acts_NF))


def test_ce_loss_recovered_is_the_share_of_the_ablation_gap_closed():
    assert compute_ce_loss_recovered(clean=1.0, spliced=1.5, zero_ablated=3.0) == pytest.approx(0.75)
    assert compute_ce_loss_recovered(clean=1.0, spliced=1.0, zero_ablated=3.0) == 1.0
    assert compute_ce_loss_recovered(clean=1.0, spliced=3.0, zero_ablated=3.0) == 0.0
    assert math.isnan(compute_ce_loss_recovered(clean=2.0, spliced=2.5, zero_ablated=2.0))


# --- hand-set SAEs on a real (tiny) model ---------------------------------------------------------


@pytest.fixture(scope="module")
def model(mini_qwen2_dir):  # noqa: F811
    model = load_model(mini_qwen2_dir, device="cpu")
    # A random model predicts nearly uniformly whatever its last MLP writes; with a larger unembedding
    # and MLP output, ablating the hook moves the loss by a margin the CE-recovered ratio can be read
    # against.
    with torch.no_grad():
        model.blocks[1].mlp.W_out.mul_(10.0)
        model.unembed.W_U.mul_(50.0)
    return model


@pytest.fixture(scope="module")
def contexts_NT(model):
    return compute_packed_contexts(model.tokenizer, MINI_TEXTS * 3, context_size=24)


@pytest.fixture(scope="module")
def text_acts_ND(model, contexts_NT):
    """The hook's activations at text positions, computed without any SAE code."""
    _, cache = model.run_with_cache(contexts_NT, names_filter=[HOOK])
    specials = torch.tensor(special_token_ids(model.tokenizer))
    return cache[HOOK][~torch.isin(contexts_NT, specials)]


def _sae(d_in: int, W_enc_DF: torch.Tensor, W_dec_FD: torch.Tensor, b_dec_D: torch.Tensor) -> StandardSAE:
    cfg = StandardSAEConfig(d_in=d_in, d_sae=W_enc_DF.shape[1], apply_b_dec_to_input=False)
    cfg.metadata.hook_name = HOOK
    sae = StandardSAE(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(W_enc_DF)
        sae.b_enc.zero_()
        sae.W_dec.copy_(W_dec_FD)
        sae.b_dec.copy_(b_dec_D)
    return sae


def _identity_encoder(d: int) -> torch.Tensor:
    # Features (relu(x_i), relu(-x_i)): together they hold x exactly.
    eye = torch.eye(d)
    return torch.cat([eye, -eye], dim=1)  # [D, 2D]


def test_an_exact_sae_explains_everything_and_recovers_all_the_loss(model, contexts_NT, text_acts_ND):
    d = model.cfg.d_model
    sae = _sae(d, _identity_encoder(d), torch.cat([torch.eye(d), -torch.eye(d)], dim=0), torch.zeros(d))
    report = compute_sae_report(
        model, sae, contexts_NT, HOOK, special_token_ids=special_token_ids(model.tokenizer), progress=False
    )
    assert report.n_tokens == len(text_acts_ND)  # BOS/EOS left out
    assert report.mse == pytest.approx(0.0, abs=1e-10)
    assert report.explained_variance == pytest.approx(1.0, abs=1e-6)
    assert report.ce_loss_spliced == pytest.approx(report.ce_loss_clean, abs=1e-5)
    assert abs(report.ce_loss_zero_ablated - report.ce_loss_clean) > 0.1
    assert report.ce_loss_recovered == pytest.approx(1.0, abs=1e-3)
    # By hand: a token activates one feature per nonzero coordinate; feature (i, sign) is dead when
    # x_i never has that sign, and dense when it has it on more than 10% of tokens.
    positive_ND, negative_ND = text_acts_ND > 0, text_acts_ND < 0
    assert report.l0 == pytest.approx(float((positive_ND | negative_ND).sum(-1).double().mean()))
    fires_F = torch.cat([positive_ND.any(0), negative_ND.any(0)])
    frequency_F = torch.cat([positive_ND.double().mean(0), negative_ND.double().mean(0)])
    assert report.frac_dead == pytest.approx(float((~fires_F).double().mean()))
    assert report.frac_dense == pytest.approx(float((frequency_F > 0.1).double().mean()))


def test_sparsity_on_more_tokens_finds_features_a_short_report_calls_dead(model, contexts_NT, text_acts_ND):
    d = model.cfg.d_model
    sae = _sae(d, _identity_encoder(d), torch.cat([torch.eye(d), -torch.eye(d)], dim=0), torch.zeros(d))
    specials = special_token_ids(model.tokenizer)
    short = compute_sae_report(model, sae, contexts_NT[:1], HOOK, special_token_ids=specials, progress=False)
    report = compute_sae_report(
        model, sae, contexts_NT[:1], HOOK, special_token_ids=specials, progress=False, sparsity_contexts_NT=contexts_NT
    )
    # CE and reconstruction still come from the one row; sparsity from all rows, as counted by hand.
    assert (report.n_tokens, report.mse, report.ce_loss_recovered) == (short.n_tokens, short.mse, short.ce_loss_recovered)
    assert report.n_sparsity_tokens == len(text_acts_ND) > short.n_sparsity_tokens == short.n_tokens
    fires_F = torch.cat([(text_acts_ND > 0).any(0), (text_acts_ND < 0).any(0)])
    assert report.frac_dead == pytest.approx(float((~fires_F).double().mean()))
    assert report.frac_dead < short.frac_dead  # one row of 24 tokens leaves features unseen
    assert report.l0 == pytest.approx(float((text_acts_ND != 0).sum(-1).double().mean()))


def test_a_zero_decoder_recovers_nothing(model, contexts_NT, text_acts_ND):
    d = model.cfg.d_model
    sae = _sae(d, _identity_encoder(d), torch.zeros(2 * d, d), torch.zeros(d))
    report = compute_sae_report(
        model, sae, contexts_NT, HOOK, special_token_ids=special_token_ids(model.tokenizer), progress=False
    )
    assert report.ce_loss_spliced == pytest.approx(report.ce_loss_zero_ablated, abs=1e-6)
    assert report.ce_loss_recovered == pytest.approx(0.0, abs=1e-4)
    # Predicting 0 everywhere: 1 - E||x||^2 / Var(x) = -||E x||^2 / Var(x), zero or below.
    x = text_acts_ND.double()
    variance = (x - x.mean(0)).pow(2).sum(-1).mean()
    assert report.explained_variance == pytest.approx(float(1 - x.pow(2).sum(-1).mean() / variance), rel=1e-6)
    assert report.mse == pytest.approx(float(x.pow(2).sum(-1).mean()), rel=1e-5)


def test_a_decoder_that_predicts_the_mean_explains_no_variance(model, contexts_NT, text_acts_ND):
    d = model.cfg.d_model
    sae = _sae(d, _identity_encoder(d), torch.zeros(2 * d, d), text_acts_ND.mean(0))
    report = compute_sae_report(
        model, sae, contexts_NT, HOOK, special_token_ids=special_token_ids(model.tokenizer), progress=False
    )
    assert report.explained_variance == pytest.approx(0.0, abs=1e-5)


# --- the training curve ---------------------------------------------------------------------------


def test_curve_recorder_keeps_first_every_nth_and_last_step():
    sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=4, d_sae=8, l1_coefficient=2.0))
    recorder = TrainingCurveRecorder(every=3, total_steps=10)
    recorder.attach(sae)
    x_BD = torch.randn(16, 4)
    outputs = []
    for step in range(10):
        step_input = TrainStepInput(
            sae_in=x_BD, coefficients={"l1": 2.0}, dead_neuron_mask=None, n_training_steps=step, is_logging_step=False
        )
        outputs.append(sae.training_forward_pass(step_input))
    assert [p.step for p in recorder.points] == [1, 3, 6, 9, 10]
    last, output = recorder.points[-1], outputs[-1]
    assert last.n_tokens == 10 * 16
    assert last.loss == pytest.approx(output.loss.item())
    assert last.mse_loss + last.sparsity_loss == pytest.approx(last.loss, rel=1e-5)
    assert last.l0 == pytest.approx(float((output.feature_acts != 0).float().sum(-1).mean()))
