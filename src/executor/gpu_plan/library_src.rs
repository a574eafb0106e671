//! CUDA C source of the executor's fixed kernels (everything that is neither a GEMM nor a fused
//! element-wise kernel), and the one translation unit NVRTC compiles per model: these kernels
//! followed by the model's generated element-wise kernels. Like the generated kernels, the fixed
//! ones take every dimension as an argument, so one compiled module serves every batch size.
//!
//! Row kernels (Softmax, LayerNormalization, ReduceMean) give each row one warp: the tensor is
//! seen as `[outer, len, inner]` and row `r` is the `len` elements `(r / inner) * len * inner +
//! r % inner + l * inner`. Copies (Transpose, Concat, Gather) move whole elements of 1, 2, 4 or 8
//! bytes and exist once per element size (`sy_transpose_4` moves 4-byte elements).

use super::Program;

/// Threads per block of every fixed kernel (8 warps for the row kernels).
pub const BLOCK: u32 = 256;
/// Warps per block of the row kernels.
pub const ROWS_PER_BLOCK: u32 = BLOCK / 32;
/// Highest rank a transpose takes (the meta block holds this many dimensions).
pub const MAX_TRANSPOSE_RANK: usize = 8;

/// The fixed kernels. Names: `sy_softmax`, `sy_layer_norm`, `sy_reduce_mean`,
/// `sy_transpose_<bytes>`, `sy_concat_<bytes>`, `sy_gather_<bytes>_<i32|i64>`.
pub const LIBRARY_SOURCE: &str = r#"
// ---- fixed kernels ----
#define SY_NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float sy_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float sy_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Softmax over `len` elements `inner` apart; one warp per (outer, inner) row.
extern "C" __global__ void sy_softmax(const float* __restrict__ x, float* __restrict__ y,
                                      const long long outer, const long long len,
                                      const long long inner) {
    const long long row = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x & 31;
    if (row >= outer * inner) return;
    const long long base = (row / inner) * len * inner + row % inner;
    const float* xr = x + base;
    float* yr = y + base;
    float m = SY_NEG_INF;
    for (long long l = lane; l < len; l += 32) m = fmaxf(m, xr[l * inner]);
    m = sy_warp_max(m);
    float s = 0.0f;
    for (long long l = lane; l < len; l += 32) s += expf(xr[l * inner] - m);
    s = sy_warp_sum(s);
    const float inv = 1.0f / s;
    for (long long l = lane; l < len; l += 32) yr[l * inner] = expf(xr[l * inner] - m) * inv;
}

// LayerNormalization of `rows` contiguous rows of `cols`; scale and bias (bias may be null)
// repeat every scale_n / bias_n elements. One warp per row, two passes over the row.
extern "C" __global__ void sy_layer_norm(const float* __restrict__ x,
                                         const float* __restrict__ scale, const long long scale_n,
                                         const float* __restrict__ bias, const long long bias_n,
                                         float* __restrict__ y, const long long rows,
                                         const long long cols, const float eps) {
    const long long row = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const float* xr = x + row * cols;
    float* yr = y + row * cols;
    float s = 0.0f;
    for (long long c = lane; c < cols; c += 32) s += xr[c];
    const float mean = sy_warp_sum(s) / (float)cols;
    float q = 0.0f;
    for (long long c = lane; c < cols; c += 32) {
        const float d = xr[c] - mean;
        q += d * d;
    }
    const float inv = 1.0f / sqrtf(sy_warp_sum(q) / (float)cols + eps);
    for (long long c = lane; c < cols; c += 32) {
        float v = (xr[c] - mean) * inv * scale[c % scale_n];
        if (bias) v += bias[c % bias_n];
        yr[c] = v;
    }
}

// Mean over `len` elements `inner` apart; one warp per output element.
extern "C" __global__ void sy_reduce_mean(const float* __restrict__ x, float* __restrict__ y,
                                          const long long outer, const long long len,
                                          const long long inner) {
    const long long row = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x & 31;
    if (row >= outer * inner) return;
    const float* xr = x + (row / inner) * len * inner + row % inner;
    float s = 0.0f;
    for (long long l = lane; l < len; l += 32) s += xr[l * inner];
    s = sy_warp_sum(s);
    if (lane == 0) y[row] = s / (float)len;
}

// rank, the output's dimensions, and for each output dimension the input stride it walks.
struct sy_transpose_meta {
    long long rank;
    long long out_dims[8];
    long long in_strides[8];
};

template <typename T>
__device__ __forceinline__ void sy_transpose(const sy_transpose_meta& meta,
                                             const T* __restrict__ x, T* __restrict__ y,
                                             const long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        long long rest = i, src = 0;
        for (int d = (int)meta.rank - 1; d >= 0; --d) {
            src += (rest % meta.out_dims[d]) * meta.in_strides[d];
            rest /= meta.out_dims[d];
        }
        y[i] = x[src];
    }
}

// One input of a Concat: `outer` rows of `src_row` elements into rows of `dst_row`, at
// `dst_offset` within each.
template <typename T>
__device__ __forceinline__ void sy_concat(const T* __restrict__ src, T* __restrict__ dst,
                                          const long long outer, const long long src_row,
                                          const long long dst_row, const long long dst_offset) {
    const long long n = outer * src_row;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        dst[(i / src_row) * dst_row + dst_offset + i % src_row] = src[i];
    }
}

// Gather along an axis of `axis_len`: output [outer, nidx, inner]. An index out of range writes
// zero and reports itself in `flag` (flag[0] = 1, flag[1] = the index).
template <typename T, typename I>
__device__ __forceinline__ void sy_gather(const T* __restrict__ data, const I* __restrict__ idx,
                                          T* __restrict__ out, const long long outer,
                                          const long long axis_len, const long long nidx,
                                          const long long inner, long long* flag) {
    const long long n = outer * nidx * inner;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const long long r = i % inner;
        const long long q = (i / inner) % nidx;
        const long long o = i / (inner * nidx);
        const long long raw = (long long)idx[q];
        const long long k = raw < 0 ? raw + axis_len : raw;
        if (k < 0 || k >= axis_len) {
            flag[1] = raw;
            flag[0] = 1;
            out[i] = (T)0;
        } else {
            out[i] = data[(o * axis_len + k) * inner + r];
        }
    }
}

#define SY_COPIES(S, T)                                                                       \
    extern "C" __global__ void sy_transpose_##S(const sy_transpose_meta meta,                 \
                                                const T* __restrict__ x, T* __restrict__ y,   \
                                                const long long n) {                          \
        sy_transpose<T>(meta, x, y, n);                                                       \
    }                                                                                         \
    extern "C" __global__ void sy_concat_##S(const T* __restrict__ src, T* __restrict__ dst,  \
                                             const long long outer, const long long src_row,  \
                                             const long long dst_row,                         \
                                             const long long dst_offset) {                    \
        sy_concat<T>(src, dst, outer, src_row, dst_row, dst_offset);                          \
    }                                                                                         \
    extern "C" __global__ void sy_gather_##S##_i64(                                           \
        const T* __restrict__ data, const long long* __restrict__ idx, T* __restrict__ out,   \
        const long long outer, const long long axis_len, const long long nidx,                \
        const long long inner, long long* flag) {                                             \
        sy_gather<T, long long>(data, idx, out, outer, axis_len, nidx, inner, flag);          \
    }                                                                                         \
    extern "C" __global__ void sy_gather_##S##_i32(                                           \
        const T* __restrict__ data, const int* __restrict__ idx, T* __restrict__ out,         \
        const long long outer, const long long axis_len, const long long nidx,                \
        const long long inner, long long* flag) {                                             \
        sy_gather<T, int>(data, idx, out, outer, axis_len, nidx, inner, flag);                \
    }

SY_COPIES(1, unsigned char)
SY_COPIES(2, unsigned short)
SY_COPIES(4, unsigned int)
SY_COPIES(8, unsigned long long)
// ---- generated kernels ----
"#;

/// The whole translation unit of a program: the fixed kernels, then each generated kernel.
pub fn module_source(program: &Program) -> String {
    let mut src = String::from(LIBRARY_SOURCE);
    if program.kernels.iter().any(|k| k.source.contains("__half")) {
        src.insert_str(0, "#include <cuda_fp16.h>\n");
    }
    for kernel in &program.kernels {
        src.push('\n');
        src.push_str(&kernel.source);
    }
    src
}

/// Every `extern "C"` kernel name the module defines: the fixed kernels, then the generated ones.
pub fn kernel_names(program: &Program) -> Vec<String> {
    let mut names = vec![
        "sy_softmax".to_string(),
        "sy_layer_norm".to_string(),
        "sy_reduce_mean".to_string(),
    ];
    for size in [1, 2, 4, 8] {
        names.push(format!("sy_transpose_{size}"));
        names.push(format!("sy_concat_{size}"));
        names.push(format!("sy_gather_{size}_i64"));
        names.push(format!("sy_gather_{size}_i32"));
    }
    names.extend(program.kernels.iter().map(|k| k.name.clone()));
    names
}
