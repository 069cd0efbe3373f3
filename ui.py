"""Shared pieces of the Streamlit app: URL-synced state, the sidebar, cached solves, downloads.

Pages stay thin: `problem = ui.page_setup("Title")` reads (and writes) the shared state, draws the
sidebar and returns a validated `globalres.Problem` (or shows `st.error` and stops); `ui.solve(...)`
returns an `Outcome` that is either a Plan or a message saying why there is none.

State lives in one dict, `st.session_state["gr.state"]`, whose entries are short strings, ints and
floats. Its non-default entries are mirrored in the URL's query parameters, so a URL reproduces the
state exactly on any page (floats are written with `repr`, which round-trips).
"""

from __future__ import annotations

import importlib
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st

import globalres as gr
from globalres import viz

LAWS = gr.LAWS
SOURCES = ("preset", "random", "logits", "manual")
SOURCE_NAMES = {"preset": "Preset", "random": "Seeded random", "logits": "From logits", "manual": "Edit by hand"}
MAX_N = 8
MAX_V_RANDOM = 64
MAX_V_MANUAL = 16
MAX_V_UPLOAD = 512
MAX_K_REAL = 100  # draft top-k on the real-model page; the problem keeps these tokens plus one "other"
ICON = Path(__file__).resolve().parent / "assets" / "favicon.png"  # a local file: material icons are fetched
MAX_FLOW_EDGES = 30_000  # networkx's max-flow: ~2 s at 2·10⁴ token-to-multiset edges, 40 s at 1.2·10⁵
# the library's advice names its API (a regular expression for it -> the app's words for the same advice)
APP_ADVICE = {
    r"Use method='exact' \(no size limit\), or group='set' for a smaller (?:LP|network)\.":
        "It would take minutes. Lower n or V on the Distributions page, or see the exact solver's result, which "
        "has no size limit, on the Convex reduction or Side by side page.",
    r"Use method='lp'(?: or 'maxflow')? for other draft laws\.": "In this app, the OTLP and Max-flow pages take every "
                                                                  "draft law.",
    r"Use problem\.with_\(n=(\d+)\), or a multi-draft verifier\.": r"Set n = \1 in the sidebar to run it.",
    r"Use problem\.with_\(law='(\w+)'\)\.": r"Choose the draft law \1 in the sidebar to run it."}
VERIFIERS = ("sps", "nss", "naive", "kseq", "rrs", "rrs_wor", "spechub", "greedy", "khisti_is")

# name -> default value: every entry of the shared state, page-specific ones included.
DEFAULTS = {
    "src": "preset",
    "preset": "reversed",
    "n": 2,
    "law": "iid",
    "V": 6,
    "seed": 0,
    "conc": 1.0,
    "topk": 0,  # 0 = no truncation
    "tl": "2.0,1.5,1.0,0.5,0.0,-0.5",  # target logits
    "dl": "1.0,1.8,0.7,0.9,-0.2,-1.0",  # draft logits
    "T": 1.0,
    "k": 0,  # logits: draft top-k, 0 = off
    "tp": 1.0,  # logits: draft top-p, 1 = off
    "p": "",  # manual weights
    "q": "",
    "lab": "",  # labels, comma-separated
    "be": "highs",  # LP backend on the OTLP page
    "mc": 20000,  # Monte Carlo draws on the Verifiers page
    "ms": 0,  # Monte Carlo seed
    "ss": 0,  # step-through seed
    "stage": 4,  # step-through: how far the animation has gone (1..4)
    "ri": 0,  # real model: position in the bundled SmolLM2 pairs
    "rk": 10,  # real model: draft top-k
    "rc": "all",  # real model: category of text
    "tau": "1e-3",  # Global Resolution's tolerance on the Convex reduction page (the paper's 1e-3, 1e-4)
}
INT_KEYS = {"n", "V", "seed", "topk", "k", "mc", "ms", "ss", "stage", "ri", "rk"}
FLOAT_KEYS = {"conc", "T", "tp"}
CHOICES = {"src": SOURCES, "preset": tuple(gr.PRESETS), "law": LAWS, "be": ("highs", "pot", "cvxpy"),
           "rc": ("all", "prose", "code", "list", "chat"), "tau": ("1e-2", "1e-3", "1e-4", "1e-5")}
BOUNDS = {"n": (1, MAX_N), "V": (2, MAX_V_RANDOM), "topk": (0, MAX_V_RANDOM), "k": (0, MAX_V_UPLOAD),
          "mc": (100, 200_000), "stage": (1, 4), "seed": (0, 2**31 - 1), "ms": (0, 2**31 - 1),
          "ss": (0, 2**31 - 1), "conc": (1e-3, 1e3), "T": (0.05, 5.0), "tp": (0.05, 1.0),  # = the widgets' ranges
          "ri": (0, 10**6), "rk": (1, MAX_K_REAL)}


# --------------------------------------------------------------------------- state <-> URL
def parse_params(params: dict) -> tuple[dict, list[str]]:
    """Query parameters -> a full state dict and warnings for values that were ignored."""
    state, warnings = dict(DEFAULTS), []
    for name, raw in params.items():
        if name not in DEFAULTS:
            warnings.append(f"Ignored unknown URL parameter {name!r}.")
            continue
        raw = raw[-1] if isinstance(raw, list) else raw
        try:
            if name in INT_KEYS:
                value = int(raw)
            elif name in FLOAT_KEYS:
                value = float(raw)
                if not np.isfinite(value):
                    raise ValueError
            else:
                value = str(raw)
        except ValueError:
            warnings.append(f"URL parameter {name}={raw!r} is not a valid number; using {DEFAULTS[name]!r}.")
            continue
        if name in CHOICES and value not in CHOICES[name]:
            warnings.append(f"URL parameter {name}={raw!r} must be one of {', '.join(CHOICES[name])}; "
                            f"using {DEFAULTS[name]!r}.")
            continue
        if name in BOUNDS and not BOUNDS[name][0] <= value <= BOUNDS[name][1]:
            lo, hi = BOUNDS[name]
            warnings.append(f"URL parameter {name}={raw!r} must lie in [{lo}, {hi}]; using {DEFAULTS[name]!r}.")
            continue
        state[name] = value
    return state, warnings


def encode_params(state: dict) -> dict:
    """The non-default entries of `state` as query-parameter strings (floats via repr: exact)."""
    return {name: repr(value) if isinstance(value, float) else str(value)
            for name, value in state.items() if value != DEFAULTS[name]}


def _numbers(text: str, what: str) -> list[float]:
    parts = [s.strip() for s in text.replace(";", ",").split(",") if s.strip()]
    if not parts:
        raise gr.InputError(f"{what} is empty: type numbers separated by commas, e.g. 0.5, 0.3, 0.2.")
    try:
        return [float(s) for s in parts]
    except ValueError:
        bad = next(s for s in parts if not _is_float(s))
        raise gr.InputError(f"{what}: {bad!r} is not a number; type numbers separated by commas.") from None


def _is_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _labels(state: dict, V: int):
    labels = [s.strip() for s in state["lab"].split(",")] if state["lab"].strip() else None
    if labels is not None and len(labels) != V:
        raise gr.InputError(f"Token labels: {len(labels)} labels for {V} tokens; give one label per token "
                            f"(comma-separated) or leave the labels empty.")
    return labels


def problem_from_state(state: dict) -> gr.Problem:
    """Build the Problem the state describes; raises globalres.InputError with a fix on bad input."""
    n, law, src = state["n"], state["law"], state["src"]
    if src == "preset":
        return gr.preset(state["preset"], n).with_(law=law)
    if src == "random":
        return gr.Problem.random(state["V"], n, seed=state["seed"], concentration=state["conc"],
                                 top_k=state["topk"] or None, law=law)
    if src == "logits":
        target = _numbers(state["tl"], "Target logits")
        draft = _numbers(state["dl"], "Draft logits")
        if len(target) > MAX_V_UPLOAD:
            raise gr.InputError(f"{len(target)} tokens is past the app's limit of {MAX_V_UPLOAD}; keep the "
                                f"tokens of interest (the exact solver handles full vocabularies in Python).")
        return gr.Problem.from_logits(target, draft, n, temperature=state["T"], top_k=state["k"] or None,
                                      top_p=state["tp"] if state["tp"] < 1.0 else None, law=law,
                                      labels=_labels(state, len(target)))
    rows = {name: cells(state[name]) for name in ("p", "q")}
    V = max(len(rows["p"]), len(rows["q"]))
    empty = [f"{name} of token {i}" for name, row in rows.items() for i in range(V) if i >= len(row) or not row[i]]
    if empty:
        raise gr.InputError(f"Empty cells in the hand editor: {', '.join(empty)}. Type a weight in each (0 for a "
                            f"token the model never picks), or remove the last token.")
    p = _numbers(state["p"], "p weights")
    q = _numbers(state["q"], "q weights")
    return gr.Problem.from_weights(p, q, n, law=law, labels=_labels(state, len(p)))


def cells(text: str) -> list[str]:
    """The hand editor's cells of one list of weights, empty ones included (a cleared cell stays in place)."""
    return [s.strip() for s in text.replace(";", ",").split(",")] if text.strip() else []


def manual_state_from(problem: gr.Problem) -> dict:
    """The manual-source entries that reproduce `problem` exactly."""
    # labels are comma-separated in the state: a comma inside a label (a real token) becomes "‚", and a space
    # "␣", so that real tokens " a" and "a" stay two labels (the state's labels are stripped)
    labels = [s.replace(",", "‚").replace(" ", "␣") or repr(s) for s in problem.labels] if problem.labels else []
    return {"src": "manual", "p": ",".join(repr(float(x)) for x in problem.p),
            "q": ",".join(repr(float(x)) for x in problem.q), "lab": ",".join(labels)}


def state() -> dict:
    return st.session_state.setdefault("gr.state", dict(DEFAULTS))


def generation() -> int:
    """Bumped whenever the state changes other than through a widget, so widgets start afresh."""
    return st.session_state.setdefault("gr.gen", 0)


def replace_state(changes: dict) -> None:
    """Change entries of the state from code (a button, a preset): widgets are rebuilt from it."""
    state().update(changes)
    st.session_state["gr.gen"] = generation() + 1


RECENT_URLS = 16  # URLs this session wrote lately: a rerun can arrive with one of them before the newest


def sync_url() -> list[str]:
    """Read the URL once per change from outside, then mirror the state into it.

    Streamlit clears the query parameters when the user switches pages; an empty query is therefore
    not a request to reset, and the state is simply written back. A query this session wrote itself a
    few reruns ago is not a change from outside either: on fast input (arrow keys on a slider) the
    browser's URL lags the state, and reading it back undid the newest inputs.
    """
    params = st.query_params.to_dict()
    recent = st.session_state.setdefault("gr.urls", [])
    warnings = []
    if params and params != st.session_state.get("gr.url") and params not in recent:
        new, warnings = parse_params(params)
        st.session_state["gr.state"] = new
        st.session_state["gr.gen"] = generation() + 1
    encoded = encode_params(state())
    if params != encoded:
        st.query_params.from_dict(encoded)
    st.session_state["gr.url"] = encoded
    if encoded not in recent:
        recent.append(encoded)
        del recent[:-RECENT_URLS]
    return warnings


# --------------------------------------------------------------------------- widgets
def wkey(name: str) -> str:
    """A widget key tied to the current state generation."""
    return f"w.{name}.{generation()}"


def _copy(name: str, key: str) -> None:
    s = state()
    if name == "src" and st.session_state[key] == "manual" and not s["p"]:
        # start hand-editing from the problem on screen rather than from nothing
        try:
            s.update(manual_state_from(problem_from_state(s)))
        except gr.InputError:
            s.update(manual_state_from(gr.preset(DEFAULTS["preset"], s["n"])))
    s[name] = st.session_state[key]


def bind(widget, name: str, label: str, **kwargs):
    """Draw `widget` showing state[name]; a change writes the new value back into the state."""
    key = wkey(name)
    if widget in (st.selectbox, st.radio):
        options = list(kwargs.pop("options"))
        kwargs["index"] = options.index(state()[name]) if state()[name] in options else 0
        kwargs["options"] = options
    else:
        kwargs["value"] = state()[name]
    return widget(label, key=key, on_change=_copy, args=(name, key), **kwargs)


# Material icons ship with Streamlit; emoji need a font a headless browser or a projector PC may lack.
PAGES = [("app.py", "Home", ":material/home:"), ("pages/1_Distributions.py", "Distributions", ":material/bar_chart:"),
         ("pages/2_OTLP.py", "OTLP", ":material/grid_on:"), ("pages/3_Max_flow.py", "Max-flow", ":material/hub:"),
         ("pages/4_Convex_reduction.py", "Convex reduction", ":material/show_chart:"),
         ("pages/5_Side_by_side.py", "Side by side", ":material/view_column:"),
         ("pages/6_Verifiers.py", "Verifiers", ":material/verified:"),
         ("pages/7_Step_through.py", "Step through", ":material/play_circle:"),
         ("pages/8_Real_model.py", "Real model", ":material/smart_toy:")]


def navigation() -> None:
    """Links to every page; each carries the state in its query string (a shareable URL)."""
    params = encode_params(state())
    for path, label, icon in PAGES:
        try:
            st.page_link(path, label=label, icon=icon, query_params=params or None)
        except (KeyError, st.errors.StreamlitAPIException):
            return  # a page run on its own (AppTest) has no page registry to link into


@st.cache_resource
def keep_freed_memory() -> bool:
    """Once per server process: the app is a long-lived solver process, so malloc keeps freed arrays for
    reuse (the exact solver's k = V tokens otherwise refault ~1000 pages each; `gr.exact.keep_freed_memory`)."""
    return gr.exact.keep_freed_memory()


def page_setup(title: str, caption: str = "", *, stop_on_error: bool = True,
               inputs_here: bool = False) -> gr.Problem | None:
    """Sync the URL, draw the title and the shared sidebar, and return the current Problem.

    `stop_on_error=False`: the page goes on without the problem (None). Unless it holds the problem's inputs
    (`inputs_here`, Distributions: the error is fixed on it), a bad shared problem is then only a warning: such
    a page (Real model) does not use it.
    """
    st.set_page_config(page_title=f"{title} · globalres", page_icon=str(ICON), layout="wide")
    keep_freed_memory()
    warnings = sync_url()
    with st.sidebar:
        navigation()
    st.title(title)
    if caption:
        st.caption(caption)
    for w in warnings:
        st.warning(w)
    s = state()
    with st.sidebar:
        st.subheader("Shared problem")
        bind(st.slider, "n", "n: number of drafts", min_value=1, max_value=MAX_N)
        bind(st.radio, "law", "draft law", options=LAWS, horizontal=True,
             help="iid: n independent draws from q · wor: without replacement · greedy: the top n−1 "
                  "tokens of q plus one draw from the rest · hub: SpecHub's n = 2 law (the top token of q "
                  "is always drafted).")
    try:
        problem = problem_from_state(s)
    except gr.InputError as err:
        where = "the input on the left" if inputs_here else "it on the **Distributions** page"
        if stop_on_error or inputs_here:
            st.error(f"{err}\n\nFix {where}, or reset to the default example.")
        else:
            st.warning(f"The shared problem of the other pages has an error: {err}\n\nThis page does not use it "
                       f"(only its n). Fix {where}, or reset to the default example.")
        st.button("Reset to the default example", on_click=reset, key="reset.err")
        if stop_on_error:
            st.stop()
        return None
    with st.sidebar:
        a = alpha(problem.key())
        st.markdown(f"**{SOURCE_NAMES[s['src']]}**" + (f": `{s['preset']}`" if s["src"] == "preset" else ""))
        st.metric("α* (optimal acceptance)", f"{a:.6f}")
        st.caption(f"V = {problem.V} token{'s' if problem.V != 1 else ''}, n = {problem.n}, law = {problem.law}")
        st.caption("H* = " + set_text(problem, hstar(problem.key())))
        st.caption("The page URL reproduces this state exactly; share it.")
        st.button("Reset to the default example", on_click=reset, key="reset.side")
    return problem


MAX_SET_LABELS = 12  # a set longer than this (H* at V = 64) filled the sidebar


def set_text(problem: gr.Problem, tokens: list[int]) -> str:
    """{a, b, …} with at most MAX_SET_LABELS labels, then how many there are in all."""
    shown = [problem.label(i) for i in tokens[:MAX_SET_LABELS]]
    more = f", … ({len(tokens)} in all)" if len(tokens) > MAX_SET_LABELS else ""
    return "{" + ", ".join(shown) + more + "}"


def reset() -> None:
    st.session_state["gr.state"] = dict(DEFAULTS)
    st.session_state["gr.gen"] = generation() + 1


# --------------------------------------------------------------------------- cached numerics
@st.cache_data(max_entries=512, show_spinner=False)
def alpha(key: tuple) -> float:
    return gr.alpha_star(gr.Problem.from_key(key))


@st.cache_data(max_entries=512, show_spinner=False)
def hstar(key: tuple) -> list[int]:
    """H* by token id: every page lists it in the same order (the scan's own order is by q/p)."""
    return sorted(gr.h_star(gr.Problem.from_key(key)).tolist())


@dataclass(frozen=True)
class Outcome:
    """A solve's result: `plan` when the method ran, else `note` says why not (and `missing` if the
    method is not installed yet, `error` if the input or size was refused)."""

    method: str
    plan: gr.Plan | None = None
    seconds: float = float("nan")
    note: str = ""
    missing: bool = False

    @property
    def ok(self) -> bool:
        return self.plan is not None and self.plan.success


def available(method: str) -> bool:
    """Whether `method` is registered and its module can be imported."""
    if method not in gr.SOLVERS:
        return False
    module = gr.SOLVERS[method].split(":")[0]
    try:
        importlib.import_module(f"globalres.{module}")
    except ImportError:
        return False
    return True


# Plans hold their rule as a closure, which cache_data cannot pickle; cache_resource keeps the object
# itself. Plans are frozen and pages only read them.
@st.cache_resource(max_entries=256, show_spinner=False)
def _solve(key: tuple, method: str, options: tuple) -> Outcome:
    problem = gr.Problem.from_key(key)
    start = time.perf_counter()
    try:
        plan = gr.solve(problem, method=method, **dict(options))
    except gr.InputError as err:
        return Outcome(method, note=advised(str(err)))
    except Exception as err:  # noqa: BLE001 — the page shows a solver bug as a message, never a traceback
        return Outcome(method, note=f"{method} raised {type(err).__name__}: {err}. Please report this instance "
                                    f"(copy the URL).")
    seconds = time.perf_counter() - start
    if not isinstance(plan, gr.Plan):
        return Outcome(method, note=f"{method} returned a {type(plan).__name__}, not a Plan. Please report this.")
    note = "" if plan.success else f"{method} did not finish: {plan.message}"
    return Outcome(method, plan, seconds, note)


def advised(note: str) -> str:
    """A library message with its advice, which names the Python API, in the app's terms (`APP_ADVICE`)."""
    for pattern, advice in APP_ADVICE.items():
        note = re.sub(pattern, advice, note)
    return note


def solve(problem: gr.Problem, method: str, **options) -> Outcome:
    """A cached solve keyed by the problem, method and options, with a spinner while it runs. Max-flow
    gets the app's smaller size limit (MAX_FLOW_EDGES): past it networkx takes minutes."""
    if not available(method):
        return Outcome(method, note=f"The {method!r} method is not available in this installation yet.",
                       missing=True)
    if method in ("maxflow", "opt_maxflow"):
        options.setdefault("max_variables", MAX_FLOW_EDGES)
    with st.spinner(f"Solving with {method}…"):
        return _solve(problem.key(), method, tuple(sorted(options.items())))


def show_outcome(out: Outcome) -> bool:
    """Explain a missing or failed solve; True when there is a plan to draw."""
    if out.missing:
        st.info(out.note)
    elif out.plan is None:
        st.warning(out.note)
    elif not out.plan.success:
        st.warning(out.note)
    return out.ok


@st.cache_resource(max_entries=64, show_spinner=False)
def _audit(key: tuple, method: str, options: tuple):
    return _solve(key, method, options).plan.audit()


def audit(problem: gr.Problem, method: str, **options):
    """Exact enumeration of every draft tuple for a (cached) successful plan."""
    with st.spinner("Checking losslessness by enumerating every draft tuple…"):
        return _audit(problem.key(), method, tuple(sorted(options.items())))


MAX_AUDIT = 200_000  # draft tuples we enumerate in the app for an exact losslessness check


def audit_errors(problem: gr.Problem, method: str, **options) -> tuple[float, float] | None:
    """(‖output law − p‖₁, |acceptance − α*|) by enumerating every draft tuple; None past MAX_AUDIT."""
    if problem.V ** problem.n > MAX_AUDIT:
        return None
    try:
        result = audit(problem, method, **options)
    except (AssertionError, gr.SolverError, ValueError) as err:  # a rule that is not a distribution
        st.warning(f"{method}: the exact check failed: {err}")
        return float("inf"), float("inf")
    return result.l1, abs(result.acceptance - alpha(problem.key()))


def series(info: dict, field: str = "objective") -> dict:
    """Per-iteration traces a solver left in its info, one per system: `field` ("objective" or
    "gradient_norm") from info["history"][system], or a top-level 1-D info[field]."""
    out = {}
    for system, trace in info.get("history", {}).items():
        if isinstance(trace, dict) and np.ndim(trace.get(field)) == 1 and len(trace[field]):
            out[system] = np.asarray(trace[field], dtype=float)
    if np.ndim(info.get(field)) == 1 and len(info[field]):
        out[field] = np.asarray(info[field], dtype=float)
    return out


def weights(plan: gr.Plan) -> np.ndarray | None:
    """Per-token weights (V,) a solver reports (inner e^b on H*, outer e^a elsewhere), if any."""
    w = plan.info.get("weights")
    if w is not None and np.shape(w) == (plan.problem.V,):
        return np.asarray(w, dtype=float)
    return None


@st.cache_data(max_entries=64, show_spinner=False)
def monte_carlo(key: tuple, method: str, draws: int, seed: int, options: dict | None = None) -> np.ndarray:
    """Counts of output tokens over `draws` sampling steps: drafts from the law, output from π(·|ω) (the plan of
    `method` with solver `options`)."""
    plan = _solve(key, method, tuple(sorted((options or {}).items()))).plan
    rng = np.random.default_rng(seed)
    drafts = plan.problem.sample_drafts(rng, draws)
    pi = plan.conditionals(drafts)  # (draws, V)
    # inverse-CDF sampling of every row at once
    u = rng.random(draws)[:, None]
    tokens = (np.cumsum(pi, axis=1) / pi.sum(axis=1, keepdims=True) < u).sum(axis=1)
    return np.bincount(np.minimum(tokens, plan.problem.V - 1), minlength=plan.problem.V)


# --------------------------------------------------------------------------- uploads and downloads
def load_logits_file(name: str, data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Target and draft logits (V,) from an uploaded file, read by globalres.logits (never unpickling).

    The file holds arrays named "target" and "draft", or exactly two arrays (taken in order), or one
    array of shape (2, V) with rows target, draft.
    """
    from globalres.logits import check_logits, read_arrays

    arrays = read_arrays(data, name=name)
    if "target" in arrays and "draft" in arrays:
        arrays = [arrays["target"], arrays["draft"]]
    else:
        arrays = list(arrays.values())
    if len(arrays) == 1:
        (a,) = arrays
        if a.ndim != 2 or a.shape[0] != 2:
            raise gr.InputError(f"{name}: one array of shape {a.shape}; expected shape (2, V) with rows "
                                f"target, draft (or two arrays named 'target' and 'draft').")
        arrays = [a[0], a[1]]
    if len(arrays) != 2:
        raise gr.InputError(f"{name} holds {len(arrays)} arrays; expected two, named 'target' and 'draft'.")
    target, draft = (check_logits(a, f"{name}: {role} logits").ravel() for a, role in zip(arrays, ("target", "draft")))
    if target.size != draft.size:
        raise gr.InputError(f"{name}: target has {target.size} logits and draft {draft.size}; they must match.")
    if target.size > MAX_V_UPLOAD:
        raise gr.InputError(f"{name} has {target.size} tokens, past the app's limit of {MAX_V_UPLOAD}; "
                            f"slice the logits to the tokens you want to study.")
    return target, draft


def download_figure(fig, name: str, key: str) -> None:
    """A button that downloads `fig` as a standalone HTML file (plotly.js inlined: works offline)."""
    st.download_button("Download figure (HTML)", data=lambda: fig.to_html(include_plotlyjs=True),
                       file_name=f"{name}.html", mime="text/html", key=key, on_click="ignore")


def chart(fig, name: str, key: str) -> None:
    """Draw a plotly figure full width with its download button."""
    st.plotly_chart(fig, key=f"chart.{key}", config={"displaylogo": False})
    download_figure(fig, name, key=f"dl.{key}")


def download_plan(plan: gr.Plan, key: str) -> None:
    st.download_button("Download the plan (CSV)", data=lambda: plan_csv(plan),
                       file_name=f"plan_{plan.method}.csv", mime="text/csv", key=key, on_click="ignore")


def step(plan: gr.Plan, seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """One sampling step: drafts ω from the law, π(·|ω) from the plan, the output token drawn from it."""
    rng = np.random.default_rng(seed)
    drafts = plan.problem.sample_drafts(rng)
    pi = plan.conditional(drafts)
    return drafts, pi, int(rng.choice(pi.size, p=pi / pi.sum()))


def residual(problem: gr.Problem) -> np.ndarray | None:
    """ρ ∝ p − t on the outer tokens (Thm 6.2's targets t), the law a rejection redraws from; None if
    there is nothing to redraw (α* = 1). For i.i.d. drafts only."""
    from globalres.subset import outer_segments

    targets = outer_segments(problem)[2]
    rho = np.where(problem.mask(gr.h_star(problem)), 0.0, np.maximum(problem.p - targets, 0.0))
    rho[rho < 1e-12] = 0.0
    return rho / rho.sum() if rho.sum() > 0 else None


@st.cache_resource(show_spinner="Loading the bundled SmolLM2 pairs…")
def real_pairs():
    """The bundled real (target, draft) pairs, or the InputError saying why they are missing."""
    from globalres.realdata import load_bundled

    try:
        return load_bundled()
    except gr.InputError as err:
        return err


@st.cache_data(max_entries=64, show_spinner=False)
def real_problem_key(i: int, n: int, top_k: int, law: str = "iid") -> tuple:
    """Position i of the bundle as a Problem key: draft cut to its top-k, other tokens folded into one."""
    return real_pairs().problem(i, n, top_k=top_k, fold=True, law=law).key()


@st.cache_data(max_entries=64, show_spinner=False)
def real_alpha_topk(i: int, ks: tuple, ns: tuple) -> dict:
    """{n: [α* at each draft top-k]} at position i of the bundle (top-k = V: the whole vocabulary)."""
    pairs = real_pairs()
    return {n: [gr.alpha_star(pairs.problem(i, n, top_k=k, fold=True)) for k in ks] for n in ns}


@st.cache_resource(show_spinner=False)
def live_pair():
    """SmolLM2 and its early-exit draft, loaded once per server (about 15 s the first time, 3 s after)."""
    from globalres import live

    return live.load()


def plan_csv(plan: gr.Plan) -> str:
    """π(·|ω) for every draft multiset as CSV: one row per multiset with its probability Q."""
    from globalres.otlp import draft_groups

    reps, Q, _ = draft_groups(plan.problem, "multiset")
    pi = plan.conditionals(reps)  # (N, V)
    labels = [plan.problem.label(i) for i in range(plan.problem.V)]
    lines = ["drafts,Q," + ",".join(f"pi({s})" for s in labels)]
    for name, prob, row in zip(viz.group_labels(plan.problem, reps), Q, pi):
        lines.append(f"\"{name}\",{float(prob)!r}," + ",".join(repr(float(x)) for x in row))
    return "\n".join(lines) + "\n"


def ms(seconds: float) -> str:
    return "—" if not np.isfinite(seconds) else f"{seconds * 1e3:.1f} ms"
