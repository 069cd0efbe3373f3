"""Side by side: the OTLP, the max-flow and the convex reduction on one instance, agreeing on α*."""

import streamlit as st

import ui
from globalres import viz

problem = ui.page_setup("Side by side", "The OTLP, the max-flow and the convex reduction of one problem: "
                                        "they must agree on α*.")
a = ui.alpha(problem.key())
views = {"OTLP (full LP)": ui.solve(problem, "lp"),
         "Max-flow": ui.solve(problem, "maxflow"),
         "Convex reduction": ui.solve(problem, "exact")}
if not views["Convex reduction"].ok and ui.available("global_resolution"):
    views["Convex reduction"] = ui.solve(problem, "global_resolution")

found = {name: out.plan.acceptance for name, out in views.items() if out.ok}
found["sorted scan"] = a
spread = max(found.values()) - min(found.values())
if len(found) > 1 and spread <= 1e-7:
    st.success(f"All {len(found)} agree: α* = {a:.8f} (largest difference {spread:.1e}).")
elif len(found) > 1:
    st.error(f"The methods disagree by {spread:.2e}: " + ", ".join(f"{k} {v:.8f}" for k, v in found.items()))

cols = st.columns(3, gap="medium")
for col, (name, out) in zip(cols, views.items()):
    with col:
        st.subheader(name)
        if out.method in ("exact", "global_resolution") and not out.ok:
            # the ψ chain needs no solver: show it with the sorted scan's α*
            ui.show_outcome(out)
            st.markdown(f"α* (sorted scan) = **{a:.8f}**")
            ui.chart(viz.psi_chain(problem).update_layout(height=420, showlegend=False, title="ψ chain and H*")
                     .update_xaxes(title="prefix by q/p ↓"),
                     "side_psi", "sbs.psi")
            continue
        if not ui.show_outcome(out):
            continue
        plan = out.plan
        st.markdown(f"α = **{plan.acceptance:.8f}** · solved in **{ui.ms(out.seconds)}**")
        if out.method == "lp":
            fig = viz.plan_heatmap(plan, title="plan C")
        elif out.method == "maxflow":
            fig = viz.flow_network(problem, plan.info["groups"], plan.info["group_probs"], plan.info["flow"],
                                   plan.h_star, title="flow network, min cut")
            fig.update_traces(text=None, selector=dict(name="draft multisets"))  # no room for labels here
        else:  # a third of the page: the axis title short enough not to be cut
            fig = viz.psi_chain(problem).update_layout(title="ψ chain and H*").update_xaxes(title="prefix by q/p ↓")
        fig.update_layout(height=min(fig.layout.height or 420, 560), showlegend=False)
        ui.chart(fig, f"side_{out.method}", f"sbs.{out.method}")
st.caption(f"H* = {{{', '.join(problem.label(i) for i in ui.hstar(problem.key()))}}} · "
           f"α* − 1 = ψ(H*) = {a - 1:.6f} · solve times are the first (uncached) solve.")
