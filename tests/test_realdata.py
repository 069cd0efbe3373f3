"""The bundled SmolLM2 pairs load, are valid distributions, and tail folding is exact."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst

import globalres as gr
from globalres.realdata import BUNDLE_PATH, CATEGORIES, Bundle, fold_undrafted, load_bundled


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return load_bundled()


def test_bundle_is_small_and_varied(bundle):
    assert BUNDLE_PATH.stat().st_size <= 12 * 2**20
    assert len(bundle) >= 64 and bundle.V == 49152
    assert set(bundle.categories) == set(CATEGORIES)
    for c in CATEGORIES:
        assert len(bundle.indices(c)) >= 8
    assert all(isinstance(s, str) and s.count("<|im_start|>user") == 1 for s in bundle.contexts)
    assert len(bundle.vocab) == bundle.V and "<|im_end|>" in bundle.vocab


def test_rows_are_log_probabilities(bundle):
    for rows in (bundle.target_logp, bundle.draft_logp):
        x = rows.astype(np.float64)
        mass = np.exp(x).sum(axis=1)
        # float16 rounding of each log-probability: at most ~0.4 % per token, so the sums stay near 1
        np.testing.assert_allclose(mass, 1.0, atol=5e-3)
        assert np.isfinite(x).all()
    assert not bundle.target_logp.flags.writeable
    assert ((bundle.next_tokens >= 0) & (bundle.next_tokens < bundle.V)).all()


def test_the_next_token_is_plausible_under_the_target(bundle):
    # the stored token was sampled from the target: its mean log-probability is far above uniform (−10.8)
    logp = bundle.target_logp[np.arange(len(bundle)), bundle.next_tokens].astype(np.float64)
    assert logp.mean() > -5.0


def test_metadata_records_the_measured_numbers(bundle):
    assert bundle.meta["quantisation_alpha_error"] < 3e-3
    alpha = np.mean([gr.alpha_star(bundle.problem(i, n=1)) for i in range(len(bundle))])
    np.testing.assert_allclose(alpha, bundle.meta["single_draft_alpha_mean"], atol=2e-3)
    assert 0.2 < alpha < 0.9  # a real draft: well above a unigram draft, below a clone of the target


def test_problem_applies_top_k_and_temperature(bundle):
    pb = bundle.problem(3, n=4, top_k=10, temperature=0.7)
    assert pb.n == 4 and pb.V == bundle.V and (pb.q > 0).sum() == 10
    t, _ = bundle.logits(3)
    expected = np.exp(t / 0.7 - (t / 0.7).max())
    np.testing.assert_allclose(pb.p, expected / expected.sum(), atol=1e-12)
    with pytest.raises(gr.InputError, match="pair index"):
        bundle.problem(len(bundle), n=2)
    with pytest.raises(gr.InputError, match="category must be"):
        bundle.indices("poetry")


@pytest.mark.parametrize("n, k", [(1, None), (2, 10), (4, 100), (8, 1000), (16, 1)])
def test_folding_keeps_alpha_star_on_real_pairs(bundle, n, k):
    for i in (0, len(bundle) // 2, len(bundle) - 1):
        full = bundle.problem(i, n=n, top_k=k)
        folded = bundle.problem(i, n=n, top_k=k, fold=True)
        assert folded.V == int((full.q > 0).sum()) + (1 if folded.labels[-1] == "⟨other⟩" else 0)
        np.testing.assert_allclose(gr.alpha_star(folded), gr.alpha_star(full), atol=1e-12)


@given(seed=hst.integers(0, 10**6), V=hst.integers(2, 6), n=hst.integers(1, 3), k=hst.integers(1, 6))
@settings(max_examples=60, deadline=None)
def test_folding_is_exact_and_lp_rule_lifts_losslessly(seed, V, n, k):
    pb = gr.Problem.random(V, n, seed=seed, top_k=min(k, V))
    p, q, keep = fold_undrafted(pb.p, pb.q)
    folded = gr.Problem(p, q, n)
    np.testing.assert_allclose(gr.alpha_star(folded), gr.alpha_star(pb), atol=1e-12)
    plan = gr.solve(folded, method="lp")
    audit = plan.audit()
    assert audit.l1 < 1e-8
    # lifting: the folded token's mass spread by p over the folded ids gives back p exactly
    lifted = np.zeros(V)
    lifted[keep] = audit.output_law[: keep.size]
    rest = np.setdiff1d(np.arange(V), keep)
    if rest.size and pb.p[rest].sum() > 0:
        lifted[rest] = audit.output_law[-1] * pb.p[rest] / pb.p[rest].sum()
    np.testing.assert_allclose(lifted, pb.p, atol=1e-8)
