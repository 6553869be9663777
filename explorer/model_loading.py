"""One loader for every model the explorer runs: the demo model and DeepSeek-R1-Distill-Qwen-1.5B.

`load_model(name_or_dir)` takes a hub id or a local Hugging Face directory and returns a
`HookedSAETransformer` (sae_lens's subclass of transformer-lens's `HookedTransformer`). Why that class
and not transformer-lens 3's `TransformerBridge`:

- the original notebook used `HookedSAETransformer`, and the SAEs trained on the real model were
  trained against its hook names;
- sae_vis and sae-dashboard take a `HookedTransformer`;
- its hook names (`blocks.21.hook_mlp_out`) are the canonical ones SAE configs name, while the Bridge
  resolves them to other names in caches (`blocks.21.mlp.hook_out...`);
- `forward(..., stop_at_layer=)` lets the feature index stop right after the hooked layer.

How a model gets there, the same way for a hub id and a directory:

1. the name resolves to a local directory: a directory as given, or a hub id's snapshot in the
   Hugging Face cache (downloaded first when it is missing and the hub is reachable);
2. transformers loads the model and tokenizer from that directory;
3. the name is registered in transformer-lens's `OFFICIAL_MODEL_NAMES` (transformer-lens 3.9 does not
   list DeepSeek-R1-Distill-Qwen-1.5B), and `HookedSAETransformer.from_pretrained` converts the
   loaded model (`hf_model=`, `tokenizer=`), reading the config with `local_files_only=True`.

Weight processing stays on (what `from_pretrained` does, not `from_pretrained_no_processing`), as in
the notebook. For Qwen2 (RMSNorm) it is numerically faithful where the explorer looks: RMSNorm weights
fold into the next linear layer, writing weights are not centred (that needs LayerNorm), so
`hook_mlp_out` and `hook_resid_post` equal the transformers model's values, and so do log-probs.
Raw logits differ from transformers' by a constant per position (`center_unembed`); softmax ignores it.
Folded value biases move from `hook_v`/`hook_z` into the attention output bias.

Memory. transformer-lens's `from_pretrained` holds the transformers model, a randomly initialised
HookedTransformer, and a float32 copy of every weight that its processing clones again: at the real
shapes that did not fit a 24 GiB host (docs/benchmarks.md). For RMSNorm models (Qwen2, Llama, ...) we do the
same conversion and processing one tensor at a time instead (`_stream_rmsnorm_weights`): the checkpoint
stays memory-mapped in its own dtype, the HookedTransformer is built without initialising its weights,
and each weight is converted, folded in float32 as transformer-lens does, and copied into place. The
peak is then about the model in the target dtype plus the mapped checkpoint; tests check that every
parameter equals `from_pretrained`'s.

Layout. transformer-lens 3.9's gated MLP and unembedding call `F.linear(x, W.T.contiguous())` on every
forward, copying W_in, W_gate, W_out and W_U each time (nn.Linear's layout, so that bfloat16 rounds as
in transformers). A generation step forwards one token per row, and at the real shapes those copies were
most of its time (docs/benchmarks.md, "Full-scale rehearsal"). The streamed load holds these four weights
in that layout already (each is the transpose of a contiguous [out, in] tensor), so `.T.contiguous()`
is the tensor itself: the same values reach `F.linear` in the same layout, without the copy.

BOS: transformer-lens's Qwen2 config says `default_prepend_bos=False`, but DeepSeek-R1-Distill's
tokenizer prepends `<｜begin▁of▁sentence｜>` and the model always saw it first. We set
`default_prepend_bos=True`, so `model.to_tokens(text)` equals the tokenizer's `input_ids`: one BOS.
"""

from __future__ import annotations

import gc
import json
import logging
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch

from explorer.config import Profile
from explorer.errors import ExplorerError
from explorer.runs import model_source

if TYPE_CHECKING:
    from sae_lens import HookedSAETransformer
    from transformer_lens import HookedTransformerConfig
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

MODEL_LOCK = threading.Lock()
"""Held around every call into a shared model (live activations, steering, the app's checks): a
HookedTransformer with hooks attached is not safe to call from two threads, and the app shares one model
between its sessions."""

DEEPSEEK_R1_DISTILL_QWEN_1_5B = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"

# What a hub download fetches: configs, tokenizer files, safetensors weights; not images or READMEs.
HUB_ALLOW_PATTERNS = ("*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken")
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


class ModelLoadError(ExplorerError, RuntimeError):
    """A model or tokenizer could not be loaded. The message says what to do about it."""


class ModelSource(NamedTuple):
    """Where a model's files are. `name` is what transformer-lens knows it as: the hub id, or the
    directory's absolute path."""

    name: str
    directory: Path
    from_hub: bool


# --- device and dtype -----------------------------------------------------------------------------


def resolve_device(device: str = "auto") -> str:
    """`auto` is CUDA when available, else CPU. An explicit device is checked, not second-guessed."""
    if device == "auto":
        resolved = "cuda" if torch.cuda.is_available() else "cpu"
        logger.info("device auto -> %s%s", resolved, "" if resolved == "cuda" else " (no CUDA device visible)")
        return resolved
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(
            f"device {device!r} was asked for, but torch sees no CUDA device. Use device='cpu' or 'auto'."
        )
    logger.info("device %s", device)
    return device


def _as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(resolved, torch.dtype):
        raise ModelLoadError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
    return resolved


# --- where the files are --------------------------------------------------------------------------


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _hub_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _how_to_get(repo_id: str) -> str:
    return (
        f"To get them: on a machine with network run `huggingface-cli download {repo_id}` (or "
        f"`hf download {repo_id}`) and copy the cache over, pointing HF_HOME (or HF_HUB_CACHE) at it; "
        "or pass a local directory that holds config.json, model.safetensors and the tokenizer files."
    )


def _looks_like_path(name: str) -> bool:
    # A hub id is `name` or `owner/name`: anything rooted, relative-dotted or deeper is a path.
    return name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1


def resolve_model_source(name_or_dir: str | Path) -> ModelSource:
    """The local directory that holds `name_or_dir`'s files.

    A hub id found in the Hugging Face cache is used from there without contacting the hub. One that
    is missing is downloaded, unless HF_HUB_OFFLINE is set, in which case this fails at once.
    """
    text = str(name_or_dir)
    path = Path(text).expanduser()
    if isinstance(name_or_dir, Path) or path.exists() or _looks_like_path(text):
        return _local_source(path)
    return _hub_source(text)


def _local_source(path: Path) -> ModelSource:
    if not path.exists():
        raise ModelLoadError(f"model directory {path} does not exist.")
    if not path.is_dir():
        raise ModelLoadError(f"{path} is a file; pass the directory that holds config.json and the weights.")
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            f"{path} has no config.json, so it is not a Hugging Face model directory. A model directory "
            "holds config.json, model.safetensors and the tokenizer files, as `save_pretrained` writes them."
        )
    return ModelSource(str(path.resolve()), path.resolve(), from_hub=False)


def _hub_source(repo_id: str) -> ModelSource:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise ModelLoadError(f"{repo_id!r} is neither an existing directory nor a valid hub id (owner/name).") from None

    try:
        directory = snapshot_download(repo_id, allow_patterns=list(HUB_ALLOW_PATTERNS), local_files_only=True)
    except LocalEntryNotFoundError:
        directory = None
    if directory is None or not _has_weights(Path(directory)):
        if _hub_offline():
            raise ModelLoadError(
                f"The weights of {repo_id} are not in the local Hugging Face cache ({_hub_cache_dir()}) and "
                f"HF_HUB_OFFLINE is set, so nothing can be downloaded. {_how_to_get(repo_id)}"
            )
        logger.info("%s is not in the cache (%s); downloading", repo_id, _hub_cache_dir())
        try:
            directory = snapshot_download(repo_id, allow_patterns=list(HUB_ALLOW_PATTERNS))
        except Exception as err:  # network, auth, missing repo: all end the same way for the user
            raise ModelLoadError(
                f"The weights of {repo_id} are not in the local Hugging Face cache ({_hub_cache_dir()}) and "
                f"downloading them failed ({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
                f"{_how_to_get(repo_id)}"
            ) from err
    directory = Path(directory)
    if not _has_weights(directory):
        raise ModelLoadError(
            f"The cached snapshot of {repo_id} ({directory}) has no weights file ({', '.join(_WEIGHT_FILES)}). "
            f"{_how_to_get(repo_id)}"
        )
    return ModelSource(repo_id, directory, from_hub=True)


def _has_weights(directory: Path) -> bool:
    return (directory / "config.json").is_file() and any((directory / name).is_file() for name in _WEIGHT_FILES)


# --- transformers ---------------------------------------------------------------------------------


def _prepends_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    ids = tokenizer("a")["input_ids"]
    return tokenizer.bos_token_id is not None and len(ids) > 0 and ids[0] == tokenizer.bos_token_id


def load_tokenizer(name_or_dir: str | Path) -> PreTrainedTokenizerBase:
    """The model's tokenizer, as transformers loads it, checked for the transformers 5 Llama trap.

    DeepSeek-R1-Distill's tokenizer_config.json names `LlamaTokenizerFast` although its tokenizer.json
    is byte-level BPE; transformers 5's `LlamaTokenizer` swaps in a Metaspace pre-tokenizer and spaces
    vanish. transformers 5.24 sidesteps it (with the real files' layout it loads `Qwen2Tokenizer`, the
    class of model_type qwen2); if a text fails to round-trip anyway, we reload tokenizer.json as it is
    (`PreTrainedTokenizerFast`).
    """
    return _load_tokenizer(resolve_model_source(name_or_dir).directory)


def _load_tokenizer(directory: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if not any((directory / name).is_file() for name in _TOKENIZER_FILES):
        raise ModelLoadError(f"{directory} has no tokenizer files ({', '.join(_TOKENIZER_FILES)}).")
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"transformers could not load the tokenizer in {directory}: {err}") from err
    probe = "Wait, let me check: 12 + 7 = 19."
    round_trips = tokenizer.decode(tokenizer.encode(probe, add_special_tokens=False)) == probe
    if not round_trips and (directory / "tokenizer.json").is_file():
        logger.warning(
            "%s's tokenizer does not round-trip text as %s; loading tokenizer.json as it is",
            directory,
            type(tokenizer).__name__,
        )
        tokenizer = PreTrainedTokenizerFast.from_pretrained(directory)
    if _prepends_bos(tokenizer) and not getattr(tokenizer, "add_bos_token", False):
        # transformers 5 drops `add_bos_token` from tokenizer_config.json when tokenizer.json exists (its
        # post-processor adds BOS). Saying it again rewrites the same BOS template, and spares
        # transformer-lens a reload of the tokenizer by name (its `get_tokenizer_with_bos`).
        tokenizer.add_bos_token = True
    return tokenizer


def _load_hf_model(source: ModelSource, dtype: torch.dtype | str) -> PreTrainedModel:
    """The transformers model in `dtype` ("auto": the checkpoint's own, memory-mapped, nothing copied)."""
    from transformers import AutoModelForCausalLM

    if not _has_weights(source.directory):
        raise ModelLoadError(f"{source.directory} has no weights file ({', '.join(_WEIGHT_FILES)}).")
    try:
        return AutoModelForCausalLM.from_pretrained(source.directory, dtype=dtype)
    except (OSError, ValueError, KeyError) as err:
        raise ModelLoadError(f"transformers could not load the model in {source.directory}: {err}") from err


# --- transformer-lens -----------------------------------------------------------------------------


def _register_official_name(name: str) -> None:
    from transformer_lens import loading_from_pretrained as loading

    if name not in loading.OFFICIAL_MODEL_NAMES:
        loading.OFFICIAL_MODEL_NAMES.append(name)


def _check_convertible(source: ModelSource) -> str | None:
    """Fail before loading gigabytes if transformer-lens cannot convert this architecture; return its
    normalization type ("RMS", "LN", ...)."""
    from transformer_lens import loading_from_pretrained as loading

    config = json.loads((source.directory / "config.json").read_text())
    architecture = (config.get("architectures") or ["<none listed>"])[0]
    # transformer-lens 3.9 picks Llama/Gemma configs from the *name* when it contains those words,
    # without reading config.json.
    for word in ("llama", "gemma"):
        if word in source.name.lower() and word not in architecture.lower():
            raise ModelLoadError(
                f"transformer-lens would read {source.name} as a {word} model because the name contains "
                f"{word!r}, but its config.json says {architecture}. Rename the directory (or link it under a "
                f"path without {word!r})."
            )
    try:
        tl_config = loading.convert_hf_model_config(source.name, local_files_only=True)
    except NotImplementedError:
        raise ModelLoadError(
            f"transformer-lens {_tl_version()} cannot convert the architecture {architecture} of {source.name}. "
            "Pick a model whose architecture it supports (Qwen2ForCausalLM, LlamaForCausalLM, ...)."
        ) from None
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as err:
        raise ModelLoadError(f"transformer-lens could not read the config of {source.name}: {err}") from err
    if tl_config.get("original_architecture") != architecture:
        raise ModelLoadError(
            f"transformer-lens reads {source.name} as {tl_config.get('original_architecture')}, but its "
            f"config.json says {architecture}."
        )
    return tl_config.get("normalization_type")


def _tl_version() -> str:
    from importlib.metadata import version

    return version("transformer-lens")


_TRANSPOSED_WEIGHTS = ("mlp.W_in", "mlp.W_gate", "mlp.W_out", "unembed.W_U")
"""Weights transformer-lens passes to `F.linear` as `W.T.contiguous()` on every forward."""


def _stream_rmsnorm_weights(
    source: ModelSource, tokenizer: PreTrainedTokenizerBase, device: str, dtype: torch.dtype, n_ctx: int | None
) -> HookedSAETransformer:
    """`HookedSAETransformer.from_pretrained(...)` with transformer-lens's default processing (fold the
    RMSNorm weights, centre the unembedding, fold the value biases), one tensor at a time."""
    from sae_lens import HookedSAETransformer
    from transformer_lens import loading_from_pretrained as loading

    state, cfg = _converted_checkpoint(source, device, dtype, n_ctx)
    cfg.init_weights = False  # every parameter is overwritten below; an untouched page costs no memory
    model = HookedSAETransformer(cfg, tokenizer, move_to_device=False)
    targets = dict(model.named_parameters())
    for key, param in targets.items():
        if key.endswith(_TRANSPOSED_WEIGHTS):  # [in, out], a view of a contiguous [out, in] (module docstring)
            param.data = torch.empty(param.shape[::-1], dtype=param.dtype, device=param.device).T
    unset = set(targets)

    def take(key: str) -> torch.Tensor:
        """The checkpoint's tensor as a float32 copy: transformer-lens processes in float32 too."""
        return state.pop(key).to(torch.float32, copy=True)

    def put(key: str, value: torch.Tensor) -> None:
        with torch.no_grad():
            targets[key].copy_(value)
        unset.discard(key)

    # The unembedding first: it is the largest matrix (vocabulary x d_model) and needs a float32 copy,
    # which is cheapest to hold before the rest of the model has been copied in.
    W_U_DV = take("unembed.W_U").mul_(take("ln_final.w")[:, None])
    put("unembed.W_U", W_U_DV.sub_(W_U_DV.mean(-1, keepdim=True)))
    del W_U_DV
    b_U_V = take("unembed.b_U")
    put("unembed.b_U", b_U_V - b_U_V.mean())
    repeats = cfg.n_heads // (cfg.n_key_value_heads or cfg.n_heads)
    kv = "_" if cfg.n_key_value_heads is not None else ""
    for layer in range(cfg.n_layers):
        block = f"blocks.{layer}"
        ln1_D, ln2_D = take(f"{block}.ln1.w"), take(f"{block}.ln2.w")
        for name in ("W_Q", f"{kv}W_K", f"{kv}W_V"):  # [n_heads, d_model, d_head]
            put(f"{block}.attn.{name}", take(f"{block}.attn.{name}") * ln1_D[None, :, None])
        W_O_NHD = take(f"{block}.attn.W_O")  # [n_heads, d_head, d_model]
        b_V_key = f"{block}.attn.{kv}b_V"
        if b_V_key in state:  # fold the value biases into the output bias
            b_V_NH = torch.repeat_interleave(take(b_V_key), repeats, dim=0)
            put(f"{block}.attn.b_O", take(f"{block}.attn.b_O") + (b_V_NH[:, :, None] * W_O_NHD).sum((0, 1)))
            put(b_V_key, torch.zeros_like(targets[b_V_key]))
        put(f"{block}.attn.W_O", W_O_NHD)
        for name in ("W_in", "W_gate"):  # [d_model, d_mlp]
            put(f"{block}.mlp.{name}", take(f"{block}.mlp.{name}") * ln2_D[:, None])
    for key in list(state):
        if key in targets:
            put(key, state.pop(key))  # as it is (the embedding, the Q and K biases): cast by the copy
    if unset:
        raise ModelLoadError(f"{source.name}: the checkpoint has no weights for {', '.join(sorted(unset))}.")
    model.move_model_modules_to_device()
    return model


def _converted_checkpoint(
    source: ModelSource, device: str, dtype: torch.dtype, n_ctx: int | None
) -> tuple[dict[str, torch.Tensor], HookedTransformerConfig]:
    """transformer-lens's config and its state dict of the checkpoint, as views of the memory-mapped
    weights in the checkpoint's own dtype (the transformers model is dropped on return)."""
    from transformer_lens import loading_from_pretrained as loading

    hf_model = _load_hf_model(source, "auto")
    cfg = loading.get_pretrained_model_config(
        source.name,
        hf_cfg=hf_model.config.to_dict(),
        fold_ln=True,
        device=device,
        n_devices=1,
        default_prepend_bos=True,
        dtype=dtype,
        n_ctx=n_ctx,
    )
    checkpoint_dtype = next(hf_model.parameters()).dtype
    return loading.get_pretrained_state_dict(source.name, cfg, hf_model, dtype=checkpoint_dtype), cfg


def load_model(
    name_or_dir: str | Path,
    device: str = "auto",
    dtype: torch.dtype | str = torch.float32,
    n_ctx: int | None = None,
) -> HookedSAETransformer:
    """A hub id or local Hugging Face directory, as a `HookedSAETransformer` on `device`.

    `n_ctx` overrides the context length (the notebook ran the real model at 2048). Tokens from
    `model.to_tokens(text)` start with exactly one BOS, like the tokenizer's `input_ids`.
    Raises `ModelLoadError` with what to do when the files are missing, the directory is not a model,
    or transformer-lens cannot convert the architecture.
    """
    device = resolve_device(device)
    torch_dtype = _as_dtype(dtype)
    if device.startswith("cuda"):  # float32 matmuls in TF32: about 8x the throughput, 10-bit mantissas
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    source = resolve_model_source(name_or_dir)
    # transformer-lens and sae_lens take about 9 s to import: only after the files are known to exist.
    from sae_lens import HookedSAETransformer

    _register_official_name(source.name)
    normalization = _check_convertible(source)
    tokenizer = _load_tokenizer(source.directory)
    logger.info("loading %s into HookedSAETransformer on %s (%s)", source.name, device, torch_dtype)
    if normalization == "RMS":
        model = _stream_rmsnorm_weights(source, tokenizer, device, torch_dtype, n_ctx)
        gc.collect()
        model.eval()
        return model
    hf_model = _load_hf_model(source, torch_dtype)
    with warnings.catch_warnings():
        # HookedTransformer.from_pretrained warns that it is deprecated in favour of TransformerBridge;
        # we chose it on purpose (module docstring).
        warnings.filterwarnings("ignore", message=".*from_pretrained is deprecated.*", category=DeprecationWarning)
        model = HookedSAETransformer.from_pretrained(
            source.name,
            hf_model=hf_model,
            tokenizer=tokenizer,
            device=device,
            dtype=torch_dtype,
            n_ctx=n_ctx,
            default_prepend_bos=True,
            local_files_only=True,
        )
    del hf_model
    gc.collect()
    model.eval()
    return model


def load_run_model(run_dir: Path, profile: Profile) -> HookedSAETransformer:
    """A run's model as the pipeline runs it (`explorer.runs.model_source`: the demo's own `model/`, else
    the profile's model), on the best device, in the profile's dtype and context length."""
    return load_model(model_source(run_dir, profile), device="auto", dtype=profile.dtype, n_ctx=profile.n_ctx)
