"""The real model's shapes with random weights, for benchmarks whose timings do not depend on values.

DeepSeek-R1-Distill-Qwen-1.5B (its config.json on the hub): Qwen2, 28 layers, d_model 1536, 12 heads, 2 KV heads,
d_mlp 8960, vocab 151,936; the notebook's SAE reads `blocks.21.hook_mlp_out` with 24,576 features.
`--small` shapes (2 layers, d_model 128, 1,024 features) smoke-test a script on a CPU.

The transformer-lens config is converted from a Qwen2 config.json written to a temporary folder, the
same route `explorer.model_loading` takes for the real checkpoint, and built with `init_weights=True`
(otherwise the weights stay uninitialised and timings mislead). The SAE's encoder bias is calibrated so
that each feature fires on about `density` of tokens, as a trained SAE would (L0 about 50 at 24,576).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

REAL_QWEN2 = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 1536, "intermediate_size": 8960,
    "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936,
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False,
    "hidden_act": "silu", "bos_token_id": 151646, "eos_token_id": 151643, "torch_dtype": "bfloat16",
}
SMALL_QWEN2 = {**REAL_QWEN2, "hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 2048}


class Shapes(NamedTuple):
    config: dict
    hook_name: str
    layer: int
    d_sae: int


REAL = Shapes(REAL_QWEN2, "blocks.21.hook_mlp_out", 21, 24576)
SMALL = Shapes(SMALL_QWEN2, "blocks.1.hook_mlp_out", 1, 1024)


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({torch.get_num_threads()} threads)"


def build_model(shapes: Shapes, device: str, dtype: torch.dtype, n_ctx: int = 2048):
    from sae_lens import HookedSAETransformer
    from transformer_lens import HookedTransformerConfig
    from transformer_lens import loading_from_pretrained as loading

    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "config.json").write_text(json.dumps(shapes.config))
        loading.OFFICIAL_MODEL_NAMES.append(folder)  # as explorer.model_loading registers a local folder
        cfg_dict = loading.convert_hf_model_config(folder, local_files_only=True)
    cfg_dict.update(n_ctx=n_ctx, device=device, dtype=dtype, init_weights=True, tokenizer_name=None,
                    original_architecture="Qwen2ForCausalLM")
    cfg_dict = {k: v for k, v in cfg_dict.items() if k in HookedTransformerConfig.__dataclass_fields__}
    torch.manual_seed(0)
    model = HookedSAETransformer(HookedTransformerConfig(**cfg_dict))
    return model.to(device).eval()


@torch.no_grad()
def build_sae(model, shapes: Shapes, density: float = 0.002, device: str = "cpu", dtype=torch.float32):
    """A StandardSAE with random directions and per-feature thresholds set so each feature fires on
    about `density` of tokens of random text."""
    from sae_lens import StandardSAE, StandardSAEConfig

    d_in = model.cfg.d_model
    torch.manual_seed(1)
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=shapes.d_sae, dtype=str(dtype).split(".")[-1], device=device))
    sae.W_enc.normal_(0, d_in**-0.5)
    sae.W_dec.copy_(sae.W_enc.T / sae.W_enc.T.norm(dim=1, keepdim=True))
    ids = torch.randint(0, model.cfg.d_vocab, (4, 256), device=device)
    _, cache = model.run_with_cache(ids, names_filter=shapes.hook_name, stop_at_layer=shapes.layer + 1)
    pre = (cache[shapes.hook_name].reshape(-1, d_in).to(dtype) - sae.b_dec) @ sae.W_enc
    sae.b_enc.copy_(-torch.quantile(pre.float(), 1 - density, dim=0).to(dtype))
    return sae.to(device)


def random_windows(n_tokens: int, context: int, vocab_size: int, seed: int = 0, phrase_rate: float = 0.01):
    """Context windows of random tokens with labelled 'phrases' of 3-6 tokens at `phrase_rate` per
    token (random groups), half the documents flagged as backtracking."""
    from explorer.feature_index import Window
    from explorer.lexicon import GROUPS

    rng = np.random.default_rng(seed)
    windows = []
    for i in range(max(1, n_tokens // context)):
        ids = rng.integers(0, vocab_size, context)
        groups = np.full(context, -1, dtype=np.int8)
        start = np.zeros(context, dtype=bool)
        for s in np.flatnonzero(rng.random(context) < phrase_rate):
            groups[s : s + rng.integers(3, 7)] = rng.integers(0, len(GROUPS) - 1)
            start[s] = True
        windows.append(Window(i, f"doc{i}", 0, ids, np.ones(context, dtype=bool), groups, start, bool(i % 2)))
    return windows
