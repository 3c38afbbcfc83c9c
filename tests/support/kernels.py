"""The mark of tests whose subject is the compiled sparse kernels' numbers.

Without the extension (no C++ compiler at install, or a platform other than the CPU) the
kernels' path is the dense fallback, so a test comparing it with the dense computation would
compare dense with dense: such a test, or such a parametrised case (``KERNEL_OR_FALLBACK``), is
skipped with that reason instead.
"""

from __future__ import annotations

import pytest

from mtrl_sparse.agents.sparse_linear import kernels_available

needs_kernels = pytest.mark.skipif(
    not kernels_available(),
    reason="no compiled sparse kernels: their path would be the dense fallback, compared with "
           "the dense computation")

KERNEL_OR_FALLBACK = [pytest.param(True, id="kernel", marks=needs_kernels),
                      pytest.param(False, id="fallback")]
"""``use_kernel`` values of a parametrised test: the kernels (where built) and the fallback."""
