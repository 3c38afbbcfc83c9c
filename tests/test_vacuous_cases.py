"""The suite's own guard (``tests/conftest.py``): a parametrised case that passes without checking
anything fails; asserts, ``numpy.testing`` assertions, ``pytest.raises`` and skips are fine."""

from __future__ import annotations

from pathlib import Path

CASES = '''
import numpy as np
import pytest

@pytest.mark.parametrize("networks", [("actor",), ()])
def test_loops_over_the_networks(networks):
    for network in networks:
        assert network

@pytest.mark.parametrize("x", [1, 2])
def test_numpy_testing(x):
    np.testing.assert_array_equal(x, x)

@pytest.mark.parametrize("x", [0, 1])
def test_raises(x):
    with pytest.raises(ZeroDivisionError):
        1 / 0

@pytest.mark.parametrize("x", [1])
def test_skips(x):
    pytest.skip("no subject here")

def test_not_parametrised():
    pass
'''


def test_a_parametrised_case_that_checks_nothing_fails(pytester):
    conftest = Path(__file__).with_name("conftest.py").read_text()
    pytester.makeconftest(conftest)
    pytester.makeini("[pytest]\nenable_assertion_pass_hook = true\n")
    pytester.makepyfile(test_cases=CASES)
    result = pytester.runpytest_subprocess("-p", "no:xdist", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=6, failed=1, skipped=1)
    result.stdout.fnmatch_lines(["*test_loops_over_the_networks?networks1?*passed without "
                                 "checking anything*"])
