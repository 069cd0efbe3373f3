"""Verifiers: every practical verifier's acceptance against α*, a Monte Carlo check, and losslessness."""

import pandas as pd
import streamlit as st

import ui
from globalres import viz

problem = ui.page_setup("Verifiers", "Acceptance P(output ∈ drafts) of each verifier for this problem, "
                                     "against the optimum α*.")
a = ui.alpha(problem.key())
tau = float(ui.state()["tau"])  # Global Resolution's τ, as chosen on Convex reduction (shared state, in the URL)
OPTIONS = {"global_resolution": dict(tau=tau)}
names, accs, lossless, rows, missing = [], [], [], [], []
for method in ("exact", "lp", "global_resolution") + ui.VERIFIERS:
    out = ui.solve(problem, method, **OPTIONS.get(method, {}))
    if out.missing:
        missing.append(method)
        continue
    if not out.ok:
        rows.append({"verifier": method, "acceptance": None, "‖output − p‖₁": None, "lossless": "—",
                     "note": out.note})
        continue
    errors = ui.audit_errors(problem, method, **OPTIONS.get(method, {}))
    ok = errors is None or errors[0] <= 1e-6
    names.append(method)
    accs.append(out.plan.acceptance)
    lossless.append(ok)
    rows.append({"verifier": method, "acceptance": out.plan.acceptance,
                 "‖output − p‖₁": None if errors is None else errors[0],
                 "lossless": ("not checked" if errors is None else "✓ yes" if ok else "✗ no"),
                 "note": (f"truncated (τ = {ui.state()['tau']}, set on Convex reduction): Lemma 6.6 allows "
                          f"‖output − p‖₁ ≤ {15 * tau:.1e}"
                          if method == "global_resolution"
                          else "" if errors is not None else f"more than {ui.MAX_AUDIT:,} draft tuples")})

left, right = st.columns(2, gap="large")
with left:
    if names:
        ui.chart(viz.acceptance_bars(names, accs, a, lossless), "verifier_acceptance", "ver.bars")
    # a Styler, for its na_rep: a missing number printed "None"; the note, the longest text, gets the room
    table = pd.DataFrame(rows).style.format({"acceptance": "{:.6f}", "‖output − p‖₁": "{:.1e}"}, na_rep="—")
    st.dataframe(table, hide_index=True, width="stretch", column_config={
        "verifier": st.column_config.TextColumn(width="small"), "lossless": st.column_config.TextColumn(width="small"),
        "note": st.column_config.TextColumn(width="large")})
    if missing:
        st.info("Not available in this installation yet: " + ", ".join(missing) + ".")
with right:
    st.subheader("Monte Carlo")
    if not names:
        st.info("No verifier could be solved for this problem.")
        st.stop()
    s = ui.state()
    method = st.selectbox("verifier", names, key=ui.wkey("mc.method"))
    c1, c2 = st.columns(2)
    with c1:
        ui.bind(st.number_input, "mc", "sampling steps", min_value=100, max_value=200_000, step=1000)
    with c2:
        ui.bind(st.number_input, "ms", "seed", min_value=0, step=1)
    with st.spinner("Sampling…"):
        counts = ui.monte_carlo(problem.key(), method, int(s["mc"]), int(s["ms"]), OPTIONS.get(method, {}))
    ui.chart(viz.mc_histogram(problem, counts), "monte_carlo", "ver.mc")
    errors = ui.audit_errors(problem, method, **OPTIONS.get(method, {}))
    if errors is None:
        st.info(f"More than {ui.MAX_AUDIT:,} draft tuples: losslessness not checked by enumeration here.")
    elif errors[0] <= 1e-6:
        st.success(f"Lossless by exact enumeration of all draft tuples: ‖output law − p‖₁ = {errors[0]:.1e}.",
                   icon=":material/check_circle:")
    else:
        st.error(f"Not lossless: ‖output law − p‖₁ = {errors[0]:.3e} by exact enumeration.", icon=":material/cancel:")
