"""On-demand SAE reports: measure any SAE on a run's held-out tokens and record it with the run.

`run_sae_report(profile, run_dir)` re-measures every SAE already in `runs/<run>/saes/`.
`run_sae_report(profile, run_dir, sae=SOURCE)` brings an SAE trained elsewhere into the run: it loads
SOURCE (a sae_lens output folder, a checkpoint folder `<checkpoints>/<run id>/<tokens>/`, or
`<release>:<sae id>`), checks its hook and `d_in` against the run's model, saves it as
`saes/<sae_id>/` in sae_lens's format (so everything downstream loads every SAE the same way), measures
it and writes its report to `training_report.json` and the run's DuckDB file.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from explorer import artifacts
from explorer.config import Profile
from explorer.database import write_sae_training_report
from explorer.model_loading import load_run_model, resolve_device
from explorer.runs import RunFolderError, database_path, list_sae_ids, read_documents, sae_dir
from explorer.sae_loading import LoadedSAE, check_sae_fits_model, default_sae_id, load_sae, validate_sae_id
from explorer.sae_metrics import TrainingCurvePoint
from explorer.sae_training import build_heldout_contexts, special_token_ids
from precompute import sae_reports
from precompute.atomic import atomic_dir, write_text_atomic
from precompute.stages import model_identity, print_config, provenance, write_manifest

if TYPE_CHECKING:
    import torch
    from sae_lens import HookedSAETransformer

STAGE = "import-sae"
SOURCE_FILE = "source.json"
"""In an imported SAE's folder: where it came from and what the loader did."""


def run_sae_report(
    profile: Profile,
    run_dir: Path,
    *,
    sae: str | None = None,
    sae_id: str | None = None,
    hook: str | None = None,
    force: bool = False,
) -> list[str]:
    """Measure SAEs on the run's held-out tokens and record the reports; return their ids.

    Without `sae`: every SAE in `saes/`. With `sae`: that SAE, imported as `saes/<sae_id>/` (default
    id: `<hook>-<architecture>[k]-<d_sae>`); `hook` names the hook it must fit (default: its own).
    An existing folder of that id is replaced only with `force`.
    """
    run_dir = Path(run_dir)
    if sae is None:
        ids = list_sae_ids(run_dir)
        if not ids:
            raise RunFolderError(f"{run_dir} holds no SAEs yet: run `python -m precompute train-sae` or pass --sae.")
        model = load_run_model(run_dir, profile)
        heldout_NT, special_ids = _heldout_rows(profile, run_dir, model)
        for existing in ids:
            _remeasure(profile, run_dir, model, existing, heldout_NT, special_ids)
        return ids
    # The SAE first: a wrong path or an unreachable hub fails before the model loads.
    loaded = load_sae(sae, device=resolve_device("auto"))
    model = load_run_model(run_dir, profile)
    heldout_NT, special_ids = _heldout_rows(profile, run_dir, model)
    return [_import(profile, run_dir, model, sae, loaded, sae_id, hook, force, heldout_NT, special_ids)]


def _heldout_rows(profile: Profile, run_dir: Path, model: HookedSAETransformer) -> tuple[torch.Tensor, tuple[int, ...]]:
    docs = read_documents(run_dir, columns=["doc_id", "text"])
    heldout_NT, n_docs = build_heldout_contexts(
        model.tokenizer,
        docs["doc_id"].tolist(),
        docs["text"].tolist(),
        profile.sae.context_size,
        max_tokens=sae_reports.heldout_tokens_needed(profile.report),
        prepend_bos=profile.sae.prepend_bos,
    )
    if len(heldout_NT) == 0:
        raise RunFolderError(f"The corpus of {run_dir} has too few held-out documents ({n_docs}) to fill one context.")
    return heldout_NT, special_token_ids(model.tokenizer)


def _remeasure(
    profile: Profile,
    run_dir: Path,
    model: HookedSAETransformer,
    sae_id: str,
    heldout_NT: torch.Tensor,
    special_ids: tuple[int, ...],
) -> None:
    """Measure an SAE already in the run again; keep its training curve and training figures."""
    folder = sae_dir(run_dir, sae_id)
    loaded = load_sae(folder, device=str(model.cfg.device))
    hook_name = check_sae_fits_model(loaded.sae, model, model_name=profile.model)
    report_path = folder / artifacts.SAE_TRAINING_REPORT_FILE
    previous = sae_reports.row_from_training_report(report_path) if report_path.is_file() else None
    curve: list[TrainingCurvePoint] = previous[1] if previous else []
    old_row = previous[0] if previous else None
    row = sae_reports.report_row(
        sae_id,
        loaded,
        hook_name,
        sae_reports.measure_sae(model, loaded.sae, hook_name, heldout_NT, special_ids, profile.report),
        model_name=profile.model,
        source=old_row.source if old_row else f"{artifacts.SAES_DIR}/{sae_id}",
        source_kind=old_row.source_kind if old_row else "folder",
        training_tokens=old_row.training_tokens if old_row else None,
        train_seconds=old_row.train_seconds if old_row else None,
    )
    extra = {k: v for k, v in json.loads(report_path.read_text()).items() if k not in row._fields} if previous else {}
    extra.pop("curve", None)
    notes = tuple(extra.pop("notes", ()))
    write_text_atomic(report_path, sae_reports.training_report_json(row, curve, notes, **extra))
    write_sae_training_report(database_path(run_dir), row, curve, provenance(profile, run_dir, "sae-report"))
    sae_reports.print_report(sae_id, row)


def _import(
    profile: Profile,
    run_dir: Path,
    model: HookedSAETransformer,
    source: str,
    loaded: LoadedSAE,
    sae_id: str | None,
    hook: str | None,
    force: bool,
    heldout_NT: torch.Tensor,
    special_ids: tuple[int, ...],
) -> str:
    started = time.time()
    hook_name = check_sae_fits_model(loaded.sae, model, hook, model_name=profile.model)
    sae_id = validate_sae_id(sae_id) if sae_id else default_sae_id(loaded, hook_name)
    target = sae_dir(run_dir, sae_id)
    source_path = Path(source).expanduser()
    if source_path.exists() and source_path.resolve() == target.resolve():
        _remeasure(profile, run_dir, model, sae_id, heldout_NT, special_ids)
        return sae_id
    if target.exists() and not force:
        raise RunFolderError(
            f"{target} already holds an SAE called {sae_id!r}; pass another --sae-id, or --force to replace it."
        )
    config = {
        "source": loaded.source,
        "source_kind": loaded.source_kind,
        "hook_name": hook_name,
        "model": model_identity(profile, run_dir),
    }
    shape = {"architecture": loaded.architecture, "d_in": loaded.d_in, "d_sae": loaded.d_sae}
    print_config(STAGE, {"sae_id": sae_id, **shape, **config})
    for note in loaded.notes:
        print(f"  note: {note}", flush=True)
    report = sae_reports.measure_sae(model, loaded.sae, hook_name, heldout_NT, special_ids, profile.report)
    row = sae_reports.report_row(
        sae_id,
        loaded,
        hook_name,
        report,
        model_name=profile.model,
        source=loaded.source,
        source_kind=loaded.source_kind,
    )
    with atomic_dir(target) as tmp:
        loaded.sae.save_model(tmp)
        sparsity = Path(loaded.source) / "sparsity.safetensors"
        if loaded.source_kind != "pretrained" and sparsity.is_file():
            shutil.copy2(sparsity, tmp / sparsity.name)
        origin = {"source": loaded.source, "source_kind": loaded.source_kind, "notes": list(loaded.notes)}
        (tmp / SOURCE_FILE).write_text(json.dumps(origin, indent=2))
        (tmp / artifacts.SAE_TRAINING_REPORT_FILE).write_text(sae_reports.training_report_json(row, [], loaded.notes))
        write_manifest(tmp, STAGE, config, started, sae_id=sae_id)
    write_sae_training_report(database_path(run_dir), row, [], provenance(profile, run_dir, "sae-report"))
    sae_reports.print_report(sae_id, row)
    print(f"  wrote {target} and {database_path(run_dir)}", flush=True)
    return sae_id
