"""Home: what is loaded, and what each page is for."""

import streamlit as st

from explorer import ui
from explorer.database import DatabaseError
from explorer.feature_db import read_index_runs
from explorer.runs import database_path

st.set_page_config(page_title="Backtracking feature explorer", page_icon="↩", layout="wide")
st.title("Backtracking feature explorer")
st.caption("Find the SAE features that carry backtracking (\"Wait, I made a mistake\") in reasoning models.")

run_dir = ui.pick_run_or_stop()
summary = ui.load_run_summary(run_dir)
if summary is None:
    st.stop()

profile = summary.profile
left, right = st.columns(2)
with left:
    st.subheader("Run")
    st.markdown(
        f"- **Folder:** `{run_dir}`\n- **Profile:** `{profile.name}`\n- **Model:** `{profile.model}`\n"
        f"- **Hook:** `{profile.hook_name}`\n- **Corpus:** `{profile.corpus.source}`"
    )
with right:
    st.subheader("Corpus")
    corpus = summary.corpus_summary
    if corpus is None:
        st.warning("The corpus stage has not run: `python -m precompute corpus`.")
    else:
        built = (summary.corpus_manifest or {}).get("finished_at", "?")
        st.markdown(
            f"- **Traces:** {corpus['n_documents']:,} (built {built})\n"
            f"- **With backtracking** (notebook's six groups): {corpus['n_with_backtracking']:,}\n"
            f"- **With an interjection** (Wait, Hmm, ...): {corpus['n_with_interjection']:,}"
        )
        st.dataframe({"group": list(corpus["phrases_per_group"]), "phrases": list(corpus["phrases_per_group"].values())}, hide_index=True)

report = summary.train_report
if report is not None:
    st.subheader("Demo model")
    st.markdown(
        f"{report['n_params']:,} parameters, {report['steps']:,} steps in {report['seconds']:.0f} s. "
        f"Final train loss {report['final_train_loss']:.3f}, held-out loss {report['heldout_loss']:.3f} nats/token."
    )
    ui.render_loss_curve(report)
    with st.expander("Greedy sample from the demo model"):
        st.code(report["sample_text"], language=None)

saes = ui.load_sae_reports(run_dir)
if saes is not None:
    st.subheader("SAEs")
    st.caption(
        "Measured on held-out tokens: L0 (active features per token), explained variance, dead and dense "
        "features, and CE loss recovered (1 = splicing the SAE in costs nothing, 0 = as bad as zero-ablating the hook)."
    )
    columns = ["sae_id", "hook_name", "architecture", "d_sae", "l0", "mse", "explained_variance", "frac_dead", "frac_dense", "ce_loss_recovered", "n_tokens", "n_sparsity_tokens"]
    st.dataframe(saes[columns], hide_index=True)
    sae_id = st.selectbox("Training curve of", saes["sae_id"].tolist(), key="curve_sae")
    ui.render_sae_training_curve(run_dir, sae_id)

st.subheader("Feature index")
try:
    index_runs = read_index_runs(database_path(run_dir)) if database_path(run_dir).is_file() else None
except DatabaseError as err:
    st.error(str(err))
    index_runs = None
if index_runs is None or index_runs.empty:
    st.info(f"No feature index yet: build it with `python -m precompute index --out {run_dir}` (or `make demo-data`).")
else:
    st.caption(
        "Every feature of each SAE, indexed in one streaming pass: top examples, quantile samples, histograms, "
        "logit lens, nearest features and backtracking scores (docs/schema.md)."
    )
    columns = ["sae_id", "d_sae", "n_tokens", "n_documents", "n_windows", "top_k", "device", "seconds", "tokens_per_second", "built_at"]
    st.dataframe(index_runs[columns], hide_index=True)

st.subheader("Pages")
st.markdown(
    "- **Corpus**: read any trace with its labelled backtracking phrases marked.\n"
    "- **Live**: type or paste a chain of thought and see each SAE feature's activation on each token.\n"
    "- **Features**: find a feature (by id, by a token it promotes or fires on, or by a text) and read its card: "
    "examples, histogram, logit lens, neighbours and backtracking evidence.\n"
    "- **Candidates**: features ranked by a backtracking score, with their lead-lag profiles.\n"
    "- **Steering**: add or clamp a feature while the model generates, and count how often it backtracks."
)
