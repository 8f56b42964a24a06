//! NEON kernels (4 f32 lanes per register): the [`F32Simd`] shim and the
//! `#[target_feature]` entry points of the generic kernels.
//!
//! [`F32Simd`]: crate::arch::simd::F32Simd

pub(crate) mod gemm;
mod simd;

use super::Neon;
use crate::arch::generic;
use crate::element::{Slice, SliceMut};
use crate::finite::GradStats;
use crate::train::kernel::{Tensor, Update};

/// `arch::generic::convert::convert` on NEON.
pub(crate) fn convert(t: Neon, src: Slice<'_>, dst: SliceMut<'_>, stream: bool) {
    // SAFETY: `t` proves NEON, the feature `convert_tf` enables.
    unsafe { convert_tf(t, src, dst, stream) }
}

#[target_feature(enable = "neon")]
fn convert_tf(t: Neon, src: Slice<'_>, dst: SliceMut<'_>, stream: bool) {
    generic::convert::convert(t, src, dst, stream)
}

/// `arch::generic::convert::convert_stochastic` on NEON.
pub(crate) fn convert_stochastic(t: Neon, src: &[f32], dst: SliceMut<'_>, seed: u64, first: u64) {
    // SAFETY: as in `convert`.
    unsafe { convert_stochastic_tf(t, src, dst, seed, first) }
}

#[target_feature(enable = "neon")]
fn convert_stochastic_tf(t: Neon, src: &[f32], dst: SliceMut<'_>, seed: u64, first: u64) {
    generic::convert::convert_stochastic(t, src, dst, seed, first)
}

/// `arch::generic::train::stats` on NEON.
pub(crate) fn train_stats(t: Neon, grad: Slice<'_>, inv_scale: f32) -> GradStats {
    // SAFETY: `t` proves NEON, the feature `train_stats_tf` enables.
    unsafe { train_stats_tf(t, grad, inv_scale) }
}

#[target_feature(enable = "neon")]
fn train_stats_tf(t: Neon, grad: Slice<'_>, inv_scale: f32) -> GradStats {
    generic::train::stats(t, grad, inv_scale)
}

/// `arch::generic::train::apply` on NEON.
pub(crate) fn train_apply(t: Neon, u: &Update, tensor: Tensor<'_>) {
    // SAFETY: `t` proves NEON, the feature `train_apply_tf` enables.
    unsafe { train_apply_tf(t, u, tensor) }
}

#[target_feature(enable = "neon")]
fn train_apply_tf(t: Neon, u: &Update, tensor: Tensor<'_>) {
    generic::train::apply(t, u, tensor)
}

/// `arch::generic::finite::unscale` on NEON.
pub(crate) fn unscale(t: Neon, data: SliceMut<'_>, inv_scale: f32) -> GradStats {
    // SAFETY: `t` proves NEON, every feature `unscale_tf` enables.
    unsafe { unscale_tf(t, data, inv_scale) }
}

#[target_feature(enable = "neon")]
fn unscale_tf(t: Neon, data: SliceMut<'_>, inv_scale: f32) -> GradStats {
    generic::finite::unscale(t, data, inv_scale)
}

/// `arch::generic::finite::unscale_into` on NEON.
pub(crate) fn unscale_into(t: Neon, src: Slice<'_>, dst: &mut [f32], inv_scale: f32) -> GradStats {
    // SAFETY: as in `unscale`.
    unsafe { unscale_into_tf(t, src, dst, inv_scale) }
}

#[target_feature(enable = "neon")]
fn unscale_into_tf(t: Neon, src: Slice<'_>, dst: &mut [f32], inv_scale: f32) -> GradStats {
    generic::finite::unscale_into(t, src, dst, inv_scale)
}

/// `arch::generic::finite::count_nonfinite` on NEON.
pub(crate) fn count_nonfinite(t: Neon, src: Slice<'_>, stop_at_first: bool) -> usize {
    // SAFETY: as in `unscale`.
    unsafe { count_nonfinite_tf(t, src, stop_at_first) }
}

#[target_feature(enable = "neon")]
fn count_nonfinite_tf(t: Neon, src: Slice<'_>, stop_at_first: bool) -> usize {
    generic::finite::count_nonfinite(t, src, stop_at_first)
}

#[cfg(test)]
mod tests {
    #[test]
    fn neon_implements_f32simd() {
        if let Some(t) = super::Neon::try_new() {
            crate::arch::simd::tests::check(t);
        }
    }
}
