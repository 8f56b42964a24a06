//! Kernels written once over [`F32Simd`](crate::arch::simd::F32Simd) and
//! instantiated by each ISA's `#[target_feature]` shims (see
//! `arch::simd` for how).

pub(crate) mod convert;
pub(crate) mod finite;
#[cfg(target_arch = "x86_64")]
pub(crate) mod pow2;
pub(crate) mod train;
