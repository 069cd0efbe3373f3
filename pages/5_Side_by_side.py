"""Side by side: the OTLP, the max-flow and the convex reduction on one instance, agreeing on α*."""

import streamlit as st

import ui
from globalres import viz

problem = ui.page_setup("Side by side", "The OTLP, the max-flow and the convex reduction of one problem: "
                                        "they must agree on α*.")
a = ui.alpha(problem.key())


def _psi_chain():
    """The ψ chain for a third of the page: a short axis title, and no label on H* (cut at the column's edge;
    α* is in the line above)."""
    return (viz.psi_chain(problem).update_layout(title="ψ chain and H*", showlegend=False)
            .update_xaxes(title="prefix by q/p ↓").update_traces(mode="markers", selector=dict(name="H*")))

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

cols = st.columns(3, gap="small")
for col, (name, out) in zip(cols, views.items()):
    with col:
        # bold text, not a subheader: "Convex reduction" wrapped in a third of 1100 px, and the columns lost step
        st.markdown(f"**{name}**")
        if out.method in ("exact", "global_resolution") and not out.ok:
            # the ψ chain needs no solver: show it with the sorted scan's α*
            ui.show_outcome(out)
            st.markdown(f"α* (sorted scan) = **{a:.8f}**")
            ui.chart(_psi_chain().update_layout(height=420), "side_psi", "sbs.psi")
            continue
        if not ui.show_outcome(out):
            continue
        plan = out.plan
        st.markdown(f"α = **{plan.acceptance:.8f}**")
        st.caption(f"solved in {ui.ms(out.seconds)}")  # on the line of α it wrapped in two columns of three
        if out.method == "lp":
            fig = viz.plan_heatmap(plan, title="plan C")
            # no colour bar (hover a cell for its mass): the cells get the width to show their values
            fig.update_traces(showscale=False, textfont_size=viz.FONT - 4, selector=dict(type="heatmap"))
            fig.update_yaxes(title=None, tickfont_size=viz.FONT - 4).update_layout(margin=dict(l=0, r=0))
        elif out.method == "maxflow":
            fig = viz.flow_network(problem, plan.info["groups"], plan.info["group_probs"], plan.info["flow"],
                                   plan.h_star, title="min cut", compact=True)
        else:
            fig = _psi_chain()
        fig.update_layout(height=min(fig.layout.height or 420, 560), showlegend=False)
        ui.chart(fig, f"side_{out.method}", f"sbs.{out.method}")
st.caption(f"H* = {ui.set_text(problem, ui.hstar(problem.key()))} · "
           f"α* − 1 = ψ(H*) = {a - 1:.6f} · solve times are the first (uncached) solve.")
