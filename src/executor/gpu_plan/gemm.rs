//! GEMM descriptors: what cuBLAS is asked to compute for a Gemm or MatMul step at one batch
//! size, in row-major terms (as the tensors are stored), and the column-major call that computes
//! it (cuBLAS is column-major: row-major C = A·B is column-major Cᵀ = Bᵀ·Aᵀ).

/// A (strided-batched) GEMM on row-major matrices: for each `b` in `0..batch`,
/// `C_b[m, n] = alpha * op(A_b)[m, k] * op(B_b)[k, n]`, where `X_b` starts `b * stride_x`
/// elements into X (a stride of 0 broadcasts one matrix to every batch).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GemmDesc {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub batch: usize,
    /// A is stored `[k, m]` (transposed) rather than `[m, k]`.
    pub trans_a: bool,
    /// B is stored `[n, k]` (transposed) rather than `[k, n]`.
    pub trans_b: bool,
    /// Row-major leading dimensions (elements between consecutive rows as stored).
    pub lda: usize,
    pub ldb: usize,
    pub ldc: usize,
    pub stride_a: usize,
    pub stride_b: usize,
    pub stride_c: usize,
    pub alpha: f32,
    pub beta: f32,
}

/// The column-major cuBLAS call (`cublasSgemmStridedBatched`, or `cublasSgemm` when `batch` is
/// 1) computing a `GemmDesc`: the operands are swapped, and so are m and n.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CublasGemm {
    /// `CUBLAS_OP_T` for the first operand (which is B).
    pub transa: bool,
    /// `CUBLAS_OP_T` for the second operand (which is A).
    pub transb: bool,
    pub m: i32,
    pub n: i32,
    pub k: i32,
    pub lda: i32,
    pub ldb: i32,
    pub ldc: i32,
    pub stride_a: i64,
    pub stride_b: i64,
    pub stride_c: i64,
    pub batch: i32,
    /// The first operand is the plan's B, the second its A.
    pub swapped: bool,
}

impl GemmDesc {
    /// A plain GEMM of row-major `op(A)[m, k]` by `op(B)[k, n]`, batch 1.
    pub fn new(m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool, alpha: f32) -> Self {
        GemmDesc {
            m,
            n,
            k,
            batch: 1,
            trans_a,
            trans_b,
            lda: if trans_a { m } else { k },
            ldb: if trans_b { k } else { n },
            ldc: n,
            stride_a: m * k,
            stride_b: k * n,
            stride_c: m * n,
            alpha,
            beta: 0.0,
        }
    }

    /// Floating-point operations (multiply and add counted apart).
    pub fn flops(&self) -> u64 {
        2 * (self.m * self.n * self.k * self.batch) as u64
    }

    /// The column-major call that computes this row-major product. Fails when a dimension does
    /// not fit cuBLAS's 32-bit integers.
    pub fn cublas(&self) -> Result<CublasGemm, String> {
        let int = |v: usize, what: &str| {
            i32::try_from(v).map_err(|_| format!("GEMM {what} = {v} exceeds cuBLAS's 32-bit range"))
        };
        Ok(CublasGemm {
            transa: self.trans_b,
            transb: self.trans_a,
            m: int(self.n, "n")?,
            n: int(self.m, "m")?,
            k: int(self.k, "k")?,
            lda: int(self.ldb, "ldb")?,
            ldb: int(self.lda, "lda")?,
            ldc: int(self.ldc, "ldc")?,
            stride_a: self.stride_b as i64,
            stride_b: self.stride_a as i64,
            stride_c: self.stride_c as i64,
            batch: int(self.batch, "batch")?,
            swapped: true,
        })
    }
}

/// The descriptor of a MatMul (numpy semantics) of shapes `a` by `b`, and its output shape; or
/// why the shapes do not fit a strided-batched GEMM.
pub fn matmul(a: &[usize], b: &[usize]) -> Result<(GemmDesc, Vec<usize>), String> {
    let mismatch = || format!("MatMul of {a:?} by {b:?}: inner dimensions differ");
    let a2: Vec<usize> = if a.len() == 1 {
        vec![1, a[0]]
    } else {
        a.to_vec()
    };
    let b2: Vec<usize> = if b.len() == 1 {
        vec![b[0], 1]
    } else {
        b.to_vec()
    };
    let (m, k) = (a2[a2.len() - 2], a2[a2.len() - 1]);
    let (kb, n) = (b2[b2.len() - 2], b2[b2.len() - 1]);
    if k != kb {
        return Err(mismatch());
    }
    let (batch_a, batch_b) = (&a2[..a2.len() - 2], &b2[..b2.len() - 2]);
    let batch_dims = super::shape::broadcast(batch_a, batch_b)
        .ok_or_else(|| format!("MatMul of {a:?} by {b:?}: batch dimensions do not broadcast"))?;
    let batch: usize = batch_dims.iter().product();
    let count = |dims: &[usize]| dims.iter().product::<usize>();
    let significant =
        |dims: &[usize]| -> Vec<usize> { dims.iter().copied().skip_while(|&d| d == 1).collect() };
    let mut desc = GemmDesc::new(m, n, k, false, false, 1.0);
    if count(batch_b) == 1 && count(batch_a) == batch {
        // B is one matrix: A's batches are consecutive rows of one taller product.
        desc = GemmDesc::new(m * batch, n, k, false, false, 1.0);
    } else {
        let stride = |dims: &[usize], size: usize| {
            if count(dims) == 1 {
                Ok(0)
            } else if significant(dims) == significant(&batch_dims) {
                Ok(size)
            } else {
                Err(format!(
                    "MatMul of {a:?} by {b:?}: a partial broadcast of batch dimensions is not a strided batch"
                ))
            }
        };
        desc.batch = batch;
        desc.stride_a = stride(batch_a, m * k)?;
        desc.stride_b = stride(batch_b, k * n)?;
        desc.stride_c = m * n;
    }
    let mut out = batch_dims;
    if a.len() > 1 {
        out.push(m);
    }
    if b.len() > 1 {
        out.push(n);
    }
    Ok((desc, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_weight_shared_by_every_row_folds_the_batch_into_m() {
        let (desc, out) = matmul(&[3, 32, 64], &[64, 256]).unwrap();
        assert_eq!(out, vec![3, 32, 256]);
        assert_eq!((desc.m, desc.n, desc.k, desc.batch), (96, 256, 64, 1));
        assert_eq!((desc.lda, desc.ldb, desc.ldc), (64, 256, 256));
    }

    #[test]
    fn attention_scores_are_a_strided_batch() {
        // [B, H, S, Dh] x [B, H, Dh, S]
        let (desc, out) = matmul(&[3, 2, 32, 32], &[3, 2, 32, 16]).unwrap();
        assert_eq!(out, vec![3, 2, 32, 16]);
        assert_eq!((desc.m, desc.n, desc.k, desc.batch), (32, 16, 32, 6));
        assert_eq!(
            (desc.stride_a, desc.stride_b, desc.stride_c),
            (1024, 512, 512)
        );
    }

    #[test]
    fn a_single_left_matrix_broadcasts_with_stride_zero() {
        let (desc, out) = matmul(&[4, 8], &[5, 8, 2]).unwrap();
        assert_eq!(out, vec![5, 4, 2]);
        assert_eq!(
            (desc.batch, desc.stride_a, desc.stride_b, desc.stride_c),
            (5, 0, 16, 8)
        );
    }

    #[test]
    fn vectors_drop_their_dimension() {
        assert_eq!(matmul(&[8], &[8, 3]).unwrap().1, vec![3]);
        assert_eq!(matmul(&[2, 8], &[8]).unwrap().1, vec![2]);
        assert_eq!(matmul(&[8], &[8]).unwrap().1, Vec::<usize>::new());
    }

    #[test]
    fn mismatches_and_partial_broadcasts_are_refused_with_the_shapes() {
        let e = matmul(&[2, 3], &[4, 5]).unwrap_err();
        assert!(e.contains("[2, 3]") && e.contains("[4, 5]"), "{e}");
        let e = matmul(&[2, 1, 3, 4], &[1, 5, 4, 2]).unwrap_err();
        assert!(e.contains("partial broadcast"), "{e}");
    }

    #[test]
    fn the_cublas_call_swaps_operands_and_dimensions() {
        // fc1 of the classifier at batch 4: features[4, 64] x W[128, 64]^T.
        let desc = GemmDesc::new(4, 128, 64, false, true, 1.0);
        assert_eq!((desc.lda, desc.ldb, desc.ldc), (64, 64, 128));
        let call = desc.cublas().unwrap();
        assert_eq!((call.transa, call.transb), (true, false));
        assert_eq!((call.m, call.n, call.k), (128, 4, 64));
        assert_eq!((call.lda, call.ldb, call.ldc), (64, 64, 128));
        assert!(call.swapped);
        assert_eq!(desc.flops(), 2 * 4 * 128 * 64);
    }
}
