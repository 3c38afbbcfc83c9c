"""Products with masked kernels that compute only the active weights.

A masked linear layer computes ``x @ (W * M)``. Done densely, a 95%-sparse layer costs what a
dense one does; the compiled kernels of ``agents/kernels/sparse_matmul.cc`` (XLA FFI handlers,
built at install when a C++ compiler is present) visit the active entries only:

- ``sparse_matmul(x, w, index)``: ``(B, I) @ (I, O) -> (B, O)`` with ``w`` already masked
  (the train state's invariant ``params == params * masks``), differentiable through
  ``jax.custom_vjp``: the input gradient ``dy @ (W * M)^T`` runs the same gather kernel on the
  row-compressed structure, the weight gradient is the sampled product ``x^T dy`` at the active
  entries only (zero elsewhere: what the masked dense computation's gradient is after the mask).
- ``compress(mask, capacity) -> CompressedKernel``: the index structures of one mask, padded to a
  static ``capacity`` of active entries, so that a mask change inside ``jit`` (a method's event)
  rebuilds them without changing shapes.

Both work under ``jit`` and ``vmap`` (a vmapped call loops over the mapped axis inside XLA).
Without the compiled extension, ``sparse_matmul`` computes the same quantities with XLA's dense
matmul (``kernels_available()`` tells which path runs). Results equal the masked dense
computation up to float32 summation order.

Shapes: ``B`` batch, ``I`` inputs, ``O`` outputs, ``K`` capacity (active entries at most).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
from typing import NamedTuple

import jax
import jax.numpy as jnp

EXTENSION = "mtrl_sparse.agents._sparse_kernels"
GATHER_TARGET = "mtrl_sparse_compressed_gather"
SAMPLED_TARGET = "mtrl_sparse_sampled_product"


@functools.cache
def kernels_available() -> bool:
    """Whether the compiled extension was built and its handlers are registered with XLA (CPU).

    Loads the shared library once per process and registers its two FFI targets.
    """
    spec = importlib.util.find_spec(EXTENSION)
    if spec is None or spec.origin is None:
        return False
    try:
        library = ctypes.cdll.LoadLibrary(spec.origin)
    except OSError:
        return False
    for target, symbol in ((GATHER_TARGET, library.MtrlSparseCompressedGather),
                           (SAMPLED_TARGET, library.MtrlSparseSampledProduct)):
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(symbol), platform="cpu")
    return True


class CompressedKernel(NamedTuple):
    """The active entries of one (I, O) mask, twice compressed, padded to capacity K.

    Column-compressed (the forward product): output ``j``'s entries are ``col_ptr[j] ..
    col_ptr[j + 1] - 1``, at input rows ``col_rows`` and flat weight positions ``col_weights``
    (``row * O + j``). Row-compressed (input and weight gradients): input ``i``'s entries are
    ``row_ptr[i] .. row_ptr[i + 1] - 1``, at output columns ``row_cols`` and flat positions
    ``row_weights`` (``i * O + col``). Entries past the active count are padding (never read).
    ``fits`` is False when the mask had more active entries than K (the structures then hold
    only the first K: the caller must not use them).
    """

    col_ptr: jax.Array  # (O + 1,) int32
    col_rows: jax.Array  # (K,) int32
    col_weights: jax.Array  # (K,) int32
    row_ptr: jax.Array  # (I + 1,) int32
    row_cols: jax.Array  # (K,) int32
    row_weights: jax.Array  # (K,) int32
    fits: jax.Array  # () bool


def _pointers(counts: jax.Array) -> jax.Array:
    """(P,) active counts per row -> (P + 1,) int32 offsets of each row's first entry."""
    return jnp.concatenate([jnp.zeros(1, jnp.int32), jnp.cumsum(counts, dtype=jnp.int32)])


def compress(mask: jax.Array, capacity: int) -> CompressedKernel:
    """(I, O) bool mask -> its ``CompressedKernel`` with ``capacity`` entries (static)."""
    inputs, outputs = mask.shape
    (row_major,) = jnp.nonzero(mask.reshape(-1), size=capacity, fill_value=0)
    (col_major,) = jnp.nonzero(mask.T.reshape(-1), size=capacity, fill_value=0)
    col_rows = (col_major % inputs).astype(jnp.int32)
    col_of = (col_major // inputs).astype(jnp.int32)
    return CompressedKernel(
        col_ptr=_pointers(mask.sum(0)),
        col_rows=col_rows,
        col_weights=col_rows * outputs + col_of,
        row_ptr=_pointers(mask.sum(1)),
        row_cols=(row_major % outputs).astype(jnp.int32),
        row_weights=row_major.astype(jnp.int32),
        fits=mask.sum() <= capacity,
    )


def active_mask(index: CompressedKernel, shape: tuple[int, int]) -> jax.Array:
    """The (I, O) bool mask an index describes (its first ``row_ptr[-1]`` entries)."""
    valid = jnp.arange(index.row_weights.shape[0]) < index.row_ptr[-1]
    flat = jnp.zeros(shape[0] * shape[1], bool).at[index.row_weights].max(valid)
    return flat.reshape(shape)


def _gather(batch_major: jax.Array, w: jax.Array, ptr: jax.Array, idx: jax.Array,
            widx: jax.Array) -> jax.Array:
    """The compiled gather: (N, B) rows, (I, O) weights -> (P, B) with P = len(ptr) - 1."""
    out = jax.ShapeDtypeStruct((ptr.shape[0] - 1, batch_major.shape[1]), jnp.float32)
    return jax.ffi.ffi_call(GATHER_TARGET, out, vmap_method="sequential")(
        batch_major, w, ptr, idx, widx)


def _sampled(x_t: jax.Array, dy_t: jax.Array, index: CompressedKernel) -> jax.Array:
    """The compiled sampled product: (I, B), (O, B) -> (I, O), ``x^T dy`` at active entries."""
    out = jax.ShapeDtypeStruct((x_t.shape[0], dy_t.shape[0]), jnp.float32)
    return jax.ffi.ffi_call(SAMPLED_TARGET, out, vmap_method="sequential")(
        x_t, dy_t, index.row_ptr, index.row_cols, index.row_weights)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _matmul(x: jax.Array, w: jax.Array, index: CompressedKernel, use_kernel: bool) -> jax.Array:
    if not use_kernel:
        return x @ w
    return _gather(x.T, w, index.col_ptr, index.col_rows, index.col_weights).T


def _matmul_fwd(x, w, index, use_kernel):
    return _matmul(x, w, index, use_kernel), (x, w, index)


def _matmul_bwd(use_kernel, residuals, dy):
    x, w, index = residuals
    if use_kernel:
        dy_t = dy.T
        dx = _gather(dy_t, w, index.row_ptr, index.row_cols, index.row_weights).T
        dw = _sampled(x.T, dy_t, index)
    else:
        dx = dy @ w.T
        dw = jnp.where(active_mask(index, w.shape), x.T @ dy, 0.0)
    return dx, dw, None  # the index is integer: no cotangent


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def sparse_matmul(x: jax.Array, w: jax.Array, index: CompressedKernel,
                  use_kernel: bool = True) -> jax.Array:
    """(B, I) @ masked (I, O) -> (B, O), computing with the active entries of ``index`` only.

    ``w`` must be zero outside the mask ``index`` was built from; the gradient w.r.t. ``w`` is
    zero there. ``use_kernel=False`` (or no compiled extension) takes XLA's dense path with the
    same results. float32 only.
    """
    if x.dtype != jnp.float32 or w.dtype != jnp.float32:
        raise TypeError(f"sparse_matmul is float32 only; got {x.dtype} and {w.dtype}")
    return _matmul(x, w, index, bool(use_kernel) and kernels_available())
