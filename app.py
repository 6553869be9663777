"""Home: what is loaded, and what each page is for."""

import streamlit as st

from explorer import ui

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
        f"- **Folder:** `{run_dir}`\n- **Profile:** `{profile['name']}`\n- **Model:** `{profile['model']}`\n"
        f"- **Hook:** `{profile['hook_name']}`\n- **Corpus:** `{profile['corpus']['source']}`"
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
    columns = ["sae_id", "hook_name", "architecture", "d_sae", "l0", "mse", "explained_variance", "frac_dead", "frac_dense", "ce_loss_recovered", "n_tokens"]
    st.dataframe(saes[columns], hide_index=True)
    sae_id = st.selectbox("Training curve of", saes["sae_id"].tolist(), key="curve_sae")
    ui.render_sae_training_curve(run_dir, sae_id)

st.subheader("Pages")
st.markdown(
    "- **Corpus**: read any trace with its labelled backtracking phrases marked.\n"
    "- **Live**: type or paste a chain of thought and see each SAE feature's activation on each token."
)
