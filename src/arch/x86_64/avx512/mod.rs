//! AVX-512 F/BW/VL/DQ kernels (16 f32 lanes, mask registers for tails).

pub(crate) mod gemm;
