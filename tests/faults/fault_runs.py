"""The run the fault tests break: every stage's output at miniature size, built once per test session by
the real command line (corpus, train-sae, index, steer) on the tiny Qwen2 of `tests.hub_fixtures`, so
its database holds an SAE report, a training curve, a feature index and a stored steering result.
Each test breaks a copy (`copy_run`), never the original."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from explorer import artifacts
from explorer.runs import list_sae_ids
from precompute.cli import main, save_profile
from explorer.config import CorpusSpec, IndexSpec, Profile, ReportSpec, SAERecipe

RUN = "faulty"
HOOK = "blocks.0.hook_resid_post"
STEERED_FEATURE = 3
INDEX_FLAGS = ["--batch-size", "4"]
STEER_FLAGS = ["--features", str(STEERED_FEATURE), "--coefs=-4,4", "--from-corpus", "2", "--n-samples", "1",
               "--max-new-tokens", "6", "--temperature", "0"]


def fault_profile(name: str, model_dir: Path) -> Profile:
    """A profile whose every stage runs in a second or two on the CPU."""
    return Profile(
        name=name, model=str(model_dir), hook_name=HOOK, n_ctx=64,
        corpus=CorpusSpec(source="synthetic", n_traces=150, seed=0),
        sae=SAERecipe(
            architecture="standard", expansion_factor=1, lr=1e-3, lr_scheduler_name="constant", training_steps=4,
            train_batch_size_tokens=64, context_size=32, n_batches_in_buffer=2, store_batch_size_prompts=2,
            n_batches_for_norm_estimate=1, n_checkpoints=0, prepend_bos=True,
        ),
        index=IndexSpec(top_k=4, context_before=6, context_after=3),
        report=ReportSpec(n_tokens=128, n_sparsity_tokens=256),
    )


def run_args(run_dir: Path, *extra: str) -> list[str]:
    """`--profile <run>/profile.json --out <run>` and `extra`: a stage command on this run."""
    return ["--profile", str(Path(run_dir) / artifacts.PROFILE_FILE), "--out", str(run_dir), *extra]


def build_fault_run(run_dir: Path, model_dir: Path) -> str:
    """Corpus, SAE (trained, with its report), index and one stored steering result; returns the SAE id."""
    save_profile(fault_profile(run_dir.name, model_dir), run_dir)
    assert main(["train-sae", *run_args(run_dir)]) == 0
    sae_id = list_sae_ids(run_dir)[0]
    assert main(["index", *run_args(run_dir, *INDEX_FLAGS)]) == 0
    assert main(["steer", "--out", str(run_dir), "--sae", sae_id, *STEER_FLAGS]) == 0
    return sae_id


def copy_run(source: Path, runs_root: Path, name: str = RUN) -> Path:
    """A copy of the run folder `source` as `runs_root/name` (the lock file left behind)."""
    target = Path(runs_root) / name
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.lock"))
    return target


def folder_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, by relative path (lock files aside: taking a lock writes nothing)."""
    hashes = {}
    for path in sorted(Path(folder).rglob("*")):
        if path.is_symlink() or not path.is_file() or path.name.endswith(".lock"):
            continue
        try:
            hashes[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
        except PermissionError:  # a file the test made unreadable: its size and time stand for it
            stat = path.stat()
            hashes[str(path.relative_to(folder))] = f"unreadable {stat.st_size} {stat.st_mtime_ns}"
    return hashes


def visible_hashes(run_dir: Path, *, leave_out: tuple[str, ...] = ()) -> dict[str, str]:
    """The run's files as a reader finds them: hidden temporaries, the index's saved progress and
    `leave_out` aside (a killed stage may leave those; its next run removes or resumes from them)."""
    return {
        path: digest for path, digest in folder_hashes(run_dir).items()
        if not any(part.startswith(".") for part in Path(path).parts)
        and not path.startswith("index_partials/") and path not in leave_out
    }
