"""Stage bookkeeping: print a stage's config, know whether its output is current, record a manifest and
the provenance of what went in (`provenance`, `model_identity`, `sae_fingerprint`).

Every stage writes its output folder atomically (`precompute.atomic.atomic_dir`) with a
`stage.json` manifest inside: the stage name, its config, a hash of that config, when it finished,
how long it took and the package versions. A later `build` skips a stage whose manifest has the same
config hash, so `make demo-data` is idempotent and a changed profile rebuilds what it changes.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from explorer import artifacts
from explorer.config import Profile
from explorer.database import Provenance
from explorer.runs import RunFolderError, corpus_content_hash, sae_dir
from precompute.run_record import recorded_profile

_VERSIONED_PACKAGES = ("torch", "transformers", "tokenizers", "transformer-lens", "sae-lens", "datasets", "duckdb")


def package_versions() -> dict[str, str]:
    versions = {}
    for package in _VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def config_hash(config: dict[str, Any]) -> str:
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def read_manifest(stage_dir: Path) -> dict[str, Any] | None:
    path = Path(stage_dir) / artifacts.STAGE_MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def stage_is_current(stage_dir: Path, config: dict[str, Any], added_keys: Mapping[str, Any] | None = None) -> bool:
    """Whether `stage_dir` holds a finished output made with exactly `config`.

    `added_keys` are config keys a later version of the stage added, each with the value that outputs
    made before it implicitly used: an output whose recorded config lacks such a key is read as having
    had it, so adding a setting at its old behaviour does not rebuild what was already built.
    """
    manifest = read_manifest(stage_dir)
    if manifest is None:
        return False
    if manifest.get("config_hash") == config_hash(config):
        return True
    recorded = manifest.get("config")
    if not added_keys or not isinstance(recorded, dict):
        return False
    missing = {key: value for key, value in added_keys.items() if key not in recorded}
    return bool(missing) and config_hash({**recorded, **missing}) == config_hash(config)


def write_manifest(stage_dir: Path, stage: str, config: dict[str, Any], started: float, **extra: Any) -> None:
    manifest = {
        "stage": stage,
        "config": config,
        "config_hash": config_hash(config),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.time() - started, 2),
        "versions": package_versions(),
        **extra,
    }
    (Path(stage_dir) / artifacts.STAGE_MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))


def print_config(stage: str, config: dict[str, Any]) -> None:
    """Print a stage's configuration, one `key = value` per line, before it starts."""
    print(f"== {stage} ==", flush=True)
    width = max((len(k) for k in config), default=0)
    for key, value in config.items():
        print(f"  {key:<{width}} = {value}", flush=True)


def settings_as_flags(recorded: Mapping[str, Any], reference: Mapping[str, Any], flags: Mapping[str, str]) -> list[str]:
    """The settings of a stage's recorded config that differ from `reference` (the config the named
    profile would give), each as its command-line flag where it has one (`--sae-steps 3`), else as
    `key value`. Keys `reference` lacks (hashes of inputs, ...) are left out."""
    reference = json.loads(json.dumps(dict(reference), default=str))  # as the manifest stores it
    return [
        f"{flags.get(key, key)} {value}"
        for key, value in recorded.items()
        if key in reference and reference[key] != value
    ]


def print_reuse(stage: str, what: str, stage_dir: Path, settings: list[str]) -> None:
    """A later stage's command uses this stage's output as it was built: say so, and with what."""
    manifest = read_manifest(stage_dir) or {}
    how = " ".join(settings) if settings else "the profile's settings"
    print(
        f"== {stage} == using {what} with {how} ({stage_dir}, built {manifest.get('finished_at', '?')}); "
        f"`{stage}` rebuilds it with other settings",
        flush=True,
    )


def print_rebuild(stage: str, reason: str) -> None:
    """A stage a later command needs is missing or stale, and is built first."""
    print(f"== {stage} == building it first: {reason}", flush=True)


def print_skip(stage: str, stage_dir: Path) -> None:
    manifest = read_manifest(stage_dir) or {}
    print(
        f"== {stage} == up to date in {stage_dir} (built {manifest.get('finished_at', '?')}); "
        "pass --force to rebuild",
        flush=True,
    )


# --- what made an output: the provenance, the model and the SAE as they were ----------------------


def provenance(profile: Profile, run_dir: Path, stage: str) -> Provenance:
    """What the DuckDB file keeps with what `stage`, built with `profile`, wrote into it: the run's
    profile as profile.json records it with that stage (`precompute.run_record`), the package versions
    and the corpus's hash."""
    return Provenance(
        profile=recorded_profile(run_dir, stage, profile).to_dict(), package_versions=package_versions(),
        corpus_hash=corpus_content_hash(run_dir),
    )


def model_identity(profile: Profile, run_dir: Path) -> str:
    """What identifies the model in a stage config: the demo model's manifest hash, else its name."""
    if profile.model != artifacts.DEMO_MODEL:
        return profile.model
    manifest = read_manifest(Path(run_dir) / artifacts.MODEL_DIR)
    if manifest is None:
        raise RunFolderError(f"No demo model in {run_dir}: run `python -m precompute train-lm --out {run_dir}` first.")
    return f"demo@{manifest['config_hash']}"


def sae_fingerprint(run_dir: Path, sae_id: str) -> str:
    """Names the SAE's weights as they are on disk (file names, sizes, modification times of its
    config and weights): it changes when the SAE is retrained or imported again under the same id."""
    folder = sae_dir(run_dir, sae_id)
    files = sorted([*folder.glob("*.safetensors"), *folder.glob("cfg.json")])
    return config_hash({p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in files})
