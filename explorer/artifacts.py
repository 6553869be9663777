"""Every file and folder name inside a run folder, in one place.

A run folder (default `runs/<profile>/`) holds:

    profile.json                 the profile the run was built with
    corpus/                      stage `corpus`
        documents.parquet        one row per trace: doc_id, text, labels summary, metadata (row groups
                                 of 256 traces, so one trace's text is read without the rest)
        phrases.parquet          one row per labelled backtracking phrase (character spans)
        error_steps.parquet      synthetic corpora only: the wrong step before each correction
        sentences.parquet        one row per sentence of each trace's thinking (explorer/sentences.py)
        label_sets/<set>/        one folder per stored label set: label_set.json, spans.parquet,
                                 documents.parquet (explorer/label_sets.py, docs/labels.md)
        summary.json             counts, and agreement with the source's own labels
        stage.json               the stage manifest (what made it, when)
    model/                       stage `train-lm` (demo profiles): a Hugging Face model directory
        config.json, model.safetensors, tokenizer.json, tokenizer_config.json, ...
        train_report.json        loss curve, held-out loss, a greedy sample
        stage.json
    saes/<sae id>/               stage `train-sae` (or `sae-report --sae SOURCE`): one folder per SAE
        cfg.json, sae_weights.safetensors, ...   sae_lens's output
        training_report.json     the report measured on held-out tokens
        stage.json
    explorer.duckdb              the run's database (docs/sae.md, docs/schema.md)
"""

from __future__ import annotations

import os
from pathlib import Path

PROFILE_FILE = "profile.json"
STAGE_MANIFEST = "stage.json"

CORPUS_DIR = "corpus"
DOCUMENTS_FILE = "documents.parquet"
PHRASES_FILE = "phrases.parquet"
ERROR_STEPS_FILE = "error_steps.parquet"
CORPUS_SUMMARY_FILE = "summary.json"
SENTENCES_FILE = "sentences.parquet"
LABEL_SETS_DIR = "label_sets"

MODEL_DIR = "model"
DEMO_MODEL = "demo"
"""A profile whose model is `demo` runs the model that `train-lm` wrote into the run's `model/`."""
TRAIN_REPORT_FILE = "train_report.json"

SAES_DIR = "saes"
SAE_TRAINING_REPORT_FILE = "training_report.json"

DATABASE_FILE = "explorer.duckdb"

# Where run folders live; EXPLORER_RUNS_DIR moves them (the app and precompute both read it).
DEFAULT_RUNS_DIR = Path(os.environ.get("EXPLORER_RUNS_DIR", "runs"))


def default_run_dir(profile_name: str) -> Path:
    return DEFAULT_RUNS_DIR / profile_name
