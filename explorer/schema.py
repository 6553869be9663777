"""Every table of the run's DuckDB file, in one place: the CREATE TABLE statements, their version and
the migrations (docs/schema.md documents each table and column; tests/test_schema_doc.py checks it).

- `CORE_TABLES`: the file's provenance (`schema_info`) and the SAEs' training reports and curves
  (written by `explorer.database`);
- `FEATURE_TABLES`: the feature index, every table keyed by `(sae_id, feature_id, ...)`; per-SAE facts
  about the pass itself live in `feature_index_runs`, the corpus windows examples point into in
  `index_contexts`, token strings in `vocabulary` (written by `explorer.feature_db`);
- `STEERING_TABLES`: steering results, keyed by `run_id`, created on the first steering write
  (written by `explorer.steering_store`);
- `INJECTION_TABLES`: the token-injection test of an SAE's top candidates, keyed by `(sae_id, ...)`,
  created on the first `python -m precompute inject` (written by `explorer.injection_store`).

DDL only: the modules above run the statements.
"""

SCHEMA_VERSION = 4
"""1: SAE training reports. 2: the feature index's tables. 3: the report's sparsity token count.
4: the token-injection tables (`INJECTION_TABLES`, created by their first write)."""

READABLE_VERSIONS = (3, 4)
"""Versions read as they are: a version-3 file lacks only the injection tables, which readers take as
absent (their message says `python -m precompute inject --run <run>` adds them)."""

CORE_TABLES = (
    """
    CREATE TABLE IF NOT EXISTS schema_info (
        schema_version INTEGER NOT NULL,
        created_at TIMESTAMP NOT NULL,
        updated_at TIMESTAMP NOT NULL,
        profile_json VARCHAR,
        package_versions_json VARCHAR,
        corpus_hash VARCHAR,
        sae_ids VARCHAR[] NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS sae_training_report (
        sae_id VARCHAR PRIMARY KEY,
        hook_name VARCHAR NOT NULL,
        architecture VARCHAR NOT NULL,
        d_in INTEGER NOT NULL,
        d_sae INTEGER NOT NULL,
        k INTEGER,
        model_name VARCHAR NOT NULL,
        source VARCHAR NOT NULL,
        source_kind VARCHAR NOT NULL,
        training_tokens BIGINT,
        train_seconds DOUBLE,
        n_tokens BIGINT NOT NULL,
        n_sparsity_tokens BIGINT NOT NULL,
        l0 DOUBLE NOT NULL,
        mse DOUBLE NOT NULL,
        explained_variance DOUBLE NOT NULL,
        frac_dead DOUBLE NOT NULL,
        frac_dense DOUBLE NOT NULL,
        dense_threshold DOUBLE NOT NULL,
        ce_loss_clean DOUBLE NOT NULL,
        ce_loss_spliced DOUBLE NOT NULL,
        ce_loss_zero_ablated DOUBLE NOT NULL,
        ce_loss_recovered DOUBLE NOT NULL,
        measured_at TIMESTAMP NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS sae_training_curve (
        sae_id VARCHAR NOT NULL,
        step INTEGER NOT NULL,
        n_tokens BIGINT NOT NULL,
        loss DOUBLE NOT NULL,
        mse_loss DOUBLE NOT NULL,
        sparsity_loss DOUBLE NOT NULL,
        l0 DOUBLE NOT NULL,
        explained_variance DOUBLE NOT NULL,
        PRIMARY KEY (sae_id, step)
    )
    """,
)
"""Created (if missing) by every write to the file, with `FEATURE_TABLES`."""

MIGRATIONS: dict[int, tuple[str, ...]] = {
    # 3 measures L0 and the dead and dense shares on their own, larger, token count; a version-2 report
    # measured them on its n_tokens.
    2: (
        "ALTER TABLE sae_training_report ADD COLUMN n_sparsity_tokens BIGINT",
        "UPDATE sae_training_report SET n_sparsity_tokens = n_tokens",
        "UPDATE schema_info SET schema_version = 3",
    ),
    # 4 adds the injection tables, created by the first `inject` write: nothing else changes.
    3: ("UPDATE schema_info SET schema_version = 4",),
}
"""Statements that bring a file of version v to v + 1 when it is written (applied in turn up to
`SCHEMA_VERSION`)."""

FEATURE_TABLES = (
    """
    CREATE TABLE IF NOT EXISTS feature_index_runs (
        sae_id VARCHAR PRIMARY KEY,
        hook_name VARCHAR NOT NULL,
        d_sae INTEGER NOT NULL,
        n_tokens BIGINT NOT NULL,
        n_valid_tokens BIGINT NOT NULL,
        n_windows BIGINT NOT NULL,
        n_documents BIGINT NOT NULL,
        n_shards INTEGER NOT NULL,
        context_size INTEGER NOT NULL,
        top_k INTEGER NOT NULL,
        context_before INTEGER NOT NULL,
        context_after INTEGER NOT NULL,
        corpus_hash VARCHAR NOT NULL,
        config_json VARCHAR NOT NULL,
        best_token_id INTEGER,
        best_token_auroc DOUBLE,
        identity_auroc DOUBLE,
        control_token_ids INTEGER[] NOT NULL,
        wait_token_ids INTEGER[] NOT NULL,
        reason_words VARCHAR[] NOT NULL,
        device VARCHAR NOT NULL,
        seconds DOUBLE NOT NULL,
        tokens_per_second DOUBLE NOT NULL,
        built_at TIMESTAMP NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS index_contexts (
        sae_id VARCHAR NOT NULL,
        context_id BIGINT NOT NULL,
        doc_id VARCHAR NOT NULL,
        token_offset INTEGER NOT NULL,
        n_tokens INTEGER NOT NULL,
        has_backtracking BOOLEAN NOT NULL,
        PRIMARY KEY (sae_id, context_id)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS vocabulary (
        token_id INTEGER PRIMARY KEY,
        token VARCHAR NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS feature_activation_stats (
        sae_id VARCHAR NOT NULL,
        feature_id INTEGER NOT NULL,
        density DOUBLE NOT NULL,
        active_count BIGINT NOT NULL,
        max_activation DOUBLE NOT NULL,
        mean_nonzero DOUBLE,
        activation_sum DOUBLE NOT NULL,
        PRIMARY KEY (sae_id, feature_id)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS feature_histograms (
        sae_id VARCHAR NOT NULL,
        feature_id INTEGER NOT NULL,
        bin INTEGER NOT NULL,
        lower DOUBLE NOT NULL,
        upper DOUBLE NOT NULL,
        count BIGINT NOT NULL,
        PRIMARY KEY (sae_id, feature_id, bin)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS feature_top_examples (
        sae_id VARCHAR NOT NULL,
        feature_id INTEGER NOT NULL,
        rank INTEGER NOT NULL,
        activation DOUBLE NOT NULL,
        context_id BIGINT NOT NULL,
        position INTEGER NOT NULL,
        first_position INTEGER NOT NULL,
        token_ids INTEGER[] NOT NULL,
        activations FLOAT[] NOT NULL,
        PRIMARY KEY (sae_id, feature_id, rank)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS feature_interval_samples (
        sae_id VARCHAR NOT NULL,
        feature_id INTEGER NOT NULL,
        interval_index INTEGER NOT NULL,
        rank INTEGER NOT NULL,
        interval_lower DOUBLE NOT NULL,
        interval_upper DOUBLE NOT NULL,
        interval_count BIGINT NOT NULL,
        activation DOUBLE NOT NULL,
        context_id BIGINT NOT NULL,
        position INTEGER NOT NULL,
        first_position INTEGER NOT NULL,
        token_ids INTEGER[] NOT NULL,
        activations FLOAT[] NOT NULL,
        PRIMARY KEY (sae_id, feature_id, interval_index, rank)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS feature_logit_lens (
        sae_id VARCHAR NOT NULL,
        feature_id INTEGER NOT NULL,
        direction VARCHAR NOT NULL,
        rank INTEGER NOT NULL,
        token_id INTEGER NOT NULL,
        logit DOUBLE NOT NULL,
        PRIMARY KEY (sae_id, feature_id, direction, rank)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS feature_neighbours (
        sae_id VARCHAR NOT NULL,
        feature_id INTEGER NOT NULL,
        rank INTEGER NOT NULL,
        neighbour_id INTEGER NOT NULL,
        cosine DOUBLE NOT NULL,
        PRIMARY KEY (sae_id, feature_id, rank)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS feature_backtracking_scores (
        sae_id VARCHAR NOT NULL,
        feature_id INTEGER NOT NULL,
        auroc DOUBLE,
        auroc_error_bound DOUBLE,
        auroc_notebook DOUBLE,
        auroc_notebook_error_bound DOUBLE,
        mean_in_phrases DOUBLE,
        mean_outside DOUBLE,
        reason_score DOUBLE,
        reason_entropy DOUBLE,
        leads_score DOUBLE,
        lead_share DOUBLE,
        lead_pre_mean DOUBLE,
        lead_peak_offset INTEGER,
        baseline_mean DOUBLE,
        baseline_std DOUBLE,
        doc_mean_with DOUBLE,
        doc_mean_without DOUBLE,
        doc_mean_delta DOUBLE,
        doc_window_max_delta DOUBLE,
        doc_active_share_with DOUBLE,
        doc_active_share_without DOUBLE,
        promotes_wait BOOLEAN NOT NULL,
        wait_logit_rank INTEGER,
        margin_over_best_token DOUBLE,
        margin_over_identity DOUBLE,
        within_token_auroc DOUBLE,
        is_token_detector BOOLEAN NOT NULL,
        PRIMARY KEY (sae_id, feature_id)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS feature_group_auroc (
        sae_id VARCHAR NOT NULL,
        feature_id INTEGER NOT NULL,
        group_name VARCHAR NOT NULL,
        auroc DOUBLE,
        error_bound DOUBLE,
        mean_activation DOUBLE,
        PRIMARY KEY (sae_id, feature_id, group_name)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS feature_lead_lag (
        sae_id VARCHAR NOT NULL,
        feature_id INTEGER NOT NULL,
        relative_position INTEGER NOT NULL,
        mean_activation DOUBLE,
        delta DOUBLE,
        n_targets BIGINT NOT NULL,
        PRIMARY KEY (sae_id, feature_id, relative_position)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS feature_reason_word_shares (
        sae_id VARCHAR NOT NULL,
        feature_id INTEGER NOT NULL,
        word VARCHAR NOT NULL,
        mean_activation DOUBLE NOT NULL,
        share DOUBLE NOT NULL,
        PRIMARY KEY (sae_id, feature_id, word)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS index_label_sets (
        sae_id VARCHAR NOT NULL,
        label VARCHAR NOT NULL,
        kind VARCHAR NOT NULL,
        source VARCHAR NOT NULL,
        n_positive_tokens BIGINT NOT NULL,
        n_scope_tokens BIGINT NOT NULL,
        n_sentences BIGINT NOT NULL,
        n_positive_sentences BIGINT NOT NULL,
        n_starts BIGINT NOT NULL,
        PRIMARY KEY (sae_id, label)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS feature_label_scores (
        sae_id VARCHAR NOT NULL,
        label VARCHAR NOT NULL,
        feature_id INTEGER NOT NULL,
        token_auroc DOUBLE,
        token_auroc_error_bound DOUBLE,
        sentence_auroc DOUBLE,
        sentence_auroc_error_bound DOUBLE,
        leads_score DOUBLE,
        lead_share DOUBLE,
        lead_pre_mean DOUBLE,
        lead_peak_offset INTEGER,
        PRIMARY KEY (sae_id, label, feature_id)
    )
    """,
    # labels x features x offsets rows (20M at 24,576 features and 20 label sets): no primary key,
    # whose index would cost more memory than the table; the writer makes the rows unique.
    """
    CREATE TABLE IF NOT EXISTS feature_label_lead_lag (
        sae_id VARCHAR NOT NULL,
        label VARCHAR NOT NULL,
        feature_id INTEGER NOT NULL,
        relative_position INTEGER NOT NULL,
        mean_activation DOUBLE,
        delta DOUBLE,
        n_targets BIGINT NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS feature_token_stats (
        sae_id VARCHAR NOT NULL,
        feature_id INTEGER NOT NULL,
        rank INTEGER NOT NULL,
        token_id INTEGER NOT NULL,
        token_count BIGINT NOT NULL,
        activation_sum DOUBLE NOT NULL,
        activation_sum_error DOUBLE NOT NULL,
        mean_activation DOUBLE NOT NULL,
        mean_activation_upper DOUBLE NOT NULL,
        PRIMARY KEY (sae_id, feature_id, rank)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS feature_token_dependence (
        sae_id VARCHAR NOT NULL,
        feature_id INTEGER NOT NULL,
        top_k INTEGER NOT NULL,
        concentration DOUBLE,
        concentration_upper DOUBLE,
        normalized_entropy DOUBLE,
        n_tokens_tracked INTEGER NOT NULL,
        activation_mass DOUBLE NOT NULL,
        untracked_mass DOUBLE NOT NULL,
        sketch_error DOUBLE NOT NULL,
        exact BOOLEAN NOT NULL,
        PRIMARY KEY (sae_id, feature_id)
    )
    """,
)
"""Created (if missing) by every write to the file, with `CORE_TABLES`."""

FEATURE_TABLE_NAMES = (
    "feature_index_runs", "index_contexts", "feature_activation_stats", "feature_histograms",
    "feature_top_examples", "feature_interval_samples", "feature_logit_lens", "feature_neighbours",
    "feature_backtracking_scores", "feature_group_auroc", "feature_lead_lag", "feature_reason_word_shares",
    "index_label_sets", "feature_label_scores", "feature_label_lead_lag", "feature_token_stats",
    "feature_token_dependence",
)
"""The tables holding one SAE's index (deleted and rewritten together). `vocabulary` is shared."""

STEERING_SCHEMA_VERSION = 1
"""Written into every `steering_runs` row; readers skip rows of another version."""

STEERING_TABLES = (
    """
    CREATE TABLE IF NOT EXISTS steering_runs (
        run_id VARCHAR PRIMARY KEY,
        schema_version INTEGER NOT NULL,
        sae_id VARCHAR NOT NULL,
        feature_id INTEGER NOT NULL,
        mode VARCHAR NOT NULL,
        hook_name VARCHAR NOT NULL,
        coefs DOUBLE[] NOT NULL,
        n_prompts INTEGER NOT NULL,
        n_samples INTEGER NOT NULL,
        max_new_tokens INTEGER NOT NULL,
        requested_max_new_tokens INTEGER NOT NULL,
        temperature DOUBLE NOT NULL,
        top_k INTEGER,
        seed BIGINT NOT NULL,
        steer_prompt BOOLEAN NOT NULL,
        prompt_source VARCHAR NOT NULL,
        prompts_hash VARCHAR NOT NULL,
        device VARCHAR NOT NULL,
        seconds DOUBLE NOT NULL,
        n_generated_tokens BIGINT NOT NULL,
        created_at TIMESTAMP NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS steering_prompts (
        run_id VARCHAR NOT NULL,
        prompt_index INTEGER NOT NULL,
        prompt VARCHAR NOT NULL,
        PRIMARY KEY (run_id, prompt_index)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS steering_conditions (
        run_id VARCHAR NOT NULL,
        condition_index INTEGER NOT NULL,
        coef DOUBLE,
        n INTEGER NOT NULL,
        rate_mean DOUBLE NOT NULL,
        rate_std DOUBLE,
        rate_sem DOUBLE,
        rate_ci_low DOUBLE,
        rate_ci_high DOUBLE,
        diff_mean DOUBLE,
        diff_sem DOUBLE,
        diff_ci_low DOUBLE,
        diff_ci_high DOUBLE,
        notebook_rate_mean DOUBLE NOT NULL,
        notebook_diff_mean DOUBLE,
        notebook_diff_ci_low DOUBLE,
        notebook_diff_ci_high DOUBLE,
        length_mean DOUBLE NOT NULL,
        length_std DOUBLE,
        think_close_share DOUBLE NOT NULL,
        eos_share DOUBLE NOT NULL,
        PRIMARY KEY (run_id, condition_index)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS steering_samples (
        run_id VARCHAR NOT NULL,
        condition_index INTEGER NOT NULL,
        prompt_index INTEGER NOT NULL,
        sample_index INTEGER NOT NULL,
        coef DOUBLE,
        n_tokens INTEGER NOT NULL,
        n_phrases INTEGER NOT NULL,
        rate DOUBLE NOT NULL,
        stopped_at_eos BOOLEAN NOT NULL,
        reached_think_close BOOLEAN NOT NULL,
        text VARCHAR NOT NULL,
        token_ids INTEGER[] NOT NULL,
        PRIMARY KEY (run_id, condition_index, prompt_index, sample_index)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS steering_phrase_counts (
        run_id VARCHAR NOT NULL,
        condition_index INTEGER NOT NULL,
        prompt_index INTEGER NOT NULL,
        sample_index INTEGER NOT NULL,
        group_name VARCHAR NOT NULL,
        n_phrases INTEGER NOT NULL,
        PRIMARY KEY (run_id, condition_index, prompt_index, sample_index, group_name)
    )
    """,
)
"""Created on the first steering write (a file without them reads as holding no steering runs)."""

STEERING_TABLE_NAMES = (
    "steering_phrase_counts", "steering_samples", "steering_conditions", "steering_prompts", "steering_runs",
)
"""The steering tables, in the order a run's rows are deleted."""

INJECTION_TABLES = (
    """
    CREATE TABLE IF NOT EXISTS injection_runs (
        sae_id VARCHAR PRIMARY KEY,
        hook_name VARCHAR NOT NULL,
        settings_json VARCHAR NOT NULL,
        n_candidates INTEGER NOT NULL,
        n_windows INTEGER NOT NULL,
        window_tokens INTEGER NOT NULL,
        strategies VARCHAR[] NOT NULL,
        seed BIGINT NOT NULL,
        token_source VARCHAR NOT NULL,
        n_windows_forwarded BIGINT NOT NULL,
        n_tokens_forwarded BIGINT NOT NULL,
        dtype VARCHAR NOT NULL,
        device VARCHAR NOT NULL,
        seconds DOUBLE NOT NULL,
        built_at TIMESTAMP NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS feature_injection (
        sae_id VARCHAR NOT NULL,
        feature_id INTEGER NOT NULL,
        strategy VARCHAR NOT NULL,
        n_windows INTEGER NOT NULL,
        baseline_mean DOUBLE NOT NULL,
        injected_mean DOUBLE NOT NULL,
        target_mean DOUBLE NOT NULL,
        cohens_d DOUBLE,
        p_value DOUBLE,
        transfer_ratio DOUBLE,
        null_mean DOUBLE,
        null_d DOUBLE,
        null_p DOUBLE,
        injected_tokens INTEGER[] NOT NULL,
        PRIMARY KEY (sae_id, feature_id, strategy)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS feature_injection_verdicts (
        sae_id VARCHAR NOT NULL,
        feature_id INTEGER NOT NULL,
        verdict VARCHAR NOT NULL,
        best_strategy VARCHAR NOT NULL,
        best_d DOUBLE,
        best_p DOUBLE,
        d_minus_null DOUBLE,
        PRIMARY KEY (sae_id, feature_id)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS injection_examples (
        sae_id VARCHAR NOT NULL,
        feature_id INTEGER NOT NULL,
        strategy VARCHAR,
        condition VARCHAR NOT NULL,
        rank INTEGER NOT NULL,
        text VARCHAR NOT NULL,
        token_ids INTEGER[] NOT NULL,
        activations FLOAT[] NOT NULL,
        PRIMARY KEY (sae_id, feature_id, condition, rank)
    )
    """,
)
"""Created on the first `inject` write (a file without them reads as holding no injection results)."""

INJECTION_TABLE_NAMES = ("injection_runs", "feature_injection", "feature_injection_verdicts", "injection_examples")
"""The injection tables: one SAE's rows of all four are replaced together."""

ALL_TABLES = (*CORE_TABLES, *FEATURE_TABLES, *STEERING_TABLES, *INJECTION_TABLES)
"""Every table the file can hold (docs/schema.md lists them)."""
