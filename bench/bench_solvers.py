"""Speed benchmark of the OT verification solvers (GitHub issue 3), all methods side by side in one run.

    .venv/bin/python bench/bench_solvers.py --quick     # 2 pairs per grid point, a few minutes
    .venv/bin/python bench/bench_solvers.py             # 200 pairs per grid point (issue 3)

Inputs (bench/pairs.py): per grid point the bundled real SmolLM2 pairs first where V matches
(assets/smollm2_pairs.npz: 122 rows at V = 49152), then Zipf-like synthetic pairs; the output says how
many were real.

Per grid point (top-k, n, V) and method: median and p95 ms per token, the number of pairs measured,
success rate, acceptance gap to α* (sorted-prefix formula), L1 deviation of the output law from p (exact
enumeration of draft tuples where feasible, else the exact solver's certificate), the speed ratio to
exact (torch CPU), and where enumeration is not feasible a Monte Carlo χ² test of the output law
(exact numpy and exact torch CPU; on the first pair of the point, outside the timed region): S draft
tuples i.i.d. from q, one output per tuple from the rule's π(·|ω), outputs binned into the top tokens
of p (each with S·p ≥ 5; at most 30) plus one "rest" bin, scipy.stats.chisquare against S·p binned.

What one "token" costs, per method:
- LP / POT / max-flow / opt. max-flow / Global Resolution: one solve of the problem, with the tokens q
  never drafts folded into one extra token (an equivalent, smaller problem: they only receive residual).
- exact (numpy): `gr.solve(..., method="exact")` (every system fitted) plus `plan.sample` of the
  observed draft tuple, on the full vocabulary: the per-token cost of the numpy path.
- exact (numpy, observed system only): `exact.sample(pb, drafts, rng)`: the structure, then only the
  system the observed tuple needs (the inner system, or one outer segment, none for a singleton
  segment) and a draw; its L1 and gap columns are that system's certificate.
- exact (torch): `solve_batch` with the observed draft tuple (only the system that tuple needs is
  fitted) plus `sample_batch`, on the full vocabulary; torch runs single-threaded (see README).
- exact (torch, batch of B): the same for B contexts in one call (the grid point's pairs repeated with
  fresh draft tuples), reported per context: the amortised throughput. Only where k ≤ 1000.
Time budget: a method whose cumulative time at a grid point passes a minute stops there and reports
its statistics over the pairs it did; a single solve over a minute also skips it at the later points;
a method that refuses the size is skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from scipy.stats import chisquare

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import cpu  # noqa: E402
from pairs import labelled_pairs  # noqa: E402

import globalres as gr  # noqa: E402
from globalres import exact  # noqa: E402
from globalres.exact import sample_batch, solve_batch  # noqa: E402

GRID = [(10, 2, 32000), (10, 4, 32000), (10, 5, 32000), (100, 2, 32000), (1000, 2, 32000),
        (1000, 8, 32000), (49152, 4, 49152), (1000, 16, 128000)]
MINUTE = 60.0
AUDIT_TUPLES = 20_000
CHI2_DRAWS = 20_000  # S: draft tuples per χ² test (--draws)
CHI2_BINS = 30  # at most this many top-p tokens get a bin of their own, plus one "rest" bin
CHI2_SECONDS = 30.0  # a χ² test stops drawing after this long and tests the draws it made
CHI2_CELLS = 4_000_000  # draft tuples per batch × V: bounds the (B, V) conditionals in memory
PAIRS = 200  # default pairs per grid point (issue 3: at least 200 realistic pairs per point)
BATCH = 16  # contexts per call for the amortised torch row
RNG = np.random.default_rng(1)


def fold(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The drafted tokens plus one token holding all target mass q never drafts."""
    keep = q > 0
    return np.append(p[keep], p[~keep].sum()), np.append(q[keep], 0.0)


ONLY = None  # --only: a substring of the method names to run


def methods():
    out = {
        "LP (HiGHS)": lambda pb, d: gr.solve(_folded(pb), method="lp", backend="highs"),
        "LP (POT ot.emd)": lambda pb, d: gr.solve(_folded(pb), method="lp", backend="pot"),
        "max-flow": lambda pb, d: gr.solve(_folded(pb), method="maxflow"),
        "opt. max-flow": lambda pb, d: gr.solve(_folded(pb), method="opt_maxflow"),
    }
    try:
        import globalres.convex  # noqa: F401

        for tau in (1e-3, 1e-4):
            # fallback=None: the success column is GR's own (the paper's Table 1), not its fallback's
            out[f"GR τ={tau:g}"] = lambda pb, d, tau=tau: gr.solve(_folded(pb), method="global_resolution",
                                                                  tau=tau, fallback=None)
    except ImportError:
        pass
    out["exact (numpy)"] = numpy_step
    out["exact (numpy, observed system only)"] = observed_step
    return out


def numpy_step(pb, drafts):
    """One token with the numpy path: the full solve, then a draw from π(·|ω) of the observed tuple."""
    plan = gr.solve(pb, method="exact")
    if plan.success:
        plan.sample(drafts, RNG)
    return plan


def observed_step(pb, drafts):
    """One token with `exact.sample`: only the observed tuple's system is fitted (none for a singleton
    segment), then a draw from π(·|ω). A certified failure raises SolverError (counted as a failure)."""
    try:
        token, info = exact.sample(pb, drafts, RNG)
    except gr.SolverError:
        return SimpleNamespace(success=False, info={})
    return SimpleNamespace(success=True, acceptance=info["alpha"], info=info, problem=pb)


def _folded(pb):
    p, q = fold(pb.p, pb.q)
    return gr.Problem(p, q, pb.n)


def torch_step(pb, drafts, device):
    """One token with the fast path: fit the observed tuple's system, then sample."""
    P = torch.tensor(pb.p, device=device)[None]
    Q = torch.tensor(pb.q, device=device)[None]
    d = torch.tensor(drafts, device=device)[None]
    result = solve_batch(P, Q, pb.n, drafts=d)
    sample_batch(result, d)
    if device != "cpu":
        torch.cuda.synchronize()
    return result


def run_point(k, n, V, count, skip_after, draws=CHI2_DRAWS):
    """(rows per method, number of real pairs among the point's `count`)."""
    rows = {}
    raw, n_real = labelled_pairs(V, k, count, seed=1000 * k + n)
    problems = [gr.Problem(p, q, n) for p, q in raw]
    enumerable = (problems[0].q > 0).sum() ** n <= AUDIT_TUPLES
    rng = np.random.default_rng(0)
    alphas = [gr.alpha_star(pb) for pb in problems]
    drafts = [pb.sample_drafts(rng) for pb in problems]
    for name, solver in methods().items():
        if ONLY and ONLY not in name:
            continue
        if name in skip_after:
            rows[name] = dict(note=f"skipped: {skip_after[name]}")
            continue
        times, ok, gaps, audits = [], 0, [], []  # audited after the timing loop: enumerating 10⁴ tuples × V
        note = ""                                  # between timed solves slowed them up to 8×
        for i, (pb, alpha, d) in enumerate(zip(problems, alphas, drafts)):
            start = time.perf_counter()
            try:
                plan = solver(pb, d)
            except gr.InputError as err:
                note = "skipped: the solver refuses this size (" + str(err).split(" variables")[0].split("= ")[-1] + \
                    " LP variables)"
                break
            seconds = time.perf_counter() - start
            times.append(seconds)
            if plan.success:
                ok += 1
                gaps.append(max(abs(plan.acceptance - alpha), plan.info.get("certified_gap", 0.0)))
                audits.append(plan)
            if seconds > MINUTE:
                note = f"stopped after one solve of {seconds:.0f} s"
                skip_after[name] = f"over a minute at (k={k}, n={n})"
                break
            if sum(times) > MINUTE and i + 1 < len(problems):
                note = _budget_note(len(times), len(problems))
                break
        rows[name] = _row(times, ok, gaps, [_l1(plan) for plan in audits], _join(note, _by_kind(times, n_real)))
        del audits
    if not enumerable and "exact (numpy)" in rows and rows["exact (numpy)"].get("pairs"):
        rows["exact (numpy)"]["chi2"] = chi2_numpy(problems[0], draws)
        rows["exact (numpy)"]["note"] = _join("L1: certificate", rows["exact (numpy)"]["note"])
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        times, ok, gaps, l1s = [], 0, [], []
        note = "L1 and gap: certified"
        torch_step(problems[0], drafts[0], device)  # warm-up
        for i, (pb, alpha, d) in enumerate(zip(problems, alphas, drafts)):
            start = time.perf_counter()
            result = torch_step(pb, d, device)
            times.append(time.perf_counter() - start)
            if bool(result.success[0]):
                ok += 1
                gaps.append(max(abs(float(result.alpha[0]) - alpha), float(result.certified_gap[0])))
                l1s.append(float(result.certified_l1[0]))
            if sum(times) > MINUTE and i + 1 < len(problems):
                note = _join(note, _budget_note(len(times), len(problems)))
                break
        name = f"exact (torch {device})"
        rows[name] = _row(times, ok, gaps, l1s, _join(note, _by_kind(times, n_real)))
        if not enumerable and (ONLY is None or ONLY in name):
            rows[name]["chi2"] = chi2_torch(problems[0], draws, device)
        if k <= 1000:
            rows[f"exact (torch {device}, batch of {BATCH})"] = batch_row(problems, alphas, device, rng)
    base = rows["exact (torch cpu)"]["median_ms"]
    for row in rows.values():
        if row.get("median_ms") is not None:
            row["ratio"] = row["median_ms"] / base
        chi = row.get("chi2")
        if chi:
            row["note"] = _join(row.get("note", ""), chi["note"])
    return rows, n_real


def _budget_note(done, total):
    return f"stopped after {done} of {total} pairs ({MINUTE:.0f} s budget)"


def _join(*parts):
    return "; ".join(p for p in parts if p)


# ------------------------------------------------------------------ Monte Carlo χ² test of the output law
def chi2_numpy(pb, draws=CHI2_DRAWS, seconds=CHI2_SECONDS):
    """χ² test of the output law of `gr.solve(pb, method="exact")` (not timed): draft tuples i.i.d. from q,
    π(·|ω) from `plan.conditionals` in batches of B tuples, one output per tuple (its bin drawn from
    π(·|ω) binned, the same law as drawing the token and binning it)."""
    plan = gr.solve(pb, method="exact")
    if not plan.success:
        return dict(p_value=None, note=f"χ²: not run (solve failed: {plan.message.split('. ')[0][:80]})")
    rng = np.random.default_rng(7)
    top = np.argsort(-pb.p, kind="stable")[:CHI2_BINS]
    worst = dict(negative=0.0, row_sum=0.0)

    def draw(x):
        pi = plan.conditionals(x)  # (B, V)
        worst["negative"] = max(worst["negative"], float(-pi.min()))
        total = pi.sum(axis=1)
        worst["row_sum"] = max(worst["row_sum"], float(np.abs(total - 1.0).max()))
        binned = np.column_stack([pi[:, top], total - pi[:, top].sum(axis=1)]) / total[:, None]
        cumulative = binned.cumsum(axis=1)
        u = rng.random(len(x))[:, None] * cumulative[:, -1:]
        return np.minimum((u >= cumulative).sum(axis=1), len(top))

    out = _chi2(pb, top, draw, rng, draws, seconds)
    out.update(max_negative=worst["negative"], max_row_sum_error=worst["row_sum"])
    return out


def chi2_torch(pb, draws=CHI2_DRAWS, device="cpu", seconds=CHI2_SECONDS):
    """χ² test of the torch path (not timed): `solve_batch` with every system fitted (no drafts) on the
    pair, its row repeated B times, and `sample_batch` drawing the output tokens of B draft tuples."""
    P = torch.tensor(pb.p, device=device)[None]
    Q = torch.tensor(pb.q, device=device)[None]
    result = solve_batch(P, Q, pb.n)
    if not bool(result.success[0]):
        return dict(p_value=None, note="χ²: not run (solve_batch failed)")
    rng = np.random.default_rng(7)
    generator = torch.Generator(device=device).manual_seed(7)
    top = np.argsort(-pb.p, kind="stable")[:CHI2_BINS]
    bin_of = torch.full((pb.V,), len(top), dtype=torch.int64, device=device)
    bin_of[torch.tensor(top, device=device)] = torch.arange(len(top), device=device)
    expanded = {}

    def draw(x):
        B = len(x)
        if B not in expanded:  # the one context repeated B times (views, no copies)
            expanded[B] = dataclasses.replace(result, **{
                f.name: getattr(result, f.name).expand(B, *getattr(result, f.name).shape[1:])
                for f in dataclasses.fields(result)
                if torch.is_tensor(getattr(result, f.name)) and getattr(result, f.name).ndim >= 1})
        tokens = sample_batch(expanded[B], torch.tensor(x, device=device), generator)
        return bin_of[tokens].cpu().numpy()

    return _chi2(pb, top, draw, rng, draws, seconds)


def _chi2(pb, top, draw, rng, draws, seconds):
    """Draw up to `draws` outputs (bins 0..len(top)−1 for the top tokens, len(top) for the rest) in batches,
    stop after `seconds`, merge bins so that every expected count is ≥ 5, and run the χ² test."""
    batch = int(np.clip(CHI2_CELLS // pb.V, 16, 500))
    start = time.perf_counter()
    outputs = []
    done = 0
    while done < draws and time.perf_counter() - start < seconds:
        size = min(batch, draws - done)
        outputs.append(draw(pb.sample_drafts(rng, size=size)))
        done += size
    elapsed = time.perf_counter() - start
    counts = np.bincount(np.concatenate(outputs), minlength=len(top) + 1)
    expected = done * pb.p[top]
    m = int((expected >= 5).sum())  # top is sorted by p: the bins kept are a prefix
    while m > 0 and done * (1.0 - pb.p[top[:m]].sum()) < 5:
        m -= 1  # the rest bin needs an expected count ≥ 5 too
    stopped = f", stopped at {done} of {draws} draws ({seconds:g} s)" if done < draws else ""
    info = dict(draws=done, bins=m + 1, seconds=elapsed, batch=batch, pair=0)
    if m == 0:
        return dict(p_value=None, statistic=None, **info, note=f"χ²: not run (p too concentrated){stopped}")
    observed = np.append(counts[:m], counts[m:].sum())
    exp = done * np.append(pb.p[top[:m]], 1.0 - pb.p[top[:m]].sum())
    exp *= done / exp.sum()  # chisquare wants equal totals; p sums to 1 up to rounding
    test = chisquare(observed, exp)
    return dict(p_value=float(test.pvalue), statistic=float(test.statistic), **info,
                note=f"χ² p: {done} draws on pair 1, {m + 1} bins{stopped}")


def batch_row(problems, alphas, device, rng):
    """Per-context ms of `solve_batch` + `sample_batch` on BATCH contexts (the pairs, repeated) at once."""
    picks = [i % len(problems) for i in range(BATCH)]
    P = torch.tensor(np.stack([problems[i].p for i in picks]), device=device)
    Q = torch.tensor(np.stack([problems[i].q for i in picks]), device=device)
    times, results = [], []
    for _ in range(3):
        d = torch.tensor(np.stack([problems[i].sample_drafts(rng) for i in picks]), device=device)
        start = time.perf_counter()
        result = solve_batch(P, Q, problems[0].n, drafts=d)
        sample_batch(result, d)
        if device != "cpu":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) / BATCH)
        results.append(result)
    ok = [bool(s) for r in results for s in r.success]
    gaps = [max(abs(float(r.alpha[j]) - alphas[i]), float(r.certified_gap[j])) for r in results
            for j, i in enumerate(picks) if bool(r.success[j])]
    l1s = [float(x) for r in results for x, s in zip(r.certified_l1, r.success) if bool(s)]
    used = len(set(picks))
    row = _row(times, sum(ok) / len(ok) * len(times), gaps, l1s,
               f"per context, {BATCH} per call, {len(times)} calls over {used} pairs; certified")
    row.update(pairs=used, calls=len(times))
    return row


def _l1(plan):
    pb = plan.problem
    if hasattr(plan, "audit") and (pb.q > 0).sum() ** pb.n <= AUDIT_TUPLES:
        return plan.audit().l1
    return plan.info.get("certified_l1")


def _by_kind(times, n_real):
    """Where a point mixes real and synthetic pairs (real first), their medians apart: "" otherwise."""
    if not 0 < n_real < len(times):
        return ""
    real, synthetic = 1e3 * np.median(times[:n_real]), 1e3 * np.median(times[n_real:])
    return f"median {real:.2f} ms over the {n_real} real pairs, {synthetic:.2f} over the {len(times) - n_real} " \
        "synthetic"


def _row(times, ok, gaps, l1s, note):
    if not times:
        return dict(note=note)
    ms = 1e3 * np.asarray(times)
    l1s = [x for x in l1s if x is not None]
    return dict(median_ms=float(np.median(ms)), p95_ms=float(np.percentile(ms, 95)), success=ok / len(times),
                max_gap=max(gaps) if gaps else None, max_l1=max(l1s) if l1s else None, pairs=len(times),
                note=note)


def table(results):
    lines = ["| (k, n, V) | method | pairs | median ms | p95 ms | success | gap to α* | L1 | χ² p | × exact torch CPU "
             "| note |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda x, f: "–" if x is None else format(x, f)  # noqa: E731
    for point, rows in results.items():
        for name, r in rows.items():
            lines.append(f"| {point} | {name} | {fmt(r.get('pairs'), 'd')} | {fmt(r.get('median_ms'), '.2f')} | "
                         f"{fmt(r.get('p95_ms'), '.2f')} | {fmt(r.get('success'), '.0%')} | "
                         f"{fmt(r.get('max_gap'), '.1e')} | {fmt(r.get('max_l1'), '.1e')} | "
                         f"{fmt((r.get('chi2') or {}).get('p_value'), '.2g')} | {fmt(r.get('ratio'), '.2f')} | "
                         f"{r.get('note', '')} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 pairs per grid point")
    parser.add_argument("--pairs", type=int, default=None,
                        help=f"pairs per grid point (default {PAIRS}, 2 with --quick)")
    parser.add_argument("--draws", type=int, default=CHI2_DRAWS,
                        help=f"draft tuples per χ² test (default {CHI2_DRAWS})")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--only", default=None, help="run only the methods whose name contains this (e.g. GR)")
    parser.add_argument("--point", action="append", default=None, metavar="K,N,V",
                        help="run only this grid point (repeatable), e.g. --point 100,2,32000")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_solvers.json")
    parser.add_argument("--free-memory", action="store_true",
                        help="let malloc return freed memory to the OS (default: keep it, exact.keep_freed_memory)")
    args = parser.parse_args()
    global ONLY
    ONLY = args.only
    torch.set_num_threads(args.threads)
    kept = not args.free_memory and exact.keep_freed_memory()
    count = args.pairs or (2 if args.quick else PAIRS)
    results, real, skip_after = {}, {}, {}
    grid = [tuple(int(x) for x in point.split(",")) for point in args.point] if args.point else GRID
    for k, n, V in grid:
        point = f"({k}, {n}, {V})"
        results[point], real[point] = run_point(k, n, V, count, skip_after, args.draws)
        print(f"done (k={k}, n={n}, V={V})", file=sys.stderr, flush=True)
    machine = f"{cpu()}, {torch.get_num_threads()} torch thread(s), " \
              f"torch {torch.__version__}, numpy {np.__version__}, " \
              f"freed memory {'kept (exact.keep_freed_memory)' if kept else 'returned to the OS'}, " \
              f"compressed start in {'C (globalres/pseudo.c)' if exact.has_c_start() else 'numpy (pseudo.c not built)'}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(dict(machine=machine, pairs=count, real_pairs=real, budget_s=MINUTE,
                                        chi2_draws=args.draws, results=results), indent=1))
    with_real = [f"{real[p]} at {p}" for p in results if real[p]]
    print(f"Machine: {machine}; {count} pairs per point, real SmolLM2 pairs first: "
          f"{', '.join(with_real) if with_real else 'none'} (the rest synthetic); "
          f"{MINUTE:.0f} s budget per method and point.\n")
    print(table(results))


if __name__ == "__main__":
    main()
