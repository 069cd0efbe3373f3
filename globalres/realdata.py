"""Bundled real target/draft pairs from SmolLM2-135M-Instruct and its self-speculative early exit.

Notation
--------
p, q       target and draft next-token laws over V = 49152 tokens at one position of real text
n          drafts per position; the problem is Problem(p, q, n) with q optionally cut to its top-k
H, ψ(H)    ψ(H) = p(H) − q(H)ⁿ;  α* = 1 + min_H ψ(H)

Data (assets/smollm2_pairs.npz, written by scripts/make_logits.py; no model needed to read it)
-----------------------------------------------------------------------------------------------
target_logp, draft_logp   (N, V) float16: log_softmax of the logits at temperature 1 (the full model;
                          the draft of `globalres.live`), one row per position, stored by `quantise`:
                          log p ≥ CUT = −12 keeps float16 precision (a relative 0.4 % or better on each
                          probability, 0.05 % above e⁻¹); below CUT (p < 6·10⁻⁶, where only the sum of
                          many tokens matters) it is rounded to a multiple of 1/8 nat (relative ≤ 6.5 %,
                          unbiased); below FLOOR = −25 (p < 1.4·10⁻¹¹, under 7·10⁻⁷ of mass in all) it is
                          stored as FLOOR. Any temperature τ is exact from these (softmax(log p / τ) =
                          softmax(logits / τ)) up to that rounding, and `meta["quantisation_alpha_error"]`
                          records the largest |Δα*| it caused over all positions, n ∈ {1, 4, 16} and
                          k ∈ {1, 10, 1000, V}, measured against float32 when the file was made.
context, category, next_token   the text before the position (prompt and generated prefix), its
                          kind (prose, code, list, chat) and the token the target actually produced.
vocab, vocab_offsets      the V token strings: UTF-8 bytes, token v at vocab[offsets[v]:offsets[v + 1]].
meta                      JSON: model, draft exit layer, adapter, seeds, float16 error.

The full distributions are stored, so top-k of the draft can go up to k = V honestly.

>>> b = load_bundled()
>>> len(b) > 0 and b.V == 49152
True
>>> pb = b.problem(0, n=4, top_k=10)
>>> int((pb.q > 0).sum())
10
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from .logits import to_probs
from .problem import InputError, Problem

BUNDLE_PATH = Path(__file__).resolve().parent.parent / "assets" / "smollm2_pairs.npz"
FLOOR = -25.0
CUT = -12.0
TAIL_STEP = 1 / 8
CATEGORIES = ("prose", "code", "list", "chat")


def fold_undrafted(p, q) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep the tokens the draft can propose (q > 0) and fold all others into one extra token.

    Returns (p', q', keep): p' = (p[keep], 1 − p(keep)), q' = (q[keep], 0), keep = ids with q > 0
    (sorted); the extra token is dropped when it would have no mass. This is exact for the
    verification problem: a token with q = 0 is never drafted, and adding it to H raises p(H) while
    leaving q(H)ⁿ alone, so no minimiser of ψ(H) = p(H) − q(H)ⁿ needs one and α* is unchanged; any
    lossless rule for (p', q') becomes one for (p, q) with the same acceptance by drawing the folded
    token's identity from p restricted to the folded tokens.
    """
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    keep = np.flatnonzero(q > 0)
    tail = max(0.0, 1.0 - float(p[keep].sum()))
    if tail <= 1e-15:
        mass = p[keep]
        return mass / mass.sum(), q[keep], keep
    return np.append(p[keep], tail), np.append(q[keep], 0.0), keep


def quantise(logp) -> np.ndarray:
    """Log-probabilities as stored in the bundle: float16, tail below CUT rounded to TAIL_STEP, floored at FLOOR.

    The coarse tail is what makes the file small (it compresses to about 6 bits a token, against 10
    for float16 noise); the head, where α is decided, keeps float16 precision.
    """
    x = np.maximum(np.asarray(logp, dtype=np.float64), FLOOR)
    return np.where(x < CUT, np.round(x / TAIL_STEP) * TAIL_STEP, x).astype(np.float16)


@dataclass(frozen=True, eq=False)
class Bundle:
    """N real (target, draft) positions; see the module docstring for the fields."""

    target_logp: np.ndarray = field(repr=False)  # (N, V) float16
    draft_logp: np.ndarray = field(repr=False)  # (N, V) float16
    contexts: tuple = field(repr=False)
    categories: tuple = field(repr=False)
    next_tokens: np.ndarray = field(repr=False)  # (N,) int64
    vocab: tuple = field(repr=False)
    meta: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.contexts)

    def __repr__(self) -> str:
        return f"Bundle(N={len(self)}, V={self.V}, categories={sorted(set(self.categories))})"

    @property
    def V(self) -> int:
        return self.target_logp.shape[1]

    def _index(self, i) -> int:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not -len(self) <= i < len(self):
            raise InputError(f"pair index must be a whole number in 0..{len(self) - 1}; got {i!r}.")
        return int(i) % len(self)

    def context(self, i: int) -> str:
        """The text before position i: the chat prompt and what the model had generated so far."""
        return self.contexts[self._index(i)]

    def category(self, i: int) -> str:
        return self.categories[self._index(i)]

    def token(self, token_id: int) -> str:
        """The text of one token id."""
        return self.vocab[int(token_id)]

    def indices(self, category: str | None = None) -> np.ndarray:
        """Positions of one category (all when None)."""
        if category is None:
            return np.arange(len(self))
        if category not in CATEGORIES:
            raise InputError(f"category must be one of {', '.join(CATEGORIES)}; got {category!r}.")
        return np.flatnonzero(np.asarray(self.categories) == category)

    def logits(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(target, draft) log-probabilities at temperature 1 for position i: float64 (V,) each, usable as logits."""
        i = self._index(i)
        return self.target_logp[i].astype(np.float64), self.draft_logp[i].astype(np.float64)

    def problem(self, i: int, n: int, *, top_k: int | None = None, top_p: float | None = None,
                temperature: float = 1.0, law: str = "iid", fold: bool = False) -> Problem:
        """Problem(p, q, n) at position i: p = softmax(target/τ), q = top-k / top-p cut of softmax(draft/τ).

        `fold=True` folds the never-drafted tokens into one (`fold_undrafted`): V becomes
        |supp q| + 1, α* and losslessness are unchanged, and solvers that grow with V stay fast.
        """
        t, d = self.logits(i)
        pb = Problem.from_logits(t, d, n, temperature=temperature, top_k=top_k, top_p=top_p, law=law)
        if not fold:
            return pb
        p, q, keep = fold_undrafted(pb.p, pb.q)
        labels = tuple(self.vocab[k] for k in keep) + (("⟨other⟩",) if p.size > keep.size else ())
        return Problem(p, q, n, law=law, labels=labels)

    def probs(self, i: int, *, temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """(p, q) at position i without truncation."""
        t, d = self.logits(i)
        return to_probs(t, temperature=temperature), to_probs(d, temperature=temperature)


@lru_cache(maxsize=4)
def _load(path: str) -> Bundle:
    with np.load(path, allow_pickle=False) as z:
        names = {"target_logp", "draft_logp", "context", "category", "next_token", "vocab", "vocab_offsets", "meta"}
        if not names <= set(z.files):
            raise InputError(f"{path} is not a pairs bundle: it lacks {', '.join(sorted(names - set(z.files)))}.")
        target, draft = z["target_logp"], z["draft_logp"]
        raw, offsets = bytes(z["vocab"]), z["vocab_offsets"].tolist()
        vocab = tuple(raw[a:b].decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:]))
        meta = json.loads(str(z["meta"]))
        contexts, categories = tuple(z["context"].tolist()), tuple(z["category"].tolist())
        next_tokens = z["next_token"].astype(np.int64)
    if (target.shape != draft.shape or target.ndim != 2 or len(contexts) != target.shape[0]
            or len(vocab) != target.shape[1]):
        raise InputError(f"{path}: inconsistent shapes (target {target.shape}, draft {draft.shape}, "
                         f"{len(contexts)} contexts, {len(vocab)} vocabulary entries).")
    for a in (target, draft, next_tokens):
        a.flags.writeable = False
    return Bundle(target, draft, contexts, categories, next_tokens, vocab, meta)


def load_bundled(path=None) -> Bundle:
    """The bundled SmolLM2 pairs (assets/smollm2_pairs.npz by default); cached, arrays read-only."""
    path = Path(path) if path is not None else BUNDLE_PATH
    if not path.is_file():
        raise InputError(f"{path}: no such file; build it with scripts/make_logits.py.")
    return _load(str(path.resolve()))
