"""The full-scale rehearsal (benchmarks/full_scale_rehearsal.py) at tiny shapes: the real profile's every
stage runs offline against a stand-in saved under the real hub id, and the table has its numbers."""

import json

from benchmarks.full_scale_rehearsal import main

STAGES = ["corpus", "train-sae", "sae-report", "index", "steer", "inject"]


def test_every_stage_runs_and_is_measured(tmp_path, capsys):
    out = tmp_path / "rehearsal.json"
    assert main(["--tiny", "--no-browser", "--out-json", str(out)]) == 0
    report = json.loads(out.read_text())
    stages = {s["stage"]: s for s in report["stages"]}
    assert list(stages) == STAGES
    for name, stage in stages.items():
        assert stage["rc"] == 0, (name, stage["note"])
        assert stage["wall_s"] > 0 and 0 < stage["peak_rss_gib"] < 8, (name, stage)
        assert stage["embed_tokens"] > 0, name
    assert stages["corpus"]["embed_tokens"] == report["corpus_tokens"]
    # sae_lens fills its 16,384-token buffer; the report adds 3 x 1,024 CE tokens and 2,048 sparsity tokens.
    assert stages["train-sae"]["embed_tokens"] >= 16_384 + 3 * 1024 + 2048
    assert stages["sae-report"]["unembed_tokens"] == 3 * 1024
    # One pass over the index's tokens: the kept examples' contexts are read during it, not re-forwarded.
    assert report["index_tokens"] <= stages["index"]["embed_tokens"] < 2 * report["index_tokens"]
    assert stages["steer"]["unembed_tokens"] > 0  # generation runs the whole model
    assert report["feature"] is not None and report["sae_id"].endswith("-1024")
    for stage in ("train-sae", "sae-report", "index", "steer", "inject"):
        assert report["extrapolation"][stage]["flops"] > 0
        assert report["extrapolation"][stage]["bf16_s"] < report["extrapolation"][stage]["tf32_s"]
    printed = capsys.readouterr().out
    assert "rehearsal passed" in printed and "tok/s" in printed and "PFLOP" in printed
