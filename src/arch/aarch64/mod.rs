//! aarch64 kernels, one folder per [`Isa`](crate::Isa), and the tokens that
//! prove each ISA (see `arch::x86_64` for why tokens).

pub(crate) mod neon;
pub(crate) mod neonbf16;

pulp::simd_type! {
    /// Advanced SIMD (NEON): every aarch64 CPU.
    pub struct Neon {
        pub neon: "neon",
    }

    /// NEON plus FEAT_BF16 (BFCVT, BFDOT, BFMMLA): Neoverse V1/N2+, Apple M2+.
    pub struct NeonBf16 {
        pub neon: "neon",
        pub bf16: "bf16",
    }
}

impl NeonBf16 {
    /// The NEON base this token also proves.
    #[inline(always)]
    pub(crate) fn neon(self) -> Neon {
        // SAFETY: every NeonBf16 CPU has NEON.
        unsafe { Neon::new_unchecked() }
    }
}
