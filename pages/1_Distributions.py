"""Distributions: choose p, q, n and the draft law; every other page uses this problem."""

import math

import streamlit as st

import globalres as gr
import ui
from globalres import viz

problem = ui.page_setup("Distributions", "Target p, draft q, n drafts and the law they are drawn by.",
                        stop_on_error=False, inputs_here=True)
s = ui.state()


def _entries(name: str) -> list[str]:
    if name == "lab":
        return s["lab"].split(",") if s["lab"] else []
    return ui.cells(s[name])


def _padded(values: list[str], length: int, name: str) -> list[str]:
    return values + [f"t{j}" if name == "lab" else "0" for j in range(len(values), length)]


def _cell(text: str) -> float | None:
    """A cell's number; None (an empty cell) for a missing or invalid weight, so that any number typed is a
    change (an invalid -0.3 shown as 0.0 took no 0)."""
    value = float(text) if ui._is_float(text) else math.nan
    return value if math.isfinite(value) and value >= 0 else None


def _set_entry(name: str, i: int, key: str) -> None:
    values, value = _entries(name), st.session_state[key]
    # a cleared cell stays in place, empty, and the error names it
    text = str(value).replace(",", " ") if name == "lab" else "" if value is None else repr(float(value))
    if i < len(values):
        values[i] = text
        s[name] = ",".join(values)
    elif text:  # past the end of this list: the cells between become zeros, shown by rebuilt widgets
        ui.replace_state({name: ",".join(_padded(values, i, name) + [text])})


def _resize(delta: int) -> None:
    p, q, lab = _entries("p"), _entries("q"), _entries("lab")
    rows = max(len(p), len(q))
    if delta > 0:
        p, q = _padded(p, rows, "p") + ["0.1"], _padded(q, rows, "q") + ["0.1"]
        lab = _padded(lab, rows, "lab") + [f"t{rows}"] if lab else lab
    elif rows > 1:
        p, q, lab = p[:rows - 1], q[:rows - 1], lab[:rows - 1]  # cuts only the lists that have that row
    ui.replace_state({"p": ",".join(p), "q": ",".join(q), "lab": ",".join(lab)})


def _upload(upload_key: str) -> None:
    file = st.session_state[upload_key]
    if file is None:
        return
    try:
        target, draft = ui.load_logits_file(file.name, file.getvalue())
    except gr.InputError as err:
        st.session_state["dist.upload_error"] = str(err)
        return
    st.session_state.pop("dist.upload_error", None)
    ui.replace_state({"tl": ",".join(repr(float(x)) for x in target),
                      "dl": ",".join(repr(float(x)) for x in draft), "lab": ""})


edit, view = st.columns([2, 3], gap="large")
with edit:
    ui.bind(st.radio, "src", "Source", options=ui.SOURCES, horizontal=True, format_func=ui.SOURCE_NAMES.get)
    src = s["src"]
    if src == "preset":
        ui.bind(st.selectbox, "preset", "Preset", options=list(gr.PRESETS),
                format_func=lambda name: f"{name}: {gr.PRESETS[name][1]}")
    elif src == "random":
        ui.bind(st.slider, "V", "V: vocabulary size", min_value=2, max_value=ui.MAX_V_RANDOM)
        c1, c2, c3 = st.columns(3)
        with c1:
            ui.bind(st.number_input, "seed", "seed", min_value=0, step=1)
        with c2:
            ui.bind(st.number_input, "conc", "Dirichlet concentration", min_value=0.001, max_value=1000.0,
                    format="%.3f")
        with c3:
            ui.bind(st.number_input, "topk", "draft top-k (0: off)", min_value=0, max_value=ui.MAX_V_RANDOM)
    elif src == "logits":
        ui.bind(st.text_area, "tl", "Target logits (comma-separated)", height=80)
        ui.bind(st.text_area, "dl", "Draft logits (comma-separated)", height=80)
        upload_key = ui.wkey("upload")
        st.file_uploader("…or upload logits (.npy of shape (2, V); .npz or .safetensors with arrays "
                         "'target' and 'draft'). Files are read without unpickling.",
                         type=["npy", "npz", "safetensors"], key=upload_key, on_change=_upload,
                         args=(upload_key,))
        if "dist.upload_error" in st.session_state:
            st.error(st.session_state["dist.upload_error"])
        c1, c2, c3 = st.columns(3)
        with c1:
            ui.bind(st.slider, "T", "temperature", min_value=0.05, max_value=5.0, step=0.05)
        with c2:
            ui.bind(st.number_input, "k", "draft top-k (0: off)", min_value=0, max_value=ui.MAX_V_UPLOAD)
        with c3:
            ui.bind(st.slider, "tp", "draft top-p", min_value=0.05, max_value=1.0, step=0.01)
        ui.bind(st.text_input, "lab", "Token labels (comma-separated, optional)")
    else:
        p, q = _entries("p"), _entries("q")
        rows = max(len(p), len(q))
        lab = _entries("lab") or [str(i) for i in range(rows)]
        st.caption("Weights are renormalised live: any non-negative numbers will do (the table under the "
                   "chart shows p and q).")
        # three columns, not five: with the normalised values beside them, a 1100 px window wrapped the
        # numbers digit by digit
        head = st.columns([1.3, 2, 2])
        for col, text in zip(head, ["token", "p weight", "q weight"]):
            col.markdown(f"**{text}**")
        for i in range(min(rows, ui.MAX_V_MANUAL)):
            cols = st.columns([1.3, 2, 2])
            for col, name, values in ((cols[1], "p", p), (cols[2], "q", q)):
                key = ui.wkey(f"{name}{i}")
                col.number_input(f"{name} weight of token {i}", value=_cell(values[i]) if i < len(values) else None,
                                 min_value=0.0, step=0.01, format="%.4f", key=key, label_visibility="collapsed",
                                 on_change=_set_entry, args=(name, i, key))
            if s["lab"]:
                key = ui.wkey(f"lab{i}")
                cols[0].text_input(f"label of token {i}", value=lab[i] if i < len(lab) else "", key=key,
                                   label_visibility="collapsed", on_change=_set_entry, args=("lab", i, key))
            else:
                cols[0].markdown(f"`{i}`")
        if rows > ui.MAX_V_MANUAL:
            st.caption(f"The editor shows the first {ui.MAX_V_MANUAL} of {rows} tokens; the others keep their "
                       "weights (they are in the URL).")
        b1, b2 = st.columns(2)
        b1.button("Add token", on_click=_resize, args=(1,), disabled=rows >= ui.MAX_V_MANUAL)
        b2.button("Remove last", on_click=_resize, args=(-1,), disabled=rows <= 1)
    if src != "manual" and problem is not None:
        st.button("Edit these numbers by hand", on_click=ui.replace_state, args=(ui.manual_state_from(problem),))

with view:
    if problem is None:
        st.info("Fix the input on the left to see the distributions.")
        st.stop()
    H = ui.hstar(problem.key())
    a = ui.alpha(problem.key())
    c1, c2, c3, c4 = st.columns([2.4, 0.9, 0.9, 1.8])  # room for α*'s six decimals (at 1100 px too) and Vⁿ
    c1.metric("α* = 1 + ψ(H*)", f"{a:.6f}")
    c2.metric("|H*|", len(H))
    c3.metric("V", problem.V)
    tuples = problem.V ** problem.n
    c4.metric("draft tuples Vⁿ", f"{tuples:,}" if tuples < 10**7 else f"{tuples:.3g}")
    ui.chart(viz.distributions(problem, H), "distributions", "dist.bars")
    st.dataframe(
        {"token": [problem.label(i) for i in range(problem.V)], "p": problem.p, "q": problem.q,
         "in H*": [i in H for i in range(problem.V)]},
        hide_index=True, width="stretch")
