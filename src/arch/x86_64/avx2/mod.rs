//! AVX2 + FMA + F16C kernels (8 f32 lanes): the [`F32Simd`] shim, the bf16
//! power-of-two unscale pass, the GEMM microkernel, and the one
//! `#[target_feature]` entry every elementwise operation goes through.
//!
//! [`F32Simd`]: crate::kernel::simd::F32Simd

mod finite;
pub(crate) mod gemm;
mod simd;

use super::Avx2;
use crate::kernel::simd::SimdOp;

/// Runs an elementwise operation on AVX2.
pub(crate) fn run<O: SimdOp>(t: Avx2, op: O) -> O::Output {
    // SAFETY: `t` proves AVX2 + FMA + F16C, every feature `run_tf` enables.
    unsafe { run_tf(t, op) }
}

/// The operation's kernel, compiled with AVX2's features: `SimdOp::simd`
/// and everything it calls are inlined here.
#[target_feature(enable = "avx,avx2,fma,f16c")]
fn run_tf<O: SimdOp>(t: Avx2, op: O) -> O::Output {
    op.simd(t)
}
