"""The exact, truncation-free solver for i.i.d. drafts (design/exact_solver.md).

Notation
--------
p, q      target and draft distributions over V tokens; n i.i.d. drafts ω = (x_1..x_n)
ψ(H)      p(H) − q(H)ⁿ;  α* = 1 + min_H ψ(H), attained by the smallest minimiser H*
G_l       the outer segments of the Thm 6.2 chain, with masses M_l and targets t(v) (subset.py)
w_v       slot weights: e^b on H* (inner system), e^a on each segment (outer systems)

The rule π(·|ω) (§3):
- outer ω (some draft outside H*): l = the smallest segment index among ω's outer drafts; output
  slot j among ω's drafts in G_l with probability w_{x_j} / Σ_{j'} w_{x_j'} (multiplicity counts).
- inner ω (all drafts in H*): output slot j with probability w_{x_j} / (1 + Σ_j w_{x_j}); with
  probability 1 / (1 + Σ_j w_{x_j}) reject and draw from the residual ρ ∝ p − t on the outer tokens.

Because 1/c = ∫_0^∞ e^{−tc} dt and the drafts are i.i.d., the accepted mass of token v in a system
with c0 = 1 (inner) or c0 = 0 (segment) collapses to one integral whatever n is:

    acc(v) = n q_v w_v ∫_0^∞ e^{−t(c0 + w_v)} φ(t)^{n−1} dt,   φ(t) = c + Σ_{u∈G} q_u e^{−t w_u},

with c the draft mass of the zero-weight tokens the system sees (H* ∩ {p = 0} for the inner system;
q(H_{r_{l+1}}) for segment l). acc = target is the zero-gradient condition of the convex function

    F(log w) = E[log(c0 + Σ_j w_{x_j})] − Σ_v target_v log w_v
             = ∫_0^∞ [A e^{−t} − e^{−c0 t}(φ(t)ⁿ − (1 − c0) cⁿ)] dt/t − Σ_v target_v log w_v

(Frullani, log a = ∫ (e^{−t} − e^{−ta}) dt/t; A = q(H*)ⁿ inner, M_l for a segment), minimised by
damped Newton in log-weights with its exact Hessian. The integrals use the trapezoid rule in
s = log t, which converges geometrically for these integrands; comparing step h with h/2 gives the
quadrature error used in the certificates.

References: Thomas & Pal, arXiv 2511.15898, Thm 5.1 (the two systems), Thm 6.2 (outer targets),
Thms 6.4–6.5 (the convex programs, here without truncation).
"""

from __future__ import annotations

import math
import time

import numpy as np

from .plan import GAVE_UP, Plan, failed
from .problem import InputError, Problem
from .subset import alpha_star, h_star, outer_segments

STEP = 0.25  # trapezoid step in s = log t: relative error ~1e-12 (0.5 gives ~1e-8)
TAIL = 1e-18  # mass the truncated s-range may drop from the integrals
MAX_LOG_STEP = 8.0  # a Newton step moves no log-weight further than this (a trust region)


# ---------------------------------------------------------------------------------- quadrature
def nodes(w: np.ndarray, q: np.ndarray, n: int, c0: int, h: float) -> np.ndarray:
    """Quadrature nodes t_k = e^{s_k}, s_k on the grid h·ℤ, covering every bump of the integrands.

    Left end: the integrand of acc(v) is at most n q_v w_v t, so cutting at t_lo drops at most
    n t_lo Σ q w. Right end: it is at most n q_v e^{−t(c0 + w_v)}, so t_hi = log(n/TAIL)/(c0 + min w).
    Nodes sit on h·ℤ so that the grid of step h/2 contains them.
    """
    scale = n * float(np.dot(q, w))
    t_lo = TAIL / max(scale, 1e-300)
    t_hi = math.log(n / TAIL) / max(c0 + float(w.min()), 1e-300)
    s_lo = math.floor(math.log(t_lo) / h)
    s_hi = max(math.ceil(math.log(t_hi) / h), s_lo + 1)
    return np.exp(h * np.arange(s_lo, s_hi + 1))


def evaluate(q, target, c, n, c0, b, t, h, hessian=True):
    """acc(v), F and (for Newton) the Hessian parts of one system at log-weights b on nodes t.

    q, target, b : (G,) draft mass, target and log-weight of the system's tokens
    c : draft mass of the zero-weight tokens the system sees;  c0 : 1 inner, 0 segment

    The Hessian of F in b is diag(d) − U diag(C) Uᵀ with U = q w e^{−t w}, shape (G, K): tokens
    couple only through φ on the K nodes, so it is a diagonal plus a rank-K term.
    """
    w = np.exp(b)
    Q = c + q.sum()
    wt = np.outer(w, t)  # (G, K)
    E = np.exp(-wt)
    D = q @ np.expm1(-wt)  # φ − Q, accurate where φ ≈ Q (t small)
    phi = Q + D
    dt = h * t * np.exp(-c0 * t)  # trapezoid weight of dt = t ds, times e^{−c0 t}
    kernel = dt * phi ** (n - 1)
    qw = q * w
    acc = n * qw * (E @ kernel)
    # φⁿ − Qⁿ = Qⁿ expm1(n log1p(D/Q)): no cancellation at small t
    with np.errstate(divide="ignore"):  # φ = 0 (c = 0, t large) gives log1p(−1) = −∞: fine
        grow = Q**n * np.expm1(n * np.log1p(D / Q))
    integrand = -np.exp(-t) * grow if c0 == 1 else (Q**n - c**n) * np.expm1(-t) - grow
    F = h * float(integrand.sum()) - float(np.dot(target, b))
    if not hessian:
        return acc, F, None
    d = n * qw * ((E * (1.0 - wt)) @ kernel)
    U = qw[:, None] * E
    C = n * (n - 1) * dt * t * phi ** (n - 2) if n >= 2 else np.zeros_like(t)
    return acc, F, (d, U, C)


def newton_direction(g: np.ndarray, d: np.ndarray, U: np.ndarray, C: np.ndarray) -> np.ndarray:
    """Solve (diag(d) − U diag(C) Uᵀ) x = −g, scaled by d^{-1/2}; Woodbury when G > K.

    With W = d^{-1/2} U C^{1/2}: (I − W Wᵀ)^{-1} = I + W (I − WᵀW)^{-1} Wᵀ, a K×K solve.
    """
    d = np.maximum(d, 1e-300)
    s = 1.0 / np.sqrt(d)
    W = s[:, None] * U * np.sqrt(C)
    r = -s * g
    G, K = W.shape
    small, rhs = (W @ W.T, r) if G <= K else (W.T @ W, W.T @ r)
    A = np.eye(small.shape[0]) - small
    A[np.diag_indices_from(A)] += 1e-13  # the segment gauge is pinned; this only guards round-off
    try:
        y = np.linalg.solve(A, rhs)
    except np.linalg.LinAlgError:
        y = np.linalg.lstsq(A, rhs, rcond=None)[0]
    return s * (y if G <= K else r + W @ y)


# ------------------------------------------------------------------------------------ one system
def fit_system(q, target, c, n, c0, b0, *, h=STEP, tol=1e-12, max_iter=100, pin=None):
    """Minimise F(b) by damped Newton; return the fit and its a-posteriori certificate.

    pin : index of a log-weight held fixed (segments: F is invariant to a common shift of a).

    Returns a dict: b, acc (at step h/2), l1 = ‖acc − target‖₁, quadrature (‖acc_h − acc_{h/2}‖₁,
    the estimated quadrature error), objective and gradient_norm per iteration, nodes, converged.
    """
    b = np.clip(np.asarray(b0, dtype=np.float64), -700.0, 700.0)
    free = np.ones(b.size, dtype=bool)
    if pin is not None:
        free[pin] = False
    objective, gradient_norm = [], []
    converged = False
    for _ in range(max_iter):
        t = nodes(np.exp(b), q, n, c0, h)
        acc, F, (d, U, C) = evaluate(q, target, c, n, c0, b, t, h)
        g = acc - target
        gnorm = float(np.abs(g).sum())
        objective.append(F)
        gradient_norm.append(gnorm)
        if gnorm <= tol:
            converged = True
            break
        step = np.zeros_like(b)
        step[free] = newton_direction(g[free], d[free], U[free], C)
        biggest = np.abs(step).max()
        if biggest > MAX_LOG_STEP:
            step *= MAX_LOG_STEP / biggest
        slope = float(np.dot(g, step))
        size, moved = 1.0, False
        for _ in range(40):
            trial = np.clip(b + size * step, -700.0, 700.0)
            acc_new, F_new, _ = evaluate(q, target, c, n, c0, trial, t, h, hessian=False)
            # Armijo on F, or a smaller gradient: near the optimum F changes below round-off
            if F_new <= F + 1e-4 * size * slope or np.abs(acc_new - target).sum() < gnorm:
                b, moved = trial, True
                break
            size /= 2
        if not moved:
            break
    t = nodes(np.exp(b), q, n, c0, h)
    coarse = evaluate(q, target, c, n, c0, b, t, h, hessian=False)[0]
    fine_t = nodes(np.exp(b), q, n, c0, h / 2)
    fine = evaluate(q, target, c, n, c0, b, fine_t, h / 2, hessian=False)[0]
    return dict(b=b, acc=fine, l1=float(np.abs(fine - target).sum()),
                quadrature=float(np.abs(fine - coarse).sum()), objective=objective,
                gradient_norm=gradient_norm, nodes=int(fine_t.size), converged=converged)


def inner_start(q, p, Q, n):
    """Start of the inner fit: w = r/(1 − r), r = p/(n q Q^{n−1}), exact for n = 1 (w = p/(q − p))."""
    with np.errstate(divide="ignore", over="ignore"):
        r = p / (n * q * Q ** (n - 1))
    r = np.clip(r, 1e-300, 1.0 - 1e-12)
    return np.log(r) - np.log1p(-r)


# ------------------------------------------------------------------------------------ the rule
def make_rule(weights: np.ndarray, segment_of: np.ndarray, residual: np.ndarray):
    """The rule of §3, vectorised over draft tuples (B, n) → π(·|ω) (B, V).

    weights : (V,) w_v (1 on singleton segments, 0 on H* tokens with p = 0)
    segment_of : (V,) segment index of outer tokens, −1 on H* (and on tokens no draft can be)
    residual : (V,) ρ, where rejected mass goes
    """
    V = weights.size
    last = np.iinfo(np.int64).max

    def rule(drafts: np.ndarray) -> np.ndarray:
        x = np.asarray(drafts, dtype=np.int64)
        B = x.shape[0]
        seg = segment_of[x]  # (B, n)
        outer = (seg >= 0).any(axis=1)
        rank = np.where(seg >= 0, seg, last)
        chosen = rank == rank.min(axis=1, keepdims=True)  # ω's drafts in its lowest segment
        wx = weights[x]
        w_out = np.where(chosen, wx, 0.0)
        total_in = wx.sum(axis=1)
        share = np.where(outer[:, None], w_out / np.where(outer, w_out.sum(axis=1), 1.0)[:, None],
                         wx / (1.0 + total_in)[:, None])
        flat = (np.arange(B)[:, None] * V + x).ravel()
        pi = np.bincount(flat, weights=share.ravel(), minlength=B * V).reshape(B, V)
        reject = np.where(outer, 0.0, 1.0 / (1.0 + total_in))
        return pi + reject[:, None] * residual[None, :]

    return rule


# ------------------------------------------------------------------------------------ solve
def solve(problem: Problem, *, tol: float = 1e-10, step: float = STEP, max_iter: int = 100,
          backend: str = "numpy", device=None) -> Plan:
    """The optimal lossless rule for i.i.d. drafts, without truncation or tuple enumeration.

    .. math:: α* = 1 + \\min_H [p(H) − q(H)ⁿ],  acc(v) = n q_v w_v ∫_0^∞ e^{−t(c0+w_v)} φ(t)^{n−1} dt

    Parameters
    ----------
    problem : Problem with law="iid"
    tol : float
        Required certified L1 deviation of the output law from p and certified acceptance gap.
    step : float
        Trapezoid step in s = log t (the accuracy knob; the certificate compares it with step/2).
    max_iter : int
        Newton iterations per system.
    backend : {"numpy", "torch"}
        "torch" runs the fit with `solve_batch` on `device` (B = 1) and returns the same Plan.
    device : torch device for backend="torch" (default CPU).

    Returns
    -------
    Plan with acceptance α*, h_star, and info: segments, masses, targets, residual (ρ), weights (V,),
    inner_weights, outer_weights (one array per segment), history (objective and gradient norm per
    Newton iteration and system), nodes, certified_l1, certified_gap, seconds. status GAVE_UP with
    a message when the certified errors exceed `tol`.

    Raises
    ------
    InputError
        For a law other than "iid", or a non-positive tol or step.

    Examples
    --------
    >>> import globalres as gr
    >>> plan = gr.solve(gr.Problem([0.5, 0.3, 0.2], [0.2, 0.3, 0.5], n=2), method="exact")
    >>> round(plan.acceptance, 6), plan.info["certified_l1"] < 1e-10
    (0.86, True)
    """
    if problem.law != "iid":
        raise InputError(f"method 'exact' supports law='iid' only; got law={problem.law!r}. "
                         "Use method='lp' for other draft laws.")
    if not (tol > 0 and step > 0):
        raise InputError(f"tol and step must be > 0; got tol={tol!r}, step={step!r}.")
    if backend not in ("numpy", "torch"):
        raise InputError(f"backend must be 'numpy' or 'torch'; got {backend!r}.")
    if backend == "torch":
        return _solve_torch(problem, tol=tol, step=step, max_iter=max_iter, device=device)
    start = time.perf_counter()
    p, q, n, V = problem.p, problem.q, problem.n, problem.V
    H = h_star(problem)
    segments, masses, targets = outer_segments(problem)
    alpha = alpha_star(problem)
    QH = float(q[H].sum())
    weights = np.zeros(V)
    segment_of = np.full(V, -1, dtype=np.int64)
    deviation = np.zeros(V)  # output law − p, as certified
    quadrature = 0.0
    history, node_counts, outer_weights = {}, {}, []
    fit_tol = tol / 8

    inner = H[p[H] > 0]
    accepted_inner = 0.0
    inner_weights = np.zeros(0)
    if inner.size:
        c = float(q[H[p[H] == 0]].sum())
        fit = fit_system(q[inner], p[inner], c, n, 1, inner_start(q[inner], p[inner], QH, n),
                         h=step, tol=fit_tol, max_iter=max_iter)
        inner_weights = np.exp(fit["b"])
        weights[inner] = inner_weights
        deviation[inner] = fit["acc"] - p[inner]
        accepted_inner = float(fit["acc"].sum())
        quadrature += fit["quadrature"]
        history["inner"] = dict(objective=fit["objective"], gradient_norm=fit["gradient_norm"])
        node_counts["inner"] = fit["nodes"]

    # q(H_{r_{l+1}}): H* plus every later segment, the zero-weight mass segment l sees
    after = QH + np.concatenate([np.cumsum([q[s].sum() for s in segments[::-1]])[::-1][1:], [0.0]])
    for l, seg in enumerate(segments):
        segment_of[seg] = l
        if seg.size == 1:
            weights[seg] = 1.0
            deviation[seg] = masses[l] - targets[seg]
            outer_weights.append(np.ones(1))
            continue
        tq, tt = q[seg], targets[seg]
        pin = int(np.argmax(tt))
        with np.errstate(divide="ignore"):
            b0 = np.log(np.maximum(tt, 1e-300) / np.maximum(tq, 1e-300))
        fit = fit_system(tq, tt, float(after[l]), n, 0, b0 - b0[pin], h=step, tol=fit_tol,
                         max_iter=max_iter, pin=pin)
        w = np.exp(fit["b"] - fit["b"].max())  # the rule only needs ratios within a segment
        weights[seg] = w
        outer_weights.append(w)
        deviation[seg] = fit["acc"] - tt
        quadrature += fit["quadrature"]
        history[f"segment {l}"] = dict(objective=fit["objective"], gradient_norm=fit["gradient_norm"])
        node_counts[f"segment {l}"] = fit["nodes"]

    outer = segment_of >= 0
    residual = np.where(outer, p - targets, 0.0)
    residual = np.maximum(residual, 0.0)
    wanted = float(residual.sum())  # 1 − α*: the rejected mass of an exact fit
    rejected = QH**n - accepted_inner  # the rule's rejected mass with the fitted weights
    # α* = 1 leaves nothing to reject into; any law will do for the (certified tiny) rejected mass
    rho = residual / wanted if wanted > 0 else p.copy()
    deviation += (rejected - wanted) * rho
    certified_l1 = float(np.abs(deviation).sum()) + quadrature
    rule_acceptance = accepted_inner + float(masses.sum())
    certified_gap = abs(rule_acceptance - alpha) + quadrature
    info = dict(h_star=H, segments=segments, masses=masses, targets=targets, residual=rho,
                weights=weights, inner_weights=inner_weights, outer_weights=outer_weights,
                history=history, nodes=node_counts, certified_l1=certified_l1,
                certified_gap=certified_gap, quadrature_error=quadrature, step=step,
                seconds=time.perf_counter() - start)
    if not (certified_l1 <= tol and certified_gap <= tol):
        return failed(problem, "exact", GAVE_UP,
                      f"the fit reached a certified L1 deviation of {certified_l1:.3g} and an acceptance "
                      f"gap of {certified_gap:.3g}, above tol = {tol:g}. Raise max_iter or tol, lower "
                      f"step, or use method='lp' on small problems.", **info)
    return Plan(problem, "exact", alpha, make_rule(weights, segment_of, rho), h_star=H, info=info)
