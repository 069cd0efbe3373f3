"""The result of a solve: a verification rule π(·|ω) with its acceptance and its certificates.

Every method returns a Plan. Whatever the method, a Plan answers the same questions:

- `acceptance`     P(output ∈ set(ω)) under this rule, computed by the method (a float);
- `conditional(ω)` π(·|ω), shape (V,), summing to 1, for one draft tuple ω of n token ids;
- `sample(ω, rng)` one output token drawn from π(·|ω);
- `audit()`        the output law Σ_ω Q(ω) π(·|ω) and the acceptance, by exact enumeration of every
                   draft tuple: the independent check that the rule is lossless and as good as claimed.

The intermediate objects a method computes (the LP's plan matrix, flows, the cut, weights, objective
values per iteration) are kept in `info` for the app to draw.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .problem import InputError, Problem

OK, LIMIT, INFEASIBLE, GAVE_UP, ERROR = 0, 1, 2, 3, 4
STATUS = {OK: "ok", LIMIT: "limit hit", INFEASIBLE: "infeasible", GAVE_UP: "gave up", ERROR: "error"}


class SolverError(RuntimeError):
    """A solver did not reach an optimal, trustworthy answer; the message says which and why."""


@dataclass(frozen=True)
class Audit:
    """What exact enumeration of all draft tuples says about a rule."""

    output_law: np.ndarray  # (V,) Σ_ω Q(ω) π(·|ω)
    acceptance: float  # Σ_ω Q(ω) Σ_{y∈set(ω)} π(y|ω)
    l1: float  # ‖output_law − p‖₁: 0 for a lossless rule
    acceptance_gap: float  # |acceptance − plan.acceptance|
    n_tuples: int


@dataclass(frozen=True, eq=False)
class Plan:
    """A verification rule and what is known about it.

    Attributes
    ----------
    problem : Problem
    method : str
    acceptance : float
        P(output token ∈ drafts) under this rule (NaN when the solve failed).
    rule : callable
        Maps draft tuples, int array (B, n), to π(·|ω), float array (B, V). None when the solve failed.
    status : int
        0 ok; 1 a limit was hit; 2 infeasible; 3 gave up; 4 error. Only status 0 is a result.
    message : str
        Why the status is not 0, or notes worth reading.
    h_star : int array or None
        The subset certificate H* (token ids) when the method computes one.
    info : dict
        Intermediate objects for display and tests (plan matrices, flows, weights, timings …).
    """

    problem: Problem
    method: str
    acceptance: float
    rule: Callable[[np.ndarray], np.ndarray] | None = field(default=None, repr=False)
    status: int = OK
    message: str = ""
    h_star: np.ndarray | None = field(default=None, repr=False)
    info: dict = field(default_factory=dict, repr=False)

    @property
    def success(self) -> bool:
        return self.status == OK

    def _require_success(self):
        if not self.success:
            raise SolverError(f"{self.method}: {STATUS.get(self.status, self.status)}: {self.message}")

    def conditional(self, drafts) -> np.ndarray:
        """π(·|ω) for one draft tuple ω (n token ids): shape (V,), non-negative, summing to 1."""
        self._require_success()
        x = self.problem.check_drafts(drafts)
        return np.asarray(self.rule(x[None, :]), dtype=np.float64)[0].copy()

    def conditionals(self, drafts) -> np.ndarray:
        """π(·|ω) for many draft tuples at once: int array (B, n) → (B, V)."""
        self._require_success()
        x = np.asarray(drafts)
        if x.ndim != 2 or x.shape[1] != self.problem.n or x.dtype.kind not in "iu":
            raise InputError(f"drafts must be an integer array of shape (B, {self.problem.n}); got {x.shape}.")
        if x.size and (x.min() < 0 or x.max() >= self.problem.V):
            raise InputError(f"draft token ids must lie in 0..{self.problem.V - 1}.")
        return np.asarray(self.rule(x.astype(np.int64)), dtype=np.float64)

    def sample(self, drafts, rng: np.random.Generator) -> int:
        """Draw the output token for draft tuple ω from π(·|ω)."""
        pi = self.conditional(drafts)
        return int(rng.choice(pi.size, p=pi / pi.sum()))

    def audit(self, batch: int = 4096) -> Audit:
        """Enumerate every draft tuple ω with Q(ω) > 0 and measure the rule exactly."""
        self._require_success()
        pb = self.problem
        tuples, probs = pb.draft_tuples()
        law = np.zeros(pb.V)
        accepted = 0.0
        for start in range(0, len(tuples), batch):
            x, w = tuples[start:start + batch], probs[start:start + batch]
            pi = np.asarray(self.rule(x), dtype=np.float64)  # (B, V)
            if (pi < -1e-12).any():
                raise AssertionError(f"{self.method}: π has a negative entry ({pi.min():.3g}).")
            law += w @ pi
            member = np.zeros_like(pi, dtype=bool)
            np.put_along_axis(member, x, True, axis=1)
            accepted += float(w @ np.where(member, pi, 0.0).sum(axis=1))
        return Audit(law, accepted, float(np.abs(law - pb.p).sum()),
                     abs(accepted - self.acceptance), len(tuples))


def failed(problem: Problem, method: str, status: int, message: str, **info) -> Plan:
    """A Plan that reports a failure: no rule, acceptance NaN."""
    return Plan(problem, method, float("nan"), None, status, message, None, info)


def table_rule(tuples: np.ndarray, table: np.ndarray, group: str) -> Callable[[np.ndarray], np.ndarray]:
    """A rule that looks π(·|ω) up in a table of rows for representative tuples.

    group = "tuple" keys rows by the ordered tuple, "multiset" by the sorted tuple, "set" by the
    sorted distinct tokens. Tuples not in the table (probability zero under the law) get the row of
    their set's best guess: uniform over their own tokens, which never matters for the output law.
    """
    index = {_key(t, group): i for i, t in enumerate(tuples.tolist())}
    V = table.shape[1]

    def rule(drafts: np.ndarray) -> np.ndarray:
        out = np.empty((len(drafts), V))
        for b, t in enumerate(drafts.tolist()):
            i = index.get(_key(t, group))
            if i is None:
                out[b] = 0.0
                out[b, list(set(t))] = 1.0 / len(set(t))
            else:
                out[b] = table[i]
        return out

    return rule


def _key(t, group):
    if group == "tuple":
        return tuple(t)
    if group == "multiset":
        return tuple(sorted(t))
    return tuple(sorted(set(t)))
