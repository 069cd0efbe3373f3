"""The optimal-transport linear programs: the full OTLP and the relaxed OTLP (paper §2.1–2.2).

Notation: tokens i ∈ 0..V−1, draft tuples ω with probability Q(ω), A_i = {ω : i ∈ set(ω)}.

Full OTLP (V^(n+1) variables C[i, ω] ≥ 0):

    α* = max Σ_i Σ_{ω∈A_i} C[i, ω]   s.t.   Σ_ω C[i, ω] = p(i),   Σ_i C[i, ω] = Q(ω).

The rule is π(i|ω) = C[i, ω] / Q(ω). Whether a token is accepted depends on ω only through set(ω),
so grouping the tuples by multiset (or by set) and summing their Q loses nothing: a plan on groups
lifts to every ordered tuple of the group with the same conditional. By multiset the LP has
C(V+n−1, n)·V variables instead of V^(n+1); that is the default.

Relaxed OTLP (only accepting pairs, S[i, ω] for i ∈ set(ω)):

    max Σ S   s.t.   Σ_ω S[i, ω] ≤ p(i),   Σ_i S[i, ω] ≤ Q(ω),

and an OTLP optimum is rebuilt from its residuals (the paper's Eq. 18):

    C* = S* + p_res ⊗ Q_res / Σ p_res,   p_res = p − Σ_ω S*,   Q_res = Q − Σ_i S*.

LP solvers: "highs" (scipy; its status is checked — it fails on the raw OTLP from n = 4 once tuple
masses get tiny, see design/anchors_measured.md), "pot" (POT's exact network simplex, `ot.emd`) and
"cvxpy" (with Clarabel).
"""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linprog

from .plan import ERROR, Plan, failed, table_rule
from .problem import InputError, Problem

MAX_VARIABLES = 300_000  # past this the LP takes minutes; the 'exact' method has no such limit
GROUPS = ("multiset", "set", "tuple")
BACKENDS = ("auto", "highs", "pot", "cvxpy")


def group_count(problem: Problem, group: str = "multiset") -> int:
    """How many draft groups (rows of the plan) the LP would have, without listing them."""
    s = int((problem.q > 0).sum())
    n = problem.n
    if problem.law == "greedy":
        return s - (n - 1)
    if group == "tuple":
        return s**n
    if group == "multiset":
        return math.comb(s + n - 1, n)
    return sum(math.comb(s, k) for k in range(1, min(n, s) + 1))


def check_size(problem: Problem, group: str = "multiset", max_variables: int = MAX_VARIABLES,
               name: str = "the exact LP") -> int:
    """Raise InputError if the OTLP is past `max_variables`; return its variable count (`name`: the solver
    whose limit it is, for the message; max-flow's network has one token-to-group edge per OTLP variable, and
    its message counts those)."""
    if group not in GROUPS:
        raise InputError(f"group must be one of {', '.join(GROUPS)}; got {group!r}.")
    N = group_count(problem, group)
    size = N * problem.V
    if size > max_variables:
        flow = name == "max-flow"
        what = (f"The max-flow network for V = {problem.V}, n = {problem.n} has {N:.3g} draft {group}s × "
                f"{problem.V} tokens = {size:.3g} token-to-{group} edges" if flow else
                f"The OTLP for V = {problem.V}, n = {problem.n} has {N:.3g} draft {group}s × {problem.V} tokens "
                f"= {size:.3g} variables")
        raise InputError(f"{what}, past {name}'s limit of {max_variables:.3g}. Use method='exact' (no size "
                         f"limit), or group='set' for a smaller {'network' if flow else 'LP'}.")
    return size


def draft_groups(problem: Problem, group: str = "multiset"):
    """The draft tuples grouped by `group`, with their total probability.

    Returns
    -------
    reps : int array (N, n)  one representative tuple per group (sorted for multisets and sets)
    Q : float array (N,)     total probability of the group's tuples
    member : bool array (N, V)  member[g, i] = token i is in the group's tuples
    """
    q, n = problem.q, problem.n
    support = np.flatnonzero(q > 0)
    if problem.law == "iid" and group == "multiset":
        reps = np.array(list(itertools.combinations_with_replacement(support, n)), dtype=np.int64).reshape(-1, n)
        # multinomial coefficient n! / ∏ m_k! times ∏ q
        counts = [np.unique(r, return_counts=True)[1] for r in reps.tolist()]
        coef = np.array([math.factorial(n) / math.prod(math.factorial(c) for c in cs) for cs in counts])
        Q = coef * np.prod(q[reps], axis=1)
    else:
        tuples, probs = problem.draft_tuples()
        if group == "tuple":
            reps, Q = tuples, probs
        else:
            keys = np.sort(tuples, axis=1)
            if group == "set":  # a set's representative repeats its smallest token to length n
                keys = np.array([sorted(set(t)) + [min(t)] * (n - len(set(t))) for t in keys.tolist()],
                                dtype=np.int64).reshape(-1, n)
            reps, inverse = np.unique(keys, axis=0, return_inverse=True)
            Q = np.bincount(inverse.ravel(), weights=probs, minlength=len(reps))
    keep = Q > 0
    reps, Q = reps[keep], Q[keep]
    member = np.zeros((len(reps), problem.V), dtype=bool)
    np.put_along_axis(member, reps, True, axis=1)
    return reps, Q, member


def _solve_lp(c, A_eq=None, b_eq=None, A_ub=None, b_ub=None, backend="highs"):
    """min c·x, x ≥ 0; returns (x, message) with x None when the solver did not report optimality."""
    if backend == "highs":
        # tight tolerances for an exact plan; with them, presolve calls some tiny-mass OTLPs infeasible
        res = linprog(c, A_ub=A_ub, b_ub=b_ub, A_eq=A_eq, b_eq=b_eq, bounds=(0, None), method="highs",
                      options={"presolve": False, "primal_feasibility_tolerance": 1e-10,
                               "dual_feasibility_tolerance": 1e-10})
        if res.status != 0:
            return None, f"HiGHS status {res.status}: {res.message}"
        violation = max(np.abs(A_eq @ res.x - b_eq).max() if A_eq is not None else 0.0,
                        (A_ub @ res.x - b_ub).max() if A_ub is not None else 0.0)
        if violation > 1e-9:
            return None, f"HiGHS reported optimal but its plan violates the marginals by {violation:.2g}"
        return res.x, ""
    import cvxpy as cp

    x = cp.Variable(c.size, nonneg=True)
    cons = []
    if A_eq is not None:
        cons.append(A_eq @ x == b_eq)
    if A_ub is not None:
        cons.append(A_ub @ x <= b_ub)
    prob = cp.Problem(cp.Minimize(c @ x), cons)
    try:
        prob.solve(solver=cp.CLARABEL)
    except cp.error.SolverError as err:
        return None, f"cvxpy/Clarabel failed: {err}"
    if prob.status != cp.OPTIMAL:
        return None, f"cvxpy/Clarabel status {prob.status}"
    return np.maximum(x.value, 0.0), ""


def _conditional_table(C: np.ndarray, Q: np.ndarray, member: np.ndarray) -> np.ndarray:
    """π(·|ω) = C[:, ω] / Q(ω), rows (N, V). Round-off is clipped and each row renormalised."""
    pi = np.maximum(C.T, 0.0)
    total = pi.sum(axis=1, keepdims=True)
    empty = total[:, 0] <= 0
    pi[empty] = member[empty] / member[empty].sum(axis=1, keepdims=True)  # a row with no mass: Q(ω) ≈ 0
    total[empty] = 1.0
    return pi / total


def _plan(problem, method, C, Q, reps, member, group, seconds, message="", **info):
    table = _conditional_table(C, Q, member)
    accepted = float((C * member.T).sum())
    info.update(plan=C, conditional=table, groups=reps, group_probs=Q, member=member, group=group,
                seconds=seconds, variables=C.size)
    return Plan(problem, method, accepted, table_rule(reps, table, group), message=message, info=info)


def _emd(p: np.ndarray, Q: np.ndarray, member: np.ndarray):
    """POT's exact network simplex on the OTLP: cost 1 for every unit of unaccepted mass."""
    import ot

    C, log = ot.emd(p, Q / Q.sum(), np.where(member.T, 0.0, 1.0), numItermax=10_000_000, log=True)
    if log.get("result_code", 1) != 1:
        return None, f"POT network simplex: {log.get('warning')}"
    return C, ""


def solve(problem: Problem, *, group: str = "multiset", backend: str = "auto",
          max_variables: int = MAX_VARIABLES) -> Plan:
    """The full OTLP (paper §2.1): the optimal plan C, shape (V, N) over N draft groups.

    Parameters
    ----------
    group : {"multiset", "set", "tuple"}
        How draft tuples are grouped (every choice gives the same optimum; "tuple" is the raw V^(n+1) LP).
    backend : {"auto", "highs", "pot", "cvxpy"}
        "auto" runs HiGHS and, if it does not report an optimal plan that meets the marginals, POT's
        exact network simplex, saying so in the Plan's message.
    max_variables : int
        Refuse (InputError) above this many LP variables.

    Returns
    -------
    Plan with info["plan"] = C (V, N), info["conditional"] = π (N, V), info["groups"], info["group_probs"],
    info["member"], info["seconds"], info["variables"]. A solver that does not report optimality gives a
    failed Plan (status 4) with its message.
    """
    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}.")
    check_size(problem, group, max_variables)
    start = time.perf_counter()
    reps, Q, member = draft_groups(problem, group)
    V, N = problem.V, len(reps)
    note, used = "", backend
    if backend == "pot":
        C, message = _emd(problem.p, Q, member)
    else:
        # variables C[i, g] flattened row-major (index i*N + g)
        rows = sp.kron(sp.eye(V), np.ones((1, N)))  # Σ_g C[i, g] = p(i)
        cols = sp.kron(np.ones((1, V)), sp.eye(N))  # Σ_i C[i, g] = Q(g)
        A_eq = sp.vstack([rows, cols]).tocsr()
        b_eq = np.concatenate([problem.p, Q])
        x, message = _solve_lp(-member.T.astype(float).ravel(), A_eq=A_eq, b_eq=b_eq,
                               backend="highs" if backend == "auto" else backend)
        C = None if x is None else x.reshape(V, N)
        if C is None and backend == "auto":
            note, used = f"{message}; solved with POT's exact network simplex instead.", "pot"
            C, message = _emd(problem.p, Q, member)
    if C is None:
        return failed(problem, "lp", ERROR, message + " Try backend='pot' (exact network simplex).", variables=V * N)
    return _plan(problem, "lp", C, Q, reps, member, group, time.perf_counter() - start, message=note, backend=used)


def solve_relaxed(problem: Problem, *, group: str = "multiset", backend: str = "highs",
                  max_variables: int = MAX_VARIABLES) -> Plan:
    """The relaxed OTLP (paper §2.2) and the OTLP plan rebuilt from it by Eq. 18.

    info["relaxed"] holds S (V, N) (zero off the accepting pairs), info["p_res"], info["Q_res"] its
    residuals, and info["plan"] the rebuilt C = S + p_res ⊗ Q_res / Σ p_res.
    """
    if backend not in ("highs", "cvxpy"):
        raise InputError(f"backend must be 'highs' or 'cvxpy' for the relaxed LP; got {backend!r}.")
    check_size(problem, group, max_variables)
    start = time.perf_counter()
    reps, Q, member = draft_groups(problem, group)
    V, N = problem.V, len(reps)
    tok, grp = np.nonzero(member.T)  # the accepting pairs (i, g), i ∈ set(g)
    E = tok.size
    A_ub = sp.vstack([
        sp.csr_matrix((np.ones(E), (tok, np.arange(E))), shape=(V, E)),  # Σ_g S[i, g] ≤ p(i)
        sp.csr_matrix((np.ones(E), (grp, np.arange(E))), shape=(N, E)),  # Σ_i S[i, g] ≤ Q(g)
    ]).tocsr()
    x, message = _solve_lp(-np.ones(E), A_ub=A_ub, b_ub=np.concatenate([problem.p, Q]), backend=backend)
    if x is None:
        return failed(problem, "relaxed_lp", ERROR, message, variables=E)
    S = np.zeros((V, N))
    S[tok, grp] = x
    p_res = np.maximum(problem.p - S.sum(axis=1), 0.0)
    Q_res = np.maximum(Q - S.sum(axis=0), 0.0)
    C = S + (np.outer(p_res, Q_res) / p_res.sum() if p_res.sum() > 0 else 0.0)
    return _plan(problem, "relaxed_lp", C, Q, reps, member, group, time.perf_counter() - start,
                 relaxed=S, p_res=p_res, Q_res=Q_res, relaxed_value=float(x.sum()), backend=backend)
