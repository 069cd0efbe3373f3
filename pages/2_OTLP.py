"""OTLP: the full optimal-transport plan, and the relaxed OTLP with the Eq. 18 reconstruction."""

import streamlit as st

import ui
from globalres import viz

problem = ui.page_setup(
    "OTLP: the optimal transport plan",
    "max Σ_i Σ_{ω∋i} C[i, ω]  s.t.  Σ_ω C[i, ω] = p(i),  Σ_i C[i, ω] = Q(ω); draft tuples grouped by multiset.")
with st.sidebar:
    ui.bind(st.selectbox, "be", "LP solver", options=["highs", "pot", "cvxpy"],
            help="highs: scipy's HiGHS simplex · pot: POT's exact network simplex (ot.emd) · "
                 "cvxpy: Clarabel interior point. The relaxed LP uses HiGHS unless cvxpy is chosen.")
backend = ui.state()["be"]
a = ui.alpha(problem.key())
full = ui.solve(problem, "lp", backend=backend)
relaxed = ui.solve(problem, "relaxed_lp", backend="cvxpy" if backend == "cvxpy" else "highs")

left, right = st.columns(2, gap="large")
with left:
    st.subheader("Full OTLP")
    if ui.show_outcome(full):
        plan = full.plan
        c1, c2 = st.columns(2)  # two metrics a column: α's six decimals are what the pages compare
        c1.metric("α (LP)", f"{plan.acceptance:.6f}", delta=f"{plan.acceptance - a:+.1e} vs α*",
                  delta_color="off", delta_arrow="off")
        c2.metric("variables", f"{plan.info['variables']:,}")
        st.caption(f"solved in {ui.ms(full.seconds)}")
        ui.chart(viz.plan_heatmap(plan), "otlp_plan", "otlp.full")
        ui.download_plan(plan, "otlp.csv")
with right:
    st.subheader("Relaxed OTLP → reconstruction (Eq. 18)")
    if not relaxed.ok and relaxed.note == full.note:
        st.caption("The same size limit as the full OTLP (left).")
    elif ui.show_outcome(relaxed):
        plan = relaxed.plan
        c1, c2 = st.columns(2)
        c1.metric("Σ S (relaxed)", f"{plan.info['relaxed_value']:.6f}")
        c2.metric("α (rebuilt C)", f"{plan.acceptance:.6f}")
        st.caption(f"solved in {ui.ms(relaxed.seconds)}")
        st.latex(r"C^* = S^* + \frac{p_{\rm res} \otimes Q_{\rm res}}{\sum_j p_{\rm res}(j)}")
        ui.chart(viz.plan_heatmap(plan, "relaxed"), "relaxed_S", "otlp.relaxed")
        ui.chart(viz.plan_heatmap(plan, "plan", title="Reconstructed plan C*"), "relaxed_C", "otlp.rebuilt")
        ui.chart(viz.residuals(plan), "residuals", "otlp.res")
        ui.download_plan(plan, "otlp.relaxed.csv")
st.caption("Outlined cells: the output token is one of the drafts, so the mass inside the outlines is the "
           "accepted mass α. Hover a cell for its mass C[i, ω] and the conditional π(i | ω) = C[i, ω] / Q(ω).")
