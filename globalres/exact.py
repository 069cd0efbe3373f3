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
damped Newton in log-weights. The integrals use the trapezoid rule in s = log t: the integrands are
entire in s and bounded in the strip |Im s| < π/2, so its error is at most β(h)·acc(v) a priori
(`strip_bound`, 1e-15 at the default step), and the certificates need no second, finer pass.

Large systems (k = 1000 to V; the inner one, or a large segment) are not fitted token by token: at the
optimum every token's log-weight is one smooth function of y = logit(p/(q n Qⁿ⁻¹)) (inner; `ratio_range`
for segments), so the fit of a few hundred Gauss pseudo-tokens (`gauss_bins`), read off through that
function (`compressed_start`), is already optimal for all of them to ~1e-13 (‖∇F‖₁), and one evaluation of
the full system certifies it (over 2500 tokens from moments, `moment_certificate`: no O(G·K) matrix at all).
That start is computed in C where pseudo.c is built (`pseudo_fit` and its neighbours): the same fit in one
call instead of ~300 small numpy calls; the certificate stays here.

Two exact shortcuts: tokens with equal p/q (common with float16 or bfloat16 logits) share their optimal
weight, so each run of them is fitted as one token (`merge_ties`); and with n = 2 the integral is a finite
sum, so small inner systems are fitted in closed form, without quadrature (`fit_pairwise`).

References: Thomas & Pal, arXiv 2511.15898, Thm 5.1 (the two systems), Thm 6.2 (outer targets),
Thms 6.4–6.5 (the convex programs, here without truncation).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
from scipy.linalg import lapack

from .plan import GAVE_UP, Plan, SolverError, failed
from .problem import InputError, Problem
from .subset import TIE

STEP = 0.25  # trapezoid step in s = log t: β(0.25) ≈ 1e-15 relative (0.5: 2e-7), see `strip_bound`
TAIL = 1e-18  # mass the truncated right end of the s-range may drop from the integrals
LEFT = 1e-4  # left end t_lo = LEFT/κ; the nodes left of it are summed analytically (see `tail_sums`)
MAX_LOG_STEP = 8.0  # a Newton step moves no log-weight further than this (a trust region)
MAX_TOKEN_STEP = 2.0  # the same for the per-token step of `rescale`, with φ frozen
# Denormal numbers (below 2.2e-308) cost ~100× a normal multiply-add on x86: the Gram matrix of a
# k = 1000 fit took 0.49 ms with 0.2% denormal entries and 0.17 ms without. So e^{−x} is taken with
# x ≤ EXP_CAP (e^−345 ≈ 1e-150: every product of two such numbers stays normal) and K-vectors of
# quadrature weights below FLUSH are set to 0; both change the integrals by under 1e-140.
EXP_CAP = 345.0
FLUSH = 1e-150


# ------------------------------------------------------------------------------ one-thread BLAS
# On a small shared CPU OpenBLAS's worker threads spin while other jobs hold the cores: measured on 2
# busy cores, a 1000×61 Gram matrix took 50 ms threaded and 0.1 ms on one thread. Our products are
# small (≤ 10^8 multiply-adds), so the fit runs them on the calling thread. `openblas_set_num_threads_local`
# (OpenBLAS ≥ 0.3.27, the build numpy wheels ship) sets it for this thread only and returns the old value.
@functools.lru_cache(maxsize=1)
def _openblas_local():
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line and ".so" in line}
        for path in sorted(paths):
            setter = getattr(ctypes.CDLL(path), "openblas_set_num_threads_local", None)
            if setter is not None:
                setter.restype = ctypes.c_int
                return setter
    except (OSError, IndexError):  # not Linux, or no OpenBLAS: BLAS keeps its own threading
        pass
    return None


@contextlib.contextmanager
def one_blas_thread():
    """Run the enclosed numpy linear algebra on the calling thread (no-op without OpenBLAS)."""
    setter = _openblas_local()
    previous = setter(1) if setter is not None else None
    try:
        yield
    finally:
        if setter is not None:
            setter(previous)


# A token at k = V allocates and frees ~100 arrays of 0.1–5 MB. glibc's malloc returns freed memory at the
# top of its heap (and mapped chunks) to the OS, so the next array takes fresh pages: ~1000 page faults a
# token, measured at 3–5 µs each on a VM (k = V, synthetic pairs: 13–17 ms a token, 9.6–12.6 ms with freed
# memory kept). A process that solves many tokens can keep it; this is process-wide, so it is opt-in.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)


def keep_freed_memory(trim_mb: int = 256, mmap_mb: int = 32) -> bool:
    """Ask glibc's malloc to keep up to `trim_mb` MB of freed heap for reuse and to serve arrays below
    `mmap_mb` MB from the heap (`mallopt`; process-wide). False where there is no glibc (nothing done)."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_TRIM_THRESHOLD, trim_mb << 20)) and bool(mallopt(M_MMAP_THRESHOLD, mmap_mb << 20))


# ---------------------------------------------------------------------------------- quadrature
@dataclass(frozen=True)
class System:
    """One system of §4: draft mass q > 0 and targets of its tokens, the mass c of the zero-weight
    tokens it sees, c0 = 1 (inner) or 0 (segment)."""

    q: np.ndarray
    target: np.ndarray
    c: float
    n: int
    c0: int
    Q: float = field(init=False)  # c + Σ q: the draft mass the system sees

    def __post_init__(self):
        object.__setattr__(self, "Q", self.c + float(self.q.sum()))


@functools.lru_cache(maxsize=16)
def tail_sums(h: float) -> tuple[float, float, float]:
    """ρ_j = Σ_{i≥1} e^{−ijh}, j = 1, 2, 3: the trapezoid nodes t_i = t_lo e^{−ih} left of the grid
    weigh Σ_i t_i^j = t_lo^j ρ_j in a Taylor expansion of the integrand in t."""
    return tuple(math.exp(-j * h) / -math.expm1(-j * h) for j in (1, 2, 3))


@functools.lru_cache(maxsize=16)
def strip_bound(h: float) -> float:
    """β(h): the trapezoid rule of step h in s = log t errs by at most β(h)·acc(v) on every acc(v).

    The integrand f(s) = t e^{−t(c0+w_v)} φ(t)^{n−1}, t = e^s, is entire in s, and on the line
    s = σ + iy, |y| < π/2, |f| ≤ f_real(σ + log cos y)/cos y because |e^{−tw}| = e^{−w e^σ cos y}
    for every w ≥ 0. So ∫|f(σ + iy)| dσ ≤ I/cos y (I the exact integral), and the strip theorem
    (Trefethen & Weideman 2014, Thm 5.1) bounds the infinite trapezoid sum's error by
    2 I / (cos a (e^{2πa/h} − 1)) for every a < π/2; β is its minimum over a
    (h = 0.25: 1.0e-15; 0.5: 1.8e-7; 1: 1.8e-3).
    """
    a = np.linspace(1e-3, math.pi / 2 - 1e-6, 20_000)
    return float(np.min(2.0 / (np.cos(a) * np.expm1(np.minimum(2 * math.pi * a / h, 700.0)))))


def grid(w: np.ndarray, n: int, c0: int, h: float) -> tuple[int, int]:
    """The node range lo..hi on hℤ (t_k = e^{kh}) that weights w need.

    Right end: the acc(v) integrand is at most n q_v w_v Q^{n−1} e^{−t(c0 + w_v)}, so cutting at
    t_hi = log(n/TAIL)/(c0 + min w) drops at most TAIL·Q. Left end: t_lo = LEFT/κ with κ = c0 + n·max w,
    the largest rate in the integrands; the nodes left of it are summed by Taylor expansion (`evaluate`).
    Nodes sit on h·ℤ, so every other node is the grid of the rule of step 2h (`hessian`).
    """
    kappa = c0 + n * float(w.max())
    lo = math.floor(math.log(LEFT / kappa) / h)
    t_hi = math.log(n / TAIL) / max(c0 + float(w.min()), 1e-300)
    return lo, max(math.ceil(math.log(t_hi) / h), lo + 1)


# numpy's float64 exp, log and log1p are vectorised only with AVX-512; on AVX2 they are scalar libm,
# 6–16 ns an entry against 2–4 ns for torch's (Sleef) kernels in a microbenchmark. Inside the solver torch
# paid only from ~32k entries (A/B in one process on a 2-core EPYC: below that numpy was as fast, or 1.2×
# faster at k = 100; above, torch 1.04–1.1× faster per k = 1000 token), so arrays that large go through
# torch, in pieces below at::internal::GRAIN_SIZE (32768 entries; a piece of exactly that is not below it),
# which torch runs on the calling thread: no OpenMP pool, whose spinning threads cost more than they give
# on a busy small CPU. With AVX-512 the order can flip (a 2-core Xeon: numpy's exp took 63 µs on a 1000 × 95
# table of e^{−t w}, torch's 82; with numpy's, a k = V token was 1.08× faster, k = 1000 within noise), so
# each function is timed once on this CPU, the way `inplace` runs it (`torch_is_faster`), and torch is used
# only where it wins.
TORCH_UFUNC = 32768  # entries from which `inplace` may call torch
GRAIN = 16384  # entries per torch call


@functools.lru_cache(maxsize=1)
def _torch_or_none():
    try:
        return _torch()
    except ImportError:  # torch is optional for the numpy path
        return None


@functools.lru_cache(maxsize=None)
def torch_is_faster(name: str) -> bool:
    """Whether `inplace`'s torch route for `name` beats numpy's by 20% on this CPU, timed as `inplace` runs
    it (tensor views and GRAIN pieces made per call) on an array of 3·TORCH_UFUNC float64 entries, about a
    k = 1000 evaluation's e^{−t w}: the best of 5 timings each, once per process (~3 ms). Either is correct
    to 2 ulp. (Timing pre-split pieces instead favoured torch's exp on an AVX-512 Xeon once torch ran on one
    thread, where inside the solver it was 7% slower at k = 1000.)"""
    torch = _torch_or_none()
    if torch is None:
        return False
    x = np.linspace(1e-3, 30.0, 3 * TORCH_UFUNC)
    if name == "exp":
        x = -x
    y = np.empty_like(x)

    def best(run):
        times = []
        for _ in range(6):  # the first is a warm-up
            np.copyto(y, x)
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        return min(times[1:])

    def in_torch():
        for piece in torch.from_numpy(y.reshape(-1)).split(GRAIN):
            getattr(piece, name + "_")()

    return best(in_torch) < 0.8 * best(lambda: getattr(np, name)(y, out=y))


def inplace(name: str, x: np.ndarray) -> np.ndarray:
    """x ← f(x) in place for f = np.`name` (exp, log or log1p; x float64), through torch when x is large
    and contiguous and torch is the faster on this CPU (notes above)."""
    if not (x.size >= TORCH_UFUNC and x.flags.c_contiguous and torch_is_faster(name)):
        return getattr(np, name)(x, out=x)
    for piece in _torch_or_none().from_numpy(x.reshape(-1)).split(GRAIN):
        getattr(piece, name + "_")()
    return x


def exp_(x: np.ndarray) -> np.ndarray:
    """x ← e^x in place (`inplace`)."""
    return inplace("exp", x)


def logit(r: np.ndarray) -> np.ndarray:
    """log r − log(1 − r) (`inplace`)."""
    return inplace("log", r.copy()) - inplace("log1p", -r)


def exponentials(w: np.ndarray, t: np.ndarray) -> np.ndarray:
    """E = e^{−t w} (G, K), the exponent capped at EXP_CAP; one allocation, in place after it. In one pass
    by pseudo.c where it is built (the same arguments to the bit, libmvec's exp: 2.1× faster at 1000 × 95),
    else by numpy (einsum: numpy's outer product does not vectorise its broadcast operand; 20% faster)."""
    library = _pseudo_c()
    if library is not None and w.dtype == t.dtype == np.float64 and w.ndim == t.ndim == 1:
        w, t = np.ascontiguousarray(w), np.ascontiguousarray(t)
        E = np.empty((w.size, t.size))
        library.exponentials(w.size, t.size, _pointer(w), _pointer(t), _pointer(E))
        return E
    E = np.einsum("g,k->gk", w, -t)
    np.maximum(E, -EXP_CAP, out=E)
    return exp_(E)


def integrals(system: System, w, E, t, h, dt=None):
    """acc(v) = n q_v w_v ∫ e^{−t(c0+w_v)} φ^{n−1} dt by the trapezoid rule in s = log t on nodes t (step h),
    from E = e^{−t w} (G, K); with φ and the kernel h t e^{−c0 t} φ^{n−1} for the Hessian (dt: the
    weights h t e^{−c0 t}, when the caller has them).

    Nodes left of t_lo = t[0] enter through g(t) = g0 + g1 t + O(t²), the acc(v) integrand in t:
    h Σ_i t_i g(t_i) = h t_lo (g0 ρ1 + g1 t_lo ρ2), g0 = n q w Q^{n−1}, g1 = −g0 (c0 + w + (n−1) m/Q),
    m = Σ q w; that is q w (a − b w) with scalars a, b (`left_tail`). The remainder is at most
    h g0 κ² t_lo³ ρ3 / 2 (g/g0 = E e^{−tX}, 0 ≤ X ≤ κ): `left_bound`.
    """
    n = system.n
    phi, terms = phi_sum(system.q, E, n)
    phi += system.c
    if dt is None:
        dt = h * t * np.exp(-system.c0 * t)
    kernel = dt * phi ** (n - 1)
    kernel[kernel < FLUSH] = 0.0
    qw = system.q * w
    m = float(qw.sum())
    Ek = E @ kernel
    a, b = left_tail(system, m, float(t[0]), h)
    acc = (n * Ek + (a - b * w)) * qw
    return dict(acc=acc, phi=phi, kernel=kernel, dt=dt, qw=qw, m=m, Ek=Ek, terms=terms)


CHAINED = 2**15  # (n − 1)·G from which φ is summed in chunks: its rounding term would pass 3.6e-12 of acc
PHI_CHUNK = 64  # tokens per partial sum of φ (`phi_sum`, `_rows_phi`; solve_batch pads rows to a multiple of it)


def phi_sum(q, E, n: int):
    """Σ_v q_v E_vk and the longest chain of additions in c + that sum (`rounding_terms`' `terms`). φ's
    relative error enters acc n − 1 times, so where (n − 1)·G ≥ CHAINED it is summed as partial sums of
    PHI_CHUNK tokens, then their sum (as `_rows_phi` does): a chain of PHI_CHUNK + G/PHI_CHUNK + 2, not G + 1
    (found by fuzzing: with G + 1, an 8510-token n = 64 system's bound alone was 1.2e-10, past tol)."""
    G = q.size
    chunks = G // PHI_CHUNK
    if (n - 1) * (G + 1) < CHAINED or chunks < 2:
        return q @ E, G + 1
    full = chunks * PHI_CHUNK
    phi = np.matmul(q[:full].reshape(chunks, 1, PHI_CHUNK), E[:full].reshape(chunks, PHI_CHUNK, -1))[:, 0].sum(0)
    if full < G:
        phi += q[full:] @ E[full:]
    return phi, PHI_CHUNK + chunks + 2


def left_tail(system: System, m: float, t0: float, h: float) -> tuple[float, float]:
    """(a, b) with h Σ_{t_i < t0} t_i g(t_i) = q w (a − b w) to first order in t (see `integrals`)."""
    n, Q = system.n, system.Q
    r1, r2, _ = tail_sums(h)
    scale = h * t0 * n * Q ** (n - 1)
    return scale * (r1 - t0 * r2 * (system.c0 + (n - 1) * m / Q)), scale * t0 * r2


def left_bound(system: System, w, t_lo: float, h: float) -> float:
    """Σ_v of the remainder of the left-tail expansion in `integrals`: h n Q^{n−1} m κ² t_lo³ ρ3 / 2."""
    n, Q = system.n, system.Q
    kappa = system.c0 + n * float(w.max())
    return h * n * Q ** (n - 1) * float(system.q @ w) * kappa**2 * t_lo**3 * tail_sums(h)[2] / 2


def rounding_terms(K: int, terms: int, n: int) -> int:
    """The relative rounding error of an evaluation's acc(v), in units of the dtype's 2⁻ᵖ (first order):
    sums of K positive terms in acc (K); φ = c + Σ_v q_v e^{−t w_v}, a sum of `terms` positive terms in
    sequence whose relative error enters the kernel φⁿ⁻¹ n − 1 times; and each e^{−x}, whose argument
    x = t·w ≤ EXP_CAP is rounded (relative error x·2⁻ᵖ in e^{−x}) and whose value errs by a few units,
    once in acc and n − 1 times through φ (n·(EXP_CAP + 8); the products around it are in the 8; numpy's
    exp errs by ≤ 0.72 ulp and pseudo.c's libmvec exp by ≤ 2.75, measured over 484 000 entries of e^{−t w}
    against long double)."""
    return K + (n - 1) * terms + n * (int(EXP_CAP) + 8)


def quadrature_bound(system: System, acc, w, t, h: float, terms: int | None = None) -> float:
    """A bound on ‖acc_h − acc‖₁, the error of the step-h rule on nodes t for the whole vector acc(v):
    the strip bound β Σ acc / (1 − β) (`strip_bound`; acc itself is only known to within β), the
    left-tail remainder (`left_bound`), the right truncation (at most TAIL·Q, `grid`) and rounding
    (`rounding_terms`; φ's sum has `terms` terms, default one per token; 1 in `moment_certificate`,
    which bounds its own φ)."""
    terms = system.q.size + 1 if terms is None else terms
    beta = strip_bound(h) + rounding_terms(t.size, terms, system.n) * 2.0**-53
    return beta / (1 - beta) * float(np.abs(acc).sum()) + left_bound(system, w, float(t[0]), h) + TAIL * system.Q


@functools.lru_cache(maxsize=4096)
def nodes(lo: int, hi: int, h: float) -> np.ndarray:
    """t_k = e^{kh}, k = lo..hi (read-only: shared between calls)."""
    t = np.exp(h * np.arange(lo, hi + 1))
    t.setflags(write=False)
    return t


@functools.lru_cache(maxsize=4096)
def node_table(lo: int, hi: int, h: float, c0: int):
    """On the nodes t = `nodes`(lo, hi, h): the weights dt = h t e^{−c0 t} of the acc integrals, e^{−t}
    (for F and the rejected mass) and Σ (e^{−t} − 1) (F of a segment); read-only, shared."""
    t = nodes(lo, hi, h)
    dt, decay = h * t * np.exp(-c0 * t), np.exp(-t)
    for a in (dt, decay):
        a.setflags(write=False)
    return dt, decay, float(np.expm1(-t).sum())


@functools.lru_cache(maxsize=4096)
def right_sum(hi: int, h: float) -> float:
    """Σ_{k>hi} e^{−t_k}, t_k = e^{kh}: right of the grid φ = c to within TAIL, so F's integrand is
    (Qⁿ − cⁿ) e^{−t} there (for both c0). F needs it: unlike acc, F's integrand decays only like e^{−t}."""
    k = np.arange(hi + 1, math.ceil(math.log(50.0) / h) + 1)
    return float(np.exp(-np.exp(h * k)).sum())


def rescale(system: System, b, h: float):
    """A start for the inner system from log-weights b: b + λ, λ such that its rejected mass
    R(λ) = ∫ e^{−t} φ_λ(t)ⁿ dt (weights e^λ w) equals its exact value Qⁿ − Σ target (Newton on log R),
    then with that φ frozen one Newton step per token on acc(v) = target(v).

    When the weights are large (near-tight systems, design §5b) R ≈ e^{−λ} E[1/S], and Newton in
    log-weights moves their common shift only about one unit per step; log R is nearly linear in λ
    there, so 1-D steps take the start to the right scale. They are cheap: φ_λ(t) = φ_0(t e^λ), so
    with φ_0 tabulated once on s_k = e^{kh}, R(λ) is the trapezoid sum on the nodes t_k = s_k e^{−λ}
    (the rule is as accurate on a shifted grid), and the token step reuses E = e^{−s w}. On the bench
    pairs the token step cuts ‖∇F‖₁ at the start ~20× (to ~3e-5), about one Newton step fewer.
    """
    n, q, c, Q = system.n, system.q, system.c, system.Q
    wanted = Q**n - float(system.target.sum())
    if not wanted > c**n:  # tuples of zero-weight tokens are always rejected: R ≥ cⁿ
        return b
    w = np.exp(b)
    # φ_0(s) = Q − s m + O(s²) left of s_lo and c to within TAIL·Q right of s_hi
    lo = math.floor(math.log(LEFT / (n * float(w.max()))) / h)
    hi = max(math.ceil(math.log(math.log(n / TAIL) / max(float(w.min()), 1e-300)) / h), lo + 1)
    s = nodes(lo, hi, h)
    E = exponentials(w, s)
    phi = q @ E
    phi += c
    power = phi ** (n - 1)
    phi *= power  # φⁿ
    lam, left = 0.0, h * float(s[0]) * tail_sums(h)[0]
    for _ in range(30):
        t = s * math.exp(-lam)
        a = t * np.exp(-t)
        a *= h
        edge, t_hi = math.exp(-lam) * left * Q**n, float(t[-1])  # the left tail; past t_hi, φ = c
        R = float(a @ phi) + edge + c**n * math.exp(-t_hi)
        slope = float((a * (t - 1.0)) @ phi) - edge + c**n * t_hi * math.exp(-t_hi)
        miss = math.log(wanted / R)
        step = miss * R / slope if slope < 0 else 0.0  # d log R / dλ = slope / R < 0
        lam += min(max(step, -20.0), 20.0)
        if abs(miss) < 3e-2 or not slope < 0:
            break
    # acc(v) = n q w̃ Σ_k h t_k e^{−t_k(1 + w̃)} φ^{n−1}(t_k) + left tail, w̃ = e^λ w, e^{−t_k w̃} = E on t = s e^{−λ}
    t = s * math.exp(-lam)
    kernel = h * t * np.exp(-t) * power
    S0, S1 = E @ kernel, E @ (t * kernel)
    wt = w * math.exp(lam)
    first = n * S0 + math.exp(-lam) * left * n * Q ** (n - 1)
    acc, slope = q * wt * first, q * wt * (first - n * wt * S1)  # slope: ∂acc/∂b with φ frozen
    step = np.divide(system.target - acc, slope, out=np.zeros_like(acc), where=slope > 0)
    np.minimum(np.maximum(step, -MAX_TOKEN_STEP, out=step), MAX_TOKEN_STEP, out=step)
    return b + lam + (step if np.isfinite(step).all() else 0.0)


def evaluate(system: System, b, lo: int, hi: int, h: float, w=None):
    """acc(v), the gradient g = acc − target of F and its norm ‖g‖₁, and F (on first use: `value`) at
    log-weights b on the nodes t_k = e^{kh}, k = lo..hi, with E = e^{−t w}, t and φ for `hessian` (w = e^b
    when known).

    F(b) = ∫ [A e^{−t} − e^{−c0 t}(φⁿ − (1 − c0) cⁿ)] dt/t − Σ target·b (module docstring); its
    integrand is t (n Q^{n−1} m − (1 − c0)(Qⁿ − cⁿ)) + O(t²) left of the grid.
    """
    if w is None:
        w = exp_(b.copy())
    t = nodes(lo, hi, h)
    dt = node_table(lo, hi, h, system.c0)[0]
    E = exponentials(w, t)
    out = integrals(system, w, E, t, h, dt)
    g = out["acc"] - system.target
    F = functools.partial(objective, system, b, out["phi"], out["m"], lo, hi, h)  # on demand: `value`
    return dict(out, objective=F, E=E, t=t, w=w, g=g, gnorm=float(np.abs(g).sum()))


def value(here: dict) -> float:
    """F at an evaluation, computed on first use: a pseudo-system fit needs it only where a line-search
    trial fails to shrink ‖∇F‖₁ (a dozen numpy calls saved per evaluation)."""
    if "F" not in here:
        here["F"] = here["objective"]()
    return here["F"]


def objective(system: System, b, phi, m: float, lo: int, hi: int, h: float) -> float:
    """F(b) from φ on the nodes lo..hi and m = Σ q w (see `evaluate`)."""
    n, c0, c, Q = system.n, system.c0, system.c, system.Q
    t = nodes(lo, hi, h)
    _, decay, drop = node_table(lo, hi, h, c0)
    # φⁿ − Qⁿ = Qⁿ expm1(n log1p(D/Q)), D = φ − Q: steers the line search only, so D's rounding is harmless
    # (and so is the floor −1 + 2⁻⁵² that keeps log1p finite where φ = 0)
    grow = np.maximum(phi * (1.0 / Q) - 1.0, -1.0 + 2.0**-52)
    np.log1p(grow, out=grow)
    grow *= n
    np.expm1(grow, out=grow)
    Qn, cn = Q**n, c**n
    integral = -Qn * float(decay @ grow) if c0 == 1 else (Qn - cn) * drop - Qn * float(grow.sum())
    first = n * Q ** (n - 1) * m - (1 - c0) * (Qn - cn)
    return h * (integral + float(t[0]) * tail_sums(h)[0] * first + (Qn - cn) * right_sum(hi, h)) \
        - float(system.target @ b)


def evaluate_at(system: System, b, h: float):
    """`evaluate` on the nodes `grid` gives for weights e^b."""
    w = exp_(b.copy())
    return evaluate(system, b, *grid(w, system.n, system.c0, h), h, w)


def hessian(system: System, here: dict, h: float, every: int = 1):
    """The Hessian of F in b, ∂acc/∂b, for the rule of step every·h on every `every`-th node of an
    `evaluate` result at step h (its nodes lie on hℤ, so that is a rule of its own):
    diag(d) − U diag(C) Uᵀ − γ (qw)(qw)ᵀ with U = q w E_sub, E_sub = e^{−t w} on those nodes:
    tokens couple only through φ. Returns d, C, γ and E_sub (a view).

    The rank-one term and part of d come from the left-tail sum of `integrals` (it depends on b
    through m = Σ q w): ~1e-8 of acc, there so that this is exactly the Hessian of the discretised F
    (on the bench pairs, leaving them out changed no Newton iteration count).
    """
    n, Q = system.n, system.Q
    w, t, E, qw = here["w"], here["t"], here["E"], here["qw"]
    H, keep = every * h, slice(None, None, every)
    if every == 1:
        kernel, S0 = here["kernel"], here["Ek"]
    else:
        kernel = np.zeros_like(t)  # the step-H rule's weights, zero off its nodes: products over the whole
        kernel[keep] = every * here["kernel"][keep]  # (contiguous) E, 5× faster than over a strided view
        S0 = E @ kernel
    # d = n q w ∫ e^{−t(c0+w)} (1 − t w) φ^{n−1}, plus the derivative of the left tail q w (a − b w)
    a, b = left_tail(system, here["m"], float(t[0]), H)
    d = (n * (S0 - w * (E @ (t * kernel))) + (a - 2.0 * b * w)) * qw
    if n >= 2:
        C = (n * (n - 1) * every) * (here["dt"][keep] * t[keep]) * here["phi"][keep] ** (n - 2)
        C[C < FLUSH] = 0.0
        gamma = b * (n - 1) / Q  # from ∂a/∂m (∂m/∂b = q w): the rank-one term
    else:
        C, gamma = np.zeros(t[keep].size), 0.0
    return d, C, gamma, E[:, keep]


def newton_direction(g, d, E, qw, C, gamma=0.0) -> np.ndarray:
    """Solve (diag(d) − U diag(C) Uᵀ − γ (qw)(qw)ᵀ) x = −g, U = q w E, scaled by d^{-1/2}; Woodbury
    when G > K (the rank-one term is one more column of U, with E = 1).

    With W = d^{-1/2} [U C^{1/2}, qw γ^{1/2}]: (I − W Wᵀ)^{-1} = I + W (I − WᵀW)^{-1} Wᵀ, a (K+1)² solve.
    """
    # a coarse rule's d can be ≤ 0 where the true one is tiny: the floor keeps the scaling finite
    s = 1.0 / np.sqrt(np.maximum(d, max(1e-20 * float(d.max()), 1e-300)))
    sigma = s * qw
    G, K = E.shape
    W = np.empty((G, K + 1))  # d^{-1/2} [U, qw]; the columns' factors [√C, √γ] are `root`
    np.multiply(E, sigma[:, None], out=W[:, :K])
    W[:, K] = sigma
    np.maximum(W, FLUSH, out=W)  # no denormal products in the Gram matrix; changes it by < 1e-290
    root = np.empty(K + 1)
    np.maximum(C, 0.0, out=root[:K])
    root[K] = max(gamma, 0.0)
    np.sqrt(root, out=root)
    r = s * g
    r *= -1.0
    if G <= K + 1:
        W *= root
        A, rhs = W @ W.T, r
    else:
        A = W.T @ W
        A *= root[:, None] * root
        rhs = (r @ W) * root
    A *= -1.0
    A.flat[:: A.shape[0] + 1] += 1.0 + 1e-13  # the segment gauge is pinned; 1e-13 only guards round-off
    # I − WᵀW is positive definite where the Hessian is: Cholesky (LAPACK directly: np.linalg.solve costs ~20 µs
    # more per call), LU where rounding or a coarse rule's Hessian breaks that
    y, info = lapack.dposv(A, rhs)[1:]
    if info != 0:
        y, info = lapack.dgesv(A, rhs)[2:]
    if info != 0:
        y = np.linalg.lstsq(A, rhs, rcond=None)[0]
    if G <= K + 1:
        return s * y
    y *= root
    return s * (r + W @ y)


# ------------------------------------------------------------------------------------ one system
def newton(system: System, b0, *, h: float, tol: float, max_iter: int, pin=None, sparse: int = 1,
           record: bool = True, predict: bool = False):
    """Minimise the step-h quadrature of F(b) by damped Newton from b0: b, F and ‖∇F‖₁ per iteration.

    pin : index of a log-weight held fixed (segments: F is invariant to a common shift of a).
    sparse : the Hessian comes from every `sparse`-th node (the rule of step sparse·h, a quarter of
        the Gram cost at 2) until a step cuts ‖∇F‖₁ less than tenfold or fails, then from every node.
    An accepted line-search trial's evaluation is the next iterate's: one pass of exponentials per
    Newton step when full steps are taken.
    record : F per iteration is returned (else [], and F is computed only where the line search needs it).
    predict : a step from ‖∇F‖₁ ≤ PREDICT (the first, or one after a quadratic step) is taken without
        evaluating where it lands (`predicted`); the returned evaluation is then that one, b uncertified.
    Returns b, the objective and gradient norm per iteration, and the evaluation at b.
    """
    b = np.minimum(np.maximum(np.asarray(b0, dtype=np.float64), -700.0), 700.0)
    free = None if pin is None else np.arange(b.size) != pin

    def at(x):
        return evaluate_at(system, x, h)

    here = at(b)
    objective, gradient_norm = [value(here)] if record else [], []
    while len(gradient_norm) < max_iter:
        g, gnorm = here["g"], here["gnorm"]
        gradient_norm.append(gnorm)
        if gnorm <= tol:
            break
        if len(gradient_norm) > 1 and gnorm > 0.1 * gradient_norm[-2]:
            sparse = 1
        d, C, gamma, E = hessian(system, here, h, sparse)
        if free is None:
            step = newton_direction(g, d, E, here["qw"], C, gamma)
        else:
            step = np.zeros_like(b)
            step[free] = newton_direction(g[free], d[free], E[free], here["qw"][free], C, gamma)
        if predict and gnorm <= PREDICT and (len(gradient_norm) == 1 or gnorm <= 1e-2 * gradient_norm[-2]) \
                and float(np.abs(step).max()) <= PREDICT_STEP:
            return b + step, objective[: len(gradient_norm)], gradient_norm, predicted(system, here, step)
        there = line_search(at, b, step, here) if np.isfinite(step).all() else None
        if there is None:
            if sparse == 1:
                break
            sparse = 1  # retry this iterate with the exact Hessian
            gradient_norm.pop()
            continue
        b, here = there
        if record:
            objective.append(value(here))
    return b, objective[: len(gradient_norm)], gradient_norm, here


PREDICT = 1e-7  # ‖∇F‖₁ from which `newton(predict=True)` trusts a quadratic step (it lands near 1e-14)
PREDICT_STEP = 1e-5  # and the largest log-weight change it trusts to first order


def predicted(system: System, here: dict, step) -> dict:
    """The parts of an evaluation at b + step that `ratio_curve` reads (t, kernel, m), from the one at b:
    φ to first order in the step, φ(t) − t Σ_v q_v w_v e^{−t w_v} step_v, for one matrix-vector product
    instead of an evaluation. The neglected term is second order in each token's step, weighted by its
    share of φ: ~1e-14 of φ for the typical step of ~1e-7 from ‖∇F‖₁ ≤ PREDICT. `newton` trusts no log-weight
    change above PREDICT_STEP (light pseudo-tokens can move 1e-4–1e-2 at a small gradient, and trusting those
    tripled the full system's certificate misses). A miss costs only time: that certificate is computed
    afresh from the read-off weights."""
    t, qw = here["t"], here["qw"]
    phi = here["phi"] - t * ((qw * step) @ here["E"])
    kernel = here["dt"] * phi ** (system.n - 1)
    kernel[kernel < FLUSH] = 0.0
    return dict(t=t, kernel=kernel, m=float(qw @ np.exp(step)), predicted=True)


def line_search(at, b, step, here):
    """Backtracking from the full Newton step (capped at MAX_LOG_STEP): the accepted (b, at(b)), or None
    (`at`: log-weights → evaluation, as `evaluate_at`). Accepts on a smaller gradient or on Armijo's
    condition on F: near the optimum F changes below round-off."""
    biggest = float(np.abs(step).max())
    if biggest > MAX_LOG_STEP:
        step = step * (MAX_LOG_STEP / biggest)
    slope, gnorm = float(here["g"] @ step), here["gnorm"]
    size = 1.0
    for _ in range(40):
        trial = b + size * step
        np.minimum(np.maximum(trial, -700.0, out=trial), 700.0, out=trial)
        there = at(trial)
        if there["gnorm"] < gnorm or value(there) <= value(here) + 1e-4 * size * slope:
            return trial, there
        size /= 2
    return None


SMALL = 512  # systems this small skip the 2h phase (a k = V pseudo-system of 206: 10 → 3 Newton steps)
ROUGH = 1e-6  # ‖∇F‖₁ the step-2h phase of `fit_system` stops at: about where the 2h rule's own error lies
EXACT_HESSIAN = 32  # systems of at most this many tokens take the step-h Hessian at once: its cost is per call


TIGHT = 1e-4  # rejected mass, relative to the accepted, below which a system is near-tight (`tight`)


def tight(system: System) -> bool:
    """Whether an inner system is near-tight (design §5b): its rejected mass R = Qⁿ − Σ target is below
    TIGHT · Σ target. F's Hessian then has an eigenvalue ~R (the common shift of the log-weights), and the
    step-2h rule's Hessian, off by ~2e-7 of Σ acc, gets that direction wrong: Newton with it stalls for one
    to a few steps near 1e-11 (k = 1000, n = 8 Zipf pairs, R ~ 7e-8), where the exact one is quadratic."""
    accepted = float(system.target.sum())
    return system.c0 == 1 and system.Q**system.n - accepted < TIGHT * accepted


def fit_system(system: System, b0, *, h=STEP, tol=1e-12, max_iter=100, pin=None, warm=False, record=True,
               predict=False):
    """Fit one system: Newton at step 2h to ROUGH, then at step h to tol, certified at h.

    The 2h rule has half the nodes (a quarter of the Newton system's cost) and errs by ~1e-7
    relative, so its optimum is a start one or two quadratic steps from the optimum at h. A warm
    start (`compressed_start`) or a small system goes to step h at once; a warm start that misses tol
    (by ~1e-11: the read-off's own error, on ~4% of k = 1000 tokens) steps with the Hessian of the 4h rule,
    a quarter of the Gram matrix, whose ~2e-3 relative error still cuts ‖∇F‖₁ ~100× a step (every 8th node:
    too coarse, 2×); a near-tight inner system (`tight`) steps with the exact Hessian. The last step-h
    evaluation is the certificate: its quadrature error is bounded a priori (`quadrature_bound`), so no
    finer pass is needed.

    Returns a dict: b, acc (at step h), l1 = ‖acc − target‖₁, quadrature (a bound on ‖acc − exact‖₁),
    objective and gradient_norm per iteration (both phases), nodes, converged, evaluation (the last
    `evaluate` result). record=False (a pseudo-system fit, whose b, convergence and evaluation are all
    its caller uses): no objective per iteration and quadrature None. predict=True (a pseudo-system fit
    too): the last quadratic step is not evaluated (`newton`); its evaluation is then `predicted`'s,
    acc and l1 None, and converged means that step was taken.
    """
    with one_blas_thread():
        objective, gradient_norm, b = [], [], b0
        if not warm and system.q.size > SMALL:
            b, objective, gradient_norm, _ = newton(system, b0, h=2 * h, tol=max(tol, ROUGH), max_iter=max_iter,
                                                    pin=pin, sparse=2, record=record)
        sparse = 1 if system.q.size <= EXACT_HESSIAN or (not warm and tight(system)) else 4 if warm else 2
        b, more_objective, more_gradient, here = newton(system, b, h=h, tol=tol, max_iter=max_iter, pin=pin,
                                                        sparse=sparse, record=record, predict=predict)
    if "predicted" in here:
        return dict(b=b, acc=None, l1=None, quadrature=None, objective=objective + more_objective,
                    gradient_norm=gradient_norm + more_gradient, nodes=here["t"].size, converged=True,
                    evaluation=here)
    acc, t = here["acc"], here["t"]
    quadrature = quadrature_bound(system, acc, here["w"], t, h, here["terms"]) if record else None
    return dict(b=b, acc=acc, l1=here["gnorm"], quadrature=quadrature, objective=objective + more_objective,
                gradient_norm=gradient_norm + more_gradient, nodes=t.size, converged=more_gradient[-1] <= tol,
                evaluation=here)


def inner_start(q, p, Q, n):
    """Start of the inner fit: w = r/(1 − r), r = p/(n q Q^{n−1}), exact for n = 1 (w = p/(q − p))."""
    with np.errstate(divide="ignore", over="ignore"):
        r = p / (n * q * Q ** (n - 1))
    return logit(np.clip(r, 1e-300, 1.0 - 1e-12))


# ------------------------------------------------------------------ n = 2, small inner systems: no quadrature
# With two drafts the integral is a finite sum: ∫ e^{−t(1+w_v)} φ(t) dt = c/(1 + w_v) + Σ_u q_u/(1 + w_v + w_u),
# so acc(v) = 2 q_v w_v [c/(1 + w_v) + Σ_u q_u/(1 + w_v + w_u)] and, by Frullani as in the module notes,
# F(b) = Σ_{u,v} q_u q_v log(1 + w_u + w_v) + 2c Σ_v q_v log(1 + w_v) − Σ_v target_v b_v (+ a constant).
# Exact up to rounding, and with a few tokens its G×G Newton system takes fewer numpy calls than the
# quadrature (k = 10, n = 2: a fit 260 → 90 µs). Inner systems only: a segment's 1/(w_v + w_u) overflows
# for the near-zero weights its zero-target tokens take.
PAIRWISE = 32  # inner systems with n = 2 and at most this many tokens are fitted in closed form


def pairwise(system: System, b):
    """acc, g = acc − target, ‖g‖₁ and F of an inner system with n = 2 at log-weights b, in closed form
    (notes above), with M = 1/(1 + w_v + w_u) and mc = 1/(1 + w) for `pairwise_direction`."""
    q, c = system.q, system.c
    w = np.exp(b)
    M = np.add.outer(w, w)
    M += 1.0
    np.reciprocal(M, out=M)
    mc = 1.0 / (1.0 + w)
    qw = q * w
    acc = (2.0 * qw) * (M @ q + c * mc)
    g = acc - system.target
    F = -float(q @ np.log(M) @ q) - 2.0 * c * float(q @ np.log(mc)) - float(system.target @ b)
    return dict(w=w, M=M, mc=mc, qw=qw, acc=acc, g=g, gnorm=float(np.abs(g).sum()), F=F)


def pairwise_direction(system: System, here: dict) -> np.ndarray:
    """The Newton step of `pairwise`'s F: its Hessian ∂acc/∂b is
    diag(acc − 2 q w² (M²q + c mc²)) − 2 (qw)(qw)ᵀ ⊙ M², solved scaled by its diagonal^{-1/2}."""
    M, qw = here["M"], here["qw"]
    H = M * M
    d = here["acc"] - (2.0 * qw * here["w"]) * (H @ system.q + system.c * here["mc"] ** 2)
    H *= qw[:, None] * (-2.0 * qw)
    H.flat[:: H.shape[0] + 1] += d
    s = 1.0 / np.sqrt(np.maximum(H.diagonal(), 1e-300))
    H *= s[:, None] * s
    y, info = lapack.dgesv(H, -s * here["g"])[2:]
    if info != 0:
        y = np.linalg.lstsq(H, -s * here["g"], rcond=None)[0]
    return s * y


def fit_pairwise(system: System, b0, *, tol: float, max_iter: int) -> dict:
    """`fit_system` for an inner system with n = 2 by damped Newton on `pairwise`'s closed form. Its
    `quadrature` is the rounding bound (G + 8)·2⁻⁵³·Σ acc: each acc(v) is G + 1 positive terms, each
    rounded a few times, and there is no quadrature."""
    b = np.minimum(np.maximum(np.asarray(b0, dtype=np.float64), -700.0), 700.0)

    def at(x):
        return pairwise(system, x)

    here = at(b)
    objective, gradient_norm = [here["F"]], []
    while len(gradient_norm) < max_iter:
        gradient_norm.append(here["gnorm"])
        if here["gnorm"] <= tol:
            break
        step = pairwise_direction(system, here)
        there = line_search(at, b, step, here) if np.isfinite(step).all() else None
        if there is None:
            break
        b, here = there
        objective.append(here["F"])
    acc = here["acc"]
    return dict(b=b, acc=acc, l1=here["gnorm"], quadrature=(b.size + 8) * 2.0**-53 * float(acc.sum()),
                objective=objective[: len(gradient_norm)], gradient_norm=gradient_norm, nodes=0,
                converged=gradient_norm[-1] <= tol, evaluation=here)


# ---------------------------------------------------------------------- large systems: a compressed start
# Every token of a system solves the same scalar equation given φ (design §4): acc(v)/q_v = R(w_v) with
# R(w) = n w ∫ e^{−t(c0+w)} φ^{n−1} dt, increasing from R0 (0 inner, n c^{n−1} in a segment) to
# R∞ = n Q^{n−1}. So at the optimum b_v = B(y_v), one smooth increasing function of
# y_v = logit((p_v/q_v − R0)/(R∞ − R0)) (nearly b_v + const: exact for an inner system with n = 1), and
# φ = c + Σ_v q_v e^{−t exp B(y_v)} is an integral of a smooth function of y against the measure Σ q_v δ(y_v).
# A Gauss rule per bin of y reproduces that integral, so a system of pseudo-tokens (the Gauss nodes, with
# the Gauss weights as draft mass) has nearly the same φ and the same B. Measured on the bench pairs, the
# full system's ‖∇F‖₁ at the weights read off it (median, max over 40 systems): k = 1000, n = 2, 8, 16:
# 2e-14 to 1e-13, at most 5e-12; k = V (real pairs): 4e-13, at most 3e-11. Mostly below the fit tolerance,
# so the full system is evaluated once, as the certificate (else Newton goes on from there: ~4% of the 200
# bench tokens at k = 1000, n = 8 miss by 2–3e-11 and take one step, `fit_system`). Bins 0.2 wide
# gave 3 to 10× less error but, with 1.5× the pseudo-tokens, a k = 1000 token 1.06–1.20× slower (A/B).
BIN = 0.3  # bin width in y of `compressed_start`
CURVE = 0.1  # grid step in b on which R is tabulated for B (quintic Hermite: b errs ≤ 3e-11; 0.05: 5e-13)
LARGE = 256  # systems with fewer tokens are fitted directly


# ---------------------------------------------------------- the compressed start in C (optional)
# The pseudo-system of a k = 1000 token has ~70 tokens and ~95 nodes: its numpy fit is ~150 numpy calls
# (`rescale`, 2–4 Newton steps), its Gauss rule ~45 and the read-off through y(b) ~50, most of the time in
# call overhead (0.5 of a 1.1 ms token). pseudo.c does each in one call (`gauss_bins_c`, `pseudo_fit`,
# `ratio_curve_c`, `hermite_inverse_c`: the same formulas); `make setup` builds it. It only makes the start:
# the full system is certified by `evaluate` as before, so where it is not built or a call fails the numpy
# code runs, and the certified output is the same either way (GLOBALRES_NO_C=1 turns it off).
PSEUDO_C = 256  # pseudo-systems of at most this many tokens may use it (a direct G×G solve; above, Woodbury)


@functools.lru_cache(maxsize=1)
def _pseudo_c():
    """pseudo.c's functions (built as _pseudo.so beside this file), or None where it is not built or
    GLOBALRES_NO_C is set."""
    if os.environ.get("GLOBALRES_NO_C"):
        return None
    try:
        library = ctypes.CDLL(os.path.join(os.path.dirname(__file__), "_pseudo.so"))
    except OSError:
        return None
    double, pointer, long = ctypes.c_double, ctypes.c_void_p, ctypes.c_long  # pointer: an array's address
    library.pseudo_fit.restype = ctypes.c_int
    library.pseudo_fit.argtypes = [long, ctypes.c_int, pointer, pointer, double, double, double, ctypes.c_int,
                                   double, double, ctypes.c_int, pointer, pointer, long, pointer]
    library.gauss_bins.restype = long
    library.gauss_bins.argtypes = [long, pointer, pointer, double, pointer, pointer]
    library.ratio_curve.restype = None
    library.ratio_curve.argtypes = [long, pointer, pointer, double, ctypes.c_int, ctypes.c_int, double, double, double,
                                    double, double, double, long, pointer, pointer, pointer, pointer]
    library.hermite_inverse.restype = ctypes.c_int
    library.hermite_inverse.argtypes = [long, pointer, pointer, pointer, pointer, long, pointer, pointer]
    library.exponentials.restype = None
    library.exponentials.argtypes = [long, long, pointer, pointer, pointer]
    return library


def has_c_start() -> bool:
    """Whether the compressed start runs in C here (pseudo.c built, GLOBALRES_NO_C unset)."""
    return _pseudo_c() is not None


def _pointer(x: np.ndarray) -> int:
    """The address of a C-contiguous float64 array's data, for pseudo.c."""
    return x.ctypes.data


def gauss_bins_c(y, q, width: float = BIN):
    """`gauss_bins` by pseudo.c (y sorted, as inner systems come), else by numpy."""
    library = _pseudo_c()
    if library is not None and y.dtype == q.dtype == np.float64 and y.flags.c_contiguous and q.flags.c_contiguous:
        Y, W = np.empty(y.size), np.empty(y.size)
        count = library.gauss_bins(y.size, _pointer(y), _pointer(q), width, _pointer(Y), _pointer(W))
        if count >= 0:
            return Y[:count], W[:count]
    return gauss_bins(y, q, width)


def ratio_curve_c(system: System, here: dict, h: float, b):
    """`ratio_curve` by pseudo.c, else by numpy."""
    library = _pseudo_c()
    if library is None:
        return ratio_curve(system, here, h, b)
    t, kernel = np.ascontiguousarray(here["t"]), np.ascontiguousarray(here["kernel"])
    b = np.ascontiguousarray(b, dtype=np.float64)
    y, y_b, y_bb = np.empty(b.size), np.empty(b.size), np.empty(b.size)
    r1, r2, _ = tail_sums(h)
    bottom, top = ratio_range(system)
    library.ratio_curve(t.size, _pointer(t), _pointer(kernel), float(here["m"]), system.n, system.c0, system.Q, h, r1,
                        r2, bottom, top, b.size, _pointer(b), _pointer(y), _pointer(y_b), _pointer(y_bb))
    return y, y_b, y_bb


def hermite_inverse_c(yg, bg, y_b, y_bb, y):
    """`hermite_inverse` by pseudo.c (y sorted), else by numpy."""
    library = _pseudo_c()
    if library is not None and y.dtype == np.float64 and y.flags.c_contiguous:
        out = np.empty(y.size)
        if library.hermite_inverse(yg.size, _pointer(yg), _pointer(bg), _pointer(y_b), _pointer(y_bb), y.size,
                                   _pointer(y), _pointer(out)) == 0:
            return out
    return hermite_inverse(yg, bg, y_b, y_bb, y)


def pseudo_fit(system: System, b0, *, h: float, tol: float, max_iter: int, rescaled: bool) -> dict | None:
    """`fit_system` of a small inner system by pseudo_fit.c: damped Newton at step h with the exact
    Hessian, from `rescale`(b0, 2h) unless `rescaled` is False (a warm b0 is taken as is). Returns the
    parts `compressed_start` reads (b, converged, evaluation: t, kernel, m of the last evaluation), or
    None where the C fit is not built, does not apply (segments, more than PSEUDO_C tokens) or fails."""
    library = _pseudo_c()
    if library is None or system.c0 != 1 or not 2 <= system.q.size <= PSEUDO_C:
        return None
    q, target = np.ascontiguousarray(system.q, dtype=np.float64), np.ascontiguousarray(system.target, dtype=np.float64)
    b = np.array(b0, dtype=np.float64)
    kernel, out = np.empty(4096), np.zeros(5)
    r1, r2, _ = tail_sums(h)
    status = library.pseudo_fit(q.size, system.n, _pointer(q), _pointer(target), system.c, h, tol, max_iter, r1, r2,
                                int(rescaled), _pointer(b), _pointer(kernel), kernel.size, _pointer(out))
    if status != 0 or not np.isfinite(b).all():
        return None
    lo, hi = int(out[0]), int(out[1])
    return dict(b=b, converged=True, evaluation=dict(t=nodes(lo, hi, h), kernel=kernel[: hi - lo + 1].copy(),
                                                     m=float(out[2])))


def gauss_bins(y, q, width: float = BIN):
    """Nodes Y (increasing) and weights W of the 3-point Gauss rule of the measure Σ_v q_v δ(y_v) within
    each bin of `width`. Per bin, in z = (y − mean)/std: the moments E[z³..z⁶] (one `reduceat` over all
    bins) give the monic orthogonal polynomials p1 = z, p2 = z² − s3 z − 1 and p3, whose roots (the
    cubic's trigonometric solution, polished by one Newton step) are the nodes and whose Christoffel
    numbers 1/(1 + p1² + p2²/‖p2‖²) are the weights. Tokens with equal y (ties are common in float16
    logits) are one point of the measure, and a bin with at most 3 points keeps them, which is exact.
    Bins are runs of the sorted y (inner tokens come sorted), so bin sums are `np.add.reduceat`."""
    if (y[1:] < y[:-1]).any():
        order = np.argsort(y, kind="stable")
        y, q = y[order], q[order]
    edge = np.empty(y.size + 1, dtype=bool)  # edge[i]: a new point (then a new bin) starts at i; edge[-1]: the end
    edge[0] = edge[-1] = True
    np.not_equal(y[1:], y[:-1], out=edge[1:-1])
    if not edge.all():
        first = np.flatnonzero(edge)
        y, q = y[first[:-1]], np.add.reduceat(q, first[:-1])
        edge = edge[: y.size + 1]
        edge[-1] = True
    cell = np.floor(y / width)
    np.not_equal(cell[1:], cell[:-1], out=edge[1:-1])
    bounds = np.flatnonzero(edge)
    starts, counts = bounds[:-1], bounds[1:] - bounds[:-1]
    mass = np.add.reduceat(q, starts)
    centre = np.add.reduceat(q * y, starts)
    centre /= mass
    z = y - np.repeat(centre, counts)
    powers = np.empty((5, y.size))
    np.multiply(q, z, out=powers[0])
    np.multiply(powers[0], z, out=powers[1])
    spread = np.add.reduceat(powers[1], starts)
    spread /= mass
    np.sqrt(spread, out=spread)
    rich = (counts > 3) & (spread > 0)
    z /= np.repeat(np.where(rich, spread, 1.0), counts)
    np.multiply(q * z, z * z, out=powers[0])
    for j in (1, 2, 3):
        np.multiply(powers[j - 1], z, out=powers[j])
    s3, s4, s5, s6 = np.add.reduceat(powers[:4], starts, axis=1)[:, rich] / mass[rich]  # E[z^j]; E[z] = 0, E[z²] = 1
    norm2 = s4 - s3 * s3 - 1.0  # ‖p2‖² = β2
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha2 = (s5 - 2.0 * s3 * s4 + s3 * s3 * s3) / norm2
        norm3 = (s6 - 2.0 * s3 * s5 + (s3 * s3 - 2.0) * s4 + 2.0 * s3 * s3 + 1.0
                 - alpha2 * alpha2 * norm2 - norm2 * norm2)
    good = (norm2 > 1e-9) & (norm3 > 1e-9 * norm2)  # p3 vanishes on a measure of 3 points: keep those tokens
    rich[rich] = good
    s3, alpha2, norm2 = s3[good], alpha2[good], norm2[good]
    # p3 = (z − α2) p2 − β2 z = z³ + a z² + b z + c
    a, b, c = -(s3 + alpha2), alpha2 * s3 - 1.0 - norm2, alpha2
    third = a / 3.0
    p, r = b - a * third, (2.0 / 27.0) * a * a * a - b * third + c  # z = u − a/3: u³ + p u + r = 0, p < 0
    angle = np.arccos(np.clip(1.5 * r / p * np.sqrt(-3.0 / p), -1.0, 1.0)) / 3.0
    x = np.cos(angle[:, None] - (2.0 * math.pi / 3.0) * np.arange(3))
    x *= (2.0 * np.sqrt(-p / 3.0))[:, None]
    x -= third[:, None]
    a, b, c, s3, norm2 = a[:, None], b[:, None], c[:, None], s3[:, None], norm2[:, None]
    x -= (((x + a) * x + b) * x + c) / ((3.0 * x + 2.0 * a) * x + b)
    p2 = (x - s3) * x - 1.0
    weights = 1.0 / (1.0 + x * x + p2 * p2 / norm2)
    kept = ~np.repeat(rich, counts)
    x *= spread[rich][:, None]
    x += centre[rich][:, None]
    weights *= mass[rich][:, None]
    Y = np.concatenate([x.ravel(), y[kept]])
    W = np.concatenate([weights.ravel(), q[kept]])
    order = np.argsort(Y, kind="stable")
    Y, W = Y[order], W[order]
    positive = W > 0
    return Y[positive], W[positive]


def ratio_range(system: System) -> tuple[float, float]:
    """(R0, R∞): the range of R(w) = acc/q of a token of weight w, from w → 0 to w → ∞: (0, n Qⁿ⁻¹) in
    the inner system, (n cⁿ⁻¹, n Qⁿ⁻¹) in a segment (φ → c far right, φ(0) = Q)."""
    n = system.n
    return (0.0 if system.c0 == 1 else n * system.c ** (n - 1)), n * system.Q ** (n - 1)


def ratio_curve(system: System, here: dict, h: float, b):
    """y(b) = logit((R(e^b) − R0)/(R∞ − R0)) and its first two derivatives in b, from the kernel of an
    `evaluate` result (R(w) = acc/q of a token of weight w: `integrals`, left tail included)."""
    n, c0, Q, t, kernel = system.n, system.c0, system.Q, here["t"], here["kernel"]
    w = np.exp(b)
    E = exponentials(w, t)
    S0, S1, S2 = (E @ np.stack([kernel, t * kernel, t * t * kernel], axis=1)).T
    r1, r2, _ = tail_sums(h)
    t0 = float(t[0])
    L = h * t0 * Q ** (n - 1) * (r1 - t0 * r2 * (c0 + w + (n - 1) * here["m"] / Q))
    dL = -h * t0**2 * Q ** (n - 1) * r2
    R = n * w * (S0 + L)
    R_w = n * (S0 - w * S1 + L + w * dL)
    R_ww = n * (w * S2 - 2 * S1 + 2 * dL)
    R_b, R_bb = w * R_w, w * R_w + w * w * R_ww
    bottom, top = ratio_range(system)
    # R − R0 and R∞ − R round where R nears an end, but there R barely moves with b: harmless
    below, gap = R - bottom, top - R
    y = np.log(below) - np.log(gap)
    scale = (top - bottom) / (below * gap)
    y_b = R_b * scale
    y_bb = R_bb * scale + R_b**2 * (2 * R - bottom - top) * scale**2 / (top - bottom)
    return y, y_b, y_bb


def hermite_coefficients(yg, bg, y_b, y_bb):
    """Per interval of the grid (last axis), its width Δ and the six coefficients in s = (y − yg_k)/Δ_k of
    the quintic matching b, B' = 1/y_b and B'' = −y_bb/y_b³ at both ends (arithmetic and slicing only:
    numpy arrays or torch tensors, one grid or one per row)."""
    d = yg[..., 1:] - yg[..., :-1]
    D, S = d / y_b[..., :-1], -d * d * y_bb[..., :-1] / y_b[..., :-1] ** 3  # Δ·B' and Δ²·B'' at the left ends
    D1, S1 = d / y_b[..., 1:], -d * d * y_bb[..., 1:] / y_b[..., 1:] ** 3  # and at the right ends
    f0, jump = bg[..., :-1], bg[..., 1:] - bg[..., :-1]
    return d, (f0, D, S / 2,
               10 * jump - 6 * D - 4 * D1 - 1.5 * S + 0.5 * S1,
               -15 * jump + 8 * D + 7 * D1 + 1.5 * S - S1,
               6 * jump - 3 * D - 3 * D1 - 0.5 * S + 0.5 * S1)


def hermite_inverse(yg, bg, y_b, y_bb, y):
    """B(y) by quintic Hermite interpolation of the inverse of b ↦ y on the grid (bg, yg): values,
    B' = 1/y_b and B'' = −y_bb/y_b³ at the nodes (interpolation error ~ Δ⁶ B⁽⁶⁾/46080 per interval),
    as a polynomial in s = (y − yg_k)/Δ_k per interval, so a token costs a Horner sum."""
    d, coefficients = hermite_coefficients(yg, bg, y_b, y_bb)
    order = np.argsort(y, kind="stable") if (y[1:] < y[:-1]).any() else None  # y comes sorted but at a segment's end
    ys = y if order is None else y[order]
    # tokens per interval (the end intervals extrapolate): with y sorted, repeats instead of gathers (2.5× at k = V),
    # of one table: [left end, 1/width, the six coefficients] per interval
    bounds = np.empty(yg.size, dtype=np.int64)
    bounds[0], bounds[-1] = 0, ys.size
    bounds[1:-1] = np.searchsorted(ys, yg[1:-1], side="right")
    table = np.empty((8, d.size))
    table[0], table[1] = yg[:-1], 1.0 / d
    for row, c in zip(table[2:], coefficients):
        row[...] = c
    per_token = table.repeat(bounds[1:] - bounds[:-1], axis=1)
    s = ys - per_token[0]
    s *= per_token[1]
    out = per_token[7].copy()
    for c in per_token[6:1:-1]:  # Horner
        out *= s
        out += c
    if order is not None:
        out[order] = out.copy()
    return out


def compressed_start(system: System, h: float, tol: float, width: float = BIN):
    """A start for a large system (module notes above): the fit of its Gauss pseudo-tokens (to `tol`,
    from the same kind of start with bins four times wider when it is large itself), read off at every
    token through the inverse of y(b) from that fit's φ. A segment's pseudo-system is pinned at its
    largest target, like the segment. None when the system is small, the bins do not halve it, or the
    pseudo fit fails."""
    n, G, c0 = system.n, system.q.size, system.c0
    bottom, top = ratio_range(system)
    if G < LARGE or not top > bottom:  # n = 1 segments: R is constant, any weights do
        return None
    # p/q as 1/(q/p), q/p the key `layout` sorts by: y comes out sorted and equal ratios give equal y
    # (p/q itself breaks ties by an ulp, and sorting 30k nearly sorted y cost 0.26 ms at k = V)
    with np.errstate(divide="ignore"):
        r = np.clip((1.0 / (system.q / system.target) - bottom) / (top - bottom), 1e-300, 1.0 - 1e-15)
    y = logit(r)
    Y, W = gauss_bins_c(y, system.q, width)
    if 2 * Y.size > G:
        return None
    target = W * (bottom + (top - bottom) / (1.0 + np.exp(-Y)))
    if c0 == 0:  # a segment accepts Qⁿ − cⁿ whatever its weights: targets off that sum leave a gradient floor
        target *= (system.Q**n - system.c**n) / target.sum()
    small = System(W, target, system.c, n, c0)
    pin = None if c0 == 1 else int(np.argmax(small.target))
    b0 = compressed_start(small, h, tol, 4 * width)
    warm = b0 is not None
    fit = pseudo_fit(small, b0 if warm else inner_start(small.q, small.target, small.Q, n), h=h, tol=tol,
                     max_iter=40, rescaled=not warm) if c0 == 1 else None
    if fit is None:
        if not warm:
            b0 = rescale(small, inner_start(small.q, small.target, small.Q, n), 2 * h) if c0 == 1 else \
                segment_start(small)
        if pin is not None:
            b0 = b0 - b0[pin]
        fit = fit_system(small, b0, h=h, tol=tol, max_iter=40, pin=pin, warm=warm, record=False, predict=True)
    if not (fit["converged"] and np.isfinite(fit["b"]).all()):
        return None
    here = fit["evaluation"]
    lo, hi = float(fit["b"].min()) - 1.0, float(fit["b"].max()) + 1.0
    for _ in range(30):  # widen the grid until y(b) covers every token's y
        intervals = int(math.ceil((hi - lo) / CURVE))
        bg = lo + ((hi - lo) / intervals) * np.arange(intervals + 1)
        with np.errstate(over="ignore", invalid="ignore"):  # a far end where R rounds to R∞: checked below
            yg, y_b, y_bb = ratio_curve_c(small, here, h, bg)
        # increasing between finite ends (NaN compares false), y_b > 0 and y_bb finite (its sum is, else it fails safe)
        if not (-np.inf < yg[0] and yg[-1] < np.inf and (yg[1:] > yg[:-1]).all() and y_b.min() > 0
                and math.isfinite(float(y_bb.sum()))):
            return None  # (y_bb overflows where R nears R∞ at the grid's far end: such a start is no start)
        # y ≈ b + const at both ends (R ∝ w as w → 0, R∞ − R ∝ 1/w as w → ∞): extrapolate the slope
        if yg[0] > y.min() and lo > -700.0:
            lo = max(lo - min(max(1.5 * (yg[0] - y.min()) / y_b[0], 2.0), 64.0), -700.0)
        elif yg[-1] < y.max() and hi < 700.0:
            hi = min(hi + min(max(1.5 * (y.max() - yg[-1]) / y_b[-1], 2.0), 64.0), 700.0)
        else:  # (a weight beyond e^±700 is clipped by the fit anyway: the end polynomials extrapolate)
            b = hermite_inverse_c(yg, bg, y_b, y_bb, y)
            return b if np.isfinite(b).all() else None
    return None


# ------------------------------------------------------------ the certificate of a large system, from moments
# At k = V evaluating the full system at its read-off weights is one pass over the 49 000 × 100 matrix
# E = e^{−t w}: ~10 ms, most of a token. But E_vk = f(b_v + s_k) with f(x) = exp(−e^x) and s = log t, and f is
# entire with |f(z)| = exp(−e^{Re z} cos Im z) ≤ 1 on the strip |Im z| < π/2. So within a bin of b of width δ
# (centre β, d = b − β) a Taylor series in d with M terms represents E to r^M, r = δ/2ρ (Cauchy on a disc of
# radius ρ < π/2), and both φ = c + Σ_v q_v E_v· and acc(v) = n q_v w_v Σ_k κ_k E_vk + (left tail) need only
# per-bin moments of d and per-(bin, node) Taylor coefficients: O(G·M + bins·K·M) instead of O(G·K).
MOMENT_BIN = 0.125  # δ, the bin width in b
MOMENT_TERMS = 12  # M: r^M = 16^−12 ≈ 3.6e-15 at ρ = 1 (k = V: bound 1e-13 to 5e-13, measured error ≤ 5e-15)
MOMENT_RADIUS = 1.0  # ρ
MOMENT_CHUNK = 64  # tokens per partial sum of the moments
MOMENTS = 2500  # systems with more tokens than this are certified from moments (crossover with `evaluate`: ~2500)
U_CAP = 700.0  # u = e^{β} t is capped here before the powers uᵐ: f there is below e^{−600}, see below


@functools.lru_cache(maxsize=4)
def taylor_table(M: int) -> np.ndarray:
    """T[i, m] = S(i, m)/i! (Stirling numbers of the second kind), so that the Taylor coefficients of
    f(x + d) = exp(−u e^d) in d are c_i(u) = e^{−u} Σ_m T[i, m] (−u)^m (Faà di Bruno: f⁽ⁱ⁾ = f·Σ_m S(i,m)(−e^x)^m)."""
    S = np.zeros((M, M))
    S[0, 0] = 1.0
    for i in range(1, M):
        for m in range(1, i + 1):
            S[i, m] = m * S[i - 1, m] + S[i - 1, m - 1]  # exact: S(i, m) < 2⁵³ for i < 21
    T = S / np.array([math.factorial(i) for i in range(M)])[:, None]
    T.setflags(write=False)
    return T


def moment_certificate(system: System, b, *, h: float, tol: float, delta: float = MOMENT_BIN,
                       M: int = MOMENT_TERMS, rho: float = MOMENT_RADIUS) -> dict:
    """The certificate of log-weights b without the matrix E (notes above), as a `fit_system` dict
    (`evaluation` None, `compression` the bound below).

    Tokens are binned by b (⌊b/δ⌋, sorted), μ_{j,i} = Σ_{v∈j} q_v d_vⁱ, u_jk = e^{β_j} t_k, and
    c_i(u) = e^{−u} Σ_m T[i,m] (−u)^m (`taylor_table`). Then φ̃_k = c + Σ_j Σ_{i<M} μ_{j,i} c_i(u_jk),
    κ̃ = dt φ̃ⁿ⁻¹, and per token S̃(b_v) = Σ_{i<M} σ_{j,i} d_vⁱ with σ_{j,i} = Σ_k κ̃_k c_i(u_jk);
    acc(v) = q_v w_v (n S̃(b_v) + the left tail of `integrals`). The bound on ‖acc − acc_h‖₁ (acc_h: the
    step-h rule with E, as `evaluate`) adds, with A(u) = exp(−u e^{−ρ} cos ρ) ≥ |f| on the disc (Cauchy:
    |c_i| ≤ A ρ^{−i}) and C_i = e^{−u} Σ_m T[i,m] uᵐ ≥ |c_i|, Σ_i C_i (δ/2)ⁱ ≤ Γ(u) = exp(−u (2 − e^{δ/2}))
    (the Touchard generating function) as the scale of every rounding:
    - φ: |φ_k − φ̃_k| ≤ Δ_k = Σ_j mass_j [A r^M/(1 − r) + (H_j + J + 4M + 10) 2⁻⁵³ Γ] (H_j: the longest chain
      of additions in bin j's moments, 64 + its number of chunks),
      so |κ_k − κ̃_k| ≤ dt (n − 1)(φ̃ + Δ)ⁿ⁻² Δ, which moves acc by at most n Σ_k |κ_k − κ̃_k| ψ̄_k with
      ψ̄_k = Σ_j (Σ_{v∈j} q_v w_v) exp(−t_k e^{β_j − δ/2}) ≥ Σ_v q_v w_v E_vk;
    - S: per bin, Σ_k κ̃_k [A r^M/(1 − r) + (K + 4M + 10) 2⁻⁵³ Γ], times n Σ_{v∈j} q_v w_v.
    The rounding counts are first-order, per chain of operations: e^{−u}(−u)^m (m products and an exp
    within 4 ulp), the moments (H_j + M: sums of products), T (M), the sum over m (M), then over
    bins (J) for φ; over nodes (K), T (M) and Horner (2M) for S. The quadrature bound (strip, tails, K-term
    sums of the final acc) is added as for `evaluate`."""
    n, c0, q = system.n, system.c0, system.q
    w = exp_(b.copy())
    lo, hi = grid(w, n, c0, h)
    t = nodes(lo, hi, h)
    dt = node_table(lo, hi, h, c0)[0]
    K, eps = t.size, 2.0**-53
    given, order = b, None
    if (b[1:] < b[:-1]).any():  # read-off weights come sorted (y is); others are sorted here
        order = np.argsort(b, kind="stable")
        b, q, w = b[order], q[order], w[order]
    cell = np.floor(b / delta)
    starts = np.flatnonzero(np.concatenate([[True], cell[1:] != cell[:-1]]))
    counts = np.diff(np.append(starts, b.size))
    J = starts.size
    beta = (cell[starts] + 0.5) * delta
    d = b - np.repeat(beta, counts)
    powers = np.empty((M, b.size))
    powers[0] = q
    for i in range(1, M):
        np.multiply(powers[i - 1], d, out=powers[i])
    # μ_{j,i} = Σ_{v∈j} q_v d_vⁱ (M, J), summed in chunks of ≤ MOMENT_CHUNK tokens, then over a bin's chunks:
    # a bin of thousands of tokens rounds like a sum of ~100 terms, not of thousands (n = 64 needs that)
    chunks = np.union1d(starts, np.arange(0, b.size, MOMENT_CHUNK))
    first = np.searchsorted(chunks, starts)
    mu = np.add.reduceat(np.add.reduceat(powers, chunks, axis=1), first, axis=1)
    height = MOMENT_CHUNK + np.diff(np.append(first, chunks.size))  # additions in a chain, per bin
    qw = q * w
    qw_bin = np.add.reduceat(qw, starts)
    u = np.exp(beta)[:, None] * t  # (J, K)
    uc = np.minimum(u, U_CAP)
    X = np.empty((M, J, K))  # e^{−u} (−u)^m
    np.negative(uc, out=X[0])
    exp_(X[0])
    for m in range(1, M):
        np.multiply(X[m - 1], -uc, out=X[m])
    T = taylor_table(M)
    phi = np.einsum("mj,mjk->jk", T.T @ mu, X).sum(0) + system.c  # per bin (M terms), then over bins (J)
    r = delta / (2 * rho)
    A = exp_(u * -(math.exp(-rho) * math.cos(rho)))
    gamma = exp_(u * -(2.0 - math.exp(delta / 2)))
    # a capped u (e^β t > 700) has f ≤ exp(−700 e^{−δ/2}) < 1e-267 at every token of its bin, true and computed
    capped = np.where(u > U_CAP, 2 * math.exp(-U_CAP * math.exp(-delta / 2)), 0.0)
    Delta = mu[0] @ (A * (r**M / (1 - r)) + capped) + (eps * (height + J + 4 * M + 10) * mu[0]) @ gamma
    phi_hi = np.maximum(phi, 0.0) + Delta
    kernel = dt * np.maximum(phi, 0.0) ** (n - 1)
    kernel[kernel < FLUSH] = 0.0
    sigma = T @ np.einsum("mjk,k->mj", X, kernel)  # (M, J): S's Taylor coefficients per bin
    S = np.repeat(sigma[M - 1], counts)
    for i in range(M - 2, -1, -1):  # Horner in d, per token
        S *= d
        S += np.repeat(sigma[i], counts)
    m = float(qw.sum())
    a_, b_ = left_tail(system, m, float(t[0]), h)
    acc = (n * S + (a_ - b_ * w)) * qw
    if order is not None:
        acc[order] = acc.copy()
    psi = qw_bin @ exp_(-np.minimum(np.exp(beta - delta / 2)[:, None] * t, U_CAP))
    kernel_error = dt * (n - 1) * phi_hi ** max(n - 2, 0) * Delta if n >= 2 else np.zeros(K)
    per_bin = (A * (r**M / (1 - r)) + capped + eps * (K + 4 * M + 10) * gamma) @ kernel
    compression = n * float(kernel_error @ psi) + n * float(qw_bin @ per_bin)
    l1 = float(np.abs(acc - system.target).sum())
    quadrature = quadrature_bound(system, acc, w, t, h, terms=1) + compression  # φ's own rounding is in Δ
    return dict(b=given, acc=acc, l1=l1, quadrature=quadrature,
                objective=[objective(system, given, phi, m, lo, hi, h)], gradient_norm=[l1], nodes=K,
                converged=l1 <= tol and compression <= tol, evaluation=None, compression=compression)


def warm_fit(system: System, *, h: float, tol: float, max_iter: int, pin=None):
    """The fit from `compressed_start`, certified from moments above MOMENTS tokens (`moment_certificate`),
    else by `fit_system` (which also takes Newton steps if the first evaluation misses): the converged
    `fit_system` dict, or None (no start, or no convergence from it). Log-weights pinned at `pin` (segments:
    acc is invariant to a common shift)."""
    b0 = compressed_start(system, h, tol / 10)
    if b0 is None:
        return None
    b0 = b0 if pin is None else b0 - b0[pin]
    out = moment_certificate(system, b0, h=h, tol=tol) if system.q.size > MOMENTS else None
    if out is None or not out["converged"]:
        out = fit_system(system, b0, h=h, tol=tol, max_iter=max_iter, pin=pin, warm=True)
    return out if out["converged"] else None


def fit_inner(s: dict, n: int, live: np.ndarray, *, h: float, tol: float, max_iter: int) -> dict:
    """`fit_system` of the inner system of layout `s` (live: H* positions with p > 0), its tied tokens
    merged (`merge_ties`): in closed form for n = 2 and a few tokens (`fit_pairwise`), from
    `compressed_start` when the system is large (`warm_fit`), else (or where those fail) from the
    scale-corrected start of `inner_start`."""
    qv, pv, k_star = s["qv"], s["pv"], s["k_star"]
    c = float(qv[:k_star].sum() - qv[live].sum())

    def fit(system):
        with one_blas_thread():
            out = warm_fit(system, h=h, tol=tol, max_iter=max_iter)  # None for small systems, at once
            if out is not None:
                return out
            b0 = rescale(system, inner_start(system.q, system.target, system.Q, n), 2 * h)
            if n == 2 and system.q.size <= PAIRWISE:
                out = fit_pairwise(system, b0, tol=tol, max_iter=max_iter)
                if out["converged"]:
                    return out
        return fit_system(system, b0, h=h, tol=tol, max_iter=max_iter)

    return merge_ties(System(qv[live], pv[live], max(c, 0.0), n, 1), fit)


def segment_start(system: System) -> np.ndarray:
    """Start of a segment's fit: b = logit((t/q − R0)/(R∞ − R0)) (`ratio_range`), the y of `compressed_start`,
    which the optimal b follows up to a smooth shift. (log(t/q) ignores R's floor R0 = n cⁿ⁻¹: a token with t/q
    near it has a tiny weight, which Newton in log-weights reaches ~1 a step; on the k = 1000, n = 2 bench
    segments that start took twice the Newton steps, 276 against 137.) n = 1: R is constant, any weights do."""
    bottom, top = ratio_range(system)
    with np.errstate(divide="ignore"):
        if not top > bottom:
            return np.log(np.maximum(system.target, 1e-300) / system.q)
        return logit(np.clip((system.target / system.q - bottom) / (top - bottom), 1e-300, 1.0 - 1e-15))


def fit_segment(s: dict, n: int, l: int, *, h: float, tol: float, max_iter: int) -> dict:
    """`fit_system` of outer segment l of layout `s` (at least two tokens), its tied tokens merged,
    log-weights pinned at the token of largest target, from `compressed_start` when the segment is
    large, else from `segment_start`."""
    span = np.arange(s["ends"][l], s["starts"][l])

    def fit(system):
        pin = int(np.argmax(system.target))
        with one_blas_thread():
            out = warm_fit(system, h=h, tol=tol, max_iter=max_iter, pin=pin)
            if out is not None:
                return out
        b0 = segment_start(system)
        return fit_system(system, b0 - b0[pin], h=h, tol=tol, max_iter=max_iter, pin=pin)

    return merge_ties(System(s["qv"][span], s["targets"][span], float(s["Qc"][s["ends"][l]]), n, 0), fit)


MERGE = 0.9  # systems whose distinct ratios t/q number under this fraction of their tokens are merged


def merge_ties(system: System, fit):
    """`fit`(system), fitting one token per run of equal q/t (systems come in `layout` order, sorted
    by q/p; ties are common with float16 or bfloat16 logits: the real k = V pairs have ~300 distinct
    ratios among 31k tokens).

    Tokens with the same ratio have the same optimal weight: acc(v)/q_v = R(w_v) with R increasing
    (given φ) must equal t_v/q_v. And with equal weights a run enters φ only through its total draft
    mass, so the merged system (masses and targets summed per run) has the same φ, the same weights,
    and acc(v) = q_v · acc_run/q_run exactly: its fit is the full system's, and the certificate's
    ‖acc − t‖₁ is taken over the tokens (it differs from the runs' only by the ulp-level spread of
    t/q inside a run)."""
    with np.errstate(divide="ignore"):
        ratio = system.q / system.target
    first = np.flatnonzero(np.concatenate([[True], ratio[1:] != ratio[:-1]]))
    if first.size >= MERGE * ratio.size:
        return fit(system)
    merged = System(np.add.reduceat(system.q, first), np.add.reduceat(system.target, first), system.c,
                    system.n, system.c0)
    out = fit(merged)
    counts = np.diff(np.append(first, ratio.size))
    acc = np.repeat(out["acc"] / merged.q, counts) * system.q
    return dict(out, b=np.repeat(out["b"], counts), acc=acc, l1=float(np.abs(acc - system.target).sum()),
                merged=merged.q.size)


# ------------------------------------------------------------------------------------ structure
def int_power(x, n: int):
    """xⁿ for an integer n ≥ 1 by repeated squaring (numpy arrays or torch tensors): 2·log₂ n products,
    where x ** n is scalar libm pow on AVX2 (Qcⁿ at k = V, n = 4–16: 0.8–0.9 ms against 25–46 µs).
    Each product rounds once, so the relative error is at most (n − 1)·2⁻⁵³ against pow's 2⁻⁵³."""
    result, base = None, x
    while True:  # in place where it can: on a VM a fresh 400 kB array can cost 0.4 ms of page faults
        if n & 1:
            if result is None:
                result = x * 1 if base is x else base  # a new array, as x ** n gives
            else:
                result *= base
        n >>= 1
        if not n:
            return result
        if base is x or base is result:
            base = base * base
        else:
            base *= base


def ratio_order(ratio: np.ndarray) -> np.ndarray:
    """The positions of `ratio` (≥ 0, inf allowed) by ratio decreasing, ties by position.

    Sorts of 64-bit integers, which numpy does with AVX2 SIMD where its argsort is scalar (0.8 against
    1.7 ms at k = 49152, plus a stable sort for ties). For non-negative floats the bit pattern orders
    like the value, so key = ~bits orders them decreasing. Pass 1 sorts (key's top 64 − B bits, position)
    (B = bits of the largest position); that is the order except within buckets of ratios equal but in
    their last B bits, which come in position order. Where that leaves a bucket out of order (real
    pairs: equal p/q computed from different logit pairs differ by ulps), pass 2 sorts (bucket, key's
    low B bits, position), which is (key, position) exactly."""
    if not 64 < ratio.size <= 2**21:  # few tokens: one call beats the passes' dozen; past 2^21 the keys
        return np.argsort(-ratio, kind="stable")  # of pass 2 (buckets, 2B bits) may not fit 64 bits
    # (k = 1000 inside a token: 24 against argsort's 39 µs; in a loop over one array, argsort's branches are
    # learnt and it takes 15, the passes 22: a microbenchmark picked the wrong one once)
    B = max(int(ratio.size - 1).bit_length(), 1)
    low, shift = np.uint64((1 << B) - 1), np.uint64(B)
    key = ~ratio.view(np.uint64)
    first = key >> shift
    first <<= shift
    first |= np.arange(ratio.size, dtype=np.uint64)
    first.sort()
    order = (first & low).view(np.int64)
    ranked = ratio[order]
    if not (ranked[1:] > ranked[:-1]).any():
        return order
    first >>= shift
    bucket = np.zeros(ratio.size, dtype=np.uint64)
    np.cumsum(first[1:] != first[:-1], out=bucket[1:])
    bucket <<= np.uint64(2 * B)
    bucket |= (key[order] & low) << shift
    bucket |= order.view(np.uint64)
    bucket.sort()
    return (bucket & low).view(np.int64)


def layout(p: np.ndarray, q: np.ndarray, n: int) -> dict:
    """H*, α* and the outer segments of §1–2 from the draft support alone: O(k log k + V).

    The k tokens with q > 0 sorted by q/p decreasing (ties by id) are `tokens` (`support`: by id,
    `rank`: the sorted position of each); prefix sums Pc, Qc (length k + 1); H* = the first k*.
    Tokens with q = 0 < p lie at the under-drafted end of the outer chain, each a record of zero
    mass: they only receive residual, so they are left out.
    A prefix length L ≥ k* is a record when ψ(L) ≤ ψ(L') + TIE for every longer prefix L' ≤ k;
    the records R_0 = k > R_1 > … > R_last = k* cut the chain: segment l = positions R_{l+1}..R_l − 1,
    mass M_l = Qc[R_l]ⁿ − Qc[R_{l+1}]ⁿ; its target is p but at position R_{l+1} (its chain end).
    """
    support = np.flatnonzero(q > 0)
    qs, ps = (q, p) if support.size == q.size else (q[support], p[support])
    order = ratio_order(np.divide(qs, ps, out=np.full(qs.size, np.inf), where=ps > 0))
    tokens, qv, pv = (order if support.size == q.size else support[order]), qs[order], ps[order]
    Pc, Qc = np.zeros(pv.size + 1), np.zeros(pv.size + 1)
    np.cumsum(pv, out=Pc[1:])
    np.minimum(np.cumsum(qv, out=Qc[1:]), 1.0, out=Qc[1:])
    Qn = int_power(Qc, n)
    psi = Pc - Qn
    k_star = int(np.argmax(psi <= psi.min() + TIE))
    later = np.minimum.accumulate(psi[:k_star:-1])[::-1]  # later[i]: min of ψ over prefixes longer than k* + i
    later += TIE
    records = np.append(np.flatnonzero(psi[k_star:-1] <= later), psi.size - 1 - k_star)[::-1] + k_star
    ends, starts = records[1:], records[:-1]  # segment l: positions ends[l] .. starts[l] − 1
    masses = np.maximum(Qn[starts] - Qn[ends], 0.0)
    targets = pv.copy()
    others = Pc[starts] - Pc[ends + 1]
    targets[ends] = np.minimum(np.maximum(masses - others, 0.0), pv[ends])
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)  # sorted position of support[i]
    return dict(tokens=tokens, support=support, rank=rank, qv=qv, pv=pv, Qc=Qc, k_star=k_star,
                alpha=float(1.0 + psi[k_star]),
                ends=ends, starts=starts, masses=masses, targets=targets)


def residual_law(p: np.ndarray, q: np.ndarray, s: dict) -> tuple[np.ndarray, float]:
    """ρ ∝ p − t (never-drafted tokens: p) and its mass 1 − α*, from layout `s` in O(V).

    α* = 1 leaves nothing to reject into; then ρ = p (any law will do for the certified tiny
    rejected mass)."""
    residual = residual_mass(p, q, s)
    wanted = float(residual.sum())  # 1 − α*: the rejected mass of an exact fit
    return (residual / wanted if wanted > 0 else p.copy()), wanted


def residual_mass(p: np.ndarray, q: np.ndarray, s: dict) -> np.ndarray:
    """p − t, unnormalised: p on never-drafted tokens, p − t(v) ≥ 0 on the outer drafted ones, 0 on H*."""
    tokens, k_star = s["tokens"], s["k_star"]
    residual = np.where(q > 0, 0.0, p)  # never-drafted tokens only receive residual
    residual[tokens[k_star:]] = np.maximum(s["pv"][k_star:] - s["targets"][k_star:], 0.0)
    return residual


BLOCK = 256  # block length of `draw`


def draw(weights: np.ndarray, u: float) -> int:
    """Inverse-CDF draw from weights ≥ 0 (not all 0) with u uniform in [0, 1): the first index whose
    cumulative sum exceeds u·Σ weights. Two levels, block sums then one block's cumulative sum: cumsum
    does not vectorise, so a draw over V = 32k tokens costs ~10 µs instead of ~90 µs. Where rounding
    puts u past the end of the sums, the draw is the last positive weight: never a zero-weight index."""
    starts = np.arange(0, weights.size, BLOCK)
    sums = np.add.reduceat(weights, starts)
    cumulative = np.cumsum(sums)
    u = u * float(cumulative[-1])
    j = int(np.searchsorted(cumulative, u, side="right"))
    if j == starts.size:
        j = int(np.flatnonzero(sums)[-1])
    block = weights[starts[j]: starts[j] + BLOCK]
    inside = np.cumsum(block)
    i = int(np.searchsorted(inside, u - (float(cumulative[j - 1]) if j else 0.0), side="right"))
    return int(starts[j]) + (i if i < block.size else int(np.flatnonzero(block)[-1]))


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

    Cost: O(k log k + V) for the structure (k = draft support), then the inner fit and the fits of
    the non-singleton segments, O(|G|·K) per Newton step whatever n is.

    Parameters
    ----------
    problem : Problem with law="iid"
    tol : float
        Required certified L1 deviation of the output law from p and certified acceptance gap.
    step : float
        Trapezoid step in s = log t (the accuracy knob; the certificate bounds its error a priori).
    max_iter : int
        Newton iterations per system.
    backend : {"numpy", "torch"}
        "torch" runs the fit with `solve_batch` on `device` (B = 1) and returns the same Plan.
    device : torch device for backend="torch" (default CPU).

    Returns
    -------
    Plan with acceptance α*, h_star, and info: segment_of (V,), masses (per segment of the draft
    support), targets (V,), residual (ρ), weights (V,), inner_weights, history (objective and
    gradient norm per Newton iteration and system), nodes, certified_l1, certified_gap, seconds.
    status GAVE_UP with a message when the certified errors exceed `tol`.

    The certificate: ‖output law − p‖₁ ≤ Σ_systems ‖acc − target‖₁ + |rejected − (1 − α*)| + 2·quadrature
    (the accepted and the rejected mass each err by at most the quadrature error), and
    |acceptance − α*| ≤ |accepted inner − p(H*)| + quadrature.

    Raises
    ------
    InputError
        For a law other than "iid", or a non-positive tol or step.

    Examples
    --------
    >>> import globalres as gr
    >>> plan = gr.solve(gr.Problem([0.5, 0.3, 0.2], [0.2, 0.3, 0.5], n=2), method="exact")
    >>> round(plan.acceptance, 6), bool(plan.info["certified_l1"] < 1e-10)
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
    p, n, V = problem.p, problem.n, problem.V
    s = layout(p, problem.q, n)
    tokens, qv, pv, k_star, targets = s["tokens"], s["qv"], s["pv"], s["k_star"], s["targets"]
    QH = float(s["Qc"][k_star])
    fit_tol = tol / 8
    history, node_counts = {}, {}
    error = 0.0  # Σ_systems ‖acc − target‖₁ + 2 · quadrature
    quadrature = 0.0

    live = np.flatnonzero(pv[:k_star] > 0)
    weights_sorted = np.zeros(qv.size)  # w by sorted position; 0 on H* tokens with p = 0
    accepted_inner = 0.0
    if live.size:
        fit = fit_inner(s, n, live, h=step, tol=fit_tol, max_iter=max_iter)
        weights_sorted[live] = np.exp(fit["b"])
        accepted_inner = float(fit["acc"].sum())
        error += fit["l1"] + 2 * fit["quadrature"]
        quadrature += fit["quadrature"]
        history["inner"] = dict(objective=fit["objective"], gradient_norm=fit["gradient_norm"])
        node_counts["inner"] = fit["nodes"]

    ends, starts, masses = s["ends"], s["starts"], s["masses"]
    sizes = starts - ends
    single = ends[sizes == 1]
    weights_sorted[single] = 1.0
    error += float(np.abs(masses[sizes == 1] - targets[single]).sum())
    for l in np.flatnonzero(sizes > 1):  # rare: non-singleton segments
        span = np.arange(ends[l], starts[l])
        fit = fit_segment(s, n, l, h=step, tol=fit_tol, max_iter=max_iter)
        weights_sorted[span] = np.exp(fit["b"] - fit["b"].max())  # the rule only needs ratios
        error += fit["l1"] + 2 * fit["quadrature"]
        quadrature += fit["quadrature"]
        history[f"segment {l}"] = dict(objective=fit["objective"], gradient_norm=fit["gradient_norm"])
        node_counts[f"segment {l}"] = fit["nodes"]

    weights = np.zeros(V)
    weights[tokens] = weights_sorted
    segment_of = np.full(V, -1, dtype=np.int64)
    segment_of[tokens[k_star:]] = np.repeat(np.arange(sizes.size), sizes)[::-1]
    target_law = p.copy()  # t(v) on outer drafted tokens, p elsewhere
    target_law[tokens] = targets
    rho, wanted = residual_law(p, problem.q, s)
    rejected = QH**n - accepted_inner  # the rule's rejected mass with the fitted weights
    certified_l1 = error + abs(rejected - wanted)
    certified_gap = abs(accepted_inner - float(pv[:k_star].sum())) + quadrature
    alpha = s["alpha"]
    info = dict(h_star=tokens[:k_star].copy(), segment_of=segment_of, masses=masses, targets=target_law,
                residual=rho, weights=weights, inner_weights=weights_sorted[live], history=history,
                nodes=node_counts, certified_l1=certified_l1, certified_gap=certified_gap,
                quadrature_error=quadrature, step=step, seconds=time.perf_counter() - start)
    if not (certified_l1 <= tol and certified_gap <= tol):
        return failed(problem, "exact", GAVE_UP,
                      f"the fit reached a certified L1 deviation of {certified_l1:.3g} and an acceptance "
                      f"gap of {certified_gap:.3g}, above tol = {tol:g}. Raise max_iter or tol, lower "
                      f"step, or use method='lp' on small problems.", **info)
    return Plan(problem, "exact", alpha, make_rule(weights, segment_of, rho), h_star=tokens[:k_star].copy(),
                info=info)


# ------------------------------------------------------------------------ per token: one system
def _observed(problem: Problem, drafts, *, tol: float, step: float, max_iter: int) -> dict:
    """The parts of π(·|ω) for one observed tuple ω, fitting only the system ω belongs to (Eq. 8).

    Returns a dict: x (the drafts), share (n,) the probability of outputting slot j, reject (the
    probability of drawing from ρ), the layout s, and the info fields of `conditional`.
    """
    start = time.perf_counter()
    if problem.law != "iid":
        raise InputError(f"method 'exact' supports law='iid' only; got law={problem.law!r}. "
                         "Use method='lp' for other draft laws.")
    if not (tol > 0 and step > 0):
        raise InputError(f"tol and step must be > 0; got tol={tol!r}, step={step!r}.")
    p, q, n, V = problem.p, problem.q, problem.n, problem.V
    x = np.asarray(drafts).reshape(-1)
    if x.size != n or not np.issubdtype(x.dtype, np.integer) or (x < 0).any() or (x >= V).any():
        raise InputError(f"drafts must be {n} token ids in [0, {V}); got {np.asarray(drafts).tolist()!r}.")
    x = x.astype(np.int64)
    s = layout(p, q, n)
    tokens, k_star, ends, starts = s["tokens"], s["k_star"], s["ends"], s["starts"]
    support = s["support"]  # sorted position of each draft, in O(n log k); −1 where q = 0 (a zero-weight
    at = np.minimum(np.searchsorted(support, x), support.size - 1)  # inner token, as in `solve`)
    pos = np.where(support[at] == x, s["rank"][at], -1)
    outer = pos >= k_star
    fit_tol = tol / 8  # as in `solve`: the same fit, so the same weights
    fit, gap, fitted = None, 0.0, None
    if outer.any():
        # segment l holds positions ends[l] .. starts[l] − 1, ends decreasing in l
        seg = np.where(outer, np.searchsorted(-ends, -pos, side="left"), np.iinfo(np.int64).max)
        l = int(seg.min())
        chosen = seg == l
        if starts[l] - ends[l] == 1:  # a singleton segment: every chosen draft is its one token
            wx = chosen.astype(np.float64)
            error = abs(float(s["masses"][l]) - float(s["targets"][ends[l]]))
            kind = f"singleton segment {l}"
        else:
            fit = fit_segment(s, n, l, h=step, tol=fit_tol, max_iter=max_iter)
            w = np.exp(fit["b"] - fit["b"].max())
            wx = np.where(chosen, w[np.where(chosen, pos - ends[l], 0)], 0.0)
            error = fit["l1"] + 2 * fit["quadrature"]
            kind = fitted = f"segment {l}"
        share, reject = wx / wx.sum(), 0.0
    else:
        l, kind = None, "inner"
        live = np.flatnonzero(s["pv"][:k_star] > 0)
        wx = np.zeros(n)  # the drafts' weights; 0 on H* tokens with p = 0 (and where q = 0)
        accepted, error, quadrature = 0.0, 0.0, 0.0
        if live.size:
            fit = fit_inner(s, n, live, h=step, tol=fit_tol, max_iter=max_iter)
            slot = np.minimum(np.searchsorted(live, pos), live.size - 1)
            drafted = live[slot] == pos
            wx[drafted] = np.exp(fit["b"][slot[drafted]])
            accepted, quadrature = float(fit["acc"].sum()), fit["quadrature"]
            error = fit["l1"] + 2 * quadrature
            fitted = "inner"
        total = 1.0 + float(wx.sum())
        share, reject = wx / total, 1.0 / total
        rejected = float(s["Qc"][k_star]) ** n - accepted  # the rejected mass with the fitted weights
        error += abs(rejected - (1.0 - s["alpha"]))  # 1 − α*: the rejected mass of an exact fit
        gap = abs(accepted - float(s["pv"][:k_star].sum())) + quadrature
    info = dict(system=kind, segment=l, fitted=fitted, alpha=s["alpha"], h_star=tokens[:k_star].copy(),
                slot_probabilities=share, reject=reject, certified_l1=error, certified_gap=gap,
                nodes=None if fit is None else fit["nodes"],
                history=None if fit is None else dict(objective=fit["objective"],
                                                      gradient_norm=fit["gradient_norm"]),
                seconds=time.perf_counter() - start)
    if not (error <= tol and gap <= tol):
        raise SolverError(f"the fit of the {kind} system reached a certified L1 deviation of {error:.3g} and an "
                          f"acceptance gap of {gap:.3g}, above tol = {tol:g}. Raise max_iter or tol, lower "
                          f"step, or use method='lp' on small problems.")
    return dict(x=x, share=share, reject=reject, s=s, info=info)


def conditional(problem: Problem, drafts, *, tol: float = 1e-10, step: float = STEP,
                max_iter: int = 100) -> tuple[np.ndarray, dict]:
    """π(·|ω) of the optimal rule for one observed draft tuple ω, fitting only the system ω needs.

    The rule (module docstring, the paper's Eq. 8) reads only one system per tuple:

    .. math::
        π(v|ω) = \\sum_{j: x_j ∈ G_l} [x_j = v] \\frac{w_{x_j}}{\\sum_{j': x_{j'} ∈ G_l} w_{x_{j'}}}
        \\quad (ω \\not⊆ H^*,\\ l = \\min_{j: x_j ∉ H^*} \\mathrm{seg}(x_j)),

        π(v|ω) = \\sum_j [x_j = v] \\frac{w_{x_j}}{1 + \\sum_{j'} w_{x_{j'}}}
                + \\frac{ρ(v)}{1 + \\sum_{j'} w_{x_{j'}}} \\quad (ω ⊆ H^*),  ρ ∝ p − t,

    so only segment l's weights (none if G_l is a single token: π = δ of that token) or only the inner
    weights are fitted, and ρ comes in closed form from the Thm 6.2 targets t. The structure (H*, α*,
    the segments, t) costs O(k log k + V); the one fit O(|G|·K) per Newton step, whatever n is.
    The result equals ``gr.solve(problem, method="exact").conditional(drafts)`` (same fits).

    Parameters
    ----------
    problem : Problem with law="iid"
    drafts : the n observed draft token ids ω
    tol, step, max_iter : as in `solve`; the certificate covers the fitted system only.

    Returns
    -------
    (π, info): π the (V,) law of the output token; info: system ("inner", "segment l" or "singleton
    segment l"), segment, fitted (the fitted system's name, or None), alpha (α*), h_star,
    slot_probabilities (n,), reject (the probability of a draw from ρ), residual (ρ; None for an
    outer ω), certified_l1 (‖acc − target‖₁ + 2·quadrature of that system, plus for the inner system
    |rejected − (1 − α*)|: a bound on its share of `solve`'s certificate), certified_gap (inner ω:
    |accepted − p(H*)| + quadrature; outer ω: 0, it always outputs a draft), nodes, history, seconds.

    Raises
    ------
    InputError
        For a law other than "iid", a non-positive tol or step, or drafts that are not n token ids.
    SolverError
        When the certified errors of the fitted system exceed `tol`.

    Examples
    --------
    >>> import globalres as gr
    >>> from globalres import exact
    >>> pb = gr.Problem([0.5, 0.3, 0.2], [0.2, 0.3, 0.5], n=2)  # H* = {1, 2}; token 0 is a segment
    >>> pi, info = exact.conditional(pb, [1, 2])
    >>> info["system"], pi.round(6).tolist()
    ('inner', [0.143308, 0.726918, 0.129774])
    >>> exact.conditional(pb, [0, 2])[1]["system"]  # token 0 alone in its segment: no fit
    'singleton segment 0'
    """
    parts = _observed(problem, drafts, tol=tol, step=step, max_iter=max_iter)
    x, info = parts["x"], parts["info"]
    pi = np.bincount(x, weights=parts["share"], minlength=problem.V)
    info["residual"] = None
    if parts["reject"] > 0:
        rho, _ = residual_law(problem.p, problem.q, parts["s"])
        pi += parts["reject"] * rho
        info["residual"] = rho
    return pi, info


def sample(problem: Problem, drafts, rng: np.random.Generator, *, tol: float = 1e-10, step: float = STEP,
           max_iter: int = 100) -> tuple[int, dict]:
    """One output token drawn from π(·|ω) (see `conditional`): the per-token entry point.

    Fits only the system ω belongs to and builds ρ (O(V)) only when the draw rejects, so a token
    costs O(k log k + V) for the structure plus at most one fit.

    Returns (token, info) with info as in `conditional` less residual, plus accepted (whether the
    token is one of the drafts' slots rather than a draw from ρ).

    Examples
    --------
    >>> import numpy as np
    >>> import globalres as gr
    >>> from globalres import exact
    >>> token, info = exact.sample(gr.Problem([0.5, 0.3, 0.2], [0.2, 0.3, 0.5], n=2), [0, 2],
    ...                            np.random.default_rng(0))
    >>> token, info["system"], info["accepted"]
    (0, 'singleton segment 0', True)
    """
    parts = _observed(problem, drafts, tol=tol, step=step, max_iter=max_iter)
    x, share, info = parts["x"], parts["share"], parts["info"]
    cumulative = np.cumsum(share)
    u = rng.random() * (cumulative[-1] + parts["reject"])
    info["accepted"] = bool(u < cumulative[-1])
    if info["accepted"]:
        return int(x[min(int(np.searchsorted(cumulative, u, side="right")), x.size - 1)]), info
    residual = residual_mass(problem.p, problem.q, parts["s"])
    return draw(residual if residual.any() else problem.p, rng.random()), info  # α* = 1: any law will do


# ------------------------------------------------------------------------ torch: batched fast path
# The same fit as above, batched over "rows": each row is one system (the inner system of a context,
# or one non-singleton segment), padded to a common width with q = 0 entries that carry no mass.
# Only the draft support enters H* and the segments, so a context costs O(k log k + V) plus the fit.
# Inner rows of at least LARGE tokens (float64) start from the batched compressed start (`_rows_gauss`:
# m-point Gauss rules per bin, all bins of all rows at once), so their first full evaluation certifies them.


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


def _rows_nodes(w, real, n, c0, h, reach=None):
    """Per-row nodes (R, K) on h·ℤ as `grid` gives them, with a common count K: rows needing fewer
    get extra far nodes. reach: log of a t every row's grid must reach (`_rows_rescale`)."""
    torch = _torch()
    kappa = c0 + n * torch.where(real, w, torch.zeros_like(w)).amax(1)
    w_min = torch.where(real, w, torch.full_like(w, math.inf)).amin(1)
    lo = torch.floor(torch.log(LEFT / kappa) / h)
    # log t_hi = log log(n/TAIL) − log(c0 + min w), in logs: the quotient overflows float32 for tiny weights
    log_hi = math.log(math.log(n / TAIL)) - torch.log((c0 + w_min).clamp_min(torch.finfo(w.dtype).tiny))
    hi = torch.maximum(torch.ceil(log_hi / h), lo + 1)
    if reach is not None:
        hi = hi.clamp_min(math.ceil(reach / h))
    K = int((hi - lo).max().item()) + 1
    return torch.exp(h * (lo[:, None] + torch.arange(K, device=w.device, dtype=w.dtype)[None, :]))


def _rows_phi(q, E):
    """Σ_v q_v E_vk (R, K); over a width G that is a multiple of PHI_CHUNK, as partial sums of PHI_CHUNK
    tokens and then their sum: a chain of `_phi_terms`(G) additions, not G (with G terms, the certificate's
    rounding term at k = V, n = 16 alone came to 1.6e-10). E must be contiguous (it is: `_rows_exp`)."""
    torch = _torch()
    R, G, K = E.shape
    m = G // PHI_CHUNK
    if m < 2 or G % PHI_CHUNK:
        return torch.einsum("rg,rgk->rk", q, E)
    return torch.einsum("rmc,rmck->rmk", q.reshape(R, m, PHI_CHUNK), E.view(R, m, PHI_CHUNK, K)).sum(1)


def _phi_terms(G: int) -> int:
    """The longest chain of additions in c + `_rows_phi` over G tokens (`rounding_terms`' `terms`)."""
    return G + 1 if G // PHI_CHUNK < 2 or G % PHI_CHUNK else PHI_CHUNK + G // PHI_CHUNK + 1


def _padded(G: int) -> int:
    """The row width `solve_batch` fits G tokens in: a multiple of PHI_CHUNK from 2·PHI_CHUNK on."""
    return G if G < 2 * PHI_CHUNK else -(-G // PHI_CHUNK) * PHI_CHUNK


def _pad(x, G: int):
    """x (R, g) padded with zeros (False) on the right to width G."""
    return _torch().nn.functional.pad(x, (0, G - x.shape[1]))


def _rows_integrals(q, c, n, c0, w, E, t, h):
    """Batched `integrals`: q, w (R, G); c, c0 (R,); E (R, G, K); t (R, K)."""
    torch = _torch()
    Q = (c + q.sum(1))[:, None]
    c0 = c0[:, None]
    phi = c[:, None] + _rows_phi(q, E)
    dt = h * t * torch.exp(-c0 * t)
    kernel = dt * phi ** (n - 1)
    kernel = torch.where(kernel < FLUSH, torch.zeros_like(kernel), kernel)
    qw = q * w
    m = qw.sum(1, keepdim=True)
    r1, r2, _ = tail_sums(h)
    g0 = n * qw * Q ** (n - 1)
    t0 = t[:, :1]
    left = h * t0 * g0 * (r1 - t0 * r2 * (c0 + w + (n - 1) * m / Q))
    acc = n * qw * torch.einsum("rgk,rk->rg", E, kernel) + left
    return dict(acc=acc, phi=phi, kernel=kernel, dt=dt, qw=qw, m=m, g0=g0, Q=Q, left=left)


def _rows_exp(w, t):
    """e^{−t w} (R, G, K), the exponent capped at EXP_CAP (no slow denormals); in place after the product,
    so the largest tensor of a batch is allocated once (k = 1000, B = 4096: 3.6 GB)."""
    return (w[:, :, None] * t[:, None, :]).clamp_(max=EXP_CAP).neg_().exp_()


def _rows_evaluate(q, target, c, n, c0, b, t, h, hessian=True):
    """Batched `evaluate`: q, target, b (R, G); c, c0 (R,); t (R, K). Returns acc, F, the Hessian's parts
    (d, U, C) or None, and the `_rows_integrals` dict with the nodes t."""
    torch = _torch()
    w = b.exp()
    E = _rows_exp(w, t)
    out = _rows_integrals(q, c, n, c0, w, E, t, h)
    phi, kernel, qw, Q = out["phi"], out["kernel"], out["qw"], out["Q"]
    Qn, cn = Q**n, c[:, None] ** n
    grow = Qn * torch.expm1(n * torch.log1p((phi / Q - 1.0).clamp_min(-1.0)))
    integrand = torch.where(c0[:, None] == 1, -torch.exp(-t) * grow, (Qn - cn) * torch.expm1(-t) - grow)
    first = n * Q ** (n - 1) * out["m"] - (1 - c0[:, None]) * (Qn - cn)
    # right of each row's last node φ = c to within TAIL: F's integrand is (Qⁿ − cⁿ) e^{−t} (`right_sum`)
    J = max(math.ceil((math.log(50.0) - math.log(float(t[:, -1].min()))) / h), 1)
    beyond = t[:, -1:] * torch.exp(h * torch.arange(1, J + 1, device=t.device, dtype=t.dtype))
    right = torch.where(beyond <= 50.0, torch.exp(-beyond), torch.zeros_like(beyond)).sum(1, keepdim=True)
    F = (h * (integrand.sum(1, keepdim=True) + t[:, :1] * tail_sums(h)[0] * first + (Qn - cn) * right))[:, 0] \
        - (target * b).sum(1)
    out["t"] = t
    if not hessian:
        return out["acc"], F, None, out
    # as in `hessian`: the left-tail sum adds to d and a rank-one term γ (qw)(qw)ᵀ (one more column of U)
    t0, r2 = t[:, :1], tail_sums(h)[1]
    d = n * qw * (torch.einsum("rgk,rk->rg", E, kernel) - w * torch.einsum("rgk,rk->rg", E, t * kernel)) \
        + out["left"] - h * t0**2 * r2 * out["g0"] * w
    U = torch.cat([qw[:, :, None] * E, qw[:, :, None]], 2)
    C = n * (n - 1) * out["dt"] * t * phi ** (n - 2) if n >= 2 else torch.zeros_like(t)
    gamma = h * t0**2 * r2 * n * (n - 1) * Q ** (n - 2) if n >= 2 else torch.zeros_like(t0)
    C = torch.cat([C, gamma], 1)
    C = torch.where(C < FLUSH, torch.zeros_like(C), C)
    return out["acc"], F, (d, U, C), out


def _rows_direction(g, d, U, C, live):
    """Batched `newton_direction`; dead (padded or pinned) entries get a zero step."""
    torch = _torch()
    floor = 1e-20 * torch.where(live, d, torch.zeros_like(d)).amax(1, keepdim=True)  # as in `newton_direction`
    floor = floor.clamp_min(torch.finfo(d.dtype).tiny)
    d = torch.where(live, torch.maximum(d, floor), torch.ones_like(d))
    s = d.rsqrt()
    W = ((s * live)[:, :, None] * U * C.clamp_min(0).sqrt()[:, None, :]).clamp_min(FLUSH)  # no denormals
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


def _rows_rescale(q, target, c, n, b, live, h):
    """Batched `rescale` for inner rows: b + λ per row, λ by Newton on log R."""
    torch = _torch()
    real = q > 0
    Q = c + q.sum(1)
    wanted = Q**n - target.sum(1)
    todo = wanted > c**n
    lam = torch.zeros_like(Q)
    one = torch.ones_like(Q)
    for _ in range(30):
        w = (b + lam[:, None]).exp()
        t = _rows_nodes(w, real, n, one, h, reach=math.log(50.0))
        E = _rows_exp(w, t)
        phi = c[:, None] + torch.einsum("rg,rgk->rk", q, E)
        psi = torch.einsum("rg,rgk->rk", q * w, E)
        a = h * t * torch.exp(-t)
        R = (a * phi**n).sum(1) + h * t[:, 0] * tail_sums(h)[0] * Q**n
        slope = -n * (a * t * phi ** (n - 1) * psi).sum(1) / R
        miss = torch.log(wanted.clamp_min(torch.finfo(R.dtype).tiny) / R)
        todo = todo & (miss.abs() >= 0.05) & (slope < 0)
        if not bool(todo.any()):
            break
        lam = torch.where(todo, lam + torch.nan_to_num(miss / slope).clamp(-20.0, 20.0), lam)
    return torch.where(live, b + lam[:, None], b)


def _rows_newton(q, target, c, c0, b, live, n, *, h, tol, max_iter, warm=False):
    """Batched `newton` at step h: every row at once; returns b, the gradient norms (R, iterations) and
    the last evaluation at b (`_rows_evaluate`'s tuple), or None.

    A full step taken by every row makes the trial's evaluation (with its Hessian parts) the next
    iterate's, as in `newton`. From a warm start the first evaluation leaves the Hessian out (it is
    likely the certificate, and the Hessian's parts cost as much again).
    """
    torch = _torch()
    real = q > 0
    # |b| ≤ 80 in float32: the grid of a weight e^−80 already ends near t = e^85, and e^89 overflows
    bound = 80.0 if b.dtype == torch.float32 else 700.0
    b = b.clamp(-bound, bound)
    history = []
    here = None
    stuck = torch.zeros_like(c, dtype=torch.bool)
    strikes, eps = torch.zeros_like(c, dtype=torch.int64), torch.finfo(b.dtype).eps
    best_g = best_F = torch.full_like(c, math.inf)
    for _ in range(max_iter):
        if here is None:
            here = _rows_evaluate(q, target, c, n, c0, b, _rows_nodes(b.exp(), real, n, c0, h), h,
                                  hessian=not (warm and not history))
        acc, F, parts, _ = here
        gnorm = (acc - target).abs().sum(1)
        # two steps in a row that lower neither the best ‖∇F‖₁ by 1% nor the best F beyond its rounding:
        # stuck (a fit at float32's rounding floor steps on noise, in cycles, to max_iter)
        moved = (gnorm < 0.99 * best_g) | (F < best_F - 64 * eps * best_F.abs().clamp_min(1.0))
        strikes = torch.where(moved, torch.zeros_like(strikes), strikes + 1)
        stuck = stuck | (strikes >= 2)
        best_g, best_F = torch.minimum(best_g, gnorm), torch.minimum(best_F, F)
        history.append(gnorm)
        todo = (gnorm > tol) & ~stuck
        if not bool(todo.any()):
            break
        if parts is None:
            parts = _rows_evaluate(q, target, c, n, c0, b, here[3]["t"], h)[2]
        d, U, C = parts
        # a row whose step is not finite (float32 on a near-tight system) stops and fails its certificate
        step = _rows_direction(acc - target, d, U, C, live & todo[:, None])
        stuck = stuck | (todo & ~torch.isfinite(step).all(1))
        todo = todo & ~stuck
        step = torch.nan_to_num(step, 0.0, 0.0, 0.0) * todo[:, None]
        biggest = step.abs().amax(1, keepdim=True).clamp_min(MAX_LOG_STEP)
        step = step * (MAX_LOG_STEP / biggest)
        slope = ((acc - target) * step).sum(1)
        size = torch.ones_like(F)
        pending = todo.clone()
        here = None
        for attempt in range(30):
            trial = (b + size[:, None] * step).clamp(-bound, bound)
            there = _rows_evaluate(q, target, c, n, c0, trial, _rows_nodes(trial.exp(), real, n, c0, h), h,
                                   hessian=attempt == 0)
            ok = (there[1] <= F + 1e-4 * size * slope) | ((there[0] - target).abs().sum(1) < gnorm)
            b = torch.where((pending & ok)[:, None], trial, b)
            if attempt == 0 and bool(ok[pending].all()):
                here = there  # rows not pending took a zero step: the trial is every row's iterate
            pending = pending & ~ok
            if not bool(pending.any()):
                break
            size = torch.where(pending, size / 2, size)
        stuck = stuck | pending  # no step along its direction lowers F: it stops, as in `newton`
    return b, torch.stack(history, 1), here


def fit_rows(q, target, c, c0, b0, live, n, *, h=STEP, tol=1e-12, max_iter=60, warm=False):
    """Batched `fit_system` (torch): Newton at step 2h to ROUGH (skipped from a warm start), then at h to
    tol, certified at h (`_rows_certificate`); returns b, acc at h, l1 and quadrature per row, and the
    nodes t, kernel and m = Σ q w of the last evaluation (for `_rows_curve`).

    live : bool (R, G), the free log-weights (False on padding and on each segment's pinned token).
    """
    torch = _torch()
    b, rough = b0.clone(), torch.zeros(q.shape[0], 0, dtype=q.dtype, device=q.device)
    if not warm:
        b, rough, _ = _rows_newton(q, target, c, c0, b, live, n, h=2 * h, tol=max(tol, ROUGH), max_iter=max_iter)
    b, history, here = _rows_newton(q, target, c, c0, b, live, n, h=h, tol=tol, max_iter=max_iter, warm=warm)
    return dict(_rows_certificate(q, target, c, c0, b, n, h, None if here is None else here[3]), b=b,
                gradient_norm=torch.cat([rough, history], 1))


def _rows_certificate(q, target, c, c0, b, n, h, out=None):
    """acc at step h, l1 = ‖acc − target‖₁ and the quadrature bound (`quadrature_bound`, with the rounding
    of `rounding_terms` in b's dtype) per row, from `out` (a `_rows_integrals` dict at b, with its nodes t) or
    a fresh evaluation; and nodes, t, kernel, m."""
    torch = _torch()
    real = q > 0
    w = b.exp()
    if out is None:
        t = _rows_nodes(w, real, n, c0, h)
        out = dict(_rows_integrals(q, c, n, c0, w, _rows_exp(w, t), t, h), t=t)
    t, acc = out["t"], out["acc"]
    kappa = c0 + n * torch.where(real, w, torch.zeros_like(w)).amax(1)
    left = h * n * out["Q"][:, 0] ** (n - 1) * out["m"][:, 0] * kappa**2 * t[:, 0] ** 3 * tail_sums(h)[2] / 2
    eps = 2.0**-53 if acc.dtype == torch.float64 else 2.0**-24
    beta = strip_bound(h) + rounding_terms(t.shape[1], _phi_terms(q.shape[1]), n) * eps
    return dict(acc=acc, l1=(acc - target).abs().sum(1),
                quadrature=beta / (1 - beta) * acc.abs().sum(1) + left + TAIL * out["Q"][:, 0],
                nodes=t.shape[1], t=t, kernel=out["kernel"], m=out["m"])


CERTIFY_ENTRIES = 2**26  # float64 entries of e^{−t w} per chunk of rows when a float32 fit is certified


def _certify_in_float64(q, target, c, c0, b, n, h) -> dict:
    """`_rows_certificate` of a float32 fit at the weights e^b it returns, in float64 against the float64
    system (q, target, c), in chunks of rows of at most CERTIFY_ENTRIES entries: acc, l1, quadrature, nodes.
    (In float32, `rounding_terms`·2⁻²⁴ is ~5e-4 at k = 1000, n = 8: no certificate at tol 1e-4. The bound used
    before, K·2⁻²⁴ for the K-term sums alone, was short by up to 3× on k = 1000–3000 systems.)"""
    torch = _torch()
    step = max(1, CERTIFY_ENTRIES // (q.shape[1] * 256))  # K ≤ ~256 nodes per row
    parts = [_rows_certificate(q[i:i + step], target[i:i + step], c[i:i + step], c0[i:i + step], b[i:i + step], n, h)
             for i in range(0, q.shape[0], step)]
    return dict(acc=torch.cat([x["acc"] for x in parts]), l1=torch.cat([x["l1"] for x in parts]),
                quadrature=torch.cat([x["quadrature"] for x in parts]), nodes=max(x["nodes"] for x in parts))


GAUSS_POINTS = 7  # nodes per bin of `_rows_gauss`: an m-point rule in bins 1.0 wide is as accurate as
GAUSS_WIDTH = 1.0  # 3 points in 0.2, with about half the pseudo-tokens (measured with the numpy read-off)


def _rows_gauss(y, q, width: float = GAUSS_WIDTH, m: int = GAUSS_POINTS):
    """Batched `gauss_bins` (torch): per row, the m-point Gauss rule of Σ_v q_v δ(y_v) within each occupied
    bin of `width` (y sorted along a row over its q > 0 entries): nodes Y and weights W (R, NB·m), zero
    weights as padding. Per bin, in z = (y − mean)/std, the Stieltjes procedure gives the recurrence
    coefficients α_j, β_j of the monic orthogonal polynomials, and the eigenvalues of the Jacobi matrix
    are the nodes, the squared first components of its eigenvectors times the mass the weights
    (Golub–Welsch, one batched `eigh`). A bin whose measure has j < m points (ties, sparse bins) has
    β_j = 0 to rounding: it is set to 0, which decouples the rest, and the j-point rule is those points."""
    torch = _torch()
    R, G = q.shape
    real = q > 0
    y = torch.where(real, y, torch.zeros_like(y))
    cell = torch.where(real, torch.floor(y / width), torch.full_like(y, math.inf))
    new = torch.ones_like(real)
    new[:, 1:] = cell[:, 1:] != cell[:, :-1]
    bin_ = new.cumsum(1) - 1  # empty bins (runs of padding) carry no mass: zero-weight nodes
    NB = int(bin_.max().item()) + 1

    def per_bin(x):
        return torch.zeros(R, NB, dtype=x.dtype, device=x.device).scatter_add_(1, bin_, x)

    mass = per_bin(q)
    safe = torch.where(mass > 0, mass, torch.ones_like(mass))
    centre = per_bin(q * y) / safe
    z = y - centre.gather(1, bin_)
    spread = (per_bin(q * z * z) / safe).sqrt()
    z = z / torch.where(spread > 0, spread, torch.ones_like(spread)).gather(1, bin_)
    alpha = torch.zeros(R, NB, m, dtype=q.dtype, device=q.device)
    beta = torch.zeros_like(alpha)
    prev, cur = torch.zeros_like(z), torch.ones_like(z)  # p_{j−1}, p_j: monic, p_0 = 1
    norm_prev, ok = torch.ones_like(mass), mass > 0
    for j in range(m):
        qp = q * cur * cur
        norm = per_bin(qp) / safe  # ‖p_j‖²
        ok = ok & (norm > 1e-12 * norm_prev)  # p_j vanishes on a measure of j points: the rule stops at j
        norm_ok = torch.where(ok, norm, torch.ones_like(norm))
        alpha[..., j] = torch.where(ok, per_bin(qp * z) / safe / norm_ok, torch.zeros_like(norm))
        if j:
            beta[..., j] = torch.where(ok, norm / norm_prev, torch.zeros_like(norm))
        following = (z - alpha[..., j].gather(1, bin_)) * cur
        if j:
            following -= beta[..., j].gather(1, bin_) * prev
        prev, cur, norm_prev = cur, following, torch.where(ok, norm, norm_prev)
    off = beta[..., 1:].sqrt()
    J = torch.diag_embed(alpha) + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)
    x, vectors = torch.linalg.eigh(J)
    W = mass[..., None] * vectors[..., 0, :] ** 2
    Y = centre[..., None] + spread[..., None] * x
    return Y.reshape(R, NB * m), W.reshape(R, NB * m)


def _rows_curve(q, c, n, c0: int, t, kernel, m, b, h):
    """Batched `ratio_curve`: y(b), y_b, y_bb on grids b (R, NG) from a fit's nodes t, kernel (R, K) and
    m = Σ q w (R, 1); inner rows (c0 = 1, R0 = 0) or segment rows (c0 = 0, R0 = n cⁿ⁻¹)."""
    torch = _torch()
    Q = (c + q.sum(1))[:, None]
    bottom = 0.0 if c0 == 1 else n * c[:, None] ** (n - 1)
    w = b.exp()
    E = _rows_exp(w, t)
    S0, S1, S2 = torch.einsum("rgk,rkj->rgj", E, torch.stack([kernel, t * kernel, t * t * kernel], 2)).unbind(2)
    r1, r2, _ = tail_sums(h)
    t0 = t[:, :1]
    L = h * t0 * Q ** (n - 1) * (r1 - t0 * r2 * (c0 + w + (n - 1) * m / Q))
    dL = -h * t0**2 * Q ** (n - 1) * r2
    R = n * w * (S0 + L)
    R_w = n * (S0 - w * S1 + L + w * dL)
    R_ww = n * (w * S2 - 2 * S1 + 2 * dL)
    R_b, R_bb = w * R_w, w * R_w + w * w * R_ww
    top = n * Q ** (n - 1)
    below, gap = R - bottom, top - R
    y = below.log() - gap.log()
    scale = (top - bottom) / (below * gap)
    return y, R_b * scale, R_bb * scale + R_b**2 * (2 * R - bottom - top) * scale**2 / (top - bottom)


def _rows_hermite_inverse(yg, bg, y_b, y_bb, y):
    """Batched `hermite_inverse`: per row, B(y) from the grid (bg, yg) with B' = 1/y_b, B'' = −y_bb/y_b³."""
    torch = _torch()
    d, coefficients = hermite_coefficients(yg, bg, y_b, y_bb)
    k = (torch.searchsorted(yg.contiguous(), y.contiguous()) - 1).clamp(0, yg.shape[1] - 2)
    s = (y - yg.gather(1, k)) / d.gather(1, k)
    out = coefficients[5].gather(1, k)
    for coefficient in coefficients[4::-1]:
        out = out * s + coefficient.gather(1, k)
    return out


def _rows_compressed_start(q, target, c, n, c0: int, live, *, h, tol, max_iter):
    """Batched `compressed_start`: log-weights (R, G) read off the fit of each row's Gauss pseudo-tokens
    (`_rows_gauss`) through the inverse of y(b), and a bool (R,) saying where that worked (elsewhere the
    caller's start stays). Inner rows (c0 = 1) or segment rows (c0 = 0, n ≥ 2: the pseudo-segment's targets
    sum to Qⁿ − cⁿ and it is pinned at its largest target, like the segment; live holds every token)."""
    torch = _torch()
    Q = c + q.sum(1)
    bottom = torch.zeros_like(Q)[:, None] if c0 == 1 else n * c[:, None] ** (n - 1)
    top = (n * Q ** (n - 1))[:, None]
    finfo = torch.finfo(q.dtype)
    r = ((target / q.clamp_min(finfo.tiny) - bottom) / (top - bottom)).clamp(1e-300, 1.0 - 1e-15)
    y = torch.where(live, r.log() - torch.log1p(-r), torch.zeros_like(r))
    Y, W = _rows_gauss(y, torch.where(live, q, torch.zeros_like(q)))
    keep = W > 0
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, : int(keep.sum(1).max().item())]
    Y, W = Y.gather(1, order), W.gather(1, order)  # the nodes first, padding after
    small_live = W > 0
    small_target = torch.where(small_live, W * (bottom + (top - bottom) / (1.0 + torch.exp(-Y))), torch.zeros_like(W))
    if c0 == 1:
        b0 = _rows_rescale(W, small_target, c, n, torch.where(small_live, Y, torch.zeros_like(Y)), small_live, 2 * h)
    else:  # a segment accepts Qⁿ − cⁿ whatever its weights: targets off that sum leave a gradient floor
        small_target = small_target * ((Q**n - c**n) / small_target.sum(1))[:, None]
        r = ((small_target / W.clamp_min(finfo.tiny) - bottom) / (top - bottom)).clamp(1e-300, 1.0 - 1e-15)
        b0 = torch.where(small_live, r.log() - torch.log1p(-r), torch.zeros_like(W))  # as `segment_start`
        pin = small_target.argmax(1, keepdim=True)
        b0 = b0 - b0.gather(1, pin)
        small_live = small_live.scatter(1, pin, False)
    fit = fit_rows(W, small_target, c, torch.full_like(c, c0), b0, small_live, n, h=h, tol=tol, max_iter=max_iter,
                   warm=True)  # small: no step-2h phase, as in `fit_system`
    fitted = torch.nonzero(fit["gradient_norm"][:, -1] <= tol).flatten()  # y(b) only where the pseudo fit converged
    out, ok = torch.zeros_like(y), torch.zeros_like(c, dtype=torch.bool)
    if not fitted.numel():  # (float32's near-tight segments: a y(b) grid of 10⁴ × 10³ nodes each, for nothing)
        return out, ok
    W, c, live, y = W[fitted], c[fitted], live[fitted], y[fitted]
    t, kernel, m, b = fit["t"][fitted], fit["kernel"][fitted], fit["m"][fitted], fit["b"][fitted]
    b = torch.where(W > 0, b, torch.nan)
    lo = torch.nan_to_num(b, nan=math.inf).amin(1) - 1.0
    hi = torch.nan_to_num(b, nan=-math.inf).amax(1) + 1.0
    y_lo = torch.where(live, y, torch.full_like(y, math.inf)).amin(1)
    y_hi = torch.where(live, y, torch.full_like(y, -math.inf)).amax(1)
    good = torch.ones_like(c, dtype=torch.bool)
    for _ in range(30):  # widen each row's grid until y(b) covers its tokens' y
        NG = int(torch.ceil(((hi - lo) / CURVE).max()).item()) + 1
        bg = lo[:, None] + (hi - lo)[:, None] * torch.linspace(0.0, 1.0, NG, dtype=q.dtype, device=q.device)
        yg, y_b, y_bb = _rows_curve(W, c, n, c0, t, kernel, m, bg, h)
        good = good & torch.isfinite(yg).all(1) & (yg.diff(dim=1) > 0).all(1) & (y_b > 0).all(1) \
            & torch.isfinite(y_bb).all(1)  # y_bb overflows where R nears R∞ at the far end: no start there
        short_lo = good & (yg[:, 0] > y_lo) & (lo > -700.0)
        short_hi = good & (yg[:, -1] < y_hi) & (hi < 700.0)
        if not bool((short_lo | short_hi).any()):
            break
        # as in `compressed_start`: y ≈ b + const at both ends, so the slope there says how far to widen
        lo = torch.where(short_lo, (lo - (1.5 * (yg[:, 0] - y_lo) / y_b[:, 0]).clamp(2.0, 64.0)).clamp_min(-700.0), lo)
        hi = torch.where(short_hi, (hi + (1.5 * (y_hi - yg[:, -1]) / y_b[:, -1]).clamp(2.0, 64.0)).clamp_max(700.0), hi)
    else:
        good = good & ~(short_lo | short_hi)
    b = torch.where(live, _rows_hermite_inverse(yg, bg, y_b, y_bb, y), torch.zeros_like(y))
    out[fitted], ok[fitted] = b, good & torch.isfinite(b).all(1)
    return out, ok


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
    P = torch.as_tensor(P, dtype=torch.float64, device=device)  # float64 whatever the fit's dtype: see solve_batch
    Q = torch.as_tensor(Q, dtype=torch.float64, device=device)
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
    Qn = int_power(Qc, n)
    psi = torch.where(beyond, math.inf, Pc - Qn)
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
    mass = Qn.gather(1, start + 1) - Qn[:, :K1]
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
    dtype : torch.float64 (default) or torch.float32: the dtype of the Newton fit, whose (R, G, K) tensors
        are the work and the memory of a batch (float32 fits reach 1e-9 to 1e-5 L1: ask for tol ≥ 1e-4; see
        bench/README.md). The structure (H*, α*, segments, targets) and the pseudo-token fits are float64
        either way (in float32 a rejected mass near 1e-7 vanishes and ψ's near-ties decide H* wrongly),
        and a float32 fit is certified by one float64 evaluation of the float32 weights returned
        (`_certify_in_float64`). The result's tensors are in `dtype`.
    tol : certified L1 and acceptance-gap target per context.

    Cost per context: one sort of the k drafted tokens, O(V) for the residual, and the Newton fit
    of the needed systems in O(k·K) per iteration (K ≈ 100–200 quadrature nodes), whatever n is. Systems
    of at least LARGE tokens start from the fit of their Gauss pseudo-tokens, and their first full
    evaluation certifies them (`info["compressed"]` and `info["compressed segments"]` count those rows).
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
    weights = torch.full((B, V), math.nan, dtype=P.dtype, device=P.device)
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
    l1 = torch.zeros(B, dtype=P.dtype, device=P.device)
    gap = torch.zeros(B, dtype=P.dtype, device=P.device)
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
        warm = torch.zeros_like(c, dtype=torch.bool)
        if G >= LARGE:  # in float64 whatever the dtype: pseudo rows are small (and in float32 their fit met NaNs)
            b_read, warm = _rows_compressed_start(q_in, p_in, c, n, 1, live, h=step, tol=tol / 80, max_iter=max_iter)
            b0 = torch.where(warm[:, None], b_read, b0)
        GP = _padded(G)  # padding carries no mass (q = 0, not live)
        q_in, p_in, b0, live = _pad(q_in, GP), _pad(p_in, GP), _pad(b0, GP), _pad(live, GP)
        exact_system = q_in, p_in, c  # float64: what a float32 fit is certified against
        q_in, p_in, c, b0 = q_in.to(dtype), p_in.to(dtype), c.to(dtype), b0.to(dtype)  # the fit's dtype from here
        cold = ~warm
        if bool(cold.any()):
            b0[cold] = _rows_rescale(q_in[cold], p_in[cold], c[cold], n, b0[cold], live[cold], 2 * step)
        fit = fit_rows(q_in, p_in, c, torch.ones_like(c), b0, live, n, h=step, tol=tol / 8,
                       max_iter=max_iter, warm=bool(warm.all()))
        w = torch.where(live, fit["b"].exp(), torch.zeros_like(q_in))  # the weights returned
        if dtype != torch.float64:  # certified in float64, at exactly those weights
            w = w.double()
            b_out = torch.where(live, w.clamp_min(1e-300).log(), torch.zeros_like(w))
            fit = dict(fit, **_certify_in_float64(*exact_system, torch.ones_like(w[:, 0]), b_out, n, step))
        info["compressed"] = int(warm.sum())
        w = w[:, :G]
        weights[rows] = weights[rows].scatter(1, idx[rows, :G], torch.where(in_H[rows, :G], w,
                                                                              weights[rows].gather(1, idx[rows, :G])))
        acc = fit["acc"].sum(1)
        accepted_inner[rows] = acc
        l1[rows] += fit["l1"] + 2 * fit["quadrature"]  # accepted and rejected mass each err by it
        gap[rows] += (acc - P.masked_fill(~h_mask, 0.0).sum(1)[rows]).abs() + fit["quadrature"]
        info["nodes"]["inner"] = fit["nodes"]
        info["gradient_norm"]["inner"] = fit["gradient_norm"]

    seg_rows, seg_end = torch.nonzero(need_segment, as_tuple=True)
    if seg_rows.numel():
        width = int(size[seg_rows, seg_end].max().item())
        span = seg_end[:, None] + torch.arange(width, device=P.device)[None, :]
        valid = span <= s["start"][seg_rows, seg_end][:, None]
        span = span.clamp(max=K1 - 1)
        q_s = torch.where(valid, qv[seg_rows[:, None], span], torch.zeros_like(span, dtype=P.dtype))
        t_s = torch.where(valid, targets[seg_rows[:, None], span], torch.zeros_like(q_s))
        c = s["Qc"][seg_rows, seg_end]
        if n > 1:  # as `segment_start`: logit((t/q − R0)/(R∞ − R0)), R0 = n cⁿ⁻¹, R∞ = n Qⁿ⁻¹
            bottom, top = n * c[:, None] ** (n - 1), n * (c + q_s.sum(1))[:, None] ** (n - 1)
            r = ((t_s / q_s.clamp_min(1e-300) - bottom) / (top - bottom)).clamp(1e-300, 1.0 - 1e-15)
            b0 = torch.where(valid, r.log() - torch.log1p(-r), torch.zeros_like(q_s))
        else:  # n = 1: R is constant, any weights do
            b0 = torch.where(valid, (t_s.clamp_min(1e-300) / q_s.clamp_min(1e-300)).log(), torch.zeros_like(q_s))
        pin = torch.where(valid, t_s, torch.full_like(t_s, -1.0)).argmax(1)
        b0 = b0 - b0.gather(1, pin[:, None])
        live = valid.clone()
        live[torch.arange(live.shape[0], device=P.device), pin] = False
        warm = torch.zeros_like(c, dtype=torch.bool)
        if width >= LARGE and n > 1:  # n = 1: R is constant, any weights do
            b_read, warm = _rows_compressed_start(q_s, t_s, c, n, 0, valid, h=step, tol=tol / 80, max_iter=max_iter)
            b0 = torch.where(warm[:, None], b_read - b_read.gather(1, pin[:, None]), b0)
        GP = _padded(width)  # padding carries no mass (q = 0, not live)
        q_s, t_s, b0, live, valid = _pad(q_s, GP), _pad(t_s, GP), _pad(b0, GP), _pad(live, GP), _pad(valid, GP)
        exact_system = q_s, t_s, c  # float64: what a float32 fit is certified against
        q_s, t_s, c, b0 = q_s.to(dtype), t_s.to(dtype), c.to(dtype), b0.to(dtype)  # the fit's dtype from here
        zero = torch.zeros_like(c)
        fit = fit_rows(q_s, t_s, c, zero, b0, live, n, h=step, tol=tol / 8, max_iter=max_iter, warm=bool(warm.all()))
        b = torch.where(valid, fit["b"], torch.full_like(q_s, -math.inf))
        w = (b - b.max(1, keepdim=True).values).exp()  # the weights returned (a segment's rule reads ratios)
        if dtype != torch.float64:  # certified in float64, at exactly those weights (acc ignores a common shift)
            w = w.double()
            b_out = torch.where(valid, w.clamp_min(1e-300).log(), torch.zeros_like(w))
            fit = dict(fit, **_certify_in_float64(*exact_system, torch.zeros_like(w[:, 0]), b_out, n, step))
        info["compressed segments"] = int(warm.sum())
        w, valid = w[:, :width], valid[:, :width]
        tokens = idx[seg_rows[:, None], span]
        for i in range(seg_rows.numel()):  # few: non-singleton segments are rare
            weights[seg_rows[i], tokens[i, valid[i]]] = w[i, valid[i]]
        l1.index_add_(0, seg_rows, fit["l1"] + 2 * fit["quadrature"])
        info["nodes"]["segments"] = fit["nodes"]
        info["gradient_norm"]["segments"] = fit["gradient_norm"]

    rejected = QHn - accepted_inner
    rho = torch.where(wanted[:, None] > 0, residual / wanted.clamp_min(1e-300)[:, None], P)
    l1 += torch.where(need_inner, (rejected - wanted).abs(), torch.zeros_like(l1))
    l1 += torch.where(singleton, (s["mass"] - targets).abs(), torch.zeros_like(targets)).sum(1)
    success = (l1 <= tol) & (gap <= tol)
    info["seconds"] = time.perf_counter() - start_time
    return BatchResult(s["alpha"].to(dtype), h_mask, weights.to(dtype), segment_of, rho.to(dtype), l1.to(dtype),
                       gap.to(dtype), success, n, info)


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
