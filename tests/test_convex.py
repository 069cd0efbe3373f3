"""Global Resolution as published: within its own bounds (Lemma 6.6: L1 ≤ 15τ, gap ≤ 10τ) of the exact LP,
its truncation sets as the paper defines them, its failure flag and fallback."""

import numpy as np
import pytest
from helpers import random_problems, small_problems
from hypothesis import HealthCheck, given, settings

import globalres as gr
from globalres.convex import multisets, truncation

TAUS = (1e-3, 1e-4)


def check_within_bounds(pb, tau):
    plan = gr.solve(pb, method="global_resolution", tau=tau, fallback=None)
    assert plan.success, plan.message
    assert plan.info["gr_success"]
    audit = plan.audit()
    assert audit.l1 <= 15 * tau, f"L1 {audit.l1:.3g} > 15τ on {pb}"
    assert abs(plan.acceptance - gr.alpha_star(pb)) <= 10 * tau
    assert audit.acceptance_gap <= 1e-9, "the reported acceptance is the rule's own, exactly"
    return plan, audit


@pytest.mark.parametrize("tau", TAUS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pb=small_problems())
def test_within_its_published_bounds_of_the_optimum(pb, tau):
    check_within_bounds(pb, tau)


@pytest.mark.parametrize("tau", TAUS)
def test_seeded_random_instances_against_the_exact_lp(tau):
    for pb in random_problems(25, seed=7):
        plan, _ = check_within_bounds(pb, tau)
        lp = gr.solve(pb, method="lp")
        assert abs(plan.acceptance - lp.acceptance) <= 10 * tau


def test_without_truncation_it_is_exact_up_to_the_optimiser():
    # V = 3, τ far below every q: no token is cut, so only L-BFGS-B's tolerance separates it from the OT
    pb = gr.Problem([0.5, 0.3, 0.2], [0.2, 0.3, 0.5], n=2)  # peers.md D2, α* = 0.86
    plan, audit = check_within_bounds(pb, 1e-9)
    assert plan.info["eps_T"] == 0 and plan.info["gamma_T"] == 0
    assert audit.l1 < 1e-8 and abs(plan.acceptance - 0.86) < 1e-8


def test_single_draft_is_standard_speculative_sampling():
    pb = gr.Problem.random(5, 1, seed=3)
    plan, _ = check_within_bounds(pb, 1e-7)
    sps = gr.solve(pb, method="sps")
    drafts = np.arange(pb.V)[:, None]
    np.testing.assert_allclose(plan.conditionals(drafts), sps.conditionals(drafts), atol=1e-6)


def test_truncation_sets_are_the_smallest_largest_q_sets_within_tau():
    q = np.array([0.5, 0.3, 0.15, 0.04, 0.01])
    T = truncation(np.arange(5), q, base=0.0, total=1.0, n=2, tau=0.1)
    # (0.95)^2 = 0.9025 misses by 0.0975 ≤ 0.1; (0.8)^2 = 0.64 misses by 0.36
    assert T.tolist() == [0, 1, 2]
    assert truncation(np.arange(5), q, 0.0, 1.0, 2, 1e-12).tolist() == [0, 1, 2, 3, 4]
    pb = gr.Problem.random(8, 3, seed=11)
    plan = gr.solve(pb, method="global_resolution", tau=1e-2)
    assert plan.info["eps_T"] <= 1e-2 and plan.info["gamma_T"] <= 1e-2
    assert set(plan.info["t_out"]).isdisjoint(gr.h_star(pb))
    assert set(plan.info["t_in"]) <= set(gr.h_star(pb))


def test_multiset_weights_are_the_tuple_probabilities():
    q = np.array([0.2, 0.3, 0.1])
    rest, n = 0.4, 3  # mass of the tokens outside T
    idx, logw, size = multisets(np.arange(3), q, rest, n, range(0, n + 1))
    assert len(idx) == 20  # C(3 + 3, 3) multisets of size 0..3
    np.testing.assert_allclose(np.exp(logw).sum(), 1.0, atol=1e-14)
    # the multiset {0, 0} with one slot outside T: 3 placements of the outside slot × 1 arrangement
    row = [i for i in range(len(idx)) if size[i] == 2 and idx[i, 0] == 0 and idx[i, 1] == 3]
    np.testing.assert_allclose(np.exp(logw[row]), 3 * 0.2**2 * 0.4)


def test_iterations_are_kept_for_the_app():
    pb = gr.preset("khisti", n=3)
    plan = gr.solve(pb, method="global_resolution", tau=1e-4)
    for system, trace in plan.info["history"].items():
        assert system in ("outer", "inner")
        assert len(trace["objective"]) == len(trace["gradient_norm"]) >= 1
        assert np.all(np.diff(trace["objective"]) <= 1e-12), "L-BFGS-B only accepts descent steps"
    assert plan.info["weights"].shape == (pb.V,)


def test_early_termination_is_a_failure_then_falls_back():
    pb = gr.Problem.random(40, 4, seed=2)  # C(|T| + 4, 4) terms ≫ max_terms
    failed = gr.solve(pb, method="global_resolution", max_terms=50, fallback=None)
    assert not failed.success and failed.status == gr.plan.GAVE_UP
    assert "max_terms" in failed.message and np.isnan(failed.acceptance)
    with pytest.raises(gr.SolverError, match="terminated early"):
        failed.conditional([0, 0, 0, 0])
    for fallback in ("exact", "maxflow"):
        small = gr.Problem.random(5, 2, seed=2)
        plan = gr.solve(small, method="global_resolution", max_terms=1, fallback=fallback)
        assert plan.success and not plan.info["gr_success"] and plan.info["fallback"] == fallback
        assert "Fell back" in plan.message
        assert plan.audit().l1 < 1e-8 and abs(plan.acceptance - gr.alpha_star(small)) < 1e-9


def test_iteration_cap_is_a_failure():
    pb = gr.Problem.random(6, 3, seed=5, concentration=0.5)
    plan = gr.solve(pb, method="global_resolution", tau=1e-9, max_iter=1, fallback=None)
    assert not plan.success and "L-BFGS-B" in plan.message


@pytest.mark.parametrize("kwargs, message", [
    (dict(tau=0.0), "tau"), (dict(tau=2.0), "tau"), (dict(fallback="lp"), "fallback")])
def test_bad_options_are_input_errors(kwargs, message):
    with pytest.raises(gr.InputError, match=message):
        gr.solve(gr.Problem.random(4, 2, seed=0), method="global_resolution", **kwargs)


def test_other_draft_laws_are_refused_with_a_pointer():
    with pytest.raises(gr.InputError, match="iid"):
        gr.solve(gr.Problem.random(4, 2, seed=0, law="wor"), method="global_resolution")
