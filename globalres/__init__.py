"""globalres: optimal multi-draft speculative sampling, exactly.

A target p and a draft q over V tokens; n drafts ω drawn from q. A verification rule π(·|ω) is
lossless when the output is exactly p-distributed, and its acceptance is P(output ∈ ω). The best
lossless rule is the optimal transport of the OTLP; its acceptance is α* = 1 + min_H [p(H) − Q(Hⁿ)].

>>> import globalres as gr
>>> pb = gr.Problem([0.5, 0.3, 0.2], [0.2, 0.3, 0.5], n=2)
>>> round(gr.alpha_star(pb), 6)
0.86
>>> plan = gr.solve(pb, method="lp")
>>> round(plan.acceptance, 6)
0.86
"""

from __future__ import annotations

import importlib
import inspect

from .plan import Audit, Plan, SolverError
from .presets import PRESETS, preset
from .problem import LAWS, InputError, Problem
from .subset import alpha_star, h_star

# method name -> "module:function"; each function takes (problem, **options) and returns a Plan.
SOLVERS = {
    "lp": "otlp:solve",
    "relaxed_lp": "otlp:solve_relaxed",
    "maxflow": "maxflow:solve",
    "opt_maxflow": "maxflow:solve_sliced",
    "global_resolution": "convex:solve",
    "exact": "exact:solve",
    "sps": "verifiers:sps",
    "nss": "verifiers:nss",
    "naive": "verifiers:naive",
    "kseq": "verifiers:kseq",
    "rrs": "verifiers:rrs",
    "rrs_wor": "verifiers:rrs_wor",
    "spechub": "verifiers:spechub",
    "greedy": "verifiers:greedy",
    "khisti_is": "verifiers:khisti_is",
}


def solve(problem: Problem, method: str = "exact", **options) -> Plan:
    """Solve `problem` with `method` (a key of SOLVERS) and return its Plan.

    Raises InputError for an unknown method, bad options, or a problem too large for the method.
    A solver that runs but fails returns a Plan with `success == False` and a message.
    """
    if not isinstance(problem, Problem):
        raise InputError(f"solve needs a globalres.Problem; got {type(problem).__name__}. "
                         "Build one with Problem(p, q, n).")
    if method not in SOLVERS:
        raise InputError(f"Unknown method {method!r}; choose one of: {', '.join(SOLVERS)}.")
    module, function = SOLVERS[method].split(":")
    solver = getattr(importlib.import_module(f".{module}", __name__), function)
    try:
        inspect.signature(solver).bind(problem, **options)
    except TypeError as err:
        raise InputError(f"method {method!r} does not take these options: {err}.") from None
    return solver(problem, **options)


MODULES = ("convex", "exact", "live", "logits", "maxflow", "otlp", "realdata", "subset", "verifiers", "viz")


def __getattr__(name: str):
    """`gr.exact`, `gr.viz`, …: submodules load on first use, so `import globalres` stays light."""
    if name in MODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Audit", "InputError", "LAWS", "PRESETS", "Plan", "Problem", "SOLVERS", "SolverError",
           "alpha_star", "h_star", "preset", "solve"]
