"""Train the early-exit adapters of the SmolLM2 self-speculative draft (globalres.live).

Draft_E = LM head ∘ final norm ∘ (h ↦ h + A h) ∘ first E layers of SmolLM2-135M-Instruct. A (576 × 576,
zero-initialised, so training starts from the plain early exit) minimises KL(p ‖ q_E) against the full
model's next-token law p, on text the model sampled itself at temperature 1 from a spread of
instructions (prose, code, lists, chat). Sequences are split into train and held-out sets; the script
reports single-draft acceptance α = Σ_v min(p_v, q_v) on both before and after training, and writes
the adapters (float16) to assets/smollm2_exit_adapters.safetensors with those numbers as metadata.

    .venv/bin/python scripts/train_adapter.py --exits 15 20 25 --sequences 96 --tokens 160

Needs the model extras (requirements-model.txt). Runs in a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from globalres import live  # noqa: E402

TOPICS = ["the water cycle", "binary search", "the French revolution", "photosynthesis", "a rainy day in a city",
          "compound interest", "how vaccines work", "a robot who learns to paint", "sorting a list in Python",
          "the history of tea", "black holes", "a job interview", "making bread", "climate change",
          "recursion", "the moon landing", "a lost cat", "learning a new language", "volcanoes", "chess openings",
          "SQL joins", "the stock market", "a haunted lighthouse", "healthy sleep", "the Roman empire", "electric cars",
          "git branches", "a birthday party", "quantum computers", "the immune system"]
TASKS = ["Write a short story about {}.", "Explain {} to a ten-year-old.",
         "Give a numbered list of five facts about {}.", "Write a Python function related to {}, with comments.",
         "Write a friendly chat reply to a friend asking about {}.",
         "Write a haiku and then a paragraph about {}.", "List the pros and cons of {} as bullet points.",
         "Describe {} in the style of a news report."]


def instructions(seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    pairs = list(itertools.product(TASKS, TOPICS))
    return [pairs[i][0].format(pairs[i][1]) for i in rng.permutation(len(pairs))]


@torch.no_grad()
def sample_text(model, tokenizer, prompts: list[str], tokens: int, batch: int, seed: int) -> list[torch.Tensor]:
    """The model's own continuations at temperature 1: one token id tensor (prompt + continuation) each."""
    torch.manual_seed(seed)
    tokenizer.padding_side = "left"
    out = []
    for start in range(0, len(prompts), batch):
        chats = [live.chat_prompt(tokenizer, p) for p in prompts[start:start + batch]]
        enc = tokenizer(chats, return_tensors="pt", padding=True, add_special_tokens=False)
        gen = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=tokens,
                             pad_token_id=tokenizer.pad_token_id)
        for row, mask in zip(gen, enc.attention_mask):
            ids = row[int((mask == 0).sum()):]  # drop the left padding
            keep = ids != tokenizer.pad_token_id
            out.append(ids[: int(keep.nonzero().max()) + 1])
        print(f"  generated {len(out)}/{len(prompts)} sequences", flush=True)
    return out


@torch.no_grad()
def teacher(model, sequences, exits, start_at):
    """Hidden states after each exit layer, and the full model's log p, at every position after the prompt."""
    hidden = {e: [] for e in exits}
    logp = []
    for ids, s in zip(sequences, start_at):
        out = model(ids[None], output_hidden_states=True)
        for e in exits:
            hidden[e].append(out.hidden_states[e][0, s - 1:-1])
        logp.append(torch.log_softmax(out.logits[0, s - 1:-1].float(), -1).half())
    return {e: torch.cat(h) for e, h in hidden.items()}, torch.cat(logp)


def acceptance(model, A, h, logp, batch=1024):
    """Mean single-draft α = Σ min(p, q) over the positions."""
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(h), batch):
            x = h[i:i + batch]
            q = torch.softmax(model.lm_head(model.model.norm(x + x @ A.T)), -1)
            total += torch.minimum(q, logp[i:i + batch].float().exp()).sum().item()
    return total / len(h)


def train(model, h, logp, epochs, lr, weight_decay, batch, seed):
    torch.manual_seed(seed)
    A = torch.zeros(h.shape[1], h.shape[1], requires_grad=True)
    opt = torch.optim.AdamW([A], lr=lr, weight_decay=weight_decay)
    for param in model.parameters():
        param.requires_grad_(False)
    for epoch in range(epochs):
        perm = torch.randperm(len(h))
        for i in range(0, len(h), batch):
            idx = perm[i:i + batch]
            x = h[idx]
            logq = torch.log_softmax(model.lm_head(model.model.norm(x + x @ A.T)), -1)
            lp = logp[idx].float()
            loss = (lp.exp() * (lp - logq)).sum(-1).mean()  # KL(p ‖ q)
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"    epoch {epoch + 1}: KL {loss.item():.3f}", flush=True)
    return A.detach()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exits", type=int, nargs="+", default=[15, 20, 25])
    ap.add_argument("--sequences", type=int, default=96)
    ap.add_argument("--tokens", type=int, default=160)
    ap.add_argument("--heldout", type=float, default=0.2, help="fraction of sequences kept for testing")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=live.ADAPTER_PATH)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    t0 = time.time()
    model, tokenizer = live._load_target("cpu")
    prompts = instructions(args.seed)[: args.sequences]
    prompt_lens = [len(tokenizer(live.chat_prompt(tokenizer, p), add_special_tokens=False).input_ids) for p in prompts]
    seqs = sample_text(model, tokenizer, prompts, args.tokens, batch=16, seed=args.seed)
    t_gen = time.time() - t0
    n_test = max(1, int(round(args.heldout * len(seqs))))
    split = {"train": (seqs[n_test:], prompt_lens[n_test:]), "test": (seqs[:n_test], prompt_lens[:n_test])}
    data = {name: teacher(model, s, args.exits, lens) for name, (s, lens) in split.items()}
    print(f"generated and scored in {time.time() - t0:.0f} s; positions: train {len(data['train'][1])}, "
          f"test {len(data['test'][1])}", flush=True)

    tensors, report = {}, {}
    for e in args.exits:
        (h_tr, lp_tr), (h_te, lp_te) = (data["train"][0][e], data["train"][1]), (data["test"][0][e], data["test"][1])
        zero = torch.zeros(h_tr.shape[1], h_tr.shape[1])
        before = acceptance(model, zero, h_te, lp_te)
        t1 = time.time()
        A = train(model, h_tr, lp_tr, args.epochs, args.lr, args.weight_decay, args.batch, args.seed)
        seconds = time.time() - t1
        row = {"exit": e, "test_alpha_before": before, "test_alpha_after": acceptance(model, A, h_te, lp_te),
               "train_alpha_after": acceptance(model, A, h_tr, lp_tr), "train_seconds": seconds}
        print(json.dumps(row), flush=True)
        report[str(e)] = row
        tensors[f"exit{e}.A"] = A.half().contiguous()

    from safetensors.torch import save_file

    meta = {"report": json.dumps(report), "train_positions": str(len(data["train"][1])),
            "test_positions": str(len(data["test"][1])), "generation_seconds": f"{t_gen:.0f}",
            "args": json.dumps({k: str(v) for k, v in vars(args).items()})}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(args.out), metadata=meta)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB) in {time.time() - t0:.0f} s total")


if __name__ == "__main__":
    main()
