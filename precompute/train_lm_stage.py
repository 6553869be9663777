"""Stage `train-lm`: train the demo model on the run's corpus and save it as `model/`.

The model is a miniature Qwen2ForCausalLM (the real model's architecture class) with a byte-level BPE
tokenizer trained on the same corpus and the real special-token strings; `explorer.model_loading`
loads it exactly as it loads DeepSeek-R1-Distill-Qwen-1.5B.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

from explorer import artifacts
from explorer.config import DemoLMSpec
from explorer.label_sets import read_label_spans
from explorer.runs import RunFolderError, read_documents
from precompute.atomic import atomic_dir
from precompute.stages import (
    print_config, print_rebuild, print_reuse, print_skip, read_manifest, settings_as_flags,
    stage_is_current, write_manifest
)

STAGE = "train-lm"
# Settings added after models were built, with the value those models were trained with.
FLAGS = {"steps": "--steps"}
ADDED_CONFIG_KEYS = {
    "plant_weight": 0.0, "plant_hook": "blocks.1.hook_mlp_out", "plant_value": 8.0, "plant_lead": 0,
    "plant_value_before": None, "plant_label": None, "plant_label_value": 4.0,
}


def stage_config(spec: DemoLMSpec, run_dir: Path) -> dict:
    corpus_manifest = read_manifest(Path(run_dir) / artifacts.CORPUS_DIR)
    if corpus_manifest is None:
        raise RunFolderError(f"No corpus in {run_dir}: run `python -m precompute corpus --out {run_dir}` first.")
    # The model depends on the corpus it was trained on: a new corpus retrains it.
    config = {**dataclasses.asdict(spec), "corpus_config_hash": corpus_manifest["config_hash"]}
    if spec.plant_label is not None:  # and on the label set it plants: another content of it retrains it
        config["plant_label_hash"] = label_spans_hash(run_dir, spec.plant_label)
    return config


def label_spans_hash(run_dir: Path, name: str) -> str:
    """A digest of label set `name`'s positive spans (doc_id, start, end), whatever file holds them. An unknown
    name raises `LabelSetError`, which lists the run's sets."""
    spans = read_label_spans(run_dir, name)
    digest = hashlib.sha256(json.dumps([spans[c].tolist() for c in ("doc_id", "start", "end")]).encode())
    return digest.hexdigest()[:16]


def label_spans_per_text(run_dir: Path, name: str, doc_ids: list[str]) -> list[list[tuple[int, int]]]:
    """Label set `name`'s positive spans of each of `doc_ids`' documents, as (start, end) character pairs
    (none for a document it does not mark)."""
    spans = read_label_spans(run_dir, name)
    per_doc: dict[str, list[tuple[int, int]]] = {}
    for doc_id, start, end in zip(spans["doc_id"].tolist(), spans["start"].tolist(), spans["end"].tolist()):
        per_doc.setdefault(doc_id, []).append((start, end))
    return [per_doc.get(doc_id, []) for doc_id in doc_ids]


def reuse_model(run_dir: Path, named: DemoLMSpec) -> bool:
    """For a later stage's command: whether the run's demo model is used as it was trained, whatever its
    settings (printed, as flags where they differ from the profile's `named` ones). It is not when the
    run has none or it was trained on another corpus than the run's; then this prints why."""
    out_dir = Path(run_dir) / artifacts.MODEL_DIR
    manifest = read_manifest(out_dir)
    corpus = read_manifest(Path(run_dir) / artifacts.CORPUS_DIR)
    recorded = (manifest or {}).get("config") or {}
    if manifest is None:
        reason = f"{run_dir} has no demo model"
    elif corpus is None or recorded.get("corpus_config_hash") != corpus.get("config_hash"):
        reason = "the run's demo model was trained on another corpus than the run's"
    else:
        settings = settings_as_flags(recorded, dataclasses.asdict(named), FLAGS)
        print_reuse(STAGE, "the demo model trained", out_dir, settings)
        return True
    print_rebuild(STAGE, reason)
    return False


def run_train_lm_stage(spec: DemoLMSpec, run_dir: Path, *, force: bool = False) -> Path:
    """Write `run_dir/model/` unless it is already current for this corpus and spec."""
    from explorer.demo_lm import train_demo_lm  # transformers and tokenizers: seconds to import, this stage only

    out_dir = Path(run_dir) / artifacts.MODEL_DIR
    config = stage_config(spec, run_dir)
    if not force and stage_is_current(out_dir, config, ADDED_CONFIG_KEYS):
        print_skip(STAGE, out_dir)
        return out_dir
    print_config(STAGE, config)
    started = time.time()
    documents = read_documents(run_dir, columns=["doc_id", "text"])
    texts = documents["text"].tolist()
    label_spans = None
    if spec.plant_label is not None:
        label_spans = label_spans_per_text(run_dir, spec.plant_label, documents["doc_id"].tolist())
        n_marked = sum(bool(spans) for spans in label_spans)
        print(f"  plant_label {spec.plant_label}: {sum(map(len, label_spans)):,} spans in {n_marked:,} of {len(texts):,} documents")
    with atomic_dir(out_dir) as tmp:
        report = train_demo_lm(texts, tmp, spec, label_spans=label_spans)
        (tmp / artifacts.TRAIN_REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2))
        write_manifest(tmp, STAGE, config, started, n_params=report.n_params)
    print(
        f"  {report.n_params:,} parameters, {report.steps} steps ({report.stopped_by}) in {report.seconds:.0f}s; "
        f"train loss {report.final_train_loss:.3f}, held-out loss {report.heldout_loss:.3f} nats/token"
    )
    print("  greedy sample:\n" + "\n".join("    " + line for line in report.sample_text.splitlines()))
    print(f"  wrote {out_dir}", flush=True)
    return out_dir
