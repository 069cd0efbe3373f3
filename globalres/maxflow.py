"""Max-flow / min-cut (paper §2.4) and the "optimised max-flow" that solves one slice (§2.5, Eq. 8).

The network Ω: source s → token i (capacity p(i)) → draft group ω (capacity ∞ when i ∈ set(ω))
→ sink t (capacity Q(ω)). The flow on i → ω is the relaxed-OTLP variable S[i, ω], so the max-flow
value is α*. A cut whose sink side holds the tokens H costs p(H) + 1 − Q(Hⁿ) = 1 + ψ(H): min-cut is
subset selection, and the tokens on the sink side of a minimum cut form a minimiser H*.

Complementary slackness (the paper's Thm 5.1) splits an optimal flow in two independent systems:

- outer: tokens outside H*, tuples with some token outside H*: every such tuple is fully accepted,
  the tokens taking their Thm 6.2 outer masses t(v) ≤ p(v);
- inner: tokens of H*, tuples inside (H*)ⁿ: every token of H* receives all of p(i); the slack of the
  tuples is the rejected mass, redrawn from the outer residual p − t.

The optimised max-flow solves only the system of the observed tuple, on a network a fraction of Ω's size.
"""

from __future__ import annotations

import time
from collections import deque

import networkx as nx
import numpy as np

from .otlp import MAX_VARIABLES, _conditional_table, check_size, draft_groups
from .plan import Plan, table_rule
from .problem import InputError, Problem
from .subset import TIE, alpha_star, h_star, outer_segments

EPS = TIE  # residual capacity below this counts as saturated, as ψ ties do in the sorted scan


def network(p_cap: np.ndarray, tokens: np.ndarray, reps: np.ndarray, Q: np.ndarray,
            member: np.ndarray) -> nx.DiGraph:
    """Ω restricted to `tokens` (capacities p_cap on s → i) and the draft groups `reps` (capacities Q)."""
    G = nx.DiGraph()
    G.add_node("s", layer=0)
    G.add_node("t", layer=3)
    for i in tokens.tolist():
        G.add_edge("s", ("token", i), capacity=float(p_cap[i]))
        G.nodes[("token", i)]["layer"] = 1
    for g, rep in enumerate(reps.tolist()):
        node = ("draft", tuple(rep))
        G.add_node(node, layer=2, group=g)
        G.add_edge(node, "t", capacity=float(Q[g]))
        for i in np.flatnonzero(member[g]).tolist():
            if G.has_node(("token", i)):
                G.add_edge(("token", i), node)  # no capacity attribute: infinite in networkx
    return G


def _max_flow(G: nx.DiGraph):
    """The max-flow value, the residual network, and the sink side of the minimum cut with the
    fewest tokens on the sink side (those nodes that can still reach t in the residual network)."""
    R = nx.algorithms.flow.edmonds_karp(G, "s", "t")  # preflow_push breaks on 1e-20 capacities
    sink_side, todo = {"t"}, deque(["t"])
    while todo:  # reverse search: u joins if u → v has residual capacity and v can reach t
        v = todo.popleft()
        for u in R.predecessors(v):
            if u not in sink_side and R[u][v]["capacity"] - R[u][v]["flow"] > EPS:
                sink_side.add(u)
                todo.append(u)
    return R.graph["flow_value"], R, sink_side


def _flows(R: nx.DiGraph, reps: np.ndarray, V: int) -> np.ndarray:
    """S[i, g]: the flow on token i → draft group g."""
    index = {("draft", tuple(rep)): g for g, rep in enumerate(reps.tolist())}
    S = np.zeros((V, len(reps)))
    for u, v, data in R.edges(data=True):
        if v in index and isinstance(u, tuple) and u[0] == "token" and data["flow"] > 0:
            S[u[1], index[v]] = data["flow"]
    return S


def solve(problem: Problem, *, group: str = "multiset", max_variables: int = MAX_VARIABLES) -> Plan:
    """Max-flow on Ω (networkx Edmonds–Karp), its minimum cut, and the OTLP plan of Eq. 18.

    Returns a Plan with h_star = the tokens on the sink side of the minimum cut (the smallest minimiser
    of ψ), and info: "graph" (Ω with capacities), "flow" S (V, N), "flow_value", "cut_value"
    (= 1 + ψ(H*) = p(H*) + 1 − Q(H*ⁿ)), "groups", "group_probs", "member", "plan", "seconds".
    """
    check_size(problem, group, max_variables, name="max-flow")
    start = time.perf_counter()
    reps, Q, member = draft_groups(problem, group)
    V = problem.V
    G = network(problem.p, np.arange(V), reps, Q, member)
    value, R, sink_side = _max_flow(G)
    S = _flows(R, reps, V)
    H = np.array(sorted(node[1] for node in sink_side if isinstance(node, tuple) and node[0] == "token"),
                 dtype=np.int64)
    for u, v, data in G.edges(data=True):  # R leaves out zero-capacity edges
        data["flow"] = R[u][v]["flow"] if R.has_edge(u, v) else 0.0
    p_res = np.maximum(problem.p - S.sum(axis=1), 0.0)
    Q_res = np.maximum(Q - S.sum(axis=0), 0.0)
    C = S + (np.outer(p_res, Q_res) / p_res.sum() if p_res.sum() > 0 else 0.0)
    pi = _conditional_table(C, Q, member)
    cut_value = float(problem.p[H].sum() + 1.0 - problem.all_in_probability(H))
    info = dict(graph=G, flow=S, flow_value=float(value), cut_value=cut_value, plan=C, conditional=pi,
                groups=reps, group_probs=Q, member=member, group=group, p_res=p_res,
                seconds=time.perf_counter() - start)
    return Plan(problem, "maxflow", float(value), table_rule(reps, pi, group), h_star=H, info=info)


def solve_sliced(problem: Problem, *, group: str = "multiset", max_variables: int = MAX_VARIABLES) -> Plan:
    """The optimised max-flow: H* by the sorted scan, then a max-flow on one slice per observed tuple.

    π(·|ω) solves (once, then cached) only the system ω belongs to: the outer network (tokens outside
    H* with capacities t(v) from Thm 6.2, tuples with a token outside H*) or the inner network (tokens
    of H* with capacities p, tuples inside (H*)ⁿ). Using the Thm 6.2 targets t(v) on the outer side
    makes the two slices consistent: the inner rejections are redrawn from exactly p − t.
    """
    if problem.law != "iid":
        raise InputError("opt_maxflow needs the outer targets of Thm 6.2, known for law='iid' only; "
                         "use method='maxflow' or 'lp' for other draft laws.")
    check_size(problem, group, max_variables, name="max-flow")
    start = time.perf_counter()
    H = np.sort(h_star(problem))
    inside = problem.mask(H)
    _, _, targets = outer_segments(problem)
    residual = problem.p - targets
    residual = np.where(inside, 0.0, np.maximum(residual, 0.0))
    V = problem.V
    slices = {}

    def slice_table(name):
        if name not in slices:
            t0 = time.perf_counter()
            reps, Q, member = draft_groups(problem, group)
            all_inner = inside[reps].all(axis=1)
            keep = all_inner if name == "inner" else ~all_inner
            reps, Q, member = reps[keep], Q[keep], member[keep]
            if name == "outer":  # only the outer tokens of a tuple may carry its flow (zero conditions)
                member = member & ~inside
                tokens, cap = np.flatnonzero(~inside), targets
            else:
                tokens, cap = H, problem.p
            _, R, _ = _max_flow(network(cap, tokens, reps, Q, member))
            S = _flows(R, reps, V)
            pi = S.T / np.where(Q > 0, Q, 1.0)[:, None]
            if name == "inner" and residual.sum() > 0:  # rejected mass → residual draw
                reject = np.clip(1.0 - pi.sum(axis=1, keepdims=True), 0.0, 1.0)
                pi = pi + reject * residual / residual.sum()
            pi /= np.where(pi.sum(axis=1, keepdims=True) > 0, pi.sum(axis=1, keepdims=True), 1.0)
            slices[name] = dict(rule=table_rule(reps, pi, group), groups=reps, group_probs=Q,
                                flow=S, seconds=time.perf_counter() - t0, graph_nodes=len(tokens) + len(reps) + 2)
        return slices[name]

    def rule(drafts: np.ndarray) -> np.ndarray:
        out = np.empty((len(drafts), V))
        is_inner = inside[drafts].all(axis=1)
        for name, rows in (("inner", is_inner), ("outer", ~is_inner)):
            if rows.any():
                out[rows] = slice_table(name)["rule"](drafts[rows])
        return out

    info = dict(targets=targets, residual=residual, slices=slices, seconds=time.perf_counter() - start)
    return Plan(problem, "opt_maxflow", alpha_star(problem), rule, h_star=H, info=info)
