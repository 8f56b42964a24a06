//! The scalar ISA's conversion kernels: slice loops over the bit-level
//! oracle (`kernel::bits`), re-exported here so that the oracle and the
//! scalar kernels are named together.

pub use crate::kernel::bits::*;
use half::{bf16, f16};

/// Slice loops over the oracle: the scalar ISA's kernels.
pub(crate) mod slices {
    use super::*;

    pub(crate) fn f32_to_bf16_slice(src: &[f32], dst: &mut [bf16]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = f32_to_bf16(*s);
        }
    }

    pub(crate) fn f32_to_f16_slice(src: &[f32], dst: &mut [f16]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = f32_to_f16(*s);
        }
    }

    pub(crate) fn bf16_to_f32_slice(src: &[bf16], dst: &mut [f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = bf16_to_f32(*s);
        }
    }

    pub(crate) fn f16_to_f32_slice(src: &[f16], dst: &mut [f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = f16_to_f32(*s);
        }
    }

    pub(crate) fn bf16_to_f16_slice(src: &[bf16], dst: &mut [f16]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = bf16_to_f16(*s);
        }
    }

    pub(crate) fn f16_to_bf16_slice(src: &[f16], dst: &mut [bf16]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = f16_to_bf16(*s);
        }
    }

    /// `first` is the global index of `src[0]` (so chunks agree with the whole).
    pub(crate) fn f32_to_bf16_sr_slice(src: &[f32], dst: &mut [bf16], seed: u64, first: u64) {
        for (i, (d, s)) in dst.iter_mut().zip(src).enumerate() {
            let idx = first + i as u64;
            let r = sr_bits(sr_key(seed, (idx >> 32) as u32), idx as u32);
            *d = bf16::from_bits(f32_to_bf16_sr_bits(s.to_bits(), r));
        }
    }

    /// `first` is the global index of `src[0]` (so chunks agree with the whole).
    pub(crate) fn f32_to_f16_sr_slice(src: &[f32], dst: &mut [f16], seed: u64, first: u64) {
        for (i, (d, s)) in dst.iter_mut().zip(src).enumerate() {
            let idx = first + i as u64;
            let r = sr_bits(sr_key(seed, (idx >> 32) as u32), idx as u32);
            *d = f16::from_bits(f32_to_f16_sr_bits(s.to_bits(), r));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spread of interesting bit patterns plus a strided sweep; the
    /// exhaustive 2^32 comparison lives in tests/convert.rs.
    fn sample() -> impl Iterator<Item = u32> {
        let specials = [
            0u32,
            0x8000_0000,
            0x7F80_0000,
            0xFF80_0000,
            0x7FC0_0000,
            0x7F80_0001,
            0xFFFF_FFFF,
            0x7F7F_FFFF,
            0x0000_0001,
            0x007F_FFFF,
            0x0080_0000,
            0x477F_E000,
            0x477F_F000,
            0x477F_EFFF,
            0x3380_0000,
            0x3380_0001,
            0x3300_0000,
            0x3300_0001,
            0x3F80_8000,
            0x3F81_8000,
            0x3F80_7FFF,
        ];
        // Miri interprets every step: a coarser sweep there.
        let step = if cfg!(miri) { 16_777_259 } else { 65_521 };
        specials.into_iter().chain((0..=u32::MAX).step_by(step))
    }

    #[test]
    fn nearest_matches_half_on_a_sample() {
        for x in sample() {
            let f = f32::from_bits(x);
            assert_eq!(
                f32_to_bf16_bits(x),
                half::bf16::from_f32(f).to_bits(),
                "{x:#010x}"
            );
            assert_eq!(
                f32_to_f16_bits(x),
                half::f16::from_f32(f).to_bits(),
                "{x:#010x}"
            );
        }
    }

    #[test]
    fn widening_matches_half_for_every_input() {
        let step = if cfg!(miri) { 251 } else { 1 };
        for h in (0..=u16::MAX).step_by(step) {
            let b = half::bf16::from_bits(h);
            let f = half::f16::from_bits(h);
            assert_eq!(bf16_to_f32_bits(h), b.to_f32().to_bits(), "{h:#06x}");
            assert_eq!(f16_to_f32_bits(h), f.to_f32().to_bits(), "{h:#06x}");
            let via_f32 = half::f16::from_f32(b.to_f32()).to_bits();
            assert_eq!(bf16_to_f16(b).to_bits(), via_f32, "{h:#06x}");
            let via_f32 = half::bf16::from_f32(f.to_f32()).to_bits();
            assert_eq!(f16_to_bf16(f).to_bits(), via_f32, "{h:#06x}");
        }
    }

    #[test]
    fn stochastic_lands_on_a_neighbour() {
        type Sr = fn(u32, u32) -> u16;
        type Widen = fn(u16) -> u32;
        let formats: [(Sr, Widen); 2] = [
            (f32_to_bf16_sr_bits, bf16_to_f32_bits),
            (f32_to_f16_sr_bits, f16_to_f32_bits),
        ];
        for x in sample() {
            let f = f32::from_bits(x);
            for (sr, widen) in formats {
                let lo = sr(x, 0);
                let hi = sr(x, u32::MAX);
                if f.is_nan() {
                    assert!(f32::from_bits(widen(lo)).is_nan());
                    continue;
                }
                // r = 0 truncates toward zero, r = max rounds any inexact
                // value away: the two neighbours of x, adjacent in bits.
                let (lo_f, hi_f) = (f32::from_bits(widen(lo)), f32::from_bits(widen(hi)));
                if lo_f.is_infinite() {
                    // Beyond the format's last rounding interval: inf, as
                    // with nearest rounding.
                    assert!(hi == lo && f.abs() >= 65504.0, "x={x:#010x}");
                    continue;
                }
                // (A fraction below 2^-32 of an ulp truncates to 0: hi == lo.)
                assert!(lo_f.abs() <= f.abs(), "x={x:#010x}");
                assert!(f.abs() <= hi_f.abs() || hi == lo, "x={x:#010x}");
                assert!(hi - lo <= 1, "x={x:#010x} lo={lo:#06x} hi={hi:#06x}");
                if lo_f == f {
                    assert_eq!(hi, lo, "exact x={x:#010x} must not round");
                }
                for r in [1u32, 0x7FFF_FFFF, 0x8000_0000, 0x1234_5678] {
                    let got = sr(x, r);
                    assert!(got == lo || got == hi, "x={x:#010x} r={r:#x}");
                }
            }
        }
    }

    #[test]
    fn stochastic_is_exact_for_representable_values_and_r_zero_truncates() {
        let step = if cfg!(miri) { 251 } else { 1 };
        for h in (0..=u16::MAX).step_by(step) {
            let b = bf16_to_f32_bits(h);
            if f32::from_bits(b).is_nan() {
                continue;
            }
            assert_eq!(f32_to_bf16_sr_bits(b, u32::MAX), h);
            let f = f16_to_f32_bits(h);
            if f32::from_bits(f).is_nan() {
                continue;
            }
            assert_eq!(f32_to_f16_sr_bits(f, u32::MAX), h, "{h:#06x}");
        }
        // r = 0 never rounds up: truncation toward zero.
        assert_eq!(f32_to_bf16_sr_bits(0x3F80_FFFF, 0), 0x3F80);
        assert_eq!(f32_to_f16_sr_bits(0x3F80_1FFF, 0), 0x3C00);
    }

    #[test]
    fn sr_bits_is_a_permutation_on_a_window() {
        // Not a proof, but a broken mixer (e.g. dropping the index) shows up.
        let key = sr_key(42, 0);
        let window = if cfg!(miri) { 1u32 << 10 } else { 1 << 16 };
        let mut seen: Vec<u32> = (0..window).map(|i| sr_bits(key, i)).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), window as usize);
        assert_ne!(sr_key(1, 0), sr_key(2, 0));
        assert_ne!(sr_key(1, 0), sr_key(1, 1));
    }
}
