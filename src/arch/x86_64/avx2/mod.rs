//! AVX2 + FMA + F16C kernels (8 f32 lanes): the [`F32Simd`] shim and the
//! `#[target_feature]` entry points of the generic kernels.
//!
//! [`F32Simd`]: crate::arch::simd::F32Simd

pub(crate) mod gemm;
mod simd;

use super::Avx2;
use crate::arch::generic;
use crate::element::{Slice, SliceMut};

/// `arch::generic::convert::convert` on AVX2.
pub(crate) fn convert(t: Avx2, src: Slice<'_>, dst: SliceMut<'_>) {
    // SAFETY: `t` proves AVX2 + FMA + F16C, every feature `convert_tf`
    // enables.
    unsafe { convert_tf(t, src, dst) }
}

#[target_feature(enable = "avx,avx2,fma,f16c")]
fn convert_tf(t: Avx2, src: Slice<'_>, dst: SliceMut<'_>) {
    generic::convert::convert(t, src, dst)
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
