"""How good is an SAE? The training report, measured on held-out tokens, and the training curve.

Definitions (all over held-out text tokens; BOS/EOS/padding positions are left out, as in training):

- `l0`: mean number of active features (activation != 0) per token.
- `mse`: mean over tokens of the squared reconstruction error summed over dimensions, ||x - x_hat||^2
  (sae_lens's convention), in the hook's own units.
- `explained_variance`: 1 - E||x - x_hat||^2 / E||x - E[x]||^2, pooled over all tokens (sae_lens 6's
  definition; 1 is perfect, 0 is as good as predicting the mean, below 0 is worse).
- `frac_dead`: share of features that never fire on the held-out tokens.
- `frac_dense`: share of features that fire on more than `dense_threshold` of them (default 10%).
- `l0`, `frac_dead` and `frac_dense` can be measured on more tokens than the rest (`sparsity_contexts_NT`,
  `n_sparsity_tokens`): they need only a forward stopped at the hook and the SAE's encoder, where CE loss
  recovered needs three full forwards, and a rare feature needs many tokens to be seen firing.
- CE loss recovered: (L_zero - L_spliced) / (L_zero - L_clean), where L is the model's next-token loss
  averaged over positions whose input token is text; L_clean runs the model as it is, L_spliced
  replaces the hook's activations by the SAE's reconstruction, and L_zero by zeros, at text positions
  only. 1 means the SAE loses nothing the model uses, 0 means it is as bad as deleting the activation.

The training curve is captured while sae_lens trains: `TrainingCurveRecorder` wraps the training SAE's
`training_forward_pass` (the seam sae_lens itself uses for `torch.compile`) and keeps the losses and
L0 of every `every`-th step. Those are sae_lens's training-time numbers on that step's batch (special
tokens already filtered out), with losses in the normalised space the SAE trains in
(`normalize_activations`), so they compare across steps, not with the held-out report's `mse`.

Array names end in shape letters (`acts_BTF`: batch, tokens, features): docs/shapes.md.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Sequence

import torch
from tqdm.auto import tqdm

from explorer.sae_loading import stop_layer_for_hook

if TYPE_CHECKING:
    from sae_lens import SAE, TrainingSAE
    from transformer_lens import HookedTransformer

DEFAULT_DENSE_THRESHOLD = 0.1


# --- the report -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SAEReport:
    """An SAE's quality on held-out tokens. `to_dict()` is what training_report.json and the
    `sae_training_report` table hold."""

    n_tokens: int
    """Held-out text tokens measured (special tokens excluded)."""
    n_sparsity_tokens: int
    """Held-out text tokens `l0`, `frac_dead` and `frac_dense` were measured on (at least `n_tokens`)."""
    l0: float
    mse: float
    explained_variance: float
    frac_dead: float
    frac_dense: float
    dense_threshold: float
    ce_loss_clean: float
    ce_loss_spliced: float
    ce_loss_zero_ablated: float
    ce_loss_recovered: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ReconstructionMetrics(NamedTuple):
    """The activation-space half of the report (no model needed)."""

    n_tokens: int
    l0: float
    mse: float
    explained_variance: float
    frac_dead: float
    frac_dense: float


class ReconstructionAccumulator:
    """Sums over batches of (x, x_hat, feature activations), so the report never holds all tokens.

    Sums are float64 on the CPU: the total variance is a difference of two large, nearly equal numbers
    when activations have a large mean.
    """

    def __init__(self, d_sae: int):
        self.n_tokens = 0
        self.sum_l0 = 0.0
        self.sum_sq_error = 0.0
        self.sum_sq_norm = 0.0
        self.sum_x_D: torch.Tensor | None = None
        self.fire_count_F = torch.zeros(d_sae, dtype=torch.float64)

    @torch.no_grad()
    def add(self, x_ND: torch.Tensor, x_hat_ND: torch.Tensor, feature_acts_NF: torch.Tensor) -> None:
        # Reduce on the tensors' device (a GPU for the real model); only sums travel to the CPU.
        x_ND = x_ND.double()
        x_hat_ND = x_hat_ND.to(x_ND.device).double()
        fires_F = (feature_acts_NF != 0).sum(0)
        self.n_tokens += x_ND.shape[0]
        self.sum_l0 += float(fires_F.sum())
        self.sum_sq_error += float((x_ND - x_hat_ND).pow(2).sum())
        self.sum_sq_norm += float(x_ND.pow(2).sum())
        batch_sum_D = x_ND.sum(0).cpu()
        self.sum_x_D = batch_sum_D if self.sum_x_D is None else self.sum_x_D + batch_sum_D
        self.fire_count_F += fires_F.cpu().double()

    def compute(self, dense_threshold: float = DEFAULT_DENSE_THRESHOLD) -> ReconstructionMetrics:
        n = self.n_tokens
        if n == 0 or self.sum_x_D is None:
            nan = float("nan")
            return ReconstructionMetrics(0, nan, nan, nan, nan, nan)
        mse = self.sum_sq_error / n
        # Var = E||x||^2 - ||E x||^2, summed over dimensions.
        total_variance = self.sum_sq_norm / n - float((self.sum_x_D / n).pow(2).sum())
        if total_variance <= 1e-12:
            explained = 1.0 if mse <= 1e-12 else float("-inf")
        else:
            explained = 1.0 - mse / total_variance
        frequency_F = self.fire_count_F / n
        return ReconstructionMetrics(
            n_tokens=n,
            l0=self.sum_l0 / n,
            mse=mse,
            explained_variance=explained,
            frac_dead=float((self.fire_count_F == 0).double().mean()),
            frac_dense=float((frequency_F > dense_threshold).double().mean()),
        )


def compute_reconstruction_metrics(
    x_ND: torch.Tensor,
    x_hat_ND: torch.Tensor,
    feature_acts_NF: torch.Tensor,
    dense_threshold: float = DEFAULT_DENSE_THRESHOLD,
) -> ReconstructionMetrics:
    """The activation-space metrics of one set of tokens (see the module docstring)."""
    accumulator = ReconstructionAccumulator(feature_acts_NF.shape[-1])
    accumulator.add(x_ND, x_hat_ND, feature_acts_NF)
    return accumulator.compute(dense_threshold)


def compute_ce_loss_recovered(clean: float, spliced: float, zero_ablated: float) -> float:
    """(zero - spliced) / (zero - clean); NaN when ablating the hook does not change the loss."""
    gap = zero_ablated - clean
    if not math.isfinite(gap) or abs(gap) < 1e-9:
        return float("nan")
    return (zero_ablated - spliced) / gap


def _text_mask(tokens_BT: torch.Tensor, special_token_ids: Sequence[int]) -> torch.Tensor:
    if not special_token_ids:
        return torch.ones_like(tokens_BT, dtype=torch.bool)
    special = torch.tensor(list(special_token_ids), dtype=tokens_BT.dtype, device=tokens_BT.device)
    return ~torch.isin(tokens_BT, special)


class FiringCounts(NamedTuple):
    """How often each feature fired over `n_tokens` text tokens."""

    n_tokens: int
    fire_count_F: torch.Tensor
    """[d_sae] float64: tokens on which each feature was active."""

    def l0(self) -> float:
        return float(self.fire_count_F.sum()) / max(self.n_tokens, 1)

    def frac_dead(self) -> float:
        return float((self.fire_count_F == 0).double().mean())

    def frac_dense(self, dense_threshold: float = DEFAULT_DENSE_THRESHOLD) -> float:
        return float((self.fire_count_F / max(self.n_tokens, 1) > dense_threshold).double().mean())


@torch.no_grad()
def compute_feature_firing(
    model: HookedTransformer,
    sae: SAE,
    contexts_NT: torch.Tensor,
    hook_name: str,
    *,
    special_token_ids: Sequence[int] = (),
    batch_size: int = 8,
    progress: bool = True,
) -> FiringCounts:
    """Count, per feature, the text tokens of `contexts_NT` it fires on. The forward stops after the
    hook's block, so this costs a fraction of the report's three full forwards per token."""
    head_index = sae.cfg.metadata.hook_head_index
    fire_count_F = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
    n_tokens = 0
    device = model.cfg.device
    batches = range(0, len(contexts_NT), batch_size)
    for start in tqdm(batches, desc="SAE sparsity", unit="batch", disable=not progress, leave=False):
        tokens_BT = contexts_NT[start : start + batch_size].to(device)
        mask_BT = _text_mask(tokens_BT, special_token_ids)
        _, cache = model.run_with_cache(tokens_BT, names_filter=[hook_name], stop_at_layer=stop_layer_for_hook(hook_name))
        acts = cache[hook_name]  # [B, T, d] or [B, T, n_heads, d_head]
        selected = acts[:, :, head_index] if head_index is not None else acts
        feature_acts_NF = sae.encode(selected[mask_BT].to(sae.device))
        fire_count_F += (feature_acts_NF != 0).sum(0).cpu().double()
        n_tokens += int(mask_BT.sum())
    return FiringCounts(n_tokens, fire_count_F)


@torch.no_grad()
def compute_sae_report(
    model: HookedTransformer,
    sae: SAE,
    contexts_NT: torch.Tensor,
    hook_name: str,
    *,
    special_token_ids: Sequence[int] = (),
    batch_size: int = 8,
    dense_threshold: float = DEFAULT_DENSE_THRESHOLD,
    progress: bool = True,
    sparsity_contexts_NT: torch.Tensor | None = None,
) -> SAEReport:
    """Measure `sae` at `hook_name` of `model` on the token rows `contexts_NT` ([n_rows, n_ctx]).

    Three forward passes per batch: clean (which also captures the activations), spliced and
    zero-ablated. Only positions whose token is not in `special_token_ids` are spliced, ablated and
    counted, so BOS/EOS never enter the report, as they never entered training. With
    `sparsity_contexts_NT` (more rows, usually a superset), L0 and the dead and dense shares are
    measured on those instead (`compute_feature_firing`).
    """
    head_index = sae.cfg.metadata.hook_head_index
    accumulator = ReconstructionAccumulator(sae.cfg.d_sae)
    loss_sums = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
    n_loss_positions = 0
    device = model.cfg.device
    was_training = sae.training
    sae.eval()

    batches = range(0, len(contexts_NT), batch_size)
    for start in tqdm(batches, desc="SAE report", unit="batch", disable=not progress, leave=False):
        tokens_BT = contexts_NT[start : start + batch_size].to(device)
        mask_BT = _text_mask(tokens_BT, special_token_ids)
        # loss at position t predicts token t + 1: count it where token t is text.
        loss_mask_BT = mask_BT[:, :-1]
        captured: dict[str, torch.Tensor] = {}

        def splice(acts: torch.Tensor, hook: Any, replace: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
            selected = acts[:, :, head_index] if head_index is not None else acts
            new = selected.clone()
            new[mask_BT] = replace(selected[mask_BT]).to(new.dtype)
            if head_index is None:
                return new
            acts = acts.clone()
            acts[:, :, head_index] = new
            return acts

        def reconstruct(x_N: torch.Tensor) -> torch.Tensor:
            feature_acts_NF = sae.encode(x_N.to(sae.device))
            x_hat = sae.decode(feature_acts_NF).to(x_N.device)
            captured.update(x=x_N.reshape(len(x_N), -1), x_hat=x_hat.reshape(len(x_N), -1), f=feature_acts_NF)
            return x_hat

        clean_BT = model(tokens_BT, return_type="loss", loss_per_token=True)  # [B, T-1]
        spliced_BT = model.run_with_hooks(
            tokens_BT,
            return_type="loss",
            loss_per_token=True,
            fwd_hooks=[(hook_name, lambda acts, hook: splice(acts, hook, reconstruct))],
        )
        zero_BT = model.run_with_hooks(
            tokens_BT,
            return_type="loss",
            loss_per_token=True,
            fwd_hooks=[(hook_name, lambda acts, hook: splice(acts, hook, torch.zeros_like))],
        )
        if "x" in captured:
            accumulator.add(captured["x"], captured["x_hat"], captured["f"])
        for name, loss_BT in (("clean", clean_BT), ("spliced", spliced_BT), ("zero", zero_BT)):
            loss_sums[name] += float(loss_BT[loss_mask_BT].double().sum())
        n_loss_positions += int(loss_mask_BT.sum())

    metrics = accumulator.compute(dense_threshold)
    n_sparsity_tokens, l0, frac_dead, frac_dense = metrics.n_tokens, metrics.l0, metrics.frac_dead, metrics.frac_dense
    if sparsity_contexts_NT is not None:
        firing = compute_feature_firing(
            model, sae, sparsity_contexts_NT, hook_name,
            special_token_ids=special_token_ids, batch_size=batch_size, progress=progress,
        )
        n_sparsity_tokens, l0 = firing.n_tokens, firing.l0()
        frac_dead, frac_dense = firing.frac_dead(), firing.frac_dense(dense_threshold)
    sae.train(was_training)
    denominator = max(n_loss_positions, 1)
    clean, spliced, zero = (loss_sums[name] / denominator for name in ("clean", "spliced", "zero"))
    return SAEReport(
        n_tokens=metrics.n_tokens,
        n_sparsity_tokens=n_sparsity_tokens,
        l0=l0,
        mse=metrics.mse,
        explained_variance=metrics.explained_variance,
        frac_dead=frac_dead,
        frac_dense=frac_dense,
        dense_threshold=dense_threshold,
        ce_loss_clean=clean,
        ce_loss_spliced=spliced,
        ce_loss_zero_ablated=zero,
        ce_loss_recovered=compute_ce_loss_recovered(clean, spliced, zero),
    )


# --- the training curve ---------------------------------------------------------------------------


class TrainingCurvePoint(NamedTuple):
    """One logged training step (sae_lens's training-time numbers, on that step's batch)."""

    step: int
    """1-based optimizer step."""
    n_tokens: int
    """Training tokens seen up to and including this step."""
    loss: float
    """Total loss: MSE plus the sparsity (L1) or auxiliary (TopK) loss."""
    mse_loss: float
    """sae_lens's MSE loss in its normalised training space (sum over dimensions, mean over tokens)."""
    sparsity_loss: float
    """The L1 penalty (standard) or the dead-feature auxiliary loss (TopK)."""
    l0: float
    explained_variance: float


class TrainingCurveRecorder:
    """Records a `TrainingCurvePoint` every `every` steps (and the first and last) during sae_lens training.

    `attach(sae)` wraps the training SAE's `training_forward_pass` on the instance: sae_lens's trainer
    calls it once per step with the step number, and gets its output back untouched.
    """

    def __init__(self, every: int, total_steps: int):
        self.every = max(1, every)
        self.total_steps = total_steps
        self.points: list[TrainingCurvePoint] = []

    def attach(self, sae: TrainingSAE) -> None:
        forward = sae.training_forward_pass

        def recording_forward_pass(step_input: Any) -> Any:
            output = forward(step_input)
            step = step_input.n_training_steps + 1
            if step == 1 or step % self.every == 0 or step == self.total_steps:
                self.points.append(_curve_point(step, output))
            return output

        sae.training_forward_pass = recording_forward_pass  # type: ignore[method-assign]


@torch.no_grad()
def _curve_point(step: int, output: Any) -> TrainingCurvePoint:
    sae_in_BD = output.sae_in.detach().float()
    sae_out_BD = output.sae_out.detach().float()
    feature_acts = output.feature_acts.detach()
    if feature_acts.is_sparse:
        feature_acts = feature_acts.to_dense()
    residual = (sae_out_BD - sae_in_BD).pow(2).sum(-1).mean()
    variance = (sae_in_BD - sae_in_BD.mean(0)).pow(2).sum(-1).mean()
    losses = {name: float(value.detach()) for name, value in output.losses.items()}
    mse_loss = losses.pop("mse_loss", float("nan"))
    return TrainingCurvePoint(
        step=step,
        n_tokens=step * sae_in_BD.shape[0],
        loss=float(output.loss.detach()),
        mse_loss=mse_loss,
        sparsity_loss=sum(losses.values()) if losses else 0.0,
        l0=float((feature_acts != 0).float().sum(-1).mean()),
        explained_variance=float(1 - residual / variance) if variance > 0 else float("nan"),
    )
