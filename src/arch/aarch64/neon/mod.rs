//! NEON kernels (4 f32 lanes per register): the [`F32Simd`] shim and the
//! `#[target_feature]` entry points of the generic kernels.
//!
//! [`F32Simd`]: crate::arch::simd::F32Simd

mod simd;

use super::Neon;
use crate::arch::generic;
use crate::element::{Slice, SliceMut};

/// `arch::generic::convert::convert` on NEON.
pub(crate) fn convert(t: Neon, src: Slice<'_>, dst: SliceMut<'_>) {
    // SAFETY: `t` proves NEON, the feature `convert_tf` enables.
    unsafe { convert_tf(t, src, dst) }
}

#[target_feature(enable = "neon")]
fn convert_tf(t: Neon, src: Slice<'_>, dst: SliceMut<'_>) {
    generic::convert::convert(t, src, dst)
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

#[cfg(test)]
mod tests {
    #[test]
    fn neon_implements_f32simd() {
        if let Some(t) = super::Neon::try_new() {
            crate::arch::simd::tests::check(t);
        }
    }
}
