"""`python -m precompute`: stages, idempotence, atomic outputs and clear errors."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from explorer import artifacts
from explorer.config import DEEPSEEK_R1_DISTILL_QWEN_1_5B, DEMO, PROFILES, Profile, get_profile
from precompute.atomic import atomic_dir
from precompute.cli import main

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REPO = Path(__file__).resolve().parents[1]


def test_help_lists_the_subcommands():
    result = subprocess.run([sys.executable, "-m", "precompute", "--help"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("corpus", "train-lm", "train-sae", "sae-report", "build"):
        assert command in result.stdout


def test_synthetic_corpus_stage_writes_and_then_skips(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["corpus", "--n-traces", "300", "--out", str(run)]) == 0
    corpus_dir = run / artifacts.CORPUS_DIR
    documents = pd.read_parquet(corpus_dir / artifacts.DOCUMENTS_FILE)
    phrases = pd.read_parquet(corpus_dir / artifacts.PHRASES_FILE)
    errors = pd.read_parquet(corpus_dir / artifacts.ERROR_STEPS_FILE)
    assert len(documents) == 300 and documents["doc_id"].is_unique
    assert set(phrases["doc_id"]) <= set(documents["doc_id"])
    assert len(errors) > 0
    # Document flags agree with the phrase table.
    with_phrase = set(phrases.loc[phrases["group"] != "interjection", "doc_id"])
    assert set(documents.loc[documents["has_backtracking"], "doc_id"]) == with_phrase
    saved = Profile.load(run / artifacts.PROFILE_FILE)
    assert saved.corpus.n_traces == 300 and saved.name == "demo"
    manifest = json.loads((corpus_dir / artifacts.STAGE_MANIFEST).read_text())
    assert manifest["stage"] == "corpus" and manifest["config"]["n_traces"] == 300

    capsys.readouterr()
    assert main(["corpus", "--n-traces", "300", "--out", str(run)]) == 0
    assert "up to date" in capsys.readouterr().out
    assert main(["corpus", "--n-traces", "300", "--out", str(run), "--force"]) == 0
    assert "up to date" not in capsys.readouterr().out


@pytest.mark.parametrize(("sample", "n"), [("seed_format_sample_n20.json", 20), ("seed_format_sample_n10.json", 10)])
def test_notebook_samples_agree_with_their_own_labels(tmp_path, capsys, sample, n):
    if not (SHARED_DATA / sample).exists():
        pytest.skip("shared samples absent")
    run = tmp_path / "samples"
    assert main(["corpus", "--dataset", str(SHARED_DATA / sample), "--out", str(run)]) == 0
    summary = json.loads((run / artifacts.CORPUS_DIR / artifacts.CORPUS_SUMMARY_FILE).read_text())
    assert summary["agreement"] == {"n_with_source_label": n, "n_agree": n, "disagreements": []}
    assert summary["boundary_differences"] == []
    out = capsys.readouterr().out
    assert f"agreement with the source's own has_backtracking: {n}/{n}" in out
    assert f"word-boundary matching agree on {n}/{n} documents" in out
    documents = pd.read_parquet(run / artifacts.CORPUS_DIR / artifacts.DOCUMENTS_FILE)
    assert (documents["has_backtracking"] == documents["source_has_backtracking"]).all()


def test_disagreements_and_substring_only_matches_are_explained(tmp_path, capsys):
    records = [
        {"problem_id": "a", "generated_cot": "So 2 + 2 = 4. Hmm, let me look again.", "has_backtracking": True,
         "backtracking_phrase": "Hmm, let me look again"},
        {"problem_id": "b", "generated_cot": "So 2 + 2 = 5. I made a mistake: it is 4.", "has_backtracking": False},
        {"problem_id": "c", "generated_cot": "Actually, I shouldn't add. So 3.", "has_backtracking": True},
        {"problem_id": "d", "generated_cot": "So 3.", "has_backtracking": False},
    ]
    path = tmp_path / "traces.json"
    path.write_text(json.dumps(records))
    run = tmp_path / "run"
    assert main(["corpus", "--dataset", str(path), "--out", str(run)]) == 0
    out = capsys.readouterr().out
    summary = json.loads((run / artifacts.CORPUS_DIR / artifacts.CORPUS_SUMMARY_FILE).read_text())
    explained = {d["doc_id"]: d["explanation"] for d in summary["agreement"]["disagreements"]}
    assert set(explained) == {"a", "b"} and summary["agreement"]["n_agree"] == 2
    assert "outside the notebook's six groups" in explained["a"] and "interjections only ('Hmm')" in explained["a"]
    assert "mistake 'I made a mistake'" in explained["b"]
    # "c" is backtracking by the notebook's substring rule only ("actually, i should" in "shouldn't").
    assert [d["doc_id"] for d in summary["boundary_differences"]] == ["c"]
    assert "word-boundary matching agree on 3/4 documents" in out and "Actually, I shouldn't" in out


def test_missing_dataset_is_a_clear_error_and_writes_no_corpus(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["corpus", "--dataset", str(tmp_path / "nope.json"), "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "nope.json" in err and "Traceback" not in err
    assert not (run / artifacts.CORPUS_DIR).exists()


def test_unknown_profile_is_a_clear_error(capsys):
    assert main(["corpus", "--profile", "gpt-17"]) == 2
    assert "Unknown profile 'gpt-17'" in capsys.readouterr().err


def test_train_lm_refuses_a_pretrained_profile(tmp_path, capsys):
    code = main(["train-lm", "--profile", DEEPSEEK_R1_DISTILL_QWEN_1_5B.name, "--out", str(tmp_path)])
    assert code == 2
    assert "train-lm only trains the demo model" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("setting", "value", "messages"),
    [
        ("plant_hook", "blocks.7.hook_mlp_out", ["plant_hook must be blocks.L.hook_mlp_out or blocks.L.hook_resid_post with L < 2"]),
        # An unknown label set: the message lists the run's sets.
        ("plant_label", "tag:uncertainty", ["No label set 'tag:uncertainty'", "tag:uncertainty_management"]),
    ],
)
def test_a_bad_plant_setting_is_a_clear_error_and_writes_no_model(tmp_path, capsys, setting, value, messages):
    profile = DEMO.to_dict()
    profile["demo_lm"][setting] = value
    profile["corpus"]["n_traces"] = 50
    (tmp_path / "bad.json").write_text(json.dumps(profile))
    run = tmp_path / "run"
    assert main(["train-lm", "--profile", str(tmp_path / "bad.json"), "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert all(message in err for message in messages), err
    assert not (run / artifacts.MODEL_DIR).exists()


def test_a_stage_command_runs_the_stages_it_needs_first():
    from precompute.cli import stages_to_run

    assert stages_to_run("corpus", DEMO) == ["corpus"]
    assert stages_to_run("train-lm", DEMO) == ["corpus", "train-lm"]
    assert stages_to_run("train-sae", DEMO) == ["corpus", "train-lm", "train-sae"]
    assert stages_to_run("build", DEMO) == ["corpus", "train-lm", "train-sae", "index", "inject"]
    assert stages_to_run("index", DEMO) == ["corpus", "train-lm", "train-sae", "index"]
    assert stages_to_run("train-sae", DEEPSEEK_R1_DISTILL_QWEN_1_5B) == ["corpus", "train-sae"]
    assert stages_to_run("sae-report", DEMO) == []
    assert stages_to_run("merge", DEMO) == []


def test_atomic_dir_keeps_the_old_output_when_a_stage_fails(tmp_path):
    target = tmp_path / "stage"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("crash mid-stage")
    assert (target / "a.txt").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["stage"]  # no temporary left behind


def test_profiles_round_trip_through_json():
    for profile in PROFILES.values():
        assert Profile.from_dict(json.loads(profile.to_json())) == profile


def test_deepseek_profile_is_the_notebooks_recipe():
    p = get_profile("deepseek-r1-distill-qwen-1.5b")
    assert p.model == "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    assert p.hook_name == "blocks.21.hook_mlp_out" and p.n_ctx == 2048 and p.demo_lm is None
    sae = p.sae
    assert (sae.architecture, sae.expansion_factor, sae.l1_coefficient, sae.lr) == ("standard", 16, 4.0, 3e-5)
    assert sae.lr_scheduler_name == "cosineannealingwarmrestarts"
    assert (sae.lr_warm_up_fraction, sae.lr_decay_fraction, sae.l1_warm_up_fraction) == (0.05, 0.2, 0.1)
    assert (sae.training_steps, sae.train_batch_size_tokens, sae.context_size) == (10_000, 2048, 512)
    assert sae.normalize_activations == "expected_average_only_in" and sae.dtype == "float32"
    assert (sae.seed, sae.n_checkpoints) == (42, 2)
    assert DEMO.demo_lm is not None


def test_balanced_corpus_keeps_half_backtracking_correct_traces(tmp_path):
    run = tmp_path / "balanced"
    assert main(["corpus", "--n-traces", "400", "--balanced", "40", "--out", str(run)]) == 0
    documents = pd.read_parquet(run / artifacts.CORPUS_DIR / artifacts.DOCUMENTS_FILE)
    assert len(documents) == 40 and documents["is_correct"].all()
    assert documents["has_backtracking"].sum() == 20
    assert documents["problem_id"].is_unique
    phrases = pd.read_parquet(run / artifacts.CORPUS_DIR / artifacts.PHRASES_FILE)
    assert set(phrases["doc_id"]) <= set(documents["doc_id"])


def test_balanced_sample_larger_than_the_corpus_allows_is_a_clear_error(tmp_path, capsys):
    assert main(["corpus", "--n-traces", "30", "--balanced", "40", "--out", str(tmp_path / "b")]) == 2
    assert "balanced_sample needs 20 correct traces with backtracking" in capsys.readouterr().err


def test_index_top_k_overrides_the_profile_and_rejects_nonsense(tmp_path, capsys):
    from precompute.cli import build_parser, main
    from precompute.cli_common import resolve_profile

    args = build_parser().parse_args(["index", "--top-k", "8", "--out", str(tmp_path / "run")])
    assert resolve_profile(args).index.top_k == 8
    assert main(["index", "--top-k", "0", "--out", str(tmp_path / "run")]) == 2
    assert "--top-k must be at least 1" in capsys.readouterr().err


def test_flags_scale_the_real_profile_down(tmp_path, capsys):
    from precompute.cli import build_parser, main
    from precompute.cli_common import resolve_profile

    flags = ["--sae-steps", "6", "--norm-batches", "2", "--eval-tokens", "1024", "--sparsity-tokens", "4096",
             "--tokens", "8192"]
    args = build_parser().parse_args(["build", "--profile", DEEPSEEK_R1_DISTILL_QWEN_1_5B.name, *flags])
    profile = resolve_profile(args)
    assert profile.sae.training_steps == 6 and profile.sae.training_tokens == 6 * 2048
    assert profile.sae.n_batches_for_norm_estimate == 2
    assert (profile.report.n_tokens, profile.report.n_sparsity_tokens) == (1024, 4096)
    assert profile.index.n_tokens == 8192  # recorded in profile.json with the index it builds
    assert DEEPSEEK_R1_DISTILL_QWEN_1_5B.report.n_sparsity_tokens == 2_000_000  # the profile is untouched
    args = build_parser().parse_args(["sae-report", "--eval-tokens", "512"])
    assert resolve_profile(args).report.n_tokens == 512
    for flag in ("--sae-steps", "--norm-batches", "--eval-tokens", "--sparsity-tokens"):
        assert main(["train-sae", flag, "0", "--out", str(tmp_path / "run")]) == 2
        assert f"{flag} must be at least 1, not 0" in capsys.readouterr().err
    assert main(["index", "--tokens", "-1", "--out", str(tmp_path / "run")]) == 2
    assert "--tokens must be 0 (the whole corpus) or a number of tokens, not -1" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_a_profile_saved_before_the_notebooks_fields_reads_back_as_it_was():
    from explorer.config import DEMO, SAE_FIELDS_ADDED_LATER, Profile

    saved = json.loads(DEMO.to_json())
    for key in set(SAE_FIELDS_ADDED_LATER) - {"matryoshka_widths"}:  # the demo's widths came first
        del saved["sae"][key]
    del saved["report"]
    old = Profile.from_dict(saved)
    assert old.sae == DEMO.sae  # sae_lens 6's values, not the notebook's new defaults
    assert (old.report.n_tokens, old.report.n_sparsity_tokens) == (32_768, 32_768)  # as its SAE was measured


def test_extra_hooks_round_trip_and_a_profile_saved_before_them_has_none():
    """`extra_hooks` is a tuple after JSON (a list there); a profile.json written before the field reads
    back with none, equal otherwise; the stage that trains the SAEs records it, and no other."""
    from precompute.run_record import profile_changes, with_stage

    assert DEMO.extra_hooks == ("blocks.0.hook_mlp_out",) and DEMO.hook_name == "blocks.1.hook_mlp_out"
    saved = json.loads(DEMO.to_json())
    assert saved["extra_hooks"] == ["blocks.0.hook_mlp_out"]
    assert Profile.from_dict(saved) == DEMO and isinstance(Profile.from_dict(saved).extra_hooks, tuple)
    del saved["extra_hooks"]
    old = Profile.from_dict(saved)
    assert old == dataclasses.replace(DEMO, extra_hooks=())
    assert profile_changes(old, DEMO) == ["extra_hooks () -> ('blocks.0.hook_mlp_out',)"]
    assert with_stage(old, "index", DEMO).extra_hooks == ()
    assert with_stage(old, "train-sae", DEMO).extra_hooks == DEMO.extra_hooks


def test_train_sae_trains_the_profiles_hook_then_each_extra_hook():
    from precompute.cli import training_hooks

    assert training_hooks(DEMO) == ["blocks.1.hook_mlp_out", "blocks.0.hook_mlp_out"]
    assert training_hooks(DEEPSEEK_R1_DISTILL_QWEN_1_5B) == ["blocks.21.hook_mlp_out"]
    twice = dataclasses.replace(DEMO, extra_hooks=("blocks.1.hook_mlp_out", "blocks.0.hook_mlp_out"))
    assert training_hooks(twice) == ["blocks.1.hook_mlp_out", "blocks.0.hook_mlp_out"]  # the profile's hook once


def test_a_setting_added_later_at_its_old_value_does_not_rebuild(tmp_path):
    """An SAE trained before `sae.matryoshka_widths` existed stays current for the same recipe."""
    import time

    from precompute.stages import stage_is_current, write_manifest
    from precompute.train_sae_stage import ADDED_CONFIG_KEYS

    old_config = {"hook_name": "blocks.1.hook_mlp_out", "sae.architecture": "standard", "sae.k": None}
    write_manifest(tmp_path, "train-sae", old_config, time.time())
    same_recipe_now = {**old_config, **ADDED_CONFIG_KEYS}
    assert not stage_is_current(tmp_path, same_recipe_now)  # the plain hash differs
    assert stage_is_current(tmp_path, same_recipe_now, ADDED_CONFIG_KEYS)
    assert not stage_is_current(tmp_path, {**same_recipe_now, "sae.matryoshka_widths": (16, 64)}, ADDED_CONFIG_KEYS)
    # The notebook's packing and decoder start are new values: an SAE trained before them is stale.
    assert not stage_is_current(tmp_path, {**same_recipe_now, "sae.prepend_bos": False}, ADDED_CONFIG_KEYS)
    assert not stage_is_current(tmp_path, {**same_recipe_now, "sae.decoder_heuristic_init": True}, ADDED_CONFIG_KEYS)
    assert not stage_is_current(tmp_path, {**same_recipe_now, "sae.k": 16}, ADDED_CONFIG_KEYS)
    assert stage_is_current(tmp_path, old_config, ADDED_CONFIG_KEYS)  # an exact match stays one


def test_a_profile_saved_before_plant_label_reads_back_without_it_and_its_model_stays_current(tmp_path):
    """A profile.json and a train-lm manifest written before `DemoLMSpec.plant_label` existed: no second
    plant, and the model trained then is not rebuilt."""
    import time

    from precompute.stages import stage_is_current, write_manifest
    from precompute.train_lm_stage import ADDED_CONFIG_KEYS

    assert DEMO.demo_lm.plant_label == "tag:uncertainty_management"
    saved = json.loads(DEMO.to_json())
    del saved["demo_lm"]["plant_label"], saved["demo_lm"]["plant_label_value"]
    old = Profile.from_dict(saved)
    assert old.demo_lm.plant_label is None and old == dataclasses.replace(
        DEMO, demo_lm=dataclasses.replace(DEMO.demo_lm, plant_label=None))
    config_now = {**dataclasses.asdict(old.demo_lm), "corpus_config_hash": "abc"}
    recorded_then = {k: v for k, v in config_now.items() if k not in ("plant_label", "plant_label_value")}
    write_manifest(tmp_path, "train-lm", recorded_then, time.time())
    assert stage_is_current(tmp_path, config_now, ADDED_CONFIG_KEYS)
    assert not stage_is_current(tmp_path, {**config_now, "plant_label": "tag:uncertainty_management"}, ADDED_CONFIG_KEYS)
