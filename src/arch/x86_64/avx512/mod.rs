//! AVX-512 F/BW/VL/DQ kernels (16 f32 lanes, mask registers for tails): the
//! [`F32Simd`] shim, the bf16 power-of-two unscale pass, the GEMM
//! microkernel, and the one `#[target_feature]` entry every elementwise
//! operation goes through (also for `avx512bf16` and `amx`, which add
//! nothing to those operations).
//!
//! [`F32Simd`]: crate::kernel::simd::F32Simd

mod finite;
pub(crate) mod gemm;
mod simd;

use super::Avx512;
use crate::kernel::simd::SimdOp;

/// Runs an elementwise operation on AVX-512.
pub(crate) fn run<O: SimdOp>(t: Avx512, op: O) -> O::Output {
    // SAFETY: `t` proves AVX-512 F/BW/VL/DQ + AVX2 + FMA + F16C, every
    // feature `run_tf` enables.
    unsafe { run_tf(t, op) }
}

/// The operation's kernel, compiled with AVX-512's features: `SimdOp::simd`
/// and everything it calls are inlined here.
#[target_feature(enable = "avx,avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")]
fn run_tf<O: SimdOp>(t: Avx512, op: O) -> O::Output {
    op.simd(t)
}
