"""Acceptance on the bundled real SmolLM2 pairs against the draft's top-k and the number of drafts n.

For every pair of assets/smollm2_pairs.npz, k ∈ {1, 10, 100, 1000, V} and n ∈ {1, 2, 4, 8, 16}:
the optimum α* (globalres.alpha_star on the full vocabulary) and, for each verifier in
globalres.SOLVERS, the acceptance of its plan on the folded problem (never-drafted tokens folded into
one, which changes neither α nor losslessness: globalres.realdata.fold_undrafted) and the time its
solve takes. Writes a markdown table, a JSON file and a plotly figure like Fig. 1 of Thomas & Pal
(arXiv 2511.15898), plus the best acceptance reachable within a per-token time budget (their
Table 2 reads 85.65 % at 10 ms and 90.04 % at 100 ms for GR on Llama-3 70B/8B).

    .venv/bin/python bench/acceptance_curves.py [--pairs 128] [--max-seconds 2] [--out bench/results]

A cell (method, k, n) whose solves fail (e.g. InputError: too large for the method) or take longer
than --max-seconds per pair is reported, and every larger k and n of that method is skipped.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import globalres as gr  # noqa: E402
from globalres.realdata import load_bundled  # noqa: E402

KS = (1, 10, 100, 1000, None)  # None: no truncation, k = V
NS = (1, 2, 4, 8, 16)
BUDGETS_MS = (1.0, 10.0, 100.0)


def k_name(k, V):
    return f"V={V}" if k is None else str(k)


def optimum(bundle, pairs):
    """α* for every (k, n) and pair: {(k, n): array over pairs}."""
    return {(k, n): np.array([gr.alpha_star(bundle.problem(i, n, top_k=k)) for i in pairs]) for k in KS for n in NS}


def _cell(bundle, pairs, method, k, n, conn):
    """Solve one (k, n) cell in a child process; send (acceptances, mean seconds) or an error string."""
    try:
        acc, secs = [], []
        for i in pairs:
            pb = bundle.problem(i, n, top_k=k, fold=True)
            t0 = time.perf_counter()
            plan = gr.solve(pb, method=method)
            secs.append(time.perf_counter() - t0)
            if not plan.success:
                raise RuntimeError(plan.message)
            acc.append(plan.acceptance)
        conn.send((np.array(acc), float(np.mean(secs))))
    except Exception as err:  # noqa: BLE001 - any failure of a solver is a table entry, not a crash
        conn.send(f"{type(err).__name__}: {str(err)[:80]}")


def run_method(bundle, pairs, method, max_seconds):
    """{(k, n): (acceptances over pairs, mean seconds per solve)} or a reason string where skipped.

    Each cell runs in a forked process killed after max_seconds per pair, so one huge solve cannot
    stall the run; a cell that fails or times out skips every larger k and n (cost grows with both).
    """
    ctx = mp.get_context("fork")
    out, dead = {}, set()
    for n in NS:
        for k in KS:
            ki = KS.index(k)
            if any(ki >= kd and n >= nd for kd, nd in dead):
                out[(k, n)] = "skipped (a smaller cell failed or timed out)"
                continue
            parent, child = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_cell, args=(bundle, pairs, method, k, n, child))
            proc.start()
            r = parent.recv() if parent.poll(max_seconds * len(pairs) + 5) else f"timed out (> {max_seconds} s per solve)"
            proc.kill()
            proc.join()
            if isinstance(r, str):
                dead.add((ki, n))
                r = f"k={k_name(k, bundle.V)}: {r}"
            out[(k, n)] = r
    return out


def table(bundle, opt, results):
    V = bundle.V
    lines = ["| method | n | " + " | ".join(f"k={k_name(k, V)}" for k in KS) + " |",
             "|---|---|" + "---|" * len(KS)]
    for n in NS:
        lines.append(f"| α* | {n} | " + " | ".join(f"{opt[(k, n)].mean():.3f}" for k in KS) + " |")
    for method, res in results.items():
        for n in NS:
            cells = []
            for k in KS:
                r = res[(k, n)]
                cells.append("—" if isinstance(r, str) else f"{r[0].mean():.3f} ({r[1] * 1e3:.1f} ms)")
            lines.append(f"| {method} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def budget_table(bundle, results):
    lines = ["| budget per token | best acceptance | method | k | n | solve time |", "|---|---|---|---|---|---|"]
    for budget in BUDGETS_MS:
        best = None
        for method, res in results.items():
            for (k, n), r in res.items():
                if isinstance(r, str) or r[1] * 1e3 > budget:
                    continue
                if best is None or r[0].mean() > best[0]:
                    best = (r[0].mean(), method, k_name(k, bundle.V), n, r[1] * 1e3)
        lines.append(f"| {budget:g} ms | " + ("none fits |  |  |  |  |" if best is None else
                     f"{best[0]:.3f} | {best[1]} | {best[2]} | {best[3]} | {best[4]:.2f} ms |"))
    return "\n".join(lines)


def figure(bundle, opt, results):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    x = [k if k is not None else bundle.V for k in KS]
    names = ["α* (optimum)"] + list(results)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, shared_yaxes=True)
    for col, name in enumerate(names, start=1):
        for n in NS:
            if name.startswith("α*"):
                y = [opt[(k, n)].mean() for k in KS]
            else:
                y = [None if isinstance(r := results[name][(k, n)], str) else r[0].mean() for k in KS]
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=f"n={n}", legendgroup=str(n),
                                     showlegend=col == 1), row=1, col=col)
        fig.update_xaxes(type="log", title_text="draft top-k", row=1, col=col)
    fig.update_yaxes(title_text="acceptance (mean over bundled pairs)", row=1, col=1)
    fig.update_layout(title="SmolLM2-135M target, early-exit draft: acceptance vs top-k and n", height=420,
                      width=max(500, 330 * len(names)))
    return fig


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=None, help="use the first N pairs (default: all)")
    ap.add_argument("--methods", nargs="*", default=None, help="default: every method in globalres.SOLVERS")
    ap.add_argument("--max-seconds", type=float, default=2.0)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()
    bundle = load_bundled()
    pairs = list(range(len(bundle) if args.pairs is None else min(args.pairs, len(bundle))))
    t0 = time.time()
    opt = optimum(bundle, pairs)
    results = {}
    for method in args.methods or list(gr.SOLVERS):
        results[method] = run_method(bundle, pairs, method, args.max_seconds)
        print(f"{method}: done ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    skipped = [f"- {m} n={n} {r}" for m, res in results.items() for (k, n), r in res.items()
               if isinstance(r, str) and r.startswith("k=")]
    report = (f"# Acceptance on {len(pairs)} bundled SmolLM2 pairs ({bundle.meta.get('model')}, draft: exit "
              f"{bundle.meta.get('draft_exit_layer')} + adapter)\n\nMean acceptance (mean solve time per token "
              f"on the folded problem).\n\n{table(bundle, opt, results)}\n\n## Best acceptance within a per-token "
              f"time budget\n\n{budget_table(bundle, results)}\n\n## Skipped\n\n" + ("\n".join(skipped) or "none")
              + f"\n\n(total {time.time() - t0:.0f} s)\n")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "acceptance_curves.md").write_text(report)
    serial = {"alpha_star": {f"{k_name(k, bundle.V)},{n}": v.tolist() for (k, n), v in opt.items()},
              "methods": {m: {f"{k_name(k, bundle.V)},{n}": (r if isinstance(r, str) else
                                                              {"acceptance": r[0].tolist(), "seconds": r[1]})
                              for (k, n), r in res.items()} for m, res in results.items()}}
    (args.out / "acceptance_curves.json").write_text(json.dumps(serial))
    figure(bundle, opt, results).write_html(args.out / "acceptance_curves.html", include_plotlyjs="cdn")
    print(report)


if __name__ == "__main__":
    main()
