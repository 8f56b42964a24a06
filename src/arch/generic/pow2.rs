//! What the bf16 power-of-two passes share (AVX2 and AVX-512 so far; a
//! NEON one would take the same): every dynamic loss scale is a power of
//! two, and a normal bf16 times `2^d` that stays normal is `bits + (d << 7)`,
//! exact. Each ISA supplies only its vector step over 16-bit lanes (which
//! [`F32Simd`] does not model); the split, the block loop with its
//! statistics, the constants and the oracle fallback are here.

use half::bf16;
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};

use super::finite::{self, TINY_TOTAL, tiny_sum_sq};
use crate::arch::scalar::finite as oracle;
use crate::element::SliceMut;
use crate::kernel::simd::F32Simd;
use crate::kernel::stats::GradStats;

/// bf16 values per block of the power-of-two passes (see [`pow2_blocks`]).
pub(crate) const POW2_BLOCK: usize = 512;

/// `d` when `inv_scale == 2^d` with `-126 <= d <= 0`, the case the
/// bf16 power-of-two passes take (unscaling by a loss scale of at least 1;
/// every dynamic loss scale is a power of two).
pub(crate) fn pow2_exponent(inv_scale: f32) -> Option<i32> {
    let bits = inv_scale.to_bits();
    let biased = (bits >> 23) as i32;
    (bits & 0x807F_FFFF == 0 && (1..=127).contains(&biased)).then_some(biased - 127)
}

/// [`finite::unscale`](super::finite::unscale), with bf16 data and an
/// `inv_scale` of `2^d` handed to the ISA's power-of-two pass
/// ([`F32Simd::unscale_bf16_pow2`]) for their whole blocks of
/// [`POW2_BLOCK`] values where it has one; the rest, and every other case,
/// go to the generic pass.
#[inline(always)]
pub(crate) fn unscale_with_pow2<S: F32Simd>(
    s: S,
    mut data: SliceMut<'_>,
    inv_scale: f32,
) -> GradStats {
    if let (SliceMut::Bf16(d), Some(e)) = (&mut data, pow2_exponent(inv_scale)) {
        let (blocks, rest) = d.split_at_mut(d.len() / POW2_BLOCK * POW2_BLOCK);
        if let Some(stats) = s.unscale_bf16_pow2(blocks, e) {
            return stats.merge(finite::unscale(s, SliceMut::Bf16(rest), inv_scale));
        }
    }
    finite::unscale(s, data, inv_scale)
}

/// The block loop of the bf16 power-of-two passes, the statistics as in
/// `arch::generic::finite`'s pass: `block_squares` unscales one block of [`POW2_BLOCK`] bf16 (as
/// bits) in place and returns the f32 lane sums of the squares of what it
/// wrote; a block whose sum is not finite is recounted by the scalar oracle
/// in f64, a clean one folded into f64, and a tiny total summed again
/// scaled. `data.len()` must be a whole number of blocks.
#[inline(always)]
#[cfg_attr(
    not(target_arch = "x86_64"),
    expect(
        dead_code,
        reason = "only the x86 ISAs have a power-of-two pass so far"
    )
)]
pub(crate) fn pow2_blocks<S: F32Simd>(
    s: S,
    data: &mut [bf16],
    mut block_squares: impl FnMut(&mut [u16]) -> S::F,
) -> GradStats {
    debug_assert!(data.len().is_multiple_of(POW2_BLOCK));
    let mut acc = s.acc_zero();
    let mut stats = GradStats::ZERO;
    let bits: &mut [u16] = data.reinterpret_cast_mut();
    for block in bits.chunks_exact_mut(POW2_BLOCK) {
        let sum = block_squares(block);
        if s.any(s.nonfinite(sum)) {
            let block: &[bf16] = (*block).reinterpret_cast();
            stats = stats.merge(oracle::stats(block));
        } else {
            acc = s.acc_add(acc, sum);
        }
    }
    stats.sum_sq += s.acc_sum(acc);
    if stats.sum_sq < TINY_TOTAL && !data.is_empty() {
        stats.sum_sq = tiny_sum_sq(s, &*data);
    }
    stats
}

/// The oracle's rounding of `v` (bf16 bits) times `inv`, element by
/// element: what a power-of-two pass does for the rare vector with a
/// subnormal, inf or NaN, or a result that underflows. Out of line, so the
/// hot loops stay small.
#[cold]
#[inline(never)]
#[cfg_attr(
    not(target_arch = "x86_64"),
    expect(
        dead_code,
        reason = "only the x86 ISAs have a power-of-two pass so far"
    )
)]
pub(crate) fn pow2_oracle(v: &mut [u16], inv: f32) {
    for h in v.iter_mut() {
        let y = bf16::from_bits(*h).to_f32() * inv;
        *h = bf16::from_f32(y).to_bits();
    }
}

/// The constants of one pass over `2^d`, as 16-bit lanes of the ISA's
/// vector `V`. A nonzero lane takes the exponent arithmetic when its
/// exponent e satisfies 1 - d <= e <= 254 (normal in, normal out): |x| in
/// `[low, 0x7F80)`, i.e. the wrapping `|x| - low` below `span`.
#[derive(Clone, Copy)]
#[cfg_attr(
    not(target_arch = "x86_64"),
    expect(
        dead_code,
        reason = "only the x86 ISAs have a power-of-two pass so far"
    )
)]
pub(crate) struct Pow2<V> {
    /// `2^d`, for the oracle's rounding.
    pub(crate) inv: f32,
    /// `(1 - d) << 7`: the smallest |bits| that stays normal.
    pub(crate) low: V,
    /// `0x7F80 - low`: how many |bits| from `low` on stay normal.
    pub(crate) span: V,
    /// `d << 7`: what the exponent arithmetic adds.
    pub(crate) step: V,
    /// `0x7FFF`: clears the sign.
    pub(crate) abs_mask: V,
}

#[cfg_attr(
    not(target_arch = "x86_64"),
    expect(
        dead_code,
        reason = "only the x86 ISAs have a power-of-two pass so far"
    )
)]
impl<V: Copy> Pow2<V> {
    /// The constants for `-126 <= d <= 0`, each lane set by `splat`.
    #[inline(always)]
    pub(crate) fn new(d: i32, splat: impl Fn(i16) -> V) -> Self {
        debug_assert!((-126..=0).contains(&d));
        let low = (1 - d) << 7;
        Pow2 {
            inv: f32::from_bits(((127 + d) as u32) << 23),
            low: splat(low as i16),
            span: splat((0x7F80 - low) as i16),
            step: splat((d * 128) as i16),
            abs_mask: splat(0x7FFF),
        }
    }
}
