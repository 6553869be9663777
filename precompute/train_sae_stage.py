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
import time
from pathlib import Path
from typing import Any, Mapping

from explorer import artifacts
from explorer.config import SAE_FIELDS_ADDED_LATER, Profile
from explorer.database import read_sae_ids, write_sae_training_report
from explorer.errors import DatabaseError
from explorer.fault_points import checkpoint
from explorer.model_loading import load_run_model
from explorer.runs import RunFolderError, database_path, list_sae_ids, read_documents, sae_dir
from explorer.sae_loading import compute_hook_d_in, make_sae_id
from explorer.sae_training import HELDOUT_FRACTION, build_activation_source, train_sae
from precompute.atomic import atomic_dir
from precompute.sae_reports import (
    heldout_tokens_needed,
    measure_sae,
    print_report,
    report_row,
    row_from_training_report,
    training_report_json,
)
from precompute.stages import (
    model_identity, print_config, print_rebuild, print_reuse, print_skip, provenance, read_manifest,
    settings_as_flags, stage_is_current, write_manifest,
)

STAGE = "train-sae"
ADDED_CONFIG_KEYS = {
    **{f"sae.{key}": value for key, value in SAE_FIELDS_ADDED_LATER.items()},
    "sparsity_tokens": 32_768,  # the report measured dead features on its eval tokens before
    "model_dtype": "float32",
}
"""Recipe fields added after SAEs were trained, with the value those SAEs had (`stage_is_current`)."""
FLAGS = {
    "sae.training_steps": "--sae-steps",
    "sae.n_batches_for_norm_estimate": "--norm-batches",
    "eval_tokens": "--eval-tokens",
    "sparsity_tokens": "--sparsity-tokens",
    "model_dtype": "--dtype",
}
"""The stage's settings that a command-line flag sets, by their name in the stage's config."""
SCALE_DOWN_ARGS = {
    "sae_steps": "sae.training_steps",
    "norm_batches": "sae.n_batches_for_norm_estimate",
    "eval_tokens": "eval_tokens",
    "sparsity_tokens": "sparsity_tokens",
}
"""The command line's SAE flags (argparse names) and the config keys they set."""


def corpus_config_hash(run_dir: Path) -> str:
    manifest = read_manifest(Path(run_dir) / artifacts.CORPUS_DIR)
    if manifest is None:
        raise RunFolderError(f"No corpus in {run_dir}: run `python -m precompute corpus --out {run_dir}` first.")
    return manifest["config_hash"]


# --- the stage ------------------------------------------------------------------------------------


def stage_config(profile: Profile, run_dir: Path, hook_name: str) -> dict[str, Any]:
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
    for sae_id in list_sae_ids(run_dir):
        folder = sae_dir(run_dir, sae_id)
        manifest = read_manifest(folder)
        if manifest and manifest.get("stage") == STAGE and stage_is_current(folder, config, ADDED_CONFIG_KEYS):
            return sae_id
    return None


def find_reusable_sae(profile: Profile, run_dir: Path, hook_name: str) -> tuple[str | None, str]:
    """An SAE the run holds at `hook_name` that a later stage can use as it is, whatever its recipe:
    trained on the run's current model and corpus, or imported for its current model. Else None, and
    why none fits."""
    model, corpus = model_identity(profile, run_dir), corpus_config_hash(run_dir)
    reasons = []
    for folder in (sae_dir(run_dir, sae_id) for sae_id in list_sae_ids(run_dir)):
        manifest = read_manifest(folder)
        config = (manifest or {}).get("config") or {}
        if config.get("hook_name") != hook_name:
            continue
        if config.get("model") != model:
            reasons.append(f"the SAE {folder.name} was made for another model than the run's ({config.get('model')})")
        elif manifest.get("stage") == STAGE and config.get("corpus_config_hash") != corpus:
            reasons.append(f"the SAE {folder.name} was trained on another corpus than the run's")
        else:
            return folder.name, ""
    return None, reasons[0] if reasons else f"{run_dir} has no SAE at {hook_name}"


def reuse_sae(
    profile: Profile, named: Profile, run_dir: Path, hook_name: str, *, sae_id: str | None = None,
    given: Mapping[str, int | None] | None = None,
) -> bool:
    """For a later stage's command: whether an SAE the run holds is used as it was trained (the one
    `sae_id` names, else `find_reusable_sae`'s), printing its settings as flags where they differ from
    the profile's `named` ones, and a note for each SAE flag in `given` (argparse names) that differs
    from how it was trained: such a flag applies when the SAE is trained, here or by `train-sae`.
    False, printing why, when none fits: the caller trains one with `profile`."""
    run_dir = Path(run_dir)
    if sae_id is not None and (sae_dir(run_dir, sae_id) / "cfg.json").is_file():
        found = sae_id
    else:
        found, reason = find_reusable_sae(profile, run_dir, hook_name)
        if found is None:
            print_rebuild(STAGE, reason)
            return False
    folder = sae_dir(run_dir, found)
    manifest = read_manifest(folder) or {}
    config = manifest.get("config") or {}
    recorded = {**config, **{key: value for key, value in ADDED_CONFIG_KEYS.items() if key not in config}}
    if manifest.get("stage") == STAGE:
        settings = settings_as_flags(recorded, stage_config(named, run_dir, hook_name), FLAGS)
        print_reuse(STAGE, f"the SAE {found} trained", folder, settings)
    else:
        print(f"== {STAGE} == using the SAE {found} as it is ({folder}, {manifest.get('stage', 'no manifest')})",
              flush=True)
    for arg, key in SCALE_DOWN_ARGS.items():
        value = (given or {}).get(arg)
        if value is not None and key in recorded and recorded[key] != value:
            flag = FLAGS[key]
            print(
                f"  note: {flag} {value} is not what the SAE was trained with ({recorded[key]}); a command uses "
                f"the stages before it as they were built: `train-sae {flag} {value}` retrains it", flush=True,
            )
    if (folder / artifacts.SAE_TRAINING_REPORT_FILE).is_file():
        _ensure_in_database(profile, run_dir, found)
    return True


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

    recipe = profile.sae
    started = time.time()
    model = load_run_model(run_dir, profile)
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
            source=f"{artifacts.SAES_DIR}/{sae_id}",
            source_kind="trained",
            training_tokens=trained.training_tokens,
            train_seconds=round(trained.train_seconds, 2),
        )
        _rewrite_paths(tmp, final_dir)
        checkpoints = [str(final_dir.relative_to(run_dir) / p.relative_to(tmp)) for p in trained.checkpoint_dirs]
        (tmp / artifacts.SAE_TRAINING_REPORT_FILE).write_text(
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
    write_sae_training_report(database_path(run_dir), row, trained.curve, provenance(profile, run_dir, STAGE))
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
    report_path = sae_dir(run_dir, sae_id) / artifacts.SAE_TRAINING_REPORT_FILE
    row, curve = row_from_training_report(report_path)
    write_sae_training_report(db_path, row, curve, provenance(profile, run_dir, STAGE))
    print(f"  restored {sae_id}'s report in {db_path}", flush=True)
