//! Everything ISA-specific lives below here; nothing above `arch` touches an
//! intrinsic.
//!
//! It imports only the interfaces and types of `kernel` (and `element`);
//! the layers above reach it only through the dispatch in `isa`.
//!
//! - `scalar`: portable code, and the oracle every other ISA is tested
//!   against (checks, the training step, reference GEMM; the bit-level
//!   conversions are `kernel::bits`).
//! - `generic`: the elementwise kernels written once over
//!   `kernel::simd::F32Simd`, each with its `SimdOp`.
//! - `x86_64`, `aarch64`: one folder per ISA, each implementing only what
//!   differs, plus the tokens that prove an ISA is present.

pub(crate) mod scalar;

#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(
        dead_code,
        reason = "no SIMD ISA on this target: only the scalar oracle runs"
    )
)]
pub(crate) mod generic;

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_64;

#[cfg(target_arch = "aarch64")]
pub(crate) mod aarch64;
