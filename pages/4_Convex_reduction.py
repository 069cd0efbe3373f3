"""Convex reduction: ψ along the q/p chain, the outer segments, the weights and the solvers' iterations."""

import numpy as np
import streamlit as st

import ui
from globalres import viz
from globalres.subset import outer_segments

METHODS = {"global_resolution": "Global Resolution (the paper, truncated)", "exact": "exact (truncation-free)"}

problem = ui.page_setup(
    "Convex reduction",
    "α* = 1 + min_H ψ(H), ψ(H) = p(H) − P(all n drafts in H) (= p(H) − q(H)ⁿ for i.i.d. drafts); the minimisers "
    "are prefixes of the tokens sorted by q/p (Lemma 6.3), and the outer targets follow a running minimum along "
    "the rest of the chain (Thm 6.2).")
a = ui.alpha(problem.key())
chain, segs = st.columns([3, 2], gap="large")
with chain:
    ui.chart(viz.psi_chain(problem), "psi_chain", "cx.psi")
with segs:
    st.subheader("Outer segments (Thm 6.2)")
    if problem.law != "iid":
        st.info("The outer segments and their targets are derived for i.i.d. drafts; switch the law to iid.")
    else:
        segments, masses, targets = outer_segments(problem)
        # short headers (the formulas below name them): at 1280 px the column holds ~280 px, and "targets t(v)"
        # was cut off
        st.dataframe({"Gₗ": [f"G{l + 1}" for l in range(len(segments))],
                      "tokens": [", ".join(problem.label(int(t)) for t in g) for g in segments],
                      "Mₗ": masses,
                      "t(v)": [", ".join(f"{targets[int(t)]:.4f}" for t in g) for g in segments]},
                     hide_index=True, width="stretch", column_config={  # pixels, scaled to the width
                         "Gₗ": st.column_config.TextColumn(width=44),
                         "tokens": st.column_config.TextColumn(width=80),
                         "Mₗ": st.column_config.NumberColumn(width=70, format="%.4f"),
                         "t(v)": st.column_config.TextColumn(width=80)})
        st.latex(r"M_l = Q(H_{r_l}^n) - Q(H_{r_{l+1}}^n)")  # two lines: one was cut off in this column
        st.latex(r"\rho(v) \propto p(v) - t(v)")
        st.caption("A segment receives the draft mass of tuples whose most under-drafted outer draft lies in "
                   "it; rejections are redrawn from the residual ρ.")

st.subheader("Solvers")
ui.bind(st.radio, "tau", "Global Resolution's tolerance τ (truncation and gradient; the paper uses 1e-3 and 1e-4)",
        options=ui.CHOICES["tau"], horizontal=True)
ITERATION = {"global_resolution": "L-BFGS-B iteration", "exact": "Newton iteration"}
OPTIONS = {"global_resolution": dict(tau=float(ui.state()["tau"])), "exact": {}}
cols = st.columns(len(METHODS), gap="large")
for col, (method, name) in zip(cols, METHODS.items()):
    with col:
        st.markdown(f"**{name}**")
        out = ui.solve(problem, method, **OPTIONS[method])
        if not ui.show_outcome(out):
            continue
        plan = out.plan
        # α's eight decimals take the column's width: beside the solve time they were cut (0.78084…)
        st.metric("α", f"{plan.acceptance:.8f}", delta=f"{plan.acceptance - a:+.1e} vs α*", delta_color="off",
                  delta_arrow="off")
        st.caption(f"solved in {ui.ms(out.seconds)}")
        certified = [f"{name} = **{plan.info[key]:.1e}**" for key, name in
                     (("certified_l1", "certified ‖output − p‖₁"), ("certified_gap", "certified |α − α*|"))
                     if key in plan.info]
        if certified:
            st.markdown("Solver's own bounds: " + ", ".join(certified))
        if method == "global_resolution":
            tau, info = plan.info["tau"], plan.info
            st.markdown(f"Truncation: |T_out| = {len(info['t_out'])}, ε_T = {info['eps_T']:.1e}; |T_in| = "
                        f"{len(info['t_in'])}, γ_T = {info['gamma_T']:.1e}. Lemma 6.6 promises ‖output − p‖₁ ≤ 15τ "
                        f"= {15 * tau:.1e} and |α − α*| ≤ 10τ = {10 * tau:.1e}.")
            if not info["gr_success"]:
                st.warning(plan.message)
        errors = ui.audit_errors(problem, method, **OPTIONS[method])
        if errors is not None:
            st.markdown(f"Exact enumeration: ‖output − p‖₁ = **{errors[0]:.2e}**, "
                        f"|acceptance − α*| = **{errors[1]:.2e}**")
        weights = ui.weights(plan)
        if weights is not None:
            inner = np.isin(np.arange(problem.V), plan.h_star if plan.h_star is not None else [])
            ui.chart(viz.token_weights(problem, weights, inner, "weights: w = e^b (inner, H*), e^a (outer)"),
                     f"weights_{method}", f"cx.w.{method}")
            if method == "global_resolution":
                st.caption("The inner weights of the exact rule are unique (its convex program is strictly "
                           "convex on H*); these solve Global Resolution's truncated program at τ, so they can "
                           "differ from the exact solver's by far more than α does.")
        objective, gradient = ui.series(plan.info), ui.series(plan.info, "gradient_norm")
        if objective:
            ui.chart(viz.traces(objective, f"objective per {ITERATION[method]}", "objective"), f"objective_{method}",
                     f"cx.obj.{method}")
        if gradient:
            ui.chart(viz.traces(gradient, "its error: gradient norm per iteration", "‖∇‖", log=True),
                     f"gradient_{method}", f"cx.grad.{method}")
        if not objective and not gradient:
            st.caption("No iterations were needed: every system is a singleton segment (deterministic rule).")
