"""The demo model: a byte-level BPE tokenizer, a miniature Qwen2ForCausalLM, and its CPU training.

The demo stands in for deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B so that every later stage (SAE,
feature index, app) runs the code path the real model runs:

- the tokenizer is built like the real one: Qwen2's pre-tokenizer split regex then ByteLevel, NFC,
  the real special-token strings (`<｜begin▁of▁sentence｜>` ...), `<think>`/`</think>` as single
  added tokens, and a post-processor that prepends BOS;
- the model is the real architecture class (`Qwen2ForCausalLM`, untied embeddings, grouped-query
  attention), only tiny;
- the trained directory is an ordinary Hugging Face directory, and the greedy sample at the end is
  generated through `explorer.model_loading.load_model`, the loader the real model goes through;
- optionally (the `demo` profile does), training plants a backtracking feature: one direction of a
  hook's activations is trained to mark backtracking phrases (`DemoLMSpec.plant_weight`).

Pure functions only: the command-line stage that calls `train_demo_lm` lives in `precompute/`.

Array names end in shape letters (`acts_BTF`: batch, tokens, features): docs/shapes.md.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from explorer.config import DemoLMSpec
from explorer.errors import ExplorerError
from explorer.labels import NO_GROUP, label_text, token_group_ids
from explorer.model_loading import load_model
from explorer.prompts import THINK_CLOSE, THINK_OPEN, format_prompt

logger = logging.getLogger(__name__)

# The special-token strings of deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B (its tokenizer.json). The
# full-width bars and the "▁" are part of the strings.
BOS_TOKEN = "<｜begin▁of▁sentence｜>"
EOS_TOKEN = "<｜end▁of▁sentence｜>"
USER_TOKEN = "<｜User｜>"
ASSISTANT_TOKEN = "<｜Assistant｜>"

# Added tokens in the real tokenizer's id order (EOS 151643, User, Assistant, BOS 151646, then `<think>`
# 151648 and `</think>` 151649), with its `special` flags: BOS and EOS are special (dropped by
# `decode(skip_special_tokens=True)`); the chat markers and the think tags are not.
ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    (EOS_TOKEN, True),
    (USER_TOKEN, False),
    (ASSISTANT_TOKEN, False),
    (BOS_TOKEN, True),
    (THINK_OPEN, False),
    (THINK_CLOSE, False),
)

# Qwen2's pre-tokenizer split (the real tokenizer.json): contractions, letter runs with one leading
# non-letter, single digits, punctuation runs, newlines, spaces.
QWEN2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)

DEFAULT_SAMPLE_PROBLEM = "What is 12 + 7?"
MAX_POSITION_EMBEDDINGS = 512
"""The demo model's longest context (its config's `max_position_embeddings`)."""
HELDOUT_FRACTION = 0.02
"""Share of the documents (at least one) held out of training, for `TrainReport.heldout_loss`."""


# --- tokenizer ------------------------------------------------------------------------------------


def _without_added_tokens(texts: Iterable[str]) -> Iterator[str]:
    """The texts cut at the added-token strings, so BPE does not spend merges on `<think>` pieces."""
    splitter = re.compile("|".join(re.escape(token) for token, _ in ADDED_TOKENS))
    for text in texts:
        for piece in splitter.split(text):
            if piece:
                yield piece


def train_tokenizer(texts: Iterable[str], vocab_size: int, *, model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on `texts`, laid out like DeepSeek-R1-Distill-Qwen's tokenizer.

    `vocab_size` counts the added tokens: the BPE gets `vocab_size - 6` entries (fewer if the corpus
    runs out of merges) and the six added tokens follow, in the real tokenizer's order. Encoding
    prepends BOS (a `TemplateProcessing` post-processor, as in the real tokenizer.json); EOS doubles as
    the pad token. All 256 byte symbols are in the vocabulary, so any text round-trips.

    Save it with `save_pretrained` and reload it with `AutoTokenizer.from_pretrained` before handing it
    to transformer-lens (an in-memory tokenizer lacks `name_or_path`).
    """
    n_bpe = vocab_size - len(ADDED_TOKENS)
    byte_alphabet = pre_tokenizers.ByteLevel.alphabet()
    if n_bpe < len(byte_alphabet):
        raise ValueError(f"vocab_size must be at least {len(byte_alphabet) + len(ADDED_TOKENS)}, got {vocab_size}")

    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(vocab_size=n_bpe, initial_alphabet=byte_alphabet, show_progress=False)
    backend.train_from_iterator(_without_added_tokens(texts), trainer)

    # Added after training, so they take the ids after the BPE vocabulary, as in the real tokenizer.
    for content, special in ADDED_TOKENS:
        backend.add_tokens([AddedToken(content, special=special, normalized=False)])
    bos_id = backend.token_to_id(BOS_TOKEN)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN}:0 $A:0",
        pair=f"{BOS_TOKEN}:0 $A:0 {BOS_TOKEN}:1 $B:1",
        special_tokens=[(BOS_TOKEN, bos_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
    )


# --- model config ---------------------------------------------------------------------------------


def demo_model_config(
    tokenizer: PreTrainedTokenizerBase,
    *,
    hidden_size: int = 128,
    n_layers: int = 2,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    intermediate_size: int = 512,
    max_position_embeddings: int = 512,
    rope_theta: float = 10_000.0,
) -> Qwen2Config:
    """A miniature of DeepSeek-R1-Distill-Qwen-1.5B's config: the same class and choices (SiLU gated
    MLP, RMSNorm eps 1e-6, rotary, grouped-query attention, untied embeddings), tiny sizes.

    The vocabulary is exactly the tokenizer's length; BOS/EOS/pad ids come from the tokenizer.
    """
    if hidden_size % n_heads or n_heads % n_kv_heads:
        raise ValueError(
            "need hidden_size % n_heads == 0 and n_heads % n_kv_heads == 0, "
            f"got {hidden_size}, {n_heads}, {n_kv_heads}"
        )
    return Qwen2Config(
        architectures=["Qwen2ForCausalLM"],
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        max_position_embeddings=max_position_embeddings,
        rope_theta=rope_theta,
        rms_norm_eps=1e-6,
        hidden_act="silu",
        tie_word_embeddings=False,
        use_sliding_window=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )


# --- packing --------------------------------------------------------------------------------------


class PackedStream(NamedTuple):
    """`packed_stream`'s streams, all of the same length."""

    tokens: np.ndarray
    phrase_mask: np.ndarray | None
    """With `phrase_mask=True`: 1 on the tokens of backtracking phrases, else 0."""
    label_mask: np.ndarray | None
    """With `label_spans`: 1 on the tokens that overlap one of the document's spans, else 0."""


def packed_stream(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    phrase_mask: bool = False,
    label_spans: Sequence[Sequence[tuple[int, int]]] | None = None,
) -> PackedStream:
    """One token stream: each document as `BOS text EOS`, documents back to back. No padding.

    Attention runs across document boundaries in a packed row; BOS and EOS mark where one ends.
    With `phrase_mask`, also a float stream of the same length: 1 where the token lies in a
    backtracking phrase that `explorer.labels.label_text` finds (any group), else 0. With `label_spans`
    (per text, its (start, end) character spans: a label set's positive spans), another: 1 where the
    token overlaps one of its text's spans (`span_token_mask`), else 0. BOS and EOS are 0 in both.
    """
    # The Rust backend directly: batched, and no "longer than model_max_length" warnings for
    # documents that packing will cut anyway.
    encodings = tokenizer.backend_tokenizer.encode_batch(list(texts), add_special_tokens=True)
    ids = [encoding.ids for encoding in encodings]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    missing_bos = bool(ids) and (not ids[0] or ids[0][0] != bos)  # a tokenizer whose post-processor adds no BOS
    tokens = _pack(ids, bos=bos if missing_bos else None, end=eos, dtype=np.int64)

    def packed_mask(masks: Iterable[np.ndarray]) -> np.ndarray:
        return _pack(list(masks), bos=0 if missing_bos else None, end=0, dtype=np.float32)

    phrases = labels = None
    if phrase_mask:
        phrases = packed_mask(
            (token_group_ids(encoding.offsets, label_text(text)) != NO_GROUP).astype(np.float32)
            for text, encoding in zip(texts, encodings)
        )
    if label_spans is not None:
        if len(label_spans) != len(texts):
            raise ValueError(f"label_spans holds {len(label_spans)} lists of spans for {len(texts)} texts")
        labels = packed_mask(span_token_mask(encoding.offsets, spans) for spans, encoding in zip(label_spans, encodings))
    return PackedStream(tokens, phrases, labels)


def span_token_mask(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """1.0 for each token whose characters overlap one of `spans` (character (start, end) pairs), else 0.0:
    the rule `explorer.labels.token_spans` applies to phrases (a token cut by a span's edge counts; a
    token with no characters, like BOS, never does). `offsets[i]` is token i's (char_start, char_end)."""
    offsets_arr = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)  # [n_tokens, 2]
    starts, ends = offsets_arr[:, 0], offsets_arr[:, 1]
    mask = np.zeros(len(offsets_arr), dtype=bool)  # [n_tokens]
    for start, end in spans:
        mask |= (starts < end) & (ends > start)
    return (mask & (ends > starts)).astype(np.float32)


def _pack(values: Sequence[Sequence[Any]], *, bos: Any | None, end: Any, dtype: Any) -> np.ndarray:
    """Documents' per-token values back to back, each as `[bos] values end` (no `bos` when None)."""
    extra = 1 + (bos is not None)
    lengths = np.fromiter((len(doc) + extra for doc in values), dtype=np.int64, count=len(values))
    stream = np.empty(int(lengths.sum()), dtype=dtype)  # [n_tokens]
    for doc, stop in zip(values, np.cumsum(lengths)):
        if bos is not None:
            stream[stop - len(doc) - 2] = bos
        stream[stop - len(doc) - 1 : stop - 1] = doc
        stream[stop - 1] = end
    return stream


def compute_packed_tokens(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> np.ndarray:
    """The token stream of `packed_stream`."""
    return packed_stream(tokenizer, texts)[0]


def compute_contexts(stream: np.ndarray, context: int) -> torch.Tensor:
    """The stream cut into rows of `context` tokens (the ragged tail is dropped). A stream with values per
    token ([n_tokens, K]) gives [n_rows, context, K]."""
    n_rows = len(stream) // context
    return torch.from_numpy(stream[: n_rows * context].reshape(n_rows, context, *stream.shape[1:]))  # [n_rows, context]


def _split_documents(n_docs: int, heldout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n_docs)
    n_heldout = max(1, round(n_docs * heldout_fraction)) if n_docs > 1 else 0
    return np.sort(order[n_heldout:]), np.sort(order[:n_heldout])


# --- training -------------------------------------------------------------------------------------


@dataclass
class TrainReport:
    """What one `train_demo_lm` run did. `to_dict()` is what goes into train_report.json."""

    steps: int
    """Optimizer steps taken."""
    tokens_seen: int
    """Training tokens consumed (steps x batch_size x context)."""
    seconds: float
    """Wall time of the whole call: tokenizer, packing, training, saving, sample."""
    train_seconds: float
    """Wall time of the optimisation loop alone."""
    stopped_by: str
    """`steps` or `time_budget`."""
    loss_curve: list[tuple[int, float]]
    """(step, training loss) pairs, about 50 of them, the last one the final step."""
    final_train_loss: float
    """Mean training loss over the last 10 steps (nats per token), the language-modelling loss alone."""
    heldout_loss: float
    """Loss on the held-out documents (nats per token); NaN when they fill less than one context."""
    plant_loss: float | None
    """With a backtracking plant (`plant_weight` > 0): its mean squared error over the last 10 steps."""
    planted_direction: list[float] | None
    """With a plant: the unit direction it writes along at `plant_hook` (transformer-lens coordinates)."""
    n_params: int
    n_vocab: int
    """The tokenizer's actual size: BPE stops early when the corpus has no more merges to make."""
    n_train_docs: int
    n_heldout_docs: int
    n_train_tokens: int
    """Tokens in the packed training stream."""
    sample_prompt: str
    sample_text: str
    """The greedy continuation of `sample_prompt` (about 120 tokens), generated by the model as
    `explorer.model_loading.load_model` loads it from the saved directory."""
    label_plant_loss: float | None = None
    """With a label-set plant (`plant_label`): its mean squared error over the last 10 steps."""
    label_direction: list[float] | None = None
    """With a label-set plant: the unit direction it writes along at `plant_hook` (`label_direction`)."""
    config: dict[str, Any] = field(default_factory=dict)
    """The settings of the run (`run_config`): the spec's fields, then `max_position_embeddings`,
    `heldout_fraction`, `sample_prompt` and `sample_tokens`."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DemoLMSettingsError(ExplorerError, ValueError):
    """A demo-LM setting that cannot work (raised before any training)."""


PLANT_HOOK_PATTERN = re.compile(r"blocks\.(\d+)\.hook_(mlp_out|resid_post)")


def planted_direction(hidden_size: int, seed: int) -> torch.Tensor:
    """The unit direction the backtracking plant writes along: random (from `seed`), with zero mean over
    the hidden dimensions, so that transformer-lens's `center_writing_weights` leaves projections on it
    unchanged."""
    generator = torch.Generator().manual_seed(seed)
    direction = torch.randn(hidden_size, generator=generator, dtype=torch.float64)
    direction -= direction.mean()
    return (direction / direction.norm()).float()


LABEL_DIRECTION_SEED_OFFSET = 1_000_003
"""`label_direction` draws from `seed` plus this, so that it is another random direction than the first."""


def label_direction(hidden_size: int, seed: int) -> torch.Tensor:
    """The unit direction the label-set plant (`DemoLMSpec.plant_label`) writes along: random (from another
    seed than `planted_direction`'s), made orthogonal to `planted_direction(hidden_size, seed)`, with zero
    mean over the hidden dimensions (both are zero-mean, so the orthogonalised one stays so)."""
    first = planted_direction(hidden_size, seed).double()
    second = planted_direction(hidden_size, seed + LABEL_DIRECTION_SEED_OFFSET).double()
    second -= (second @ first) * first
    return (second / second.norm()).float()


def extend_before(mask: np.ndarray, lead: int) -> np.ndarray:
    """`mask` with each marked run extended to the `lead` tokens before it."""
    extended = mask.copy()
    for shift in range(1, lead + 1):
        extended[:-shift] = np.maximum(extended[:-shift], mask[shift:])
    return extended


def check_plant_hook(hook_name: str, n_layers: int) -> tuple[int, str]:
    """(layer, "mlp_out" or "resid_post") of a plant hook name, or a ValueError that says what is allowed."""
    match = PLANT_HOOK_PATTERN.fullmatch(hook_name)
    if match is None or int(match[1]) >= n_layers:
        raise DemoLMSettingsError(
            f"plant_hook must be blocks.L.hook_mlp_out or blocks.L.hook_resid_post with L < {n_layers}, got {hook_name!r}"
        )
    return int(match[1]), match[2]


def plant_module(model: Qwen2ForCausalLM, hook_name: str) -> torch.nn.Module:
    """The transformers module whose output is transformer-lens's `hook_name` (before weight processing):
    `blocks.L.hook_mlp_out` is layer L's MLP, `blocks.L.hook_resid_post` layer L itself."""
    layer_index, kind = check_plant_hook(hook_name, model.config.num_hidden_layers)
    layer = model.model.layers[layer_index]
    return layer.mlp if kind == "mlp_out" else layer


def _lr_at(progress: float, lr: float, warmup: float = 0.05, floor: float = 0.1) -> float:
    """Linear warm-up over the first `warmup` of training, then cosine down to `floor * lr`."""
    if progress < warmup:
        return lr * (progress + 1e-3) / warmup
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / (1 - warmup))))
    return lr * (floor + (1 - floor) * cosine)


def _make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float = 0.1) -> torch.optim.AdamW:
    # Weight decay on matrices only, not on norms and biases.
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8)


def _lm_loss(model: Qwen2ForCausalLM, tokens_BT: torch.Tensor) -> torch.Tensor:
    logits_BTV = model(input_ids=tokens_BT, use_cache=False).logits
    return F.cross_entropy(logits_BTV[:, :-1].flatten(0, 1), tokens_BT[:, 1:].flatten())


class _Plant:
    """The auxiliary loss that plants features: for each of the K directions, the mean squared difference
    between the plant hook's projection on it and a per-token target (the backtracking plant: `plant_value`
    inside backtracking phrases, `plant_value_before` on the tokens before them, 0 elsewhere; the
    label-set plant: `plant_label_value` inside the label set's spans, 0 elsewhere)."""

    def __init__(self, model: Qwen2ForCausalLM, hook_name: str, directions_KD: torch.Tensor) -> None:
        self.directions_KD = directions_KD
        self.output: torch.Tensor | None = None
        plant_module(model, hook_name).register_forward_hook(self._keep)

    def _keep(self, module: torch.nn.Module, inputs: Any, output: Any) -> None:
        self.output = output[0] if isinstance(output, tuple) else output

    def losses(self, targets_BTK: torch.Tensor) -> torch.Tensor:
        """Each direction's loss [K], of the forward pass that ran last."""
        assert self.output is not None, "no forward pass has run"
        return ((self.output @ self.directions_KD.T - targets_BTK) ** 2).mean(dim=(0, 1))


@torch.no_grad()
def compute_heldout_loss(
    model: Qwen2ForCausalLM, contexts_NT: torch.Tensor, batch_size: int, max_rows: int = 64
) -> float:
    """Mean next-token loss over (at most `max_rows` of) the held-out contexts."""
    if len(contexts_NT) == 0:
        return float("nan")
    was_training = model.training
    model.eval()
    rows = contexts_NT[:max_rows]
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        total += _lm_loss(model, batch).item() * len(batch)
        count += len(batch)
    model.train(was_training)
    return total / count


def default_sample_prompt(texts: Sequence[str]) -> str:
    """The prompt part (up to `<think>` and its newline) of the shortest text that has one, so that a
    ~120-token sample has room to reach `</think>` and the answer; else a template prompt."""
    marker = THINK_OPEN + "\n"
    with_prompt = [text for text in texts if text.find(marker) > 0]
    if not with_prompt:
        return format_prompt(DEFAULT_SAMPLE_PROBLEM)
    shortest = min(with_prompt, key=len)
    return shortest[: shortest.find(marker) + len(marker)]


def generate_greedy_sample(model_dir: Path, prompt: str, max_new_tokens: int = 120) -> str:
    """Load `model_dir` through `load_model` (the real model's loader) and continue `prompt` greedily.

    Returns the prompt followed by the continuation; generation stops early at EOS.
    """
    model = load_model(model_dir, device="cpu")
    tokens = model.to_tokens(prompt)  # [1, n_prompt] with one BOS
    with torch.no_grad():
        out = model.generate(
            tokens,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            stop_at_eos=True,
            eos_token_id=model.tokenizer.eos_token_id,
            verbose=False,
        )
    return model.tokenizer.decode(out[0], skip_special_tokens=True)


def run_config(spec: DemoLMSpec, sample_prompt: str | None, sample_tokens: int) -> dict[str, Any]:
    """What `TrainReport.config` records: the keys train_report.json has always held (runs built before
    `DemoLMSpec` was passed whole read the same), and the label-set plant's only when there is one."""
    settings = asdict(spec)
    if spec.plant_label is None:
        del settings["plant_label"], settings["plant_label_value"]
    return {
        **settings,
        "max_position_embeddings": MAX_POSITION_EMBEDDINGS,
        "heldout_fraction": HELDOUT_FRACTION,
        "sample_prompt": sample_prompt,
        "sample_tokens": sample_tokens,
    }


def train_demo_lm(
    texts: Sequence[str],
    out_dir: Path,
    spec: DemoLMSpec,
    *,
    label_spans: Sequence[Sequence[tuple[int, int]]] | None = None,
    sample_prompt: str | None = None,
    sample_tokens: int = 120,
    n_threads: int | None = None,
    progress: bool = True,
) -> TrainReport:
    """Train the demo tokenizer and model on `texts` and save them as a Hugging Face directory.

    `spec` (`explorer.config.DemoLMSpec`) holds the model's sizes and the training settings. About 2% of
    the documents (`HELDOUT_FRACTION`, at least one) are held out, chosen by `seed`, for `heldout_loss`. The
    rest are packed (`compute_packed_tokens`) into rows of `context` tokens and sampled at random,
    `batch_size` rows a step, with AdamW and a warm-up + cosine learning rate. Training stops after
    `steps` steps or `time_budget_s` seconds, whichever comes first; the schedule follows whichever
    is further along, so a run cut by the clock still ends at a low learning rate.

    Writes `config.json`, `model.safetensors`, `generation_config.json`, `tokenizer.json` and
    `tokenizer_config.json` into `out_dir` (created if needed; the caller makes it atomic). Then loads
    that directory with `load_model` and generates the greedy sample: `sample_tokens` tokens after
    `sample_prompt` (default: `default_sample_prompt` of the held-out texts). `n_threads` sets torch's
    intra-op threads (default: one per core), `progress` shows a progress bar.

    With `spec.plant_weight` > 0 the model is trained with a planted backtracking feature: `plant_weight`
    times the mean squared difference between the projection of `plant_hook`'s activations (a
    transformer-lens hook name: `blocks.L.hook_mlp_out` or `blocks.L.hook_resid_post`) on
    `planted_direction(hidden_size, seed)` and a target is added to the loss: `plant_value` on the tokens
    of backtracking phrases (the labeller's spans, any group), `plant_value_before` (default
    `plant_value`) on the `plant_lead` tokens before each, 0 elsewhere. The report carries the direction
    and the final plant loss (docs/profiles.md).

    With `spec.plant_label` set (a label set's name, e.g. "tag:uncertainty_management") a second plant is
    trained the same way, with the same weight and hook, along `label_direction(hidden_size, seed)`
    (orthogonal to the first): target `plant_label_value` on every token that overlaps the label set's
    positive spans, 0 elsewhere. `label_spans` holds those spans per text (character (start, end) pairs,
    aligned with `texts`; the caller reads them from the run's label set); it is required then, and only
    then. The report carries this direction too (`label_direction`) and its final loss.

    With the defaults on 20,000 synthetic traces (`explorer.synthetic.generate_traces`) on a 2-core
    CPU it trains within its time budget to greedy samples with the trace layout (steps, `</think>`,
    `\\boxed{}`) but wrong arithmetic. Each recorded build's steps, time and losses: docs/results.md.
    """
    started = time.perf_counter()
    if not texts:
        raise ValueError("train_demo_lm needs at least one text")
    if spec.context > MAX_POSITION_EMBEDDINGS:
        raise ValueError(f"context {spec.context} exceeds max_position_embeddings {MAX_POSITION_EMBEDDINGS}")
    if spec.plant_weight < 0 or spec.plant_lead < 0:
        raise DemoLMSettingsError(
            f"plant_weight and plant_lead must not be negative, got {spec.plant_weight} and {spec.plant_lead}"
        )
    if spec.plant_weight > 0:
        check_plant_hook(spec.plant_hook, spec.n_layers)
    if spec.plant_label is not None and spec.plant_weight <= 0:
        raise DemoLMSettingsError(
            f"plant_label {spec.plant_label!r} needs plant_weight > 0 (the label-set plant shares its weight and hook)"
        )
    if (spec.plant_label is not None) != (label_spans is not None):
        raise DemoLMSettingsError(
            f"label_spans must be given exactly when plant_label is set (plant_label is {spec.plant_label!r})"
        )
    if label_spans is not None and len(label_spans) != len(texts):
        raise DemoLMSettingsError(f"label_spans holds {len(label_spans)} lists of spans for {len(texts)} texts")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    previous_threads = torch.get_num_threads()
    # One intra-op thread per core (18k tokens/s with 2 threads on 2 idle cores, 10k with 1). On a
    # machine other jobs are loading, fewer threads can be faster: `n_threads`.
    torch.set_num_threads(n_threads or max(1, os.cpu_count() or 1))
    try:
        torch.manual_seed(spec.seed)
        rng = np.random.default_rng(spec.seed)

        train_idx, heldout_idx = _split_documents(len(texts), HELDOUT_FRACTION, spec.seed)
        train_texts = [texts[i] for i in train_idx]
        heldout_texts = [texts[i] for i in heldout_idx]

        tokenizer = train_tokenizer(train_texts, spec.vocab_size, model_max_length=MAX_POSITION_EMBEDDINGS)
        train_label_spans = None if label_spans is None else [label_spans[i] for i in train_idx]
        train_stream, train_mask, train_label_mask = packed_stream(
            tokenizer, train_texts, phrase_mask=spec.plant_weight > 0, label_spans=train_label_spans
        )
        if len(train_stream) < spec.context + 1:
            raise ValueError(f"the training texts hold {len(train_stream)} tokens, fewer than one context of {spec.context}")
        train_rows_NT = compute_contexts(train_stream, spec.context)
        heldout_rows_NT = (
            compute_contexts(compute_packed_tokens(tokenizer, heldout_texts), spec.context)
            if heldout_texts
            else torch.empty(0, spec.context, dtype=torch.long)
        )

        config = demo_model_config(
            tokenizer,
            hidden_size=spec.hidden_size,
            n_layers=spec.n_layers,
            n_heads=spec.n_heads,
            n_kv_heads=spec.n_kv_heads,
            intermediate_size=spec.intermediate_size,
            max_position_embeddings=MAX_POSITION_EMBEDDINGS,
        )
        model = Qwen2ForCausalLM(config)
        model.train()
        n_params = sum(p.numel() for p in model.parameters())
        optimizer = _make_optimizer(model, spec.lr)
        plant = None
        if spec.plant_weight > 0:
            directions = [planted_direction(spec.hidden_size, spec.seed)]
            before = extend_before(train_mask, spec.plant_lead) - train_mask
            value_before = spec.plant_value if spec.plant_value_before is None else spec.plant_value_before
            targets = [spec.plant_value * train_mask + value_before * before]
            if train_label_mask is not None:
                directions.append(label_direction(spec.hidden_size, spec.seed))
                targets.append(spec.plant_label_value * train_label_mask)
            plant = _Plant(model, spec.plant_hook, torch.stack(directions))
            # [n_rows, context, K]: each plant's target per token
            train_target_NTK = compute_contexts(np.stack(targets, axis=-1).astype(np.float32), spec.context)
        plant_losses: list[float] = []
        label_plant_losses: list[float] = []

        loss_curve: list[tuple[int, float]] = []
        recent: list[float] = []
        log_every = max(1, spec.steps // 50)
        step, stopped_by = 0, "steps"
        train_started = time.perf_counter()
        bar = tqdm(
            total=spec.steps, desc="train demo LM", unit="step", disable=not progress, dynamic_ncols=True, mininterval=1.0
        )
        while step < spec.steps:
            elapsed = time.perf_counter() - train_started
            if elapsed >= spec.time_budget_s:
                stopped_by = "time_budget"
                break
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(max(step / spec.steps, elapsed / spec.time_budget_s), spec.lr)
            rows = torch.from_numpy(rng.integers(0, len(train_rows_NT), size=spec.batch_size))
            lm_loss = loss = _lm_loss(model, train_rows_NT[rows])
            if plant is not None:
                plant_loss_K = plant.losses(train_target_NTK[rows])
                plant_losses = (plant_losses + [plant_loss_K[0].item()])[-10:]
                if len(plant_loss_K) > 1:
                    label_plant_losses = (label_plant_losses + [plant_loss_K[1].item()])[-10:]
                loss = lm_loss + spec.plant_weight * plant_loss_K.sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            step += 1

            loss_value = lm_loss.item()
            recent = (recent + [loss_value])[-10:]
            if step % log_every == 0 or step == 1:
                loss_curve.append((step, round(loss_value, 4)))
            tokens_per_s = step * spec.batch_size * spec.context / max(time.perf_counter() - train_started, 1e-9)
            postfix = {"loss": f"{loss_value:.3f}", "tok_s": f"{tokens_per_s:,.0f}"}
            if plant_losses:
                postfix["plant"] = f"{plant_losses[-1]:.3f}"
            bar.set_postfix(postfix, refresh=False)
            bar.update(1)
        bar.close()
        train_seconds = time.perf_counter() - train_started
        if loss_curve and loss_curve[-1][0] != step and recent:
            loss_curve.append((step, round(recent[-1], 4)))

        heldout_loss = compute_heldout_loss(model, heldout_rows_NT, spec.batch_size)
        model.eval()
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        logger.info("saved the demo model (%d parameters) to %s", n_params, out_dir)
    finally:
        torch.set_num_threads(previous_threads)

    # A held-out problem: the sample shows generalisation, not recall.
    prompt = sample_prompt if sample_prompt is not None else default_sample_prompt(heldout_texts or train_texts)
    sample = generate_greedy_sample(out_dir, prompt, sample_tokens)

    return TrainReport(
        steps=step,
        tokens_seen=step * spec.batch_size * spec.context,
        seconds=round(time.perf_counter() - started, 2),
        train_seconds=round(train_seconds, 2),
        stopped_by=stopped_by,
        loss_curve=loss_curve,
        final_train_loss=round(float(np.mean(recent)), 4) if recent else float("nan"),
        heldout_loss=round(heldout_loss, 4),
        plant_loss=round(float(np.mean(plant_losses)), 4) if plant_losses else None,
        planted_direction=plant.directions_KD[0].tolist() if plant is not None else None,
        label_plant_loss=round(float(np.mean(label_plant_losses)), 4) if label_plant_losses else None,
        label_direction=plant.directions_KD[1].tolist() if label_plant_losses else None,
        n_params=n_params,
        n_vocab=len(tokenizer),
        n_train_docs=len(train_texts),
        n_heldout_docs=len(heldout_texts),
        n_train_tokens=int(len(train_stream)),
        sample_prompt=prompt,
        sample_text=sample,
        config=run_config(spec, sample_prompt, sample_tokens),
    )
