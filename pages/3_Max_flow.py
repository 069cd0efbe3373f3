"""Max-flow: the network Ω of the paper's §2.4, its flow and the min cut H*."""

import numpy as np
import streamlit as st

import ui
from globalres import viz

MAX_DRAWN = 400  # nodes beyond this make an unreadable (and slow) picture

problem = ui.page_setup(
    "Max-flow and the min cut",
    "s → token i (capacity p(i)) → draft multiset ω ∋ i (∞) → t (capacity Q(ω)). "
    "max-flow = α*; a cut with token side H costs 1 + ψ(H).")
a = ui.alpha(problem.key())
H_scan = ui.hstar(problem.key())
out = ui.solve(problem, "maxflow")
main, side = st.columns([3, 1], gap="large")
with side:
    st.subheader("Subset selection")
    st.metric("α* = 1 + min_H ψ(H)", f"{a:.6f}")
    st.markdown("H* (sorted scan) = " + ui.set_text(problem, H_scan))
    if out.ok:
        plan = out.plan
        st.metric("max-flow value", f"{plan.info['flow_value']:.6f}",
                  delta=f"{plan.info['flow_value'] - a:+.1e} vs α*", delta_color="off", delta_arrow="off")
        st.metric("min-cut value", f"{plan.info['cut_value']:.6f}")
        st.metric("solve time", ui.ms(out.seconds))
        same = sorted(plan.h_star.tolist()) == sorted(H_scan)
        cut = ui.set_text(problem, sorted(plan.h_star.tolist()))
        (st.success if same else st.warning)(f"min cut's token side = {cut}" + (" = H*" if same else
                                                                                  " ≠ H* (a tie)"))
    sliced = ui.solve(problem, "opt_maxflow")
    st.subheader("Optimised max-flow")
    if not sliced.ok and sliced.note == out.note:
        st.caption("The same size limit as the max-flow (left).")
    elif ui.show_outcome(sliced):
        st.metric("α (one slice per tuple)", f"{sliced.plan.acceptance:.6f}")
        st.caption("Solves only the inner (ω ⊆ H*) or the outer slice of the network, whichever the "
                   "observed tuple needs (Thm 5.1).")
with main:
    if ui.show_outcome(out):
        plan = out.plan
        nodes = problem.V + len(plan.info["groups"]) + 2
        if nodes > MAX_DRAWN:
            st.info(f"The network has {nodes:,} nodes, too many to draw readably (limit {MAX_DRAWN}); lower V "
                    f"or n to see it.")
        else:
            ui.chart(viz.flow_network(problem, plan.info["groups"], plan.info["group_probs"], plan.info["flow"],
                                      plan.h_star, title=f"Ω: flow value {plan.info['flow_value']:.6f}"),
                     "maxflow_network", "mf.net")
        st.dataframe({"token": [problem.label(i) for i in range(problem.V)], "p": problem.p,
                      "flow out of s": np.asarray(plan.info["flow"]).sum(axis=1),
                      "sink side (H*)": [i in set(plan.h_star.tolist()) for i in range(problem.V)]},
                     hide_index=True, width="stretch")
        ui.download_plan(plan, "mf.csv")
