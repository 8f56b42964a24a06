//! AVX2 + FMA + F16C kernels (8 f32 lanes): the [`F32Simd`] shim and the
//! `#[target_feature]` entry points of the generic kernels.
//!
//! [`F32Simd`]: crate::arch::simd::F32Simd

mod finite;
pub(crate) mod gemm;
mod simd;

use super::Avx2;
use crate::arch::generic;
use crate::element::{Slice, SliceMut};
use crate::finite::GradStats;
use crate::train::kernel::{Tensor, Update};

/// `arch::generic::convert::convert` on AVX2.
pub(crate) fn convert(t: Avx2, src: Slice<'_>, dst: SliceMut<'_>, stream: bool) {
    // SAFETY: `t` proves AVX2 + FMA + F16C, every feature `convert_tf`
    // enables.
    unsafe { convert_tf(t, src, dst, stream) }
}

#[target_feature(enable = "avx,avx2,fma,f16c")]
fn convert_tf(t: Avx2, src: Slice<'_>, dst: SliceMut<'_>, stream: bool) {
    generic::convert::convert(t, src, dst, stream)
}

/// `arch::generic::convert::convert_stochastic` on AVX2.
pub(crate) fn convert_stochastic(t: Avx2, src: &[f32], dst: SliceMut<'_>, seed: u64, first: u64) {
    // SAFETY: as in `convert`.
    unsafe { convert_stochastic_tf(t, src, dst, seed, first) }
}

#[target_feature(enable = "avx,avx2,fma,f16c")]
fn convert_stochastic_tf(t: Avx2, src: &[f32], dst: SliceMut<'_>, seed: u64, first: u64) {
    generic::convert::convert_stochastic(t, src, dst, seed, first)
}

/// `arch::generic::train::stats` on AVX2.
pub(crate) fn train_stats(t: Avx2, grad: Slice<'_>, inv_scale: f32) -> GradStats {
    // SAFETY: `t` proves AVX2 + FMA + F16C, every feature `train_stats_tf` enables.
    unsafe { train_stats_tf(t, grad, inv_scale) }
}

#[target_feature(enable = "avx,avx2,fma,f16c")]
fn train_stats_tf(t: Avx2, grad: Slice<'_>, inv_scale: f32) -> GradStats {
    generic::train::stats(t, grad, inv_scale)
}

/// `arch::generic::train::apply` on AVX2.
pub(crate) fn train_apply(t: Avx2, u: &Update, tensor: Tensor<'_>) {
    // SAFETY: `t` proves AVX2 + FMA + F16C, every feature `train_apply_tf` enables.
    unsafe { train_apply_tf(t, u, tensor) }
}

#[target_feature(enable = "avx,avx2,fma,f16c")]
fn train_apply_tf(t: Avx2, u: &Update, tensor: Tensor<'_>) {
    generic::train::apply(t, u, tensor)
}

/// `arch::generic::finite::unscale` on AVX2.
pub(crate) fn unscale(t: Avx2, data: SliceMut<'_>, inv_scale: f32) -> GradStats {
    // SAFETY: `t` proves AVX2 + FMA + F16C, every feature `unscale_tf` enables.
    unsafe { unscale_tf(t, data, inv_scale) }
}

#[target_feature(enable = "avx,avx2,fma,f16c")]
fn unscale_tf(t: Avx2, data: SliceMut<'_>, inv_scale: f32) -> GradStats {
    // bf16 by a power of two: exponent arithmetic on 16 lanes.
    generic::pow2::unscale_with_pow2(t, data, inv_scale, |blocks, e| {
        finite::unscale_bf16_pow2(t, blocks, e)
    })
}

/// `arch::generic::finite::unscale_into` on AVX2.
pub(crate) fn unscale_into(t: Avx2, src: Slice<'_>, dst: &mut [f32], inv_scale: f32) -> GradStats {
    // SAFETY: as in `unscale`.
    unsafe { unscale_into_tf(t, src, dst, inv_scale) }
}

#[target_feature(enable = "avx,avx2,fma,f16c")]
fn unscale_into_tf(t: Avx2, src: Slice<'_>, dst: &mut [f32], inv_scale: f32) -> GradStats {
    generic::finite::unscale_into(t, src, dst, inv_scale)
}

/// `arch::generic::finite::count_nonfinite` on AVX2.
pub(crate) fn count_nonfinite(t: Avx2, src: Slice<'_>, stop_at_first: bool) -> usize {
    // SAFETY: as in `unscale`.
    unsafe { count_nonfinite_tf(t, src, stop_at_first) }
}

#[target_feature(enable = "avx,avx2,fma,f16c")]
fn count_nonfinite_tf(t: Avx2, src: Slice<'_>, stop_at_first: bool) -> usize {
    generic::finite::count_nonfinite(t, src, stop_at_first)
}
