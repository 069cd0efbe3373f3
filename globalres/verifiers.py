"""Baseline verifiers, behind the same API as the optimal solvers, to measure how far each is from α*.

Notation (Thomas & Pal, arXiv 2511.15898; peers.md)
--------
p, q       target and draft distributions over V tokens; n drafts ω = (x_1..x_n), ordered
(v)₊       max(v, 0);  norm(v) = v / Σ v
β          Σ_x min(p(x), q(x)) = 1 − TV(p, q), single-draft acceptance
α*         1 + min_H [p(H) − Q(Hⁿ)], the best acceptance of any lossless rule under the draft law

Every verifier returns a Plan whose `rule` is the EXACT output law π(·|ω) of the randomised
procedure given the ordered tuple ω (sequential procedures depend on the order), whose `acceptance`
is the closed form (or an exact sum over draft tuples), and whose `sample(ω, rng)` runs the procedure
itself, coin by coin. Most procedures are sequential: test candidate tokens c_1..c_m in turn, stop at
the first accepted one, else draw from a residual law. `_sequential` turns such a description into
the rule and the sampler.

Methods (name in globalres.SOLVERS → function here)
-------
sps        single-draft speculative sampling, n = 1 (Leviathan et al. 2023)
nss        target-only: output Y ~ p, accepted when Y happens to be a draft; α = Σ p(1 − (1 − q)ⁿ)
naive      single-draft SpS on x_1; the other drafts only count when the residual hits them
kseq       SpecTr's K-SEQ (Sun et al. 2023) with ρ* by bisection; α = 1 − (1 − β(ρ*))ⁿ
rrs        recursive rejection sampling with replacement (SpecInfer, MCSD); α = 1 − ∏(1 − β_k)
rrs_wor    recursive rejection sampling without replacement, law="wor" (MCSD, RSD, Sequoia)
spechub    SpecHub (Sun et al. 2024), law="hub", n = 2; α = p(a) + Σ_{x≠a} min(p, q')
greedy     Hu et al.'s greedy drafts, law="greedy"; α = p(T) + Σ_{x∉T} min(p, q')
khisti_is  Khisti et al. (ICLR 2025) canonical decomposition: importance-weighted choice of one
           draft (weights by an LP), then single-draft SpS against its induced law p_I
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import scipy.optimize
import scipy.sparse

from .plan import OK, Plan, failed
from .problem import InputError, Problem
from .subset import alpha_star, order

ZERO_MASS = 1e-15  # a residual with less mass than this is never reached (its reach probability is as small)
MAX_IS_VARIABLES = 50_000  # selection weights in Khisti's LP; HiGHS solves this many in seconds


# --------------------------------------------------------------------------- building blocks
@dataclass(frozen=True, eq=False)
class VerifierPlan(Plan):
    """A Plan whose `sample` runs the verifier's own randomised procedure rather than drawing from π."""

    sampler: Callable[[np.ndarray, np.random.Generator], int] | None = field(default=None, repr=False)

    def sample(self, drafts, rng: np.random.Generator) -> int:
        self._require_success()
        return int(self.sampler(self.problem.check_drafts(drafts), rng))


def _norm_positive(v: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """norm((v)₊) along the last axis; `fallback` where the mass is (numerically) zero, as it is never used."""
    v = np.maximum(v, 0.0)
    mass = v.sum(axis=-1, keepdims=True)
    return np.where(mass > ZERO_MASS, v / np.where(mass > 0, mass, 1.0), fallback)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """min(1, num/den), and 0 where den = 0 (a token the law never drafts: its tuples have Q = 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, np.minimum(1.0, num / np.where(den > 0, den, 1.0)), 0.0)


def _sequential(V: int, steps) -> tuple[Callable, Callable]:
    """Rule and sampler of a sequential test.

    `steps(drafts (B, n))` returns (candidates (B, m) int, accept (B, m), residual (B, V) or (V,)):
    candidate j is accepted with probability accept[:, j] if all before it were rejected; if all are
    rejected the output is drawn from the residual. So
        π(·|ω) = Σ_j ∏_{i<j} (1 − a_i) a_j δ_{c_j} + ∏_j (1 − a_j) residual.
    """

    def rule(drafts: np.ndarray) -> np.ndarray:
        cand, acc, res = steps(drafts)
        B = len(drafts)
        reach = np.cumprod(np.column_stack([np.ones(B), 1.0 - acc]), axis=1)  # (B, m + 1)
        pi = np.broadcast_to(res, (B, V)) * reach[:, -1:]
        for j in range(cand.shape[1]):
            pi[np.arange(B), cand[:, j]] += reach[:, j] * acc[:, j]
        return pi

    def sampler(drafts: np.ndarray, rng: np.random.Generator) -> int:
        cand, acc, res = steps(drafts[None, :])
        for c, a in zip(cand[0], acc[0], strict=True):
            if rng.random() < a:
                return int(c)
        res = np.broadcast_to(res, (1, V))[0]
        return int(rng.choice(V, p=res / res.sum()))

    return rule, sampler


def _require(problem: Problem, method: str, *, law: str | None = None, n: int | None = None) -> None:
    if not isinstance(problem, Problem):
        raise InputError(f"{method} needs a globalres.Problem; got {type(problem).__name__}.")
    if n is not None and problem.n != n:
        raise InputError(f"{method} verifies exactly {n} draft(s); this problem has n = {problem.n}. "
                         f"Use problem.with_(n={n}), or a multi-draft verifier.")
    if law is not None and problem.law != law:
        raise InputError(f"{method} needs drafts drawn by law={law!r}; this problem has law={problem.law!r}. "
                         f"Use problem.with_(law={law!r}).")


def _plan(problem: Problem, method: str, acceptance: float, rule, sampler, message: str = "",
          **info) -> VerifierPlan:
    a = alpha_star(problem)
    info.update(alpha_star=a, gap=a - acceptance)
    return VerifierPlan(problem, method, float(acceptance), rule, OK, message, None, info, sampler)


def _enumerated_acceptance(problem: Problem, rule, max_tuples: int, samples: int, seed: int):
    """P(output ∈ ω) = Σ_ω Q(ω) Σ_{y∈set(ω)} π(y|ω), exactly over every draft tuple when there are at most
    `max_tuples` of them, else a Monte Carlo mean of the exact per-tuple acceptance (returns its s.e.)."""
    exact = int((problem.q > 0).sum()) ** problem.n <= max_tuples
    if exact:
        tuples, weights = problem.draft_tuples(max_tuples)
    else:
        tuples = problem.sample_drafts(np.random.default_rng(seed), samples)
        weights = np.full(samples, 1.0 / samples)
    per_tuple = np.empty(len(tuples))
    for start in range(0, len(tuples), 4096):
        x = tuples[start:start + 4096]
        pi = rule(x)
        member = np.zeros(pi.shape, dtype=bool)
        np.put_along_axis(member, x, True, axis=1)
        per_tuple[start:start + 4096] = np.where(member, pi, 0.0).sum(axis=1)
    se = 0.0 if exact else float(per_tuple.std(ddof=1) / math.sqrt(samples))
    return float(weights @ per_tuple), se


# --------------------------------------------------------------------------- single-draft family
def sps(problem: Problem) -> VerifierPlan:
    """Single-draft speculative sampling (n = 1): accept x w.p. min(1, p(x)/q(x)), else y ~ norm((p − q)₊).

    α = Σ_x min(p(x), q(x)) = 1 − TV(p, q), the maximal coupling, optimal for n = 1
    (Leviathan et al. 2023, arXiv 2211.17192).
    """
    _require(problem, "sps", n=1)
    p, q = problem.p, problem.q
    accept, residual = _ratio(p, q), _norm_positive(p - q, p)
    rule, sampler = _sequential(problem.V, lambda x: (x, accept[x], residual))
    return _plan(problem, "sps", np.minimum(p, q).sum(), rule, sampler, residual=residual)


def nss(problem: Problem) -> VerifierPlan:
    """Target-only verification: output Y ~ p whatever the drafts; accepted when Y ∈ ω.

    α = Σ_y p(y) (1 − (1 − q(y))ⁿ) (Hu et al. 2025, Appendix C); SGLang's target-only tree verify.
    """
    _require(problem, "nss", law="iid")
    p, q, n = problem.p, problem.q, problem.n
    rule, sampler = _sequential(problem.V, lambda x: (x[:, :0], np.zeros((len(x), 0)), p))
    return _plan(problem, "nss", p @ (1.0 - (1.0 - q) ** n), rule, sampler)


def naive(problem: Problem) -> VerifierPlan:
    """Single-draft SpS on x_1; a residual draw counts as accepted when it equals another draft.

    α = Σ min(p, q) + Σ (p − q)₊ (1 − (1 − q)^{n−1}) (Hu et al. 2025, Appendix C).
    """
    _require(problem, "naive", law="iid")
    p, q, n = problem.p, problem.q, problem.n
    accept, residual = _ratio(p, q), _norm_positive(p - q, p)
    rule, sampler = _sequential(problem.V, lambda x: (x[:, :1], accept[x[:, :1]], residual))
    acceptance = np.minimum(p, q).sum() + np.maximum(p - q, 0.0) @ (1.0 - (1.0 - q) ** (n - 1))
    return _plan(problem, "naive", acceptance, rule, sampler, residual=residual)


# --------------------------------------------------------------------------- SpecTr K-SEQ
def kseq_rho(p: np.ndarray, q: np.ndarray, n: int, *, tol: float = 1e-15) -> tuple[float, float]:
    """ρ* ∈ [1, n], the root of ρ β(ρ) = 1 − (1 − β(ρ))ⁿ with β(ρ) = Σ min(q, p/ρ), by bisection.

    f(ρ) = ρβ(ρ) − 1 + (1 − β(ρ))ⁿ = Σ min(ρq, p) − 1 + (1 − β)ⁿ increases in ρ, f(1) ≤ 0 ≤ f(n).
    Returns the upper end of the final bracket, where f ≥ 0, i.e. where K-SEQ's residual is ≥ 0.
    """
    def f(rho):
        beta = np.minimum(q, p / rho).sum()
        return rho * beta - 1.0 + (1.0 - beta) ** n

    lo, hi = 1.0, float(n)
    if f(lo) >= 0:
        return lo, float(np.minimum(q, p).sum())
    while hi - lo > tol * hi:
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if f(mid) >= 0 else (mid, hi)
    return hi, float(np.minimum(q, p / hi).sum())


def kseq(problem: Problem) -> VerifierPlan:
    """SpecTr's K-SEQ: accept x_i w.p. min(1, p(x_i) / (ρ* q(x_i))) in order, else draw the residual
    r ∝ p − γ min(q, p/ρ*), γ = (1 − (1 − β)ⁿ)/β.

    α = 1 − (1 − β(ρ*))ⁿ ≥ (1 − (1 − 1/n)ⁿ) α* ≥ (1 − 1/e) α* (Sun et al. 2023, arXiv 2310.15141).
    """
    _require(problem, "kseq", law="iid")
    p, q, n = problem.p, problem.q, problem.n
    rho, beta = kseq_rho(p, q, n)
    # each accepted token x gets min(q, p/ρ)·Σ_i (1 − β)^{i−1} = min(q, p/ρ)·γ of the output mass
    gamma = (1.0 - (1.0 - beta) ** n) / beta if beta > 0 else float(n)
    accept = _ratio(p / rho, q)
    residual = _norm_positive(p - gamma * np.minimum(q, p / rho), p)
    rule, sampler = _sequential(problem.V, lambda x: (x, accept[x], residual))
    acceptance = 1.0 - (1.0 - beta) ** n
    guarantee = 1.0 - (1.0 - 1.0 / n) ** n
    return _plan(problem, "kseq", acceptance, rule, sampler, rho=rho, beta=beta, residual=residual,
                 guarantee_ratio=guarantee, guarantee=guarantee * alpha_star(problem))


# --------------------------------------------------------------------------- recursive rejection sampling
def rrs(problem: Problem) -> VerifierPlan:
    """Recursive rejection sampling with replacement (SpecInfer / MCSD): test x_k against the current
    residual p_{k−1} (accept w.p. min(1, p_{k−1}(x_k)/q(x_k))); on rejection p_k = norm((p_{k−1} − q)₊);
    after n rejections draw from p_n.

    α = 1 − ∏_k (1 − β_k), β_k = Σ min(p_{k−1}, q) (peers.md §2.3). A rejected token has p_k = 0 from
    then on, so the last residual never lands on a draft.
    """
    _require(problem, "rrs", law="iid")
    p, q, n = problem.p, problem.q, problem.n
    residuals = [p]
    for _ in range(n):
        residuals.append(_norm_positive(residuals[-1] - q, residuals[-1]))
    residuals = np.array(residuals)  # (n + 1, V)
    betas = np.minimum(residuals[:-1], q).sum(axis=1)
    accept = _ratio(residuals[:-1], q[None, :])  # (n, V): step k's acceptance of each token

    def steps(x):
        return x, accept[np.arange(n), x], residuals[-1]

    rule, sampler = _sequential(problem.V, steps)
    return _plan(problem, "rrs", 1.0 - np.prod(1.0 - betas), rule, sampler, residuals=residuals, betas=betas)


def rrs_wor(problem: Problem, *, max_tuples: int = 200_000, samples: int = 20_000, seed: int = 0) -> VerifierPlan:
    """Recursive rejection sampling without replacement (MCSD, RSD, Sequoia), law="wor".

    Step k tests x_k against p_{k−1} with the law it was drawn from, q_k = norm(q with x_1..x_{k−1}
    removed): accept w.p. min(1, p_{k−1}(x_k)/q_k(x_k)); on rejection p_k = norm((p_{k−1} − q_k)₊).
    After n rejections draw from p_n. The residuals depend on ω, so α has no closed form: it is summed
    exactly over the ≤ `max_tuples` draft tuples, else estimated from `samples` draft tuples (exact
    acceptance per tuple; the standard error is in info["acceptance_se"] and the message).
    """
    _require(problem, "rrs_wor", law="wor")
    p, q, V = problem.p, problem.q, problem.V

    def steps(x):
        B, n = x.shape
        rows = np.arange(B)
        target, law = np.tile(p, (B, 1)), np.tile(q, (B, 1))
        accept = np.empty((B, n))
        for k in range(n):
            accept[:, k] = _ratio(target[rows, x[:, k]], law[rows, x[:, k]])
            target = _norm_positive(target - law, target)
            law[rows, x[:, k]] = 0.0
            law = _norm_positive(law, law)
        return x, accept, target

    rule, sampler = _sequential(V, steps)
    acceptance, se = _enumerated_acceptance(problem, rule, max_tuples, samples, seed)
    message = (f"acceptance estimated from {samples} draft tuples (± {se:.1e} s.e.): more than {max_tuples} "
               f"tuples to sum exactly" if se else "")
    return _plan(problem, "rrs_wor", acceptance, rule, sampler, message, acceptance_se=se)


# --------------------------------------------------------------------------- greedy / hub drafts
def greedy(problem: Problem) -> VerifierPlan:
    """Hu et al.'s greedy drafts (law="greedy"): T = top n−1 tokens of q, x_n ~ q' = norm(q off T).
    Accept x_n w.p. min(1, p(x_n)/q'(x_n)), else draw y ∝ p − min(p, q') (a hit in T is accepted).

    α = p(T) + Σ_{x∉T} min(p(x), q'(x)), the optimum for this law (peers.md §2.5).
    """
    _require(problem, "greedy", law="greedy")
    p, top, rest = problem.p, problem.deterministic_drafts(), problem.rest_law()
    accept, residual = _ratio(p, rest), _norm_positive(p - np.minimum(p, rest), p)
    rule, sampler = _sequential(problem.V, lambda x: (x[:, -1:], accept[x[:, -1:]], residual))
    acceptance = p[top].sum() + np.minimum(p, rest).sum()
    return _plan(problem, "greedy", acceptance, rule, sampler, top=top, rest_law=rest, residual=residual)


def spechub(problem: Problem) -> VerifierPlan:
    """SpecHub (Sun et al., EMNLP 2024, arXiv 2411.05289) on its hub law (law="hub", n = 2).

    Hub a = argmax q; the other draft is i. (1) Pair (i, a): accept i w.p. min(1, p(i)/q(i)). Pair
    (a, i): accept i w.p. min(1, (p(i) − q(i))₊ / Q(a, i)), Q(a, i) = q(a) q'(i). Together i gets
    min(p(i), q'(i)). (2) Accept the hub w.p. p(a)/L, L = Σ_{x≠a} (q'(x) − p(x))₊ ≥ p(a) the pair mass
    left. (3) Else draw norm((p − q')₊) off the hub.

    α = p(a) + Σ_{x≠a} min(p(x), q'(x)), the optimum for the hub law (peers.md §2.6).
    """
    _require(problem, "spechub", law="hub", n=2)
    p, q = problem.p, problem.q
    a, rest = int(problem.deterministic_drafts()[0]), problem.rest_law()
    left = np.maximum(rest - p, 0.0)
    left[a] = 0.0
    hub_accept = min(1.0, p[a] / left.sum()) if left.sum() > 0 else 0.0
    residual = np.maximum(p - rest, 0.0)
    residual[a] = 0.0
    residual = _norm_positive(residual, p)
    second = _ratio(np.maximum(p - q, 0.0), q[a] * rest)  # i drafted second, after the hub

    def steps(x):
        hub_first = (x[:, 0] == a) & (x[:, 1] != a)
        i = np.where(hub_first, x[:, 1], x[:, 0])
        accept_i = np.where(hub_first, second[i], _ratio(p, q)[i])
        cand = np.column_stack([i, np.full(len(x), a)])
        return cand, np.column_stack([accept_i, np.full(len(x), hub_accept)]), residual

    rule, sampler = _sequential(problem.V, steps)
    acceptance = p[a] + np.delete(np.minimum(p, rest), a).sum()
    return _plan(problem, "spechub", acceptance, rule, sampler, hub=a, rest_law=rest,
                 hub_accept=hub_accept, residual=residual)


# --------------------------------------------------------------------------- Khisti et al.
def _draft_sets(problem: Problem, max_variables: int):
    """Every set S of distinct draft tokens with P(set(ω) = S) > 0 under i.i.d. drafts, and that
    probability by inclusion–exclusion over surjections: Σ_{J⊆S} (−1)^{|S|−|J|} q(J)ⁿ."""
    q, n = problem.q, problem.n
    support = np.flatnonzero(q > 0)
    sizes = range(1, min(n, support.size) + 1)
    count = sum(math.comb(support.size, k) * k for k in sizes) + problem.V
    if count > max_variables:
        raise InputError(
            f"khisti_is's LP has one selection weight per (set of distinct drafts, token in it): "
            f"{count:,} variables for |supp q| = {support.size}, n = {problem.n}, past max_variables = "
            f"{max_variables:,}. Truncate q (top-k), lower n, or raise max_variables.")
    sets, probs = [], []
    for k in sizes:
        for S in itertools.combinations(support.tolist(), k):
            qs = q[list(S)]
            prob = sum((-1) ** (k - j) * sum(qs[list(J)].sum() ** n for J in itertools.combinations(range(k), j))
                       for j in range(1, k + 1))
            sets.append(S)
            probs.append(max(prob, 0.0))
    return sets, np.array(probs)


def khisti_is(problem: Problem, *, max_variables: int = MAX_IS_VARIABLES) -> Plan:
    """Khisti et al.'s canonical decomposition (ICLR 2025, arXiv 2410.18234), i.i.d. drafts.

    Step 1: given the set S = set(ω), pick Y ∈ S with selection weight w_S(Y) (depending only on the
    tokens); Y has law p_I(y) = Σ_S Q(S) w_S(y). Step 2: single-draft SpS of Y against p: accept Y w.p.
    min(1, p(Y)/p_I(Y)), else draw norm((p − p_I)₊). The weights maximise Σ_y min(p(y), p_I(y)), an LP
    (solved by HiGHS) whose optimum is α* (their Theorem); for n = 2 their explicit optimum is
    min_S [p(S) + q(Sᶜ)² + 2 q(S) q(Sᶜ)], reported as info["explicit_n2"].

    The plan's acceptance is P(output ∈ ω) of the rule built from the solved weights, summed exactly
    over the draft sets. A non-optimal LP status gives a failed Plan.
    """
    _require(problem, "khisti_is", law="iid")
    p, V = problem.p, problem.V
    sets, QS = _draft_sets(problem, max_variables)
    cols = [(s, y) for s, S in enumerate(sets) for y in S]  # weight variables w_S(y)
    m, nw = len(sets), len(cols)
    s_idx = np.array([c[0] for c in cols])
    y_idx = np.array([c[1] for c in cols])
    # variables [w (nw), t (V)]: maximise Σ t, t ≤ p, t_y ≤ Σ_S Q(S) w_S(y), Σ_{y∈S} w_S(y) = 1
    A_eq = scipy.sparse.csr_matrix((np.ones(nw), (s_idx, np.arange(nw))), shape=(m, nw + V))
    A_ub = scipy.sparse.hstack([scipy.sparse.csr_matrix((-QS[s_idx], (y_idx, np.arange(nw))), shape=(V, nw)),
                                scipy.sparse.identity(V)]).tocsr()
    res = scipy.optimize.linprog(np.concatenate([np.zeros(nw), -np.ones(V)]), A_ub=A_ub, b_ub=np.zeros(V),
                                 A_eq=A_eq, b_eq=np.ones(m),
                                 bounds=np.column_stack([np.zeros(nw + V), np.concatenate([np.full(nw, np.inf), p])]),
                                 method="highs")
    if res.status != 0:
        return failed(problem, "khisti_is", res.status + 1, f"HiGHS did not solve the IS-weight LP: {res.message}",
                      lp_status=res.status)
    weights = np.zeros((m, V))  # (sets, V): w_S(y), rows renormalised against solver round-off
    weights[s_idx, y_idx] = np.maximum(res.x[:nw], 0.0)
    weights /= weights.sum(axis=1, keepdims=True)
    p_I = QS @ weights
    p_I /= p_I.sum()
    accept = _ratio(p, p_I)
    residual = _norm_positive(p - p_I, p)
    index = {S: s for s, S in enumerate(sets)}

    def selection(x: np.ndarray) -> np.ndarray:
        out = np.zeros((len(x), V))
        for b, t in enumerate(x.tolist()):
            S = tuple(sorted(set(t)))
            if S in index:
                out[b] = weights[index[S]]
            else:  # a set the law never drafts: any selection will do
                out[b, list(S)] = 1.0 / len(S)
        return out

    def rule(x):
        w = selection(x)
        return w * accept + (w @ (1.0 - accept))[:, None] * residual

    def sampler(x, rng):
        y = rng.choice(V, p=selection(x[None, :])[0])
        return y if rng.random() < accept[y] else rng.choice(V, p=residual)

    reps = np.array([list(S) + [S[0]] * (problem.n - len(S)) for S in sets], dtype=np.int64)
    pi = rule(reps)
    member = np.zeros(pi.shape, dtype=bool)
    np.put_along_axis(member, reps, True, axis=1)
    acceptance = float(QS @ np.where(member, pi, 0.0).sum(axis=1))
    info = dict(sets=sets, set_probabilities=QS, selection_weights=weights, p_I=p_I, residual=residual,
                lp_objective=-res.fun)
    if problem.n == 2:
        tokens = order(problem)
        qS = np.concatenate([[0.0], np.cumsum(problem.q[tokens])])
        pS = np.concatenate([[0.0], np.cumsum(p[tokens])])
        info["explicit_n2"] = float(np.min(pS + (1 - qS) ** 2 + 2 * qS * (1 - qS)))
    return _plan(problem, "khisti_is", acceptance, rule, sampler, **info)
