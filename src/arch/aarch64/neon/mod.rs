//! NEON kernels (4 f32 lanes per register).

pub(crate) mod gemm;
