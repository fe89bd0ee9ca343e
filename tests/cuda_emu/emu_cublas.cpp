// The emulated cuBLAS (see emu.h and cublas_v2.h): reference loops with cuBLAS's argument checks
// and column-major semantics. Arguments are checked (and host scalars and arrays read) when the
// call is made; the products run when the handle's stream does. Products accumulate in double
// and are rounded once to the output type, so they are at least as accurate as cuBLAS's fp32
// accumulation.
#include <cstdarg>
#include <cstdio>
#include <vector>

#include "cublas_v2.h"
#include "cuda_bf16.h"
#include "emu.h"

struct cublasContext {
  cudaStream_t stream = nullptr;
};

namespace {

cublasStatus_t invalid(const char* call, const char* format, ...) {
  va_list args;
  va_start(args, format);
  moe_emu::report(call, format, args);
  va_end(args);
  return CUBLAS_STATUS_INVALID_VALUE;
}

// A column-major operand: element (i, j) of op(X) for X stored with leading dimension ld.
struct Operand {
  const void* data;
  cudaDataType_t type;
  int ld;
  bool transposed;
  double at(long i, long j) const {
    const long index = transposed ? j + i * static_cast<long>(ld) : i + j * static_cast<long>(ld);
    if (type == CUDA_R_32F) return static_cast<const float*>(data)[index];
    return __bfloat162float(static_cast<const __nv_bfloat16*>(data)[index]);
  }
};

size_t type_size(cudaDataType_t t) {
  return t == CUDA_R_32F ? 4 : 2;
}

// Bytes a column-major rows x cols matrix spans with leading dimension ld.
size_t span_bytes(long rows, long cols, int ld, cudaDataType_t t) {
  if (rows == 0 || cols == 0) return 0;
  return (static_cast<size_t>(cols - 1) * static_cast<size_t>(ld) + static_cast<size_t>(rows)) *
         type_size(t);
}

// One GEMM: C [m, n] = alpha op(A) op(B) + beta C.
struct Gemm {
  const char* call;
  cublasOperation_t ta, tb;
  int m, n, k;
  float alpha;
  const void* A;
  cudaDataType_t at;
  int lda;
  const void* B;
  cudaDataType_t bt;
  int ldb;
  float beta;
  void* C;
  cudaDataType_t ct;
  int ldc;
};

// The checks cuBLAS makes, and the device-pointer checks a real GPU enforces by faulting.
cublasStatus_t check(const Gemm& g) {
  const char* call = g.call;
  if (g.ta == CUBLAS_OP_C || g.tb == CUBLAS_OP_C) return invalid(call, "conjugate transpose");
  if (g.m < 0 || g.n < 0 || g.k < 0) return invalid(call, "m=%d n=%d k=%d", g.m, g.n, g.k);
  const bool a_t = g.ta == CUBLAS_OP_T, b_t = g.tb == CUBLAS_OP_T;
  const int a_rows = a_t ? g.k : g.m, b_rows = b_t ? g.n : g.k;
  if (g.lda < (a_rows > 1 ? a_rows : 1)) return invalid(call, "lda=%d < %d", g.lda, a_rows);
  if (g.ldb < (b_rows > 1 ? b_rows : 1)) return invalid(call, "ldb=%d < %d", g.ldb, b_rows);
  if (g.ldc < (g.m > 1 ? g.m : 1)) return invalid(call, "ldc=%d < m=%d", g.ldc, g.m);
  if (g.m == 0 || g.n == 0) return CUBLAS_STATUS_SUCCESS;
  const size_t a_bytes = span_bytes(a_rows, a_t ? g.m : g.k, g.lda, g.at);
  const size_t b_bytes = span_bytes(b_rows, b_t ? g.k : g.n, g.ldb, g.bt);
  const size_t c_bytes = span_bytes(g.m, g.n, g.ldc, g.ct);
  if (g.k > 0 && !moe_emu::device_range(g.A, a_bytes))
    return invalid(call, "A=%p is not a device range of %zu bytes", g.A, a_bytes);
  if (g.k > 0 && !moe_emu::device_range(g.B, b_bytes))
    return invalid(call, "B=%p is not a device range of %zu bytes", g.B, b_bytes);
  if (!moe_emu::device_range(g.C, c_bytes))
    return invalid(call, "C=%p is not a device range of %zu bytes", g.C, c_bytes);
  return CUBLAS_STATUS_SUCCESS;
}

// The product, when the stream runs it.
void compute(const Gemm& g) {
  if (g.m == 0 || g.n == 0) return;
  moe_emu::DeviceScope scope(g.call);
  const Operand a{g.A, g.at, g.lda, g.ta == CUBLAS_OP_T}, b{g.B, g.bt, g.ldb, g.tb == CUBLAS_OP_T};
  for (long j = 0; j < g.n; ++j) {
    for (long i = 0; i < g.m; ++i) {
      double acc = 0;
      for (long p = 0; p < g.k; ++p) acc += a.at(i, p) * b.at(p, j);
      const long index = i + j * static_cast<long>(g.ldc);
      if (g.ct == CUDA_R_32F) {
        float* c = static_cast<float*>(g.C) + index;
        *c = static_cast<float>(g.alpha * acc + (g.beta == 0.0f ? 0.0 : g.beta * double(*c)));
      } else {
        __nv_bfloat16* c = static_cast<__nv_bfloat16*>(g.C) + index;
        const double old = g.beta == 0.0f ? 0.0 : g.beta * double(__bfloat162float(*c));
        *c = __float2bfloat16_rn(static_cast<float>(g.alpha * acc + old));
      }
    }
  }
}

// Checked now, computed when the handle's stream runs.
cublasStatus_t gemm(cublasHandle_t handle, const Gemm& g) {
  const cublasStatus_t status = check(g);
  if (status == CUBLAS_STATUS_SUCCESS) moe_emu::enqueue(handle->stream, [g] { compute(g); });
  return status;
}

bool supported_types(cudaDataType_t a, cudaDataType_t b, cudaDataType_t c,
                     cublasComputeType_t compute_type) {
  if (compute_type != CUBLAS_COMPUTE_32F) return false;
  if (a == CUDA_R_32F && b == CUDA_R_32F && c == CUDA_R_32F) return true;
  return a == CUDA_R_16BF && b == CUDA_R_16BF && (c == CUDA_R_16BF || c == CUDA_R_32F);
}

}  // namespace

cublasStatus_t cublasCreate(cublasHandle_t* handle) {
  *handle = new cublasContext;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy(cublasHandle_t handle) {
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->stream = stream;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t) {
  return handle ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_INITIALIZED;
}

const char* cublasGetStatusString(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS:
      return "the operation completed successfully";
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return "the library was not initialized";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "the functionality requested is not supported";
    default:
      return "an internal operation failed";
  }
}

cublasStatus_t cublasSgemm(cublasHandle_t handle, cublasOperation_t transa,
                           cublasOperation_t transb, int m, int n, int k, const float* alpha,
                           const float* A, int lda, const float* B, int ldb, const float* beta,
                           float* C, int ldc) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  return gemm(handle, {"cublasSgemm", transa, transb, m, n, k, *alpha, A, CUDA_R_32F, lda, B,
                       CUDA_R_32F, ldb, *beta, C, CUDA_R_32F, ldc});
}

cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t handle, cublasOperation_t transa,
                                         cublasOperation_t transb, int m, int n, int k,
                                         const float* alpha, const float* A, int lda,
                                         long long strideA, const float* B, int ldb,
                                         long long strideB, const float* beta, float* C, int ldc,
                                         long long strideC, int batchCount) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (batchCount < 0) return invalid("cublasSgemmStridedBatched", "batchCount=%d", batchCount);
  for (int b = 0; b < batchCount; ++b) {
    const cublasStatus_t s =
        gemm(handle, {"cublasSgemmStridedBatched", transa, transb, m, n, k, *alpha, A + b * strideA,
                      CUDA_R_32F, lda, B + b * strideB, CUDA_R_32F, ldb, *beta, C + b * strideC,
                      CUDA_R_32F, ldc});
    if (s != CUBLAS_STATUS_SUCCESS) return s;
  }
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSgemv(cublasHandle_t handle, cublasOperation_t trans, int m, int n,
                           const float* alpha, const float* A, int lda, const float* x, int incx,
                           const float* beta, float* y, int incy) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  const char* call = "cublasSgemv";
  if (m < 0 || n < 0 || lda < (m > 1 ? m : 1) || incx == 0 || incy == 0)
    return invalid(call, "m=%d n=%d lda=%d incx=%d incy=%d", m, n, lda, incx, incy);
  if (incx < 0 || incy < 0) return invalid(call, "negative increments are not emulated");
  const bool t = trans == CUBLAS_OP_T;
  const long x_len = t ? m : n, y_len = t ? n : m;
  if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
  if (!moe_emu::device_range(A, span_bytes(m, n, lda, CUDA_R_32F)) ||
      !moe_emu::device_range(x, ((x_len - 1) * incx + 1) * sizeof(float)) ||
      !moe_emu::device_range(y, ((y_len - 1) * incy + 1) * sizeof(float)))
    return invalid(call, "A, x or y is not a device range of its size");
  const float al = *alpha, be = *beta;
  moe_emu::enqueue(handle->stream, [=] {
    moe_emu::DeviceScope scope(call);
    for (long i = 0; i < y_len; ++i) {
      double acc = 0;
      for (long j = 0; j < x_len; ++j) {
        const double a = t ? A[j + i * static_cast<long>(lda)] : A[i + j * static_cast<long>(lda)];
        acc += a * x[j * incx];
      }
      float& out = y[i * incy];
      out = static_cast<float>(al * acc + (be == 0.0f ? 0.0 : be * double(out)));
    }
  });
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa,
                            cublasOperation_t transb, int m, int n, int k, const void* alpha,
                            const void* A, cudaDataType_t Atype, int lda, const void* B,
                            cudaDataType_t Btype, int ldb, const void* beta, void* C,
                            cudaDataType_t Ctype, int ldc, cublasComputeType_t computeType,
                            cublasGemmAlgo_t) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!supported_types(Atype, Btype, Ctype, computeType)) return CUBLAS_STATUS_NOT_SUPPORTED;
  return gemm(handle,
              {"cublasGemmEx", transa, transb, m, n, k, *static_cast<const float*>(alpha), A, Atype,
               lda, B, Btype, ldb, *static_cast<const float*>(beta), C, Ctype, ldc});
}

cublasStatus_t cublasGemmGroupedBatchedEx(
    cublasHandle_t handle, const cublasOperation_t transa_array[],
    const cublasOperation_t transb_array[], const int m_array[], const int n_array[],
    const int k_array[], const void* alpha_array, const void* const Aarray[], cudaDataType_t Atype,
    const int lda_array[], const void* const Barray[], cudaDataType_t Btype, const int ldb_array[],
    const void* beta_array, void* const Carray[], cudaDataType_t Ctype, const int ldc_array[],
    int group_count, const int group_size[], cublasComputeType_t computeType) {
  const char* call = "cublasGemmGroupedBatchedEx";
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!supported_types(Atype, Btype, Ctype, computeType)) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (group_count < 0) return invalid(call, "group_count=%d", group_count);
  long problems = 0;
  for (int g = 0; g < group_count; ++g) {
    if (group_size[g] < 0) return invalid(call, "group_size[%d]=%d", g, group_size[g]);
    problems += group_size[g];
  }
  if (problems == 0) return CUBLAS_STATUS_SUCCESS;
  // The pointer arrays are read by the device: they must be device memory.
  const size_t bytes = sizeof(void*) * static_cast<size_t>(problems);
  if (!moe_emu::device_range(Aarray, bytes) || !moe_emu::device_range(Barray, bytes) ||
      !moe_emu::device_range(Carray, bytes))
    return invalid(call, "Aarray, Barray and Carray must be device arrays of %ld pointers",
                   problems);
  // Host arrays are read now; the device's pointer arrays, and the products, when the stream
  // runs (the arrays may be written by a copy enqueued just before).
  std::vector<Gemm> shapes;
  for (int g = 0; g < group_count; ++g)
    for (int i = 0; i < group_size[g]; ++i)
      shapes.push_back({call, transa_array[g], transb_array[g], m_array[g], n_array[g], k_array[g],
                        static_cast<const float*>(alpha_array)[g], nullptr, Atype, lda_array[g],
                        nullptr, Btype, ldb_array[g], static_cast<const float*>(beta_array)[g],
                        nullptr, Ctype, ldc_array[g]});
  moe_emu::enqueue(handle->stream, [shapes, Aarray, Barray, Carray]() mutable {
    {
      moe_emu::DeviceScope scope("cublasGemmGroupedBatchedEx (pointer arrays)");
      for (size_t p = 0; p < shapes.size(); ++p) {
        shapes[p].A = Aarray[p];
        shapes[p].B = Barray[p];
        shapes[p].C = Carray[p];
      }
    }
    for (const Gemm& g : shapes) {
      if (check(g) != CUBLAS_STATUS_SUCCESS)
        moe_emu::fatal("cublasGemmGroupedBatchedEx: a problem's operands are not device ranges");
      compute(g);
    }
  });
  return CUBLAS_STATUS_SUCCESS;
}
