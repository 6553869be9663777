"""Stage `train-sae`: train the profile's SAE on the run's model and corpus, measure it, record it.

Writes, atomically, `runs/<run>/saes/<sae_id>/`:

    cfg.json, sae_weights.safetensors      the SAE, as sae_lens saves it (load with explorer.sae_loading)
    sparsity.safetensors, runner_cfg.json  sae_lens's feature sparsity and its full runner config
    checkpoints/<run id>/<tokens>/         when the recipe asks for checkpoints
    training_report.json                   the held-out report, the training curve, timings
    stage.json                             the stage manifest

then the report and curve go into the run's DuckDB file (`explorer.database`). A run holds one folder
per SAE: `--hook` trains another hook's SAE next to the profile's. The stage is skipped when a folder
already holds an SAE made with the same config (recipe, hook, model, corpus).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from explorer import artifacts
from explorer.database import (
    Provenance,
    SAETrainingReportRow,
    database_path,
    read_sae_ids,
    utc_now,
    write_sae_training_report,
)
from explorer.errors import DatabaseError
from explorer.fault_points import checkpoint
from explorer.runs import RunFolderError, read_documents
from explorer.sae_metrics import SAEReport, TrainingCurvePoint, compute_sae_report
from precompute.atomic import atomic_dir
from precompute.profiles import DEMO_MODEL, SAE_FIELDS_ADDED_LATER, Profile, ReportSpec
from precompute.stages import (
    config_hash,
    package_versions,
    print_config,
    print_skip,
    read_manifest,
    stage_is_current,
    write_manifest,
)

if TYPE_CHECKING:
    import torch
    from sae_lens import SAE, HookedSAETransformer

    from explorer.sae_loading import LoadedSAE

STAGE = "train-sae"
SAES_DIR = artifacts.SAES_DIR
TRAINING_REPORT_FILE = artifacts.SAE_TRAINING_REPORT_FILE
EVAL_BATCH_ROWS = 8
ADDED_CONFIG_KEYS = {
    **{f"sae.{key}": value for key, value in SAE_FIELDS_ADDED_LATER.items()},
    "sparsity_tokens": 32_768,  # the report measured dead features on its eval tokens before
    "model_dtype": "float32",
}
"""Recipe fields added after SAEs were trained, with the value those SAEs had (`stage_is_current`)."""


# --- shared with the on-demand report (precompute.sae_report_cli) ----------------------------------


def sae_dir(run_dir: Path, sae_id: str) -> Path:
    return Path(run_dir) / SAES_DIR / sae_id


def sae_fingerprint(run_dir: Path, sae_id: str) -> str:
    """Names the SAE's weights as they are on disk (file names, sizes, modification times of its
    config and weights): it changes when the SAE is retrained or imported again under the same id."""
    folder = sae_dir(run_dir, sae_id)
    files = sorted([*folder.glob("*.safetensors"), *folder.glob("cfg.json")])
    return config_hash({p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in files})


def model_source(profile: Profile, run_dir: Path) -> Path | str:
    """The model the profile runs: the run's own `model/` for the demo, else the hub id or folder."""
    return Path(run_dir) / artifacts.MODEL_DIR if profile.model == DEMO_MODEL else profile.model


def model_identity(profile: Profile, run_dir: Path) -> str:
    """What identifies the model in a stage config: the demo model's manifest hash, else its name."""
    if profile.model != DEMO_MODEL:
        return profile.model
    manifest = read_manifest(Path(run_dir) / artifacts.MODEL_DIR)
    if manifest is None:
        raise RunFolderError(f"No demo model in {run_dir}: run `python -m precompute train-lm --out {run_dir}` first.")
    return f"demo@{manifest['config_hash']}"


def corpus_config_hash(run_dir: Path) -> str:
    manifest = read_manifest(Path(run_dir) / artifacts.CORPUS_DIR)
    if manifest is None:
        raise RunFolderError(f"No corpus in {run_dir}: run `python -m precompute corpus --out {run_dir}` first.")
    return manifest["config_hash"]


def corpus_content_hash(run_dir: Path) -> str:
    """sha256 (first 16 hex digits) of the corpus's documents.parquet: the provenance's corpus hash."""
    digest = hashlib.sha256()
    with open(Path(run_dir) / artifacts.CORPUS_DIR / artifacts.DOCUMENTS_FILE, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def provenance(profile: Profile, run_dir: Path) -> Provenance:
    return Provenance(
        profile=profile.to_dict(), package_versions=package_versions(), corpus_hash=corpus_content_hash(run_dir)
    )


def load_run_model(profile: Profile, run_dir: Path) -> HookedSAETransformer:
    from explorer.model_loading import load_model

    return load_model(model_source(profile, run_dir), device="auto", dtype=profile.dtype, n_ctx=profile.n_ctx)


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
    from datetime import datetime

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


# --- the stage ------------------------------------------------------------------------------------


def stage_config(profile: Profile, run_dir: Path, hook_name: str) -> dict[str, Any]:
    from explorer.sae_training import HELDOUT_FRACTION

    return {
        "hook_name": hook_name,
        "model": model_identity(profile, run_dir),
        "n_ctx": profile.n_ctx,
        "corpus_config_hash": corpus_config_hash(run_dir),
        **{f"sae.{key}": value for key, value in dataclasses.asdict(profile.sae).items()},
        "heldout_fraction": HELDOUT_FRACTION,
        "eval_tokens": profile.report.n_tokens,
        "sparsity_tokens": profile.report.n_sparsity_tokens,
        "model_dtype": profile.dtype,
    }


def find_current_sae(run_dir: Path, config: dict[str, Any]) -> str | None:
    """The id of an SAE folder in the run already built with exactly `config`."""
    root = Path(run_dir) / SAES_DIR
    if not root.is_dir():
        return None
    for folder in sorted(root.iterdir()):
        manifest = read_manifest(folder)
        if folder.is_dir() and manifest and manifest.get("stage") == STAGE and stage_is_current(folder, config, ADDED_CONFIG_KEYS):
            return folder.name
    return None


def run_train_sae_stage(
    profile: Profile, run_dir: Path, *, hook: str | None = None, wandb: bool = False, force: bool = False
) -> str:
    """Train (unless current) the SAE of `profile` at `hook` (default: the profile's); return its id."""
    run_dir = Path(run_dir)
    hook_name = hook or profile.hook_name
    config = stage_config(profile, run_dir, hook_name)
    current = None if force else find_current_sae(run_dir, config)
    if current is not None:
        print_skip(STAGE, sae_dir(run_dir, current))
        _ensure_in_database(profile, run_dir, current)
        return current

    from explorer.sae_loading import compute_hook_d_in, make_sae_id
    from explorer.sae_training import build_activation_source, train_sae

    recipe = profile.sae
    started = time.time()
    model = load_run_model(profile, run_dir)
    d_in = compute_hook_d_in(model, hook_name, model_name=profile.model)
    sae_id = make_sae_id(hook_name, recipe.architecture, d_in * recipe.expansion_factor, recipe.k)
    print_config(STAGE, {"sae_id": sae_id, "d_in": d_in, "wandb": wandb, **config})

    docs = read_documents(run_dir, columns=["doc_id", "text"])
    norm_tokens = recipe.n_batches_for_norm_estimate * recipe.train_batch_size_tokens
    source = build_activation_source(
        model.tokenizer,
        docs["doc_id"].tolist(),
        docs["text"].tolist(),
        recipe.context_size,
        max_train_tokens=recipe.training_tokens + norm_tokens,
        max_heldout_tokens=heldout_tokens_needed(profile.report),
        seed=recipe.seed,
        prepend_bos=recipe.prepend_bos,
    )
    del docs
    print(
        f"  activations: {len(source.train_NT):,} training rows from {source.n_train_docs:,} documents, "
        f"{len(source.heldout_NT):,} held-out rows from {source.n_heldout_docs:,} "
        f"({'BOS-separated' if recipe.prepend_bos else 'documents back to back, no BOS'}); special tokens excluded: "
        f"{list(source.special_token_ids)}",
        flush=True,
    )
    if len(source.heldout_NT) == 0:
        raise RunFolderError(f"The corpus of {run_dir} has too few held-out documents to fill one context.")

    final_dir = sae_dir(run_dir, sae_id)
    with atomic_dir(final_dir) as tmp:
        trained = train_sae(
            model,
            recipe,
            source,
            tmp,
            hook_name=hook_name,
            d_in=d_in,
            model_name=profile.model,
            dataset_path=profile.corpus.source,
            wandb=wandb,
            run_name=sae_id,
        )
        checkpoint("train-sae:trained")
        report = measure_sae(model, trained.loaded.sae, hook_name, source.heldout_NT, source.special_token_ids, profile.report)
        row = report_row(
            sae_id,
            trained.loaded,
            hook_name,
            report,
            model_name=profile.model,
            source=f"{SAES_DIR}/{sae_id}",
            source_kind="trained",
            training_tokens=trained.training_tokens,
            train_seconds=round(trained.train_seconds, 2),
        )
        _rewrite_paths(tmp, final_dir)
        checkpoints = [str(final_dir.relative_to(run_dir) / p.relative_to(tmp)) for p in trained.checkpoint_dirs]
        (tmp / TRAINING_REPORT_FILE).write_text(
            training_report_json(
                row,
                trained.curve,
                trained.loaded.notes,
                checkpoints=checkpoints,
                n_train_docs=source.n_train_docs,
                n_heldout_docs=source.n_heldout_docs,
                special_token_ids=list(source.special_token_ids),
            )
        )
        write_manifest(tmp, STAGE, config, started, sae_id=sae_id, d_in=d_in)
    checkpoint("train-sae:folder-written")
    write_sae_training_report(database_path(run_dir), row, trained.curve, provenance(profile, run_dir))
    print(f"  trained in {trained.train_seconds:.0f}s ({trained.training_tokens:,} tokens)", flush=True)
    print_report(sae_id, row)
    print(f"  wrote {final_dir} and {database_path(run_dir)}", flush=True)
    return sae_id


def _rewrite_paths(tmp: Path, final_dir: Path) -> None:
    """sae_lens records its output and checkpoint paths in runner_cfg.json: point them at the final
    folder rather than the temporary one that is about to be renamed."""
    for path in tmp.rglob("runner_cfg.json"):
        path.write_text(path.read_text().replace(str(tmp), str(final_dir)))


def _ensure_in_database(profile: Profile, run_dir: Path, sae_id: str) -> None:
    """A skipped stage still makes sure its report is in the DuckDB file (e.g. after the file was
    deleted), from the folder's training_report.json."""
    db_path = database_path(run_dir)
    try:
        if db_path.is_file() and sae_id in read_sae_ids(db_path):
            return
    except DatabaseError as err:
        if err.problem != DatabaseError.SCHEMA:
            raise  # an older file is brought up to date by the write below; a newer one is refused there
    report_path = sae_dir(run_dir, sae_id) / TRAINING_REPORT_FILE
    row, curve = row_from_training_report(report_path)
    write_sae_training_report(db_path, row, curve, provenance(profile, run_dir))
    print(f"  restored {sae_id}'s report in {db_path}", flush=True)
