"""Named toy problems: the cases the literature and our design notes use, ready to explore.

Each preset is a function of n (and a few keywords) returning a Problem; PRESETS maps names to
(function, one-line description).
"""

from __future__ import annotations

import numpy as np

from .problem import InputError, Problem


def khisti(n: int = 2, q2: float = 1 / 6, q1: float = 1 / 6) -> Problem:
    """Khisti et al. (arXiv 2410.18234) Fig. 2: p uniform on 3 tokens, q = [q1, q2, 1 − q1 − q2]."""
    return Problem([1 / 3, 1 / 3, 1 / 3], [q1, q2, 1 - q1 - q2], n, labels=("a", "b", "c"))


def misranked(n: int = 2) -> Problem:
    """peers.md D2: the draft ranks the tokens in reverse; the sampling law matters more than the verifier."""
    return Problem([0.9, 0.05, 0.05], [0.05, 0.05, 0.9], n, labels=("the", "a", "an"))


def reversed_three(n: int = 2) -> Problem:
    """peers.md D2: p = [0.5, 0.3, 0.2], q = [0.2, 0.3, 0.5]; α* = 0.86 at n = 2."""
    return Problem([0.5, 0.3, 0.2], [0.2, 0.3, 0.5], n, labels=("cat", "dog", "cow"))


def sglang(n: int = 2) -> Problem:
    """SGLang issue #10308's toy: p = [0.6, 0.2, 0.1, 0.1], q = [0.7, 0.2, 0.05, 0.05]."""
    return Problem([0.6, 0.2, 0.1, 0.1], [0.7, 0.2, 0.05, 0.05], n, labels=("yes", "no", "maybe", "ok"))


def equal(n: int = 2, V: int = 5) -> Problem:
    """p = q (a Zipf-like law): every draft can be kept, α* = 1."""
    w = 1.0 / np.arange(1, V + 1)
    return Problem.from_weights(w, w, n)


def disjoint(n: int = 2, V: int = 6) -> Problem:
    """The draft never proposes a token the target wants: α* = 0."""
    half = V // 2
    p = np.r_[np.ones(half), np.zeros(V - half)]
    q = np.r_[np.zeros(half), np.ones(V - half)]
    return Problem.from_weights(p, q, n)


def one_hot(n: int = 2, V: int = 5) -> Problem:
    """The draft is certain (one-hot, like greedy top-1 drafting); α* = p(argmax q)."""
    p = 1.0 / np.arange(1, V + 1)
    q = np.zeros(V)
    q[1] = 1.0
    return Problem.from_weights(p, q, n)


def zipf(n: int = 3, V: int = 8, gap: float = 0.6, seed: int = 0) -> Problem:
    """Zipf-like target logits, draft logits = target + Gaussian noise of scale `gap` (a realistic pair)."""
    rng = np.random.default_rng(seed)
    logits = -1.1 * np.log(np.arange(1, V + 1))
    from .logits import to_probs

    return Problem(to_probs(logits), to_probs(logits + gap * rng.standard_normal(V)), n)


PRESETS = {
    "reversed": (reversed_three, "p = [.5 .3 .2], q reversed (α* = 0.86 at n = 2)"),
    "khisti": (khisti, "Khisti et al.'s toy: p uniform on 3 tokens"),
    "misranked": (misranked, "draft ranks the tokens backwards"),
    "sglang": (sglang, "SGLang issue #10308's 4-token example"),
    "equal": (equal, "p = q: everything accepted"),
    "disjoint": (disjoint, "disjoint supports: nothing accepted"),
    "one_hot": (one_hot, "a certain (one-hot) draft"),
    "zipf": (zipf, "Zipf-like target with a noisy draft"),
}


def preset(name: str, n: int = 2, **kwargs) -> Problem:
    """The named preset with n drafts. `globalres.PRESETS` lists the names."""
    if name not in PRESETS:
        raise InputError(f"Unknown preset {name!r}; choose one of: {', '.join(PRESETS)}.")
    return PRESETS[name][0](n=n, **kwargs)
