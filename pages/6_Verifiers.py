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
names, accs, lossless, rows, missing, unsolved = [], [], [], [], [], []
for method in ("exact", "lp", "global_resolution") + ui.VERIFIERS:
    out = ui.solve(problem, method, **OPTIONS.get(method, {}))
    if out.missing:
        missing.append(method)
        continue
    if not out.ok:
        unsolved.append(f"**{method}**: {out.note}")
        continue
    errors = ui.audit_errors(problem, method, **OPTIONS.get(method, {}))
    ok = errors is None or errors[0] <= 1e-6
    names.append(method)
    accs.append(out.plan.acceptance)
    lossless.append(ok)
    rows.append({"verifier": method, "acceptance": out.plan.acceptance,
                 "‖output − p‖₁": None if errors is None else errors[0],  # None for all or none: V**n decides
                 "lossless": ("not checked" if errors is None else "✓ yes" if ok else "✗ no"),
                 "note": (f"truncated at τ = {ui.state()['tau']}: ‖output − p‖₁ ≤ {15 * tau:.1e} (Lemma 6.6)"
                          if method == "global_resolution"
                          else "" if errors is not None else f"more than {ui.MAX_AUDIT:,} draft tuples")})

left, right = st.columns(2, gap="large")
with left:
    if names:
        ui.chart(viz.acceptance_bars(names, accs, a, lossless), "verifier_acceptance", "ver.bars")
    if missing:
        st.info("Not available in this installation yet: " + ", ".join(missing) + ".")
with right:
    st.subheader("Monte Carlo")
    if not names:
        st.info("No verifier could be solved for this problem.")
    else:
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
            st.error(f"Not lossless: ‖output law − p‖₁ = {errors[0]:.3e} by exact enumeration.",
                     icon=":material/cancel:")

# the whole width: in half of it the note column was cut; an empty number cell printed "None", so verifiers
# without a plan are listed under the table, and an unchecked ‖output − p‖₁ column is left out
table = pd.DataFrame(rows)
if not table.empty and table["‖output − p‖₁"].isna().all():
    table = table.drop(columns="‖output − p‖₁")
st.dataframe(table, hide_index=True, width="stretch", column_config={  # pixels, scaled to the width
    "verifier": st.column_config.TextColumn(width=140),
    "acceptance": st.column_config.NumberColumn(format="%.6f", width=90),
    "‖output − p‖₁": st.column_config.NumberColumn(format="%.1e", width=90),
    "lossless": st.column_config.TextColumn(width=90), "note": st.column_config.TextColumn(width=400)})
if unsolved:
    st.markdown("Not solved for this problem:\n" + "\n".join(f"- {line}" for line in unsolved))
