"""The float32 matmul precision of training: full float32, on every device.

JAX's ``default`` precision lets the backend choose how float32 matmuls and convolutions are
computed. CPUs compute them in float32. NVIDIA GPUs since Ampere (A100, H100, H200) compute them in
TF32 instead: inputs rounded to a 10-bit mantissa (float32 has 23), products accumulated in float32,
several times the float32 rate on the tensor cores. So with JAX's default the same run gives other
numbers on a GPU than on a CPU beyond float32 rounding, and relative errors near 1e-3 per product.

The project's choice is ``highest`` (full float32 products) in every process that trains:

* the reference paper's lineage is PyTorch, whose ``Linear`` layers compute float32 products in full
  float32 on these GPUs by default (``torch.backends.cuda.matmul.allow_tf32 = False`` since
  PyTorch 1.12), so the published settings were tuned without TF32 in the MLPs (cuDNN's
  convolutions, the MiniGrid CNN's, do use TF32 there by default; one precision for both here
  keeps a run's numbers independent of which layers it has);
* a GPU run then follows its CPU twin up to float32 rounding, which is what the tests check;
* the cost is measured, not assumed: ``bench/update_throughput.py --compare-precision`` times the
  paper-config SAC update under both precisions in one process and reports how far one update's
  parameters move apart (``scripts/gpu_check.sh`` runs it on a GPU node).

Set ``JAX_DEFAULT_MATMUL_PRECISION`` (JAX's own variable; e.g. ``tensorfloat32`` or ``default``)
to choose otherwise: the entry points then leave JAX's setting alone. ``config.json`` records the
precision a run trained with (``provenance.device.matmul_precision``).

Like the host allocator (``host_memory``), the setting is process-wide, so only the programs' entry
points apply it (the CLI, a sweep's workers, the benchmarks); importing the package changes nothing.
"""

from __future__ import annotations

import os

import jax

TRAINING_PRECISION = "highest"
"""JAX's ``jax_default_matmul_precision`` in the processes that train (full float32 products)."""
PRECISION_ENV = "JAX_DEFAULT_MATMUL_PRECISION"


def use_training_precision() -> str:
    """Set JAX's default matmul precision to ``TRAINING_PRECISION`` unless ``PRECISION_ENV`` is set;
    returns the precision in force (``matmul_precision()``)."""
    if not os.environ.get(PRECISION_ENV):
        jax.config.update("jax_default_matmul_precision", TRAINING_PRECISION)
    return matmul_precision()


def matmul_precision() -> str:
    """The default matmul precision in force: JAX's setting, or ``default`` when it has none."""
    return jax.config.jax_default_matmul_precision or "default"
