//! FEAT_BF16 kernels: only what differs from `neon` (BFCVT, BFDOT, BFMMLA).

pub(crate) mod gemm;
