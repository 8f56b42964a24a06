//! The scalar gradient checks: the oracle every SIMD instantiation of
//! `arch::generic::finite` is tested against, and the path the `scalar` ISA
//! runs (also under Miri).
//!
//! Each element is unscaled in f32 (`x.to_f32() * inv_scale`), rounded back
//! to its type, and the value *as written* is tested and squared in f64.
//! The f64 sum of squares is sequential, so its relative error on finite
//! data is at most `n * 2^-53`, far inside the 1e-6 the API promises.

use crate::element::{Element, Slice, SliceMut};
use crate::kernel::stats::GradStats;

/// Number of inf/NaN elements; with `stop_at_first`, stops at the first
/// (the count is then 0 or 1).
pub(crate) fn count_nonfinite(src: Slice<'_>, stop_at_first: bool) -> usize {
    fn count<T: Element>(src: &[T], bits: impl Fn(T) -> u32, exp: u32, stop: bool) -> usize {
        if stop {
            return src.iter().any(|&x| bits(x) & exp == exp) as usize;
        }
        src.iter().filter(|&&x| bits(x) & exp == exp).count()
    }
    match src {
        Slice::F32(s) => count(s, f32::to_bits, 0x7F80_0000, stop_at_first),
        Slice::Bf16(s) => count(s, |x| x.to_bits() as u32, 0x7F80, stop_at_first),
        Slice::F16(s) => count(s, |x| x.to_bits() as u32, 0x7C00, stop_at_first),
    }
}

/// One element: unscale, round to `D`, write; returns the written value.
#[inline(always)]
fn step<S: Element, D: Element>(x: S, inv_scale: f32, stats: &mut GradStats) -> D {
    let y = D::from_f32(x.to_f32() * inv_scale);
    let v = y.to_f32();
    if v.is_finite() {
        stats.sum_sq += f64::from(v) * f64::from(v);
    } else {
        stats.nonfinite += 1;
    }
    y
}

/// `x <- x * inv_scale` in place, with the statistics of the written values.
pub(crate) fn unscale(data: SliceMut<'_>, inv_scale: f32) -> GradStats {
    fn run<T: Element>(data: &mut [T], inv_scale: f32) -> GradStats {
        let mut stats = GradStats::ZERO;
        for x in data {
            *x = step(*x, inv_scale, &mut stats);
        }
        stats
    }
    match data {
        SliceMut::F32(d) => run(d, inv_scale),
        SliceMut::Bf16(d) => run(d, inv_scale),
        SliceMut::F16(d) => run(d, inv_scale),
    }
}

/// `dst[i] = src[i] * inv_scale` in f32 (equal lengths), with statistics.
pub(crate) fn unscale_into(src: Slice<'_>, dst: &mut [f32], inv_scale: f32) -> GradStats {
    fn run<T: Element>(src: &[T], dst: &mut [f32], inv_scale: f32) -> GradStats {
        let mut stats = GradStats::ZERO;
        for (d, &x) in dst.iter_mut().zip(src) {
            *d = step(x, inv_scale, &mut stats);
        }
        stats
    }
    match src {
        Slice::F32(s) => run(s, dst, inv_scale),
        Slice::Bf16(s) => run(s, dst, inv_scale),
        Slice::F16(s) => run(s, dst, inv_scale),
    }
}

/// Statistics of `data` as it is, without writing: count of inf/NaN and the
/// f64 sum of squares of the finite values.
pub(crate) fn stats<T: Element>(data: &[T]) -> GradStats {
    let mut stats = GradStats::ZERO;
    for &x in data {
        let v = x.to_f32();
        if v.is_finite() {
            stats.sum_sq += f64::from(v) * f64::from(v);
        } else {
            stats.nonfinite += 1;
        }
    }
    stats
}
