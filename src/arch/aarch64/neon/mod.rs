//! NEON kernels (4 f32 lanes per register): the [`F32Simd`] shim, the GEMM
//! microkernel, and the one `#[target_feature]` entry every elementwise
//! operation goes through (also for `neonbf16`, which adds nothing to
//! those operations).
//!
//! [`F32Simd`]: crate::kernel::simd::F32Simd

pub(crate) mod gemm;
mod simd;

use super::Neon;
use crate::kernel::simd::SimdOp;

/// Runs an elementwise operation on NEON.
pub(crate) fn run<O: SimdOp>(t: Neon, op: O) -> O::Output {
    // SAFETY: `t` proves NEON, the feature `run_tf` enables.
    unsafe { run_tf(t, op) }
}

/// The operation's kernel, compiled with NEON: `SimdOp::simd` and
/// everything it calls are inlined here.
#[target_feature(enable = "neon")]
fn run_tf<O: SimdOp>(t: Neon, op: O) -> O::Output {
    op.simd(t)
}

#[cfg(test)]
mod tests {
    #[test]
    fn neon_implements_f32simd() {
        if let Some(t) = super::Neon::try_new() {
            crate::kernel::simd::tests::check(t);
        }
    }
}
