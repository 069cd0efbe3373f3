"""Batched throughput of the exact torch solver (GitHub issue 3's GPU target), contexts per second.

    .venv/bin/python bench/bench_batch.py                   # cpu (B = 16, 64) and cuda (B = 16 … 4096) if present
    .venv/bin/python bench/bench_batch.py --device cuda --float32
    .venv/bin/python bench/bench_batch.py --batch 4 --k 100 --n 2 --repeats 1 --out /tmp/bb.json   # smoke test

Issue 3's target: "On a GPU, when one is lent to a session: batched throughput of at least 10,000 contexts
per second at k = 1000, n = 8".

Inputs (bench/pairs.py): min(B, 64) distinct Zipf-like synthetic pairs over V = 32000 tokens with the draft
truncated to its top k (real SmolLM2 pairs only where V = 49152), repeated to B contexts, stacked into (B, V)
tensors on the device. Per call, one draft tuple per context is drawn i.i.d. from its q
(`torch.multinomial(Q, n, replacement=True)`, outside the timed region).

What one call costs: `solve_batch(P, Q, n, drafts=d, device=, dtype=)` (only the system each observed tuple
needs is fitted) plus `sample_batch(result, d)`, end to end, with `torch.cuda.synchronize()` before and
after on CUDA. One warm-up call, then `--repeats` timed calls (fresh draft tuples each); the table reports the
median seconds per call, contexts per second (B / median) and ms per context, the share of contexts with
`result.success`, and the worst certified L1 and acceptance gap among the successes.

float32 rows (`--float32`) run with tol = `--tol32` (default 1e-4; float32 fits, certified in float64, reach
about 1e-9 to 1e-6, see bench/README.md); float64 rows with the solver's default tol = 1e-10.

A (device, dtype) stops growing B once a call took over `--max-seconds` (default 60) or a batch ran out of
GPU memory (the cell is noted "out of memory"); the larger batch sizes are listed as skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import cpu  # noqa: E402
from pairs import pairs  # noqa: E402

from globalres import exact  # noqa: E402
from globalres.exact import sample_batch, solve_batch  # noqa: E402

TARGET = 10_000  # contexts per second (issue 3, on a GPU)
TARGET_K, TARGET_N = 1000, 8
DISTINCT = 64  # at most this many distinct pairs per batch (repeated up to B)
BATCH_CUDA = [16, 64, 256, 1024, 4096]
BATCH_CPU = [16, 64]
DTYPES = {"float64": torch.float64, "float32": torch.float32}


def contexts(V, k, B, device, seed=0):
    """(P, Q) of shape (B, V) on the device, float64: min(B, 64) distinct pairs, repeated."""
    raw = pairs(V, k, min(B, DISTINCT), seed=seed)
    P0 = torch.tensor(np.stack([p for p, _ in raw]), dtype=torch.float64, device=device)
    Q0 = torch.tensor(np.stack([q for _, q in raw]), dtype=torch.float64, device=device)
    picks = torch.arange(B, device=device) % len(raw)
    return P0[picks], Q0[picks]


def synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def one_call(P, Q, n, drafts, device, dtype, tol):
    """Seconds of one `solve_batch` + `sample_batch`, and the result."""
    synchronize(device)
    start = time.perf_counter()
    result = solve_batch(P, Q, n, drafts=drafts, device=device, dtype=dtype, tol=tol)
    sample_batch(result, drafts)
    synchronize(device)
    return time.perf_counter() - start, result


def measure(P, Q, n, device, dtype, tol, repeats, generator):
    """One warm-up call, then `repeats` timed calls with fresh draft tuples: the row's statistics."""
    B = P.shape[0]
    draw = lambda: torch.multinomial(Q, n, replacement=True, generator=generator)  # noqa: E731
    one_call(P, Q, n, draw(), device, dtype, tol)  # warm-up
    times, ok, l1s, gaps = [], 0, [], []
    for _ in range(repeats):
        seconds, result = one_call(P, Q, n, draw(), device, dtype, tol)
        times.append(seconds)
        success = result.success.cpu()
        ok += int(success.sum())
        if bool(success.any()):
            l1s.append(float(result.certified_l1.cpu()[success].max()))
            gaps.append(float(result.certified_gap.cpu()[success].max()))
    median = float(np.median(times))
    return dict(seconds=median, contexts_per_s=B / median, ms_per_context=1e3 * median / B,
                success=ok / (B * repeats), max_l1=max(l1s) if l1s else None,
                max_gap=max(gaps) if gaps else None, times=times, note="")


def run_cell(device, dtype_name, B, args, generator):
    """The row of one (device, dtype, B), or a note when the batch does not fit in GPU memory."""
    tol = args.tol32 if dtype_name == "float32" else 1e-10
    try:
        P, Q = contexts(args.V, args.k, B, device, seed=args.seed)
        row = measure(P, Q, args.n, device, DTYPES[dtype_name], tol, args.repeats, generator)
    except torch.cuda.OutOfMemoryError:
        P = Q = None  # drop the batch's tensors before emptying the cache
        torch.cuda.empty_cache()
        return dict(note="out of memory")
    row["tol"] = tol
    return row


def run(devices, dtypes, batches, args):
    """Rows keyed by (device, dtype, B); a (device, dtype) stops at the first B over the time limit or OOM."""
    rows = []
    for device in devices:
        generator = torch.Generator(device=device).manual_seed(args.seed)
        for dtype_name in dtypes:
            stop = ""
            for B in batches[device]:
                cell = dict(device=device, dtype=dtype_name, B=B)
                if stop:
                    rows.append(dict(cell, note=f"skipped: {stop}"))
                    continue
                row = run_cell(device, dtype_name, B, args, generator)
                rows.append(dict(cell, **row))
                if row["note"] == "out of memory":
                    stop = f"out of memory at B = {B}"
                elif row["seconds"] > args.max_seconds:
                    stop = f"B = {B} took {row['seconds']:.0f} s per call (over {args.max_seconds:g} s)"
                print(f"done {device} {dtype_name} B={B}", file=sys.stderr, flush=True)
                if device.startswith("cuda"):
                    torch.cuda.empty_cache()
    return rows


def verdicts(rows, devices, args):
    """Per device: the best float64 rate with every context certified, against the 10,000 contexts/s target."""
    out = {}
    for device in devices:
        full = [r for r in rows if r["device"] == device and r["dtype"] == "float64" and r.get("success") == 1.0]
        best = max(full, key=lambda r: r["contexts_per_s"], default=None)
        if (args.k, args.n, args.V) != (TARGET_K, TARGET_N, 32000):
            text = f"not assessed: this run is at (k={args.k}, n={args.n}, V={args.V}), the target is at " \
                   f"(k={TARGET_K}, n={TARGET_N}, V=32000)"
        elif best is None:
            text = "not met: no float64 batch had every context certified"
        else:
            met = "met" if best["contexts_per_s"] >= TARGET else "not met"
            text = f"{met}: best {best['contexts_per_s']:,.0f} contexts/s at B = {best['B']} (float64, 100% certified)"
        f32 = [r for r in rows if r["device"] == device and r["dtype"] == "float32" and r.get("contexts_per_s")]
        if f32:
            b = max(f32, key=lambda r: r["contexts_per_s"])
            text += f"; float32 best {b['contexts_per_s']:,.0f} contexts/s at B = {b['B']} " \
                    f"({b['success']:.0%} certified at tol {b['tol']:g})"
        out[device] = text
    return out


def table(rows):
    lines = ["| device | dtype | B | median s per call | contexts/s | ms per context | success | worst L1 | worst gap "
             "| note |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda x, f: "–" if x is None else format(x, f)  # noqa: E731
    for r in rows:
        lines.append(f"| {r['device']} | {r['dtype']} | {r['B']} | {fmt(r.get('seconds'), '.4f')} | "
                     f"{fmt(r.get('contexts_per_s'), ',.0f')} | {fmt(r.get('ms_per_context'), '.3f')} | "
                     f"{fmt(r.get('success'), '.0%')} | {fmt(r.get('max_l1'), '.1e')} | "
                     f"{fmt(r.get('max_gap'), '.1e')} | {r.get('note', '')} |")
    return "\n".join(lines)


def machine(devices, kept):
    text = f"{cpu()}, {torch.get_num_threads()} torch CPU thread(s), " \
           f"torch {torch.__version__}, freed memory {'kept' if kept else 'returned to the OS'}"
    for device in devices:
        if device.startswith("cuda"):
            text += f", {device}: {torch.cuda.get_device_name(device)}"
    return text


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=None,
                        help=f"batch sizes (default {BATCH_CUDA} on cuda, {BATCH_CPU} on cpu)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cpu, and cuda when available)")
    parser.add_argument("--float32", action="store_true", help="add float32 rows (tol --tol32)")
    parser.add_argument("--tol32", type=float, default=1e-4, help="tol of the float32 rows (default 1e-4)")
    parser.add_argument("--V", type=int, default=32000, help="vocabulary size (default 32000)")
    parser.add_argument("--k", type=int, default=TARGET_K, help=f"draft top-k (default {TARGET_K})")
    parser.add_argument("--n", type=int, default=TARGET_N, help=f"drafts per context (default {TARGET_N})")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per cell (default 3; median)")
    parser.add_argument("--max-seconds", type=float, default=60.0,
                        help="skip larger B once a call takes longer than this (default 60)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pairs and the draft tuples")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_batch.json")
    parser.add_argument("--free-memory", action="store_true",
                        help="let malloc return freed memory to the OS (default: keep it, exact.keep_freed_memory)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.kept = not args.free_memory and exact.keep_freed_memory()
    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    batches = {d: args.batch or (BATCH_CPU if d == "cpu" else BATCH_CUDA) for d in devices}
    dtypes = ["float64"] + (["float32"] if args.float32 else [])
    rows = run(devices, dtypes, batches, args)
    verdict = verdicts(rows, devices, args)
    about = machine(devices, args.kept)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(dict(machine=about, V=args.V, k=args.k, n=args.n, repeats=args.repeats,
                                        distinct_pairs=DISTINCT, max_seconds=args.max_seconds, tol32=args.tol32,
                                        target_contexts_per_s=TARGET, target=verdict, rows=rows), indent=1))
    print(f"Machine: {about}; V = {args.V}, k = {args.k}, n = {args.n}, median of {args.repeats} call(s) "
          f"after one warm-up, at most {DISTINCT} distinct pairs per batch.\n")
    print(table(rows))
    print()
    for device, text in verdict.items():
        print(f"Target ≥ {TARGET:,} contexts/s at (k={TARGET_K}, n={TARGET_N}) on {device}: {text}")


if __name__ == "__main__":
    main()
