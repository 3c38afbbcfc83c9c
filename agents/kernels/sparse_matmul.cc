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
// Both split their rows over XLA's intra-op thread pool in chunks of about equal active
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

}  // namespace

// Both handlers: (thread pool; two float32 arrays, ptr, idx, widx) -> one float32 array.
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

XLA_FFI_DEFINE_HANDLER_SYMBOL(MtrlSparseCompressedGather, CompressedGatherImpl, Binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(MtrlSparseSampledProduct, SampledProductImpl, Binding());
