//! Kernels written once over [`F32Simd`](crate::arch::simd::F32Simd) and
//! instantiated by each ISA's `#[target_feature]` shims (see
//! `arch::simd` for how).

pub(crate) mod convert;
