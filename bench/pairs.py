"""Target/draft pairs for the benchmark: Zipf-like synthetic pairs, or bundled real ones when present.

Synthetic pair: target logits = −s·log(rank) over V tokens (a Zipf law with a random token order);
draft logits = target logits·β + Gaussian noise, then top-k truncation. The noise is tuned so the
single-draft acceptance Σ min(p, q) sits near 0.75, inside the 0.5–0.9 of published real pairs
(Leviathan et al. 2023, Table 3).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from globalres.problem import truncate_top_k

REAL = Path(__file__).resolve().parents[1] / "assets"  # bundled real pairs (SmolLM2), when present


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max()
    e = np.exp(z)
    return e / e.sum()


def synthetic_pair(V: int, k: int, seed: int, *, zipf: float = 1.1, noise: float = 1.0,
                   sharpen: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """(p, q) over V tokens: Zipf-like p, a noisy, top-k truncated draft q."""
    rng = np.random.default_rng(seed)
    logit_p = -zipf * 3.0 * np.log1p(rng.permutation(V).astype(float))
    logit_q = sharpen * logit_p + noise * rng.standard_normal(V)
    return softmax(logit_p), truncate_top_k(softmax(logit_q), k)


def real_pairs(V: int | None = None):
    """Real (p, q) rows from bundled `assets/*pairs*.npz` files with `target_logp` and `draft_logp`
    (N, V) log-probabilities (the SmolLM2 bundle), if any."""
    for path in sorted(REAL.glob("*pairs*.npz")) if REAL.is_dir() else []:
        with np.load(path) as f:
            if "target_logp" in f and "draft_logp" in f and (V is None or f["target_logp"].shape[1] == V):
                for lp, lq in zip(f["target_logp"], f["draft_logp"]):
                    yield softmax(lp.astype(np.float64)), softmax(lq.astype(np.float64))


def labelled_pairs(V: int, k: int, count: int, seed: int = 0):
    """(pairs, n_real): `count` pairs over V tokens with q top-k, the bundled real ones first (truncated
    to k), then synthetic; n_real says how many of them are real."""
    out = []
    for p, q in real_pairs(V):
        if len(out) == count:
            break
        out.append((p / p.sum(), truncate_top_k(q / q.sum(), k)))
    n_real = len(out)
    for i in range(count - n_real):
        out.append(synthetic_pair(V, k, seed + i))
    return out, n_real


def pairs(V: int, k: int, count: int, seed: int = 0):
    """`count` pairs over V tokens with q top-k: real ones first (truncated to k), then synthetic."""
    return labelled_pairs(V, k, count, seed)[0]
