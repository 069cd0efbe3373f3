"""From logits to probabilities: temperature, top-k and top-p (nucleus) truncation."""

from __future__ import annotations

import numpy as np

from .problem import InputError


def to_probs(logits, *, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, name: str = "logits") -> np.ndarray:
    """softmax(logits / temperature), then keep the top-k tokens and/or the smallest nucleus of mass ≥ top_p.

    Tokens with logit −inf get probability 0. Ties at the top-k boundary go to the lower token id.
    """
    try:
        z = np.asarray(logits, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a 1-D array of numbers.") from None
    if z.ndim != 1 or z.size == 0:
        raise InputError(f"{name} must be a non-empty 1-D array; got shape {z.shape}.")
    if np.isnan(z).any() or np.isposinf(z).any():
        raise InputError(f"{name} contain NaN or +inf; logits must be finite (−inf marks a banned token).")
    if not np.isfinite(z).any():
        raise InputError(f"{name} are all −inf: no token can be sampled.")
    if not (isinstance(temperature, (int, float, np.floating)) and temperature > 0 and np.isfinite(temperature)):
        raise InputError(f"temperature must be a finite number > 0; got {temperature!r}.")
    z = z / temperature
    z = z - z[np.isfinite(z)].max()
    probs = np.exp(z)
    probs /= probs.sum()
    order = np.lexsort((np.arange(z.size), -probs))  # most likely first, ties to the lower id
    keep = np.zeros(z.size, dtype=bool)
    keep[order] = True
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
            raise InputError(f"top_k must be a whole number ≥ 1; got {top_k!r}.")
        keep[order[top_k:]] = False
    if top_p is not None:
        if not (isinstance(top_p, (int, float, np.floating)) and 0 < top_p <= 1):
            raise InputError(f"top_p must lie in (0, 1]; got {top_p!r}.")
        # smallest prefix whose mass reaches top_p (always at least one token)
        cut = int(np.searchsorted(np.cumsum(probs[order]), top_p * (1 - 1e-12))) + 1
        keep[order[cut:]] = False
    probs = np.where(keep, probs, 0.0)
    return probs / probs.sum()
