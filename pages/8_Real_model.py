"""Real model: target and draft next-token laws of SmolLM2-135M (full model vs. its trained early exit)."""

import streamlit as st

import globalres as gr
import ui
from globalres import viz

ui.page_setup("Real model: SmolLM2-135M and its early-exit draft",
              "Real next-token distributions at positions of real text, bundled with the package "
              "(no model needed). The draft is cut to its top-k; the other tokens are folded into one.",
              stop_on_error=False)  # this page builds its own problems: a bad shared one must not stop it
s = ui.state()
pairs = ui.real_pairs()
if isinstance(pairs, gr.InputError):
    st.info(f"The bundled real pairs could not be loaded: {pairs}")
    st.stop()

c1, c2 = st.columns([1, 3])
with c1:
    ui.bind(st.selectbox, "rc", "kind of text", options=["all", "prose", "code", "list", "chat"])
    positions = pairs.indices(None if s["rc"] == "all" else s["rc"]).tolist()
    if not positions:
        st.info(f"No {s['rc']} positions in this bundle; choose another kind of text.")
        st.stop()
    if s["ri"] not in positions:
        s["ri"] = positions[0]
    ui.bind(st.selectbox, "ri", "position", options=positions,
            format_func=lambda i: f"#{i}: …{pairs.context(i)[-40:]!r}")
    ui.bind(st.slider, "rk", "draft top-k", min_value=1, max_value=ui.MAX_K_REAL)
i, n, k = int(s["ri"]), int(s["n"]), int(s["rk"])
with c2:
    st.markdown(f"**Context** ({pairs.category(i)}), ending where the models predict the next token:")
    st.code(pairs.context(i)[-700:], language=None, wrap_lines=True)
    st.markdown(f"The target then produced **{pairs.token(int(pairs.next_tokens[i]))!r}**.")

real = gr.Problem.from_key(ui.real_problem_key(i, n, k))
a = ui.alpha(real.key())
out = ui.solve(real, "exact")
m1, m2, m3, m4 = st.columns(4)
m1.metric(f"α* (n = {n}, top-{k})", f"{a:.6f}")
m2.metric("one draft: Σ min(p, q)", f"{ui.alpha(real.with_(n=1).key()):.6f}")
if out.ok:
    m3.metric("exact solver", f"{out.plan.acceptance:.6f}")
    m4.metric("solve time", ui.ms(out.seconds))
else:
    ui.show_outcome(out)
st.caption("These are this position's numbers; the sidebar's α* is the shared problem's, the one the other "
           "pages show (\"Explore this pair\" below makes this pair the shared one).")

left, right = st.columns([3, 2], gap="large")
with left:
    ui.chart(viz.distributions(real, ui.hstar(real.key())), "real_distributions", "real.bars")
with right:
    ns = list(range(1, ui.MAX_N + 1))
    alphas = [ui.alpha(ui.real_problem_key(i, m, k)) for m in ns]
    ui.chart(viz.alpha_curve(ns, alphas, alphas[0], f"α* against n (top-{k})"),
             "real_alpha_curve", "real.curve")

st.subheader("Every verifier at this position")
LAW = {"rrs_wor": "wor", "greedy": "greedy", "spechub": "hub"}  # verifiers built for another draft law
names, accs = [], []
for method in ("exact",) + ui.VERIFIERS:
    law = LAW.get(method, "iid")
    try:
        pb = gr.Problem.from_key(ui.real_problem_key(i, n, k, law))
    except gr.InputError:  # e.g. fewer drafted tokens than n drafts without replacement
        continue
    verdict = ui.solve(pb, method)
    if verdict.ok:
        names.append(method if law == "iid" else f"{method} ({law} drafts)")
        accs.append(verdict.plan.acceptance)
bars, curve = st.columns(2, gap="large")  # at 2 : 3 the bars' values and both titles were cut at 1100 px
with bars:
    ui.chart(viz.acceptance_bars(names, accs, a).update_layout(title="Acceptance"), "real_verifiers",
             "real.verifiers")
    st.caption("Verifiers that need one draft (sps) or two (spechub) appear at that n only. Those drafting by "
               "another law can pass the i.i.d. α*: the law itself changes the optimum.")
with curve:
    ks = (1, 10, 100, 1000, pairs.V)
    ui.chart(viz.alpha_topk(ks, ui.real_alpha_topk(i, ks, (1, 2, 4, 8, 16)), pairs.V,
                            "α* against the draft's top-k"), "real_alpha_topk", "real.topk")
    st.caption("Mean over all bundled positions, and every verifier: `bench/acceptance_curves.py`.")

st.subheader("Live decoding: type a prompt")
from globalres import live  # noqa: E402  (light: the model libraries load only when decoding)

ready, why = live.available()
if not ready:
    st.info(f"Live mode is an optional install. {why}")
else:
    with st.form("live"):
        prompt = st.text_input("prompt", "Write a haiku about rain.")
        f1, f2, f3 = st.columns(3)
        method = f1.selectbox("verifier", ["exact", "kseq", "rrs", "naive", "nss", "global_resolution"])
        new_tokens = f2.slider("new tokens", 4, 64, 24)
        draft_len = f3.slider("draft length (tokens per branch)", 1, 3, 2)
        start = st.form_submit_button(f"Decode with n = {n} drafts, draft top-{k}", type="primary")
    if start:
        with st.spinner("Loading SmolLM2-135M and its draft (about 15 s the first time)…"):
            pair = ui.live_pair()
        bar = st.progress(0.0, text=f"Decoding: the first round of {n} draft branches and a target call…")
        box, decoded = st.empty(), []
        try:
            for token in live.decode(pair, prompt, n=n, method=method, draft_len=draft_len,
                                     max_new_tokens=new_tokens, top_k=k):
                decoded.append(token)
                box.markdown(viz.live_html(decoded), unsafe_allow_html=True)
                bar.progress(min(len(decoded) / new_tokens, 1.0), text=f"{len(decoded)} of {new_tokens} tokens")
        except gr.InputError as err:
            st.error(str(err))
        bar.empty()
        totals = live.summary(decoded)
        l1, l2, l3 = st.columns(3)
        l1.metric("tokens per target call", f"{totals['tokens_per_call']:.2f}")
        l2.metric("verified positions accepted", f"{totals['accepted_share']:.0%}")
        l3.metric("verifier time per token", f"{totals['solver_ms_per_token']:.1f} ms")
        st.caption("Green: one of the drafts was accepted; vermillion: resampled from the residual (ends the "
                   "round); blue: the bonus token after a fully accepted branch. Every token is exactly "
                   "target-distributed. Stop (top right) cancels a decode.")


def _use() -> None:
    ui.replace_state(ui.manual_state_from(real))


st.button("Explore this pair on the other pages", on_click=_use, type="primary",
          help="Copies p, q and the token labels into the shared problem (source: edit by hand).")
st.caption(f"Bundle: {pairs!r}. " + "; ".join(f"{key}: {value}" for key, value in pairs.meta.items()
                                                   if isinstance(value, (str, int, float)))[:400])
