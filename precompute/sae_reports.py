"""The SAE report's bookkeeping, shared by stage `train-sae` and the `sae-report` command: measure an SAE
on the run's held-out rows, build its `sae_training_report` row, print it, and write and read it back as
`training_report.json`.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from explorer.config import ReportSpec
from explorer.database import SAETrainingReportRow, utc_now
from explorer.sae_metrics import SAEReport, TrainingCurvePoint, compute_sae_report

if TYPE_CHECKING:
    import torch
    from sae_lens import SAE, HookedSAETransformer

    from explorer.sae_loading import LoadedSAE

EVAL_BATCH_ROWS = 8
"""Held-out rows per forward pass while measuring."""


def report_row(
    sae_id: str,
    loaded: LoadedSAE,
    hook_name: str,
    report: SAEReport,
    *,
    model_name: str,
    source: str,
    source_kind: str,
    training_tokens: int | None = None,
    train_seconds: float | None = None,
) -> SAETrainingReportRow:
    return SAETrainingReportRow(
        sae_id=sae_id,
        hook_name=hook_name,
        architecture=loaded.architecture,
        d_in=loaded.d_in,
        d_sae=loaded.d_sae,
        k=loaded.k,
        model_name=model_name,
        source=source,
        source_kind=source_kind,
        training_tokens=training_tokens,
        train_seconds=train_seconds,
        **report.to_dict(),
        measured_at=utc_now(),
    )


def training_report_json(
    row: SAETrainingReportRow, curve: list[TrainingCurvePoint], notes: tuple[str, ...] = (), **extra: Any
) -> str:
    """training_report.json: the DuckDB row, the curve and anything else worth keeping, as JSON."""
    payload = {
        **row._asdict(),
        "measured_at": row.measured_at.isoformat(),
        "curve": [point._asdict() for point in curve],
        "notes": list(notes),
        **extra,
    }
    return json.dumps(payload, indent=2, default=str) + "\n"


def row_from_training_report(path: Path) -> tuple[SAETrainingReportRow, list[TrainingCurvePoint]]:
    """Read a training_report.json back into the DuckDB row and curve it was written from."""
    data = json.loads(Path(path).read_text())
    data.setdefault("n_sparsity_tokens", data["n_tokens"])  # written before sparsity had its own count
    values = {name: data[name] for name in SAETrainingReportRow._fields}
    values["measured_at"] = datetime.fromisoformat(data["measured_at"])
    curve = [TrainingCurvePoint(**point) for point in data.get("curve", [])]
    return SAETrainingReportRow(**values), curve


def heldout_tokens_needed(spec: ReportSpec) -> int:
    """Held-out tokens the report reads: its CE rows are the first of its sparsity rows, or the reverse."""
    return max(spec.n_tokens, spec.n_sparsity_tokens)


def measure_sae(
    model: HookedSAETransformer,
    sae: SAE,
    hook_name: str,
    heldout_NT: torch.Tensor,
    special_token_ids: tuple[int, ...],
    spec: ReportSpec,
) -> SAEReport:
    """The SAE report of `spec` on the held-out rows: CE loss recovered, MSE and explained variance on the
    first rows holding `spec.n_tokens` tokens, sparsity on the first holding `spec.n_sparsity_tokens`."""

    def first_rows(n_tokens: int) -> torch.Tensor:
        return heldout_NT[: max(1, -(-n_tokens // heldout_NT.shape[1]))]

    return compute_sae_report(
        model,
        sae,
        first_rows(spec.n_tokens),
        hook_name,
        special_token_ids=special_token_ids,
        batch_size=EVAL_BATCH_ROWS,
        sparsity_contexts_NT=first_rows(spec.n_sparsity_tokens),
    )


def print_report(sae_id: str, row: SAETrainingReportRow) -> None:
    print(
        f"  {sae_id}: MSE {row.mse:.4g}, explained variance {row.explained_variance:.3f}, CE loss recovered "
        f"{row.ce_loss_recovered:.3f} (clean {row.ce_loss_clean:.3f} / spliced {row.ce_loss_spliced:.3f} / "
        f"zero-ablated {row.ce_loss_zero_ablated:.3f}) on {row.n_tokens:,} held-out tokens; L0 {row.l0:.1f}, "
        f"dead {row.frac_dead:.1%}, dense {row.frac_dense:.1%} on {row.n_sparsity_tokens:,}",
        flush=True,
    )
