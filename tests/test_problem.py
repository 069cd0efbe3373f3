"""Problem: what is accepted, what is refused (with a message that says how to fix it), and the builders."""

from __future__ import annotations

import math

import numpy as np
import pytest

import globalres as gr


@pytest.mark.parametrize("p, q, n, message", [
    ([0.5, float("nan"), 0.5], [0.3, 0.3, 0.4], 2, r"p has NaN or infinite entries \(at tokens \[1\]\)"),
    ([0.5, 0.5], [0.3, float("inf")], 2, "q has NaN or infinite"),
    ([0.6, -0.1, 0.5], [0.3, 0.3, 0.4], 2, r"p has a negative entry \(p\[1\] = -0.1\)"),
    ([0.5, 0.6], [0.5, 0.5], 2, r"p must sum to 1 .* sums to 1.1.*Problem.from_weights"),
    ([0.5, 0.5], [0.2, 0.3, 0.5], 2, "same vocabulary; p has 2 tokens and q has 3"),
    ([], [], 2, "p is empty"),
    ([0.0, 0.0], [0.5, 0.5], 2, "all zeros"),
    ([[0.5, 0.5]], [[0.5, 0.5]], 2, r"1-D probability vector; got an array of shape \(1, 2\)"),
    (["a", "b"], [0.5, 0.5], 2, "1-D array of numbers"),
    ([0.5, 0.5], [0.5, 0.5], 0, "n .* must be ≥ 1; got 0"),
    ([0.5, 0.5], [0.5, 0.5], 2.5, "whole number"),
    ([0.5, 0.5], [0.5, 0.5], "2", "whole number"),
    ([0.5, 0.5], [0.5, 0.5], True, "whole number"),
])
def test_bad_input_is_an_input_error_that_says_what_to_fix(p, q, n, message):
    with pytest.raises(gr.InputError, match=message):
        gr.Problem(p, q, n)


def test_input_error_is_a_value_error():
    assert issubclass(gr.InputError, ValueError)


def test_bad_law_and_laws_that_need_more_support():
    with pytest.raises(gr.InputError, match="law must be one of"):
        gr.Problem([0.5, 0.5], [0.5, 0.5], 2, law="magic")
    with pytest.raises(gr.InputError, match="without replacement needs at least 3 tokens with q > 0"):
        gr.Problem([0.5, 0.5, 0.0], [0.5, 0.5, 0.0], 3, law="wor")
    with pytest.raises(gr.InputError, match="labels must name all 2 tokens"):
        gr.Problem([0.5, 0.5], [0.5, 0.5], 2, labels=["a"])


def test_sums_within_tolerance_are_renormalised_exactly():
    pb = gr.Problem([0.5, 0.5 + 5e-7], [1.0, 0.0], 3)
    assert math.isclose(pb.p.sum(), 1.0, abs_tol=1e-15)
    with pytest.raises(gr.InputError, match="sums to"):
        gr.Problem([0.5, 0.5 + 5e-6], [1.0, 0.0], 3)


def test_problem_is_immutable_and_round_trips_through_its_key():
    pb = gr.Problem([0.2, 0.8], [0.6, 0.4], 3, labels=["x", "y"])
    with pytest.raises(ValueError):
        pb.p[0] = 1.0
    again = gr.Problem.from_key(pb.key())
    assert again.key() == pb.key() and hash(pb.key()) == hash(again.key())


@pytest.mark.parametrize("law", ["iid", "wor", "greedy"])
def test_draft_tuples_enumerate_the_law(law):
    pb = gr.Problem([0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1], 3, law=law)
    tuples, probs = pb.draft_tuples()
    assert probs.sum() == pytest.approx(1.0, abs=1e-14)
    for t, w in zip(tuples[:20], probs[:20]):
        assert pb.tuple_probability(t) == pytest.approx(w, abs=1e-15)
    # Monte Carlo agrees with the enumeration
    rng = np.random.default_rng(0)
    draws = pb.sample_drafts(rng, size=20000)
    index = {tuple(t): i for i, t in enumerate(tuples.tolist())}
    counts = np.bincount([index[tuple(d)] for d in draws.tolist()], minlength=len(tuples)) / 20000
    assert np.max(np.abs(counts - probs) - 5 * np.sqrt(probs * (1 - probs) / 20000)) <= 0


def test_enumeration_refuses_when_too_large():
    pb = gr.Problem.random(30, 6, seed=0)
    with pytest.raises(gr.InputError, match="30\\^6"):
        pb.draft_tuples()


def test_from_logits_temperature_top_k_top_p():
    logits = np.log([0.5, 0.25, 0.125, 0.125])
    pb = gr.Problem.from_logits(logits, logits, 2, top_k=2)
    np.testing.assert_allclose(pb.q, [2 / 3, 1 / 3, 0, 0], atol=1e-12)
    np.testing.assert_allclose(pb.p, [0.5, 0.25, 0.125, 0.125], atol=1e-12)
    pb = gr.Problem.from_logits(logits, logits, 2, top_p=0.7)  # 0.5 + 0.25 reaches 0.7
    np.testing.assert_allclose(pb.q, [2 / 3, 1 / 3, 0, 0], atol=1e-12)
    pb = gr.Problem.from_logits(logits, logits, 2, temperature=0.5)  # squares, renormalised
    w = np.array([0.25, 0.0625, 0.015625, 0.015625])
    np.testing.assert_allclose(pb.p, w / w.sum(), atol=1e-12)
    with pytest.raises(gr.InputError, match="temperature"):
        gr.Problem.from_logits(logits, logits, 2, temperature=0)
    with pytest.raises(gr.InputError, match="top_k"):
        gr.Problem.from_logits(logits, logits, 2, top_k=0)
    with pytest.raises(gr.InputError, match="top_p"):
        gr.Problem.from_logits(logits, logits, 2, top_p=1.5)
    with pytest.raises(gr.InputError, match="share a vocabulary"):
        gr.Problem.from_logits(logits, logits[:3], 2)
    with pytest.raises(gr.InputError, match="NaN"):
        gr.Problem.from_logits([0.0, np.nan], [0.0, 0.0], 2)


def test_random_and_presets_are_valid_and_seeded():
    a, b = gr.Problem.random(7, 3, seed=5), gr.Problem.random(7, 3, seed=5)
    assert a.key() == b.key()
    assert (gr.Problem.random(7, 3, seed=5, top_k=2).q > 0).sum() == 2
    for name in gr.PRESETS:
        pb = gr.preset(name, 3)
        assert isinstance(pb, gr.Problem) and pb.n == 3
    with pytest.raises(gr.InputError, match="Unknown preset"):
        gr.preset("nope")
