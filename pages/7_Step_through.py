"""Step through: one sampling step, stage by stage, with the formulas next to the numbers."""

import time

import streamlit as st

import ui
from globalres import viz
from globalres.subset import outer_segments

STAGES = {1: "drafts drawn", 2: "inner or outer case", 3: "weights → π(·|ω)", 4: "output or rejection"}

problem = ui.page_setup("Step through one sampling step",
                        "Drafts ω ~ Q, then the optimal rule π(·|ω): accept a draft, or reject and redraw.")
s = ui.state()
# the exact solver's rule is the one described here; the others stand in where it does not apply
for method in ("exact", "opt_maxflow", "lp"):
    out = ui.solve(problem, method)
    if out.ok:
        break
if not ui.show_outcome(out):
    st.stop()
plan = out.plan


def _next_seed() -> None:
    ui.replace_state({"ss": s["ss"] + 1, "stage": 1})


c1, c2, c3, c4 = st.columns([1, 2, 1, 1])
with c1:
    ui.bind(st.number_input, "ss", "seed", min_value=0, step=1)
with c2:
    ui.bind(st.select_slider, "stage", "stage", options=list(STAGES), format_func=lambda k: f"{k}. {STAGES[k]}")
with c3:
    st.button("New drafts", on_click=_next_seed, width="stretch")
with c4:
    play = st.button("▶ Play", type="primary", width="stretch")

drafts, pi, output = ui.step(plan, int(s["ss"]))
H = set(ui.hstar(problem.key()))
label = problem.label
inner = all(int(x) in H for x in drafts)
accepted = output in set(drafts.tolist())
omega = "(" + ", ".join(label(int(x)) for x in drafts) + ")"

board = st.empty()


def draw(stage: int) -> None:
    with board.container():
        left, right = st.columns([2, 3], gap="large")
        with left:
            st.markdown(f"#### 1. Drafts ω = {omega}")
            st.latex(r"Q(\omega) = " + (r"\prod_j q(x_j) = " if problem.law == "iid" else "")
                     + f"{problem.tuple_probability(drafts):.5f}")
            if stage >= 2:
                st.markdown(f"#### 2. {'Inner' if inner else 'Outer'} case")
                hs = "{" + ", ".join(label(i) for i in sorted(H)) + "}"
                if inner:
                    st.markdown(f"Every draft lies in H* = {hs}: rejection is possible.")
                    st.latex(r"\omega \in (H^*)^n")
                else:
                    seg = ""
                    if problem.law == "iid":
                        segments = outer_segments(problem)[0]
                        l = min(i for i, g in enumerate(segments) if set(g.tolist()) & set(drafts.tolist()))
                        seg = f" Its most under-drafted outer draft lies in segment G{l + 1} = {{" + ", ".join(
                            label(int(t)) for t in segments[l]) + "}."
                    st.markdown(f"Some draft lies outside H* = {hs}: a draft is always accepted.{seg}")
                    st.latex(r"\omega \notin (H^*)^n \Rightarrow P(\text{accept} \mid \omega) = 1")
            if stage >= 3:
                st.markdown("#### 3. Weights → π(·|ω)")
                if inner:
                    st.latex(r"\pi(x \mid \omega) = \frac{\sum_{j:\,x_j = x} w_{x_j}}{1 + \sum_k w_{x_k}}")
                    st.latex(r"P(\text{reject} \mid \omega) = \frac{1}{1 + \sum_k w_{x_k}}")
                else:
                    st.latex(r"\pi(x_j \mid \omega) \propto w_{x_j},\ x_j \in G_l")
                w = ui.weights(plan)
                if w is not None:
                    st.markdown("weights: " + ", ".join(f"w({label(i)}) = {w[i]:.4g}"
                                                        for i in sorted(set(drafts.tolist()))))
                p_acc = float(sum(pi[i] for i in set(drafts.tolist())))
                terms = ", ".join(f"π({label(i)}|ω) = {pi[i]:.4f}" for i in sorted(set(drafts.tolist())))
                st.markdown(f"{terms}; P(accept | ω) = **{p_acc:.4f}**, P(reject | ω) = **{1 - p_acc:.4f}**")
            if stage >= 4:
                st.markdown("#### 4. Output")
                if accepted:
                    st.success(f"Accepted draft **{label(output)}**.")
                else:
                    st.warning(f"Rejected: **{label(output)}** drawn from the residual ρ ∝ p − t "
                               f"(outer tokens only).")
                if inner and problem.law == "iid":  # the residual a rejection draws from
                    rho = ui.residual(problem)
                    if rho is not None:
                        st.markdown("ρ = " + ", ".join(f"ρ({label(i)}) = {rho[i]:.4f}"
                                                       for i in range(problem.V) if rho[i] > 0))
        with right:
            if stage >= 3:
                st.plotly_chart(viz.step_bars(problem, drafts, pi, output if stage >= 4 else None),
                                key=f"chart.step.{stage}.{time.monotonic_ns()}")
            else:
                st.plotly_chart(viz.distributions(problem, sorted(H)), key=f"chart.step.dist.{stage}."
                                                                            f"{time.monotonic_ns()}")


if play:
    for stage in STAGES:
        draw(stage)
        time.sleep(0.8)
    ui.replace_state({"stage": max(STAGES)})  # the slider and the URL follow the animation to its last stage
    st.rerun()
else:
    draw(int(s["stage"]))
st.caption(f"π(·|ω) from the {method!r} plan (acceptance {plan.acceptance:.6f}, α* = "
           f"{ui.alpha(problem.key()):.6f}). Seed and stage are in the URL.")
