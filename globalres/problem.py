"""The problem: a target p, a draft q, n drafts and the law they are drawn by.

Notation (Thomas & Pal, arXiv 2511.15898, §2)
--------
V          vocabulary size; tokens are 0..V-1
p          target next-token distribution, shape (V,)
q          draft distribution, shape (V,)
n          number of drafts
ω          a draft tuple (x_1..x_n), ordered
Q(ω)       probability of ω under the draft law; i.i.d.: Q(ω) = ∏_j q(x_j)
Q(Hⁿ)      probability that every draft lies in H; i.i.d.: q(H)ⁿ
ψ(H)       p(H) − Q(Hⁿ);  α* = 1 + min_H ψ(H)  (Hu et al. 2025; the paper's Thm 3.1)

Draft laws
----------
"iid"      n independent draws from q (the paper's setting).
"wor"      n sequential draws without replacement: x_k ~ q restricted to the tokens not yet drawn
           (the Gumbel-top-k law of SpecInfer/RSD/Sequoia).
"greedy"   Hu et al.'s greedy drafts: the n−1 most likely tokens T of q (ties to the lower id), then one
           draw from q' = q restricted to the other tokens and renormalised.
"hub"      SpecHub's n = 2 law (Sun et al., EMNLP 2024): the hub a = argmax q is always drafted. The first
           draft x ~ q; if x ≠ a the pair is (x, a), else (a, y) with y ~ q'. So Q(x, a) = q(x) and
           Q(a, y) = q(a) q(y) / (1 − q(a)); as an unordered set it is greedy's law at n = 2.

Q(Hⁿ) for each law: q(H)ⁿ (iid); [T ⊆ H] q'(H ∖ T) (greedy, hub with T = {a}); for "wor" the
exponential-race identity (peers.md §2.5): with arrival times E_i ~ Exp(q_i), the first n arrivals
are the n draws, so all n lie in H iff n tokens of H arrive before the first of Hᶜ (rate λ = q(Hᶜ)):
    Q(Hⁿ) = ∫₀^∞ λ e^{−λt} P(at least n of Bernoulli(1 − e^{−q_i t}), i ∈ H) dt.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np

LAWS = ("iid", "wor", "greedy", "hub")
WOR_STEP = 0.1  # trapezoid step in log t for the "wor" integral: the integrand is analytic in a strip, so
#                the error is ~exp(−π²/step), far below rounding
TOLERANCE = 1e-6  # how far from 1 a sum may be and still be renormalised
MAX_ENUMERATION = 2_000_000  # draft tuples we are willing to list one by one


class InputError(ValueError):
    """Bad user input. The message says what is wrong and how to fix it."""


def check_probabilities(x, name: str, *, atol: float = TOLERANCE) -> np.ndarray:
    """Return x as a float64 probability vector, renormalised if within `atol` of summing to 1."""
    try:
        x = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InputError(f"{name} must be a 1-D array of numbers; could not read it ({err}).") from None
    if x.ndim != 1:
        raise InputError(f"{name} must be a 1-D probability vector; got an array of shape {x.shape}.")
    if x.size == 0:
        raise InputError(f"{name} is empty: give at least one token.")
    if not np.isfinite(x).all():
        bad = np.flatnonzero(~np.isfinite(x))[:5].tolist()
        raise InputError(f"{name} has NaN or infinite entries (at tokens {bad}); every entry must be a finite number.")
    if (x < 0).any():
        i = int(np.argmin(x))
        raise InputError(f"{name} has a negative entry ({name}[{i}] = {x[i]:.6g}); probabilities must be ≥ 0.")
    total = x.sum()
    if total == 0:
        raise InputError(f"{name} is all zeros (empty support); at least one token needs positive probability.")
    if abs(total - 1.0) > atol:
        raise InputError(
            f"{name} must sum to 1 (within {atol:g}); it sums to {total:.12g}. "
            f"Divide by its sum, or build the problem with Problem.from_logits / Problem.from_weights."
        )
    return x / total


@dataclass(frozen=True, eq=False)
class Problem:
    """A validated instance (p, q, n, law).

    Parameters
    ----------
    p, q : array_like, shape (V,)
        Target and draft distributions: finite, non-negative, each summing to 1 within 1e-6
        (then renormalised exactly).
    n : int
        Number of drafts, ≥ 1.
    law : {"iid", "wor", "greedy", "hub"}
        How the n drafts are drawn from q.
    labels : sequence of str, optional
        Display names of the tokens.

    Raises
    ------
    InputError
        If any argument is invalid; the message says how to fix it.

    Examples
    --------
    >>> pb = Problem([0.5, 0.3, 0.2], [0.2, 0.3, 0.5], n=2)
    >>> round(pb.psi([2]), 6)   # p({2}) − q({2})²
    -0.05
    """

    p: np.ndarray
    q: np.ndarray
    n: int
    law: str = "iid"
    labels: tuple = field(default=None, repr=False)

    def __post_init__(self):
        p = check_probabilities(self.p, "p")
        q = check_probabilities(self.q, "q")
        if p.size != q.size:
            raise InputError(
                f"p and q must cover the same vocabulary; p has {p.size} tokens and q has {q.size}."
            )
        n = self.n
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
            if isinstance(n, float) and n.is_integer():
                n = int(n)
            else:
                raise InputError(f"n (the number of drafts) must be a whole number ≥ 1; got {n!r}.")
        n = int(n)
        if n < 1:
            raise InputError(f"n (the number of drafts) must be ≥ 1; got {n}.")
        if self.law not in LAWS:
            raise InputError(f"law must be one of {', '.join(LAWS)}; got {self.law!r}.")
        support = int((q > 0).sum())
        if self.law == "wor" and n > support:
            raise InputError(
                f"Drawing {n} drafts without replacement needs at least {n} tokens with q > 0; "
                f"q has {support}. Lower n or use law='iid'."
            )
        if self.law == "greedy" and n > support:
            raise InputError(
                f"Greedy drafts take the top {n - 1} tokens of q and draw one more from the rest, "
                f"so q needs at least {n} tokens with q > 0; it has {support}. Lower n or use law='iid'."
            )
        if self.law == "hub" and (n != 2 or support < 2):
            raise InputError(
                f"The hub law (SpecHub) drafts exactly 2 tokens, the hub argmax q and one other, so it needs "
                f"n = 2 and at least 2 tokens with q > 0; got n = {n} and {support}. Use n=2, or law='greedy' "
                f"(the same construction for any n)."
            )
        labels = self.labels
        if labels is not None:
            labels = tuple(str(s) for s in labels)
            if len(labels) != p.size:
                raise InputError(f"labels must name all {p.size} tokens; got {len(labels)} labels.")
        p.flags.writeable = False
        q.flags.writeable = False
        object.__setattr__(self, "p", p)
        object.__setattr__(self, "q", q)
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "labels", labels)

    # ------------------------------------------------------------------ basics
    @property
    def V(self) -> int:
        return self.p.size

    def label(self, i: int) -> str:
        return self.labels[i] if self.labels else str(i)

    def key(self) -> tuple:
        """A hashable, exact description: Problem.from_key(pb.key()) rebuilds pb."""
        return (tuple(self.p.tolist()), tuple(self.q.tolist()), self.n, self.law, self.labels)

    @classmethod
    def from_key(cls, key: tuple) -> Problem:
        p, q, n, law, labels = key
        return cls(p, q, n, law, labels)

    def with_(self, **changes) -> Problem:
        """A copy with some fields changed (validated again)."""
        fields = dict(p=self.p, q=self.q, n=self.n, law=self.law, labels=self.labels)
        fields.update(changes)
        return Problem(**fields)

    def __repr__(self):
        return f"Problem(V={self.V}, n={self.n}, law={self.law!r})"

    # ------------------------------------------------------------ draft law
    def deterministic_drafts(self) -> np.ndarray:
        """T: the n−1 deterministic greedy drafts (for "hub", T = {a}): largest q, ties to the lower id."""
        return np.lexsort((np.arange(self.V), -self.q))[: self.n - 1]

    def rest_law(self) -> np.ndarray:
        """q' : q with T removed and renormalised, the law of the one random greedy/hub draft."""
        rest = self.q.copy()
        rest[self.deterministic_drafts()] = 0.0
        return rest / rest.sum()

    def tuple_probability(self, drafts) -> float:
        """Q(ω): the probability that the draft law produces exactly this ordered tuple."""
        x = self.check_drafts(drafts)
        q = self.q
        if self.law == "iid":
            return float(np.prod(q[x]))
        if self.law == "wor":
            if len(set(x.tolist())) < self.n:
                return 0.0
            prob, left = 1.0, np.ones(self.V, dtype=bool)
            for token in x:
                prob *= q[token] / q[left].sum()
                left[token] = False
            return float(prob)
        top, rest = self.deterministic_drafts(), self.rest_law()
        if self.law == "hub":
            a, (x1, x2) = top[0], x
            if x2 == a and x1 != a:
                return float(q[x1])
            return float(q[a] * rest[x2]) if x1 == a and x2 != a else 0.0
        if not np.array_equal(x[:-1], top):  # greedy
            return 0.0
        return float(rest[x[-1]])

    def draft_tuples(self, max_tuples: int = MAX_ENUMERATION) -> tuple[np.ndarray, np.ndarray]:
        """Every ordered draft tuple with Q(ω) > 0 and its probability.

        Returns
        -------
        tuples : int array, shape (N, n)
        probs : float array, shape (N,), summing to 1
        """
        q, n = self.q, self.n
        support = np.flatnonzero(q > 0)
        if self.law in ("greedy", "hub"):
            top, rest = self.deterministic_drafts(), self.rest_law()
            last = np.flatnonzero(rest > 0)
            tuples = np.column_stack([np.tile(top, (last.size, 1)), last]) if n > 1 else last[:, None]
            probs = rest[last]
            if self.law == "hub":  # (x, a) with probability q(x), (a, y) with q(a) q'(y)
                tuples = np.concatenate([tuples[:, ::-1], tuples])
                probs = np.concatenate([q[last], q[top[0]] * rest[last]])
            return tuples.astype(np.int64), probs
        count = support.size**n
        if count > max_tuples:
            raise InputError(
                f"Listing all draft tuples needs |supp q|^n = {support.size}^{n} = {count:.3g} rows, "
                f"past the limit of {max_tuples:.3g}. Use a smaller V or n, or the 'exact' solver."
            )
        tuples = np.array(list(itertools.product(support, repeat=n)), dtype=np.int64).reshape(-1, n)
        if self.law == "iid":
            probs = np.prod(q[tuples], axis=1)
        else:  # wor: q(x_k) / q(tokens not drawn yet), zero on repeats
            distinct = np.array([len(set(t)) == n for t in tuples.tolist()], dtype=bool)
            tuples = tuples[distinct]
            # the mass left is summed over the undrawn tokens, not taken as 1 − q(drawn): no cancellation
            # when a drawn token holds almost all of q
            left = np.ones((len(tuples), support.size), dtype=bool)
            rank = np.searchsorted(support, tuples)  # positions of the drafts within supp q
            probs = np.ones(len(tuples))
            for k in range(n):
                probs *= q[tuples[:, k]] / (left @ q[support])
                left[np.arange(len(tuples)), rank[:, k]] = False
        keep = probs > 0
        return tuples[keep], probs[keep]

    def all_in_probability(self, H) -> float:
        """Q(Hⁿ): the probability that every draft lies in H (a list of ids or a bool mask)."""
        mask = self.mask(H)
        tokens = np.concatenate([np.flatnonzero(mask), np.flatnonzero(~mask)])
        return float(self.prefix_all_in(tokens)[int(mask.sum())])

    def prefix_all_in(self, tokens) -> np.ndarray:
        """Q(H_kⁿ) for every prefix H_k = tokens[:k], k = 0..len(tokens), without listing draft tuples.

        O(V) for "iid", "greedy" and "hub"; O(V·M·n) for "wor", with M ≈ 10·log(t_max/t_min) quadrature
        nodes (a few hundred to a few thousand).
        """
        tokens = np.asarray(tokens, dtype=np.int64)
        q, n = self.q, self.n
        Q = np.concatenate([[0.0], np.minimum(np.cumsum(q[tokens]), 1.0)])  # q(H_k)
        if self.law == "iid":
            return Q**n
        if self.law in ("greedy", "hub"):
            top, rest = self.deterministic_drafts(), self.rest_law()
            has_top = np.concatenate([[0], np.cumsum(np.isin(tokens, top))]) == top.size  # T ⊆ H_k
            rest_in = np.concatenate([[0.0], np.cumsum(rest[tokens])])  # q'(H_k ∖ T), as q'(T) = 0
            return np.where(has_top, np.minimum(rest_in, 1.0), 0.0)
        return self._wor_prefix_all_in(tokens)

    def _wor_prefix_all_in(self, tokens: np.ndarray) -> np.ndarray:
        """The "wor" integral (module docstring) for every prefix, by the trapezoid rule in s = log t.

        P(at least n of H_k arrived by t) does not depend on λ, so one pass over the tokens updates
        it prefix by prefix (a Poisson-binomial count capped at n); only the weight λ e^{−λt} changes.
        """
        q, n = self.q, self.n
        qt = q[tokens]
        unlisted = np.ones(self.V, dtype=bool)
        unlisted[tokens] = False
        # λ_k = q(H_kᶜ) as a suffix sum, so it is exactly 0 once H_k holds all of supp q
        lam = np.concatenate([np.cumsum(qt[::-1])[::-1], [0.0]]) + q[unlisted].sum()
        positive = q[q > 0]
        lam_min = max(float(positive.min()), 1e-300)
        # below t_min the integrand is ≤ λ t ⋅ P(≥ 1 arrival) ≤ t: negligible; past t_max, e^{−λt} ≤ e^{−40}
        s = np.arange(np.log(1e-10), np.log(40.0 / lam_min) + WOR_STEP, WOR_STEP)
        t = np.exp(s)  # (M,)
        counts = np.zeros((n + 1, t.size))  # P(c arrivals among H_k by t), c = 0..n−1, and ≥ n in row n
        counts[0] = 1.0
        at_least = np.zeros((tokens.size + 1, t.size))
        for k, qk in enumerate(qt, start=1):
            if qk > 0:
                b = -np.expm1(-qk * t)  # P(token k has arrived by t)
                counts[n] += counts[n - 1] * b
                counts[1:n] = counts[1:n] * (1.0 - b) + counts[:n - 1] * b
                counts[0] *= 1.0 - b
            at_least[k] = counts[n]
        # ∫ λ e^{−λt} F(t) dt = ∫ λ t e^{−λt} F(e^s) ds
        weight = lam[:, None] * t[None, :] * np.exp(-lam[:, None] * t[None, :]) * WOR_STEP
        out = np.einsum("km,km->k", weight, at_least)
        # λ = 0: H_k holds all of supp q, and so all n draws
        out = np.where(lam > 0, out, at_least[:, -1])
        return np.clip(out, 0.0, 1.0)

    def psi(self, H) -> float:
        """ψ(H) = p(H) − Q(Hⁿ); the optimal acceptance is 1 + min_H ψ(H)."""
        mask = self.mask(H)
        return float(self.p[mask].sum() - self.all_in_probability(mask))

    # ------------------------------------------------------------- helpers
    def mask(self, H) -> np.ndarray:
        """A token set given as ids or a boolean mask, as a boolean mask of shape (V,)."""
        H = np.asarray(H)
        if H.dtype == bool:
            if H.shape != (self.V,):
                raise InputError(f"A token mask must have shape ({self.V},); got {H.shape}.")
            return H
        mask = np.zeros(self.V, dtype=bool)
        if H.size:
            ids = H.astype(np.int64).ravel()
            if ids.min() < 0 or ids.max() >= self.V:
                raise InputError(f"Token ids must lie in 0..{self.V - 1}; got {ids.tolist()}.")
            mask[ids] = True
        return mask

    def check_drafts(self, drafts) -> np.ndarray:
        """Validate one draft tuple: n token ids in 0..V−1."""
        try:
            x = np.asarray(drafts)
        except (TypeError, ValueError):
            raise InputError(f"drafts must be {self.n} token ids; got {drafts!r}.") from None
        if x.shape != (self.n,) or x.dtype.kind not in "iu":
            if x.shape == (self.n,) and x.dtype.kind == "f" and np.all(x == np.round(x)):
                x = x.astype(np.int64)
            else:
                raise InputError(f"drafts must be {self.n} integer token ids; got {drafts!r}.")
        if x.min() < 0 or x.max() >= self.V:
            raise InputError(f"draft token ids must lie in 0..{self.V - 1}; got {x.tolist()}.")
        return x.astype(np.int64)

    def sample_drafts(self, rng: np.random.Generator, size: int | None = None) -> np.ndarray:
        """Draw draft tuples from the law: shape (n,), or (size, n)."""
        m = 1 if size is None else int(size)
        q, n = self.q, self.n
        if self.law == "iid":
            out = rng.choice(self.V, size=(m, n), p=q)
        elif self.law == "wor":  # Gumbel-top-k is exactly sequential sampling without replacement
            with np.errstate(divide="ignore"):
                keys = np.log(q)[None, :] + rng.gumbel(size=(m, self.V))
            out = np.argsort(-keys, axis=1)[:, :n]
        else:
            top, rest = self.deterministic_drafts(), self.rest_law()
            last = rng.choice(self.V, size=m, p=rest)
            out = np.column_stack([np.tile(top, (m, 1)), last])
            if self.law == "hub":  # first draft x ~ q: (x, a) if x ≠ a, else (a, y) with y ~ q'
                first = rng.choice(self.V, size=m, p=q)
                out = np.where((first == top[0])[:, None], out, np.column_stack([first, np.full(m, top[0])]))
        return out[0] if size is None else out

    # ------------------------------------------------------------ builders
    @classmethod
    def from_weights(cls, p_weights, q_weights, n: int, **kwargs) -> Problem:
        """Normalise non-negative weights (any positive total) into a Problem."""
        p = np.asarray(p_weights, dtype=np.float64)
        q = np.asarray(q_weights, dtype=np.float64)
        for name, w in (("p", p), ("q", q)):
            if w.ndim == 1 and w.size and np.isfinite(w).all() and (w >= 0).all() and w.sum() > 0:
                continue
            check_probabilities(w, name, atol=math.inf)  # raises the specific message
        return cls(p / p.sum(), q / q.sum(), n, **kwargs)

    @classmethod
    def from_logits(cls, target_logits, draft_logits, n: int, *, temperature: float = 1.0,
                    draft_temperature: float | None = None, top_k: int | None = None,
                    top_p: float | None = None, target_top_k: int | None = None,
                    target_top_p: float | None = None, **kwargs) -> Problem:
        """Build p = softmax(target/T) and q = top-k/top-p-truncated softmax(draft/T_draft).

        Truncation applies to the draft (as in the paper's experiments); `target_top_k` and
        `target_top_p` truncate the target too, if wanted.
        """
        from .logits import to_probs

        draft_temperature = temperature if draft_temperature is None else draft_temperature
        p = to_probs(target_logits, temperature=temperature, top_k=target_top_k, top_p=target_top_p,
                     name="target logits")
        q = to_probs(draft_logits, temperature=draft_temperature, top_k=top_k, top_p=top_p,
                     name="draft logits")
        if p.size != q.size:
            raise InputError(f"Target and draft logits must share a vocabulary; got {p.size} and {q.size} tokens.")
        return cls(p, q, n, **kwargs)

    @classmethod
    def random(cls, V: int, n: int, *, seed: int = 0, concentration: float = 1.0,
               top_k: int | None = None, **kwargs) -> Problem:
        """p, q ~ Dirichlet(concentration) over V tokens (seeded); q optionally top-k truncated."""
        if not isinstance(V, (int, np.integer)) or V < 1:
            raise InputError(f"V must be a whole number ≥ 1; got {V!r}.")
        if not concentration > 0:
            raise InputError(f"concentration must be > 0; got {concentration!r}.")
        rng = np.random.default_rng(seed)
        p = rng.dirichlet(np.full(V, concentration))
        q = rng.dirichlet(np.full(V, concentration))
        if top_k is not None:
            q = truncate_top_k(q, top_k)
        return cls.from_weights(p, q, n, **kwargs)


def truncate_top_k(q: np.ndarray, k: int) -> np.ndarray:
    """Keep the k largest entries of q (ties to the lower id) and renormalise."""
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"top_k must be a whole number ≥ 1; got {k!r}.")
    q = np.asarray(q, dtype=np.float64)
    if k >= q.size:
        return q / q.sum()
    keep = np.lexsort((np.arange(q.size), -q))[:k]
    out = np.zeros_like(q)
    out[keep] = q[keep]
    return out / out.sum()
