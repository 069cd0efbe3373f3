"""globalres app — Home: what multi-draft speculative sampling is, one picture, the quick start.

Run with `make app` (or `streamlit run app.py`). Every page reads and writes one shared problem,
mirrored in the URL so that a link reproduces the exact state.
"""

import streamlit as st

import ui
from globalres import viz

problem = ui.page_setup("Optimal multi-draft speculative sampling",
                        "Companion app of “Global Resolution” (Thomas & Pal, arXiv 2511.15898)")

st.markdown(
    """
A small **draft** model q proposes n candidate next tokens ω = (x₁, …, xₙ); the large **target** model p
scores all of them in one pass. A **verifier** π(· | ω) then emits one token: it must be *lossless*, i.e. the
emitted token is exactly p-distributed whatever the draft, and we want it to be one of the drafts as often as
possible (its *acceptance* α). The best lossless verifier solves an optimal-transport linear program (OTLP)
whose optimum is **α\\* = 1 + min_H [p(H) − P(all n drafts in H)]** (p(H) − q(H)ⁿ for i.i.d. drafts), attained
at a token set H\\* found by one sorted scan.
This app solves that problem three ways — the full OTLP, a max-flow/min-cut, and the paper's convex reduction
(plus an exact, truncation-free solver) — and shows that they agree, side by side, for any p, q, n you choose.
"""
)
ui.chart(viz.pipeline(), "pipeline", "home.pipeline")

left, right = st.columns(2)
with left:
    st.subheader("Quick start")
    st.markdown(
        """
1. **Distributions**: pick a preset, random or logits, or edit p and q by hand; choose n and the draft law.
2. **OTLP / Max-flow / Convex reduction**: one formulation each, with its certificate.
3. **Side by side**: the three agree on α\\*. **Verifiers**: how far practical verifiers are from α\\*.
4. **Step through**: one sampling step, animated. **Real model**: real SmolLM2 next-token pairs.
   Copy the URL to share the exact state.
"""
    )
    st.code("make app            # or: streamlit run app.py", language="bash")
with right:
    st.subheader("In Python")
    st.code(
        """import globalres as gr
pb = gr.Problem([0.5, 0.3, 0.2], [0.2, 0.3, 0.5], n=2)
gr.alpha_star(pb)                  # 0.86
plan = gr.solve(pb, method="lp")   # the full OTLP
plan.audit().l1                    # 0.0: lossless""",
        language="python",
    )
st.caption(f"Current problem: V = {problem.V}, n = {problem.n}, law = {problem.law}, "
           f"α* = {ui.alpha(problem.key()):.6f}.")
