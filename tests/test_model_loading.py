"""`explorer.model_loading`: one loader for hub ids and local directories, faithful to transformers."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch

from explorer.model_loading import ModelLoadError, load_model, load_tokenizer, resolve_device, resolve_model_source
from tests.hub_fixtures import REAL_REPO_ID, make_fake_hub_cache, mini_qwen2_dir, run_python  # noqa: F401

TEXT = "Solve this math problem step by step. Problem: 3 + 4? Solution: \n<think>\nWait, 3 + 4 = 7.\n</think>"

# Loads the real model's name from a fake cache, offline, and compares with transformers in the same
# process. Results go to a JSON file: transformer-lens prints to stdout.
HUB_LOAD_SCRIPT = """
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from explorer.model_loading import load_model

repo_id, out_path, text = sys.argv[1], sys.argv[2], sys.argv[3]
model = load_model(repo_id, device="cpu")
hf_tokenizer = AutoTokenizer.from_pretrained(repo_id)
hf_model = AutoModelForCausalLM.from_pretrained(repo_id).eval()

tokens = model.to_tokens(text)
hf_ids = hf_tokenizer(text)["input_ids"]
captured = {}
hf_model.model.layers[1].mlp.register_forward_hook(lambda m, i, o: captured.__setitem__("mlp_out", o))
hf_model.model.layers[1].register_forward_hook(
    lambda m, i, o: captured.__setitem__("resid_post", o[0] if isinstance(o, tuple) else o)
)
with torch.no_grad():
    logits, cache = model.run_with_cache(tokens, names_filter=["blocks.1.hook_mlp_out", "blocks.1.hook_resid_post"])
    hf_logits = hf_model(torch.tensor([hf_ids])).logits

def max_diff(a, b):
    return float((a - b).abs().max())

json.dump(
    {
        "to_tokens": tokens[0].tolist(),
        "hf_ids": hf_ids,
        "bos_id": hf_tokenizer.bos_token_id,
        "model_name": model.cfg.model_name,
        "tokenizer_class": type(model.tokenizer).__name__,
        "mlp_out_diff": max_diff(cache["blocks.1.hook_mlp_out"], captured["mlp_out"]),
        "resid_post_diff": max_diff(cache["blocks.1.hook_resid_post"], captured["resid_post"]),
        "log_prob_diff": max_diff(logits.log_softmax(-1), hf_logits.log_softmax(-1)),
    },
    open(out_path, "w"),
)
"""

ERROR_SCRIPT = """
import json, sys
from explorer.model_loading import ModelLoadError, load_model
try:
    load_model(sys.argv[1], device="cpu")
    print(json.dumps({"error": None}))
except ModelLoadError as err:
    print(json.dumps({"error": str(err)}))
"""


@pytest.fixture(scope="module")
def mini_model(mini_qwen2_dir: Path):
    return load_model(mini_qwen2_dir, device="cpu")


@pytest.fixture(scope="module")
def hf_mini_model(mini_qwen2_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(mini_qwen2_dir).eval()


def test_hub_id_loads_offline_from_the_cache_and_matches_transformers(mini_qwen2_dir: Path, tmp_path: Path):
    hf_home = tmp_path / "hf"
    make_fake_hub_cache(hf_home, mini_qwen2_dir)
    out_path = tmp_path / "result.json"

    offline_env = {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    proc = run_python(HUB_LOAD_SCRIPT, [REAL_REPO_ID, str(out_path), TEXT], offline_env, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out_path.read_text())

    assert result["model_name"] == "DeepSeek-R1-Distill-Qwen-1.5B"
    assert result["tokenizer_class"] != "LlamaTokenizer"  # the transformers 5 Metaspace trap
    assert result["to_tokens"] == result["hf_ids"]
    assert result["to_tokens"].count(result["bos_id"]) == 1 and result["to_tokens"][0] == result["bos_id"]
    assert result["mlp_out_diff"] < 1e-4
    assert result["resid_post_diff"] < 1e-4
    assert result["log_prob_diff"] < 1e-4


def test_hub_id_not_in_cache_offline_fails_fast_with_what_to_do(tmp_path: Path):
    hf_home = tmp_path / "empty-hf"
    started = time.perf_counter()
    proc = run_python(ERROR_SCRIPT, [REAL_REPO_ID], {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"})
    elapsed = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    message = json.loads(proc.stdout.strip().splitlines()[-1])["error"]
    assert message is not None
    assert "not in the local Hugging Face cache" in message
    assert str(hf_home / "hub") in message
    assert f"huggingface-cli download {REAL_REPO_ID}" in message
    assert "HF_HOME" in message and "local directory" in message
    assert elapsed < 30  # no retries against an unreachable hub


def test_local_directory_loads_through_the_same_function(mini_model, hf_mini_model, mini_qwen2_dir: Path):
    tokens = mini_model.to_tokens(TEXT)
    captured = {}
    handle = hf_mini_model.model.layers[1].mlp.register_forward_hook(lambda m, i, o: captured.__setitem__("mlp", o))
    try:
        with torch.no_grad():
            logits, cache = mini_model.run_with_cache(
                tokens, names_filter=["blocks.1.hook_mlp_out", "blocks.0.hook_resid_post"]
            )
            hf_out = hf_mini_model(tokens, output_hidden_states=True)
    finally:
        handle.remove()
    torch.testing.assert_close(cache["blocks.1.hook_mlp_out"], captured["mlp"], atol=1e-4, rtol=0)
    # hidden_states[1] is the residual stream after layer 0 (the last entry is after the final norm).
    torch.testing.assert_close(cache["blocks.0.hook_resid_post"], hf_out.hidden_states[1], atol=1e-4, rtol=0)
    torch.testing.assert_close(logits.log_softmax(-1), hf_out.logits.log_softmax(-1), atol=1e-4, rtol=0)
    assert mini_model.cfg.model_name == Path(mini_qwen2_dir).name
    assert mini_model.cfg.n_layers == 2 and mini_model.cfg.d_model == 64


@pytest.mark.parametrize(("dtype", "tolerance"), [("float32", 0.0), ("bfloat16", 2**-10)])
def test_streamed_weights_equal_transformer_lens_own_processing(tmp_path: Path, dtype: str, tolerance: float):
    """The one-tensor-at-a-time load gives what `from_pretrained` gives: every parameter, processed.

    bfloat16 may differ by a rounding step: we fold the checkpoint's float32 weights and round once,
    where transformer-lens folds weights transformers already rounded to bfloat16."""
    from sae_lens import HookedSAETransformer

    from explorer.model_loading import _load_hf_model, _load_tokenizer
    from tests.hub_fixtures import build_mini_qwen2_dir

    directory = build_mini_qwen2_dir(tmp_path / "model", n_layers=3)  # non-trivial norms and q/k/v biases
    streamed = load_model(directory, device="cpu", dtype=dtype)
    source = resolve_model_source(directory)
    reference = HookedSAETransformer.from_pretrained(
        source.name,
        hf_model=_load_hf_model(source, getattr(torch, dtype)),
        tokenizer=_load_tokenizer(source.directory),
        device="cpu",
        dtype=getattr(torch, dtype),
        default_prepend_bos=True,
        local_files_only=True,
    )
    assert streamed.cfg.normalization_type == reference.cfg.normalization_type == "RMSPre"
    mine, theirs = streamed.state_dict(), reference.state_dict()
    assert set(mine) == set(theirs)
    for key, value in mine.items():
        assert value.dtype == theirs[key].dtype, key
        torch.testing.assert_close(value.float(), theirs[key].float(), atol=tolerance, rtol=tolerance * 8, msg=key)
    tokens = streamed.to_tokens(TEXT)
    with torch.no_grad():
        log_probs = streamed(tokens).float().log_softmax(-1)
        reference_log_probs = reference(tokens).float().log_softmax(-1)
    torch.testing.assert_close(log_probs, reference_log_probs, atol=0.02 if tolerance else 0.0, rtol=0.0)


def test_linear_weights_are_held_as_f_linear_takes_them(mini_model):
    """transformer-lens passes `W.T.contiguous()` to F.linear on every forward; the streamed load holds
    W_in, W_gate, W_out and W_U so that this is the tensor itself, not a copy per call."""
    mlp = mini_model.blocks[0].mlp
    for weight in (mlp.W_in, mlp.W_gate, mlp.W_out, mini_model.unembed.W_U):
        assert weight.T.is_contiguous()
        assert weight.T.contiguous().data_ptr() == weight.data_ptr()
    assert mini_model.blocks[0].attn.W_Q.is_contiguous()  # the rest keep transformer-lens's own layout


def test_stop_at_layer_stops_after_the_hooked_block(mini_model):
    tokens = mini_model.to_tokens(TEXT)
    with torch.no_grad():
        resid = mini_model(tokens, stop_at_layer=1)  # the residual stream after block 0
        _, cache = mini_model.run_with_cache(tokens, names_filter=["blocks.0.hook_resid_post"])
    torch.testing.assert_close(resid, cache["blocks.0.hook_resid_post"])


@pytest.mark.parametrize(
    "text",
    [TEXT, "", "x", " leading space", "<｜begin▁of▁sentence｜>already there", "naïve café 日本語 🙂\n\n"],
)
def test_to_tokens_equals_the_tokenizer_with_one_bos(mini_model, mini_qwen2_dir: Path, text: str):
    from transformers import AutoTokenizer

    hf_ids = AutoTokenizer.from_pretrained(mini_qwen2_dir)(text)["input_ids"]
    tokens = mini_model.to_tokens(text)[0].tolist()
    bos = mini_model.tokenizer.bos_token_id
    assert mini_model.cfg.default_prepend_bos is True
    assert tokens == hf_ids
    assert tokens[0] == bos
    assert tokens.count(bos) == 1 + text.count("<｜begin▁of▁sentence｜>")


def test_tokenizer_keeps_the_byte_level_pretokenizer_despite_the_llama_class(mini_qwen2_dir: Path):
    tokenizer = load_tokenizer(mini_qwen2_dir)
    text = "How are you doing?\n  Wait, 12 + 7 = 19."
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
    assert tokenizer("hi")["input_ids"][0] == tokenizer.bos_token_id


def test_n_ctx_override(mini_qwen2_dir: Path):
    model = load_model(str(mini_qwen2_dir), device="cpu", n_ctx=64)
    assert model.cfg.n_ctx == 64
    assert model.to_tokens("word " * 200).shape[1] == 64


def test_directory_without_config_json(tmp_path: Path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(tmp_path, device="cpu")


def test_missing_directory(tmp_path: Path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nope", device="cpu")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "a" / "b" / "c"), device="cpu")


def test_invalid_hub_id():
    with pytest.raises(ModelLoadError, match="valid hub id"):
        resolve_model_source("not a model id!")


def test_architecture_transformer_lens_cannot_convert(tmp_path: Path):
    from transformers import FalconConfig

    config = FalconConfig(
        architectures=["FalconForCausalLM"], hidden_size=32, num_attention_heads=4, num_hidden_layers=1
    )
    config.save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="cannot convert the architecture FalconForCausalLM"):
        load_model(tmp_path, device="cpu")


def test_a_directory_named_llama_is_refused_not_misread(mini_qwen2_dir: Path, tmp_path: Path):
    misleading = tmp_path / "my-llama-copy"
    shutil.copytree(mini_qwen2_dir, misleading)
    with pytest.raises(ModelLoadError, match="Rename the directory"):
        load_model(misleading, device="cpu")


def test_resolve_device():
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="no CUDA device"):
            resolve_device("cuda")
