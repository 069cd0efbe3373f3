"""The core specification: α* and H* by the sorted scan, the exact LPs and max-flow, all agreeing.

Every optimal plan is checked three ways: its acceptance equals α* (sorted scan, and brute force over
all 2^V subsets), it is lossless by exact enumeration of every draft tuple, and its certificate (the
min cut) is the smallest minimiser H*.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_valid_plan, brute_force_alpha, random_problems, small_problems
from hypothesis import given, settings

import globalres as gr
from globalres.plan import SolverError

EXACT_METHODS = ["lp", "relaxed_lp", "maxflow", "opt_maxflow"]


# ------------------------------------------------------------------ α* and H*
@given(problem=small_problems(max_vocab=7, max_drafts=4))
@settings(max_examples=300, deadline=None)
def test_sorted_scan_matches_brute_force_over_all_subsets(problem):
    alpha, minimisers = brute_force_alpha(problem)
    assert abs(gr.alpha_star(problem) - alpha) <= 1e-12
    H = problem.mask(gr.h_star(problem))
    assert problem.psi(H) <= alpha - 1 + 1e-14
    # H* is the smallest minimiser: inside every exact minimiser (they form a lattice, ψ being submodular).
    # Tokens whose inclusion changes ψ by less than the scan's tie tolerance (1e-14) may be left out.
    assert not (H & ~np.logical_and.reduce(minimisers)).any()


def test_alpha_star_is_invariant_to_relabelling_tokens():
    pb = gr.Problem.random(9, 3, seed=4)
    perm = np.random.default_rng(1).permutation(9)
    shuffled = gr.Problem(pb.p[perm], pb.q[perm], 3)
    assert abs(gr.alpha_star(pb) - gr.alpha_star(shuffled)) <= 1e-14
    assert set(perm[gr.h_star(shuffled)].tolist()) == set(gr.h_star(pb).tolist())


@pytest.mark.parametrize("n", [1, 2, 5])
def test_closed_forms(n):
    # p = q: everything can be accepted; disjoint supports: nothing; one-hot draft: α* = p(that token)
    assert gr.alpha_star(gr.preset("equal", n)) == pytest.approx(1.0, abs=1e-15)
    assert gr.alpha_star(gr.preset("disjoint", n)) == pytest.approx(0.0, abs=1e-15)
    pb = gr.preset("one_hot", n)
    assert gr.alpha_star(pb) == pytest.approx(pb.p[1], abs=1e-15)


def test_n_equals_1_is_speculative_sampling():
    for pb in random_problems(50, max_vocab=8, max_drafts=1, seed=3):
        assert gr.alpha_star(pb) == pytest.approx(np.minimum(pb.p, pb.q).sum(), abs=1e-14)
        assert set(gr.h_star(pb).tolist()) == set(np.flatnonzero(pb.q > pb.p).tolist())
        plan = gr.solve(pb, "lp")
        for x in np.flatnonzero(pb.q > 0):  # the maximal coupling keeps a draft w.p. min(1, p/q)
            assert plan.conditional([x])[x] == pytest.approx(min(1.0, pb.p[x] / pb.q[x]), abs=1e-9)


# peers.md §6.2 (derived exact cases, computed by an independent LP there)
D1 = [  # q, optimum i.i.d. n = 2, single draft Σ min(p, q); p uniform on 3 tokens
    ([1 / 3, 0.1, 1 - 1 / 3 - 0.1], 0.856667, 0.766667),
    ([1 / 3, 1 / 6, 1 / 2], 0.972222, 0.833333),
    ([1 / 3, 0.25, 1 - 1 / 3 - 0.25], 1.000000, 0.916667),
    ([1 / 6, 0.0, 5 / 6], 0.638889, 0.500000),
    ([1 / 6, 1 / 6, 2 / 3], 0.888889, 0.666667),
    ([1 / 6, 0.4, 1 - 1 / 6 - 0.4], 0.972222, 0.833333),
]


@pytest.mark.parametrize("q, opt_iid, single", D1)
def test_peers_D1_khisti_toy(q, opt_iid, single):
    p = [1 / 3] * 3
    assert round(gr.alpha_star(gr.Problem(p, q, 2)), 6) == opt_iid
    assert round(gr.alpha_star(gr.Problem(p, q, 1)), 6) == single
    assert round(gr.solve(gr.Problem(p, q, 2), "lp").acceptance, 6) == opt_iid


@pytest.mark.parametrize("p, q, n, law, expected", [
    ([0.5, 0.3, 0.2], [0.2, 0.3, 0.5], 1, "iid", 0.7),
    ([0.5, 0.3, 0.2], [0.2, 0.3, 0.5], 2, "iid", 0.86),
    ([0.5, 0.3, 0.2], [0.2, 0.3, 0.5], 3, "iid", 0.988),
    ([0.5, 0.3, 0.2], [0.2, 0.3, 0.5], 2, "wor", 0.985714),
    ([0.5, 0.3, 0.2], [0.2, 0.3, 0.5], 3, "wor", 1.0),
    ([0.5, 0.3, 0.2], [0.2, 0.3, 0.5], 2, "greedy", 0.90),
    ([0.9, 0.05, 0.05], [0.05, 0.05, 0.9], 2, "iid", 0.1975),
    ([0.9, 0.05, 0.05], [0.05, 0.05, 0.9], 3, "iid", 0.242625),
    ([0.9, 0.05, 0.05], [0.05, 0.05, 0.9], 2, "wor", 0.602632),
    ([0.9, 0.05, 0.05], [0.05, 0.05, 0.9], 3, "wor", 1.0),
    ([0.9, 0.05, 0.05], [0.05, 0.05, 0.9], 2, "greedy", 0.60),
    ([0.6, 0.2, 0.1, 0.1], [0.7, 0.2, 0.05, 0.05], 2, "iid", 0.99),
    ([0.6, 0.2, 0.1, 0.1], [0.7, 0.2, 0.05, 0.05], 2, "wor", 1.0),
])
def test_peers_D2_optimum_for_each_draft_law(p, q, n, law, expected):
    pb = gr.Problem(p, q, n, law=law)
    assert round(gr.alpha_star(pb), 6) == pytest.approx(expected, abs=1e-12)
    assert round(gr.solve(pb, "lp").acceptance, 6) == pytest.approx(expected, abs=1e-12)


# ------------------------------------------------------------ exact solvers
@pytest.mark.parametrize("method", EXACT_METHODS)
@given(problem=small_problems(max_vocab=6, max_drafts=4))
@settings(max_examples=60, deadline=None)
def test_every_exact_method_is_optimal_and_lossless(method, problem):
    plan = gr.solve(problem, method)
    assert_valid_plan(plan)
    if plan.h_star is not None:  # the min cut is the smallest minimiser
        H, cut = set(gr.h_star(problem).tolist()), set(plan.h_star.tolist())
        # ψ values within float resolution (1e-12 here) are ties, and which tied set a float max-flow
        # cuts is arbitrary; the cut must still be a minimiser (hypothesis finds such ties at 1e-14)
        assert cut == H or abs(problem.psi(list(cut)) - problem.psi(list(H))) <= 1e-12, (cut, H)


@pytest.mark.parametrize("method", EXACT_METHODS)
def test_exact_methods_on_seeded_random_instances(method):
    for pb in random_problems(40, seed=11):
        assert_valid_plan(gr.solve(pb, method))


@pytest.mark.parametrize("group", ["multiset", "set", "tuple"])
@pytest.mark.parametrize("backend", ["highs", "pot"])
def test_lp_groupings_and_backends_agree(group, backend):
    for pb in random_problems(8, max_vocab=5, max_drafts=3, seed=5):
        plan = gr.solve(pb, "lp", group=group, backend=backend)
        assert_valid_plan(plan, acceptance_atol=1e-9, l1_atol=1e-9)


def test_highs_fails_loudly_on_tiny_tuple_masses_and_auto_recovers():
    # q^4 ≈ 6e-22 on some tuples: HiGHS either solves it or reports a status; it never returns garbage
    pb = gr.Problem([1, 0, 0], [4.999975e-06, 4.999975e-01, 4.999975e-01], 4)
    highs = gr.solve(pb, "lp", group="tuple", backend="highs")
    assert highs.success or (np.isnan(highs.acceptance) and "HiGHS" in highs.message)
    if highs.success:
        assert_valid_plan(highs)
    assert_valid_plan(gr.solve(pb, "lp", group="tuple"))


def test_lp_with_cvxpy_agrees_within_its_tolerance():
    for pb in random_problems(4, max_vocab=4, max_drafts=3, seed=6):
        assert_valid_plan(gr.solve(pb, "lp", backend="cvxpy"), acceptance_atol=1e-7, l1_atol=1e-7)


@pytest.mark.parametrize("law", ["wor", "greedy"])
def test_lp_and_maxflow_for_other_draft_laws(law):
    for pb in random_problems(15, max_vocab=5, max_drafts=3, seed=8):
        if (pb.q > 0).sum() < pb.n:
            continue
        pb = pb.with_(law=law)
        alpha, _ = brute_force_alpha(pb)
        for method in ("lp", "relaxed_lp", "maxflow"):
            assert_valid_plan(gr.solve(pb, method), alpha=alpha)


def test_min_cut_value_is_one_plus_psi_of_h_star():
    for pb in random_problems(20, seed=9):
        plan = gr.solve(pb, "maxflow")
        assert plan.info["cut_value"] == pytest.approx(plan.info["flow_value"], abs=1e-12)
        assert plan.info["cut_value"] == pytest.approx(1 + pb.psi(plan.h_star), abs=1e-12)


def test_relaxed_residual_totals_are_one_minus_alpha():
    pb = gr.preset("reversed", 2)
    plan = gr.solve(pb, "relaxed_lp")
    assert plan.info["p_res"].sum() == pytest.approx(1 - 0.86, abs=1e-12)
    assert plan.info["Q_res"].sum() == pytest.approx(1 - 0.86, abs=1e-12)


def test_sampling_follows_the_conditional():
    pb = gr.preset("reversed", 2)
    plan = gr.solve(pb, "lp")
    rng = np.random.default_rng(0)
    draws = np.array([plan.sample([2, 2], rng) for _ in range(4000)])
    pi = plan.conditional([2, 2])
    counts = np.bincount(draws, minlength=3)
    # 4 standard errors: fails only if sample() ignores π
    assert np.all(np.abs(counts / 4000 - pi) <= 4 * np.sqrt(pi * (1 - pi) / 4000) + 1e-12)


# ------------------------------------------------------------- failures
def test_lp_refuses_past_its_size_limit_and_suggests_exact():
    pb = gr.Problem.random(40, 6, seed=0)
    with pytest.raises(gr.InputError, match=r"variables.*method='exact'"):
        gr.solve(pb, "lp")
    # max-flow is checked against the same count, but its network has edges, not LP variables
    with pytest.raises(gr.InputError, match=r"max-flow network .* token-to-multiset edges, past max-flow's limit"):
        gr.solve(pb, "maxflow")


def test_a_non_optimal_lp_status_is_a_failure_never_a_result(monkeypatch):
    from types import SimpleNamespace

    import globalres.otlp as otlp

    monkeypatch.setattr(otlp, "linprog", lambda *a, **k: SimpleNamespace(status=4, message="numerical trouble", x=None))
    plan = gr.solve(gr.preset("reversed", 2), "lp", backend="highs")
    assert not plan.success and "numerical trouble" in plan.message and np.isnan(plan.acceptance)
    with pytest.raises(SolverError, match="numerical trouble"):
        plan.conditional([0, 1])
    # the default backend says HiGHS failed and solves with the exact network simplex instead
    plan = gr.solve(gr.preset("reversed", 2), "lp")
    assert plan.success and plan.info["backend"] == "pot" and "numerical trouble" in plan.message
    assert_valid_plan(plan)


def test_unknown_method_and_options_are_input_errors():
    pb = gr.preset("reversed", 2)
    with pytest.raises(gr.InputError, match="Unknown method 'magic'"):
        gr.solve(pb, "magic")
    with pytest.raises(gr.InputError, match="does not take"):
        gr.solve(pb, "lp", colour="red")
    with pytest.raises(gr.InputError, match="backend"):
        gr.solve(pb, "lp", backend="gurobi")
    with pytest.raises(gr.InputError, match="Problem"):
        gr.solve([0.5, 0.5], "lp")


def test_conditional_rejects_bad_draft_tuples():
    plan = gr.solve(gr.preset("reversed", 2), "lp")
    with pytest.raises(gr.InputError, match="2 integer token ids"):
        plan.conditional([0])
    with pytest.raises(gr.InputError, match="0..2"):
        plan.conditional([0, 7])


def test_import_is_light_and_submodules_load_on_first_use():
    # `import globalres` loads neither torch nor the solvers; gr.exact, gr.viz, … load when first used
    import subprocess
    import sys
    from pathlib import Path

    code = "\n".join(["import sys, types, globalres as gr",
                      "assert 'torch' not in sys.modules and 'globalres.exact' not in sys.modules",
                      "assert callable(gr.exact.sample) and callable(gr.exact.keep_freed_memory)",
                      "assert all(isinstance(getattr(gr, m), types.ModuleType) for m in gr.MODULES)"])
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        gr.nope  # noqa: B018
