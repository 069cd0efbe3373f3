"""Acceptance of every baseline verifier against the optimum α* of its draft law (GitHub issue 4).

    .venv/bin/python bench/bench_verifiers.py            # 20 pairs per (top-k, n), V = 1000
    .venv/bin/python bench/bench_verifiers.py --pairs 5  # quicker

Pairs come from bench/pairs.py (bundled real pairs when their V matches, else Zipf-like synthetic ones:
target Zipf over V tokens, draft = sharpened target logits + noise, top-k truncated). The tokens the
draft never proposes (q = 0) are folded into one token: they only ever receive residual mass, so no
verifier's acceptance and no α* changes.

Prints, per (top-k, n), a markdown table: mean acceptance of each verifier, the mean α* of the law it
needs, the mean gap, and the share of instances where Khisti et al.'s published ordering
Optimal ≥ IS ≥ SpecTr (K-SEQ) ≥ SpecInfer (RRS) holds (reported, not asserted).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pairs import pairs  # noqa: E402

import globalres as gr  # noqa: E402

METHODS = [  # name, draft law, n it needs (None: any)
    ("nss", "iid", None), ("naive", "iid", None), ("rrs", "iid", None), ("kseq", "iid", None),
    ("khisti_is", "iid", None), ("rrs_wor", "wor", None), ("greedy", "greedy", None), ("spechub", "hub", 2),
]
TOL = 1e-9  # the ordering counts as holding within solver round-off


def fold(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep the drafted tokens, merge the rest into one last token."""
    drafted = q > 0
    return np.append(p[drafted], p[~drafted].sum()), np.append(q[drafted], 0.0)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--V", type=int, default=1000)
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--grid", default="10:2,10:3,10:4,20:2,20:3", help="top-k:n points, comma-separated")
    args = ap.parse_args(argv)
    print(f"V = {args.V}, {args.pairs} pairs per point; acceptance P(output ∈ drafts), mean over pairs\n")
    for point in args.grid.split(","):
        k, n = (int(v) for v in point.split(":"))
        acc = {m: [] for m, _, _ in METHODS}
        opt = {law: [] for law in ("iid", "wor", "greedy", "hub")}
        single = []
        for p, q in pairs(args.V, k, args.pairs):
            base = gr.Problem.from_weights(*fold(p, q), n)
            single.append(np.minimum(base.p, base.q).sum())
            for law in opt:
                opt[law].append(gr.alpha_star(base.with_(law=law)) if law != "hub" or n == 2 else np.nan)
            for m, law, need in METHODS:
                acc[m].append(gr.solve(base.with_(law=law), m).acceptance if need in (None, n) else np.nan)
        a = {m: np.array(v) for m, v in acc.items()}
        order_holds = ((np.array(opt["iid"]) >= a["khisti_is"] - TOL) & (a["khisti_is"] >= a["kseq"] - TOL)
                       & (a["kseq"] >= a["rrs"] - TOL))
        ratio = a["kseq"] / np.array(opt["iid"])
        print(f"### top-k = {k}, n = {n}\n")
        print("| verifier | draft law | acceptance | α* of the law | gap to α* |")
        print("|---|---|---|---|---|")
        print(f"| sps (one draft) | — | {np.mean(single):.4f} | {np.mean(single):.4f} | 0 |")
        for m, law, need in METHODS:
            if need not in (None, n):
                continue
            print(f"| {m} | {law} | {np.mean(a[m]):.4f} | {np.mean(opt[law]):.4f} | "
                  f"{np.mean(np.array(opt[law]) - a[m]):.4f} |")
        print(f"\nOptimal ≥ IS ≥ SpecTr ≥ SpecInfer holds on {order_holds.mean():.0%} of {len(order_holds)} "
              f"instances; K-SEQ / α* min {ratio.min():.4f} (guarantee 1 − (1 − 1/n)ⁿ = "
              f"{1 - (1 - 1 / n) ** n:.4f}).\n")


if __name__ == "__main__":
    main()
