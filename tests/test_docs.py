"""The examples in the docstrings run and print what they say."""

import doctest

import pytest

import globalres
from globalres import convex, exact, problem, subset


@pytest.mark.parametrize("module", [globalres, problem, subset, convex, exact], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
