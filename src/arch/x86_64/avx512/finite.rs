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
//! The statistics follow `arch::generic::finite` exactly: squares of the
//! written values in four f32 accumulators per block of 512 values (eight
//! squares per lane), a block whose sum is not finite recounted by the
//! scalar oracle in f64, and a tiny total summed again scaled.

use core::arch::x86_64::*;

use half::bf16;
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};

use super::super::Avx512;
use crate::arch::generic::finite::{TINY_TOTAL, tiny_sum_sq};
use crate::arch::scalar::finite as oracle;
use crate::arch::simd::F32Simd;
use crate::finite::GradStats;

/// bf16 values per block (as the generic pass: 32 vectors of 16).
pub(super) const BLOCK: usize = 512;
/// bf16 values per vector here.
const LANES: usize = 32;

/// `d` when `inv_scale == 2^d` with `-126 <= d <= 0`, the case this path
/// takes (unscaling by a loss scale of at least 1).
pub(crate) fn pow2_exponent(inv_scale: f32) -> Option<i32> {
    let bits = inv_scale.to_bits();
    let biased = (bits >> 23) as i32;
    (bits & 0x807F_FFFF == 0 && (1..=127).contains(&biased)).then_some(biased - 127)
}

/// `x <- x * 2^d` for the whole blocks of `data` (the caller passes the
/// rest to the generic pass), with statistics.
#[target_feature(enable = "avx,avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")]
pub(crate) fn unscale_bf16_pow2(s: Avx512, data: &mut [bf16], d: i32) -> GradStats {
    debug_assert!((-126..=0).contains(&d) && data.len().is_multiple_of(BLOCK));
    let inv = f32::from_bits(((127 + d) as u32) << 23);
    let bits: &mut [u16] = data.reinterpret_cast_mut();
    // Lanes whose exponent e satisfies 1 <= e + d <= 254 (and e <= 254):
    // (e + d - 1) as u16 <= 253 + d; e = 0 and e = 255 fall outside.
    let shift = _mm512_set1_epi16((d - 1) as i16);
    let limit = _mm512_set1_epi16((253 + d) as i16);
    let step = _mm512_set1_epi16((d * 128) as i16);
    let exp_mask = _mm512_set1_epi16(0xFF);
    let abs_mask = _mm512_set1_epi16(0x7FFF);
    let hi_mask = _mm512_set1_epi32(0xFFFF_0000u32 as i32);
    let mut acc = s.acc_zero();
    let mut stats = GradStats::ZERO;
    for block in bits.chunks_exact_mut(BLOCK) {
        let mut a = [_mm512_setzero_ps(); 4];
        for (i, v) in block.chunks_exact_mut(LANES).enumerate() {
            let p = v.as_mut_ptr();
            // SAFETY: `v` is 32 u16 = 64 bytes, read and written here only.
            let r = unsafe {
                let x = _mm512_loadu_si512(p.cast());
                let e = _mm512_and_si512(_mm512_srli_epi16::<7>(x), exp_mask);
                let normal = _mm512_cmple_epu16_mask(_mm512_add_epi16(e, shift), limit);
                let zero = _mm512_testn_epi16_mask(x, abs_mask);
                if normal | zero == u32::MAX {
                    let r = _mm512_mask_add_epi16(x, normal, x, step);
                    _mm512_storeu_si512(p.cast(), r);
                    r
                } else {
                    // The oracle's rounding, element by element.
                    for h in v.iter_mut() {
                        let y = bf16::from_bits(*h).to_f32() * inv;
                        *h = bf16::from_f32(y).to_bits();
                    }
                    _mm512_loadu_si512(p.cast())
                }
            };
            // Squares of what was written: even lanes shifted up, odd lanes
            // masked in place (a bf16 is the top half of an f32).
            let lo = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(r));
            let hi = _mm512_castsi512_ps(_mm512_and_si512(r, hi_mask));
            let k = 2 * i % 4;
            a[k] = _mm512_fmadd_ps(lo, lo, a[k]);
            a[k + 1] = _mm512_fmadd_ps(hi, hi, a[k + 1]);
        }
        let sum = _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3]));
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
