"""The feature index's tables in the run's DuckDB file (DDL only; docs/schema.md documents them).

Every feature table is keyed by `(sae_id, feature_id, ...)`. Per-SAE facts about the pass itself live
in `feature_index_runs`; the corpus windows examples point into live in `index_contexts`; token
strings in `vocabulary`.
"""

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
)

FEATURE_TABLE_NAMES = (
    "feature_index_runs", "index_contexts", "feature_activation_stats", "feature_histograms",
    "feature_top_examples", "feature_interval_samples", "feature_logit_lens", "feature_neighbours",
    "feature_backtracking_scores", "feature_group_auroc", "feature_lead_lag", "feature_reason_word_shares",
    "index_label_sets", "feature_label_scores", "feature_label_lead_lag",
)
"""The tables holding one SAE's index (deleted and rewritten together). `vocabulary` is shared."""
