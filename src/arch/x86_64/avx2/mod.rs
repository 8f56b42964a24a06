//! AVX2 + FMA + F16C kernels (8 f32 lanes).

pub(crate) mod gemm;
