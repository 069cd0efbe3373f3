"""The app's pages through streamlit.testing's AppTest, and the pure helpers in ui.py and viz.py.

Every page: the default state renders without exception or error; a changed input reruns cleanly
and lands in the URL; a bad input shows st.error (never a traceback). Budget: well under 2 minutes.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # pages import `ui` from the repository root, as `streamlit run` does

import globalres as gr  # noqa: E402
import ui  # noqa: E402
from globalres import maxflow, viz  # noqa: E402

PAGES = ["app.py"] + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "pages").glob("*.py"))
BAD_Q = {"src": "manual", "p": "1,2,3", "q": "0,0,0"}  # q has no support: Problem refuses it


def run(page: str, params: dict | None = None) -> AppTest:
    at = AppTest.from_file(str(ROOT / page), default_timeout=60)
    at.query_params.update(params or {})
    return at.run()


def widget(elements, name: str):
    """The widget bound to state entry `name` (its key carries the state generation: w.<name>.<gen>)."""
    return next(e for e in elements if (e.key or "").rsplit(".", 1)[0] == f"w.{name}")


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_every_page_is_listed_in_the_navigation():
    linked = {path for path, _, _ in ui.PAGES}
    assert linked == set(PAGES)
    assert len(PAGES) == 9


@pytest.mark.parametrize("page", PAGES)
def test_default_state_renders(page):
    at = run(page)
    assert_clean(at)
    assert at.title, "every page has a title"
    bundle_missing = any("bundled real pairs could not be loaded" in i.value for i in at.info)
    assert at.get("plotly_chart") or bundle_missing, "every page draws at least one chart"
    assert at.query_params == {}, "the default state needs no URL parameters"


@pytest.mark.parametrize("page", PAGES)
def test_changing_n_reruns_and_lands_in_the_url(page):
    at = run(page)
    at.sidebar.slider[0].set_value(3).run()
    assert_clean(at)
    assert at.session_state["gr.state"]["n"] == 3
    assert at.query_params == {"n": "3"}


def test_a_url_lagging_behind_fast_input_does_not_undo_it():
    # arrow keys on a slider: the rerun for n = 4 can arrive while the browser still shows the URL of n = 3;
    # that echo of the session's own write is not a change from outside (it used to reset n to 3)
    at = run("pages/1_Distributions.py")
    at.sidebar.slider[0].set_value(3).run()
    stale = dict(at.query_params)
    at.sidebar.slider[0].set_value(4).run()
    at.query_params.clear()
    at.query_params.update(stale)
    at.run()
    assert_clean(at)
    assert at.session_state["gr.state"]["n"] == 4 and at.query_params == {"n": "4"}
    # a URL the session never wrote is still read: a shared link, typed in
    at.query_params.clear()
    at.query_params.update({"n": "5"})
    at.run()
    assert at.session_state["gr.state"]["n"] == 5


@pytest.mark.parametrize("page", PAGES)
def test_bad_input_shows_an_error_not_a_traceback(page):
    at = run(page, BAD_Q)
    assert not at.exception, [e.value for e in at.exception]
    # the real-model page builds its own problems: the shared one's error is only a warning there
    messages = at.warning if page == "pages/8_Real_model.py" else at.error
    assert any("q is all zeros" in e.value for e in messages)
    assert any(b.label == "Reset to the default example" for b in at.button)


def test_url_reproduces_the_state_on_another_page():
    params = {"src": "random", "V": "7", "seed": "3", "n": "3", "law": "wor", "conc": "0.5"}
    at = run("pages/4_Convex_reduction.py", params)
    assert_clean(at)
    expected = gr.Problem.random(7, 3, seed=3, concentration=0.5, law="wor")
    assert at.query_params == params, "a state read from the URL is written back unchanged"
    problem = ui.problem_from_state(at.session_state["gr.state"])
    assert problem.key() == expected.key()
    assert at.sidebar.metric[0].value == f"{gr.alpha_star(expected):.6f}"


def test_bad_url_values_fall_back_with_a_warning():
    at = run("app.py", {"n": "abc", "law": "sideways", "V": "9999", "zzz": "1"})
    assert_clean(at)
    text = " ".join(w.value for w in at.warning)
    assert "n='abc'" in text and "law='sideways'" in text and "V='9999'" in text and "'zzz'" in text
    state = at.session_state["gr.state"]
    assert (state["n"], state["law"], state["V"]) == (2, "iid", 6)


def test_reset_button_restores_the_default_example():
    at = run("pages/2_OTLP.py", BAD_Q)
    next(b for b in at.button if b.label == "Reset to the default example").click().run()
    assert_clean(at)
    assert at.session_state["gr.state"] == ui.DEFAULTS
    assert at.query_params == {}


# ----------------------------------------------------------------------------- Distributions
def test_distributions_switch_to_manual_keeps_the_problem_exactly():
    at = run("pages/1_Distributions.py", {"preset": "khisti", "n": "3"})
    before = ui.problem_from_state(at.session_state["gr.state"])
    at.radio[0].set_value("manual").run()
    assert_clean(at)
    after = ui.problem_from_state(at.session_state["gr.state"])
    np.testing.assert_array_equal(after.p, before.p)
    np.testing.assert_array_equal(after.q, before.q)
    assert after.labels == ("a", "b", "c")


def test_distributions_manual_weights_are_renormalised_live():
    at = run("pages/1_Distributions.py", {"src": "manual", "p": "1,1", "q": "1,1"})
    assert_clean(at)
    widget(at.number_input, "q1").set_value(3.0).run()  # q weights 1, 3 → q = (1/4, 3/4)
    assert_clean(at)
    problem = ui.problem_from_state(at.session_state["gr.state"])
    np.testing.assert_allclose(problem.q, [0.25, 0.75], atol=1e-15)
    assert at.query_params["q"] == "1,3.0"
    # α* for p = (1/2, 1/2), q = (1/4, 3/4), n = 2: H* = {1}, ψ = 1/2 − 9/16
    assert at.sidebar.metric[0].value == f"{1 + 0.5 - 0.5625:.6f}"


def test_distributions_add_and_remove_tokens():
    at = run("pages/1_Distributions.py", {"src": "manual", "p": "1,1", "q": "1,2"})
    next(b for b in at.button if b.label == "Add token").click().run()
    assert ui.problem_from_state(at.session_state["gr.state"]).V == 3
    next(b for b in at.button if b.label == "Remove last").click().run()
    assert_clean(at)
    assert ui.problem_from_state(at.session_state["gr.state"]).V == 2


def test_hand_editor_shows_every_row_of_lists_of_different_lengths():
    # q's third weight used to be hidden (rows came from p alone), so the mismatch could not be fixed in the editor
    at = run("pages/1_Distributions.py", {"src": "manual", "p": "0.5,0.3", "q": "0.2,0.3,0.5"})
    assert not at.exception
    assert widget(at.number_input, "q2").value == 0.5
    assert widget(at.number_input, "p2").value is None, "a missing entry is an empty cell"
    message = " ".join(e.value for e in at.error)
    assert "Empty cells in the hand editor: p of token 2" in message
    assert "Fix the input on the left" in message and "Distributions** page" not in message
    widget(at.number_input, "p2").set_value(0.2).run()
    assert_clean(at)
    assert at.session_state["gr.state"]["p"] == "0.5,0.3,0.2"


def test_hand_editor_typing_past_the_end_of_a_list_pads_it_with_zeros():
    at = run("pages/1_Distributions.py", {"src": "manual", "p": "1", "q": "1,1,1"})
    widget(at.number_input, "p2").set_value(2.0).run()
    assert_clean(at)
    assert at.session_state["gr.state"]["p"] == "1,0,2.0"
    assert widget(at.number_input, "p1").value == 0.0, "the padded cell shows the 0 it now holds"


def test_hand_editor_add_and_remove_with_lists_of_different_lengths():
    at = run("pages/1_Distributions.py", {"src": "manual", "p": "0.5,0.3", "q": "0.2,0.3,0.5"})
    next(b for b in at.button if b.label == "Remove last").click().run()
    assert_clean(at)  # only q had a third row
    assert (at.session_state["gr.state"]["p"], at.session_state["gr.state"]["q"]) == ("0.5,0.3", "0.2,0.3")
    at = run("pages/1_Distributions.py", {"src": "manual", "p": "0.5", "q": "0.2,0.3,0.5"})
    next(b for b in at.button if b.label == "Add token").click().run()
    assert_clean(at)
    assert (at.session_state["gr.state"]["p"], at.session_state["gr.state"]["q"]) == ("0.5,0,0,0.1",
                                                                                      "0.2,0.3,0.5,0.1")


@pytest.mark.parametrize("bad", ["-0.3", "nan"])
def test_hand_editor_shows_an_invalid_weight_as_an_empty_cell(bad):
    # shown as 0.0000, typing 0 changed nothing and the error stayed; an empty cell takes any number
    at = run("pages/1_Distributions.py", {"src": "manual", "p": f"0.5,{bad},0.2", "q": "0.2,0.3,0.5"})
    assert not at.exception and at.error
    assert widget(at.number_input, "p1").value is None
    widget(at.number_input, "p1").set_value(0.0).run()
    assert_clean(at)
    assert at.session_state["gr.state"]["p"] == "0.5,0.0,0.2"


def test_hand_editor_a_cleared_cell_stays_in_place_and_is_named_in_the_error():
    # a cleared cell is an empty entry of the list (AppTest cannot clear a number_input: this is the state it leaves)
    at = run("pages/1_Distributions.py", {"src": "manual", "p": "0.5,0.3,0.2", "q": ",0.3,0.5"})
    assert not at.exception
    assert widget(at.number_input, "q0").value is None and widget(at.number_input, "q1").value == 0.3
    assert any("Empty cells in the hand editor: q of token 0." in e.value for e in at.error)


def test_sidebar_says_token_or_tokens():
    at = run("pages/1_Distributions.py", {"src": "manual", "p": "1", "q": "1"})
    assert_clean(at)
    assert any(c.value.startswith("V = 1 token,") for c in at.sidebar.caption)
    at = run("pages/1_Distributions.py")
    assert any(c.value.startswith("V = 3 tokens,") for c in at.sidebar.caption)


def test_sidebar_lists_at_most_twelve_tokens_of_h_star():
    at = run("pages/1_Distributions.py", {"src": "random", "V": "64"})
    assert_clean(at)
    size = len(gr.h_star(gr.Problem.random(64, 2, seed=0)))
    line = next(c.value for c in at.sidebar.caption if c.value.startswith("H* = "))
    assert line.endswith(f", … ({size} in all)}}") and line.count(",") == 12


def test_distributions_bad_logits_show_an_error_with_a_fix():
    at = run("pages/1_Distributions.py", {"src": "logits"})
    assert_clean(at)
    at.text_area[0].input("1, abc, 2").run()
    assert not at.exception
    assert any("'abc' is not a number" in e.value for e in at.error)


def test_distributions_logits_with_top_k():
    at = run("pages/1_Distributions.py", {"src": "logits", "k": "2"})
    assert_clean(at)
    problem = ui.problem_from_state(at.session_state["gr.state"])
    assert int((problem.q > 0).sum()) == 2


def test_distributions_random_source():
    at = run("pages/1_Distributions.py", {"src": "random"})
    widget(at.slider, "V").set_value(10).run()
    assert_clean(at)
    assert ui.problem_from_state(at.session_state["gr.state"]).V == 10


# ----------------------------------------------------------------------------- other pages
def test_otlp_size_guard_explains_itself_once_in_the_apps_terms():
    at = run("pages/2_OTLP.py", {"src": "random", "V": "40", "n": "6"})
    assert not at.exception
    assert len(at.warning) == 1 and any("same size limit" in c.value for c in at.caption)  # not once per LP
    text = at.warning[0].value
    assert "3.26e+08 variables, past the exact LP's limit of 3e+05" in text
    assert "Lower n or V on the Distributions page" in text and "Convex reduction" in text
    assert "group=" not in text and "method=" not in text, "the library's advice names its API, not a page"


def test_max_flow_refuses_what_would_take_minutes_and_says_where_to_go():
    # V = 20, n = 4: 1.8·10⁵ edges, 40 s or more in networkx; the app stops at MAX_FLOW_EDGES without solving
    at = run("pages/3_Max_flow.py", {"src": "random", "V": "20", "n": "4", "seed": "3"})
    assert not at.exception
    text = " ".join(w.value for w in at.warning)
    assert "The max-flow network for V = 20, n = 4" in text and "edges, past max-flow's limit of 3e+04" in text
    assert "OTLP" not in text and "LP" not in text, "the refusal names the max-flow, not the LP it is checked like"
    assert "Lower n or V on the Distributions page" in text and "method=" not in text
    assert len(at.warning) == 1 and any("same size limit" in c.value for c in at.caption)  # said once


def test_url_with_an_infinite_weight_is_an_error_not_a_traceback():
    at = run("pages/1_Distributions.py", {"src": "manual", "p": "inf,1,1", "q": "1,1,1"})
    assert not at.exception
    assert any("infinite" in e.value for e in at.error)


def test_hand_editor_says_when_it_shows_only_some_tokens():
    p = ",".join(["1"] * 20)
    at = run("pages/1_Distributions.py", {"src": "manual", "p": p, "q": p})
    assert_clean(at)
    assert any("first 16 of 20 tokens" in c.value for c in at.caption)


def test_verifiers_use_the_tau_chosen_on_convex_reduction():
    # the table's Global Resolution row is the plan at the τ in the shared state (set on Convex reduction):
    # its enumerated ‖output − p‖₁ is within Lemma 6.6's 15τ and falls with τ, and the note names that τ
    params, l1 = {"src": "random", "V": "6", "seed": "2", "n": "3"}, {}
    for tau in ("1e-5", "1e-3"):
        at = run("pages/6_Verifiers.py", dict(params, tau=tau))
        assert not at.exception
        table = at.dataframe[0].value
        row = table[table["verifier"] == "global_resolution"].iloc[0]
        l1[tau] = row["‖output − p‖₁"]
        assert l1[tau] <= 15 * float(tau) and f"τ = {tau}" in row["note"], (tau, dict(row))
    assert l1["1e-5"] < l1["1e-3"] / 10


def test_verifiers_that_do_not_fit_say_what_to_change_in_the_app():
    # at n = 2, iid: sps needs n = 1 and spechub the hub law; the library's advice names its Python API
    # (problem.with_), the page says which sidebar control to change instead
    at = run("pages/6_Verifiers.py")
    assert_clean(at)
    unsolved = next(m.value for m in at.markdown if m.value.startswith("Not solved for this problem"))
    assert "with_(" not in unsolved
    assert "**sps**" in unsolved and "Set n = 1 in the sidebar" in unsolved
    assert "**spechub**" in unsolved and "Choose the draft law hub in the sidebar" in unsolved


def test_otlp_backend_choice():
    at = run("pages/2_OTLP.py", {"be": "pot"})
    assert_clean(at)
    assert at.metric[0].value == "0.860000"


def test_verifiers_monte_carlo_inputs_change():
    at = run("pages/6_Verifiers.py")
    assert_clean(at)
    widget(at.number_input, "mc").set_value(5000).run()
    assert_clean(at)
    assert at.query_params == {"mc": "5000"}
    assert any("Lossless" in s.value for s in at.success)


def test_step_through_new_drafts_and_stages():
    at = run("pages/7_Step_through.py", {"stage": "1"})
    assert_clean(at)
    assert not at.latex[1:], "stage 1 shows only the draft probability"
    next(b for b in at.button if b.label == "New drafts").click().run()
    assert_clean(at)
    assert at.session_state["gr.state"]["ss"] == 1
    at.select_slider[0].set_value(4).run()
    assert_clean(at)
    assert at.success or at.warning, "stage 4 says accepted or rejected"
    at.select_slider[0].set_value(1).run()
    next(b for b in at.button if b.label == "▶ Play").click().run()  # the slider and URL end at the last stage
    assert_clean(at)
    assert at.select_slider[0].value == 4 and "stage" not in at.query_params  # 4 is the default: not in the URL


def test_side_by_side_agrees_on_alpha_star():
    at = run("pages/5_Side_by_side.py", {"preset": "sglang", "n": "3"})
    assert_clean(at)
    assert any("agree" in s.value for s in at.success)


# ----------------------------------------------------------------------------- ui helpers
@given(n=hst.integers(1, ui.MAX_N), law=hst.sampled_from(gr.LAWS), conc=hst.floats(1e-3, 1e3),
       T=hst.floats(0.05, 5.0), seed=hst.integers(0, 2**31 - 1))
@settings(max_examples=60, deadline=None)
def test_url_encoding_round_trips_exactly(n, law, conc, T, seed):
    state = dict(ui.DEFAULTS, n=n, law=law, conc=conc, T=T, seed=seed)
    parsed, warnings = ui.parse_params(ui.encode_params(state))
    assert warnings == []
    assert parsed == state


def test_manual_state_reproduces_a_problem_bit_for_bit():
    problem = gr.Problem.random(9, 3, seed=11, concentration=0.3)
    state = dict(ui.DEFAULTS, n=3, **ui.manual_state_from(problem))
    rebuilt = ui.problem_from_state(ui.parse_params(ui.encode_params(state))[0])
    np.testing.assert_array_equal(rebuilt.p, problem.p)
    np.testing.assert_array_equal(rebuilt.q, problem.q)
    # real tokens that differ only by a space, or hold a comma, keep distinct labels
    tokens = gr.Problem([0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4], 2, labels=[" a", "a", "a,b", " "])
    labels = ui.problem_from_state(dict(ui.DEFAULTS, **ui.manual_state_from(tokens))).labels
    assert len(set(labels)) == 4 and labels[0] == "␣a" and labels[1] == "a"


def _bytes(save, *args, **kwargs) -> bytes:
    buf = io.BytesIO()
    save(buf, *args, **kwargs)
    return buf.getvalue()


def test_logits_files_load_without_unpickling():
    target, draft = np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])
    for name, data in [("a.npy", _bytes(np.save, np.stack([target, draft]))),
                       ("b.npz", _bytes(np.savez, target=target, draft=draft)),
                       ("c.npz", _bytes(np.savez, target, draft))]:
        t, d = ui.load_logits_file(name, data)
        np.testing.assert_array_equal(t, target)
        np.testing.assert_array_equal(d, draft)
    from safetensors.numpy import save

    t, d = ui.load_logits_file("d.safetensors", save({"target": target, "draft": draft}))
    np.testing.assert_array_equal(d, draft)


@pytest.mark.parametrize("name, data, message", [
    ("p.npy", _bytes(np.save, np.array([{"x": 1}], dtype=object), allow_pickle=True), "could not be read"),
    ("x.pkl", b"\x80\x04K\x01.", "unsupported file type"),
    ("one.npy", _bytes(np.save, np.zeros(5)), "expected shape \\(2, V\\)"),
    ("three.npz", _bytes(np.savez, np.zeros(3), np.zeros(3), np.zeros(3)), "holds 3 arrays"),
    ("mismatch.npz", _bytes(np.savez, target=np.zeros(3), draft=np.zeros(4)), "must match"),
    ("big.npy", _bytes(np.save, np.zeros((2, ui.MAX_V_UPLOAD + 1))), "past the app's limit"),
    ("junk.npz", b"not a zip", "could not be read"),
])
def test_bad_logits_files_raise_input_errors(name, data, message):
    with pytest.raises(gr.InputError, match=message):
        ui.load_logits_file(name, data)


def test_plan_csv_rows_are_conditionals():
    plan = gr.solve(gr.preset("reversed", 2), method="lp")
    lines = ui.plan_csv(plan).strip().splitlines()
    assert lines[0] == "drafts,Q,pi(cat),pi(dog),pi(cow)"
    assert len(lines) == 1 + 6  # six multisets of 3 tokens, n = 2
    body = np.array([[float(x) for x in line.rsplit('",', 1)[1].split(",")] for line in lines[1:]])
    np.testing.assert_allclose(body[:, 0].sum(), 1.0, atol=1e-12)  # Q sums to one
    np.testing.assert_allclose(body[:, 1:].sum(axis=1), 1.0, atol=1e-9)  # each π(·|ω) sums to one
    np.testing.assert_allclose(body[:, 0] @ body[:, 1:], plan.problem.p, atol=1e-9)  # lossless


def test_monte_carlo_matches_p():
    problem = gr.preset("sglang", 2)
    counts = ui.monte_carlo(problem.key(), "lp", 40_000, 0)
    assert counts.sum() == 40_000
    se = np.sqrt(problem.p * (1 - problem.p) / 40_000)
    assert np.all(np.abs(counts / 40_000 - problem.p) < 5 * se)


# ----------------------------------------------------------------------------- figures
def test_psi_chain_marks_h_star_at_alpha_star():
    problem = gr.Problem.random(8, 3, seed=2)
    fig = viz.psi_chain(problem)
    star = next(t for t in fig.data if t.name == "H*")
    assert star.x[0] == gr.h_star(problem).size
    np.testing.assert_allclose(star.y[0], gr.alpha_star(problem) - 1, atol=1e-12)


def test_plan_heatmap_has_one_cell_per_multiset_and_token():
    plan = gr.solve(gr.preset("khisti", 3), method="lp")
    fig = viz.plan_heatmap(plan)
    z = np.asarray(fig.data[0].z)
    assert z.shape == (10, 3)  # C(3 + 3 − 1, 3) multisets × 3 tokens
    assert len(fig.layout.shapes) == int(plan.info["member"].sum())  # one outline per accepting cell
    np.testing.assert_allclose(z[plan.info["member"]].sum(), plan.acceptance, atol=1e-9)


def test_flow_network_colours_the_cut():
    plan = gr.solve(gr.preset("reversed", 2), method="maxflow")
    fig = viz.flow_network(plan.problem, plan.info["groups"], plan.info["group_probs"], plan.info["flow"],
                           plan.h_star)
    cut = next(t for t in fig.data if (t.name or "").startswith("H*"))
    assert [h.split(":")[0] for h in cut.hovertext] == ["dog", "cow"]  # H* = {dog, cow}
    assert cut.marker.color == viz.GREEN
    # every node is labelled on an opaque ground (as scatter text, labels sat on the edges crossing them)
    labels = [a.text for a in fig.layout.annotations]
    assert labels[:3] == ["cat", "dog", "cow"] and "{cat,dog}" in labels and len(labels) == 3 + 6 + 2
    assert all(a.bgcolor for a in fig.layout.annotations)


def test_pages_explain_a_method_that_is_not_installed(monkeypatch):
    monkeypatch.setitem(gr.SOLVERS, "exact", "no_such_module:solve")
    monkeypatch.setitem(gr.SOLVERS, "global_resolution", "no_such_module:solve")
    assert not ui.available("exact")
    for page in ("pages/4_Convex_reduction.py", "pages/5_Side_by_side.py"):
        at = run(page)
        assert_clean(at)
        assert any("'exact' method is not available" in i.value for i in at.info)


def test_a_crashing_solver_is_a_message_not_a_traceback(monkeypatch):
    monkeypatch.setitem(gr.SOLVERS, "maxflow", "otlp:check_size")  # takes max_variables, returns an int
    ui._solve.clear()
    at = run("pages/3_Max_flow.py", {"seed": "5", "src": "random"})
    ui._solve.clear()
    assert not at.exception
    assert any("maxflow returned a int, not a Plan" in w.value for w in at.warning)
    monkeypatch.setitem(gr.SOLVERS, "maxflow", "maxflow:solve")

    def broken(problem, *, group="multiset", max_variables=0):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(maxflow, "solve", broken)
    at = run("pages/3_Max_flow.py", {"seed": "6", "src": "random"})
    ui._solve.clear()
    assert not at.exception
    assert any("maxflow raised" in w.value for w in at.warning)


def test_small_figures():
    problem = gr.preset("reversed", 2)
    assert len(viz.pipeline().layout.shapes) == 4
    fig = viz.acceptance_bars(["a", "b"], [0.5, 0.86], 0.86, [True, False])
    assert list(fig.data[0].x) == [0.5, 0.86] and fig.data[0].marker.color == (viz.GREEN, viz.VERMILLION)
    fig = viz.mc_histogram(problem, np.array([50, 30, 20]))
    np.testing.assert_allclose(fig.data[0].y, [0.5, 0.3, 0.2], atol=1e-15)
    fig = viz.step_bars(problem, [1, 2], np.array([0.0, 0.7, 0.3]), output=1)
    assert list(fig.data[0].marker.line.width) == [0, 4, 0]
    fig = viz.token_weights(problem, np.array([0.0, 2.0, np.e]), np.array([False, True, True]), "w")
    np.testing.assert_allclose(fig.data[0].y, [np.log(2.0), 1.0], atol=1e-15)
    fig = viz.traces({"gr": [3.0, 2.0, 1.5], "exact": [1.0]}, "objective", "f")
    assert [len(t.y) for t in fig.data] == [3, 1]
    plan = gr.solve(problem, method="relaxed_lp")
    np.testing.assert_allclose(np.sum(viz.residuals(plan).data[0].y), 1 - plan.acceptance, atol=1e-9)


def test_residual_is_the_rejection_law():
    problem = gr.preset("reversed", 2)  # H* = {dog, cow}; all of the residual is on cat
    np.testing.assert_allclose(ui.residual(problem), [1.0, 0.0, 0.0], atol=1e-15)
    assert ui.residual(gr.preset("equal", 2)) is None  # α* = 1: nothing is ever rejected


def test_convex_page_draws_the_exact_solver_iterations():
    at = run("pages/4_Convex_reduction.py", {"src": "random", "V": "9", "seed": "4", "n": "3"})
    assert_clean(at)
    text = " ".join(m.value for m in at.markdown)
    assert "certified ‖output − p‖₁" in text and "Exact enumeration" in text
    # ψ chain, weights, objective and gradient norm per iteration
    assert len(at.get("plotly_chart")) >= 4


def test_convex_page_runs_global_resolution_at_the_chosen_tau():
    at = run("pages/4_Convex_reduction.py", {"src": "random", "V": "6", "seed": "2", "n": "3", "tau": "1e-2"})
    assert_clean(at)
    text = " ".join(m.value for m in at.markdown)
    assert "15τ = 1.5e-01" in text and "objective per L-BFGS-B iteration" in str(at.get("plotly_chart")[2].proto.spec)
    widget(at.radio, "tau").set_value("1e-4").run()
    assert_clean(at)
    assert at.query_params["tau"] == "1e-4"
    assert "15τ = 1.5e-03" in " ".join(m.value for m in at.markdown)


def test_step_through_shows_the_weights_of_the_drafts():
    at = run("pages/7_Step_through.py", {"stage": "3"})
    assert_clean(at)
    assert any(m.value.startswith("weights: w(") for m in at.markdown)


def _tiny_bundle(path: Path, V: int = 12, N: int = 3) -> None:
    """A pairs bundle in the format of globalres.realdata, from seeded random logits."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, N, V))
    logp = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    tokens = [s.encode() for s in ["the", " cat", ",", "\n"] + [f"t{j}" for j in range(4, V)]]
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in tokens])])
    np.savez(path, target_logp=logp[0].astype(np.float16), draft_logp=logp[1].astype(np.float16),
             context=np.array(["Once upon a", "def f(x):", "1. apples\n2."]),
             category=np.array(["prose", "code", "list"]),
             next_token=np.array([1, 2, 3]), vocab=np.frombuffer(b"".join(tokens), dtype=np.uint8),
             vocab_offsets=offsets,
             meta=np.array('{"model": "tiny test bundle"}'))


def test_real_model_page_without_the_bundle_explains_itself(monkeypatch, tmp_path):
    from globalres import realdata

    monkeypatch.setattr(realdata, "BUNDLE_PATH", tmp_path / "missing.npz")
    ui.real_pairs.clear()
    at = run("pages/8_Real_model.py")
    ui.real_pairs.clear()
    assert_clean(at)
    assert any("could not be loaded" in i.value for i in at.info)


def test_real_model_page_works_when_the_shared_problem_is_bad(monkeypatch, tmp_path):
    # n = 4 without replacement is impossible for the default preset's 3 tokens, not for this page's pairs
    from globalres import realdata

    _tiny_bundle(tmp_path / "pairs.npz")
    monkeypatch.setattr(realdata, "BUNDLE_PATH", tmp_path / "pairs.npz")
    ui.real_pairs.clear()
    ui.real_problem_key.clear()
    try:
        at = run("pages/8_Real_model.py", {"n": "4", "law": "wor", "rk": "4"})
        assert_clean(at)
        assert any("does not use it" in w.value and "Distributions" in w.value for w in at.warning)
        expected = realdata.load_bundled(tmp_path / "pairs.npz").problem(0, 4, top_k=4, fold=True)
        assert at.metric[0].label == "α* (n = 4, top-4)" and at.metric[0].value == f"{gr.alpha_star(expected):.6f}"
        assert len(at.get("plotly_chart")) == 4
    finally:
        ui.real_pairs.clear()
        ui.real_problem_key.clear()
        ui.real_alpha_topk.clear()


def test_real_model_page_on_a_bundle(monkeypatch, tmp_path):
    from globalres import realdata

    _tiny_bundle(tmp_path / "pairs.npz")
    monkeypatch.setattr(realdata, "BUNDLE_PATH", tmp_path / "pairs.npz")
    ui.real_pairs.clear()
    ui.real_problem_key.clear()
    ui.real_alpha_topk.clear()
    try:
        at = run("pages/8_Real_model.py", {"rk": "4", "n": "3"})
        assert_clean(at)
        expected = realdata.load_bundled(tmp_path / "pairs.npz").problem(0, 3, top_k=4, fold=True)
        assert at.metric[0].value == f"{gr.alpha_star(expected):.6f}"
        assert at.metric[2].value == at.metric[0].value  # the exact solver reaches α*
        assert len(at.get("plotly_chart")) == 4  # distributions, α*(n), every verifier, α*(top-k)
        widget(at.selectbox, "rc").set_value("code").run()
        assert_clean(at)
        assert at.session_state["gr.state"]["ri"] == 1
        next(b for b in at.button if b.label == "Explore this pair on the other pages").click().run()
        assert_clean(at)
        shared = ui.problem_from_state(at.session_state["gr.state"])
        copied = realdata.load_bundled(tmp_path / "pairs.npz").problem(1, 3, top_k=4, fold=True)
        np.testing.assert_array_equal(shared.p, copied.p)
        assert shared.labels == tuple(s.replace(",", "‚").replace(" ", "␣") or repr(s) for s in copied.labels)
    finally:
        ui.real_pairs.clear()
        ui.real_problem_key.clear()
        ui.real_alpha_topk.clear()
