//! The small-m path (m <= [`GEMV_MAX_M`], as in decode-time inference):
//! B is streamed once, row by row, without packing, and A (a few rows) is
//! widened once into a tiny k-major buffer.
//!
//! For row-major B (`k x n`, unit column stride) each step widens one
//! stretch of a B row and adds `x[r][l] * b[l][..]` to every row's f32
//! accumulators, which stay in L1 (`m x NB` floats). Each output is summed
//! in k order with one fused multiply-add per product, exactly as the
//! `Format::F32` microkernels sum it, so this path and the packed one give
//! the same bits. Other B layouts take the packed path: packing a
//! column-major B costs no more than streaming it.

use rayon::prelude::*;

use super::blis::{c_ptr, store_row};
use super::view::{MatMut, MatRef};
use crate::element::Element;
use crate::kernel::epilogue::Epilogue;
use crate::kernel::gemm::RowOps;

/// The largest m this path takes.
pub(crate) const GEMV_MAX_M: usize = 16;

/// Floats of accumulators plus four widened B rows per column chunk:
/// 40 KiB, inside a 48 KiB L1d.
const CHUNK_FLOATS: usize = 10 * 1024;

/// Whether this path applies (and wins) for these operands.
pub(crate) fn applies<T: Element>(a: &MatRef<'_, T>, b: &MatRef<'_, T>) -> bool {
    a.rows <= GEMV_MAX_M && (b.cs == 1 || b.cols <= 1) && b.rows > 0
}

/// Bytes of scratch [`run`] allocates: A widened (`k x m` f32) and each
/// thread's accumulators and widened B rows; `None` on overflow.
pub(crate) fn scratch_bytes(m: usize, k: usize, threads: usize) -> Option<usize> {
    let per_thread = (m + 4) * (CHUNK_FLOATS / (m + 4)).clamp(16, 4096);
    k.checked_mul(m)?
        .checked_add(threads.checked_mul(per_thread)?)?
        .checked_mul(size_of::<f32>())
        .filter(|&bytes| bytes <= isize::MAX as usize)
}

/// Runs the small-m GEMM; returns the number of non-finite outputs.
pub(crate) fn run<K: RowOps, T: Element, C: Element>(
    kern: K,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    c: MatMut<'_, C>,
    ep: &Epilogue<'_>,
    threads: usize,
) -> usize {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    // Checked for real: the rows below are written through a raw pointer.
    assert_eq!((b.rows, c.rows, c.cols), (k, m, n), "gemv shapes");
    if m == 0 || n == 0 {
        return 0;
    }
    // A, widened and k-major: xt[l * m + r] = a[r][l].
    let mut xt = vec![0.0f32; k * m];
    for r in 0..m {
        for l in 0..k {
            xt[l * m + r] = a.at(r, l).to_f32();
        }
    }
    let nb = (CHUNK_FLOATS / (m + 4)).clamp(16, 4096) / 16 * 16;
    let chunks = n.div_ceil(nb);
    // Balance: each thread one contiguous range of columns.
    let threads = threads.min(chunks.max(n.div_ceil(256))).max(1);
    let per = n.div_ceil(threads).div_ceil(16) * 16;
    let (cptr, c_len) = c_ptr(c);
    let xt = &xt;
    let work = |t: usize| -> usize {
        let _mode = crate::fp_env::Ieee::enter();
        let (lo, hi) = ((t * per).min(n), ((t + 1) * per).min(n));
        let mut acc = vec![0.0f32; m * nb.min(hi - lo)];
        let mut tmp = vec![0.0f32; 4 * nb.min(hi - lo)];
        let mut bad = 0;
        for j0 in (lo..hi).step_by(nb) {
            let w = nb.min(hi - j0);
            let acc = &mut acc[..m * w];
            acc.fill(0.0);
            let mut rows: Vec<&mut [f32]> = acc.chunks_mut(w).collect();
            let mut l = 0;
            // Four rows of B per pass over the accumulators.
            while l + 4 <= k {
                let row = |q: usize| {
                    let off = (l + q) * b.rs + j0 * b.cs;
                    &b.data[off..off + w]
                };
                let x4 = &xt[l * m..(l + 4) * m];
                kern.axpy_rows4_widen(x4, [row(0), row(1), row(2), row(3)], &mut tmp, &mut rows);
                l += 4;
            }
            for l in l..k {
                let off = l * b.rs + j0 * b.cs;
                let t = &mut tmp[..w];
                kern.widen(&b.data[off..off + w], t);
                kern.axpy_rows(&xt[l * m..(l + 1) * m], t, &mut rows);
            }
            for (r, row) in rows.iter_mut().enumerate() {
                // SAFETY: row r < m, columns j0..j0 + w inside this
                // thread's range lo..hi <= n (shapes checked above); the
                // ranges of the threads do not overlap.
                bad += unsafe { store_row(kern, ep, row, r, j0, cptr, c_len) };
            }
        }
        bad
    };
    if threads == 1 {
        work(0)
    } else {
        (0..threads).into_par_iter().map(work).sum()
    }
}
