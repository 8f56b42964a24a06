//! Kernels written once over [`F32Simd`](crate::kernel::simd::F32Simd) and
//! instantiated by each ISA's `#[target_feature]` shims (see
//! `kernel::simd` for how).

pub(crate) mod convert;
pub(crate) mod dot;
pub(crate) mod finite;
pub(crate) mod gemv;
pub(crate) mod pow2;
pub(crate) mod train;
