//! In-place bf16 unscaling by a power of two on AVX2, 16 lanes of 16 bits
//! at a time: the `avx512` pass (see `arch::x86_64::avx512::finite`) with
//! vector compares instead of mask registers.
//!
//! A normal bf16 times `2^d` that stays normal is `bits + (d << 7)`, exact.
//! Per vector: `|x| - low` below `span` (unsigned, by a saturating
//! subtract) marks the lanes that stay normal; every other lane must be a
//! zero (one `vptest`), else the vector takes the oracle's rounding; the
//! step is added to the in-range lanes only, so zeros stay zeros. Squares
//! of the written values go to eight f32 accumulators per block of 512
//! values (8 squares per lane), then to
//! `arch::generic::pow2::pow2_blocks`' checks, as in the `avx512` pass.

use core::arch::x86_64::*;

use half::bf16;

use super::super::Avx2;
use crate::arch::generic::pow2::{POW2_BLOCK, Pow2, pow2_blocks, pow2_oracle};
use crate::kernel::stats::GradStats;

/// bf16 values per vector here.
const LANES: usize = 16;

/// `x <- x * 2^d` (`-126 <= d <= 0`) for whole blocks of
/// [`POW2_BLOCK`] values, with statistics.
#[target_feature(enable = "avx,avx2,fma,f16c")]
pub(super) fn unscale_bf16_pow2(s: Avx2, data: &mut [bf16], d: i32) -> GradStats {
    let c = Pow2::new(d, |x| _mm256_set1_epi16(x));
    let hi_mask = _mm256_set1_epi32(0xFFFF_0000u32 as i32);
    pow2_blocks(s, data, |block| {
        const _: () = assert!(POW2_BLOCK.is_multiple_of(4 * LANES));
        // Squares of what was written, as in the `avx512` pass, but in
        // eight accumulators: a block is 32 vectors of 16 here, and eight
        // keep each f32 lane at 8 squares, as in the generic pass (its
        // relative error bound, 11 * 2^-24, needs that).
        let mut a = [_mm256_setzero_ps(); 8];
        let mut square_add = |k: usize, r: __m256i| {
            let lo = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(r));
            let hi = _mm256_castsi256_ps(_mm256_and_si256(r, hi_mask));
            a[k] = _mm256_fmadd_ps(lo, lo, a[k]);
            a[k + 1] = _mm256_fmadd_ps(hi, hi, a[k + 1]);
        };
        for quad in block.chunks_exact_mut(4 * LANES) {
            let (v01, v23) = quad.split_at_mut(2 * LANES);
            let (v0, v1) = v01.split_at_mut(LANES);
            let (v2, v3) = v23.split_at_mut(LANES);
            square_add(0, unscale_vector(v0, c));
            square_add(2, unscale_vector(v1, c));
            square_add(4, unscale_vector(v2, c));
            square_add(6, unscale_vector(v3, c));
        }
        let pair = |i: usize| _mm256_add_ps(a[i], a[i + 1]);
        let low = _mm256_add_ps(pair(0), pair(2));
        _mm256_add_ps(low, _mm256_add_ps(pair(4), pair(6)))
    })
}

/// One vector of 16 bf16: `v <- v * 2^d` by exponent arithmetic when every
/// nonzero lane stays normal, else by the oracle's rounding; returns the
/// bits written.
#[inline]
#[target_feature(enable = "avx,avx2,fma,f16c")]
fn unscale_vector(v: &mut [u16], c: Pow2<__m256i>) -> __m256i {
    assert_eq!(v.len(), LANES);
    let p = v.as_mut_ptr();
    // SAFETY: `v` is 16 u16 = 32 bytes (asserted), read and written here only.
    let x = unsafe { _mm256_loadu_si256(p.cast()) };
    let abs = _mm256_and_si256(x, c.abs_mask);
    let off = _mm256_sub_epi16(abs, c.low);
    // All ones where `off >= span` (unsigned): the lane leaves the normal
    // range, or is a zero (whose `off` wraps high).
    let outside = _mm256_cmpeq_epi16(_mm256_subs_epu16(c.span, off), _mm256_setzero_si256());
    let zero = _mm256_cmpeq_epi16(abs, _mm256_setzero_si256());
    // `vptest`: CF = every lane outside the range is a zero.
    if _mm256_testc_si256(zero, outside) == 1 {
        let r = _mm256_add_epi16(x, _mm256_andnot_si256(outside, c.step));
        // SAFETY: as for the load.
        unsafe { _mm256_storeu_si256(p.cast(), r) };
        r
    } else {
        pow2_oracle(v, c.inv);
        // SAFETY: as for the load.
        unsafe { _mm256_loadu_si256(v.as_ptr().cast()) }
    }
}
