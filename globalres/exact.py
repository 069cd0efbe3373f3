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

import functools
import math
import time
from dataclasses import dataclass, field

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
    wt = np.minimum(np.outer(w, t), 700.0)  # (G, K); past e^−700 only slow denormals remain
    E = np.exp(-wt)
    D = q @ (E - 1.0)  # φ − Q; only F uses it, to steer the line search, so rounding at small t is harmless
    phi = Q + D
    dt = h * t * np.exp(-c0 * t)  # trapezoid weight of dt = t ds, times e^{−c0 t}
    kernel = dt * phi ** (n - 1)
    qw = q * w
    acc = n * qw * (E @ kernel)
    # φⁿ − Qⁿ = Qⁿ expm1(n log1p(D/Q)): no cancellation at small t
    with np.errstate(divide="ignore"):  # φ = 0 (c = 0, t large) gives log1p(−1) = −∞: fine
        grow = Q**n * np.expm1(n * np.log1p(np.maximum(D / Q, -1.0)))
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
    history, node_counts = {}, {}
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
    sizes = np.array([s.size for s in segments], dtype=np.int64)
    if segments:
        chain = np.concatenate(segments)
        segment_of[chain] = np.repeat(np.arange(len(segments)), sizes)
        single = chain[np.repeat(sizes == 1, sizes)]
        weights[single] = 1.0
        deviation[single] = masses[sizes == 1] - targets[single]
    outer_weights = [np.ones(1) if s.size == 1 else None for s in segments]
    for l in np.flatnonzero(sizes > 1):
        seg = segments[l]
        tq, tt = q[seg], targets[seg]
        pin = int(np.argmax(tt))
        with np.errstate(divide="ignore"):
            b0 = np.log(np.maximum(tt, 1e-300) / np.maximum(tq, 1e-300))
        fit = fit_system(tq, tt, float(after[l]), n, 0, b0 - b0[pin], h=step, tol=fit_tol,
                         max_iter=max_iter, pin=pin)
        w = np.exp(fit["b"] - fit["b"].max())  # the rule only needs ratios within a segment
        weights[seg] = w
        outer_weights[l] = w
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


# ------------------------------------------------------------------------ torch: batched fast path
# The same fit as above, batched over "rows": each row is one system (the inner system of a context,
# or one non-singleton segment), padded to a common width with q = 0 entries that carry no mass.
# Only the draft support enters H* and the segments, so a context costs O(k log k + V) plus the fit.


def _torch():
    import torch

    return torch


def _no_grad(function):
    """torch.no_grad() around `function`, imported only when it runs (import globalres stays light)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with _torch().no_grad():
            return function(*args, **kwargs)

    return wrapper


def _rows_nodes(w, q, live, n, c0, h):
    """Per-row nodes (R, K) on h·ℤ with a common count K; rows needing fewer get extra far nodes."""
    torch = _torch()
    scale = n * (q * w).sum(1)
    t_lo = TAIL / scale.clamp_min(torch.finfo(w.dtype).tiny)
    w_min = torch.where(live, w, torch.full_like(w, math.inf)).min(1).values
    t_hi = math.log(n / TAIL) / (c0 + w_min).clamp_min(1e-300)
    s_lo = torch.floor(torch.log(t_lo) / h)
    s_hi = torch.maximum(torch.ceil(torch.log(t_hi) / h), s_lo + 1)
    K = int((s_hi - s_lo).max().item()) + 1
    return torch.exp(h * (s_lo[:, None] + torch.arange(K, device=w.device, dtype=w.dtype)[None, :]))


def _rows_evaluate(q, target, c, n, c0, b, t, h, hessian=True):
    """Batched `evaluate`: q, target, b (R, G); c, c0 (R,); t (R, K)."""
    torch = _torch()
    w = b.exp()
    Q = c + q.sum(1)
    wt = (w[:, :, None] * t[:, None, :]).clamp(max=700.0)  # (R, G, K); no slow denormals
    E = torch.exp(-wt)
    D = torch.einsum("rg,rgk->rk", q, E - 1.0)
    phi = Q[:, None] + D
    dt = h * t * torch.exp(-c0[:, None] * t)
    kernel = dt * phi ** (n - 1)
    qw = q * w
    acc = n * qw * torch.einsum("rgk,rk->rg", E, kernel)
    Qn = Q[:, None] ** n
    grow = Qn * torch.expm1(n * torch.log1p((D / Q[:, None]).clamp_min(-1.0)))
    integrand = torch.where(c0[:, None] == 1, -torch.exp(-t) * grow,
                            (Qn - c[:, None] ** n) * torch.expm1(-t) - grow)
    F = h * integrand.sum(1) - (target * b).sum(1)
    if not hessian:
        return acc, F, None
    d = n * qw * torch.einsum("rgk,rk->rg", E * (1.0 - wt), kernel)
    U = qw[:, :, None] * E
    C = n * (n - 1) * dt * t * phi ** (n - 2) if n >= 2 else torch.zeros_like(t)
    return acc, F, (d, U, C)


def _rows_direction(g, d, U, C, live):
    """Batched `newton_direction`; dead (padded or pinned) entries get a zero step."""
    torch = _torch()
    d = torch.where(live, d.clamp_min(torch.finfo(d.dtype).tiny), torch.ones_like(d))
    s = d.rsqrt()
    W = (s * live)[:, :, None] * U * C.clamp_min(0).sqrt()[:, None, :]
    r = -s * g * live
    G, K = W.shape[1:]
    if G <= K:
        A = torch.eye(G, dtype=W.dtype, device=W.device) - W @ W.transpose(1, 2)
        y = torch.linalg.solve(A + 1e-13 * torch.eye(G, dtype=W.dtype, device=W.device), r)
    else:
        A = torch.eye(K, dtype=W.dtype, device=W.device) - W.transpose(1, 2) @ W
        rhs = (W.transpose(1, 2) @ r[:, :, None])[:, :, 0]
        y = torch.linalg.solve(A + 1e-13 * torch.eye(K, dtype=W.dtype, device=W.device), rhs)
        y = r + (W @ y[:, :, None])[:, :, 0]
    return s * y * live


def fit_rows(q, target, c, c0, b0, live, n, *, h=STEP, tol=1e-12, max_iter=60):
    """Damped Newton on every row at once (torch); returns b, acc at h/2, l1 and quadrature per row.

    live : bool (R, G), the free log-weights (False on padding and on each segment's pinned token).
    """
    torch = _torch()
    b = b0.clone()
    real = q > 0
    history = []
    for _ in range(max_iter):
        t = _rows_nodes(b.exp(), q, real, n, c0, h)
        acc, F, (d, U, C) = _rows_evaluate(q, target, c, n, c0, b, t, h)
        gnorm = (acc - target).abs().sum(1)
        history.append(gnorm)
        todo = gnorm > tol
        if not bool(todo.any()):
            break
        step = _rows_direction(acc - target, d, U, C, live & todo[:, None])
        biggest = step.abs().amax(1, keepdim=True).clamp_min(MAX_LOG_STEP)
        step = step * (MAX_LOG_STEP / biggest)
        slope = ((acc - target) * step).sum(1)
        size = torch.ones_like(F)
        pending = todo.clone()
        for _ in range(30):
            trial = (b + size[:, None] * step).clamp(-700.0, 700.0)
            acc_new, F_new, _ = _rows_evaluate(q, target, c, n, c0, trial, t, h, hessian=False)
            ok = (F_new <= F + 1e-4 * size * slope) | ((acc_new - target).abs().sum(1) < gnorm)
            take = pending & ok
            b = torch.where(take[:, None], trial, b)
            pending = pending & ~ok
            if not bool(pending.any()):
                break
            size = torch.where(pending, size / 2, size)
    t = _rows_nodes(b.exp(), q, real, n, c0, h)
    coarse = _rows_evaluate(q, target, c, n, c0, b, t, h, hessian=False)[0]
    t = _rows_nodes(b.exp(), q, real, n, c0, h / 2)
    fine = _rows_evaluate(q, target, c, n, c0, b, t, h / 2, hessian=False)[0]
    return dict(b=b, acc=fine, l1=(fine - target).abs().sum(1), quadrature=(fine - coarse).abs().sum(1),
                gradient_norm=torch.stack(history, 1), nodes=t.shape[1])


@dataclass(frozen=True, eq=False)
class BatchResult:
    """What `solve_batch` returns: one row per context, tensors on the input's device.

    alpha (B,) α*;  h_star (B, V) bool;  weights (B, V) w (NaN where a system was not fitted);
    segment_of (B, V) long, −1 off the outer draft support;  residual (B, V) ρ;
    certified_l1, certified_gap (B,) for the systems fitted;  success (B,) bool;  n;
    info: per-call extras (Newton gradient norms, node counts, seconds).
    """

    alpha: object
    h_star: object
    weights: object
    segment_of: object
    residual: object
    certified_l1: object
    certified_gap: object
    success: object
    n: int
    info: dict = field(default_factory=dict, repr=False)


def _check_batch(P, Q, n, device, dtype):
    torch = _torch()
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"n (the number of drafts) must be a whole number ≥ 1; got {n!r}.")
    if dtype not in (torch.float64, torch.float32):
        raise InputError(f"dtype must be torch.float64 or torch.float32; got {dtype}.")
    device = device if device is not None else (P.device if torch.is_tensor(P) else "cpu")
    P = torch.as_tensor(P, dtype=dtype, device=device)
    Q = torch.as_tensor(Q, dtype=dtype, device=device)
    if P.ndim != 2 or P.shape != Q.shape:
        raise InputError(f"P and Q must both have shape (B, V); got {tuple(P.shape)} and {tuple(Q.shape)}.")
    for name, X in (("P", P), ("Q", Q)):
        if not bool(torch.isfinite(X).all()) or bool((X < 0).any()):
            raise InputError(f"{name} must be finite and non-negative.")
        sums = X.sum(1)
        if bool(((sums - 1).abs() > 1e-6).any()):
            raise InputError(f"every row of {name} must sum to 1 within 1e-6; the worst sums to "
                             f"{float(sums[(sums - 1).abs().argmax()]):.9g}.")
    return P / P.sum(1, keepdim=True), Q / Q.sum(1, keepdim=True)


def _structure(P, Q, n):
    """H*, α*, segments and targets on the draft support (sorted positions), all contexts at once.

    Positions j = 0..K1−1 are the support of q sorted by q/p decreasing (ties by token id); H* is
    positions < k*; the outer chain is positions k*..k_sup−1 read backwards. A record at prefix length
    L means ψ(prefix L) ≤ min over longer prefixes (+TIE): the token at position L−1 starts a segment
    and the one at position L ends the previous one.
    """
    torch = _torch()
    from .subset import TIE

    B, V = P.shape
    support = Q > 0
    k_sup = support.sum(1)
    K1 = int(k_sup.max().item())
    idx = torch.topk(Q, K1, dim=1).indices.sort(1).values
    qv, pv = Q.gather(1, idx), P.gather(1, idx)
    inf = torch.full_like(qv, math.inf)
    ratio = torch.where(qv > 0, torch.where(pv > 0, qv / pv.clamp_min(1e-300), inf), -inf)
    order = torch.sort(-ratio, dim=1, stable=True).indices
    idx, qv, pv = idx.gather(1, order), qv.gather(1, order), pv.gather(1, order)
    pv = torch.where(qv > 0, pv, torch.zeros_like(pv))
    zero = torch.zeros(B, 1, dtype=P.dtype, device=P.device)
    Pc = torch.cat([zero, pv.cumsum(1)], 1)
    Qc = torch.cat([zero, qv.cumsum(1)], 1).clamp(max=1.0)
    L = torch.arange(K1 + 1, device=P.device)
    beyond = L[None, :] > k_sup[:, None]
    psi = torch.where(beyond, math.inf, Pc - Qc**n)
    k_star = (psi <= psi.min(1, keepdim=True).values + TIE).to(torch.int64).argmax(1)
    alpha = 1.0 + psi.gather(1, k_star[:, None])[:, 0]
    later = torch.cat([psi.flip(1).cummin(1).values.flip(1)[:, 1:], torch.full_like(zero, math.inf)], 1)
    record = (psi <= later + TIE) & ~beyond & (L[None, :] >= k_star[:, None])
    # segment id of position j: records among prefix lengths j+1..k_sup, minus one (chain order)
    count = record.flip(1).cumsum(1).flip(1)
    seg = count[:, 1:] - 1  # (B, K1)
    big = torch.full_like(record, K1 + 1, dtype=torch.int64)
    next_record = torch.where(record, L[None, :].expand_as(record), big).flip(1).cummin(1).values.flip(1)
    pos = L[None, :K1]
    outer = (pos >= k_star[:, None]) & (pos < k_sup[:, None])
    end = record[:, :K1] & outer
    start = (next_record[:, 1:] - 1).clamp(max=K1 - 1)  # last position of the segment ending at j
    mass = Qc.gather(1, start + 1) ** n - Qc[:, :K1] ** n
    others = Pc.gather(1, start + 1) - Pc[:, 1:]
    t_end = torch.minimum((mass - others).clamp_min(0.0), pv)
    targets = torch.where(end, t_end, pv)
    return dict(idx=idx, qv=qv, pv=pv, Qc=Qc, k_star=k_star, k_sup=k_sup, alpha=alpha, seg=seg,
                outer=outer, end=end, start=start, mass=mass, targets=targets)


@_no_grad
def solve_batch(P, Q, n: int, *, drafts=None, device=None, dtype=None, tol: float = 1e-10,
                step: float = STEP, max_iter: int = 60) -> BatchResult:
    """The exact rule for B contexts at once (torch, CPU or CUDA).

    Parameters
    ----------
    P, Q : tensors or arrays (B, V)
        Target and draft distributions per context (rows summing to 1; Q typically top-k sparse).
    n : int
        Number of i.i.d. drafts.
    drafts : long tensor (B, n), optional
        The observed draft tuples. When given, only the system each tuple needs is fitted (the inner
        system if all its drafts lie in H*, else its lowest outer segment, if not a singleton).
    device : torch device, default: P's device (CPU for arrays).
    dtype : torch.float64 (default) or torch.float32 (about 1e-6 L1; see bench/README.md).
    tol : certified L1 and acceptance-gap target per context.

    Cost per context: one sort of the k drafted tokens, O(V) for the residual, and the Newton fit
    of the needed systems in O(k·K) per iteration (K ≈ 100–200 quadrature nodes), whatever n is.
    """
    torch = _torch()
    start_time = time.perf_counter()
    dtype = torch.float64 if dtype is None else dtype
    P, Q = _check_batch(P, Q, n, device, dtype)
    B, V = P.shape
    s = _structure(P, Q, n)
    idx, qv, pv, k_star, targets = s["idx"], s["qv"], s["pv"], s["k_star"], s["targets"]
    K1 = qv.shape[1]
    pos = torch.arange(K1, device=P.device)[None, :]
    in_H = pos < k_star[:, None]
    h_mask = torch.zeros(B, V, dtype=torch.bool, device=P.device).scatter(1, idx, in_H & (qv > 0))
    segment_of = torch.full((B, V), -1, dtype=torch.int64, device=P.device)
    segment_of.scatter_(1, idx, torch.where(s["outer"], s["seg"], torch.full_like(s["seg"], -1)))
    # segment sizes per position: singletons get w = 1, other systems NaN until fitted
    counts = torch.zeros(B, K1 + 1, dtype=torch.int64, device=P.device)
    counts.scatter_add_(1, torch.where(s["outer"], s["seg"], torch.full_like(s["seg"], K1)),
                        torch.ones_like(s["seg"]))
    singleton = s["outer"] & (counts.gather(1, s["seg"].clamp(0, K1)) == 1)
    weights = torch.full((B, V), math.nan, dtype=dtype, device=P.device)
    weights.scatter_(1, idx, torch.where(singleton, torch.ones_like(pv), torch.full_like(pv, math.nan)))
    weights = torch.where(h_mask & (P == 0), torch.zeros_like(weights), weights)
    size = s["start"] - pos + 1
    need_inner = (in_H & (pv > 0)).any(1)
    need_segment = s["end"] & (size > 1)
    if drafts is not None:
        x = torch.as_tensor(drafts, device=P.device, dtype=torch.int64)
        if x.shape != (B, n):
            raise InputError(f"drafts must have shape (B, n) = ({B}, {n}); got {tuple(x.shape)}.")
        seg_x = segment_of.gather(1, x)
        is_outer = (seg_x >= 0).any(1)
        lowest = torch.where(seg_x >= 0, seg_x, torch.full_like(seg_x, K1 + 1)).min(1).values
        need_inner = need_inner & ~is_outer
        need_segment = need_segment & is_outer[:, None] & (s["seg"] == lowest[:, None])
    l1 = torch.zeros(B, dtype=dtype, device=P.device)
    gap = torch.zeros(B, dtype=dtype, device=P.device)
    info = dict(nodes={}, gradient_norm={})

    # residual ρ ∝ p − t: outer drafted tokens (ends of segments) and every undrafted token
    residual = torch.where(h_mask | (Q > 0), torch.zeros_like(P), P)
    residual = residual.scatter(1, idx, torch.where(s["outer"], pv - targets, torch.zeros_like(pv)) +
                                residual.gather(1, idx))
    wanted = residual.sum(1)
    QHn = s["Qc"].gather(1, k_star[:, None])[:, 0] ** n
    accepted_inner = P.masked_fill(~h_mask, 0.0).sum(1)  # exact when the inner fit is exact

    rows = torch.nonzero(need_inner).flatten()
    if rows.numel():
        G = int(k_star[rows].max().item())
        live = in_H[rows, :G] & (pv[rows, :G] > 0)
        q_in = torch.where(live, qv[rows, :G], torch.zeros_like(qv[rows, :G]))
        p_in = torch.where(live, pv[rows, :G], torch.zeros_like(q_in))
        c = torch.where(in_H[rows, :G] & ~live, qv[rows, :G], torch.zeros_like(q_in)).sum(1)
        QH = s["Qc"][rows].gather(1, k_star[rows, None])
        r = (p_in / (n * q_in.clamp_min(1e-300) * QH ** (n - 1))).clamp(1e-300, 1 - 1e-12)
        b0 = torch.where(live, r.log() - torch.log1p(-r), torch.zeros_like(r))
        fit = fit_rows(q_in, p_in, c, torch.ones_like(c), b0, live, n, h=step, tol=tol / 8,
                       max_iter=max_iter)
        w = torch.where(live, fit["b"].exp(), torch.zeros_like(q_in))
        weights[rows] = weights[rows].scatter(1, idx[rows, :G], torch.where(in_H[rows, :G], w,
                                                                              weights[rows].gather(1, idx[rows, :G])))
        acc = fit["acc"].sum(1)
        accepted_inner[rows] = acc
        l1[rows] += fit["l1"] + fit["quadrature"]
        gap[rows] += (acc - P.masked_fill(~h_mask, 0.0).sum(1)[rows]).abs() + fit["quadrature"]
        info["nodes"]["inner"] = fit["nodes"]
        info["gradient_norm"]["inner"] = fit["gradient_norm"]

    seg_rows, seg_end = torch.nonzero(need_segment, as_tuple=True)
    if seg_rows.numel():
        width = int(size[seg_rows, seg_end].max().item())
        span = seg_end[:, None] + torch.arange(width, device=P.device)[None, :]
        valid = span <= s["start"][seg_rows, seg_end][:, None]
        span = span.clamp(max=K1 - 1)
        q_s = torch.where(valid, qv[seg_rows[:, None], span], torch.zeros_like(span, dtype=dtype))
        t_s = torch.where(valid, targets[seg_rows[:, None], span], torch.zeros_like(q_s))
        c = s["Qc"][seg_rows, seg_end]
        b0 = torch.where(valid, (t_s.clamp_min(1e-300) / q_s.clamp_min(1e-300)).log(), torch.zeros_like(q_s))
        pin = torch.where(valid, t_s, torch.full_like(t_s, -1.0)).argmax(1)
        b0 = b0 - b0.gather(1, pin[:, None])
        live = valid.clone()
        live[torch.arange(live.shape[0], device=P.device), pin] = False
        fit = fit_rows(q_s, t_s, c, torch.zeros_like(c), b0, live, n, h=step, tol=tol / 8,
                       max_iter=max_iter)
        b = torch.where(valid, fit["b"], torch.full_like(q_s, -math.inf))
        w = (b - b.max(1, keepdim=True).values).exp()
        tokens = idx[seg_rows[:, None], span]
        for i in range(seg_rows.numel()):  # few: non-singleton segments are rare
            weights[seg_rows[i], tokens[i, valid[i]]] = w[i, valid[i]]
        l1.index_add_(0, seg_rows, fit["l1"] + fit["quadrature"])
        info["nodes"]["segments"] = fit["nodes"]
        info["gradient_norm"]["segments"] = fit["gradient_norm"]

    rejected = QHn - accepted_inner
    rho = torch.where(wanted[:, None] > 0, residual / wanted.clamp_min(1e-300)[:, None], P)
    l1 += torch.where(need_inner, (rejected - wanted).abs(), torch.zeros_like(l1))
    l1 += torch.where(singleton, (s["mass"] - targets).abs(), torch.zeros_like(targets)).sum(1)
    success = (l1 <= tol) & (gap <= tol)
    info["seconds"] = time.perf_counter() - start_time
    return BatchResult(s["alpha"], h_mask, weights, segment_of, rho, l1, gap, success, n, info)


@_no_grad
def sample_batch(result: BatchResult, drafts, generator=None):
    """One output token per context from π(·|ω) of §3: long tensor (B,) on the result's device.

    drafts : long tensor (B, n), the observed tuples (those passed to `solve_batch`, if any).
    generator : torch.Generator on the same device, for reproducible draws.
    """
    torch = _torch()
    W = result.weights
    x = torch.as_tensor(drafts, device=W.device, dtype=torch.int64)
    B, V = W.shape
    if x.shape != (B, result.n):
        raise InputError(f"drafts must have shape (B, n) = ({B}, {result.n}); got {tuple(x.shape)}.")
    seg = result.segment_of.gather(1, x)
    outer = (seg >= 0).any(1)
    rank = torch.where(seg >= 0, seg, torch.full_like(seg, V + 1))
    chosen = rank == rank.min(1, keepdim=True).values
    wx = W.gather(1, x)
    needed = torch.where(outer[:, None], chosen, torch.ones_like(chosen))
    if bool(torch.isnan(wx[needed]).any()):
        raise InputError("a draft tuple needs a system that was not fitted: pass the same drafts to "
                         "solve_batch (or none, to fit every system).")
    wx = torch.where(needed, wx, torch.zeros_like(wx))
    total = wx.sum(1, keepdim=True)
    slots = torch.where(outer[:, None], wx / total.clamp_min(torch.finfo(W.dtype).tiny), wx / (1 + total))
    reject = torch.where(outer, torch.zeros_like(total[:, 0]), 1 / (1 + total[:, 0]))
    cumulative = torch.cat([slots, reject[:, None]], 1).cumsum(1)
    u = torch.rand(B, 1, generator=generator, device=W.device, dtype=W.dtype) * cumulative[:, -1:]
    pick = (u >= cumulative).sum(1).clamp(max=result.n)
    out = x.gather(1, pick.clamp(max=result.n - 1)[:, None])[:, 0]
    rejected = torch.nonzero(pick == result.n).flatten()
    if rejected.numel():
        out[rejected] = torch.multinomial(result.residual[rejected], 1, generator=generator)[:, 0]
    return out


def _solve_torch(problem: Problem, *, tol, step, max_iter, device, dtype=None) -> Plan:
    """solve(..., backend="torch"): solve_batch with B = 1, wrapped in the same Plan."""
    start = time.perf_counter()
    result = solve_batch(problem.p[None, :].copy(), problem.q[None, :].copy(), problem.n, device=device, dtype=dtype,
                         tol=tol, step=step, max_iter=max_iter)
    weights = result.weights[0].double().cpu().numpy()
    segment_of = result.segment_of[0].cpu().numpy()
    residual = result.residual[0].double().cpu().numpy()
    H = np.flatnonzero(result.h_star[0].cpu().numpy())
    info = dict(h_star=H, weights=weights, residual=residual, segment_of=segment_of,
                certified_l1=float(result.certified_l1[0]), certified_gap=float(result.certified_gap[0]),
                nodes=result.info["nodes"], device=str(result.weights.device),
                seconds=time.perf_counter() - start)
    if not bool(result.success[0]):
        return failed(problem, "exact", GAVE_UP,
                      f"torch fit reached a certified L1 of {info['certified_l1']:.3g} and a gap of "
                      f"{info['certified_gap']:.3g}, above tol = {tol:g}.", **info)
    return Plan(problem, "exact", float(result.alpha[0]), make_rule(np.nan_to_num(weights), segment_of, residual),
                h_star=H, info=info)
