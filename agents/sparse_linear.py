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
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

EXTENSION = "mtrl_sparse.agents._sparse_kernels"
GATHER_TARGET = "mtrl_sparse_compressed_gather"
SAMPLED_TARGET = "mtrl_sparse_sampled_product"
CONV_GATHER_TARGET = "mtrl_sparse_conv_gather"
CONV_INPUT_GRADIENT_TARGET = "mtrl_sparse_conv_input_gradient"
CONV_SAMPLED_TARGET = "mtrl_sparse_conv_sampled_product"


@functools.cache
def kernels_available() -> bool:
    """Whether the compiled extension was built and its handlers are registered with XLA, and
    the computation runs on the CPU (the only platform the kernels exist for so far: elsewhere
    the products take XLA's dense path).

    Loads the shared library once per process and registers its FFI targets.
    """
    if jax.default_backend() != "cpu":
        return False
    spec = importlib.util.find_spec(EXTENSION)
    if spec is None or spec.origin is None:
        return False
    try:
        library = ctypes.cdll.LoadLibrary(spec.origin)
    except OSError:
        return False
    for target, symbol in ((GATHER_TARGET, library.MtrlSparseCompressedGather),
                           (SAMPLED_TARGET, library.MtrlSparseSampledProduct),
                           (CONV_GATHER_TARGET, library.MtrlSparseConvGather),
                           (CONV_INPUT_GRADIENT_TARGET, library.MtrlSparseConvInputGradient),
                           (CONV_SAMPLED_TARGET, library.MtrlSparseConvSampledProduct)):
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(symbol), platform="cpu")
    return True


class CompressedKernel(struct.PyTreeNode):
    """The active entries of one (I, O) mask, twice compressed, padded to capacity K.

    Column-compressed (the forward product): output ``j``'s entries are ``col_ptr[j] ..
    col_ptr[j + 1] - 1``, at input rows ``col_rows`` and flat weight positions ``col_weights``
    (``row * O + j``). Row-compressed (input and weight gradients): input ``i``'s entries are
    ``row_ptr[i] .. row_ptr[i + 1] - 1``, at output columns ``row_cols`` and flat positions
    ``row_weights`` (``i * O + col``). Entries past the active count are padding (never read).
    ``fits`` is False when the mask had more active entries than K (the structures then hold
    only the first K: the caller must not use them). ``enabled``: the products use the kernels
    (the mask fits and its density is at most ``max_density``, the crossover below which the
    kernels beat XLA's dense matmul; static, part of the tree's structure); otherwise they take
    the dense path, chosen by a ``lax.cond`` per product (whose operand copies cost time), unless
    the index can never be disabled (``always_enabled``).
    """

    col_ptr: jax.Array  # (O + 1,) int32
    col_rows: jax.Array  # (K,) int32
    col_weights: jax.Array  # (K,) int32
    row_ptr: jax.Array  # (I + 1,) int32
    row_cols: jax.Array  # (K,) int32
    row_weights: jax.Array  # (K,) int32
    fits: jax.Array  # () bool
    enabled: jax.Array  # () bool
    max_density: float = struct.field(pytree_node=False, default=1.0)

    def always_enabled(self, kernel_size: int) -> bool:
        """Whether every mask of a kernel of ``kernel_size`` weights is enabled (statically)."""
        return self.max_density >= 1.0 and self.col_rows.shape[0] >= kernel_size


def _pointers(counts: jax.Array) -> jax.Array:
    """(P,) active counts per row -> (P + 1,) int32 offsets of each row's first entry."""
    return jnp.concatenate([jnp.zeros(1, jnp.int32), jnp.cumsum(counts, dtype=jnp.int32)])


def compress(mask: jax.Array, capacity: int, max_density: float = 1.0) -> CompressedKernel:
    """(I, O) bool mask -> its ``CompressedKernel`` with ``capacity`` entries (static), enabled
    when its density is at most ``max_density``."""
    inputs, outputs = mask.shape
    active = mask.sum()
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
        fits=active <= capacity,
        enabled=(active <= capacity) & (active <= max_density * mask.size),
        max_density=float(max_density),
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


def _kernel_forward(x_t: jax.Array, w: jax.Array, index: CompressedKernel) -> jax.Array:
    """(I, B) -> (O, B): the forward product, feature-major in and out."""
    return _gather(x_t, w, index.col_ptr, index.col_rows, index.col_weights)


def _dense_forward(x_t: jax.Array, w: jax.Array, index: CompressedKernel) -> jax.Array:
    del index
    return (x_t.T @ w).T


def _kernel_backward(x_t: jax.Array, w: jax.Array, index: CompressedKernel, dy_t: jax.Array):
    """(I, B) inputs, (O, B) output cotangent -> ((I, B) input cotangent, (I, O) weights')."""
    dx_t = _gather(dy_t, w, index.row_ptr, index.row_cols, index.row_weights)
    return dx_t, _sampled(x_t, dy_t, index)


def _dense_backward(x_t: jax.Array, w: jax.Array, index: CompressedKernel, dy_t: jax.Array):
    del index
    return (dy_t.T @ w.T).T, x_t @ dy_t.T


def _feature_major(a: jax.Array, is_feature_major: bool) -> jax.Array:
    return a if is_feature_major else a.T


def _kernel_or_dense(kernel: Callable, dense: Callable, x: jax.Array, w: jax.Array,
                     index: CompressedKernel, *rest: jax.Array):
    """``kernel(x, w, index, *rest)`` where ``index`` can never be disabled, else the run-time
    choice between it and ``dense`` by ``index.enabled`` (an XLA conditional, whose operand
    copies cost time)."""
    if index.always_enabled(w.size):
        return kernel(x, w, index, *rest)
    return jax.lax.cond(index.enabled, kernel, dense, x, w, index, *rest)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _matmul(x: jax.Array, w: jax.Array, index: CompressedKernel, use_kernel: bool,
            x_feature_major: bool, y_feature_major: bool) -> jax.Array:
    return _matmul_fwd(x, w, index, use_kernel, x_feature_major, y_feature_major)[0]


def _matmul_fwd(x, w, index, use_kernel, x_feature_major, y_feature_major):
    """The product and the residuals: the inputs feature-major ((I, B), as the kernels read
    them; transposed at most once, for the forward and the weight gradient)."""
    if not use_kernel and not x_feature_major and not y_feature_major:
        return x @ w, (x.T, w, index)  # XLA's product, as a dense layer computes it
    x_t = _feature_major(x, x_feature_major)
    if not use_kernel:
        y_t = _dense_forward(x_t, w, index)
    else:
        y_t = _kernel_or_dense(_kernel_forward, _dense_forward, x_t, w, index)
    return _feature_major(y_t, y_feature_major), (x_t, w, index)


def _matmul_bwd(use_kernel, x_feature_major, y_feature_major, residuals, dy):
    x_t, w, index = residuals
    if not use_kernel and not x_feature_major and not y_feature_major:
        return dy @ w.T, x_t @ dy, None
    dy_t = _feature_major(dy, y_feature_major)
    if use_kernel:
        dx_t, dw = _kernel_or_dense(_kernel_backward, _dense_backward, x_t, w, index, dy_t)
    else:
        dx_t, dw = _dense_backward(x_t, w, index, dy_t)
    return _feature_major(dx_t, x_feature_major), dw, None  # the index is integer: no cotangent


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def sparse_matmul(x: jax.Array, w: jax.Array, index: CompressedKernel,
                  use_kernel: bool = True, x_feature_major: bool = False,
                  y_feature_major: bool = False) -> jax.Array:
    """(B, I) @ masked (I, O) -> (B, O), computing with the active entries of ``index`` only.

    ``w`` must be zero outside the mask ``index`` was built from. The gradient w.r.t. ``w`` is the
    masked dense one at the mask's active entries; outside them it is zero on the kernels' path
    and ``x^T dy`` on the dense path (the gradient w.r.t. the effective weights that RigL grows
    by; the agents mask it before the optimizer sees it). The dense path runs when ``index`` is
    not ``enabled``, with ``use_kernel=False`` or without the compiled extension, with the same
    results where it matters. float32 only.

    The kernels read and write activations feature-major (one row of B values per feature).
    ``x_feature_major``: ``x`` is given as (I, B); ``y_feature_major``: the result is returned
    as (O, B). A chain of sparse layers that passes its activations feature-major from one
    product to the next skips the two transposes (forward and backward) between them.
    """
    if x.dtype != jnp.float32 or w.dtype != jnp.float32:
        raise TypeError(f"sparse_matmul is float32 only; got {x.dtype} and {w.dtype}")
    return _matmul(x, w, index, bool(use_kernel) and kernels_available(),
                   bool(x_feature_major), bool(y_feature_major))


# ----------------------------------------------------------------------------- convolutions
# A VALID, stride-1 convolution with a (size, size, C, O) kernel computes directly on the
# channel-major grid of a batch of maps: C rows of the N = H * W * B positions, position
# (h * W + w) * B + b (batch innermost). Tap t = kh * size + kw reads its input row shifted by
# s(t) = (kh * W + kw) * B (kernels/sparse_matmul.cc: ConvGather, ConvInputGradient,
# ConvSampledProduct). The kernels compute the valid output positions only (zero elsewhere; the
# dense branch leaves finite garbage there, and cropping gives those positions zero
# cotangents), and read the cotangent at the valid positions only. No window array is
# built (a window product copies the map size * size times, forward and backward), and with the
# batch innermost a crop or a change to feature-major rows moves runs of B values.


def _shifts(size: int, width: int, batch: int) -> list[int]:
    """s(t) = (kh * W + kw) * B of each tap t = kh * size + kw."""
    return [(kh * width + kw) * batch for kh in range(size) for kw in range(size)]


def _shifted(rows: jax.Array, shift: int) -> jax.Array:
    """(R, N) -> (R, N): ``rows[:, p + shift]``, zero past the end."""
    return jnp.pad(rows[:, shift:], ((0, 0), (0, shift)))


def _conv_attributes(size: int, channels: int, width: int, batch: int, valid: tuple[int, int]
                     ) -> dict:
    """The kernels' description of the grid: tap strides, valid output rows and the length of
    each row's valid run (``valid`` = (h, w) of the output maps)."""
    return {"channels": np.int64(channels), "size": np.int64(size),
            "row_stride": np.int64(width * batch), "column_stride": np.int64(batch),
            "valid_rows": np.int64(valid[0]), "valid_run": np.int64(valid[1] * batch),
            "kernel_rows": np.int64(size * size * channels)}


def _conv_forward_kernel(x_grid, w, index, size, channels, width, batch, valid):
    """(C, N) -> (O, N): the kernels' forward product at the valid positions (zero elsewhere)."""
    out = jax.ShapeDtypeStruct((w.shape[1], x_grid.shape[1]), jnp.float32)
    return jax.ffi.ffi_call(CONV_GATHER_TARGET, out, vmap_method="sequential")(
        x_grid, w, index.col_ptr, index.col_rows, index.col_weights,
        **_conv_attributes(size, channels, width, batch, valid))


def _conv_forward_dense(x_grid, w, index, size, channels, width, batch, valid):
    del index, valid
    taps = w.reshape(size * size, channels, w.shape[1])
    return sum(taps[t].T @ _shifted(x_grid, s)
               for t, s in enumerate(_shifts(size, width, batch)))


def _conv_backward_kernel(x_grid, w, index, dy_grid, size, channels, width, batch, valid):
    """(C, N) inputs, (O, N) cotangent (read at the valid positions) -> ((C, N) input
    cotangent, (I, O) weight gradient at the active entries)."""
    attributes = _conv_attributes(size, channels, width, batch, valid)
    dx = jax.ffi.ffi_call(CONV_INPUT_GRADIENT_TARGET,
                          jax.ShapeDtypeStruct(x_grid.shape, jnp.float32),
                          vmap_method="sequential")(
        dy_grid, w, index.row_ptr, index.row_cols, index.row_weights, **attributes)
    dw = jax.ffi.ffi_call(CONV_SAMPLED_TARGET, jax.ShapeDtypeStruct(w.shape, jnp.float32),
                          vmap_method="sequential")(
        x_grid, dy_grid, index.row_ptr, index.row_cols, index.row_weights, **attributes)
    return dx, dw


def _conv_backward_dense(x_grid, w, index, dy_grid, size, channels, width, batch, valid):
    del index, valid
    shifts = _shifts(size, width, batch)
    taps = w.reshape(len(shifts), channels, w.shape[1])
    length = dy_grid.shape[1]
    dx = sum(jnp.pad((taps[t] @ dy_grid)[:, :length - s], ((0, 0), (s, 0)))
             for t, s in enumerate(shifts))
    dw = jnp.concatenate([_shifted(x_grid, s) @ dy_grid.T for s in shifts])
    return dx, dw


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _grid_conv(x_grid: jax.Array, w: jax.Array, index: CompressedKernel, size: int,
               width: int, batch: int, valid: tuple[int, int]) -> jax.Array:
    return _grid_conv_fwd(x_grid, w, index, size, width, batch, valid)[0]


def _grid_conv_fwd(x_grid, w, index, size, width, batch, valid):
    static = {"size": size, "channels": x_grid.shape[0], "width": width, "batch": batch,
              "valid": valid}
    y_grid = _kernel_or_dense(functools.partial(_conv_forward_kernel, **static),
                              functools.partial(_conv_forward_dense, **static), x_grid, w, index)
    return y_grid, (x_grid, w, index)


def _grid_conv_bwd(size, width, batch, valid, residuals, dy_grid):
    x_grid, w, index = residuals
    static = {"size": size, "channels": x_grid.shape[0], "width": width, "batch": batch,
              "valid": valid}
    dx_grid, dw = _kernel_or_dense(functools.partial(_conv_backward_kernel, **static),
                                   functools.partial(_conv_backward_dense, **static), x_grid, w,
                                   index, dy_grid)
    return dx_grid, dw, None


_grid_conv.defvjp(_grid_conv_fwd, _grid_conv_bwd)


def to_grid(x: jax.Array) -> jax.Array:
    """(B, H, W, C) maps -> (C, H * W * B), their channel-major grid (``grid_conv``)."""
    return jnp.transpose(x, (3, 1, 2, 0)).reshape(x.shape[-1], -1)


def from_grid(grid: jax.Array, shape: tuple[int, int, int], valid: tuple[int, int]
              ) -> jax.Array:
    """(C, H * W * B) grid of maps of ``shape`` (B, H, W) -> (B, h, w, C): the top-left
    ``valid`` = (h, w) part of each map."""
    batch, height, width = shape
    maps = grid.reshape(grid.shape[0], height, width, batch)[:, :valid[0], :valid[1]]
    return jnp.transpose(maps, (3, 1, 2, 0))


def grid_conv(x_grid: jax.Array, kernel: jax.Array, index: CompressedKernel,
              shape: tuple[int, int, int], valid: tuple[int, int]) -> jax.Array:
    """A VALID, stride-1 convolution ``(C, N) * masked (size, size, C, O) -> (O, N)`` on the
    channel-major grid (``to_grid``) of maps of ``shape`` (B, H, W), with the active entries of
    ``index`` (built from the kernel's mask viewed as ``kernel_view``), differentiable (the
    weight gradient is zero outside the mask). Outputs are computed on the top-left ``valid``
    (h, w) part of each map (zero elsewhere), reading the inputs' top-left (h + size - 1,
    w + size - 1); so convolutions chain on one grid: the k-th of a chain of size-s
    convolutions is valid on the top-left (H - k (s - 1), W - k (s - 1)). Needs the compiled
    extension (``kernels_available``); equals the masked dense convolution up to float32
    summation order.
    """
    size = kernel.shape[0]
    if kernel.ndim != 4 or kernel.shape[1] != size or kernel.shape[2] != x_grid.shape[0]:
        raise ValueError(f"expected a (size, size, {x_grid.shape[0]}, O) kernel; got "
                         f"{kernel.shape}")
    if x_grid.dtype != jnp.float32 or kernel.dtype != jnp.float32:
        raise TypeError(f"grid_conv is float32 only; got {x_grid.dtype} and {kernel.dtype}")
    if not kernels_available():
        raise RuntimeError("grid_conv needs the compiled sparse kernels")
    batch, height, width = shape
    if not (0 < valid[0] <= height - size + 1 and 0 < valid[1] <= width - size + 1):
        raise ValueError(f"valid part {valid} outside the {height - size + 1} x "
                         f"{width - size + 1} outputs of a {size} x {size} window")
    return _grid_conv(x_grid, kernel_view(kernel), index, size, width, batch, tuple(valid))


def sparse_conv(x: jax.Array, kernel: jax.Array, index: CompressedKernel) -> jax.Array:
    """``grid_conv`` on batch-major maps: ``(B, H, W, C) * masked (size, size, C, O) ->
    (B, H - size + 1, W - size + 1, O)``."""
    batch, height, width, _ = x.shape
    valid = (height - kernel.shape[0] + 1, width - kernel.shape[0] + 1)
    grid = grid_conv(to_grid(x), kernel, index, (batch, height, width), valid)
    return from_grid(grid, (batch, height, width), valid)


# ----------------------------------------------------------------------------- in the train state
SPARSE_INDEX = "sparse_index"
"""The Flax variable collection that carries the indices into a network's ``apply``."""


def kernel_view(mask: jax.Array) -> jax.Array:
    """A kernel (or its mask) as the 2-D (I, O) matrix its layer multiplies by: every axis but
    the last flattened (a convolution's (kh, kw, C_in, C_out), a DenseGeneral's (h, w, C, U))."""
    return mask.reshape(-1, mask.shape[-1])


def index_masks(masks: Any, max_density: float, covered: Any = None) -> Any:
    """The tree of ``masks`` with a ``CompressedKernel`` per masked kernel (None elsewhere, and
    where ``covered``, a tree of bools, is False), enabled below ``max_density``; capacity is the
    kernel's size, so every mask fits."""
    if covered is None:
        covered = jax.tree.map(lambda m: m is not None, masks, is_leaf=lambda x: x is None)
    return jax.tree.map(
        lambda m, c: None if m is None or not c
        else compress(kernel_view(m), m.size, max_density),
        masks, covered, is_leaf=lambda x: x is None)


def refresh_index(index: Any, masks: Any) -> Any:
    """``index`` rebuilt from new ``masks`` (each kernel keeps its own density limit): call it
    wherever masks change, inside the change's own branch."""
    if index is None:
        return None
    return jax.tree.map(
        lambda old, m: None if old is None
        else compress(kernel_view(m), old.col_rows.shape[0], old.max_density),
        index, masks, is_leaf=lambda x: x is None or isinstance(x, CompressedKernel))


def _without_none(tree: Any) -> Any:
    """A nested dict with its None leaves (and dicts left empty) removed."""
    if not isinstance(tree, dict):
        return tree
    kept = {k: _without_none(v) for k, v in tree.items() if v is not None}
    return {k: v for k, v in kept.items() if not (isinstance(v, dict) and not v)}


def with_index(weights: Any, index: Any) -> Any:
    """The variables ``{"params": ...}`` a network applies, with ``index`` (of a state whose
    masks the weights obey) as the ``SPARSE_INDEX`` collection; ``weights`` for no index."""
    if index is None:
        return weights
    return {**weights, SPARSE_INDEX: _without_none(index["params"])}


def module_index(module: nn.Module) -> CompressedKernel | None:
    """The ``SPARSE_INDEX`` of ``module``'s ``kernel`` (None: it computes densely). Call it
    inside ``module``'s call."""
    if not module.has_variable(SPARSE_INDEX, "kernel"):
        return None
    return module.get_variable(SPARSE_INDEX, "kernel")


def kernel_product(module: nn.Module, x: jax.Array, kernel: jax.Array,
                   x_feature_major: bool = False, y_feature_major: bool = False) -> jax.Array:
    """``x (..., I) @ kernel`` viewed as (I, O) (``kernel_view``), inside ``module``'s call:
    through ``sparse_matmul`` when the module's variables carry an index for its ``kernel``.
    With ``x_feature_major`` / ``y_feature_major``, ``x`` is (I, B) / the result is (O, B)
    (``sparse_matmul``'s layouts; 2-D only)."""
    matrix = kernel_view(kernel)
    index = module_index(module)
    if x_feature_major or y_feature_major:
        if index is not None:
            return sparse_matmul(x, matrix, index, x_feature_major=x_feature_major,
                                 y_feature_major=y_feature_major)
        y = _feature_major(x, x_feature_major).T @ matrix
        return y.T if y_feature_major else y
    if index is None:
        return x @ matrix
    flat = sparse_matmul(x.reshape(-1, x.shape[-1]), matrix, index)
    return flat.reshape(*x.shape[:-1], matrix.shape[-1])


def has_index(module: nn.Module, child: str) -> bool:
    """Whether ``module``'s variables carry a ``SPARSE_INDEX`` for its child module ``child``'s
    kernel (its products then run through the kernels). Call it inside ``module``'s call."""
    indices = module.variables.get(SPARSE_INDEX, {})
    return "kernel" in indices.get(child, {})


class MaskedDense(nn.Module):
    """``nn.Dense`` (kernel, then a zero-initialised bias) whose product goes through
    ``kernel_product``; with ``contract_all`` it contracts every non-batch axis of its input,
    as ``nn.DenseGeneral(axis=(1, ..., ndim - 1))`` does (same kernel shape and init).

    Called with ``x_feature_major`` / ``y_feature_major`` (not with ``contract_all``), it takes
    its input as (I, B) / returns its output as (O, B), the layout the sparse kernels compute in:
    a chain of indexed layers (``has_index``) passes activations feature-major between them.
    """

    features: int
    kernel_init: Callable[..., jax.Array]
    contract_all: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, x_feature_major: bool = False,
                 y_feature_major: bool = False) -> jax.Array:
        if self.contract_all and (x_feature_major or y_feature_major):
            raise ValueError("MaskedDense with contract_all takes and returns batch-major arrays")
        in_shape = (x.shape[:1] if x_feature_major else
                    x.shape[1:] if self.contract_all else x.shape[-1:])
        flat_in = int(np.prod(in_shape))

        def init(key, shape, dtype=jnp.float32):  # drawn flat, as DenseGeneral does
            return self.kernel_init(key, (flat_in, self.features), dtype).reshape(shape)

        kernel = self.param("kernel", init, (*in_shape, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        if y_feature_major or x_feature_major:
            y = kernel_product(self, x, kernel, x_feature_major, y_feature_major)
            return y + (bias[:, None] if y_feature_major else bias)
        if self.contract_all:  # flattened: XLA's fast CPU matmul (DenseGeneral's is not)
            x = x.reshape(x.shape[0], flat_in)
        return kernel_product(self, x, kernel) + bias
