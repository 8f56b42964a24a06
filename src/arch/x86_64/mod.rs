//! x86-64 kernels, one folder per [`Isa`](crate::Isa), and the tokens that
//! prove each ISA.
//!
//! A token is a zero-sized value that can only be made after run-time
//! detection succeeded (`try_new`), so a kernel that takes one by value may
//! enter `#[target_feature]` code without further checks. Building the
//! tokens with `pulp::simd_type!` gives us pulp's cached detection and its
//! `vectorize` for free, and covers the features pulp's own `V3`/`V4` lack
//! (F16C, AVX512_BF16).

pub(crate) mod amx;
pub(crate) mod avx2;
pub(crate) mod avx512;
pub(crate) mod avx512bf16;

pulp::simd_type! {
    /// AVX2 + FMA + F16C: every x86-64 CPU since Haswell / Zen 1.
    pub struct Avx2 {
        pub avx: "avx",
        pub avx2: "avx2",
        pub fma: "fma",
        pub f16c: "f16c",
    }

    /// [`Avx2`] plus AVX-512 F/BW/VL/DQ (Skylake-SP, Ice Lake, Zen 4+).
    pub struct Avx512 {
        pub avx: "avx",
        pub avx2: "avx2",
        pub fma: "fma",
        pub f16c: "f16c",
        pub avx512f: "avx512f",
        pub avx512bw: "avx512bw",
        pub avx512vl: "avx512vl",
        pub avx512dq: "avx512dq",
    }

    /// [`Avx512`] plus AVX512_BF16 (Cooper Lake, Sapphire Rapids+, Zen 4+).
    pub struct Avx512Bf16 {
        pub avx: "avx",
        pub avx2: "avx2",
        pub fma: "fma",
        pub f16c: "f16c",
        pub avx512f: "avx512f",
        pub avx512bw: "avx512bw",
        pub avx512vl: "avx512vl",
        pub avx512dq: "avx512dq",
        pub avx512bf16: "avx512bf16",
    }
}

/// Whether the CPU is AMD's (or Hygon's, the same cores): the kernel
/// choices that were measured to differ between AMD Zen 4 and Intel
/// Sapphire/Emerald Rapids ask this, once per process.
pub(crate) fn amd() -> bool {
    static AMD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AMD.get_or_init(|| {
        // CPUID leaf 0 exists on every x86-64 CPU.
        let v = core::arch::x86_64::__cpuid(0);
        let vendor = [
            v.ebx.to_le_bytes(),
            v.edx.to_le_bytes(),
            v.ecx.to_le_bytes(),
        ]
        .concat();
        vendor == b"AuthenticAMD" || vendor == b"HygonGenuine"
    })
}

impl Avx512 {
    /// Every AVX-512 CPU we target also proves AVX2 + FMA + F16C.
    #[allow(dead_code, reason = "for kernels where 8 lanes beat 16")]
    #[inline(always)]
    pub(crate) fn avx2(self) -> Avx2 {
        // SAFETY: `Avx512`'s feature set is a superset of `Avx2`'s.
        unsafe { Avx2::new_unchecked() }
    }
}

impl Avx512Bf16 {
    /// The AVX-512 base this token also proves.
    #[inline(always)]
    pub(crate) fn avx512(self) -> Avx512 {
        // SAFETY: `Avx512Bf16`'s feature set is a superset of `Avx512`'s.
        unsafe { Avx512::new_unchecked() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avx2_implements_f32simd() {
        if let Some(t) = Avx2::try_new() {
            crate::kernel::simd::tests::check(t);
        }
    }

    #[test]
    fn avx512_implements_f32simd() {
        if let Some(t) = Avx512::try_new() {
            crate::kernel::simd::tests::check(t);
        }
    }
}
