"""Stage commands and the flags of the stages before them, on a tiny run (a miniature Qwen2 from a local
folder, a synthetic corpus, an SAE trained for a few steps with sae_lens, the index into DuckDB).

A later command takes an earlier stage's output as that stage built it: `index` without the SAE flags
that `train-sae` was given uses the SAE `train-sae` trained, and rewrites neither it nor the corpus nor
profile.json. An earlier output is rebuilt when it is missing, when its inputs changed, or when its own
command (or `build`) asks for other settings.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from explorer import artifacts
from explorer.config import CorpusSpec, IndexSpec, InjectionSpec, Profile, ReportSpec, SAERecipe
from precompute.cli import main
from tests.hub_fixtures import mini_qwen2_dir  # noqa: F401  (fixture)

HOOK = "blocks.1.hook_mlp_out"
SAE_ID = f"{HOOK}-standard-128"
TINY_SAE = SAERecipe(
    architecture="standard", expansion_factor=2, l1_coefficient=1.0, lr=3e-3, lr_scheduler_name="constant",
    training_steps=8, train_batch_size_tokens=128, context_size=32, n_checkpoints=0, n_batches_for_norm_estimate=2,
    n_batches_in_buffer=4, store_batch_size_prompts=8,
)
SCALED_DOWN = ["--sae-steps", "3", "--norm-batches", "1", "--eval-tokens", "256", "--sparsity-tokens", "512"]


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under `folder`: its sha256 and modification time."""
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def profile_file(tmp_path_factory, mini_qwen2_dir):  # noqa: F811
    """A saved profile: the miniature model, 300 synthetic traces, an SAE of 8 steps, a small index."""
    profile = Profile(
        name="tiny", model=str(mini_qwen2_dir), hook_name=HOOK, n_ctx=64,
        corpus=CorpusSpec(source="synthetic", n_traces=300, seed=0), sae=TINY_SAE,
        index=IndexSpec(top_k=4, context_before=4, context_after=2, n_tokens=6000),
        report=ReportSpec(n_tokens=512, n_sparsity_tokens=1024),
        injection=InjectionSpec(candidates=2, top_tokens=3, windows=4, window_tokens=16),
    )
    path = tmp_path_factory.mktemp("profiles") / "tiny.json"
    path.write_text(profile.to_json())
    return path


@pytest.fixture(scope="module")
def scaled_down_run(tmp_path_factory, profile_file):
    """`corpus --n-traces 200`, then `train-sae` scaled down, each with its own flags only."""
    run = tmp_path_factory.mktemp("run") / "r"
    common = ["--profile", str(profile_file), "--out", str(run)]
    assert main(["corpus", *common, "--n-traces", "200"]) == 0
    assert main(["train-sae", *common, *SCALED_DOWN]) == 0
    return run, common


def copy_run(run: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    """A copy of the run to change, and its `--out` arguments."""
    work = tmp_path / "work"
    shutil.copytree(run, work)
    return work, ["--out", str(work)]


def test_index_uses_the_sae_train_sae_trained_without_its_flags(scaled_down_run, profile_file, tmp_path, capsys):
    run, _ = scaled_down_run
    work, out = copy_run(run, tmp_path)
    common = ["--profile", str(profile_file), *out]
    corpus, sae = snapshot(work / artifacts.CORPUS_DIR), snapshot(work / artifacts.SAES_DIR / SAE_ID)
    profile_bytes = (work / artifacts.PROFILE_FILE).read_bytes()
    assert json.loads(profile_bytes)["sae"]["training_steps"] == 3
    capsys.readouterr()

    assert main(["index", *common, "--batch-size", "4"]) == 0
    printed = capsys.readouterr().out
    assert snapshot(work / artifacts.SAES_DIR / SAE_ID) == sae  # not retrained: same bytes, same times
    assert snapshot(work / artifacts.CORPUS_DIR) == corpus  # the 200-trace corpus, not the profile's 300
    assert (work / artifacts.PROFILE_FILE).read_bytes() == profile_bytes
    assert f"using the SAE {SAE_ID} trained with --sae-steps 3 --norm-batches 1" in printed
    assert "using the corpus made with --n-traces 200" in printed
    assert "== train-sae ==\n" not in printed  # no training config printed: nothing trained
    from explorer.database import read_schema_info
    from explorer.runs import database_path
    from explorer.feature_db import read_index_runs

    assert list(read_index_runs(database_path(work))["sae_id"]) == [SAE_ID]
    # The DuckDB file keeps the run's profile as profile.json says it, not the command's defaults.
    assert read_schema_info(database_path(work)).profile == json.loads(profile_bytes)

    # Read-only and downstream commands leave profile.json alone too.
    capsys.readouterr()
    assert main(["index", *common, "--batch-size", "4"]) == 0  # the index is current: nothing to do
    assert "up to date" in capsys.readouterr().out
    assert main(["merge", *common]) == 2  # no partials: an error, and no rewrite
    assert (work / artifacts.PROFILE_FILE).read_bytes() == profile_bytes
    assert snapshot(work / artifacts.SAES_DIR / SAE_ID) == sae


def test_the_same_flags_again_change_nothing_and_other_flags_only_note(scaled_down_run, profile_file, tmp_path, capsys):
    """The README's old advice (repeat the SAE flags on `index`) still works; a flag that differs from how
    the SAE was trained is noted, and does not retrain it: `train-sae` does that."""
    run, _ = scaled_down_run
    work, out = copy_run(run, tmp_path)
    common = ["--profile", str(profile_file), *out]
    sae = snapshot(work / artifacts.SAES_DIR / SAE_ID)
    profile_bytes = (work / artifacts.PROFILE_FILE).read_bytes()
    capsys.readouterr()
    assert main(["index", *common, *SCALED_DOWN, "--batch-size", "4", "--sae", SAE_ID]) == 0
    assert snapshot(work / artifacts.SAES_DIR / SAE_ID) == sae
    assert (work / artifacts.PROFILE_FILE).read_bytes() == profile_bytes
    assert main(["index", *common, "--sae-steps", "5", "--batch-size", "4", "--sae", SAE_ID]) == 0
    printed = capsys.readouterr().out
    assert snapshot(work / artifacts.SAES_DIR / SAE_ID) == sae
    assert "--sae-steps 5 is not what the SAE was trained with (3)" in printed
    assert "train-sae" in printed


def test_a_changed_profile_json_is_printed_and_only_what_was_built_is_recorded(scaled_down_run, profile_file, tmp_path, capsys):
    run, _ = scaled_down_run
    work, out = copy_run(run, tmp_path)
    common = ["--profile", str(profile_file), *out]
    capsys.readouterr()
    # sae-report re-measures on the profile's report tokens: the report settings change, the recipe stays.
    assert main(["sae-report", *common]) == 0
    printed = capsys.readouterr().out
    saved = json.loads((work / artifacts.PROFILE_FILE).read_text())
    assert saved["sae"]["training_steps"] == 3 and saved["sae"]["n_batches_for_norm_estimate"] == 1
    assert (saved["report"]["n_tokens"], saved["report"]["n_sparsity_tokens"]) == (512, 1024)
    assert saved["corpus"]["n_traces"] == 200
    assert "profile.json: report.n_tokens 256 -> 512, report.n_sparsity_tokens 512 -> 1024" in printed


def test_train_sae_itself_retrains_with_the_profiles_recipe(scaled_down_run, profile_file, tmp_path, capsys):
    """The stage's own command compares with its own flags, as before."""
    run, _ = scaled_down_run
    work, out = copy_run(run, tmp_path)
    common = ["--profile", str(profile_file), *out]
    corpus = snapshot(work / artifacts.CORPUS_DIR)
    capsys.readouterr()
    assert main(["train-sae", *common]) == 0
    printed = capsys.readouterr().out
    manifest = json.loads((work / artifacts.SAES_DIR / SAE_ID / artifacts.STAGE_MANIFEST).read_text())
    assert manifest["config"]["sae.training_steps"] == 8
    assert snapshot(work / artifacts.CORPUS_DIR) == corpus
    assert json.loads((work / artifacts.PROFILE_FILE).read_text())["sae"]["training_steps"] == 8
    assert "sae.training_steps 3 -> 8" in printed


def test_a_new_corpus_makes_the_sae_stale_and_it_is_retrained_as_it_was(scaled_down_run, profile_file, tmp_path, capsys):
    """Truly stale: the corpus the SAE was trained on was replaced. A later command retrains it, with
    the settings the run recorded (3 steps), not the profile's (8)."""
    run, _ = scaled_down_run
    work, out = copy_run(run, tmp_path)
    common = ["--profile", str(profile_file), *out]
    assert main(["corpus", *common, "--n-traces", "150"]) == 0
    sae = snapshot(work / artifacts.SAES_DIR / SAE_ID)
    capsys.readouterr()
    assert main(["index", *common, "--batch-size", "4"]) == 0
    printed = capsys.readouterr().out
    assert snapshot(work / artifacts.SAES_DIR / SAE_ID) != sae
    manifest = json.loads((work / artifacts.SAES_DIR / SAE_ID / artifacts.STAGE_MANIFEST).read_text())
    assert manifest["config"]["sae.training_steps"] == 3
    assert "was trained on another corpus" in printed


def test_build_still_compares_every_stage_with_its_flags(scaled_down_run, profile_file, tmp_path, capsys):
    """`build` is every stage's own command: the 200-trace corpus and the 3-step SAE are not the
    profile's, so it rebuilds both (docs/profiles.md), and records what it built."""
    run, _ = scaled_down_run
    work, out = copy_run(run, tmp_path)
    capsys.readouterr()
    assert main(["build", "--profile", str(profile_file), *out, "--batch-size", "4"]) == 0
    printed = capsys.readouterr().out
    corpus = json.loads((work / artifacts.CORPUS_DIR / artifacts.STAGE_MANIFEST).read_text())
    sae = json.loads((work / artifacts.SAES_DIR / SAE_ID / artifacts.STAGE_MANIFEST).read_text())
    assert (corpus["config"]["n_traces"], sae["config"]["sae.training_steps"]) == (300, 8)
    assert "corpus.n_traces 200 -> 300" in printed and "sae.training_steps 3 -> 8" in printed
    # The last stage: the main SAE's token-injection test, with the profile's settings.
    from explorer.injection_store import read_injection_run
    from explorer.runs import database_path

    assert "== inject ==" in printed and "skipped" not in printed, printed[printed.find("== inject =="):]
    stored = read_injection_run(database_path(work), SAE_ID)
    assert stored["n_candidates"].iloc[0] >= 2 and stored["token_source"].iloc[0] == "feature_token_stats"
    saved = json.loads((work / artifacts.PROFILE_FILE).read_text())
    assert json.loads(profile_file.read_text()) == saved  # the run now holds exactly the profile's outputs


def test_build_trains_and_indexes_an_sae_at_each_extra_hook(profile_file, tmp_path, capsys):
    """A run built before `extra_hooks` (its profile.json without the field): `build` with a profile that
    adds a hook reuses the corpus, the SAE and its index as they are, trains the new hook's SAE and
    indexes it; the app and `--sae` defaults keep the SAE at the profile's hook."""
    from explorer.feature_db import read_index_runs
    from explorer.runs import database_path, list_sae_ids, main_sae_id

    early_hook = "blocks.0.hook_mlp_out"
    early_id = f"{early_hook}-standard-128"
    old = json.loads(profile_file.read_text())
    assert "extra_hooks" in old and old["extra_hooks"] == []
    del old["extra_hooks"]  # as profile.json was written before the field
    old_file, new_file = tmp_path / "old.json", tmp_path / "new.json"
    old_file.write_text(json.dumps(old))
    new_file.write_text(json.dumps({**old, "extra_hooks": [early_hook]}))
    run = tmp_path / "r"
    out = ["--out", str(run), "--batch-size", "4"]
    assert main(["build", "--profile", str(old_file), *out]) == 0
    assert list_sae_ids(run) == [SAE_ID]
    recorded = json.loads((run / artifacts.PROFILE_FILE).read_text())
    del recorded["extra_hooks"]
    (run / artifacts.PROFILE_FILE).write_text(json.dumps(recorded))
    corpus, sae = snapshot(run / artifacts.CORPUS_DIR), snapshot(run / artifacts.SAES_DIR / SAE_ID)
    first_index = read_index_runs(database_path(run)).set_index("sae_id")["built_at"].to_dict()
    capsys.readouterr()

    assert main(["build", "--profile", str(new_file), *out]) == 0
    printed = capsys.readouterr().out
    assert snapshot(run / artifacts.CORPUS_DIR) == corpus and snapshot(run / artifacts.SAES_DIR / SAE_ID) == sae
    assert list_sae_ids(run) == [early_id, SAE_ID]  # the new one sorts first
    runs = read_index_runs(database_path(run)).set_index("sae_id")
    assert runs["hook_name"].to_dict() == {early_id: early_hook, SAE_ID: HOOK}
    assert runs.loc[SAE_ID, "built_at"] == first_index[SAE_ID]  # the SAE's index was current: not rebuilt
    assert f"-- SAE 1 of 2: {HOOK} --\n== train-sae == up to date" in printed
    assert f"-- SAE 2 of 2: {early_hook} --\n== train-sae ==\n" in printed
    assert f"-- SAE 1 of 2: {SAE_ID}: up to date" in printed and f"-- SAE 2 of 2: {early_id}: indexing --" in printed
    assert "profile.json: extra_hooks () -> ('blocks.0.hook_mlp_out',)" in printed
    assert json.loads((run / artifacts.PROFILE_FILE).read_text())["extra_hooks"] == [early_hook]
    assert main_sae_id(run) == SAE_ID  # the profile's hook's, though the other sorts first

    saes = snapshot(run / artifacts.SAES_DIR)
    assert main(["build", "--profile", str(new_file), *out]) == 0  # everything current: nothing to do
    assert "== index == up to date" in capsys.readouterr().out
    assert snapshot(run / artifacts.SAES_DIR) == saes
