//! In-place bf16 unscaling by a power of two, 32 lanes of 16 bits at a time.
//!
//! Every dynamic loss scale is a power of two, and multiplying a normal
//! bf16 by `2^d` whose result stays normal only moves its exponent: the
//! written bits are `x + (d << 7)`, exact, with nothing to round. So the
//! hot loop works on the bf16 bits directly (one add per 32 lanes instead
//! of widen, multiply, round and narrow per 16) and widens only for the
//! sum of squares. A vector with any lane outside that case (subnormal,
//! inf or NaN input, a result that would underflow) is computed by the
//! oracle's rounding instead, element by element; zeros stay zeros.
//!
//! Per vector that is a load, two masked compares (nonzero; |x| in range),
//! a masked add, a store, and four uops of squares: about 10 against the
//! general kernel's 20 per 16 lanes.
//!
//! The statistics follow `arch::generic::finite` exactly: squares of the
//! written values in four f32 accumulators per block of 512 values (eight
//! squares per lane), then `pow2_blocks`' checks (a block whose sum is not
//! finite recounted by the scalar oracle in f64, a tiny total summed again
//! scaled).

use core::arch::x86_64::*;

use half::bf16;

use super::super::Avx512;
use crate::arch::generic::pow2::{POW2_BLOCK, Pow2, pow2_blocks, pow2_oracle};
use crate::kernel::stats::GradStats;

/// bf16 values per vector here.
const LANES: usize = 32;

/// `x <- x * 2^d` (`-126 <= d <= 0`) for whole blocks of
/// [`POW2_BLOCK`] values, with statistics.
#[target_feature(enable = "avx,avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")]
pub(super) fn unscale_bf16_pow2(s: Avx512, data: &mut [bf16], d: i32) -> GradStats {
    let c = Pow2::new(d, |x| _mm512_set1_epi16(x));
    let hi_mask = _mm512_set1_epi32(0xFFFF_0000u32 as i32);
    pow2_blocks(s, data, |block| {
        const _: () = assert!(POW2_BLOCK.is_multiple_of(2 * LANES));
        let mut a = [_mm512_setzero_ps(); 4];
        // Squares of what was written: even lanes shifted up, odd lanes
        // masked in place (a bf16 is the top half of an f32). Two vectors
        // per step, so each has its own two accumulators.
        let mut square_add = |k: usize, r: __m512i| {
            let lo = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(r));
            let hi = _mm512_castsi512_ps(_mm512_and_si512(r, hi_mask));
            a[k] = _mm512_fmadd_ps(lo, lo, a[k]);
            a[k + 1] = _mm512_fmadd_ps(hi, hi, a[k + 1]);
        };
        for pair in block.chunks_exact_mut(2 * LANES) {
            let (v0, v1) = pair.split_at_mut(LANES);
            square_add(0, unscale_vector(v0, c));
            square_add(2, unscale_vector(v1, c));
        }
        _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3]))
    })
}

/// One vector of 32 bf16: `v <- v * 2^d` by exponent arithmetic when every
/// nonzero lane stays normal (see [`unscale_bf16_pow2`]), else by the
/// oracle's rounding; returns the bits written.
///
/// A test and a branch per vector: one per pair (`kortestd` of both masks)
/// was slower on Emerald Rapids, where LLVM then computes the zero test
/// twice and every compare into a mask issues on the same port.
#[inline]
#[target_feature(enable = "avx,avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")]
fn unscale_vector(v: &mut [u16], c: Pow2<__m512i>) -> __m512i {
    assert_eq!(v.len(), LANES);
    let p = v.as_mut_ptr();
    // SAFETY: `v` is 32 u16 = 64 bytes (asserted), read and written here only.
    let x = unsafe { _mm512_loadu_si512(p.cast()) };
    let off = _mm512_sub_epi16(_mm512_and_si512(x, c.abs_mask), c.low);
    let nonzero = _mm512_test_epi16_mask(x, c.abs_mask);
    let outside = _mm512_mask_cmpge_epu16_mask(nonzero, off, c.span);
    if outside == 0 {
        let r = _mm512_mask_add_epi16(x, nonzero, x, c.step);
        // SAFETY: as for the load.
        unsafe { _mm512_storeu_si512(p.cast(), r) };
        r
    } else {
        pow2_oracle(v, c.inv);
        // SAFETY: as for the load.
        unsafe { _mm512_loadu_si512(v.as_ptr().cast()) }
    }
}
