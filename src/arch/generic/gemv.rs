//! The small-m GEMM kernel for a row-major B (`k x n`, unit column
//! stride), written once for every SIMD ISA: one block of columns of
//! `y = x B` for the `mp` padded rows of A that `gemm::gemv` hands it.
//!
//! B streams once, each row read left to right. A tile of `R` rows of A by
//! `V` vectors of columns keeps `R * V` accumulators in registers (the
//! [`F32Simd::REGISTERS`] budget and the lane count decide `R`, `V` and
//! how many groups of `R` rows there are); every B vector loaded feeds `R`
//! fused multiply-adds and every broadcast of A `V`. The tile lives over
//! one pass of a few B rows (8, or 16 where 32 registers hold 16 rows): it
//! is loaded from `y` (zeros on the first pass), takes the pass's rows in
//! k order and is stored back, so each output sums its products in k order
//! with one fused multiply-add each, exactly as the `Format::F32`
//! microkernels sum them: this path and the packed one give the same bits.
//!
//! Why passes and not the whole k per tile: a tile walking all of k would
//! read one line from each of k rows per strip, a pattern neither DRAM nor
//! the prefetchers serve well; a pass reads a few rows from start to end,
//! each a stream the prefetchers follow, while the first group prefetches
//! the same columns of the rows 8 (or a 16-row pass) further on into L2
//! (prefetching ahead in the same row, into L1, ran slower). One row of
//! A with a 2-byte B takes one B row per pass: a single stream, which
//! DRAM serves faster than 8 interleaved ones of half the bytes per visit
//! (BENCHMARKS.md, "Decode at m = 1 with one B row per pass").

use crate::element::{Element, Slice};
use crate::kernel::chunk::Io;
use crate::kernel::simd::{F32Simd, SimdOp};

/// `y[r * w + j] = sum over l < k, in k order, of x[l * mp + r] * b[l * rs + j]`
/// for the `mp` rows (1, 2, 4, 8 or 16) and `w` columns of one block,
/// with `k = x.len() / mp` and `w = y.len() / mp`. `b` holds at least
/// `(k - 1) * rs + w` elements when `k > 0` (`gemv_block_shape` checks).
pub(crate) struct GemvBlock<'a, T> {
    /// A widened and transposed: its k rows of `mp` values.
    pub(crate) x: &'a [f32],
    /// Rows of A (padded): 1, 2, 4, 8 or 16.
    pub(crate) mp: usize,
    /// B's rows from this block's first column.
    pub(crate) b: &'a [T],
    /// Elements from one B row to the next.
    pub(crate) rs: usize,
    /// The accumulators, `mp x w` row-major; overwritten.
    pub(crate) y: &'a mut [f32],
}

/// Whether [`GemvBlock`] takes `mp` rows (the rest go to the ISA's
/// portable `generic_gemv_block`).
pub(crate) fn takes(mp: usize) -> bool {
    matches!(mp, 1 | 2 | 4 | 8 | 16)
}

/// Columns of one block for `mp` rows on a SIMD ISA whose accumulators
/// get `l1_floats` of L1 (B is widened in registers, so little else needs
/// L1), and for one row the whole of a B row up to 8192 columns, so that
/// each B row is read from start to end in one stream (half rows ran at
/// 0.8x on the Zen 4 VM).
pub(crate) fn block_cols(mp: usize, l1_floats: usize) -> usize {
    if mp <= 1 {
        return 8192;
    }
    (l1_floats / mp).clamp(16, 8192) / 16 * 16
}

impl<T: Element> SimdOp for GemvBlock<'_, T> {
    type Output = ();
    const IEEE: bool = true;

    fn scalar(self) {
        // The same sums in the same order, one product at a time.
        let GemvBlock { x, mp, b, rs, y } = self;
        let (k, w) = crate::kernel::gemm::gemv_block_shape(x, mp, b, rs, y);
        for r in 0..mp {
            for j in 0..w {
                y[r * w + j] = (0..k).fold(0.0f32, |acc, l| {
                    x[l * mp + r].mul_add(b[l * rs + j].to_f32(), acc)
                });
            }
        }
    }

    #[inline(always)]
    fn simd<S: F32Simd>(self, s: S) {
        let GemvBlock { x, mp, b, rs, y } = self;
        match T::slice(b) {
            Slice::F32(b) => tiles_for(s, x, mp, b, rs, y),
            Slice::Bf16(b) => tiles_for(s, x, mp, b, rs, y),
            Slice::F16(b) => tiles_for(s, x, mp, b, rs, y),
        }
    }
}

/// The tile for `mp` rows on this ISA, as `(R, RN, V, G)`: `G` groups
/// of rows by `V` vectors, the first of `R` rows and the others of `RN`.
/// With 16 registers (AVX2) at most 12 accumulators: 16 rows in groups
/// of 6, 5 and 5 by two vectors (12, 10 and 10 chains, room for the FMA
/// latency; four groups of 4 x 2, 8 chains, were slower: BENCHMARKS.md,
/// "Fifth session on the Zen 4 VM"),
/// fewer rows 4 x 2 (8 x 1 ran at 0.75-0.85x of it and 4 x 3 spilled).
/// With 32 (AVX-512, NEON), one row takes 8 vectors of 16 lanes (16,
/// bf16 and f16 fetching 512 bytes of a row per visit as f32 does, ran at
/// 0.9x) or 16 of 4; 8 rows 24 accumulators (8 x 2 ran at 0.9x); 16 rows
/// on AVX-512 one group of 16 x 1 (two of 8 x 3 and four of 4 x 4 ran
/// alike).
#[inline(always)]
fn tiles_for<S: F32Simd, U: Io>(s: S, x: &[f32], mp: usize, b: &[U], rs: usize, y: &mut [f32]) {
    let wide = S::REGISTERS >= 32;
    match (mp, wide, S::LANES >= 16) {
        (1, true, false) => tiles::<S, U, 1, 1, 16, 1>(s, x, b, rs, y),
        (1, _, _) => tiles::<S, U, 1, 1, 8, 1>(s, x, b, rs, y),
        (2, true, _) => tiles::<S, U, 2, 2, 8, 1>(s, x, b, rs, y),
        (2, false, _) => tiles::<S, U, 2, 2, 4, 1>(s, x, b, rs, y),
        (4, true, _) => tiles::<S, U, 4, 4, 4, 1>(s, x, b, rs, y),
        (4, false, _) => tiles::<S, U, 4, 4, 2, 1>(s, x, b, rs, y),
        (8, true, _) => tiles::<S, U, 8, 8, 3, 1>(s, x, b, rs, y),
        (8, false, _) => tiles::<S, U, 4, 4, 2, 2>(s, x, b, rs, y),
        (16, true, true) => tiles::<S, U, 16, 16, 1, 1>(s, x, b, rs, y),
        (16, true, false) => tiles::<S, U, 8, 8, 3, 2>(s, x, b, rs, y),
        (16, false, _) => tiles::<S, U, 6, 5, 2, 3>(s, x, b, rs, y),
        _ => unreachable!("GemvBlock: {mp} rows"),
    }
}

/// The block in passes of B rows and strips of `V` vectors (the last
/// columns in strips of one vector, the final one partial), every group of
/// rows over each strip before the next strip: the later groups find the
/// pass's B in L1.
#[inline(always)]
fn tiles<S: F32Simd, U: Io, const R: usize, const RN: usize, const V: usize, const G: usize>(
    s: S,
    x: &[f32],
    b: &[U],
    rs: usize,
    y: &mut [f32],
) {
    let mp = R + RN * (G - 1);
    let (k, w) = crate::kernel::gemm::gemv_block_shape(x, mp, b, rs, y);
    if k == 0 {
        y.fill(0.0);
        return;
    }
    // B rows per pass: 8 streams for small tiles (as many as the DRAM
    // probe reads; 16 and 4 ran slower), 16 for 16 rows, whose tile
    // reload per pass costs more, and one for a single row of A over
    // 2-byte elements (see the module docs).
    let pass = if mp >= 16 && S::REGISTERS >= 32 {
        16
    } else if mp == 1 && size_of::<U>() == 2 {
        1
    } else {
        8
    };
    let job = Job {
        x,
        b,
        rs,
        w,
        ahead: pass.max(8),
    };
    let lanes = S::LANES;
    let mut l0 = 0;
    while l0 < k {
        let rows = l0..(l0 + pass).min(k);
        let mut j = 0;
        while j + V * lanes <= w {
            strip::<S, U, R, V>(s, &job, y, j, V * lanes, &rows, 0, mp);
            for g in 1..G {
                let r0 = R + (g - 1) * RN;
                strip::<S, U, RN, V>(s, &job, y, j, V * lanes, &rows, r0, mp);
            }
            j += V * lanes;
        }
        while j < w {
            let width = lanes.min(w - j);
            strip::<S, U, R, 1>(s, &job, y, j, width, &rows, 0, mp);
            for g in 1..G {
                let r0 = R + (g - 1) * RN;
                strip::<S, U, RN, 1>(s, &job, y, j, width, &rows, r0, mp);
            }
            j += lanes;
        }
        l0 = rows.end;
    }
}

/// What every strip of one block reads.
struct Job<'a, U> {
    x: &'a [f32],
    b: &'a [U],
    rs: usize,
    w: usize,
    /// B rows from the one read to the one prefetched into L2.
    ahead: usize,
}

/// Rows `r0..r0 + R` of the accumulators (of `mp`), columns `j..j + width`
/// (`width` is `V` whole vectors, or less than one with `V = 1`), over the
/// B rows `rows`.
#[inline(always)]
#[expect(clippy::too_many_arguments, reason = "one strip's coordinates")]
fn strip<S: F32Simd, U: Io, const R: usize, const V: usize>(
    s: S,
    job: &Job<'_, U>,
    y: &mut [f32],
    j: usize,
    width: usize,
    rows: &core::ops::Range<usize>,
    r0: usize,
    mp: usize,
) {
    let (lanes, w) = (S::LANES, job.w);
    let full = width == V * lanes;
    // Checked once here, so that the loop below reads B and A unchecked:
    // a bounds check per row (the panic paths kept general registers on
    // the stack) ran at 0.75x.
    assert!(r0 + R <= mp && rows.end * mp <= job.x.len() && j + width <= w);
    assert!(rows.start < rows.end && (rows.end - 1) * job.rs + w <= job.b.len());
    let mut acc = [[s.splat(0.0); V]; R];
    if rows.start > 0 {
        for (r, acc) in acc.iter_mut().enumerate() {
            let y = &y[(r0 + r) * w + j..][..width];
            for (v, a) in acc.iter_mut().enumerate() {
                *a = if full {
                    s.load(&y[v * lanes..])
                } else {
                    s.load_tail(y)
                };
            }
        }
    }
    let ahead = job.ahead * job.rs;
    for l in rows.clone() {
        let at = l * job.rs + j;
        if r0 == 0 {
            // The same columns `ahead` rows further on, into L2: the DRAM
            // reads of the next pass overlap this one. A prefetch never
            // faults, so past B's end is harmless.
            let next = job.b.as_ptr().wrapping_add(at + ahead).cast::<u8>();
            for o in (0..width * size_of::<U>()).step_by(64) {
                s.prefetch_l2(next.wrapping_add(o));
            }
        }
        // SAFETY: at + width = l rs + j + width <= (end - 1) rs + w <=
        // b.len() (asserted above).
        let row = unsafe { job.b.get_unchecked(at..at + width) };
        let mut bv = [s.splat(0.0); V];
        for (v, bq) in bv.iter_mut().enumerate() {
            *bq = if full {
                U::load_arith(s, &row[v * lanes..])
            } else {
                U::load_tail(s, row)
            };
        }
        // SAFETY: l mp + r0 + R <= (l + 1) mp <= end mp <= x.len().
        let xs = unsafe { job.x.get_unchecked(l * mp + r0..l * mp + r0 + R) };
        for (acc, &xr) in acc.iter_mut().zip(xs) {
            let xv = s.splat(xr);
            for (a, &bq) in acc.iter_mut().zip(&bv) {
                *a = s.fma(xv, bq, *a);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        let y = &mut y[(r0 + r) * w + j..][..width];
        for (v, &a) in acc.iter().enumerate() {
            if full {
                s.store(a, &mut y[v * lanes..]);
            } else {
                s.store_tail(a, y);
            }
        }
    }
}
