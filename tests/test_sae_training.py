"""SAE training with sae_lens 6: the recipe mapping, the activation source, and training end to end.

Real sae_lens, real tiny models: a miniature Qwen2 (hidden 64) and SAEs of 128 features trained for a
few dozen steps.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from sae_lens import (
    ActivationsStore,
    LanguageModelSAERunnerConfig,
    StandardTrainingSAEConfig,
    TopKTrainingSAEConfig,
)

from explorer import artifacts
from explorer.config import DEEPSEEK_R1_DISTILL_QWEN_1_5B, DEMO, DEMO_STANDARD, CorpusSpec, Profile, SAERecipe
from explorer.database import read_sae_ids, read_sae_training_curve, read_sae_training_report
from explorer.model_loading import load_model
from explorer.runs import database_path, sae_dir
from explorer.sae_loading import check_sae_fits_model, load_sae, make_sae_id
from explorer.sae_training import (
    CHECKPOINTS_DIR,
    as_pretokenized_dataset,
    build_activation_source,
    build_runner_config,
    compute_packed_contexts,
    is_heldout,
    train_sae,
)
from precompute.corpus_stage import run_corpus_stage
from precompute.sae_report_cli import run_sae_report
from precompute.train_sae_stage import run_train_sae_stage
from tests.hub_fixtures import MINI_TEXTS, mini_qwen2_dir  # noqa: F401

HOOK = "blocks.1.hook_mlp_out"
TINY = SAERecipe(
    architecture="standard",
    expansion_factor=2,
    l1_coefficient=1.0,
    lr=3e-3,
    lr_scheduler_name="constant",
    training_steps=40,
    train_batch_size_tokens=128,
    context_size=32,
    n_checkpoints=2,
    n_batches_for_norm_estimate=2,
    n_batches_in_buffer=8,
    store_batch_size_prompts=8,
)


# --- the recipe -> sae_lens mapping ---------------------------------------------------------------


def test_the_deepseek_profile_is_the_notebooks_recipe_as_a_sae_lens_6_config():
    profile = DEEPSEEK_R1_DISTILL_QWEN_1_5B
    cfg = build_runner_config(
        profile.sae,
        hook_name=profile.hook_name,
        d_in=1536,
        model_name=profile.model,
        output_path=None,
        special_token_ids=[151643, 151646],
        device="cuda",
        dataset_path=profile.corpus.source,
    )
    assert isinstance(cfg.sae, StandardTrainingSAEConfig)
    assert (cfg.sae.d_in, cfg.sae.d_sae) == (1536, 24_576)  # expansion 16
    assert cfg.sae.l1_coefficient == 4.0
    assert cfg.sae.l1_warm_up_steps == 1_000  # 10% of 10,000 steps
    assert cfg.sae.normalize_activations == "expected_average_only_in"
    assert cfg.sae.apply_b_dec_to_input is False
    assert cfg.sae.lp_norm == 1.0 and cfg.sae.decoder_init_norm == 0.1
    assert (cfg.adam_beta1, cfg.adam_beta2) == (0.9, 0.999)
    assert cfg.n_batches_in_buffer == 32 and cfg.store_batch_size_prompts == 8
    assert cfg.dead_feature_window == 1000 and cfg.feature_sampling_window == 1000
    assert cfg.dead_feature_threshold == 1e-4
    assert (cfg.logger.wandb_log_frequency, cfg.logger.eval_every_n_wandb_logs) == (30, 20)
    assert cfg.sae.dtype == "float32" and cfg.dtype == "float32"
    assert (cfg.model_name, cfg.hook_name) == ("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "blocks.21.hook_mlp_out")
    assert cfg.lr == 3e-5 and cfg.lr_scheduler_name == "cosineannealingwarmrestarts"
    assert cfg.lr_warm_up_steps == 500 and cfg.lr_decay_steps == 2_000  # 5% and 20%
    assert cfg.train_batch_size_tokens == 2048 and cfg.training_tokens == 20_480_000
    assert cfg.total_training_steps == 10_000
    assert cfg.context_size == 512
    assert cfg.seed == 42
    assert cfg.n_checkpoints == 2 and cfg.save_final_checkpoint is True
    assert cfg.n_batches_for_norm_estimate == 1000
    # The activation source: pretokenized packed rows, special tokens out, wandb off.
    assert cfg.is_dataset_tokenized is True and cfg.prepend_bos is False
    assert cfg.exclude_special_tokens == [151643, 151646]
    assert cfg.logger.log_to_wandb is False
    assert cfg.n_batches_in_buffer * cfg.context_size >= cfg.train_batch_size_tokens
    # The notebook's settings that sae_lens 6 has no field for are the ones it always uses.
    recipe = profile.sae
    assert recipe.b_dec_init_method == "zeros" and recipe.mse_loss_normalization is None
    assert recipe.decoder_heuristic_init and recipe.init_encoder_as_decoder_transpose
    assert not recipe.normalize_sae_decoder and not recipe.use_ghost_grads
    # A valid sae_lens config: it survives sae_lens's own round trip.
    again = LanguageModelSAERunnerConfig.from_dict(cfg.to_dict())
    assert again.to_dict() == cfg.to_dict()


def test_topk_wandb_and_what_has_no_equivalent():
    topk = dataclasses.replace(TINY, architecture="topk", k=8)
    cfg = build_runner_config(topk, hook_name=HOOK, d_in=64, model_name="m", output_path=None, wandb=True)
    assert isinstance(cfg.sae, TopKTrainingSAEConfig) and cfg.sae.k == 8 and cfg.sae.d_sae == 128
    assert cfg.logger.log_to_wandb is True
    with pytest.raises(ValueError, match="needs k"):
        build_runner_config(
            dataclasses.replace(topk, k=None), hook_name=HOOK, d_in=64, model_name="m", output_path=None
        )
    for change in [
        {"scale_sparsity_penalty_by_decoder_norm": False},
        {"init_encoder_as_decoder_transpose": False},
        {"normalize_sae_decoder": True},
        {"b_dec_init_method": "geometric_median"},
        {"mse_loss_normalization": "dense_batch"},
        {"use_ghost_grads": True},
    ]:
        setting = next(iter(change))
        with pytest.raises(ValueError, match=f"no equivalent for {setting}"):
            build_runner_config(dataclasses.replace(TINY, **change), hook_name=HOOK, d_in=64, model_name="m", output_path=None)


def test_matryoshka_maps_onto_sae_lens_and_checks_its_widths():
    from sae_lens import MatryoshkaBatchTopKTrainingSAEConfig

    recipe = dataclasses.replace(TINY, architecture="matryoshka_batchtopk", k=8, matryoshka_widths=(16, 64, 128))
    cfg = build_runner_config(recipe, hook_name=HOOK, d_in=64, model_name="m", output_path=None)
    assert isinstance(cfg.sae, MatryoshkaBatchTopKTrainingSAEConfig)
    assert (cfg.sae.k, cfg.sae.matryoshka_widths, cfg.sae.d_sae) == (8, [16, 64, 128], 128)
    for widths in [(16, 64), (64, 16, 128), ()]:
        with pytest.raises(ValueError, match="matryoshka_widths"):
            bad = dataclasses.replace(recipe, matryoshka_widths=widths)
            build_runner_config(bad, hook_name=HOOK, d_in=64, model_name="m", output_path=None)
    assert make_sae_id(HOOK, "matryoshka_batchtopk", 128, 8) == f"{HOOK}-matryoshka_batchtopk8-128"
    # A profile saved as JSON (widths as a list) loads back equal.
    profile = dataclasses.replace(DEMO, sae=recipe)
    assert Profile.from_dict(json.loads(profile.to_json())) == profile


@pytest.mark.parametrize(
    ("profile", "d_sae", "architecture"),
    [(DEMO, 512, "matryoshka_batchtopk"), (DEMO_STANDARD, 1024, "standard")],
    ids=lambda p: getattr(p, "name", None),
)
def test_the_demo_recipes_map_too(profile, d_sae, architecture):
    cfg = build_runner_config(profile.sae, hook_name=profile.hook_name, d_in=128, model_name="demo", output_path=None)
    assert cfg.sae.d_sae == d_sae and cfg.sae.architecture() == architecture
    assert cfg.total_training_steps == profile.sae.training_steps


# --- the activation source ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(mini_qwen2_dir):  # noqa: F811
    return load_model(mini_qwen2_dir, device="cpu")


def test_packed_rows_start_with_bos_and_hold_every_document_in_order(model):
    tokenizer = model.tokenizer
    rows_NT = compute_packed_contexts(tokenizer, MINI_TEXTS, context_size=16)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    assert (rows_NT[:, 0] == bos).all()
    # Drop the BOS that opens each row and the BOS separators: what is left is the documents, each
    # followed by EOS, back to back (up to the ragged tail).
    stream = [t for row in rows_NT.tolist() for t in row if t != bos]
    expected = [t for text in MINI_TEXTS for t in tokenizer.encode(text, add_special_tokens=False) + [eos]]
    assert stream == expected[: len(stream)]
    assert len(stream) > len(expected) - 16


def test_the_notebooks_packing_puts_documents_back_to_back_without_special_tokens(model):
    tokenizer = model.tokenizer
    rows_NT = compute_packed_contexts(tokenizer, MINI_TEXTS, context_size=16, prepend_bos=False)
    stream = rows_NT.flatten().tolist()
    expected = [t for text in MINI_TEXTS for t in tokenizer.encode(text, add_special_tokens=False)]
    assert stream == expected[: len(stream)] and len(stream) > len(expected) - 16
    assert not set(stream) & {tokenizer.bos_token_id, tokenizer.eos_token_id}


def test_the_heldout_split_is_stable_and_disjoint():
    ids = [f"doc-{i}" for i in range(2000)]
    held = {d for d in ids if is_heldout(d)}
    assert 15 <= len(held) <= 70  # about 2%
    assert held == {d for d in reversed(ids) if is_heldout(d)}


# sae_lens's own warnings about its dataset handling (train_sae filters the same ones).
@pytest.mark.filterwarnings("ignore:.*fewer samples:UserWarning", "ignore:To copy construct:UserWarning")
def test_special_tokens_never_reach_the_sae(model):
    texts = [text for _ in range(8) for text in MINI_TEXTS]
    source = build_activation_source(model.tokenizer, [f"d{i}" for i in range(len(texts))], texts, 32, seed=0)
    tokenizer = model.tokenizer
    assert {tokenizer.bos_token_id, tokenizer.eos_token_id} <= set(source.special_token_ids)
    cfg = build_runner_config(
        TINY, hook_name=HOOK, d_in=64, model_name="m", output_path=None, special_token_ids=source.special_token_ids
    )
    store = ActivationsStore.from_config(model, cfg, override_dataset=as_pretokenized_dataset(source.train_NT))
    acts_ND = store.get_filtered_llm_batch()
    first_rows_NT = source.train_NT[: cfg.store_batch_size_prompts]
    n_text = int((~torch.isin(first_rows_NT, torch.tensor(source.special_token_ids))).sum())
    assert acts_ND.shape == (n_text, 64) and n_text < first_rows_NT.numel()


# --- training end to end --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def source(model):
    texts = [f"{text} Variation {i}." for i in range(40) for text in MINI_TEXTS]
    return build_activation_source(
        model.tokenizer, [f"d{i}" for i in range(len(texts))], texts, 32, heldout_fraction=0.2, seed=0
    )


MATRYOSHKA = {"architecture": "matryoshka_batchtopk", "k": 8, "matryoshka_widths": (16, 64, 128)}


@pytest.mark.parametrize(
    ("changes", "saved_as"),
    [
        ({"architecture": "standard"}, ("standard", None)),
        ({"architecture": "topk", "k": 8}, ("topk", 8)),
        # sae_lens saves a BatchTopK SAE as JumpReLU, its threshold the batch top-k threshold learnt.
        (MATRYOSHKA, ("jumprelu", None)),
    ],
    ids=["standard", "topk", "matryoshka"],
)
def test_train_then_reload_gives_identical_feature_activations(model, source, tmp_path, changes, saved_as):
    recipe = dataclasses.replace(TINY, **changes)
    trained = train_sae(model, recipe, source, tmp_path / "sae", hook_name=HOOK, d_in=64, model_name="mini")
    assert {"cfg.json", "sae_weights.safetensors", "runner_cfg.json"} <= {p.name for p in (tmp_path / "sae").iterdir()}

    reloaded = load_sae(tmp_path / "sae")
    assert check_sae_fits_model(reloaded.sae, model) == HOOK
    assert (reloaded.architecture, reloaded.d_sae, reloaded.k) == (saved_as[0], 128, saved_as[1])
    _, cache = model.run_with_cache(source.heldout_NT, names_filter=[HOOK])
    acts_ND = cache[HOOK].reshape(-1, 64)
    with torch.no_grad():
        if saved_as[0] == "jumprelu":
            # The training SAE keeps the top k*batch activations of each batch; the saved one thresholds
            # each token on its own at the threshold learnt (a running average, which needs far more than
            # this test's 40 steps to reach L0 ~ k; the demo's SAE report shows it does).
            expected_NF = trained.loaded.sae.encode(acts_ND)
        else:
            expected_NF = trained.trained_sae.encode(acts_ND)
        torch.testing.assert_close(reloaded.sae.encode(acts_ND), expected_NF, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(trained.loaded.sae.encode(acts_ND), expected_NF, atol=1e-5, rtol=1e-5)
    assert (expected_NF > 0).any()

    steps = [point.step for point in trained.curve]
    assert steps[0] == 1 and steps[-1] == recipe.training_steps and steps == sorted(steps)
    # Checkpoints in the notebook's layout, <checkpoints>/<run id>/<tokens>/, each loadable.
    run_ids = list((tmp_path / "sae" / CHECKPOINTS_DIR).iterdir())
    assert len(run_ids) == 1
    names = sorted(p.name for p in trained.checkpoint_dirs)
    assert len(names) == 3 and any(name.startswith("final_") for name in names)
    for checkpoint in trained.checkpoint_dirs:
        assert checkpoint.parent == run_ids[0]
        loaded = load_sae(checkpoint)
        assert loaded.source_kind == "checkpoint" and loaded.hook_name == HOOK
    final = next(p for p in trained.checkpoint_dirs if p.name.startswith("final_"))
    torch.testing.assert_close(load_sae(final).sae.encode(acts_ND), expected_NF, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("heuristic", [True, False], ids=["notebook-init", "sae-lens-6-init"])
def test_the_decoder_starts_as_the_recipe_says(model, source, tmp_path, heuristic):
    """With a learning rate of 0 the SAE that training saves is the one it started with."""
    recipe = dataclasses.replace(
        TINY, decoder_heuristic_init=heuristic, lr=0.0, normalize_activations="none", training_steps=2, n_checkpoints=0
    )
    trained = train_sae(model, recipe, source, tmp_path / "sae", hook_name=HOOK, d_in=64, model_name="mini")
    W_dec = trained.trained_sae.W_dec.detach()  # [d_sae, d_in]
    torch.testing.assert_close(W_dec.norm(dim=-1), torch.full((128,), 0.1))
    torch.testing.assert_close(trained.trained_sae.W_enc.detach(), W_dec.T)
    assert bool((W_dec >= 0).all()) is heuristic  # uniform [0, 1) entries, or symmetric kaiming ones
    if heuristic:  # and it is the notebook's draw for this seed, redrawn from scratch
        again = torch.rand(128, 64, generator=torch.Generator().manual_seed(recipe.seed))
        torch.testing.assert_close(W_dec, 0.1 * again / again.norm(dim=-1, keepdim=True))


# --- the stage and the on-demand report ------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, mini_qwen2_dir):  # noqa: F811
    run_dir = tmp_path_factory.mktemp("run")
    corpus = CorpusSpec(source="synthetic", n_traces=300, seed=0)
    run_corpus_stage(corpus, run_dir)
    profile = Profile(
        name="tiny",
        model=str(mini_qwen2_dir),
        hook_name=HOOK,
        n_ctx=64,
        corpus=corpus,
        sae=dataclasses.replace(TINY, n_checkpoints=0),
    )
    return profile, run_dir


def test_the_stage_trains_records_and_then_skips(tiny_run, capsys):
    profile, run_dir = tiny_run
    sae_id = run_train_sae_stage(profile, run_dir)
    assert sae_id == "blocks.1.hook_mlp_out-standard-128"
    folder = sae_dir(run_dir, sae_id)
    assert {"cfg.json", "sae_weights.safetensors", artifacts.SAE_TRAINING_REPORT_FILE, artifacts.STAGE_MANIFEST} <= {
        p.name for p in folder.iterdir()
    }
    report = json.loads((folder / artifacts.SAE_TRAINING_REPORT_FILE).read_text())
    assert report["sae_id"] == sae_id and report["n_tokens"] > 0 and len(report["curve"]) > 2
    assert str(folder) in (folder / "runner_cfg.json").read_text()  # not the temporary folder's path

    db = database_path(run_dir)
    row = read_sae_training_report(db, sae_id)
    assert row.source == f"saes/{sae_id}" and row.source_kind == "trained" and row.training_tokens == 40 * 128
    assert row.explained_variance == pytest.approx(report["explained_variance"])
    assert [p.step for p in read_sae_training_curve(db, sae_id)] == [p["step"] for p in report["curve"]]

    capsys.readouterr()
    assert run_train_sae_stage(profile, run_dir) == sae_id
    assert "up to date" in capsys.readouterr().out
    # A deleted DuckDB file is refilled from training_report.json without retraining.
    db.unlink()
    assert run_train_sae_stage(profile, run_dir) == sae_id
    assert read_sae_ids(db) == [sae_id]

    # Another hook: a second SAE, with its own id, next to the first.
    other = run_train_sae_stage(profile, run_dir, hook="blocks.0.hook_resid_post")
    assert other == "blocks.0.hook_resid_post-standard-128"
    assert read_sae_ids(db) == sorted([sae_id, other])


def test_a_bfloat16_model_feeds_a_float32_sae(tiny_run, tmp_path):
    """`--dtype bfloat16`: the model runs in bfloat16, the SAE still trains and is measured in float32."""
    profile, run_dir = tiny_run
    work = tmp_path / "bf16"
    shutil.copytree(run_dir, work)
    reduced = dataclasses.replace(profile, dtype="bfloat16")
    sae_id = run_train_sae_stage(reduced, work, force=True)
    row = read_sae_training_report(database_path(work), sae_id)
    assert row.n_tokens > 0 and np.isfinite(row.mse) and np.isfinite(row.ce_loss_recovered)
    assert row.explained_variance > 0  # it learnt something from the bfloat16 activations
    assert load_sae(sae_dir(work, sae_id)).sae.W_enc.dtype == torch.float32


def test_the_report_command_remeasures_and_imports(tiny_run, tmp_path):
    profile, run_dir = tiny_run
    sae_id = run_train_sae_stage(profile, run_dir)
    db = database_path(run_dir)
    curve_before = read_sae_training_curve(db, sae_id)
    assert sae_id in run_sae_report(profile, run_dir)
    assert read_sae_training_curve(db, sae_id) == curve_before  # re-measuring keeps the curve

    # An SAE trained elsewhere comes in under its own id, with no curve.
    external = tmp_path / "external"
    load_sae(sae_dir(run_dir, sae_id)).sae.save_model(external)
    assert run_sae_report(profile, run_dir, sae=str(external), sae_id="imported") == ["imported"]
    row = read_sae_training_report(db, "imported")
    assert row.source_kind == "folder" and row.source == str(external.resolve())
    assert row.explained_variance == pytest.approx(read_sae_training_report(db, sae_id).explained_variance)
    assert load_sae(sae_dir(run_dir, "imported")).hook_name == HOOK
    with pytest.raises(Exception, match="already holds"):
        run_sae_report(profile, run_dir, sae=str(external), sae_id="imported")
