"""profile.json: the settings a run folder's outputs were built with.

A command records, stage by stage, the part of the profile that each stage it built (or checked as its
own and found current) was built with: `corpus` the corpus section, `train-lm` the demo model's,
`train-sae` the SAE recipe, the report's token counts and the further hooks it trains at
(`extra_hooks`), `sae-report` the report's, `index` the index settings, `inject` the injection test's. The model, hook, context
length and profile name go with every stage; the dtype with the stages that run the model into an
output (`train-sae`, `index`). A stage a command only used, as it was built, keeps the settings
recorded for it. So profile.json changes only when a command built
something with other settings; every change is printed, key by key, and a command that builds
nothing leaves the file as it is.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from explorer import artifacts
from explorer.config import Profile
from precompute.atomic import write_text_atomic

IDENTITY_FIELDS = ("name", "model", "hook_name", "n_ctx")
STAGE_FIELDS: dict[str, tuple[str, ...]] = {
    "corpus": ("corpus",),
    "train-lm": ("demo_lm",),
    "train-sae": ("sae", "report", "dtype", "extra_hooks"),
    "sae-report": ("report",),
    "index": ("index", "dtype"),
    "inject": ("injection", "dtype"),
}
"""The profile's fields that each stage's output was built with (and so records)."""


def read_saved_profile(run_dir: Path) -> Profile | None:
    """The run's profile.json, or None when it has none (or one this version cannot read)."""
    path = Path(run_dir) / artifacts.PROFILE_FILE
    if not path.is_file():
        return None
    try:
        return Profile.load(path)
    except (OSError, ValueError, TypeError, KeyError) as err:
        print(f"  note: {path} is unreadable ({type(err).__name__}: {err}); the command's profile replaces it",
              flush=True)
        return None


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def profile_changes(old: Profile, new: Profile) -> list[str]:
    """`key old -> new` for every setting that differs, dotted (`sae.training_steps 3 -> 8`)."""
    before, after = _flatten(old.to_dict()), _flatten(new.to_dict())
    keys = dict.fromkeys([*before, *after])
    return [f"{key} {before.get(key)} -> {after.get(key)}" for key in keys if before.get(key) != after.get(key)]


def with_stage(base: Profile | None, stage: str, profile: Profile) -> Profile:
    """`base` (a run's recorded profile; None: `profile` itself) with the fields that `stage` was
    built with taken from `profile`."""
    fields = (*IDENTITY_FIELDS, *STAGE_FIELDS[stage])
    return dataclasses.replace(base or profile, **{name: getattr(profile, name) for name in fields})


def recorded_profile(run_dir: Path, stage: str, profile: Profile) -> Profile:
    """What the run's profile.json will say once `stage`, built with `profile`, is recorded: the
    profile the run's DuckDB file keeps with what the stage wrote into it."""
    return with_stage(read_saved_profile(run_dir), stage, profile)


class RunRecord:
    """The run's profile.json, kept as the command's stages finish."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / artifacts.PROFILE_FILE
        self.saved = read_saved_profile(run_dir)
        self.current = self.saved

    def record(self, stage: str, profile: Profile) -> None:
        """`stage` was built (or found current) with `profile`: record its fields, and save."""
        self._save(with_stage(self.current, stage, profile))

    def ensure_saved(self, profile: Profile) -> None:
        """A run folder always has a profile.json once a command has run on it."""
        if not self.path.is_file():
            self._save(self.current or profile)

    def _save(self, new: Profile) -> None:
        old = self.current
        self.current = new
        if self.path.is_file() and old is not None and old.to_dict() == new.to_dict():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path, new.to_json() + "\n")
        if old is None:
            print(f"  wrote {self.path} (profile {new.name})", flush=True)
        else:
            print(f"  profile.json: {', '.join(profile_changes(old, new))}", flush=True)


def same_profile(a: Profile, b: Profile) -> bool:
    """Whether two profiles name the same pipeline (name and model), whatever their settings."""
    return (a.name, a.model) == (b.name, b.model)

