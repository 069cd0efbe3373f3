"""Global Resolution as published (Thomas & Pal, arXiv 2511.15898, Algorithm 1), truncation included.

Notation
--------
p, q, n   target, draft, number of i.i.d. drafts ω = (x_1..x_n);  Q(ω) = ∏_j q(x_j)
ψ(H)      p(H) − q(H)ⁿ;  H* its smallest minimiser;  α* = 1 + ψ(H*)
p_v       the outer targets of Thm 6.2 (`subset.outer_segments`); p(v) on H*
τ         the tolerance: the experiments of the paper use τ = 1e-3 and 1e-4 (its Table 1)

Algorithm 1:
1. H* by the sorted-prefix scan, the outer targets p_v by Thm 6.2 (both O(V log V)).
2. Truncation sets, largest q first: T_out ⊆ V∖H*, the smallest with ε_T = 1 − q(H* ∪ T_out)ⁿ ≤ τ;
   T_in ⊆ H*, the smallest with γ_T = q(H*)ⁿ − q(T_in)ⁿ ≤ τ.
3. Minimise with L-BFGS-B the outer and inner convex programs (Thms 6.4, 6.5)

       Φ_T(a) = Σ_{ω ∈ (H*∪T_out)ⁿ ∖ (H*)ⁿ} Q(ω) log Σ_{j ∈ set(ω)∖H*} e^{a_j}  −  Σ_{v∈T_out} p_v a_v
       Θ_T(b) = Σ_{ω ∈ T_inⁿ} Q(ω) log(1 + Σ_{j ∈ set(ω)} e^{b_j})  −  Σ_{v∈T_in} p(v) b_v

   to gradient tolerance τ. ∂Φ_T/∂a_v is the accepted mass of v minus its target, so the gradient is
   the marginal error itself; the truncation leaves ‖∇Φ_T‖₁ ≥ ε_T possible, so success is
   ‖∇Φ_T‖₁ ≤ τ + ε_T and ‖∇Θ_T‖₁ ≤ τ + γ_T (Thms 6.4, 6.5). Too many terms, or no convergence within the
   iteration cap, is the paper's early termination: a failure, handled by a fallback solver.
4. The rule π(·|ω): if some draft lies outside H*, output x ∈ set(ω)∖H* with probability ∝ e^{a_x};
   otherwise output x ∈ set(ω) with probability e^{b_x}/Z, Z = 1 + Σ_{set(ω)} e^{b}, and with
   probability 1/Z reject and draw from the residual ρ ∝ p − p_v (supported outside H*).

Tokens cut by the truncation get weight zero (the sources do not say how the paper treats them);
an outer ω whose outer drafts are all cut outputs one of them uniformly. The error this causes is
what ε_T and γ_T bound. The sums run over multisets with multinomial weights (the same sums as
over tuples, n! times fewer terms), so the cost still grows like |T|ⁿ: that is the method.
"""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
from scipy.optimize import minimize
from scipy.special import gammaln

from .plan import GAVE_UP, Plan, failed
from .problem import InputError, Problem
from .subset import alpha_star, h_star, outer_segments

TAUS = (1e-3, 1e-4)  # the paper's Table 1
MAX_TERMS = 200_000  # multisets per system; beyond this the solve terminates early (a failure)
MAX_ITER = 500  # L-BFGS-B iterations per system
BOUND = 50.0  # |log-weight| ≤ BOUND: e^{-50} is zero next to any target the tests can see


def truncation(tokens: np.ndarray, q: np.ndarray, base: float, total: float, n: int, tau: float) -> np.ndarray:
    """The smallest set T of largest-q `tokens` with total − (base + q(T))ⁿ ≤ τ.

    Outer: base = q(H*), total = 1 (ε_T). Inner: base = 0, total = q(H*)ⁿ (γ_T).
    """
    tokens = tokens[q[tokens] > 0]
    tokens = tokens[np.lexsort((tokens, -q[tokens]))]
    dropped = total - (base + np.concatenate([[0.0], np.cumsum(q[tokens])])) ** n
    k = int(np.flatnonzero(dropped <= tau)[0]) if (dropped <= tau).any() else tokens.size
    return tokens[:k]


def term_count(k: int, n: int) -> int:
    """Multisets of size 0..n from k tokens: C(k + n, n)."""
    return math.comb(k + n, n)


def multisets(T: np.ndarray, q: np.ndarray, rest: float, n: int, sizes):
    """The draft tuples of (T ∪ R)ⁿ grouped by the multiset of their slots in T, R of draft mass `rest`.

    Returns idx (N, n): positions in T of each multiset's *distinct* tokens, padded with len(T);
    logw (N,): log P(the slots in T form exactly this multiset); size (N,): its size m.
    P = C(n, m) restⁿ⁻ᵐ · m!/∏ c_j! · ∏ q^{c_j}.
    """
    k = T.size
    logq = np.log(q[T])
    idx, logw, size = [], [], []
    for m in sizes:
        if m < n and rest <= 0:
            continue
        combos = list(itertools.combinations_with_replacement(range(k), m))
        combos = np.array(combos, dtype=np.int64).reshape(len(combos), m)
        # counts of each distinct token: combos are sorted, so repeats are adjacent
        repeat = np.zeros_like(combos, dtype=bool)
        repeat[:, 1:] = combos[:, 1:] == combos[:, :-1]
        run = np.zeros(combos.shape, dtype=np.int64)  # position within a run of equal tokens
        for j in range(1, m):
            run[:, j] = np.where(repeat[:, j], run[:, j - 1] + 1, 0)
        log_mult = gammaln(m + 1) - np.log(run + 1).sum(axis=1)  # m!/∏c! as ∏ over runs of 1/(1..c)
        lw = (gammaln(n + 1) - gammaln(m + 1) - gammaln(n - m + 1)
              + ((n - m) * math.log(rest) if m < n else 0.0) + log_mult + logq[combos].sum(axis=1))
        padded = np.full((combos.shape[0], n), k, dtype=np.int64)
        padded[:, :m] = np.where(repeat, k, combos)
        idx.append(padded)
        logw.append(lw)
        size.append(np.full(combos.shape[0], m))
    if not idx:
        return np.zeros((0, n), dtype=np.int64), np.zeros(0), np.zeros(0, dtype=np.int64)
    return np.concatenate(idx), np.concatenate(logw), np.concatenate(size)


def objective(x, idx, w, target, one):
    """Σ_N w_N log(one + Σ_{j ∈ row N} e^{x_j}) − target·x and its gradient (one = 1 inner, 0 outer)."""
    xe = np.append(x, -np.inf)[idx]  # (N, n); padding contributes e^{-inf} = 0
    top = np.max(xe, axis=1, keepdims=True)
    if one:
        top = np.maximum(top, 0.0)
    e = np.exp(xe - top)
    z = e.sum(axis=1) + (np.exp(-top[:, 0]) if one else 0.0)
    f = float(w @ (np.log(z) + top[:, 0]) - target @ x)
    share = e * (w / z)[:, None]
    g = np.bincount(idx.ravel(), weights=share.ravel(), minlength=x.size + 1)[:-1] - target
    return f, g


def fit(idx, w, target, one, x0, tau, allowed, max_iter, pin=None):
    """L-BFGS-B on `objective` to gradient tolerance τ; success is ‖∇‖₁ ≤ `allowed`.

    Keeps the objective and ‖∇‖₁ per iteration. `pin` fixes one coordinate at x0[pin]: the outer
    objective is shift-invariant up to a linear term (the truncated mass), so it needs an anchor.
    """
    last = {}

    def fun(x):
        f, g = objective(x, idx, w, target, one)
        last.update(f=f, g=g)
        return f, g

    objective_trace, gradient_trace = [], []

    def record(intermediate_result):
        objective_trace.append(last["f"])
        gradient_trace.append(float(np.abs(last["g"]).sum()))

    f0, g0 = fun(x0)
    objective_trace.append(f0)
    gradient_trace.append(float(np.abs(g0).sum()))
    x = x0
    result = None
    bounds = [(-BOUND, BOUND)] * x0.size
    if pin is not None:
        bounds[pin] = (x0[pin], x0[pin])
    if gradient_trace[0] > allowed:
        # gtol is a max-norm; τ/|T| makes it imply ‖∇‖₁ ≤ τ. ftol 0: stop on the gradient, not on f.
        result = minimize(fun, x0, jac=True, method="L-BFGS-B", bounds=bounds,
                          callback=record, options=dict(maxiter=max_iter, gtol=tau / (2 * x0.size),
                                                        ftol=0.0, maxcor=20))
        x = result.x
    _, g = objective(x, idx, w, target, one)
    gradient_l1 = float(np.abs(g).sum())
    return dict(x=x, gradient_l1=gradient_l1, ok=gradient_l1 <= allowed,
                iterations=0 if result is None else int(result.nit),
                scipy=("" if result is None else str(result.message)),
                objective=np.asarray(objective_trace), gradient_norm=np.asarray(gradient_trace))


def solve(problem: Problem, *, tau: float = 1e-3, max_terms: int = MAX_TERMS, max_iter: int = MAX_ITER,
          fallback: str | None = "exact") -> Plan:
    """Global Resolution (Algorithm 1 of the paper) for i.i.d. drafts, with truncation tolerance τ.

    .. math:: Φ_T(a) = Σ_ω Q(ω) log Σ_{j∈set(ω)∖H*} e^{a_j} − Σ_v p_v a_v,
              Θ_T(b) = Σ_ω Q(ω) log(1 + Σ_{j∈set(ω)} e^{b_j}) − Σ_v p(v) b_v

    Parameters
    ----------
    problem : Problem with law="iid"
    tau : float
        Truncation tolerance and gradient tolerance (the paper: 1e-3, 1e-4). Lemma 6.6 bounds the
        output's L1 deviation from p by 15τ and the acceptance gap by 10τ.
    max_terms : int
        Early termination when a system has more multisets than this (the paper caps |T| likewise).
    max_iter : int
        L-BFGS-B iterations per system; not reaching ‖∇‖₁ ≤ τ within them is a failure too.
    fallback : {"exact", "maxflow", None}
        What a failure hands over to (the paper falls back to max-flow). The Plan then carries the
        fallback's rule with info["gr_success"] False; with None a failure is returned as a failed Plan.

    Returns
    -------
    Plan whose acceptance is this rule's own (computed exactly from the multiset sums), with info:
    h_star, targets, residual (ρ), t_out, t_in, eps_T, gamma_T, weights (V,), history (objective and
    ‖∇‖₁ per L-BFGS-B iteration and system), gradient_l1, terms, gr_success, tau, seconds.

    Examples
    --------
    >>> import globalres as gr
    >>> plan = gr.solve(gr.Problem([0.5, 0.3, 0.2], [0.2, 0.3, 0.5], n=2), method="global_resolution")
    >>> plan.info["gr_success"], abs(plan.acceptance - 0.86) <= 10 * 1e-3
    (True, True)
    """
    if problem.law != "iid":
        raise InputError(f"method 'global_resolution' is derived for law='iid' only; got law={problem.law!r}. "
                         "Use method='lp' or 'maxflow' for other draft laws.")
    if not (0 < tau < 1):
        raise InputError(f"tau must lie in (0, 1); got {tau!r}. The paper uses 1e-3 and 1e-4.")
    if fallback not in ("exact", "maxflow", None):
        raise InputError(f"fallback must be 'exact', 'maxflow' or None; got {fallback!r}.")
    start = time.perf_counter()
    p, q, n, V = problem.p, problem.q, problem.n, problem.V
    H = h_star(problem)
    inside = problem.mask(H)
    _, _, targets = outer_segments(problem)
    QH = float(q[H].sum())
    residual = np.where(inside, 0.0, np.maximum(p - targets, 0.0))
    rho = residual / residual.sum() if residual.sum() > 0 else p.copy()

    t_out = truncation(np.flatnonzero(~inside), q, QH, 1.0, n, tau)
    t_in = truncation(H, q, 0.0, QH**n, n, tau)
    eps_T = 1.0 - (QH + q[t_out].sum()) ** n
    gamma_T = QH**n - q[t_in].sum() ** n
    terms = {"outer": term_count(t_out.size, n) - 1 if t_out.size else 0,
             "inner": term_count(t_in.size, n) if t_in.size else 0}
    info = dict(h_star=H, targets=targets, residual=rho, t_out=t_out, t_in=t_in, eps_T=eps_T, gamma_T=gamma_T,
                terms=terms, tau=tau, history={}, gradient_l1={}, iterations={}, weights=np.zeros(V))
    reasons = [f"the {s} system has {c:,} multiset terms, above max_terms = {max_terms:,}"
               for s, c in terms.items() if c > max_terms]

    weights = np.zeros(V)  # e^a outside H*, e^b on H*; zero for tokens cut by the truncation
    reject = 0.0
    if not reasons and t_out.size:
        idx, logw, _ = multisets(t_out, q, QH, n, range(1, n + 1))
        with np.errstate(divide="ignore"):
            a0 = np.clip(np.log(targets[t_out]) - np.log(q[t_out]), -BOUND, BOUND)
        out = fit(idx, np.exp(logw), targets[t_out], 0, a0 - a0.max(), tau, tau + eps_T, max_iter,
                  pin=int(np.argmax(a0)))
        weights[t_out] = np.exp(out["x"] - out["x"].max())
        _record(info, "outer", out)
        if not out["ok"]:
            reasons.append(f"L-BFGS-B left ‖∇Φ_T‖₁ = {out['gradient_l1']:.2g} > τ + ε_T on the outer system "
                           f"after {out['iterations']} iterations ({out['scipy']})")
    if not reasons and H.size:
        rest = QH - float(q[t_in].sum())
        idx, logw, size = multisets(t_in, q, rest, n, range(0, n + 1))
        w = np.exp(logw)
        if p[t_in].any():
            full = size == n  # Θ_T runs over T_inⁿ only, as published
            live = p[t_in] > 0  # a target of zero is met by e^b = 0 exactly
            with np.errstate(divide="ignore"):
                b0 = np.clip(np.log(p[t_in]) - np.log(n * q[t_in] * max(QH, 1e-300) ** (n - 1)), -BOUND, BOUND)
            out = fit(_compact(idx[full], live), w[full], p[t_in][live], 1, b0[live], tau, tau + gamma_T, max_iter)
            weights[t_in[live]] = np.exp(out["x"])
            _record(info, "inner", out)
            if not out["ok"]:
                reasons.append(f"L-BFGS-B left ‖∇Θ_T‖₁ = {out['gradient_l1']:.2g} > τ + γ_T on the inner system "
                               f"after {out['iterations']} iterations ({out['scipy']})")
        # the rule's exact rejection probability: Σ over every inner multiset of its weight / Z
        z = 1.0 + np.append(weights[t_in], 0.0)[idx].sum(axis=1)
        reject = float(w @ (1.0 / z))
    info["weights"] = weights
    info["seconds"] = time.perf_counter() - start
    info["gr_success"] = not reasons

    if reasons:
        note = "Global Resolution terminated early: " + "; ".join(reasons) + "."
        if fallback is None:
            return failed(problem, "global_resolution", GAVE_UP,
                          note + " Raise tau, max_terms or max_iter, or use method='exact'.", **info)
        from . import solve as solve_with  # the package's dispatcher; imported here to avoid a cycle

        backup = solve_with(problem, method=fallback)
        info.update(fallback=fallback, fallback_info=backup.info, seconds=time.perf_counter() - start)
        return Plan(problem, "global_resolution", backup.acceptance, backup.rule, backup.status,
                    f"{note} Fell back to {fallback!r}. {backup.message}".strip(), backup.h_star, info)
    return Plan(problem, "global_resolution", 1.0 - reject, make_rule(weights, inside, rho), h_star=H,
                info=dict(info, alpha_star=alpha_star(problem)))


def _compact(idx: np.ndarray, live: np.ndarray) -> np.ndarray:
    """Re-index positions in T to positions among its live tokens; dead and padding → len(live tokens)."""
    new = np.full(live.size + 1, int(live.sum()), dtype=np.int64)
    new[np.flatnonzero(live)] = np.arange(int(live.sum()))
    return new[idx]


def _record(info: dict, system: str, out: dict):
    info["history"][system] = dict(objective=out["objective"], gradient_norm=out["gradient_norm"])
    info["gradient_l1"][system] = out["gradient_l1"]
    info["iterations"][system] = out["iterations"]


def make_rule(weights: np.ndarray, inside: np.ndarray, rho: np.ndarray):
    """π(·|ω) of step 4 for a batch of draft tuples (B, n) → (B, V)."""

    def rule(drafts: np.ndarray) -> np.ndarray:
        B, V = drafts.shape[0], weights.size
        member = np.zeros((B, V), dtype=bool)
        np.put_along_axis(member, drafts, True, axis=1)  # set(ω): repeats count once
        outer_drafts = member & ~inside
        is_outer = outer_drafts.any(axis=1)
        out = np.zeros((B, V))
        # outer ω: softmax over set(ω)∖H*; uniform over them when all were cut by the truncation
        wo = np.where(outer_drafts, weights, 0.0)
        total = wo.sum(axis=1, keepdims=True)
        uniform = outer_drafts / np.maximum(outer_drafts.sum(axis=1, keepdims=True), 1)
        out[is_outer] = np.where(total > 0, wo / np.where(total > 0, total, 1.0), uniform)[is_outer]
        # inner ω: accept x with e^{b_x}/Z, reject with 1/Z into the residual
        wi = np.where(member, weights, 0.0)[~is_outer]
        z = 1.0 + wi.sum(axis=1, keepdims=True)
        out[~is_outer] = wi / z + rho[None, :] / z
        return out

    return rule
