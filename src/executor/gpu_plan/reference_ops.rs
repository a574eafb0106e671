//! The reference run's numeric kernels: plain loops over host memory, in f64 where they
//! accumulate, with the same dimensions the device kernels get.

use super::gemm::GemmDesc;
use super::onnx::HostTensor;
use super::shape::Rows;

/// The error function, through the Chebyshev fit of erfc in Numerical Recipes (`erfcc`,
/// fractional error below 1.2e-7: ample for comparing FLOAT results).
pub(super) fn erf(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.5 * x.abs());
    let y = t
        * (-x * x - 1.26551223
            + t * (1.00002368
                + t * (0.37409196
                    + t * (0.09678418
                        + t * (-0.18628806
                            + t * (0.27886807
                                + t * (-1.13520398
                                    + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))))
            .exp();
    if x >= 0.0 { 1.0 - y } else { y - 1.0 }
}

pub(super) fn put_f32(out: &mut [u8], i: usize, v: f32) {
    out[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
}

pub(super) fn gemm(d: &GemmDesc, a: &[f32], b: &[f32], out: &mut [u8]) {
    for batch in 0..d.batch {
        let (ab, bb, cb) = (batch * d.stride_a, batch * d.stride_b, batch * d.stride_c);
        for i in 0..d.m {
            for j in 0..d.n {
                let mut acc = 0f64;
                for p in 0..d.k {
                    let x = if d.trans_a {
                        a[ab + p * d.lda + i]
                    } else {
                        a[ab + i * d.lda + p]
                    };
                    let y = if d.trans_b {
                        b[bb + j * d.ldb + p]
                    } else {
                        b[bb + p * d.ldb + j]
                    };
                    acc += x as f64 * y as f64;
                }
                put_f32(out, cb + i * d.ldc + j, d.alpha * acc as f32);
            }
        }
    }
}

pub(super) fn softmax(r: Rows, x: &[f32], out: &mut [u8]) {
    for o in 0..r.outer {
        for j in 0..r.inner {
            let at = |l: usize| (o * r.len + l) * r.inner + j;
            let max = (0..r.len)
                .map(|l| x[at(l)])
                .fold(f32::NEG_INFINITY, f32::max);
            let sum: f64 = (0..r.len).map(|l| ((x[at(l)] - max) as f64).exp()).sum();
            for l in 0..r.len {
                put_f32(out, at(l), (((x[at(l)] - max) as f64).exp() / sum) as f32);
            }
        }
    }
}

pub(super) fn layer_norm(
    rows: usize,
    cols: usize,
    eps: f32,
    x: &[f32],
    params: &[Vec<f32>],
    out: &mut [u8],
) {
    let param = |p: &Vec<f32>, c: usize| if p.len() == 1 { p[0] } else { p[c % p.len()] };
    for r in 0..rows {
        let row = &x[r * cols..(r + 1) * cols];
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / cols as f64;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / cols as f64;
        let inv = 1.0 / (var + eps as f64).sqrt();
        for (c, &x) in row.iter().enumerate() {
            let mut v = (x as f64 - mean) * inv * param(&params[0], c) as f64;
            if let Some(bias) = params.get(1) {
                v += param(bias, c) as f64;
            }
            put_f32(out, r * cols + c, v as f32);
        }
    }
}

pub(super) fn reduce_mean(r: Rows, x: &[f32], out: &mut [u8]) {
    for o in 0..r.outer {
        for j in 0..r.inner {
            let sum: f64 = (0..r.len)
                .map(|l| x[(o * r.len + l) * r.inner + j] as f64)
                .sum();
            put_f32(out, o * r.inner + j, (sum / r.len as f64) as f32);
        }
    }
}

pub(super) fn transpose(dims: &[usize], perm: &[usize], size: usize, x: &[u8], out: &mut [u8]) {
    let rank = dims.len();
    let mut strides = vec![1usize; rank];
    for d in (0..rank.saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * dims[d + 1];
    }
    let out_dims: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
    let numel: usize = dims.iter().product();
    for i in 0..numel {
        let (mut rest, mut src) = (i, 0);
        for d in (0..rank).rev() {
            src += (rest % out_dims[d]) * strides[perm[d]];
            rest /= out_dims[d];
        }
        out[i * size..(i + 1) * size].copy_from_slice(&x[src * size..(src + 1) * size]);
    }
}

pub(super) fn concat(
    outer: usize,
    extents: &[usize],
    inner_bytes: usize,
    ins: &[HostTensor],
    out: &mut [u8],
) {
    let mut at = 0;
    for o in 0..outer {
        for (t, &e) in ins.iter().zip(extents) {
            let n = e * inner_bytes;
            out[at..at + n].copy_from_slice(&t.bytes[o * n..(o + 1) * n]);
            at += n;
        }
    }
}

pub(super) fn gather(
    outer: usize,
    axis_len: usize,
    idx: &[i64],
    inner_bytes: usize,
    data: &[u8],
    out: &mut [u8],
) -> Result<(), String> {
    for o in 0..outer {
        for (q, &raw) in idx.iter().enumerate() {
            let i = if raw < 0 { raw + axis_len as i64 } else { raw };
            if !(0..axis_len as i64).contains(&i) {
                return Err(format!("Gather index {raw} out of range for {axis_len}"));
            }
            let src = (o * axis_len + i as usize) * inner_bytes;
            let dst = (o * idx.len() + q) * inner_bytes;
            out[dst..dst + inner_bytes].copy_from_slice(&data[src..src + inner_bytes]);
        }
    }
    Ok(())
}
