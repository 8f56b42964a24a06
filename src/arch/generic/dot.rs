//! The small-m GEMM kernel for a B whose columns are contiguous along k:
//! the transpose of row-major weights `W (n x k)`, which is how `x W^T`
//! (candle's and PyTorch's `Linear`) hands B over. Each output is then a
//! dot product of a row of A and a row of W, both read along k, so W
//! streams once, row by row, with no packing and no transpose.
//!
//! A tile of `R` W rows by `M` A rows keeps `R * M` vector accumulators in
//! registers (the [`F32Simd::REGISTERS`] budget decides `R` for each `M`);
//! every W vector loaded feeds `M` fused multiply-adds and every A vector
//! `R`. Each accumulator holds `LANES` partial sums (lane `l` sums the
//! products at `k = l, l + LANES, ...` of one k block, one rounding each)
//! that [`F32Simd::reduce_sum`] adds at the block's end; the blocks' sums
//! are added in k order. That is another order than the packed path's,
//! inside the same error bound (the partial sums are shorter), and the
//! same bits every call on one ISA.

use std::sync::OnceLock;

use crate::element::{Element, Slice};
use crate::kernel::simd::{F32Simd, Io, SimdOp};

/// Dot products of `m` rows of A with `cols` rows of W:
/// `out[r * cols + j] = sum_l a[r * kp + l] * w[j * ws + l]` for `l < k`.
pub(crate) struct DotBlock<'a, T> {
    /// A widened to f32: row `r` at `a[r * kp..]`, zero from `k` to `kp`.
    pub(crate) a: &'a [f32],
    /// Rows of A (`a.len() >= m * kp`).
    pub(crate) m: usize,
    /// The padded row length of `a`: a multiple of every ISA's lane count.
    pub(crate) kp: usize,
    /// W's rows: row `j` at `w[j * ws..j * ws + k]`.
    pub(crate) w: &'a [T],
    /// Elements from one W row to the next.
    pub(crate) ws: usize,
    /// The depth of the products.
    pub(crate) k: usize,
    /// W rows (columns of C) in this block.
    pub(crate) cols: usize,
    /// The dot products, `m x cols` row-major.
    pub(crate) out: &'a mut [f32],
    /// Whether one row of A over a 2-byte W reads W one row at a time
    /// (see `row_alone`) instead of in tiles of rows, on 16 lanes: the
    /// driver's choice per CPU ([`one_w_row_at_a_time`]).
    pub(crate) one_row: bool,
    /// A in a kernel's own form (AMX: A^T in bf16 pairs), made by the first
    /// of one call's threads that needs it and shared by the others.
    #[cfg_attr(
        not(target_arch = "x86_64"),
        expect(dead_code, reason = "only the AMX kernel prepares A")
    )]
    pub(crate) prepared: &'a OnceLock<Vec<Line>>,
}

/// One 64-byte line of a kernel's own form of A.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub(crate) struct Line(pub(crate) [u16; 32]);

/// The largest multiple of lanes this kernel pads A's rows to.
pub(crate) const PAD: usize = 16;

/// Whether this CPU's DRAM serves one row of A over a 2-byte W faster as
/// a single stream, one W row after another, than as a tile's eight
/// interleaved rows: yes on AMD Zen 4, no on Intel Emerald Rapids
/// (BENCHMARKS.md, "One W row at a time"); elsewhere unmeasured, so
/// tiles.
pub(crate) fn one_w_row_at_a_time() -> bool {
    #[cfg(target_arch = "x86_64")]
    return crate::arch::x86_64::amd();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

impl<T: Element> SimdOp for DotBlock<'_, T> {
    type Output = ();
    const IEEE: bool = true;

    fn scalar(self) {
        // The scalar ISA's oracle order: k order, one fused multiply-add
        // per product (what the scalar microkernel does).
        let DotBlock {
            a,
            m,
            kp,
            w,
            ws,
            k,
            cols,
            out,
            ..
        } = self;
        for r in 0..m {
            let a = &a[r * kp..r * kp + k];
            for j in 0..cols {
                let w = &w[j * ws..j * ws + k];
                out[r * cols + j] = a
                    .iter()
                    .zip(w)
                    .fold(0.0f32, |acc, (&x, y)| x.mul_add(y.to_f32(), acc));
            }
        }
    }

    #[inline(always)]
    fn simd<S: F32Simd>(self, s: S) {
        let DotBlock {
            a,
            m,
            kp,
            w,
            ws,
            k,
            cols,
            out,
            one_row,
            ..
        } = self;
        match T::slice(w) {
            Slice::F32(w) => block(
                s,
                &Job {
                    a,
                    m,
                    kp,
                    w,
                    ws,
                    k,
                    cols,
                    one_row,
                },
                out,
            ),
            Slice::Bf16(w) => block(
                s,
                &Job {
                    a,
                    m,
                    kp,
                    w,
                    ws,
                    k,
                    cols,
                    one_row,
                },
                out,
            ),
            Slice::F16(w) => block(
                s,
                &Job {
                    a,
                    m,
                    kp,
                    w,
                    ws,
                    k,
                    cols,
                    one_row,
                },
                out,
            ),
        }
    }
}

/// A [`DotBlock`] without its output, B typed for loading.
struct Job<'a, U> {
    a: &'a [f32],
    m: usize,
    kp: usize,
    w: &'a [U],
    ws: usize,
    k: usize,
    cols: usize,
    one_row: bool,
}

/// Bytes of A one k block keeps in L1 (half a 32 KiB L1: W's rows pass
/// through the other half).
const A_BLOCK_BYTES: usize = 16 << 10;
/// Bytes ahead of the k being summed that each bf16 or f16 W row is
/// prefetched into L2, once per 64-byte line (near a block's end, the next
/// tile's rows): the hardware prefetchers alone left the loads that feed
/// the widening waiting on memory. Longer distances were slower on
/// AVX-512 from m = 8 on (docs/tried.md, gemv-dot).
const AHEAD_BYTES: usize = 1024;
/// The same in f32 elements (4 KiB): f32 rows are twice as long in bytes,
/// and AVX2's short tiles (two W rows at m = 4) need the distance most
/// (BENCHMARKS.md, "Decode with `Linear`-layout weights").
const AHEAD_F32: usize = 1024;

/// W rows per column chunk: their k block (at most 256 rows x 4 KiB) stays
/// in L2 while every group of A's rows passes over it.
const CHUNK_COLS: usize = 256;

/// All of one block. For each chunk of W rows and each k block (sized so
/// that A's part of it stays in L1: re-reading A from L2 for every tile of
/// W rows would bound the kernel below the FMA peak), A's rows in groups
/// of at most [`max_rows`], each group in register tiles over the chunk's
/// W rows. Each block's sums are reduced and added to the output (the
/// first one stored), so one output sums its k blocks in order.
#[inline(always)]
fn block<S: F32Simd, U: Io>(s: S, job: &Job<'_, U>, dots: &mut [f32]) {
    assert!(job.kp >= job.k && job.kp.is_multiple_of(S::LANES));
    assert!(job.a.len() >= job.m * job.kp && dots.len() >= job.m * job.cols);
    assert!(job.cols == 0 || job.w.len() >= (job.cols - 1) * job.ws + job.k);
    if job.k == 0 {
        dots[..job.m * job.cols].fill(0.0);
        return;
    }
    let group = max_rows::<S>();
    // One group of A's rows is in L1 at a time (the groups take turns over
    // a chunk), so the block is sized for one group: the longer the block,
    // the fewer reductions of the accumulators (one per output per block).
    let kb = (A_BLOCK_BYTES / 4 / job.m.clamp(1, group)).max(256) / PAD * PAD;
    let mut j0 = 0;
    while j0 < job.cols {
        let j1 = job.cols.min(j0 + CHUNK_COLS);
        let mut k0 = 0;
        while k0 < job.k {
            let k1 = job.k.min(k0 + kb);
            let mut r0 = 0;
            while r0 < job.m {
                let rows = group.min(job.m - r0);
                let part = Part {
                    a: &job.a[r0 * job.kp..],
                    r0,
                    cols: j0..j1,
                    depth: k0..k1,
                    first: k0 == 0,
                };
                match rows {
                    1 => rows_of::<S, U, 1>(s, job, &part, dots),
                    2 => rows_of::<S, U, 2>(s, job, &part, dots),
                    3 => rows_of::<S, U, 3>(s, job, &part, dots),
                    4 => rows_of::<S, U, 4>(s, job, &part, dots),
                    5 => rows_of::<S, U, 5>(s, job, &part, dots),
                    6 => rows_of::<S, U, 6>(s, job, &part, dots),
                    7 => rows_of::<S, U, 7>(s, job, &part, dots),
                    _ => rows_of::<S, U, 8>(s, job, &part, dots),
                }
                r0 += rows;
            }
            k0 = k1;
        }
        j0 = j1;
    }
}

/// One group of A's rows over one chunk of W rows and one k block.
struct Part<'a> {
    /// The group's first row of A (`a[r * kp..]` is its row `r0 + r`).
    a: &'a [f32],
    /// Its first row's index, for the output.
    r0: usize,
    /// The W rows (columns of the output).
    cols: core::ops::Range<usize>,
    /// The k block.
    depth: core::ops::Range<usize>,
    /// Whether this is the first k block (store, not add).
    first: bool,
}

/// W rows a tile of `m` A rows takes: as many as leave registers for the
/// `m` A vectors, the W vector, constants and temporaries beside the
/// `rows * m` accumulators (more and the compiler spills them every
/// step), at most 8. Six are left over with 32 registers; three with 16,
/// where six left one W row per tile from m = 4 on, one load of W per
/// multiply-add (three on AVX-512 too was slower: BENCHMARKS.md, docs/tried.md).
const fn tile_rows<S: F32Simd>(m: usize) -> usize {
    let spare = if S::REGISTERS >= 32 { 6 } else { 3 };
    let rows = (S::REGISTERS - m - spare) / m;
    if rows > 8 {
        8
    } else if rows < 1 {
        1
    } else {
        rows
    }
}

/// The most A rows one tile takes: 8 with 32 registers, 4 with 16.
const fn max_rows<S: F32Simd>() -> usize {
    if S::REGISTERS >= 32 { 8 } else { 4 }
}

/// `M` rows of A against the part's W rows, in tiles of as many W rows
/// as the registers allow (at most 8), then one at a time.
#[inline(always)]
fn rows_of<S: F32Simd, U: Io, const M: usize>(
    s: S,
    job: &Job<'_, U>,
    part: &Part<'_>,
    out: &mut [f32],
) {
    let per_tile = tile_rows::<S>(M);
    let mut j = part.cols.start;
    macro_rules! tiles_of {
        ($r:literal) => {
            while part.cols.end - j >= $r {
                tile::<S, U, $r, M>(s, job, part, j, out);
                j += $r;
            }
        };
    }
    if M == 1 && job.one_row && size_of::<U>() == 2 && S::LANES >= 16 {
        // One row of A over a 2-byte W on 16 lanes, where the CPU serves
        // one stream best: one W row at a time (see `row_alone`).
        while j < part.cols.end {
            row_alone::<S, U>(s, job, part, j, out);
            j += 1;
        }
        return;
    }
    match per_tile {
        8.. => tiles_of!(8),
        6 | 7 => tiles_of!(6),
        4 | 5 => tiles_of!(4),
        3 => tiles_of!(3),
        2 => tiles_of!(2),
        _ => {}
    }
    tiles_of!(1);
}

/// `R` W rows from `j` by `M` A rows over the part's k block, reduced into
/// `out[(r0 + r) * cols + j + q]`.
#[inline(always)]
fn tile<S: F32Simd, U: Io, const R: usize, const M: usize>(
    s: S,
    job: &Job<'_, U>,
    part: &Part<'_>,
    j: usize,
    out: &mut [f32],
) {
    let (k0, k1, kp, lanes) = (part.depth.start, part.depth.end, job.kp, S::LANES);
    let w: [&[U]; R] = core::array::from_fn(|q| &job.w[(j + q) * job.ws + k0..][..k1 - k0]);
    let a: [&[f32]; M] = core::array::from_fn(|r| &part.a[r * kp + k0..][..kp - k0]);
    let mut acc = [[s.splat(0.0); M]; R];
    // `at + lanes <= len <= kp - k0` in this form lets the compiler drop
    // the slices' bounds checks, whose panic paths would otherwise keep the
    // accumulators in memory.
    let len = k1 - k0;
    assert!(kp - k0 >= len);
    let mut at = 0;
    let line = 64 / size_of::<U>();
    let ahead = if size_of::<U>() >= 4 {
        AHEAD_F32
    } else {
        AHEAD_BYTES / size_of::<U>()
    };
    while at + lanes <= len {
        if at.is_multiple_of(line) {
            // Past this block's end, as far into the next tile's rows (`R`
            // rows down), which this thread reads next.
            let skip = ahead_in(at + ahead, len, R * job.ws);
            for row in &w {
                s.prefetch_l2(row.as_ptr().wrapping_add(skip).cast());
            }
        }
        step(s, &a, &w, at, false, &mut acc);
        at += lanes;
    }
    if at < len {
        // Only the last block has a tail (the others are multiples of PAD).
        step(s, &a, &w, at, true, &mut acc);
    }
    for (q, acc) in acc.iter().enumerate() {
        for (r, &v) in acc.iter().enumerate() {
            let o = &mut out[(part.r0 + r) * job.cols + j + q];
            let x = s.reduce_sum(v);
            *o = if part.first { x } else { *o + x };
        }
    }
}

/// The offset from a W row's start of the element `p` along it to
/// prefetch: `p` itself inside the block's `len`, past it as far into the
/// row `down` elements further on (the next tile's, which this thread
/// reads next). A prefetch never faults, so past W's end is harmless.
#[inline(always)]
fn ahead_in(p: usize, len: usize, down: usize) -> usize {
    if p < len { p } else { down + p - len }
}

/// Accumulators one W row's k is split over in [`row_alone`].
const SPLIT: usize = 4;

/// Bytes ahead that [`row_alone`] prefetches its W row (into the next
/// row near the end): a single stream needs more in flight than each of
/// a tile's eight.
const ALONE_AHEAD_BYTES: usize = 8 << 10;

/// W row `j` by one row of A over the part's k block, for a 2-byte W on
/// 16 lanes: W is then read as one stream, row after row, which AMD Zen
/// 4's DRAM serves faster than a tile's eight interleaved rows (as one B
/// row per pass does for the row-major kernel; Intel's serves the eight
/// rows faster: [`one_w_row_at_a_time`]). The k block is split over
/// [`SPLIT`] accumulators (vector `v` of each group of `SPLIT` into
/// accumulator `v`, the tail's vectors into the first ones), so that the
/// FMA chains overlap; they are added pairwise and reduced into
/// `out[r0 * cols + j]`. On 8 lanes (AVX2) the widening of 16 bytes at a
/// time bounds one stream below eight rows.
#[inline(always)]
fn row_alone<S: F32Simd, U: Io>(
    s: S,
    job: &Job<'_, U>,
    part: &Part<'_>,
    j: usize,
    out: &mut [f32],
) {
    let (k0, k1, kp, lanes) = (part.depth.start, part.depth.end, job.kp, S::LANES);
    let w = &job.w[j * job.ws + k0..][..k1 - k0];
    let a = &part.a[k0..][..kp - k0];
    let len = k1 - k0;
    assert!(kp - k0 >= len);
    let mut acc = [s.splat(0.0); SPLIT];
    let line = 64 / size_of::<U>();
    let ahead = ALONE_AHEAD_BYTES / size_of::<U>();
    let mut at = 0;
    while at + SPLIT * lanes <= len {
        for (v, acc) in acc.iter_mut().enumerate() {
            let o = at + v * lanes;
            if o.is_multiple_of(line) {
                let skip = ahead_in(o + ahead, len, job.ws);
                s.prefetch_l2(w.as_ptr().wrapping_add(skip).cast());
            }
            *acc = s.fma(s.load(&a[o..]), U::load_arith(s, &w[o..]), *acc);
        }
        at += SPLIT * lanes;
    }
    let mut v = 0;
    while at < len {
        let wv = if at + lanes <= len {
            U::load_arith(s, &w[at..])
        } else {
            // W's lanes past k load as zero (A is zero there).
            U::load_tail(s, &w[at..])
        };
        acc[v] = s.fma(s.load(&a[at..]), wv, acc[v]);
        at += lanes;
        v += 1;
    }
    let sum = s.add(s.add(acc[0], acc[1]), s.add(acc[2], acc[3]));
    let o = &mut out[part.r0 * job.cols + j];
    let x = s.reduce_sum(sum);
    *o = if part.first { x } else { *o + x };
}

/// One vector of k at `at` into the tile's accumulators: A's `M` vectors
/// first, then one W vector at a time into its `M` accumulators, so that
/// `R * M + M + 1` registers are live. (A function, not a closure: a
/// closure would not inherit the caller's `#[target_feature]`s, and every
/// intrinsic in it would become a call.)
#[inline(always)]
fn step<S: F32Simd, U: Io, const R: usize, const M: usize>(
    s: S,
    a: &[&[f32]; M],
    w: &[&[U]; R],
    at: usize,
    tail: bool,
    acc: &mut [[S::F; M]; R],
) {
    let mut av = [s.splat(0.0); M];
    for r in 0..M {
        av[r] = s.load(&a[r][at..]);
    }
    for q in 0..R {
        // W's lanes past k load as zero (A is zero there).
        let wq = if tail {
            U::load_tail(s, &w[q][at..])
        } else {
            U::load_arith(s, &w[q][at..])
        };
        for r in 0..M {
            acc[q][r] = s.fma(av[r], wq, acc[q][r]);
        }
    }
}

#[cfg(test)]
mod tests {
    use half::{bf16, f16};

    use super::{DotBlock, PAD};
    use crate::element::Element;
    use crate::gemm::blis::tests::fresh_rng;
    use crate::isa::{Backend, Isa};

    /// One row of A against W rows read both ways (one W row at a time,
    /// and tiles of rows), on every ISA this machine has, for bf16 and
    /// f16 W: each dot product within the f32 bound of the f64 one. Depths
    /// around the lane counts and past one k block (4096 for one row),
    /// W rows starting at odd offsets, fresh random values, a poisoned
    /// output.
    #[test]
    fn one_row_of_a_both_ways_within_the_bound() {
        let mut next = fresh_rng();
        for isa in Isa::available() {
            let token = Backend::new(isa).expect("available").token;
            for one_row in [true, false] {
                check::<bf16>(token, one_row, &mut next);
                check::<f16>(token, one_row, &mut next);
            }
        }
    }

    fn check<T: Element>(token: crate::isa::Token, one_row: bool, next: &mut dyn FnMut() -> u64) {
        let mut value = || ((next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0;
        for k in [1usize, 15, 16, 17, 63, 64, 65, 130, 4096 + 37] {
            let kp = k.next_multiple_of(PAD);
            let mut a = vec![0f32; kp];
            for x in &mut a[..k] {
                *x = T::from_f32(value()).to_f32();
            }
            for cols in [1usize, 3, 5] {
                let (off, ws) = (1, k + 3);
                let w: Vec<T> = (0..off + cols * ws).map(|_| T::from_f32(value())).collect();
                let w = &w[off..];
                let mut out = vec![f32::NAN; cols];
                token.dot(DotBlock {
                    a: &a,
                    m: 1,
                    kp,
                    w,
                    ws,
                    k,
                    cols,
                    out: &mut out,
                    prepared: &std::sync::OnceLock::new(),
                    one_row,
                });
                for (j, &got) in out.iter().enumerate() {
                    let row = &w[j * ws..][..k];
                    let exact: f64 = row
                        .iter()
                        .zip(&a)
                        .map(|(x, &y)| x.to_f32() as f64 * y as f64)
                        .sum();
                    let size: f64 = row
                        .iter()
                        .zip(&a)
                        .map(|(x, &y)| (x.to_f32() as f64 * y as f64).abs())
                        .sum();
                    let bound =
                        k as f64 * f32::EPSILON as f64 * size + f64::from(f32::MIN_POSITIVE);
                    assert!(
                        (got as f64 - exact).abs() <= bound,
                        "{token:?} one_row {one_row} {} k {k} col {j}/{cols}: {got} vs {exact} (bound {bound})",
                        T::DTYPE.name()
                    );
                }
            }
        }
    }
}
