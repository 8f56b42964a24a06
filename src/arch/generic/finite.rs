//! Fused gradient checks over any [`F32Simd`]: one pass that loads, unscales
//! in f32, rounds back, stores, and gathers the statistics of the written
//! values.
//!
//! # How the statistics stay in one cheap pass
//!
//! The hot loop does one load, one multiply, one store and one FMA per
//! vector: squares of the written values go into four f32 accumulators.
//! Every [`BLOCK_VECS`] vectors (a block) the accumulators are summed and
//! tested once: squares are never negative, so an inf or NaN anywhere in the
//! block makes that sum inf or NaN (inf cannot cancel). A clean block is
//! folded into f64 lanes ([`F32Simd::acc_add`]); a dirty one (an inf/NaN, or
//! values so large that their squares overflow f32) is recounted from the
//! values just written, still in L1, by the scalar oracle in f64. So the
//! non-finite count is exact and never costs a per-vector compare.
//!
//! Precision: each f32 lane sums 8 squares (one rounding each, the square
//! itself is exact inside the FMA), then 4 lanes are added before the f64
//! fold, so a block's relative error is below `11 * 2^-24` (6.6e-7) and the
//! f64 sum of blocks adds nothing measurable. Squares below f32's normal
//! range (|x| < 2^-63) lose precision; that matters only when the whole sum
//! is tiny, so a slice whose total is below [`TINY_TOTAL`] is summed
//! again (read only, inf/NaN skipped) with its values scaled by `2^90`, which brings every
//! finite bf16/f16/f32 value below 2^-35 into the range where squares are
//! exact to 2^-24. (Rejected: f64 accumulation of every vector. It is
//! simpler but costs two conversions and two f64 FMAs per vector; see
//! docs/tried.md, Gradient checks.)

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

use crate::arch::scalar::finite as oracle;
use crate::element::{Element, Slice, SliceMut};
use crate::kernel::simd::{Chunk, F32Simd, Io, SimdOp, for_each_chunk};
use crate::kernel::stats::GradStats;

/// Vectors per block (4 accumulators x 8 vectors each).
const BLOCK_VECS: usize = 32;

/// A clean total below this (2^-70) is summed again with scaled values.
pub(crate) const TINY_TOTAL: f64 = f64::from_bits((1023 - 70) << 52);

/// The power of two the re-summation multiplies by (2^90), and its
/// square's inverse (2^-180).
const TINY_SCALE: f32 = f32::from_bits((127 + 90) << 23);
const TINY_UNSCALE_SQ: f64 = f64::from_bits((1023 - 180) << 52);

/// An element a kernel writes: rounds an f32 vector to `Self`, stores it,
/// and returns the stored values as f32 (exactly).
pub(crate) trait Store: Load + Element {
    /// Rounds `y` to `Self` (nearest even), stores this chunk of `dst`,
    /// and returns the written values widened back to f32.
    fn store_rounded<S: F32Simd>(s: S, c: Chunk, y: S::F, dst: &mut [Self]) -> S::F;
}

impl Store for f32 {
    #[inline(always)]
    fn store_rounded<S: F32Simd>(s: S, c: Chunk, y: S::F, dst: &mut [f32]) -> S::F {
        c.store(s, y, dst);
        y
    }
}

impl Store for bf16 {
    #[inline(always)]
    fn store_rounded<S: F32Simd>(s: S, c: Chunk, y: S::F, dst: &mut [bf16]) -> S::F {
        let bits = s.narrow_bf16(y);
        c.store_bits(s, bits, dst);
        // A bf16 is the top half of an f32 (NaN lanes are already quiet
        // here; they only need to stay NaN).
        s.bits_to_f(s.u_shl(bits, 16))
    }
}

impl Store for f16 {
    #[inline(always)]
    fn store_rounded<S: F32Simd>(s: S, c: Chunk, y: S::F, dst: &mut [f16]) -> S::F {
        let bits = s.narrow_f16(y);
        c.store_bits(s, bits, dst);
        s.widen_f16(bits)
    }
}

/// An element a kernel reads gradients from.
pub(crate) trait Load: Io {
    /// This chunk of `src` as f32, except that a signalling NaN may stay
    /// signalling: the unscale multiply quiets it exactly as widening would
    /// (IEEE 754 returns the quieted NaN operand; x86 and Arm without
    /// default-NaN mode both do), so the product is the same either way.
    #[inline(always)]
    fn load_for_mul<S: F32Simd>(s: S, c: Chunk, src: &[Self]) -> S::F {
        c.load(s, src)
    }
}

impl Load for f32 {}
impl Load for f16 {}

impl Load for bf16 {
    /// A bf16 is the top half of an f32: one shift, no NaN fix-up.
    #[inline(always)]
    fn load_for_mul<S: F32Simd>(s: S, c: Chunk, src: &[bf16]) -> S::F {
        let src: &[u16] = &src.reinterpret_cast()[c.start..c.start + c.len];
        let bits = if c.is_full::<S>() {
            s.load_u16(src)
        } else {
            s.load_u16_tail(src)
        };
        s.bits_to_f(s.u_shl(bits, 16))
    }
}

/// Where a pass reads its inputs: from the destination itself (in place)
/// or from a separate slice.
trait Source<D> {
    /// The chunk `c` of the input as f32 (see [`Load::load_for_mul`]).
    fn load<S: F32Simd>(&self, s: S, c: Chunk, dst: &[D]) -> S::F;
}

/// In place: the input is the destination.
struct InPlace;

impl<D: Load> Source<D> for InPlace {
    #[inline(always)]
    fn load<S: F32Simd>(&self, s: S, c: Chunk, dst: &[D]) -> S::F {
        D::load_for_mul(s, c, dst)
    }
}

/// A separate input slice of the destination's length.
struct From<'a, A>(&'a [A]);

impl<A: Load, D> Source<D> for From<'_, A> {
    #[inline(always)]
    fn load<S: F32Simd>(&self, s: S, c: Chunk, _: &[D]) -> S::F {
        A::load_for_mul(s, c, self.0)
    }
}

/// The one unscale pass: `dst[i] = round(src[i] * inv_scale)` with the
/// statistics of the written values (see the module docs).
#[inline(always)]
fn pass<S: F32Simd, D: Store>(s: S, src: impl Source<D>, dst: &mut [D], inv: f32) -> GradStats {
    let n = dst.len();
    let lanes = S::LANES;
    let block = BLOCK_VECS * lanes;
    let inv_v = s.splat(inv);
    let mut acc = s.acc_zero();
    let mut stats = GradStats::ZERO;
    let mut start = 0;
    while start < n {
        let len = block.min(n - start);
        let zero = s.splat(0.0);
        let mut a = [zero; 4];
        if len == block {
            for i in 0..BLOCK_VECS / 4 {
                for (k, ak) in a.iter_mut().enumerate() {
                    let c = Chunk {
                        start: start + (4 * i + k) * lanes,
                        len: lanes,
                    };
                    let y = s.mul(src.load(s, c, dst), inv_v);
                    let r = D::store_rounded(s, c, y, dst);
                    *ak = s.fma(r, r, *ak);
                }
            }
        } else {
            for_each_chunk!(S, len, |c| {
                let c = Chunk {
                    start: start + c.start,
                    len: c.len,
                };
                let y = s.mul(src.load(s, c, dst), inv_v);
                let r = D::store_rounded(s, c, y, dst);
                a[0] = s.fma(r, r, a[0]);
            });
        }
        let sum = s.add(s.add(a[0], a[1]), s.add(a[2], a[3]));
        if s.any(s.nonfinite(sum)) {
            stats = stats.merge(oracle::stats(&dst[start..start + len]));
        } else {
            acc = s.acc_add(acc, sum);
        }
        start += len;
    }
    stats.sum_sq += s.acc_sum(acc);
    if stats.sum_sq < TINY_TOTAL && n > 0 {
        stats.sum_sq = tiny_sum_sq(s, dst);
    }
    stats
}

/// The sum of squares of the finite values of `data` (all |x| < 2^-34),
/// each scaled by 2^90 before squaring so that no square leaves f32's
/// normal range; the result is scaled back in f64. Inf/NaN lanes add 0.
///
/// Each square is rounded once to f32 and folded straight into the f64
/// lanes: a tiny total can be one large square beside many small ones, and
/// an f32 lane that adds 32 squares after the large one can drop each (up
/// to 1.8e-6 relative; the `finite` fuzz target found such a slice). This
/// path is rare, so it pays the f64 fold per vector.
#[inline(always)]
pub(crate) fn tiny_sum_sq<S: F32Simd, T: Io>(s: S, data: &[T]) -> f64 {
    let scale = s.splat(TINY_SCALE);
    let mut acc = s.acc_zero();
    for_each_chunk!(S, data.len(), |c| {
        let v = c.load(s, data);
        let r = s.select(s.nonfinite(v), s.splat(0.0), s.mul(v, scale));
        acc = s.acc_add(acc, s.mul(r, r));
    });
    s.acc_sum(acc) * TINY_UNSCALE_SQ
}

/// `x <- round(x * inv_scale)` in place, with statistics.
#[inline(always)]
pub(crate) fn unscale<S: F32Simd>(s: S, data: SliceMut<'_>, inv_scale: f32) -> GradStats {
    match data {
        SliceMut::F32(d) => pass(s, InPlace, d, inv_scale),
        SliceMut::Bf16(d) => pass(s, InPlace, d, inv_scale),
        SliceMut::F16(d) => pass(s, InPlace, d, inv_scale),
    }
}

/// `dst[i] = src[i] * inv_scale` in f32 (equal lengths), with statistics.
#[inline(always)]
pub(crate) fn unscale_into<S: F32Simd>(
    s: S,
    src: Slice<'_>,
    dst: &mut [f32],
    inv_scale: f32,
) -> GradStats {
    match src {
        Slice::F32(a) => {
            assert_eq!(a.len(), dst.len());
            pass(s, From(a), dst, inv_scale)
        }
        Slice::Bf16(a) => {
            assert_eq!(a.len(), dst.len());
            pass(s, From(a), dst, inv_scale)
        }
        Slice::F16(a) => {
            assert_eq!(a.len(), dst.len());
            pass(s, From(a), dst, inv_scale)
        }
    }
}

/// Elements per early-exit check of `count_nonfinite(.., true)`.
const EXIT_BLOCK: usize = 1024;

/// Number of inf/NaN elements, decided on exponent bits (bf16/f16 through
/// integer lanes, never converted). With `stop_at_first`, returns as soon as
/// a block of [`EXIT_BLOCK`] elements holds one (the count is then > 0 but
/// not exact).
#[inline(always)]
pub(crate) fn count_nonfinite<S: F32Simd>(s: S, src: Slice<'_>, stop_at_first: bool) -> usize {
    match src {
        Slice::F32(a) => count(
            s,
            a.len(),
            0x7F80_0000,
            |c| {
                let src = &a[c.start..c.start + c.len];
                let v = if c.is_full::<S>() {
                    s.load(src)
                } else {
                    s.load_tail(src)
                };
                s.to_bits(v)
            },
            stop_at_first,
        ),
        Slice::Bf16(a) => count_u16(s, a.reinterpret_cast(), 0x7F80, stop_at_first),
        Slice::F16(a) => count_u16(s, a.reinterpret_cast(), 0x7C00, stop_at_first),
    }
}

#[inline(always)]
fn count_u16<S: F32Simd>(s: S, a: &[u16], exp: u32, stop_at_first: bool) -> usize {
    let load = |c: Chunk| {
        let src = &a[c.start..c.start + c.len];
        if c.is_full::<S>() {
            s.load_u16(src)
        } else {
            s.load_u16_tail(src)
        }
    };
    count(s, a.len(), exp, load, stop_at_first)
}

/// Counts lanes whose `exp` bits are all set, in blocks of [`EXIT_BLOCK`].
#[inline(always)]
fn count<S: F32Simd>(
    s: S,
    n: usize,
    exp: u32,
    load: impl Fn(Chunk) -> S::U,
    stop_at_first: bool,
) -> usize {
    let e = s.u_splat(exp);
    let mut total = 0usize;
    let mut start = 0;
    while start < n {
        let len = EXIT_BLOCK.min(n - start);
        let mut in_block = 0u32;
        for_each_chunk!(S, len, |c| {
            let c = Chunk {
                start: start + c.start,
                len: c.len,
            };
            in_block += s.count(s.u_eq(s.u_and(load(c), e), e));
        });
        total += in_block as usize;
        if stop_at_first && total > 0 {
            return total;
        }
        start += len;
    }
    total
}

/// `halfkern::finite::unscale` of one chunk: `x <- round(x * inv_scale)`
/// in place, with statistics.
pub(crate) struct Unscale<'a> {
    pub(crate) data: SliceMut<'a>,
    pub(crate) inv_scale: f32,
}

impl SimdOp for Unscale<'_> {
    type Output = GradStats;
    const IEEE: bool = true;
    fn scalar(self) -> GradStats {
        oracle::unscale(self.data, self.inv_scale)
    }
    #[inline(always)]
    fn simd<S: F32Simd>(self, s: S) -> GradStats {
        // bf16 by a power of two: the ISA's exponent arithmetic, if any.
        super::pow2::unscale_with_pow2(s, self.data, self.inv_scale)
    }
}

/// `halfkern::finite::unscale_into` of one chunk (equal lengths).
pub(crate) struct UnscaleInto<'a> {
    pub(crate) src: Slice<'a>,
    pub(crate) dst: &'a mut [f32],
    pub(crate) inv_scale: f32,
}

impl SimdOp for UnscaleInto<'_> {
    type Output = GradStats;
    const IEEE: bool = true;
    fn scalar(self) -> GradStats {
        oracle::unscale_into(self.src, self.dst, self.inv_scale)
    }
    #[inline(always)]
    fn simd<S: F32Simd>(self, s: S) -> GradStats {
        unscale_into(s, self.src, self.dst, self.inv_scale)
    }
}

/// The inf/NaN count of one chunk; `stop_at_first` allows an early exit.
pub(crate) struct CountNonfinite<'a> {
    pub(crate) src: Slice<'a>,
    pub(crate) stop_at_first: bool,
}

impl SimdOp for CountNonfinite<'_> {
    type Output = usize;
    const IEEE: bool = false;
    fn scalar(self) -> usize {
        oracle::count_nonfinite(self.src, self.stop_at_first)
    }
    #[inline(always)]
    fn simd<S: F32Simd>(self, s: S) -> usize {
        count_nonfinite(s, self.src, self.stop_at_first)
    }
}
