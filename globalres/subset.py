"""Subset selection: α* and H* by one sorted scan, and the outer residuals of Thm 6.2.

Notation: ψ(H) = p(H) − Q(Hⁿ), α* = 1 + min_H ψ(H) (Hu et al. 2025; the paper's Thm 3.1).

For i.i.d. drafts ψ(H) = p(H) − q(H)ⁿ is submodular and its minimisers are prefixes of the tokens
sorted by q/p decreasing (the paper's Lemma 6.3, "i.i.d. q-convexity"). Hu et al. show the same
prefix structure for sampling without replacement, so one scan of V + 1 prefixes finds min ψ there
too; for greedy and hub drafts the deterministic drafts T go first (see `order`).
"""

from __future__ import annotations

import numpy as np

from .problem import Problem

TIE = 1e-14  # ψ values this close count as equal: ties go to the smaller set (see exact_solver.md §5)


def order(problem: Problem) -> np.ndarray:
    """Tokens by q/p decreasing (q/p = ∞ where p = 0 < q); tokens with p = q = 0 last; ties by id."""
    p, q = problem.p, problem.q
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(p > 0, q / p, np.inf)
    ratio = np.where((p == 0) & (q == 0), -1.0, ratio)
    if problem.law in ("greedy", "hub"):
        # Q(Hⁿ) = [T ⊆ H] q'(H ∖ T): ψ is minimised by ∅ or T ∪ {q' > p}, a prefix once T comes first
        ratio[problem.deterministic_drafts()] = np.inf
    return np.lexsort((np.arange(problem.V), -ratio))


def prefix_psi(problem: Problem, tokens: np.ndarray | None = None) -> np.ndarray:
    """ψ of every prefix of `tokens` (default: `order(problem)`): array of length V + 1, ψ[0] = ψ(∅) = 0."""
    tokens = order(problem) if tokens is None else tokens
    P = np.concatenate([[0.0], np.cumsum(problem.p[tokens])])
    if problem.law == "iid":
        Q = np.concatenate([[0.0], np.cumsum(problem.q[tokens])])
        return P - np.minimum(Q, 1.0) ** problem.n
    return P - problem.prefix_all_in(tokens)


def _scan(problem: Problem):
    tokens = order(problem)
    psi = prefix_psi(problem, tokens)
    k = int(np.flatnonzero(psi <= psi.min() + TIE)[0])  # the smallest minimiser
    return tokens, psi, k


def alpha_star(problem: Problem) -> float:
    """The optimal acceptance α* = 1 + min_H [p(H) − Q(Hⁿ)], in O(V log V).

    Examples
    --------
    >>> from globalres import Problem
    >>> round(alpha_star(Problem([0.5, 0.3, 0.2], [0.2, 0.3, 0.5], n=2)), 6)  # peers.md D2
    0.86
    """
    tokens, psi, k = _scan(problem)
    return float(1.0 + psi[k])


def h_star(problem: Problem) -> np.ndarray:
    """Token ids of the smallest minimiser H* of ψ, in q/p-decreasing order."""
    tokens, psi, k = _scan(problem)
    return tokens[:k].copy()


def outer_segments(problem: Problem):
    """The outer chain of Thm 6.2 cut into segments at its running-minimum records.

    Let v_1..v_m be the tokens outside H* by q/p increasing (most under-drafted first, tokens with
    p = q = 0 left out), H_i = H* ∪ {v_i..v_m} and ψ̃_i = ψ(H_i). A record is i = 1 or any i with
    ψ̃_i ≤ min_{j<i} ψ̃_j; consecutive records r_l < r_{l+1} bound segment G_l = {v_{r_l}..v_{r_{l+1}−1}}.
    Segment G_l receives the draft mass M_l = Q(H_{r_l}ⁿ) − Q(H_{r_{l+1}}ⁿ): the probability that the
    most under-drafted outer draft lies in G_l. Thm 6.2's outer targets are then t(v) = p(v) for all
    but the last token of each segment, which takes what is left of M_l; the residual p − t is
    ψ̃_{r_l} − ψ̃_{r_{l+1}} ≥ 0 on that last token and zero elsewhere.

    Returns
    -------
    segments : list of int arrays, token ids of each G_l in chain order
    masses : float array, M_l for each segment
    targets : float array (V,), t(v) on outer tokens, p(v) on H* (the inner targets)
    """
    tokens, psi, k = _scan(problem)
    p = problem.p
    live = (p[tokens] > 0) | (problem.q[tokens] > 0)
    chain = tokens[k:][live[k:]][::-1]  # v_1..v_m
    m = chain.size
    # ψ̃_i = ψ(H_i) with H_i = the prefix of length k + (m − i + 1) of the live tokens; psi is over
    # all tokens, but dead ones (p = q = 0) sit at the end of the order and change nothing.
    psi_t = psi[k + m - np.arange(m + 1)]  # ψ̃_1..ψ̃_{m+1}, ψ̃_{m+1} = ψ(H*)
    running = np.minimum.accumulate(psi_t)
    records = [0] + [i for i in range(1, m + 1) if psi_t[i] <= running[i - 1] + TIE]
    if records[-1] != m:
        records.append(m)
    p_H = p[tokens[:k]].sum() + np.concatenate([np.cumsum(p[chain][::-1])[::-1], [0.0]])  # p(H_i)
    all_in = p_H - psi_t  # Q(H_iⁿ)
    targets = p.copy()
    segments, masses = [], []
    for a, b in zip(records[:-1], records[1:]):
        seg = chain[a:b]
        mass = max(all_in[a] - all_in[b], 0.0)
        last = seg[-1]
        targets[last] = min(max(mass - p[seg[:-1]].sum(), 0.0), p[last])
        segments.append(seg)
        masses.append(mass)
    return segments, np.asarray(masses), targets
