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
# verifiers built for another draft law are run on the same (p, q) with drafts drawn by that law
LAW = {"rrs_wor": "wor", "greedy": "greedy", "spechub": "hub"}


def k_name(k, V):
    return f"V={V}" if k is None else str(k)


def optimum(bundle, pairs, law="iid"):
    """α* of the draft law for every (k, n) and pair: {(k, n): array over pairs, or None where the law
    cannot draw n drafts from the top-k (wor, greedy: fewer than n tokens; hub: n ≠ 2)}.

    The folded problem has the same α* (a never-drafted token is outside H* whatever the law)."""
    out = {}
    for k in KS:
        for n in NS:
            try:
                out[(k, n)] = np.array([gr.alpha_star(bundle.problem(i, n, top_k=k, fold=True, law=law))
                                        for i in pairs])
            except gr.InputError:
                out[(k, n)] = None
    return out


def warm_up(bundle, method):
    """Import the method's module and run it once on a tiny problem, in the parent, before any fork.

    Every cell runs in a freshly forked child; without this, each child imported the solver's module
    (scipy.optimize, networkx, ...: ~0.3 s) inside its first timed solve, which added ~10 ms to the
    mean over 32 pairs of even a closed-form verifier. Children inherit the imported modules.
    """
    for n in (1, 2):
        try:
            gr.solve(bundle.problem(0, n, top_k=10, fold=True, law=LAW.get(method, "iid")), method=method)
        except Exception:  # noqa: BLE001 - wrong n for the method: the other n warms it up
            pass


def _cell(bundle, pairs, method, k, n, conn):
    """Solve one (k, n) cell in a child process; send (acceptances, mean seconds) or an error string.

    Only gr.solve is timed: building and folding the problem, the fork and the pipe are not.
    """
    try:
        acc, secs = [], []
        for i in pairs:
            pb = bundle.problem(i, n, top_k=k, fold=True, law=LAW.get(method, "iid"))
            t0 = time.perf_counter()
            plan = gr.solve(pb, method=method)
            secs.append(time.perf_counter() - t0)
            if not plan.success:
                raise RuntimeError(plan.message)
            acc.append(plan.acceptance)
        conn.send((np.array(acc), float(np.mean(secs)), np.array(secs)))
    except Exception as err:  # noqa: BLE001 - any failure of a solver is a table entry, not a crash
        conn.send(f"{type(err).__name__}: {str(err)[:80]}")


def run_method(bundle, pairs, method, max_seconds):
    """{(k, n): (acceptances, mean seconds per solve, seconds) over pairs} or a reason string where skipped.

    Each cell runs in a forked process killed after max_seconds per pair, so one huge solve cannot
    stall the run; a cell that times out skips every larger k at the same n (cost grows with k; it
    need not grow with n: global_resolution is slowest at n = 1), a cell that fails (too large,
    wrong n for the method) is reported and the others still run.
    """
    ctx = mp.get_context("fork")
    warm_up(bundle, method)
    out, dead = {}, set()
    for n in NS:
        for k in KS:
            ki = KS.index(k)
            if any(ki >= kd and n == nd for kd, nd in dead):
                out[(k, n)] = "skipped (a smaller k timed out)"
                continue
            parent, child = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_cell, args=(bundle, pairs, method, k, n, child))
            proc.start()
            timed_out = f"timed out (> {max_seconds} s per solve)"
            r = parent.recv() if parent.poll(max_seconds * len(pairs) + 5) else timed_out
            proc.kill()
            proc.join()
            if isinstance(r, str):
                if r.startswith("timed out"):
                    dead.add((ki, n))
                r = f"k={k_name(k, bundle.V)}: {r}"
            out[(k, n)] = r
    return out


def _ms(seconds):
    ms = seconds * 1e3
    return f"{ms:.2f} ms" if ms < 10 else f"{ms:.1f} ms"


def _mean(v):
    return "—" if v is None else f"{v.mean():.3f}"


def table(bundle, opt, results):
    """One row per (method, n); a row whose every cell failed (e.g. sps at n > 1) is left out."""
    V = bundle.V
    lines = ["| method | n | " + " | ".join(f"k={k_name(k, V)}" for k in KS) + " |",
             "|---|---|" + "---|" * len(KS)]
    for law, o in opt.items():
        for n in NS:
            if any(o[(k, n)] is not None for k in KS):
                name = "α*" if law == "iid" else f"α* ({law})"
                lines.append(f"| {name} | {n} | " + " | ".join(_mean(o[(k, n)]) for k in KS) + " |")
    for method, res in results.items():
        for n in NS:
            if all(isinstance(res[(k, n)], str) for k in KS):
                continue
            cells = []
            for k in KS:
                r = res[(k, n)]
                cells.append("—" if isinstance(r, str) else f"{r[0].mean():.3f} ({_ms(r[1])})")
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
    import plotly.colors
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    x = [k if k is not None else bundle.V for k in KS]
    colour = dict(zip(NS, plotly.colors.qualitative.Plotly, strict=False))
    names = ["α* (optimum)"] + list(results)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, shared_yaxes=True)
    for col, name in enumerate(names, start=1):
        for n in NS:
            if name.startswith("α*"):
                y = [None if (v := opt["iid"][(k, n)]) is None else v.mean() for k in KS]
            else:
                y = [None if isinstance(r := results[name][(k, n)], str) else r[0].mean() for k in KS]
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=f"n={n}", legendgroup=str(n),
                                     line={"color": colour[n]}, showlegend=col == 1), row=1, col=col)
            law = LAW.get(name)
            if law in opt:  # the optimum of the verifier's own draft law, dotted
                y = [None if (v := opt[law][(k, n)]) is None else v.mean() for k in KS]
                if any(v is not None for v in y):
                    fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=f"α* ({law}) n={n}", legendgroup=str(n),
                                             line={"color": colour[n], "dash": "dot"}, showlegend=False),
                                  row=1, col=col)
        fig.update_xaxes(type="log", title_text="draft top-k", row=1, col=col)
    fig.update_yaxes(title_text="acceptance (mean over bundled pairs)", row=1, col=1)
    fig.update_layout(title="SmolLM2-135M target, early-exit draft: acceptance vs top-k and n "
                            "(dotted: α* of the verifier's own draft law)", height=420,
                      width=max(500, 330 * len(names)))
    return fig


def load_json(path, V):
    """(pairs, max_seconds, total seconds, opt, results) back from a JSON file this script wrote."""
    data = json.loads(Path(path).read_text())
    key = {k_name(k, V): k for k in KS}

    def cell(name):
        k, n = name.rsplit(",", 1)
        return key[k], int(n)

    opt = {law: {cell(c): None if v is None else np.array(v) for c, v in o.items()}
           for law, o in data["alpha_star"].items()}
    results = {m: {cell(c): r if isinstance(r, str) else (np.array(r["acceptance"]), r["seconds"],
                                                          np.array(r["seconds_per_pair"]))
                   for c, r in res.items()} for m, res in data["methods"].items()}
    return data["pairs"], data["max_seconds"], data.get("total_seconds"), opt, results


def skipped_lines(bundle, results):
    """One line per (method, n, kind of failure): the k concerned and the first reason."""
    lines = []
    for m, res in results.items():
        for n in NS:
            why = [(k, res[(k, n)].split(": ", 1)[1]) for k in KS
                   if isinstance(res[(k, n)], str) and res[(k, n)].startswith("k=")]
            for kind in dict.fromkeys(r.split(":")[0] for _, r in why):  # e.g. InputError, timed out
                same = [(k, r) for k, r in why if r.split(":")[0] == kind]
                ks = "every k" if len(same) == len(KS) else "k = " + ", ".join(k_name(k, bundle.V) for k, _ in same)
                lines.append(f"- {m} n={n}, {ks}: {same[0][1]}")
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=None, help="use N pairs evenly spaced over the bundle (default: all)")
    ap.add_argument("--methods", nargs="*", default=None, help="default: every method in globalres.SOLVERS")
    ap.add_argument("--max-seconds", type=float, default=2.0)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--render", type=Path, default=None,
                    help="solve nothing: rewrite the markdown and the figure from this script's JSON file")
    args = ap.parse_args()
    bundle = load_bundled()
    t0 = time.time()
    if args.render:
        pairs, args.max_seconds, total, opt, results = load_json(args.render, bundle.V)
    else:
        # evenly spaced over the bundle, which is stored category by category: the first N would be nearly all prose
        N = len(bundle) if args.pairs is None else min(args.pairs, len(bundle))
        pairs = sorted({int(i) for i in np.linspace(0, len(bundle) - 1, N).round()})
        methods = args.methods or list(gr.SOLVERS)
        opt = {law: optimum(bundle, pairs, law) for law in ["iid"] + sorted({LAW[m] for m in methods if m in LAW})}
        print(f"α*: done ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
        results = {}
        for method in methods:
            results[method] = run_method(bundle, pairs, method, args.max_seconds)
            print(f"{method}: done ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
        total = time.time() - t0
    skipped = skipped_lines(bundle, results)
    laws = ", ".join(f"{m}: {law}" for m, law in LAW.items())
    cats = {c: sum(bundle.category(i) == c for i in pairs) for c in sorted({bundle.category(i) for i in pairs})}
    report = (
        f"# Acceptance on {len(pairs)} bundled SmolLM2 pairs [{', '.join(f'{v} {c}' for c, v in cats.items())}] "
        f"({bundle.meta.get('model')}, draft: exit "
        f"{bundle.meta.get('draft_exit_layer')} + adapter)\n\n"
        f"Mean acceptance over the pairs (mean time of `gr.solve` per token on the folded problem; building the "
        f"problem, the fork and module imports are not counted; a cell is stopped after {args.max_seconds:g} s × "
        f"pairs + 5 s; one run on a shared 2-vCPU machine, so times are noisy). "
        f"rrs_wor, greedy and spechub draw their drafts by their own law ({laws}): compare them with the α* row "
        f"of that law; the plain α* rows are for i.i.d. drafts.\n\n{table(bundle, opt, results)}\n\n"
        "## Best acceptance within a per-token time budget\n\nOver the grid above (k ∈ {1, 10, 100, 1000, V}, n ≤ 16); "
        "solve time only: drafting and the target call are not counted.\n\n"
        f"{budget_table(bundle, results)}\n\n## Skipped\n\n" + ("\n".join(skipped) or "none")
        + ("" if total is None else f"\n\n(total {total:.0f} s)") + "\n")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "acceptance_curves.md").write_text(report)
    serial = {"alpha_star": {law: {f"{k_name(k, bundle.V)},{n}": None if v is None else v.tolist()
                                   for (k, n), v in o.items()} for law, o in opt.items()},
              "pairs": pairs, "max_seconds": args.max_seconds, "total_seconds": total,
              "methods": {m: {f"{k_name(k, bundle.V)},{n}": (r if isinstance(r, str) else
                                                              {"acceptance": r[0].tolist(), "seconds": r[1],
                                                               "seconds_per_pair": r[2].tolist()})
                              for (k, n), r in res.items()} for m, res in results.items()}}
    (args.out / "acceptance_curves.json").write_text(json.dumps(serial))
    figure(bundle, opt, results).write_html(args.out / "acceptance_curves.html", include_plotlyjs="cdn")
    print(report)


if __name__ == "__main__":
    main()
