"""`explorer.sae_loading`: one loader for every SAE layout, clear mismatch errors, SAE ids."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from sae_lens import SAE, StandardSAE, StandardSAEConfig, StandardTrainingSAE, StandardTrainingSAEConfig
from sae_lens.training.activation_scaler import ActivationScaler

from explorer.model_loading import load_model
from explorer.sae_loading import (
    SAELoadError,
    check_sae_fits_model,
    compute_hook_d_in,
    default_sae_id,
    load_sae,
    make_sae_id,
    validate_sae_id,
)
from tests.hub_fixtures import mini_qwen2_dir, run_python  # noqa: F401

HOOK = "blocks.1.hook_mlp_out"
D_IN = 64  # the mini Qwen2's hidden size


@pytest.fixture(scope="module")
def model(mini_qwen2_dir):  # noqa: F811
    return load_model(mini_qwen2_dir, device="cpu")


def _random_sae(d_in: int = D_IN, d_sae: int = 128, hook: str | None = HOOK, training: bool = False) -> SAE:
    if training:
        cfg = StandardTrainingSAEConfig(d_in=d_in, d_sae=d_sae, normalize_activations="expected_average_only_in")
        sae = StandardTrainingSAE(cfg)
    else:
        sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae))
    sae.cfg.metadata.hook_name = hook
    sae.cfg.metadata.model_name = "mini-qwen2"
    with torch.no_grad():
        for param in sae.parameters():
            param.copy_(torch.randn_like(param) * 0.3)
    return sae


# --- SAE ids --------------------------------------------------------------------------------------


def test_sae_ids_name_hook_architecture_and_width():
    assert make_sae_id("blocks.1.hook_mlp_out", "standard", 1024) == "blocks.1.hook_mlp_out-standard-1024"
    assert make_sae_id("blocks.21.hook_mlp_out", "topk", 24576, k=32) == "blocks.21.hook_mlp_out-topk32-24576"
    assert validate_sae_id("my-layer7_sae.v2") == "my-layer7_sae.v2"
    for bad in ("", ".", "..", "../x", "a b", "a/b", "-lead", "x" * 129):
        with pytest.raises(ValueError):
            validate_sae_id(bad)


# --- folders --------------------------------------------------------------------------------------


def test_a_sae_lens_output_folder_loads_with_its_hook(tmp_path):
    sae = _random_sae()
    sae.save_model(tmp_path / "sae")
    loaded = load_sae(tmp_path / "sae")
    shape = (loaded.hook_name, loaded.architecture, loaded.d_in, loaded.d_sae, loaded.k)
    assert shape == (HOOK, "standard", 64, 128, None)
    assert loaded.source_kind == "folder" and loaded.notes == ()
    x_ND = torch.randn(5, D_IN)
    torch.testing.assert_close(loaded.sae.encode(x_ND), sae.encode(x_ND))
    assert default_sae_id(loaded) == "blocks.1.hook_mlp_out-standard-128"


def test_a_sae_lens_6_checkpoint_folds_its_normalisation_factor(tmp_path):
    # What sae_lens 6 writes mid-training: weights that expect inputs scaled by the factor, and the
    # factor next to them.
    checkpoint = tmp_path / "checkpoints" / "ab12cd34" / "4096"
    sae = _random_sae(training=True)
    sae.save_model(checkpoint)
    ActivationScaler(scaling_factor=2.5).save(str(checkpoint / "activation_scaler.json"))

    loaded = load_sae(checkpoint)
    assert loaded.source_kind == "checkpoint"
    assert any("2.5" in note for note in loaded.notes)
    x_ND = torch.randn(7, D_IN)
    raw = SAE.load_from_disk(checkpoint)
    torch.testing.assert_close(loaded.sae.encode(x_ND), raw.encode(x_ND * 2.5))
    torch.testing.assert_close(loaded.sae(x_ND), raw(x_ND * 2.5) / 2.5)


def _write_notebook_era_checkpoint(folder: Path, sae: SAE, factor: float | None) -> None:
    """A checkpoint as sae_lens 3-5 wrote it (the notebook's): the runner config as cfg.json, no
    `metadata`, and the norm factor in the activations store state."""
    folder.mkdir(parents=True)
    cfg = {
        "model_name": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
        "model_class_name": "HookedTransformer",
        "hook_name": HOOK,
        "hook_eval": "NOT_IN_USE",
        "hook_layer": 1,
        "hook_head_index": None,
        "dataset_path": "local",
        "is_dataset_tokenized": False,
        "context_size": 512,
        "d_in": D_IN,
        "d_sae": sae.cfg.d_sae,
        "expansion_factor": 2,
        "activation_fn": "relu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "expected_average_only_in",
        "l1_coefficient": 4.0,
        "scale_sparsity_penalty_by_decoder_norm": True,
        "lr": 3e-5,
        "lr_scheduler_name": "cosineannealingwarmrestarts",
        "training_tokens": 20_480_000,
        "train_batch_size_tokens": 2048,
        "n_checkpoints": 2,
        "checkpoint_path": "checkpoints/ab12cd34",
        "device": "cuda",
        "dtype": "float32",
        "seed": 42,
        "prepend_bos": True,
        "sae_lens_version": "3.13.0",
        "sae_lens_training_version": "3.13.0",
    }
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: v.detach().contiguous() for k, v in sae.state_dict().items()}, folder / "sae_weights.safetensors")
    save_file({"sparsity": torch.full((sae.cfg.d_sae,), -3.0)}, folder / "sparsity.safetensors")
    if factor is not None:
        save_file(
            {"n_dataset_processed": torch.tensor(100), "estimated_norm_scaling_factor": torch.tensor(factor)},
            folder / "activations_store_state.safetensors",
        )


def test_a_notebook_layout_checkpoint_loads(tmp_path, model):
    sae = _random_sae()
    checkpoint = tmp_path / "checkpoints" / "ab12cd34" / "6826666"
    _write_notebook_era_checkpoint(checkpoint, sae, factor=4.0)
    loaded = load_sae(checkpoint)
    assert (loaded.source_kind, loaded.hook_name, loaded.d_in) == ("checkpoint", HOOK, D_IN)
    assert loaded.sae.cfg.metadata.model_name == "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    x_ND = torch.randn(3, D_IN)
    torch.testing.assert_close(loaded.sae.encode(x_ND), sae.encode(x_ND * 4.0))
    assert check_sae_fits_model(loaded.sae, model) == HOOK

    final = tmp_path / "checkpoints" / "ab12cd34" / "final_20480000"
    _write_notebook_era_checkpoint(final, sae, factor=None)
    loaded_final = load_sae(final)
    torch.testing.assert_close(loaded_final.sae.encode(x_ND), sae.encode(x_ND))
    assert "already folded" in loaded_final.notes[0]


def test_not_an_sae_folder_says_what_is_missing(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SAELoadError, match="cfg.json"):
        load_sae(tmp_path / "empty")
    with pytest.raises(SAELoadError, match="neither an existing folder"):
        load_sae(str(tmp_path / "missing"))


# --- fitting the model ----------------------------------------------------------------------------


def test_hook_width_is_read_from_the_model(model):
    assert compute_hook_d_in(model, HOOK) == D_IN
    assert compute_hook_d_in(model, "blocks.0.mlp.hook_post") == 4 * D_IN


def test_a_hook_mismatch_names_both_hooks(model):
    sae = _random_sae(hook=HOOK)
    with pytest.raises(SAELoadError) as err:
        check_sae_fits_model(sae, model, "blocks.0.hook_resid_post")
    assert HOOK in str(err.value) and "blocks.0.hook_resid_post" in str(err.value)


def test_a_d_in_mismatch_names_both_widths(model):
    sae = _random_sae(d_in=32, hook=HOOK)
    with pytest.raises(SAELoadError) as err:
        check_sae_fits_model(sae, model, model_name="mini-qwen2")
    message = str(err.value)
    assert "d_in=32" in message and "width 64" in message and HOOK in message and "mini-qwen2" in message


def test_a_hook_the_model_lacks_lists_what_it_has(model):
    sae = _random_sae(hook="blocks.7.hook_mlp_out")
    with pytest.raises(SAELoadError, match=r"no hook 'blocks.7.hook_mlp_out'.*2 layers"):
        check_sae_fits_model(sae, model)


# --- pretrained releases --------------------------------------------------------------------------


def test_an_unknown_release_or_sae_id_is_named():
    with pytest.raises(SAELoadError, match="not a sae_lens pretrained release"):
        load_sae("no-such-release:blocks.0.hook_resid_pre")
    with pytest.raises(SAELoadError, match="has no SAE 'blocks.99.hook_resid_pre'"):
        load_sae("gpt2-small-res-jb:blocks.99.hook_resid_pre")


def test_a_pretrained_release_offline_fails_fast_and_clearly():
    # conftest sets HF_HUB_OFFLINE=1 and nothing is cached.
    started = time.perf_counter()
    with pytest.raises(SAELoadError, match="HF_HUB_OFFLINE is set"):
        load_sae("gpt2-small-res-jb:blocks.0.hook_resid_pre")
    assert time.perf_counter() - started < 5


PROBE_SCRIPT = """
import json, sys, time
import sae_lens  # noqa: F401  (its ~8 s import is not what is timed)
from explorer.sae_loading import SAELoadError, load_sae
started = time.perf_counter()
try:
    load_sae("gpt2-small-res-jb:blocks.0.hook_resid_pre")
    outcome = "loaded"
except SAELoadError as err:
    outcome = str(err)
json.dump({"outcome": outcome, "seconds": time.perf_counter() - started}, open(sys.argv[1], "w"))
"""


def test_an_unreachable_hub_fails_in_seconds_not_after_retries(tmp_path):
    # HF_HUB_OFFLINE unset, and an endpoint nothing listens on: huggingface_hub alone would retry for
    # about 25 s.
    out = tmp_path / "out.json"
    result = run_python(PROBE_SCRIPT, [str(out)], {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-2000:]
    outcome = json.loads(out.read_text())
    assert "unreachable" in outcome["outcome"] and "127.0.0.1:9" in outcome["outcome"]
    assert outcome["seconds"] < 5
