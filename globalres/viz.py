"""Plotly figures for the app: every builder takes library objects and returns a `go.Figure`.

Notation: p target, q draft, n drafts, V tokens, ψ(H) = p(H) − Q(Hⁿ) (the chance that all n drafts lie in H:
q(H)ⁿ for i.i.d. drafts), H* the smallest minimiser of ψ, α* = 1 + ψ(H*). Colours are the Okabe–Ito palette
(distinguishable with the common colour-vision deficiencies); heatmaps use Viridis. Fonts are sized for a projector.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from .plan import Plan
from .problem import Problem
from .subset import order, outer_segments, prefix_psi

# Okabe–Ito
BLACK, ORANGE, SKY, GREEN, YELLOW, BLUE, VERMILLION, PURPLE = (
    "#000000", "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7")
P_COLOUR, Q_COLOUR, H_COLOUR, ACCEPT_COLOUR = BLUE, ORANGE, "rgba(0,158,115,0.15)", VERMILLION
FONT = 16
MAX_OUTLINES = 3000  # shapes beyond this make the browser sluggish
SINK_X = 3.6  # the draft groups' labels (right of x = 2) ran into the sink's at 3
MAX_TICKS = 20  # category labels on an axis; past this, every k-th


def _style(fig: go.Figure, title: str, height: int = 420) -> go.Figure:
    # the legend at the foot of the figure: above the plot, in a half-width column, it wrapped into the title
    fig.update_layout(title=dict(text=title, font=dict(size=FONT + 4)), height=height, template="plotly_white",
                      font=dict(size=FONT), margin=dict(l=60, r=20, t=60, b=50),
                      legend=dict(orientation="h", yref="container", yanchor="bottom", y=0, x=0, xanchor="left"))
    return fig


def _labels(problem: Problem) -> list[str]:
    return [problem.label(i) for i in range(problem.V)]


def group_labels(problem: Problem, groups: np.ndarray) -> list[str]:
    """Names for draft groups: '{a,a,b}' for a multiset's sorted tuple."""
    return ["{" + ",".join(problem.label(int(i)) for i in g) + "}" for g in np.asarray(groups).tolist()]


def distributions(problem: Problem, h_star=()) -> go.Figure:
    """p and q per token, the tokens of H* shaded (all-in drafts from H* are where rejection happens)."""
    labels = _labels(problem)
    fig = go.Figure()
    for i in np.asarray(h_star, dtype=int):
        fig.add_vrect(x0=i - 0.5, x1=i + 0.5, fillcolor=H_COLOUR, line_width=0, layer="below")
    x = np.arange(problem.V)
    fig.add_bar(x=x, y=problem.p, name="target p", marker_color=P_COLOUR,
                hovertemplate="%{customdata}: p = %{y:.4f}<extra></extra>", customdata=labels)
    fig.add_bar(x=x, y=problem.q, name="draft q", marker_color=Q_COLOUR, marker_pattern_shape="/",
                hovertemplate="%{customdata}: q = %{y:.4f}<extra></extra>", customdata=labels)
    fig.update_xaxes(tickvals=x, ticktext=labels, title="token (shaded: H*)")
    fig.update_yaxes(title="probability", rangemode="tozero")
    return _style(fig, f"Target and draft, n = {problem.n} ({problem.law})")


def matrix_heatmap(problem: Problem, matrix: np.ndarray, groups: np.ndarray, member: np.ndarray,
                   title: str, *, group_probs=None) -> go.Figure:
    """A (V, N) transport matrix as a heatmap: rows are draft groups, columns output tokens.

    Cells where the output token is one of the group's drafts (accepting cells) are outlined: the
    accepted mass is what lies inside the outlines.
    """
    z = np.asarray(matrix, dtype=float).T  # (N, V)
    N, V = z.shape
    rows, cols = group_labels(problem, groups), _labels(problem)
    hover = "drafts %{y} → output %{x}<br>mass %{z:.5f}"
    custom = None
    if group_probs is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            custom = np.where(np.asarray(group_probs)[:, None] > 0, z / np.asarray(group_probs)[:, None], 0.0)
        hover += "<br>π(output | drafts) = %{customdata:.4f}"
    text = np.where(z > 5e-4, np.char.mod("%.3f", z), "") if N * V <= 150 else None  # zeros stay blank
    fig = go.Figure(go.Heatmap(z=z, x=cols, y=rows, colorscale="Viridis", customdata=custom, text=text,
                               texttemplate="%{text}" if text is not None else None,
                               hovertemplate=hover + "<extra></extra>", colorbar=dict(title="mass")))
    height = int(min(1400, 220 + 24 * N))
    gi, ti = np.nonzero(member)
    if gi.size <= MAX_OUTLINES:  # outline each accepting cell (token ∈ drafts); categories sit at 0, 1, …
        for g, t in zip(gi, ti):
            fig.add_shape(type="rect", x0=t - 0.5, x1=t + 0.5, y0=g - 0.5, y1=g + 0.5,
                          line=dict(color=ACCEPT_COLOUR, width=3), layer="above")
        fig.add_scatter(x=[None], y=[None], mode="markers", name="accepting cell (token ∈ drafts)",
                        marker=dict(symbol="square-open", size=14, color=ACCEPT_COLOUR, line=dict(width=3)))
    fig.update_layout(showlegend=True)
    fig.update_yaxes(autorange="reversed", title="draft multiset", type="category")
    fig.update_xaxes(title="output token", type="category")
    return _style(fig, title, height=height)


def plan_heatmap(plan: Plan, which: str = "plan", title: str | None = None) -> go.Figure:
    """The OTLP's plan C (which="plan") or the relaxed optimum S (which="relaxed") from a Plan's info."""
    info = plan.info
    default = {"plan": f"{plan.method}: plan C, α = {plan.acceptance:.6f}",
               "relaxed": f"relaxed OTLP: accepting mass S, Σ S = {info.get('relaxed_value', np.nan):.6f}"}
    return matrix_heatmap(plan.problem, info[which], info["groups"], info["member"], title or default[which],
                          group_probs=info.get("group_probs"))


def residuals(plan: Plan) -> go.Figure:
    """The relaxed LP's residuals p_res (per token) used by the Eq. 18 reconstruction."""
    pb = plan.problem
    fig = go.Figure(go.Bar(x=_labels(pb), y=plan.info["p_res"], marker_color=VERMILLION, name="p_res"))
    fig.update_xaxes(title="token", type="category")
    fig.update_yaxes(title="p_res = p − Σ_ω S", rangemode="tozero")
    return _style(fig, f"Residual target mass: Σ p_res = 1 − α = {np.sum(plan.info['p_res']):.6f}", 320)


def psi_chain(problem: Problem) -> go.Figure:
    """ψ along the q/p-decreasing chain of prefixes, H* marked and the outer segments shaded.

    Prefix k holds the k tokens with the largest q/p; min_k ψ_k = ψ(H*) = α* − 1 (Lemma 6.3).
    The dashed line is the running minimum of ψ from the full set down to H*: the outer chain of
    Thm 6.2, whose records cut the outer tokens into segments.
    """
    tokens = order(problem)
    psi = prefix_psi(problem, tokens)
    k = int(np.flatnonzero(psi <= psi.min() + 1e-13)[0])
    x = np.arange(problem.V + 1)
    names = ["∅"] + ["+" + problem.label(int(t)) for t in tokens]
    fig = go.Figure()
    segments, _, _ = outer_segments(problem)
    position = {int(t): j for j, t in enumerate(tokens)}
    for s, seg in enumerate(segments):
        js = [position[int(t)] for t in seg]
        fig.add_vrect(x0=min(js), x1=max(js) + 1, line_width=0, layer="below",
                      fillcolor=[SKY, YELLOW][s % 2], opacity=0.3)
    fig.add_vrect(x0=0, x1=max(k, 0.02), fillcolor=H_COLOUR, line_width=0, layer="below")
    fig.add_scatter(x=x, y=psi, mode="lines+markers", name="ψ(prefix)", line=dict(color=BLUE, width=3),
                    customdata=names, hovertemplate="prefix of %{x} tokens (%{customdata})<br>ψ = %{y:.5f}"
                                                    "<extra></extra>")
    tail = psi[k:][::-1]
    fig.add_scatter(x=x[k:][::-1], y=np.minimum.accumulate(tail), mode="lines", name="running min (outer chain)",
                    line=dict(color=VERMILLION, dash="dash", width=2))
    fig.add_scatter(x=[k], y=[psi[k]], mode="markers+text", name="H*", text=[f"H*: α* = {1 + psi[k]:.5f}"],
                    # at either end of the chain a centred label would be cut by the plot's edge
                    textposition="bottom right" if k == 0 else "bottom left" if k == len(x) - 1 else "bottom center",
                    marker=dict(size=16, color=BLACK, symbol="star"))
    every = -(-x.size // MAX_TICKS)  # at V = 64 a label per prefix smeared into one band
    fig.update_xaxes(title="prefix, tokens by q/p ↓ (shaded: H*, segments)", tickvals=x[::every],
                     ticktext=names[::every])
    fig.update_yaxes(title="ψ(H) = p(H) − Q(Hⁿ)")
    return _style(fig, "ψ along the q/p-sorted chain")


def token_weights(problem: Problem, weights: np.ndarray, inner: np.ndarray, title: str) -> go.Figure:
    """log-weights per token, inner (H*) and outer tokens in two colours; zero weights left out."""
    w = np.asarray(weights, dtype=float)
    inner = np.asarray(inner, dtype=bool)
    labels = np.array(_labels(problem))
    fig = go.Figure()
    for mask, name, colour in ((inner, "inner (H*)", GREEN), (~inner, "outer", PURPLE)):
        keep = mask & (w > 0) & np.isfinite(w)
        fig.add_bar(x=labels[keep], y=np.log(w[keep]), name=name, marker_color=colour,
                    hovertemplate="%{x}: log w = %{y:.4f}<extra></extra>")
    fig.update_xaxes(title="token", type="category")
    fig.update_yaxes(title="log w")
    return _style(fig, title, 360)


def traces(series: dict[str, np.ndarray], title: str, ytitle: str, *, log: bool = False) -> go.Figure:
    """One line per method: a value per iteration (objective, gradient norm …)."""
    fig = go.Figure()
    colours = [BLUE, VERMILLION, GREEN, PURPLE, ORANGE, SKY]
    for (name, y), colour in zip(series.items(), colours):
        y = np.asarray(y, dtype=float).ravel()
        fig.add_scatter(x=np.arange(1, y.size + 1), y=y, mode="lines+markers", name=name,
                        line=dict(color=colour, width=3))
    fig.update_xaxes(title="iteration")
    fig.update_yaxes(title=ytitle, type="log" if log else "linear", exponentformat="power")
    return _style(fig, title, 380).update_layout(showlegend=True)


def acceptance_bars(names: list[str], acceptance: list[float], alpha_star: float,
                    lossless: list[bool] | None = None) -> go.Figure:
    """Acceptance of each verifier against the optimum α* (a vertical line)."""
    colours = [GREEN if ok else VERMILLION for ok in (lossless or [True] * len(names))]
    text = [f"{a:.4f}" + ("" if ok else " (lossy!)") for a, ok in zip(acceptance, lossless or [True] * len(names))]
    # values inside the bars, at their ends: outside, those near α* sat on its dashed line
    fig = go.Figure(go.Bar(y=names, x=acceptance, orientation="h", marker_color=colours, text=text,
                           textposition="auto", insidetextanchor="end", insidetextfont=dict(color="white"),
                           hovertemplate="%{y}: %{x:.6f}<extra></extra>"))
    fig.add_vline(x=alpha_star, line=dict(color=BLACK, dash="dash", width=2),
                  annotation_text=f"α* = {alpha_star:.4f}", annotation_position="top")
    fig.update_xaxes(title="P(output ∈ drafts)", range=[0, 1.3 if not all(lossless or [True]) else 1.12])
    fig.update_yaxes(autorange="reversed")
    return _style(fig, "Acceptance of each verifier", int(160 + 40 * len(names)))


def mc_histogram(problem: Problem, counts: np.ndarray) -> go.Figure:
    """Empirical output frequencies (with ±2 binomial standard errors) against the target p."""
    counts = np.asarray(counts, dtype=float)
    m = counts.sum()
    freq = counts / m
    err = 2 * np.sqrt(problem.p * (1 - problem.p) / m)
    labels = _labels(problem)
    fig = go.Figure()
    fig.add_bar(x=labels, y=freq, name=f"output frequency ({int(m)} steps)", marker_color=SKY,
                hovertemplate="%{x}: %{y:.4f}<extra></extra>")
    fig.add_scatter(x=labels, y=problem.p, mode="markers", name="target p ± 2 s.e.",
                    marker=dict(color=BLACK, size=12, symbol="line-ew-open", line=dict(width=3)),
                    error_y=dict(type="data", array=err, color=BLACK))
    fig.update_xaxes(title="output token", type="category")
    fig.update_yaxes(title="frequency", rangemode="tozero")
    return _style(fig, "Monte Carlo: output tokens against p", 430)


def step_bars(problem: Problem, drafts, pi: np.ndarray, output: int | None = None) -> go.Figure:
    """π(·|ω) for one draft tuple: draft tokens in vermillion, the sampled output outlined."""
    labels = _labels(problem)
    drafted = set(int(x) for x in np.asarray(drafts).ravel())
    colours = [ACCEPT_COLOUR if i in drafted else SKY for i in range(problem.V)]
    widths = [4 if i == output else 0 for i in range(problem.V)]
    fig = go.Figure(go.Bar(x=labels, y=pi, marker=dict(color=colours, line=dict(color=BLACK, width=widths)),
                           hovertemplate="%{x}: π = %{y:.4f}<extra></extra>", name="π(·|ω)"))
    if output is not None:
        fig.add_annotation(x=labels[output], y=float(pi[output]), text="output", showarrow=True, arrowhead=2)
    fig.update_xaxes(title="token (vermillion: drafted)", type="category")
    fig.update_yaxes(title="π(token | ω)", range=[0, 1.05])
    return _style(fig, "π(· | ω)", 340)


def flow_network(problem: Problem, groups: np.ndarray, group_probs: np.ndarray, flows: np.ndarray,
                 h_star=(), title: str = "Max-flow network", *, compact: bool = False) -> go.Figure:
    """The max-flow network of the paper's §2.4: source → tokens → draft groups → sink.

    Edges s→i have capacity p(i), i→ω capacity ∞ when i ∈ ω, ω→t capacity Q(ω); `flows` (V, N)
    is the flow on the middle edges. The source side of the min cut holds every token outside H*;
    tokens in H* (the cut's token side) are drawn in green. Hover a node or an edge midpoint for its
    capacity and flow. `compact` (a third of the page): draft groups unlabelled (hover them), token labels
    above their nodes (beside them, the middle token's ran into the source and the sink).
    """
    groups = np.asarray(groups)
    F = np.asarray(flows, dtype=float)  # (V, N)
    V, N = F.shape
    H = set(int(i) for i in np.asarray(h_star, dtype=int))
    tok_y = np.linspace(1, 0, V) if V > 1 else np.array([0.5])
    grp_y = np.linspace(1, 0, N) if N > 1 else np.array([0.5])
    glabels = group_labels(problem, groups)
    fig = go.Figure()
    inflow, outflow = F.sum(axis=1), F.sum(axis=0)

    def edges(x0, y0, x1, y1, flow, cap, name, colour):
        xs, ys, mx, my, text = [], [], [], [], []
        for a, b, c, d, f, k in zip(x0, y0, x1, y1, flow, cap):
            xs += [a, c, None]
            ys += [b, d, None]
            mx.append((a + c) / 2)
            my.append((b + d) / 2)
            text.append(f"{name}<br>flow {f:.5f}<br>capacity {k}")
        fig.add_scatter(x=xs, y=ys, mode="lines", line=dict(color=colour, width=1.5), hoverinfo="skip",
                        showlegend=False)
        fig.add_scatter(x=mx, y=my, mode="markers", marker=dict(size=6, color=colour, opacity=0.5),
                        hovertext=text, hoverinfo="text", showlegend=False)

    edges([0] * V, [0.5] * V, [1] * V, tok_y, inflow, [f"{x:.5f}" for x in problem.p], "source → token", SKY)
    gi, ti = np.nonzero(np.asarray(F.T > 1e-12))
    edges([1] * gi.size, tok_y[ti], [2] * gi.size, grp_y[gi], F[ti, gi], ["∞"] * gi.size,
          "token → drafts (carrying flow)", GREEN)
    edges([2] * N, grp_y, [SINK_X] * N, [0.5] * N, outflow, [f"{x:.5f}" for x in group_probs], "drafts → sink",
          ORANGE)
    labels = _labels(problem)
    hover = [f"{labels[i]}: p = {problem.p[i]:.5f}, flow in {inflow[i]:.5f}" for i in range(V)]
    for inside, name, colour in ((False, "tokens (source side)", BLUE), (True, "H* (sink side of the min cut)", GREEN)):
        ids = [i for i in range(V) if (i in H) == inside]
        fig.add_scatter(x=[1] * len(ids), y=tok_y[ids], mode="markers", name=name,
                        hovertext=[hover[i] for i in ids], hoverinfo="text",
                        marker=dict(size=18, color=colour, line=dict(color=BLACK, width=1)))
    fig.add_scatter(x=[2] * N, y=grp_y, mode="markers", marker=dict(size=12, color=ORANGE), name="draft multisets",
                    hovertext=[f"{glabels[g]}: Q = {group_probs[g]:.5f}, flow out {outflow[g]:.5f}"
                               for g in range(N)], hoverinfo="text")
    # labels as annotations on a white ground: as scatter text they sat on the edges that cross them
    ground = dict(showarrow=False, bgcolor="rgba(255,255,255,0.85)", font=dict(size=FONT - 2, color=BLACK))
    for i in range(V):
        if compact:
            fig.add_annotation(x=1, y=tok_y[i], text=labels[i], yanchor="bottom", yshift=10, **ground)
        else:
            fig.add_annotation(x=1, y=tok_y[i], text=labels[i], xanchor="right", xshift=-14, **ground)
    for g in range(N if N <= 40 and not compact else 0):
        fig.add_annotation(x=2, y=grp_y[g], text=glabels[g], xanchor="left", xshift=9, **ground)
    fig.add_scatter(x=[0, SINK_X], y=[0.5, 0.5], mode="markers", marker=dict(size=22, color=BLACK),
                    name="s, t", hoverinfo="skip")
    for x, text in ((0, "source s"), (SINK_X, "sink t")):
        fig.add_annotation(x=x, y=0.5, text=text, yanchor="top", yshift=-14, **ground)
    fig.update_xaxes(visible=False, range=[-0.9, SINK_X + 1.1])
    fig.update_yaxes(visible=False, range=[-0.08, 1.08])
    return _style(fig, title, height=int(min(1200, 300 + 18 * max(V, N))))


def pipeline() -> go.Figure:
    """The one picture of the Home page: draft → n drafts → verifier → output ~ p."""
    boxes = [(0.0, "draft model q", ORANGE, BLACK), (1.0, "n drafts ω = (x₁..xₙ)", YELLOW, BLACK),
             (2.0, "verifier π(·|ω)", SKY, BLACK), (3.0, "output token ~ p", BLUE, "white")]
    fig = go.Figure()
    for x, text, colour, ink in boxes:
        fig.add_shape(type="rect", x0=x - 0.42, x1=x + 0.42, y0=0.3, y1=0.7, fillcolor=colour,
                      line=dict(color=BLACK, width=1))
        fig.add_annotation(x=x, y=0.5, text=f"<b>{text}</b>", showarrow=False, font=dict(size=FONT + 2, color=ink))
    for x in (0.0, 1.0, 2.0):
        fig.add_annotation(x=x + 0.58, y=0.5, ax=x + 0.42, ay=0.5, xref="x", yref="y", axref="x", ayref="y",
                           text="", showarrow=True, arrowhead=3, arrowsize=1.5, arrowwidth=2)
    fig.add_annotation(x=2.5, y=0.15, text="accepted if the output is one of the drafts: P = α ≤ α*",
                       showarrow=False, font=dict(size=FONT, color=BLACK))
    fig.add_annotation(x=0.5, y=0.85, text="target model p checks all drafts in one pass", showarrow=False,
                       font=dict(size=FONT, color=BLACK))
    fig.update_xaxes(visible=False, range=[-0.5, 3.5])
    fig.update_yaxes(visible=False, range=[0, 1])
    return _style(fig, "", 230).update_layout(showlegend=False, margin=dict(l=10, r=10, t=10, b=10))


def alpha_curve(ns, alphas, single: float | None = None, title: str = "α* against the number of drafts") -> go.Figure:
    """α*(n) for several n; `single` (α at n = 1, Σ min(p, q)) as a dashed reference."""
    fig = go.Figure(go.Scatter(x=list(ns), y=list(alphas), mode="lines+markers", name="α*(n)",
                               line=dict(color=BLUE, width=3), hovertemplate="n = %{x}: α* = %{y:.5f}<extra></extra>"))
    if single is not None:
        fig.add_hline(y=single, line=dict(color=ORANGE, dash="dash", width=2),
                      annotation_text=f"one draft: {single:.4f}", annotation_position="bottom right")
    fig.update_xaxes(title="n (drafts)", dtick=1)
    fig.update_yaxes(title="α*", rangemode="tozero")
    return _style(fig, title, 340)


def alpha_topk(ks, curves: dict, V: int, title: str = "α* against the draft's top-k") -> go.Figure:
    """α* for each number of drafts n (one line per n) against the draft's top-k (log axis; k = V last)."""
    fig = go.Figure()
    for colour, (n, alphas) in zip((ORANGE, SKY, GREEN, BLUE, VERMILLION, PURPLE), curves.items()):
        fig.add_scatter(x=list(ks), y=list(alphas), mode="lines+markers", name=f"n = {n}",
                        line=dict(color=colour, width=3),
                        hovertemplate=f"n = {n}, k = %{{x}}: α* = %{{y:.5f}}<extra></extra>")
    fig.update_xaxes(title=f"draft top-k (k = {V}: all)", type="log")  # a longer title was cut in half a page
    fig.update_yaxes(title="α*", rangemode="tozero")
    return _style(fig, title, 340)


def live_html(tokens) -> str:
    """Decoded tokens as HTML spans: accepted drafts green, resampled tokens vermillion, bonus tokens sky blue."""
    import html

    colour = {"accepted": GREEN, "resampled": VERMILLION, "bonus": SKY}
    spans = [f'<span style="background:{colour.get(t.kind, "#ddd")}33;border-bottom:3px solid '
             f'{colour.get(t.kind, "#999")}" title="{t.kind}">{html.escape(t.text).replace(chr(10), "<br>")}</span>'
             for t in tokens]
    return '<div style="font-size:1.15rem;line-height:2">' + "".join(spans) + "</div>"
