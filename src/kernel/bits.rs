//! Bit-level conversions: the oracle for every SIMD conversion kernel.
//!
//! All functions are `const` and work on bits only, so they mean the same
//! thing on every target and under Miri. Round-to-nearest results are
//! bit-identical to `half::bf16::from_f32` / `half::f16::from_f32` for all
//! 2^32 inputs (tested exhaustively); the stochastic-rounding functions
//! define the crate's stochastic contract, which the SIMD kernels reproduce
//! bit for bit.

use half::{bf16, f16};

const F32_SIGN: u32 = 0x8000_0000;
const F32_ABS: u32 = 0x7FFF_FFFF;
const F32_INF: u32 = 0x7F80_0000;

/// f32 -> bf16, round to nearest, ties to even; NaN stays NaN (quiet, sign
/// and upper payload kept); overflow goes to inf; subnormals are kept.
#[inline(always)]
pub const fn f32_to_bf16_bits(x: u32) -> u16 {
    if x & F32_ABS > F32_INF {
        // Quiet the NaN: set the top mantissa bit of the bf16.
        return ((x >> 16) | 0x0040) as u16;
    }
    // Adding 0x7FFF plus the kept LSB rounds to nearest-even; a carry out of
    // the mantissa correctly bumps the exponent (up to inf).
    let lsb = (x >> 16) & 1;
    ((x + 0x7FFF + lsb) >> 16) as u16
}

/// bf16 -> f32: exact (a bf16 is the upper half of an f32), except that a
/// signalling NaN comes back quiet, as `half` does it.
#[inline(always)]
pub const fn bf16_to_f32_bits(x: u16) -> u32 {
    let quiet = if x & 0x7FFF > 0x7F80 { 0x0040 } else { 0 };
    ((x | quiet) as u32) << 16
}

/// f32 -> f16, round to nearest, ties to even; overflow to inf; subnormal
/// results kept; NaN quiet with sign and upper payload kept.
#[inline(always)]
pub const fn f32_to_f16_bits(x: u32) -> u16 {
    let sign = ((x & F32_SIGN) >> 16) as u16;
    let abs = x & F32_ABS;
    if abs >= F32_INF {
        if abs == F32_INF {
            return sign | 0x7C00;
        }
        return sign | 0x7E00 | ((abs >> 13) & 0x03FF) as u16;
    }
    let exp = (abs >> 23) as i32 - 127;
    if exp >= 16 {
        // |x| >= 65536: beyond the largest rounding interval.
        return sign | 0x7C00;
    }
    if exp >= -14 {
        // Normal f16 (or rounds up to inf): rebias, then round the 13
        // dropped bits to nearest-even on the combined exponent|mantissa.
        let rebased = abs - ((127 - 15) << 23);
        let lsb = (rebased >> 13) & 1;
        let rounded = (rebased + 0x0FFF + lsb) >> 13;
        return sign | rounded as u16;
    }
    // Subnormal f16 or zero: the value in units of 2^-24 is m * 2^(exp+1),
    // so shift the 24-bit significand right by -(exp+1) >= 14.
    let shift = (-(exp + 1)) as u32;
    if shift > 25 {
        // Below half the smallest subnormal (2^-25): rounds to zero.
        return sign;
    }
    let m = if abs >= 0x0080_0000 {
        (abs & 0x007F_FFFF) | 0x0080_0000
    } else {
        abs // f32 subnormal (exp = -127 here, so shift > 25 above anyway)
    };
    let kept = m >> shift;
    let rem = m & ((1 << shift) - 1);
    let half = 1 << (shift - 1);
    let up = rem > half || (rem == half && kept & 1 == 1);
    sign | (kept + up as u32) as u16
}

/// f16 -> f32: exact; NaN quiet (top mantissa bit set), sign and payload kept.
#[inline(always)]
pub const fn f16_to_f32_bits(x: u16) -> u32 {
    let sign = ((x & 0x8000) as u32) << 16;
    let exp = ((x >> 10) & 0x1F) as u32;
    let man = (x & 0x03FF) as u32;
    if exp == 0x1F {
        if man == 0 {
            return sign | F32_INF;
        }
        return sign | 0x7FC0_0000 | (man << 13);
    }
    if exp != 0 {
        return sign | ((exp + (127 - 15)) << 23) | (man << 13);
    }
    if man == 0 {
        return sign;
    }
    // Subnormal f16: normalise. `man` has its top set bit at position p
    // (0..=9); the value is man * 2^-24 = 1.f * 2^(p-24).
    let p = 31 - man.leading_zeros();
    let f32_exp = p + 127 - 24;
    let frac = (man << (23 - p)) & 0x007F_FFFF;
    sign | (f32_exp << 23) | frac
}

/// f32 -> bf16 (see [`f32_to_bf16_bits`]).
#[inline(always)]
pub const fn f32_to_bf16(x: f32) -> bf16 {
    bf16::from_bits(f32_to_bf16_bits(x.to_bits()))
}

/// bf16 -> f32, exact.
#[inline(always)]
pub const fn bf16_to_f32(x: bf16) -> f32 {
    f32::from_bits(bf16_to_f32_bits(x.to_bits()))
}

/// f32 -> f16 (see [`f32_to_f16_bits`]).
#[inline(always)]
pub const fn f32_to_f16(x: f32) -> f16 {
    f16::from_bits(f32_to_f16_bits(x.to_bits()))
}

/// f16 -> f32, exact.
#[inline(always)]
pub const fn f16_to_f32(x: f16) -> f32 {
    f32::from_bits(f16_to_f32_bits(x.to_bits()))
}

/// bf16 -> f16 with one rounding (bf16 -> f32 is exact).
#[inline(always)]
pub const fn bf16_to_f16(x: bf16) -> f16 {
    f32_to_f16(bf16_to_f32(x))
}

/// f16 -> bf16 with one rounding (f16 -> f32 is exact).
#[inline(always)]
pub const fn f16_to_bf16(x: f16) -> bf16 {
    f32_to_bf16(f16_to_f32(x))
}

// ---------------------------------------------------------------------------
// Stochastic rounding
//
// Contract: element `i` of a call with `seed` draws 32 random bits
// `r = sr_bits(sr_key(seed, i >> 32), i as u32)`, and its magnitude is
// rounded away from zero iff `frac32 + r >= 2^32`, where `frac32` is the
// discarded part of |x| as a 0.32 fixed-point fraction of one unit in the
// last place of the target (truncated). So the probability of rounding up
// is the discarded fraction (to 2^-32), and the result depends only on
// (seed, i, x): not on the ISA, on chunking, or on threads.
//
// The generator is counter-based: a 64-bit mix of the seed (and the rarely
// changing upper 32 index bits) gives a key, then each 32-bit index goes
// through a multiply-add and the `lowbias32` finaliser (Wellons), both
// bijections on u32. Three 32-bit multiplies per element: cheap in SIMD,
// and no state to carry between chunks or threads.
// ---------------------------------------------------------------------------

/// The per-block key: a SplitMix64 finaliser of the seed and the upper 32
/// bits of the element index.
#[inline(always)]
pub const fn sr_key(seed: u64, index_hi: u32) -> u32 {
    let mut z = seed ^ ((index_hi as u64) << 32 | index_hi as u64);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z ^ (z >> 32)) as u32
}

/// The 32 random bits of element `index_lo` (low 32 index bits) under `key`.
#[inline(always)]
pub const fn sr_bits(key: u32, index_lo: u32) -> u32 {
    let mut x = index_lo.wrapping_mul(0x9E37_79B9).wrapping_add(key);
    x ^= x >> 16;
    x = x.wrapping_mul(0x7FEB_352D);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846C_A68B);
    x ^= x >> 16;
    x
}

/// Stochastic f32 -> bf16 with random bits `r`. NaN is quieted as in the
/// nearest rounding; inf stays inf; finite values round away from zero with
/// probability equal to the discarded fraction (the largest finite values
/// can round to inf that way).
#[inline(always)]
pub const fn f32_to_bf16_sr_bits(x: u32, r: u32) -> u16 {
    if x & F32_ABS > F32_INF {
        return ((x >> 16) | 0x0040) as u16;
    }
    if x & F32_ABS == F32_INF {
        return (x >> 16) as u16;
    }
    // frac32 = low16 << 16; frac32 + r carries iff low16 + (r >> 16) does.
    ((x + (r >> 16)) >> 16) as u16
}

/// Stochastic f32 -> f16 with random bits `r` (same contract as
/// [`f32_to_bf16_sr_bits`]; f16's subnormal range uses the discarded
/// fraction of its fixed 2^-24 grid). |x| >= 65536 lies beyond f16's last
/// rounding interval and becomes inf, as with nearest rounding.
#[inline(always)]
pub const fn f32_to_f16_sr_bits(x: u32, r: u32) -> u16 {
    let sign = ((x & F32_SIGN) >> 16) as u16;
    let abs = x & F32_ABS;
    if abs >= F32_INF {
        return f32_to_f16_bits(x);
    }
    let exp = (abs >> 23) as i32 - 127;
    if exp >= 16 {
        return sign | 0x7C00;
    }
    if exp >= -14 {
        // 13 discarded bits: carry iff low13 + (r >> 19) >= 2^13.
        let rebased = abs - ((127 - 15) << 23);
        let t = (rebased + (r >> 19)) >> 13;
        return sign | t as u16; // a carry into exponent 31 is inf, as it should be
    }
    let shift = (-(exp + 1)) as u32; // >= 14
    let m = if abs >= 0x0080_0000 {
        (abs & 0x007F_FFFF) | 0x0080_0000
    } else {
        abs
    };
    let (kept, frac32) = if shift >= 56 {
        (0, 0) // |x| < 2^-32 ulp: the fraction truncates to 0 in 0.32
    } else if shift >= 32 {
        (0, m >> (shift - 32))
    } else {
        (m >> shift, (m << (32 - shift)))
    };
    let up = frac32 as u64 + r as u64 >= 1 << 32;
    sign | (kept + up as u32) as u16
}
