"""Shared test helpers: hypothesis strategies for small problems and the validators every solver must pass.

Imported by the test modules as `from helpers import ...` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
from hypothesis import strategies as hst

import globalres as gr


@hst.composite
def weights(draw, V: int):
    """Non-negative weights with zeros, ties and values down to 1e-12, never all zero."""
    w = np.array(draw(hst.lists(hst.sampled_from([0.0, 1e-12, 1e-6, 0.01, 0.1, 0.3, 1.0, 2.0, 5.0]),
                                min_size=V, max_size=V)))
    if w.sum() == 0:
        w[draw(hst.integers(0, V - 1))] = 1.0
    return w


@hst.composite
def small_problems(draw, max_vocab: int = 6, max_drafts: int = 4, law: str = "iid"):
    """Small instances covering the edge cases: p = q, disjoint supports, one-hot, top-k q, tiny mass."""
    V = draw(hst.integers(1, max_vocab))
    n = draw(hst.integers(1, max_drafts))
    kind = draw(hst.sampled_from(["random", "random", "random", "equal", "disjoint", "one_hot", "top_k"]))
    p, q = draw(weights(V)), draw(weights(V))
    if kind == "equal":
        q = p.copy()
    elif kind == "disjoint" and V >= 2:
        cut = draw(hst.integers(1, V - 1))
        p[cut:], q[:cut] = 0.0, 0.0
        p[0], q[-1] = max(p[0], 1.0), max(q[-1], 1.0)
    elif kind == "one_hot":
        q = np.zeros(V)
        q[draw(hst.integers(0, V - 1))] = 1.0
    elif kind == "top_k":
        q = gr.problem.truncate_top_k(q / q.sum(), draw(hst.integers(1, V)))
    return gr.Problem.from_weights(p, q, n, law=law)


def random_problems(count: int, max_vocab: int = 6, max_drafts: int = 4, seed: int = 0):
    """Seeded random instances (Dirichlet p and q, some top-k truncated)."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        V = int(rng.integers(2, max_vocab + 1))
        n = int(rng.integers(1, max_drafts + 1))
        top_k = int(rng.integers(1, V + 1)) if i % 3 == 0 else None
        yield gr.Problem.random(V, n, seed=int(rng.integers(1 << 31)),
                                concentration=float(rng.choice([0.2, 1.0, 5.0])), top_k=top_k)


def brute_force_alpha(problem) -> tuple[float, list[np.ndarray]]:
    """1 + min over all 2^V subsets of ψ(H), and every exact minimiser (boolean masks).

    ψ is evaluated in exact rational arithmetic on the float inputs, so the minimisers are the true ones
    (i.i.d. law; other laws in floating point).
    """
    V = problem.V
    masks = ((np.arange(1 << V)[:, None] >> np.arange(V)) & 1).astype(bool)
    if problem.law == "iid":
        p = [Fraction(x) for x in problem.p.tolist()]
        q = [Fraction(x) for x in problem.q.tolist()]
        psi = [sum(p[i] for i in np.flatnonzero(m)) - sum(q[i] for i in np.flatnonzero(m)) ** problem.n
               for m in masks]
    else:
        psi = [problem.psi(m) for m in masks]
    best = min(psi)
    return 1.0 + float(best), [m for m, v in zip(masks, psi) if v == best]


def assert_valid_plan(plan, *, alpha=None, acceptance_atol=1e-9, l1_atol=1e-9):
    """The guarantees every optimal plan gives: success, acceptance = α*, lossless by exact enumeration."""
    assert plan.success, f"{plan.method}: {plan.message}"
    alpha = gr.alpha_star(plan.problem) if alpha is None else alpha
    audit = plan.audit()
    assert abs(plan.acceptance - alpha) <= acceptance_atol, (plan.method, plan.acceptance, alpha)
    assert audit.acceptance_gap <= acceptance_atol, (plan.method, audit.acceptance, plan.acceptance)
    assert audit.l1 <= l1_atol, (plan.method, audit.l1, audit.output_law, plan.problem.p)
    return audit
