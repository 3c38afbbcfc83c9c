"""Runs that differ only in seed and target sparsity vmap into one program (docs/pages/design.md).

The step counter is shared (unbatched), so event conditions stay real branches; the target
sparsity is array data in the method state, so it can differ across the vmapped runs.
"""

from __future__ import annotations

import pytest

from mtrl_sparse.methods.registry import METHODS
from support.sac_vmap import assert_vmapped_equals_separate

# Every method with events, in compositions (set shares rigl's code but for the grow scores).
VMAPPED_METHODS = ["static", "gmp+redo", "rigl+reset", "app+sparse_tune+sign_in", "static+ibm"]


def test_the_vmapped_methods_cover_every_method_with_events():
    covered = {part for method in VMAPPED_METHODS for part in method.split("+")}
    eventful = {n for n, e in METHODS.items() if e.kind in ("sparsity", "plasticity")}
    assert eventful - {"set"} <= covered


@pytest.mark.cpu_numbers
@pytest.mark.parametrize("method", VMAPPED_METHODS)
def test_update_vmapped_over_seeds_and_sparsities_equals_separate_runs(method):
    assert_vmapped_equals_separate(method)
