//! Why products must be summed in f32: the error of a bf16 GEMM whose
//! running sums are rounded to bf16 after every addition, against
//! halfkern's GEMM (products summed in f32), on the wide workload's own
//! operands, as the reduction length k grows.
//!
//! halfkern never sums in bf16 (DESIGN.md: "accumulation always in f32"),
//! so the bf16 accumulator is simulated here, one output at a time: each
//! product of two bf16 values is exact in f32 (8 + 8 significant bits), and
//! the sum is rounded to nearest bf16 after each of the k additions, in
//! order, which is what a bf16 dot product with a bf16 accumulator does.
//! Both are measured against an f64 sum of the same (already bf16) inputs,
//! so the error is the accumulation's alone. The other direction of a
//! comparison, what rounding the inputs to bf16 costs, is the accuracy
//! difference of the trained rows.

use halfkern::{Element, Error, Gemm, MatMut, MatRef, bf16};

/// One GEMM's operands in bf16: `a` is `m x k`, `b` is `k x n`, row-major.
#[derive(Clone, Debug)]
pub struct Operands {
    /// What the product is, for the table.
    pub name: &'static str,
    /// Left operand, row-major.
    pub a: Vec<bf16>,
    /// Right operand, row-major.
    pub b: Vec<bf16>,
    /// Rows of `a`.
    pub m: usize,
    /// The reduction length.
    pub k: usize,
    /// Columns of `b`.
    pub n: usize,
}

/// The relative error `||C - C_exact|| / ||C_exact||` (Frobenius norms)
/// of both accumulations at one k.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AccumError {
    /// The reduction length: the first k columns of `a` and rows of `b`.
    pub k: usize,
    /// halfkern's GEMM (f32 sums).
    pub f32_sum: f64,
    /// Sums rounded to bf16 after every addition (simulated).
    pub bf16_sum: f64,
}

/// The errors at k = 16, 64, 256, ... up to the operands' k (and k itself),
/// over the first `rows x cols` outputs.
///
/// # Errors
///
/// Whatever halfkern's GEMM returns (a shape error here is a bug).
pub fn growth(ops: &Operands, rows: usize, cols: usize) -> Result<Vec<AccumError>, Error> {
    let (rows, cols) = (rows.min(ops.m), cols.min(ops.n));
    let mut ks: Vec<usize> = std::iter::successors(Some(16usize), |k| Some(k * 4))
        .take_while(|&k| k < ops.k)
        .collect();
    ks.push(ops.k);
    let mut out = Vec::new();
    for k in ks {
        // The leading rows x k block of a, k x cols block of b.
        let a = MatRef::strided(&ops.a, rows, k, ops.k, 1)?;
        let b = MatRef::strided(&ops.b, k, cols, ops.n, 1)?;
        let mut c = vec![0f32; rows * cols];
        halfkern::gemm(a, b, MatMut::row_major(&mut c, rows, cols)?, &Gemm::new())?;
        let (mut err32, mut err16, mut norm) = (0f64, 0f64, 0f64);
        for i in 0..rows {
            for j in 0..cols {
                let (mut exact, mut acc) = (0f64, bf16::ZERO);
                for p in 0..k {
                    let (x, y) = (ops.a[i * ops.k + p].to_f32(), ops.b[p * ops.n + j].to_f32());
                    exact += f64::from(x) * f64::from(y);
                    // acc + x*y is exact in f64; one rounding to bf16.
                    acc = bf16::from_f64(f64::from(acc.to_f32()) + f64::from(x * y));
                }
                norm += exact * exact;
                err32 += (f64::from(c[i * cols + j]) - exact).powi(2);
                err16 += (f64::from(acc.to_f32()) - exact).powi(2);
            }
        }
        let rel = |e: f64| if norm > 0.0 { (e / norm).sqrt() } else { 0.0 };
        out.push(AccumError {
            k,
            f32_sum: rel(err32),
            bf16_sum: rel(err16),
        });
    }
    Ok(out)
}

/// Converts any element slice to bf16 (round to nearest).
///
/// # Errors
///
/// None in practice: the lengths match.
pub fn to_bf16<T: Element>(x: &[T]) -> Result<Vec<bf16>, Error> {
    let mut out = vec![bf16::ZERO; x.len()];
    halfkern::convert(x, &mut out)?;
    Ok(out)
}
