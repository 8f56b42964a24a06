//! Everything ISA-specific lives below here; nothing above `arch` touches an
//! intrinsic.
//!
//! - `scalar`: portable code, and the oracle every other ISA is tested
//!   against (bit-level conversions, checks, reference GEMM).
//! - `simd`: the private [`F32Simd`](simd::F32Simd) trait every vectorised
//!   kernel is written over, and the chunking driver; `generic`: the kernels
//!   written once over it.
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
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(
        dead_code,
        reason = "no SIMD ISA on this target: only the scalar oracle runs"
    )
)]
pub(crate) mod simd;

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_64;

#[cfg(target_arch = "aarch64")]
pub(crate) mod aarch64;
