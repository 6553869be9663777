"""Train an SAE with sae_lens 6: the recipe mapped onto its config, and the activations it trains on.

The activation source (what the SAE sees):

- documents are split once into training and held-out documents by a hash of their `doc_id`
  (`is_heldout`), so the split never moves when the corpus is re-ordered or grows;
- each document is tokenized without special tokens, then documents are packed back to back into rows
  of `context_size` tokens by sae_lens's own `concat_and_batch_sequences`, as the recipe's `prepend_bos`
  says: the notebook's packing (False) puts nothing between documents, so a row starts wherever the last
  one stopped; with True every row starts with BOS and each document is followed by EOS and separated by
  BOS, so the model sees `BOS text EOS BOS text ...`. No row holds padding;
- the rows go to sae_lens as a pretokenized dataset (`override_dataset`, an `input_ids` column);
- `exclude_special_tokens` drops the activations of BOS, EOS, padding and the tokenizer's other special
  tokens before the SAE sees them (BOS activations are huge attention-sink outliers in Qwen models).
  `<think>`/`</think>` are ordinary text tokens in DeepSeek-R1's tokenizer and stay in.

The recipe -> `LanguageModelSAERunnerConfig` mapping is `build_runner_config`; docs/sae.md lists it field
by field, with what sae_lens 6 has no exact equivalent for.

Array names end in shape letters (`acts_BTF`: batch, tokens, features): docs/shapes.md.
"""

from __future__ import annotations

import hashlib
import logging
import math
import signal
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, NamedTuple, Sequence

import numpy as np
import torch

from explorer.config import SAERecipe
from explorer.sae_loading import LoadedSAE, load_sae
from explorer.sae_metrics import TrainingCurvePoint, TrainingCurveRecorder

if TYPE_CHECKING:
    from datasets import Dataset
    from sae_lens import LanguageModelSAERunnerConfig, TrainingSAE
    from transformer_lens import HookedTransformer
    from transformers import PreTrainedTokenizerBase

HELDOUT_FRACTION = 0.02
"""Share of documents kept out of SAE training, for the report."""
CHECKPOINTS_DIR = "checkpoints"
"""Inside an SAE's output folder: `checkpoints/<run id>/<tokens>/`, the layout the notebook loaded."""
WANDB_PROJECT = "backtracking-explorer"
# Margin over the tokens training consumes, for the special tokens filtered out of each row.
_TOKEN_MARGIN = 1.1


# --- the activation source ------------------------------------------------------------------------


class ActivationSource(NamedTuple):
    """Token rows an SAE trains and is measured on, packed as the recipe's `prepend_bos` says; none
    holds padding."""

    train_NT: torch.Tensor
    """[n_train_rows, context_size] training rows, shuffled by the recipe's seed."""
    heldout_NT: torch.Tensor
    """[n_heldout_rows, context_size] rows packed from the held-out documents only."""
    special_token_ids: tuple[int, ...]
    """Token ids whose activations are excluded from training and from the report."""
    n_train_docs: int
    n_heldout_docs: int


def is_heldout(doc_id: str, fraction: float = HELDOUT_FRACTION) -> bool:
    """Whether a document is held out of SAE training: a stable hash of its id, not its position."""
    digest = hashlib.sha256(str(doc_id).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def special_token_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int, ...]:
    """BOS, EOS, padding and every other token the tokenizer flags as special, sorted."""
    from sae_lens.util import get_special_token_ids

    ids = set(get_special_token_ids(tokenizer)) | set(tokenizer.all_special_ids)
    return tuple(sorted(i for i in ids if i is not None))


def _tokenize(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[list[int]]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # The Rust tokenizer directly: batched, and no "longer than model_max_length" warnings for
        # documents that packing cuts anyway.
        return [encoding.ids for encoding in backend.encode_batch(list(texts), add_special_tokens=False)]
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def iter_packed_contexts(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    context_size: int,
    chunk: int = 512,
    *,
    prepend_bos: bool = True,
) -> Iterator[torch.Tensor]:
    """Rows of `context_size` tokens.

    `prepend_bos=True`: `BOS text EOS BOS text EOS ...`, each row starting with BOS. False, the notebook's
    packing (sae_lens 3-4 with `prepend_bos=False`): `text text ...`, no special token at all, so a row
    starts mid-document. Documents are tokenized `chunk` at a time, so a caller that needs a few rows
    from a huge corpus stops early. The ragged tail is dropped.
    """
    from sae_lens.tokenization_and_batching import concat_and_batch_sequences

    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if prepend_bos and bos is None:
        raise ValueError("the tokenizer has no BOS token; rows must start with one")
    end = [eos] if prepend_bos and eos is not None else []

    def documents() -> Iterator[torch.Tensor]:
        for start in range(0, len(texts), chunk):
            for ids in _tokenize(tokenizer, texts[start : start + chunk]):
                if ids:
                    yield torch.tensor(ids + end, dtype=torch.long)

    yield from concat_and_batch_sequences(
        tokens_iterator=documents(),
        context_size=context_size,
        begin_batch_token_id=bos if prepend_bos else None,
        sequence_separator_token_id=bos if prepend_bos else None,
    )


def compute_packed_contexts(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    context_size: int,
    max_rows: int | None = None,
    *,
    prepend_bos: bool = True,
) -> torch.Tensor:
    """`iter_packed_contexts` as one [n_rows, context_size] tensor (at most `max_rows` rows)."""
    rows = []
    for row in iter_packed_contexts(tokenizer, texts, context_size, prepend_bos=prepend_bos):
        rows.append(row)
        if max_rows is not None and len(rows) >= max_rows:
            break
    if not rows:
        return torch.empty(0, context_size, dtype=torch.long)
    return torch.stack(rows)


def build_activation_source(
    tokenizer: PreTrainedTokenizerBase,
    doc_ids: Sequence[str],
    texts: Sequence[str],
    context_size: int,
    *,
    max_train_tokens: int | None = None,
    max_heldout_tokens: int | None = None,
    heldout_fraction: float = HELDOUT_FRACTION,
    seed: int = 42,
    prepend_bos: bool = True,
) -> ActivationSource:
    """Split the documents, shuffle the training ones by `seed`, and pack both sides into rows.

    `max_*_tokens` stop tokenizing once enough rows exist (a 200k-trace corpus needs only a few
    thousand traces for 20M training tokens).
    """
    if len(doc_ids) != len(texts):
        raise ValueError(f"{len(doc_ids)} doc ids but {len(texts)} texts")
    heldout = np.fromiter((is_heldout(d, heldout_fraction) for d in doc_ids), dtype=bool, count=len(doc_ids))
    order = np.random.default_rng(seed).permutation(len(texts))
    train_texts = [texts[i] for i in order if not heldout[i]]
    heldout_texts = [texts[i] for i in np.flatnonzero(heldout)]

    train_NT = compute_packed_contexts(
        tokenizer, train_texts, context_size, _rows_for(max_train_tokens, context_size), prepend_bos=prepend_bos
    )
    heldout_NT = compute_packed_contexts(
        tokenizer, heldout_texts, context_size, _rows_for(max_heldout_tokens, context_size), prepend_bos=prepend_bos
    )
    if len(train_NT) == 0:
        raise ValueError(f"the training documents hold fewer tokens than one context of {context_size}")
    return ActivationSource(
        train_NT=train_NT,
        heldout_NT=heldout_NT,
        special_token_ids=special_token_ids(tokenizer),
        n_train_docs=len(train_texts),
        n_heldout_docs=len(heldout_texts),
    )


def build_heldout_contexts(
    tokenizer: PreTrainedTokenizerBase,
    doc_ids: Sequence[str],
    texts: Sequence[str],
    context_size: int,
    *,
    max_tokens: int | None = None,
    heldout_fraction: float = HELDOUT_FRACTION,
    prepend_bos: bool = True,
) -> tuple[torch.Tensor, int]:
    """The held-out rows alone (for measuring an SAE trained elsewhere), and how many documents fed them."""
    heldout_texts = [text for doc_id, text in zip(doc_ids, texts) if is_heldout(doc_id, heldout_fraction)]
    rows_NT = compute_packed_contexts(
        tokenizer, heldout_texts, context_size, _rows_for(max_tokens, context_size), prepend_bos=prepend_bos
    )
    return rows_NT, len(heldout_texts)


def _rows_for(n_tokens: int | None, context_size: int) -> int | None:
    return None if n_tokens is None else max(1, math.ceil(n_tokens * _TOKEN_MARGIN / context_size))


def as_pretokenized_dataset(contexts_NT: torch.Tensor) -> Dataset:
    """The rows as the pretokenized dataset sae_lens reads (`input_ids`, one row per context)."""
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": contexts_NT.numpy()})


# --- recipe -> sae_lens config --------------------------------------------------------------------

NOTEBOOK_DECODER_INIT_NORM = 0.1
"""The norm every decoder row starts with (sae_lens 3-4's heuristic and sae_lens 6's `decoder_init_norm`)."""


def check_sae_lens_6_can_train(recipe: SAERecipe) -> None:
    """Refuse, before any work, a recipe setting that sae_lens 6 has no equivalent for."""
    unsupported = {
        "scale_sparsity_penalty_by_decoder_norm=False": not recipe.scale_sparsity_penalty_by_decoder_norm,
        "init_encoder_as_decoder_transpose=False": not recipe.init_encoder_as_decoder_transpose,
        "normalize_sae_decoder=True": recipe.normalize_sae_decoder,
        f"b_dec_init_method={recipe.b_dec_init_method!r}": recipe.b_dec_init_method != "zeros",
        f"mse_loss_normalization={recipe.mse_loss_normalization!r}": recipe.mse_loss_normalization is not None,
        "use_ghost_grads=True": recipe.use_ghost_grads,
    }
    refused = [setting for setting, is_set in unsupported.items() if is_set]
    if refused:
        raise ValueError(
            f"sae_lens 6 has no equivalent for {', '.join(refused)} (docs/sae.md lists what it does instead)"
        )


@torch.no_grad()
def apply_notebook_decoder_init(sae: TrainingSAE, seed: int) -> None:
    """Start `sae` as the notebook's sae_lens 3-4 did with `decoder_heuristic_init=True` and
    `init_encoder_as_decoder_transpose=True`: decoder entries uniform in [0, 1), each row scaled to norm
    0.1, the encoder its transpose. (sae_lens 6 draws symmetric kaiming-uniform entries instead.)"""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    W_dec = torch.rand(sae.W_dec.shape, generator=generator, dtype=torch.float32)  # [d_sae, d_in]
    W_dec *= NOTEBOOK_DECODER_INIT_NORM / W_dec.norm(dim=-1, keepdim=True)
    sae.W_dec.data.copy_(W_dec.to(sae.W_dec.dtype))
    sae.W_enc.data.copy_(sae.W_dec.data.T)


def build_runner_config(
    recipe: SAERecipe,
    *,
    hook_name: str,
    d_in: int,
    model_name: str,
    output_path: Path | str | None,
    special_token_ids: Sequence[int] | bool = True,
    device: str = "cpu",
    dataset_path: str = "",
    wandb: bool = False,
    run_name: str | None = None,
) -> LanguageModelSAERunnerConfig:
    """The sae_lens 6 runner config for `recipe` (docs/sae.md maps it field by field).

    Builds no model: `d_in` is the hook's width. Checkpoints go to `<output_path>/checkpoints/<run id>/
    <tokens>/`; with `output_path=None` nothing is written (a dry config).
    """
    from sae_lens import (
        LanguageModelSAERunnerConfig,
        LoggingConfig,
        MatryoshkaBatchTopKTrainingSAEConfig,
        StandardTrainingSAEConfig,
        TopKTrainingSAEConfig,
    )

    check_sae_lens_6_can_train(recipe)
    steps = recipe.training_steps
    d_sae = d_in * recipe.expansion_factor
    common = {
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": recipe.dtype,
        "device": device,
        "normalize_activations": recipe.normalize_activations,
        "apply_b_dec_to_input": recipe.apply_b_dec_to_input,
        # Both starts scale each decoder row to norm 0.1 and the encoder to its transpose; with
        # `decoder_heuristic_init` train_sae then redraws the entries as the notebook's sae_lens did.
        "decoder_init_norm": NOTEBOOK_DECODER_INIT_NORM,
    }
    if recipe.architecture == "standard":
        sae_cfg: Any = StandardTrainingSAEConfig(
            **common,
            l1_coefficient=recipe.l1_coefficient,
            lp_norm=recipe.lp_norm,
            l1_warm_up_steps=round(recipe.l1_warm_up_fraction * steps),
        )
    elif recipe.architecture == "topk":
        if recipe.k is None:
            raise ValueError("a topk recipe needs k (active features per token)")
        sae_cfg = TopKTrainingSAEConfig(**common, k=recipe.k)
    elif recipe.architecture == "matryoshka_batchtopk":
        widths = list(recipe.matryoshka_widths)
        if recipe.k is None or not widths:
            raise ValueError("a matryoshka_batchtopk recipe needs k and matryoshka_widths")
        if widths[-1] != d_sae or any(a >= b for a, b in zip(widths, widths[1:])):
            raise ValueError(
                f"matryoshka_widths must increase and end at the dictionary size {d_sae} "
                f"(d_in {d_in} x expansion {recipe.expansion_factor}), got {widths}"
            )
        # Saved as a JumpReLU SAE whose threshold is the batch top-k threshold learnt in training.
        sae_cfg = MatryoshkaBatchTopKTrainingSAEConfig(**common, k=recipe.k, matryoshka_widths=widths)
    else:
        raise ValueError(
            f"unknown SAE architecture {recipe.architecture!r}; use 'standard', 'topk' or 'matryoshka_batchtopk'"
        )

    exclude = list(special_token_ids) if not isinstance(special_token_ids, bool) else special_token_ids
    return LanguageModelSAERunnerConfig(
        sae=sae_cfg,
        model_name=model_name,
        model_class_name="HookedTransformer",
        # The model comes from explorer.model_loading (override_model), processed as the notebook did.
        model_from_pretrained_kwargs={},
        hook_name=hook_name,
        dataset_path=dataset_path,
        streaming=False,
        is_dataset_tokenized=True,
        context_size=recipe.context_size,
        # Recorded in the SAE's metadata; the rows come packed by `iter_packed_contexts` with the same value.
        prepend_bos=recipe.prepend_bos,
        # sae_lens refuses a shuffling buffer smaller than one training batch.
        n_batches_in_buffer=max(
            recipe.n_batches_in_buffer, math.ceil(2 * recipe.train_batch_size_tokens / recipe.context_size)
        ),
        store_batch_size_prompts=recipe.store_batch_size_prompts,
        training_tokens=recipe.training_tokens,
        train_batch_size_tokens=recipe.train_batch_size_tokens,
        device=device,
        seed=recipe.seed,
        dtype=recipe.dtype,
        lr=recipe.lr,
        adam_beta1=recipe.adam_beta1,
        adam_beta2=recipe.adam_beta2,
        lr_scheduler_name=recipe.lr_scheduler_name,
        lr_warm_up_steps=round(recipe.lr_warm_up_fraction * steps),
        lr_decay_steps=round(recipe.lr_decay_fraction * steps),
        dead_feature_window=recipe.dead_feature_window,
        feature_sampling_window=recipe.feature_sampling_window,
        dead_feature_threshold=recipe.dead_feature_threshold,
        n_batches_for_norm_estimate=recipe.n_batches_for_norm_estimate,
        exclude_special_tokens=exclude,
        logger=LoggingConfig(
            log_to_wandb=wandb,
            wandb_project=WANDB_PROJECT,
            run_name=run_name,
            wandb_log_frequency=recipe.wandb_log_frequency,
            eval_every_n_wandb_logs=recipe.eval_every_n_wandb_logs,
        ),
        n_checkpoints=recipe.n_checkpoints,
        # sae_lens <= 5 (the notebook's) always wrote a `final_<tokens>` checkpoint next to the others.
        save_final_checkpoint=recipe.n_checkpoints > 0,
        checkpoint_path=str(Path(output_path) / CHECKPOINTS_DIR) if output_path is not None else None,
        output_path=str(output_path) if output_path is not None else None,
        verbose=False,
    )


# --- training -------------------------------------------------------------------------------------


class TrainedSAE(NamedTuple):
    """What `train_sae` produced: the SAE as downstream code will load it, and how training went."""

    loaded: LoadedSAE
    trained_sae: TrainingSAE
    """The SAE in memory as training left it (normalisation folded in): `loaded` must match it."""
    curve: list[TrainingCurvePoint]
    train_seconds: float
    """Wall time of sae_lens's training run (norm estimate, training, saving)."""
    training_tokens: int
    checkpoint_dirs: list[Path]
    """`<out_dir>/checkpoints/<run id>/<tokens>/`, oldest first."""
    runner_config: dict[str, Any]


def train_sae(
    model: HookedTransformer,
    recipe: SAERecipe,
    source: ActivationSource,
    out_dir: Path,
    *,
    hook_name: str,
    d_in: int,
    model_name: str,
    dataset_path: str = "",
    wandb: bool = False,
    run_name: str | None = None,
    curve_every: int | None = None,
) -> TrainedSAE:
    """Train an SAE on `source.train_NT` at `hook_name` with sae_lens and write it to `out_dir`.

    `out_dir` receives sae_lens's output (cfg.json, sae_weights.safetensors, sparsity.safetensors,
    runner_cfg.json) and `checkpoints/`. The curve keeps every `curve_every`-th step (default: about
    100 points).
    """
    from sae_lens import LanguageModelSAETrainingRunner
    from sae_lens.training._interruption import InterruptedException

    out_dir = Path(out_dir)
    cfg = build_runner_config(
        recipe,
        hook_name=hook_name,
        d_in=d_in,
        model_name=model_name,
        output_path=out_dir,
        special_token_ids=source.special_token_ids,
        device=str(model.cfg.device),
        dataset_path=dataset_path,
        wandb=wandb,
        run_name=run_name,
    )
    total_steps = cfg.total_training_steps
    recorder = TrainingCurveRecorder(curve_every or max(1, total_steps // 100), total_steps)
    dataset = as_pretokenized_dataset(source.train_NT)

    torch.manual_seed(recipe.seed)  # sae_lens records the seed but does not seed anything itself
    started = time.perf_counter()
    previous_handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    # sae_lens logs that overriding its model and dataset is not reproducible from its config alone; ours
    # is, from the stage manifest.
    sae_lens_logger = logging.getLogger("sae_lens")
    previous_level = sae_lens_logger.level
    try:
        with warnings.catch_warnings():
            # sae_lens compares dataset *rows* with training *tokens* and warns about epochs that do not
            # happen.
            warnings.filterwarnings("ignore", message=".*fewer samples.*")
            # sae_lens re-wraps each pretokenized row (already a tensor) in torch.tensor().
            warnings.filterwarnings("ignore", message=".*To copy construct from a tensor.*")
            sae_lens_logger.setLevel(logging.ERROR)
            runner = LanguageModelSAETrainingRunner(cfg, override_dataset=dataset, override_model=model)
            if recipe.decoder_heuristic_init:
                apply_notebook_decoder_init(runner.sae, seed=recipe.seed)
            recorder.attach(runner.sae)
            trained_sae = runner.run()
    except InterruptedException:
        # sae_lens turns Ctrl-C into its own exception (after saving a checkpoint); callers expect Ctrl-C.
        raise KeyboardInterrupt from None
    finally:
        sae_lens_logger.setLevel(previous_level)
        # The runner installs SIGINT/SIGTERM handlers for its own checkpoint-on-interrupt and leaves
        # them in place; put the caller's back so Ctrl-C means KeyboardInterrupt again.
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
    train_seconds = time.perf_counter() - started

    checkpoints_root = out_dir / CHECKPOINTS_DIR
    checkpoint_dirs = sorted(
        (p for p in checkpoints_root.glob("*/*") if p.is_dir()), key=lambda p: (p.parent.name, _token_count(p))
    )
    return TrainedSAE(
        loaded=load_sae(out_dir, device=str(model.cfg.device)),
        trained_sae=trained_sae,
        curve=recorder.points,
        train_seconds=train_seconds,
        training_tokens=cfg.training_tokens,
        checkpoint_dirs=checkpoint_dirs,
        runner_config=cfg.to_dict(),
    )


def _token_count(checkpoint_dir: Path) -> int:
    digits = checkpoint_dir.name.removeprefix("final_")
    return int(digits) if digits.isdigit() else 0
