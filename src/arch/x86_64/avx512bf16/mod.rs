//! AVX512_BF16 kernels: only what differs from `avx512` (vdpbf16ps, and
//! vcvtne2ps2bf16 where it is exact).

pub(crate) mod gemm;
