// Sparse kernels of masked linear layers, as XLA FFI handlers (CPU, float32).
//
// A masked kernel W (I, O) with K active entries is described twice, as compressed index
// structures padded to a static capacity (see mtrl_sparse.agents.sparse_linear):
//   column-compressed: for output j, entries ptr[j] .. ptr[j + 1] - 1 hold input rows idx[k]
//                      and the flat positions widx[k] = idx[k] * O + j of their weights in W;
//   row-compressed:    for input i, output columns idx[k] and widx[k] = i * O + idx[k].
// Activations travel batch-contiguous ("transposed", one row of B values per feature), so every
// multiply-add of a kernel is a run over the batch the compiler vectorises.
//
// CompressedGather:  out[p, :] = sum_{k in ptr[p] .. ptr[p+1]-1} w[widx[k]] * in[idx[k], :]
//   with the column-compressed structure: y^T = (W * M)^T x^T (the forward product);
//   with the row-compressed one:           dx^T = (W * M) dy^T (the input gradient).
// SampledProduct:    dW[widx[k]] = <x^T[p, :], dy^T[idx[k], :]> for row p's active entries,
//   zero elsewhere (the weight gradient at the active entries only; row-compressed structure).
//
// Convolutions (VALID, stride 1, a size x size window) compute directly on channel-major maps,
// with no window extraction: a batch of maps is C rows of N = H * W * B positions, position
// p = (h * W + w) * B + b (batch innermost), and a kernel (size, size, C_in, C_out) viewed as
// (I, O) = (size * size * C_in, C_out) has row r = t * C_in + c for tap t = kh * size + kw, whose
// input is the row c shifted by s(t) = kh * row_stride + kw * column_stride positions
// (row_stride = W * B, column_stride = B). Outputs are computed at the valid positions only,
// the first valid_run = w_out * B positions of each of the first h_out rows (zero elsewhere),
// so each multiply-add is a run of w_out * B positions:
// ConvGather:        y[o, p]  = sum_{k of column o} w[widx[k]] * x[c(idx[k]), p + s(t(idx[k]))]
//   (x (C_in, N), y (C_out, N));
// ConvInputGradient: dx[c, q] = sum_t sum_{k of row t * C_in + c} w[widx[k]] * dy[idx[k], q - s(t)]
//   over valid positions q - s(t) (dy (C_out, N), dx (C_in, N)); each c's taps are summed by
//   one thread;
// ConvSampledProduct: dw[widx[k]] = sum_p x[c(r), p + s(t(r))] * dy[idx[k], p] over valid
//   positions p, for row r's active entries (x (C_in, N), dy (C_out, N)).
//
// All split their rows over XLA's intra-op thread pool in chunks of about equal active
// counts. The calling thread takes chunks too and waits only for chunks other threads have
// started, so a handler never waits on work queued behind itself.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kChunksPerThread = 4;
constexpr int64_t kMinWorkPerChunk = int64_t{1} << 18;  // multiply-adds below which a chunk is
                                                       // not worth a task (tens of microseconds)

struct SharedLoop {
  std::atomic<int64_t> next{0};
  std::mutex mutex;
  std::condition_variable finished;
  int64_t remaining = 0;  // chunks not yet completed (guarded by mutex)
};

// Calls body(chunk) for chunk in [0, num_chunks), spread over the pool and the calling thread.
template <typename Body>
void ParallelChunks(ffi::ThreadPool& pool, int64_t num_chunks, const Body& body) {
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), num_chunks) - 1;
  if (helpers <= 0) {
    for (int64_t c = 0; c < num_chunks; ++c) body(c);
    return;
  }
  auto shared = std::make_shared<SharedLoop>();
  shared->remaining = num_chunks;
  // A helper that starts after every chunk was taken returns without touching `body`, which
  // may then no longer exist; `shared` outlives it through the copy each helper holds.
  auto drain = [shared, &body, num_chunks]() {
    int64_t done = 0;
    for (int64_t c; (c = shared->next.fetch_add(1)) < num_chunks; ++done) body(c);
    if (done > 0) {
      std::lock_guard<std::mutex> lock(shared->mutex);
      shared->remaining -= done;
      if (shared->remaining == 0) shared->finished.notify_all();
    }
  };
  for (int64_t h = 0; h < helpers; ++h) pool.Schedule(decltype(drain)(drain));  // a copy each
  drain();
  std::unique_lock<std::mutex> lock(shared->mutex);
  shared->finished.wait(lock, [&] { return shared->remaining == 0; });
}

// Row boundaries of `num_chunks` chunks with about equal active counts: rows
// bounds[c] .. bounds[c + 1] - 1 form chunk c.
void ChunkBounds(const int32_t* ptr, int64_t rows, int64_t num_chunks, int64_t* bounds) {
  const int64_t active = ptr[rows];
  bounds[0] = 0;
  for (int64_t c = 1; c < num_chunks; ++c) {
    const int64_t target = active * c / num_chunks;
    bounds[c] = std::max<int64_t>(bounds[c - 1],
                                  std::lower_bound(ptr, ptr + rows + 1, target) - ptr);
  }
  bounds[num_chunks] = rows;
}

int64_t NumChunks(ffi::ThreadPool& pool, int64_t rows, int64_t active, int64_t batch) {
  const int64_t by_work = std::max<int64_t>(1, active * batch / kMinWorkPerChunk);
  const int64_t by_threads = std::max<int64_t>(1, pool.num_threads()) * kChunksPerThread;
  return std::max<int64_t>(1, std::min({rows, by_work, by_threads}));
}

template <typename RowBody>
void ForRowChunks(ffi::ThreadPool& pool, const int32_t* ptr, int64_t rows, int64_t batch,
                  const RowBody& row_body) {
  const int64_t num_chunks = NumChunks(pool, rows, ptr[rows], batch);
  std::unique_ptr<int64_t[]> bounds(new int64_t[num_chunks + 1]);
  ChunkBounds(ptr, rows, num_chunks, bounds.get());
  ParallelChunks(pool, num_chunks, [&](int64_t c) {
    for (int64_t p = bounds[c]; p < bounds[c + 1]; ++p) row_body(p);
  });
}

// The three arrays of one compressed structure with `rows` rows, checked.
struct Index {
  const int32_t* ptr;
  const int32_t* idx;
  const int32_t* widx;
};

ffi::Error ReadIndex(int64_t rows, const ffi::Buffer<ffi::S32>& ptr,
                     const ffi::Buffer<ffi::S32>& idx, const ffi::Buffer<ffi::S32>& widx,
                     Index* index) {
  if (static_cast<int64_t>(ptr.element_count()) != rows + 1) {
    return ffi::Error::InvalidArgument("index pointer length must be rows + 1");
  }
  if (idx.element_count() != widx.element_count()) {
    return ffi::Error::InvalidArgument("index and weight-position arrays must have one length");
  }
  *index = Index{ptr.typed_data(), idx.typed_data(), widx.typed_data()};
  return ffi::Error::Success();
}

// in (N, B), w (any shape), ptr (P + 1,), idx (K,), widx (K,) -> out (P, B)
ffi::Error CompressedGatherImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> in,
                                ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::S32> ptr,
                                ffi::Buffer<ffi::S32> idx, ffi::Buffer<ffi::S32> widx,
                                ffi::ResultBuffer<ffi::F32> out) {
  const auto out_dims = out->dimensions();
  const auto in_dims = in.dimensions();
  if (out_dims.size() != 2 || in_dims.size() != 2 || in_dims[1] != out_dims[1]) {
    return ffi::Error::InvalidArgument("expected in (N, B) and out (P, B)");
  }
  const int64_t rows = out_dims[0], batch = out_dims[1];
  Index index;
  if (ffi::Error error = ReadIndex(rows, ptr, idx, widx, &index); error.failure()) return error;
  const auto [p_ptr, p_idx, p_widx] = index;
  const float* __restrict__ x = in.typed_data();
  const float* __restrict__ weights = w.typed_data();
  float* __restrict__ y = out->typed_data();
  ForRowChunks(pool, p_ptr, rows, batch, [&](int64_t p) {
    float* __restrict__ y_row = y + p * batch;
    std::fill(y_row, y_row + batch, 0.0f);
    for (int32_t k = p_ptr[p]; k < p_ptr[p + 1]; ++k) {
      const float v = weights[p_widx[k]];
      const float* __restrict__ x_row = x + static_cast<int64_t>(p_idx[k]) * batch;
      for (int64_t b = 0; b < batch; ++b) y_row[b] += v * x_row[b];
    }
  });
  return ffi::Error::Success();
}

// xt (I, B), dyt (O, B), ptr (I + 1,), idx (K,), widx (K,) -> dw (I, O)
ffi::Error SampledProductImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> xt,
                              ffi::Buffer<ffi::F32> dyt, ffi::Buffer<ffi::S32> ptr,
                              ffi::Buffer<ffi::S32> idx, ffi::Buffer<ffi::S32> widx,
                              ffi::ResultBuffer<ffi::F32> dw) {
  const auto dw_dims = dw->dimensions();
  const auto x_dims = xt.dimensions();
  const auto dy_dims = dyt.dimensions();
  if (dw_dims.size() != 2 || x_dims.size() != 2 || dy_dims.size() != 2 ||
      x_dims[0] != dw_dims[0] || dy_dims[0] != dw_dims[1] || x_dims[1] != dy_dims[1]) {
    return ffi::Error::InvalidArgument("expected xt (I, B), dyt (O, B) and dw (I, O)");
  }
  const int64_t rows = dw_dims[0], cols = dw_dims[1], batch = x_dims[1];
  Index index;
  if (ffi::Error error = ReadIndex(rows, ptr, idx, widx, &index); error.failure()) return error;
  const auto [p_ptr, p_idx, p_widx] = index;
  const float* __restrict__ x = xt.typed_data();
  const float* __restrict__ dy = dyt.typed_data();
  float* __restrict__ grad = dw->typed_data();
  ForRowChunks(pool, p_ptr, rows, batch, [&](int64_t i) {
    std::memset(grad + i * cols, 0, sizeof(float) * cols);
    const float* __restrict__ x_row = x + i * batch;
    for (int32_t k = p_ptr[i]; k < p_ptr[i + 1]; ++k) {
      const float* __restrict__ dy_row = dy + static_cast<int64_t>(p_idx[k]) * batch;
      float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
      for (int64_t b = 0; b < batch; ++b) sum += x_row[b] * dy_row[b];
      grad[p_widx[k]] = sum;
    }
  });
  return ffi::Error::Success();
}

// The taps of a size x size window: tap t's shift s(t) = kh * row_stride + kw * column_stride;
// the valid output positions: the first valid_run positions of each of the first valid_rows
// rows of row_stride positions.
struct Taps {
  int64_t channels, size, row_stride, column_stride, valid_rows, valid_run;
  int64_t Count() const { return size * size; }
  int64_t Shift(int64_t tap) const {
    return (tap / size) * row_stride + (tap % size) * column_stride;
  }
  int64_t MaxShift() const { return Shift(Count() - 1); }
  // The positions past the last one any tap reads from a valid output.
  int64_t Reach() const { return (valid_rows - 1) * row_stride + valid_run + MaxShift(); }
  // body(start) for the first position of each valid run.
  template <typename Body>
  void ForValidRuns(const Body& body) const {
    for (int64_t h = 0; h < valid_rows; ++h) body(h * row_stride);
  }
};

// The convolution handlers' attributes (members in the alphabetical order of their names, the
// order in which XLA passes them).
struct ConvAttributes {
  int64_t channels, column_stride, kernel_rows, row_stride, size, valid_rows, valid_run;
};

ffi::Error ReadTaps(const ConvAttributes& a, int64_t length, Taps* taps) {
  *taps = Taps{a.channels, a.size, a.row_stride, a.column_stride, a.valid_rows, a.valid_run};
  if (a.channels <= 0 || a.size <= 0 || a.column_stride <= 0 || a.valid_rows <= 0 ||
      a.valid_run <= 0 || a.valid_run > a.row_stride || a.kernel_rows != taps->Count() * a.channels ||
      taps->Reach() > length) {
    return ffi::Error::InvalidArgument(
        "expected channels, size, strides and valid extents > 0, valid_run <= row_stride, "
        "size * size * channels kernel rows and every read inside the grid");
  }
  return ffi::Error::Success();
}

// The taps of a convolution over a grid of `length` positions and its index of `rows` rows.
ffi::Error ReadConvolution(const ConvAttributes& attributes, int64_t length, int64_t rows,
                           const ffi::Buffer<ffi::S32>& ptr, const ffi::Buffer<ffi::S32>& idx,
                           const ffi::Buffer<ffi::S32>& widx, Taps* taps, Index* index) {
  if (ffi::Error error = ReadTaps(attributes, length, taps); error.failure()) return error;
  return ReadIndex(rows, ptr, idx, widx, index);
}

// x (C_in, N), w (any shape), col_ptr (C_out + 1,), idx (K,), widx (K,) -> y (C_out, N)
ffi::Error ConvGatherImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> in,
                          ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::S32> ptr,
                          ffi::Buffer<ffi::S32> idx, ffi::Buffer<ffi::S32> widx,
                          ffi::ResultBuffer<ffi::F32> out, ConvAttributes attributes) {
  const auto out_dims = out->dimensions();
  const auto in_dims = in.dimensions();
  const int64_t channels = attributes.channels;
  if (out_dims.size() != 2 || in_dims.size() != 2 || in_dims[0] != channels ||
      in_dims[1] != out_dims[1]) {
    return ffi::Error::InvalidArgument("expected x (C_in, N) and y (C_out, N)");
  }
  const int64_t rows = out_dims[0], length = out_dims[1];
  Taps taps;
  Index index;
  if (ffi::Error error = ReadConvolution(attributes, length, rows, ptr, idx, widx, &taps, &index);
      error.failure()) {
    return error;
  }
  const auto [p_ptr, p_idx, p_widx] = index;
  const float* __restrict__ x = in.typed_data();
  const float* __restrict__ weights = w.typed_data();
  float* __restrict__ y = out->typed_data();
  ForRowChunks(pool, p_ptr, rows, length, [&](int64_t o) {
    float* __restrict__ y_row = y + o * length;
    std::fill(y_row, y_row + length, 0.0f);
    for (int32_t k = p_ptr[o]; k < p_ptr[o + 1]; ++k) {
      const float v = weights[p_widx[k]];
      const int64_t r = p_idx[k];
      const float* __restrict__ x_row = x + (r % channels) * length + taps.Shift(r / channels);
      taps.ForValidRuns([&](int64_t start) {
        for (int64_t p = start; p < start + taps.valid_run; ++p) y_row[p] += v * x_row[p];
      });
    }
  });
  return ffi::Error::Success();
}

// dy (C_out, N), w (any shape), row_ptr (I + 1,), idx (K,), widx (K,) -> dx (C_in, N)
ffi::Error ConvInputGradientImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dyt,
                                 ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::S32> ptr,
                                 ffi::Buffer<ffi::S32> idx, ffi::Buffer<ffi::S32> widx,
                                 ffi::ResultBuffer<ffi::F32> dxt, ConvAttributes attributes) {
  const auto dx_dims = dxt->dimensions();
  const auto dy_dims = dyt.dimensions();
  const int64_t channels = attributes.channels, kernel_rows = attributes.kernel_rows;
  if (dx_dims.size() != 2 || dy_dims.size() != 2 || dx_dims[0] != channels ||
      dy_dims[1] != dx_dims[1]) {
    return ffi::Error::InvalidArgument("expected dy (C_out, N) and dx (C_in, N)");
  }
  const int64_t length = dx_dims[1];
  Taps taps;
  Index index;
  if (ffi::Error error =
          ReadConvolution(attributes, length, kernel_rows, ptr, idx, widx, &taps, &index);
      error.failure()) {
    return error;
  }
  const auto [p_ptr, p_idx, p_widx] = index;
  const float* __restrict__ dy = dyt.typed_data();
  const float* __restrict__ weights = w.typed_data();
  float* __restrict__ dx = dxt->typed_data();
  const int64_t num_chunks = NumChunks(pool, channels, p_ptr[kernel_rows], length);
  ParallelChunks(pool, num_chunks, [&](int64_t chunk) {
    for (int64_t c = channels * chunk / num_chunks; c < channels * (chunk + 1) / num_chunks;
         ++c) {
      float* __restrict__ dx_row = dx + c * length;
      std::fill(dx_row, dx_row + length, 0.0f);
      for (int64_t t = 0; t < taps.Count(); ++t) {
        const int64_t r = t * channels + c;
        float* __restrict__ dx_shifted = dx_row + taps.Shift(t);
        for (int32_t k = p_ptr[r]; k < p_ptr[r + 1]; ++k) {
          const float v = weights[p_widx[k]];
          const float* __restrict__ dy_row = dy + static_cast<int64_t>(p_idx[k]) * length;
          taps.ForValidRuns([&](int64_t start) {
            for (int64_t p = start; p < start + taps.valid_run; ++p) dx_shifted[p] += v * dy_row[p];
          });
        }
      }
    }
  });
  return ffi::Error::Success();
}

// x (C_in, N), dy (C_out, N), row_ptr (I + 1,), idx (K,), widx (K,) -> dw (I, C_out)
ffi::Error ConvSampledProductImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> xt,
                                  ffi::Buffer<ffi::F32> dyt, ffi::Buffer<ffi::S32> ptr,
                                  ffi::Buffer<ffi::S32> idx, ffi::Buffer<ffi::S32> widx,
                                  ffi::ResultBuffer<ffi::F32> dw, ConvAttributes attributes) {
  const auto dw_dims = dw->dimensions();
  const auto x_dims = xt.dimensions();
  const auto dy_dims = dyt.dimensions();
  const int64_t channels = attributes.channels, kernel_rows = attributes.kernel_rows;
  if (dw_dims.size() != 2 || x_dims.size() != 2 || dy_dims.size() != 2 ||
      dw_dims[0] != kernel_rows || x_dims[0] != channels || dy_dims[0] != dw_dims[1] ||
      x_dims[1] != dy_dims[1]) {
    return ffi::Error::InvalidArgument("expected x (C_in, N), dy (C_out, N) and dw (I, O)");
  }
  const int64_t cols = dw_dims[1], length = dy_dims[1];
  Taps taps;
  Index index;
  if (ffi::Error error =
          ReadConvolution(attributes, length, kernel_rows, ptr, idx, widx, &taps, &index);
      error.failure()) {
    return error;
  }
  const auto [p_ptr, p_idx, p_widx] = index;
  const float* __restrict__ x = xt.typed_data();
  const float* __restrict__ dy = dyt.typed_data();
  float* __restrict__ grad = dw->typed_data();
  ForRowChunks(pool, p_ptr, kernel_rows, length, [&](int64_t r) {
    std::memset(grad + r * cols, 0, sizeof(float) * cols);
    const float* __restrict__ x_row = x + (r % channels) * length + taps.Shift(r / channels);
    for (int32_t k = p_ptr[r]; k < p_ptr[r + 1]; ++k) {
      const float* __restrict__ dy_row = dy + static_cast<int64_t>(p_idx[k]) * length;
      float sum = 0.0f;
      taps.ForValidRuns([&](int64_t start) {
#pragma omp simd reduction(+ : sum)
        for (int64_t p = start; p < start + taps.valid_run; ++p) sum += x_row[p] * dy_row[p];
      });
      grad[p_widx[k]] = sum;
    }
  });
  return ffi::Error::Success();
}

}  // namespace

// Every handler: (thread pool; two float32 arrays, ptr, idx, widx) -> one float32 array.
static auto Binding() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::S32>>()
      .Arg<ffi::Buffer<ffi::S32>>()
      .Arg<ffi::Buffer<ffi::S32>>()
      .Ret<ffi::Buffer<ffi::F32>>();
}

// The convolution handlers: the same, with the window's attributes (see Taps), one struct.
XLA_FFI_REGISTER_STRUCT_ATTR_DECODING(ConvAttributes, ffi::StructMember<int64_t>("channels"),
                                      ffi::StructMember<int64_t>("column_stride"),
                                      ffi::StructMember<int64_t>("kernel_rows"),
                                      ffi::StructMember<int64_t>("row_stride"),
                                      ffi::StructMember<int64_t>("size"),
                                      ffi::StructMember<int64_t>("valid_rows"),
                                      ffi::StructMember<int64_t>("valid_run"));

static auto ConvBinding() { return Binding().Attrs<ConvAttributes>(); }

XLA_FFI_DEFINE_HANDLER_SYMBOL(MtrlSparseCompressedGather, CompressedGatherImpl, Binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(MtrlSparseSampledProduct, SampledProductImpl, Binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(MtrlSparseConvGather, ConvGatherImpl, ConvBinding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(MtrlSparseConvInputGradient, ConvInputGradientImpl, ConvBinding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(MtrlSparseConvSampledProduct, ConvSampledProductImpl,
                              ConvBinding());
