"""Baseline verifiers (issue 4): lossless by exact enumeration, never above α* for their law, closed-form
acceptance = enumerated acceptance, the real procedure agrees with π by Monte Carlo, peers.md D1/D2 fixtures."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst

import globalres as gr
from globalres.verifiers import kseq_rho

LAW = {"sps": "iid", "nss": "iid", "naive": "iid", "kseq": "iid", "rrs": "iid", "rrs_wor": "wor",
       "spechub": "hub", "greedy": "greedy", "khisti_is": "iid"}


def instance(method: str, V: int, n: int, seed: int, concentration: float = 1.0) -> gr.Problem:
    n = 1 if method == "sps" else 2 if method == "spechub" else n if LAW[method] == "iid" else min(n, V)
    q_support = max(V - (seed % 2), n)  # every other instance has a token the draft never proposes
    pb = gr.Problem.random(V, n, seed=seed, concentration=concentration, top_k=q_support)
    return pb.with_(law=LAW[method])


@pytest.mark.parametrize("method", list(LAW))
@given(seed=hst.integers(0, 10_000), V=hst.integers(2, 5), n=hst.integers(1, 3),
       concentration=hst.sampled_from([0.2, 1.0, 5.0]))
@settings(max_examples=40, deadline=None)
def test_every_verifier_is_lossless_and_never_beats_the_optimum(method, seed, V, n, concentration):
    pb = instance(method, V, n, seed, concentration)
    plan = gr.solve(pb, method)
    assert plan.success, plan.message
    audit = plan.audit()
    assert audit.l1 <= 1e-9, (method, audit.output_law, pb.p)
    # the closed form (or exact sum) is the enumerated acceptance
    assert audit.acceptance_gap <= 1e-9, (method, audit.acceptance, plan.acceptance)
    assert plan.acceptance <= gr.alpha_star(pb) + 1e-9


@pytest.mark.parametrize("method", ["spechub", "greedy", "khisti_is", "sps"])
def test_optimal_verifiers_reach_the_optimum_of_their_law(method):
    for seed in range(15):
        pb = instance(method, 5, 3 if method != "khisti_is" else 1 + seed % 3, seed)
        plan = gr.solve(pb, method)
        np.testing.assert_allclose(plan.acceptance, gr.alpha_star(pb), atol=1e-9, err_msg=f"{method} {seed}")


def test_khisti_lp_equals_the_explicit_n2_optimum():
    for seed in range(10):
        pb = gr.Problem.random(6, 2, seed=seed, concentration=0.5)
        plan = gr.solve(pb, "khisti_is")
        np.testing.assert_allclose(plan.info["explicit_n2"], gr.alpha_star(pb), atol=1e-12)
        np.testing.assert_allclose(plan.info["lp_objective"], plan.acceptance, atol=1e-9)


def test_kseq_meets_its_guarantee_and_rho_solves_its_equation():
    for seed in range(30):
        pb = gr.Problem.random(6, 1 + seed % 5, seed=seed, concentration=0.3)
        plan = gr.solve(pb, "kseq")
        rho, beta, n = plan.info["rho"], plan.info["beta"], pb.n
        assert 1.0 <= rho <= n
        if rho > 1.0:
            np.testing.assert_allclose(rho * beta, 1 - (1 - beta) ** n, atol=1e-12)
        assert plan.acceptance >= (1 - (1 - 1 / n) ** n) * gr.alpha_star(pb) - 1e-12


def test_rrs_residuals_and_betas_are_reported():
    pb = gr.Problem([0.5, 0.3, 0.2], [0.2, 0.3, 0.5], 2)
    plan = gr.solve(pb, "rrs")
    np.testing.assert_allclose(plan.info["residuals"], [[0.5, 0.3, 0.2], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]],
                               atol=1e-15)
    np.testing.assert_allclose(plan.info["betas"], [0.7, 0.2], atol=1e-15)


# --------------------------------------------------------------------------- Monte Carlo: the real procedure
@pytest.mark.parametrize("method", list(LAW))
def test_the_sampled_procedure_follows_pi_and_its_acceptance(method):
    """plan.sample runs the coins of the procedure; its output per draft tuple must follow π(·|ω)."""
    pb = instance(method, 4, 3, seed=7)
    plan = gr.solve(pb, method)
    rng = np.random.default_rng(0)
    draws = 4000
    drafts = pb.sample_drafts(rng, draws)
    out = np.array([plan.sample(d, rng) for d in drafts])
    accepted = np.mean([o in d for o, d in zip(out, drafts.tolist(), strict=True)])
    se = np.sqrt(plan.acceptance * (1 - plan.acceptance) / draws)
    assert abs(accepted - plan.acceptance) <= 5 * se + 1e-12, (accepted, plan.acceptance)
    freq = np.bincount(out, minlength=pb.V) / draws
    assert np.all(np.abs(freq - pb.p) <= 5 * np.sqrt(pb.p * (1 - pb.p) / draws) + 1e-12), (freq, pb.p)
    # for the commonest tuple, the procedure's output law is π(·|ω) itself
    values, counts = np.unique(drafts, axis=0, return_counts=True)
    omega = values[np.argmax(counts)]
    pi = plan.conditional(omega)
    hits = np.bincount([plan.sample(omega, rng) for _ in range(3000)], minlength=pb.V) / 3000
    assert np.all(np.abs(hits - pi) <= 5 * np.sqrt(pi * (1 - pi) / 3000) + 1e-12), (omega, hits, pi)


# --------------------------------------------------------------------------- peers.md §6.2 fixtures
D1 = [  # q, opt iid, K-SEQ, ρ*, RRS wr, opt wor, RRS wor, greedy = SpecHub, n = 1
    ([1 / 3, 0.1, 1 - 1 / 3 - 0.1], 0.856667, 0.810229, 1.4356, 0.790000, 0.947436, 0.820513, 0.897436, 0.766667),
    ([1 / 3, 1 / 6, 1 / 2], 0.972222, 0.888889, 1.3333, 0.861111, 1.0, 0.888889, 1.0, 0.833333),
    ([1 / 3, 0.25, 1 - 1 / 3 - 0.25], 1.0, 0.964061, 1.1896, 0.937500, 1.0, 0.952381, 1.0, 0.916667),
    ([1 / 6, 0.0, 5 / 6], 0.638889, 0.604778, 1.6287, 0.583333, 0.666667, 0.666667, 0.666667, 0.5),
    ([1 / 6, 1 / 6, 2 / 3], 0.888889, 0.811420, 1.4343, 0.777778, 1.0, 1.0, 1.0, 0.666667),
    ([1 / 6, 0.4, 1 - 1 / 6 - 0.4], 0.972222, 0.888889, 1.3333, 0.861111, 1.0, 0.881264, 0.960784, 0.833333),
]


@pytest.mark.parametrize("q, opt, ks, rho, rrs, opt_wor, rrs_wor, hub, single", D1)
def test_peers_D1_khisti_toy(q, opt, ks, rho, rrs, opt_wor, rrs_wor, hub, single):
    pb = gr.Problem([1 / 3] * 3, q, 2)
    got = {m: gr.solve(pb.with_(law=LAW[m]), m).acceptance for m in ("kseq", "rrs", "rrs_wor", "khisti_is")}
    got["spechub"] = gr.solve(pb.with_(law="hub"), "spechub").acceptance if q[1] > 0 else hub
    got["greedy"] = gr.solve(pb.with_(law="greedy"), "greedy").acceptance
    got["sps"] = gr.solve(pb.with_(n=1), "sps").acceptance
    want = dict(kseq=ks, rrs=rrs, rrs_wor=rrs_wor, khisti_is=opt, spechub=hub, greedy=hub, sps=single)
    for m in want:
        assert round(got[m], 6) == pytest.approx(want[m], abs=1e-12), m
    assert round(gr.alpha_star(pb.with_(law="wor")), 6) == pytest.approx(opt_wor, abs=1e-12)
    assert round(gr.solve(pb, "kseq").info["rho"], 4) == pytest.approx(rho, abs=1e-12)


D2 = [  # p, q, n, {method: acceptance}
    ([0.5, 0.3, 0.2], [0.2, 0.3, 0.5], 2,
     dict(kseq=0.791355, rrs=0.76, rrs_wor=0.82, spechub=0.90, greedy=0.90, khisti_is=0.86)),
    ([0.5, 0.3, 0.2], [0.2, 0.3, 0.5], 3, dict(kseq=0.858519, rrs=0.808, khisti_is=0.988)),
    ([0.9, 0.05, 0.05], [0.05, 0.05, 0.9], 2, dict(kseq=0.194865, rrs=0.1925, rrs_wor=0.575, greedy=0.60,
                                                   khisti_is=0.1975)),
    ([0.6, 0.2, 0.1, 0.1], [0.7, 0.2, 0.05, 0.05], 2,
     dict(kseq=0.927016, rrs=0.91, rrs_wor=0.933333, spechub=1.0, greedy=1.0, khisti_is=0.99)),
]


@pytest.mark.parametrize("p, q, n, expected", D2)
def test_peers_D2_larger_gaps(p, q, n, expected):
    pb = gr.Problem(p, q, n)
    for method, value in expected.items():
        got = gr.solve(pb.with_(law=LAW[method]), method).acceptance
        assert round(got, 6) == pytest.approx(value, abs=1e-12), method
    if n == 2:
        assert round(gr.solve(pb.with_(n=1), "sps").acceptance, 6) == pytest.approx(
            {0.5: 0.7, 0.9: 0.15, 0.6: 0.9}[p[0]], abs=1e-12)


# --------------------------------------------------------------------------- draft laws
def test_hub_law_pairs_and_its_set_law_equals_greedy_at_n2():
    pb = gr.Problem([0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1], 2, law="hub")
    assert pb.tuple_probability([1, 0]) == pytest.approx(0.3, abs=1e-15)  # (x, a): q(x)
    assert pb.tuple_probability([0, 1]) == pytest.approx(0.4 * 0.3 / 0.6, abs=1e-15)  # (a, y): q(a) q'(y)
    assert pb.tuple_probability([1, 2]) == 0.0 and pb.tuple_probability([0, 0]) == 0.0
    np.testing.assert_allclose(gr.alpha_star(pb), gr.alpha_star(pb.with_(law="greedy")), atol=1e-15)
    with pytest.raises(gr.InputError, match="n = 2"):
        pb.with_(n=3)


@pytest.mark.parametrize("law", ["wor", "greedy", "hub"])
def test_all_in_probability_matches_enumeration_and_alpha_star_matches_brute_force(law):
    rng = np.random.default_rng(3)
    for _ in range(25):
        V = int(rng.integers(2, 6))
        n = 2 if law == "hub" else int(rng.integers(1, V + 1))
        q = rng.dirichlet(np.full(V, rng.choice([0.1, 1.0])))
        q[q < 1e-3] = 0.0  # tokens never drafted, and near-one-hot q (the integral's hard case)
        if (q > 0).sum() < n:
            continue
        pb = gr.Problem.from_weights(rng.dirichlet(np.ones(V)), q, n, law=law)
        tuples, probs = pb.draft_tuples()
        masks = [np.array(m, dtype=bool) for m in itertools.product([False, True], repeat=V)]
        exact = [probs[m[tuples].all(axis=1)].sum() for m in masks]
        np.testing.assert_allclose([pb.all_in_probability(m) for m in masks], exact, atol=1e-13)
        brute = 1.0 + min(pb.p[m].sum() - e for m, e in zip(masks, exact, strict=True))
        np.testing.assert_allclose(gr.alpha_star(pb), brute, atol=1e-13)


def test_wor_alpha_star_scales_without_enumerating():
    pb = gr.Problem.random(1000, 4, seed=1, law="wor")
    a = gr.alpha_star(pb)
    assert gr.alpha_star(pb.with_(law="iid")) - 1e-12 <= a <= 1.0  # distinct drafts cover more
    # one exact check at this size: Q(Hⁿ) of one token set by the sequential-draw recursion is impossible to
    # enumerate, but for n = 1 Q(H) = q(H) exactly
    H = np.arange(500)
    np.testing.assert_allclose(pb.with_(n=1).all_in_probability(H), pb.q[H].sum(), atol=1e-13)


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("method, problem, message", [
    ("sps", gr.Problem([0.5, 0.5], [0.2, 0.8], 2), r"exactly 1 draft.*with_\(n=1\)"),
    ("rrs_wor", gr.Problem([0.5, 0.5], [0.2, 0.8], 2), r"law='wor'.*with_\(law='wor'\)"),
    ("spechub", gr.Problem([0.5, 0.5], [0.2, 0.8], 2, law="greedy"), "law='hub'"),
    ("greedy", gr.Problem([0.5, 0.5], [0.2, 0.8], 2), "law='greedy'"),
    ("kseq", gr.Problem([0.5, 0.5], [0.2, 0.8], 2, law="wor"), "law='iid'"),
    ("khisti_is", gr.Problem.random(60, 4, seed=0), "max_variables"),
])
def test_wrong_law_or_size_is_an_input_error_with_a_fix(method, problem, message):
    with pytest.raises(gr.InputError, match=message):
        gr.solve(problem, method)


def test_rrs_wor_estimates_when_there_are_too_many_tuples():
    pb = gr.Problem.random(8, 3, seed=2, law="wor")
    exact = gr.solve(pb, "rrs_wor")
    estimate = gr.solve(pb, "rrs_wor", max_tuples=10, samples=4000)
    se = estimate.info["acceptance_se"]
    assert exact.info["acceptance_se"] == 0.0 and se > 0 and "estimated" in estimate.message
    assert abs(estimate.acceptance - exact.acceptance) <= 5 * se


def test_kseq_rho_is_one_for_a_single_draft_and_disjoint_supports():
    assert kseq_rho(np.array([0.5, 0.5]), np.array([0.9, 0.1]), 1)[0] == 1.0
    pb = gr.Problem([1.0, 0.0], [0.0, 1.0], 3)
    plan = gr.solve(pb, "kseq")
    assert plan.acceptance == 0.0 and plan.audit().l1 <= 1e-12


def test_khisti_lp_that_stops_early_is_a_failed_plan_not_a_result(monkeypatch):
    import scipy.optimize

    from globalres import verifiers

    def stopped(*args, **kwargs):
        return scipy.optimize.OptimizeResult(status=1, message="Iteration limit reached.", x=None, fun=None)

    monkeypatch.setattr(verifiers.scipy.optimize, "linprog", stopped)
    plan = gr.solve(gr.Problem([0.5, 0.3, 0.2], [0.2, 0.3, 0.5], 2), "khisti_is")
    assert not plan.success and np.isnan(plan.acceptance) and "Iteration limit" in plan.message
    with pytest.raises(gr.SolverError):
        plan.sample([0, 1], np.random.default_rng(0))
