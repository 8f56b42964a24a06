//! The private SIMD vocabulary every vectorised kernel is written in.
//!
//! # Why a trait
//!
//! Each algorithm (a conversion, an unscale-and-check pass, an optimizer
//! update, a packing routine) is written **once**, generic over
//! [`F32Simd`], and instantiated per ISA. An ISA contributes only a thin
//! shim that implements the trait with its intrinsics (`arch::x86_64::avx2`
//! 8 lanes, `arch::x86_64::avx512` 16 lanes, `arch::aarch64::neon` 4
//! lanes). ISAs that add nothing for an operation reuse the lower shim
//! through their token's accessor (`Avx512Bf16::avx512()`,
//! `NeonBf16::neon()`, `Amx::avx512bf16()`). The scalar ISA does not
//! implement the trait: it runs the oracle loops in `arch::scalar`, which
//! are what every instantiation is tested against.
//!
//! The implementing types are the ISA tokens themselves. A token can only be
//! made after run-time detection succeeded, so every method takes `self`
//! and may use its ISA's intrinsics: the shims wrap each intrinsic call in
//! one `unsafe` block whose `// SAFETY:` line says so. Methods are
//! `#[inline(always)]`.
//!
//! # Entering target_feature code
//!
//! A generic kernel only becomes fast once it is inlined into a function
//! compiled with the ISA's features. Each operation is a [`SimdOp`] (one
//! struct beside its kernel in `arch::generic`), and each ISA module has
//! one private `#[target_feature(enable = "...")]` fn, `run_tf`, that
//! calls `op.simd(token)`, and a safe `run` that calls it in an `unsafe`
//! block justified by the token (see `arch::x86_64::avx512::run`).
//! Dispatch (`isa::Token::run`) matches on the token once and calls that
//! ISA's `run`; no other `unsafe` is needed above `arch`.
//!
//! # Tails
//!
//! [`for_each_chunk!`] walks `0..len` in [`Chunk`]s of `LANES` elements and
//! hands the last, shorter one (if any) to the same closure. A [`Chunk`]
//! loads and stores through [`Io`], choosing the full-vector method or the
//! `*_tail` method. The tail methods never touch memory outside the slice
//! they are given:
//!
//! - AVX-512 uses masked loads/stores (`vmovups`/`vmovdqu16` with a `k`
//!   mask); masked-off lanes are neither read nor written and cannot fault.
//! - AVX2 and NEON copy the `len < LANES` elements through a stack buffer of
//!   one vector (safe code around the full-vector load/store). That costs a
//!   store-forwarding stall once per call, which is negligible, and unlike an
//!   overlapping final vector it is also right for in-place kernels.
//!
//! Tail loads fill the missing lanes with zero (bit pattern 0).
//!
//! # Keep everything inlined
//!
//! The shims' intrinsics are only inlined where the surrounding function has
//! the ISA's target features. So everything between the `#[target_feature]`
//! entry point and the trait methods must be `#[inline(always)]`: no
//! closures and no function values (`S::narrow_f16_sr` passed as an
//! argument): LLVM may keep those out of line, and then each intrinsic in
//! them becomes a call, far slower (docs/tried.md). Dispatch through
//! traits ([`Io`], [`Half`]) and the [`for_each_chunk!`] macro instead.
//!
//! Inside the full-vector loop `chunk.len == LANES` is a constant after
//! inlining, so the branch between full and tail disappears.
//!
//! # Numerics of the shared operations
//!
//! - `min`/`max` with a NaN operand return an unspecified one of the
//!   operands (x86 returns the second, NEON a NaN): kernels that must
//!   propagate NaN test [`F32Simd::nonfinite`] themselves.
//! - [`F32Simd::reduce_sum`] adds the lanes in f32 (a tree); for long sums,
//!   accumulate a bounded number of vectors per lane in f32 (say up to 64,
//!   with two to four independent accumulators) and fold each block into an
//!   [`F32Simd::Acc`] with [`F32Simd::acc_add`], which widens to f64. A
//!   16M-element sum of squares then stays far inside 1e-6 relative error.
//! - Conversions (`*_bf16`, `*_f16`) are bit-identical to
//!   `kernel::bits`, hence to `half`, for every input (the
//!   exhaustive tests in tests/convert.rs run every implementation).

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

/// One elementwise operation (a conversion, a gradient check, an optimizer
/// update), written once: [`SimdOp::scalar`] runs the oracle, and
/// [`SimdOp::simd`] the kernel over any ISA's [`F32Simd`]. Dispatch
/// (`isa::Token::run`) matches the ISA once and enters the operation
/// through that ISA's single `#[target_feature]` function (`run` in its
/// module), inside which `simd` is inlined with everything it calls. So an
/// operation is one struct and one impl beside its kernel in
/// `arch::generic`, and an ISA is one entry function, whatever the number
/// of operations.
pub(crate) trait SimdOp {
    /// What the operation returns.
    type Output;
    /// Whether the operation needs IEEE subnormals (`fp_env`): float
    /// arithmetic does, the conversions and the inf/NaN count do not.
    const IEEE: bool;
    /// On the scalar ISA: the oracle loops of `arch::scalar`.
    fn scalar(self) -> Self::Output;
    /// On a SIMD ISA. Must be `#[inline(always)]` (see "Keep everything
    /// inlined" above).
    fn simd<S: F32Simd>(self, s: S) -> Self::Output;
}

/// f32 vectors of `LANES` lanes, with the u32 view, masks and storage
/// conversions the kernels need. See the module docs.
///
/// Integer lanes are `u32`; arithmetic on them wraps. Shift counts of 32 or
/// more give 0 (also for the per-lane `*v` shifts).
#[allow(
    dead_code,
    reason = "the shared vocabulary of every kernel; which methods a build \
              uses depends on which kernels have landed"
)]
pub(crate) trait F32Simd: Copy + Send + Sync + 'static {
    /// Number of f32 lanes.
    const LANES: usize;
    /// Whether slice conversions walk two vectors per step through the
    /// `*_x2` methods (AVX2, whose pairs share one store or load) rather
    /// than one (the default: AVX-512's conversions were slower in pairs
    /// of single-vector steps, docs/tried.md).
    const CONVERT_PAIRS: bool = false;
    /// Vector registers the ISA has (16 ymm, 32 zmm, 32 NEON `q`): how
    /// many accumulators a register tile may keep.
    const REGISTERS: usize;

    /// The ISA's own pass for bf16 unscaled by a power of two: `x <- x *
    /// 2^d` (`-126 <= d <= 0`) for whole blocks of
    /// `arch::generic::pow2::POW2_BLOCK` bf16, with their statistics (see
    /// `arch::generic::pow2`). The one place an ISA replaces a whole pass,
    /// because that pass works on 16-bit lanes, which this trait does not
    /// model. `None` (the default): the ISA has none; the generic pass runs.
    #[inline(always)]
    fn unscale_bf16_pow2(
        self,
        blocks: &mut [bf16],
        d: i32,
    ) -> Option<crate::kernel::stats::GradStats> {
        let _ = (blocks, d);
        None
    }

    /// `LANES` f32.
    type F: Copy;
    /// `LANES` u32 (the bits of an `F`, or integer work).
    type U: Copy;
    /// One boolean per lane.
    type M: Copy;
    /// An f64 accumulator for `LANES` f32 lanes (see [`F32Simd::acc_add`]).
    type Acc: Copy;

    // ---- f32 --------------------------------------------------------------

    /// Every lane `x`.
    fn splat(self, x: f32) -> Self::F;
    /// The first `LANES` elements of `src`.
    ///
    /// # Panics
    ///
    /// When `src.len() < LANES` (kernels only call it on full chunks, where
    /// the check folds away).
    fn load(self, src: &[f32]) -> Self::F;
    /// Writes the lanes to `dst[..LANES]`.
    ///
    /// # Panics
    ///
    /// When `dst.len() < LANES`.
    fn store(self, v: Self::F, dst: &mut [f32]);
    /// `src.len() <= LANES` elements, the other lanes 0.0.
    fn load_tail(self, src: &[f32]) -> Self::F;
    /// The first `dst.len() <= LANES` lanes into `dst`; nothing else is
    /// written.
    fn store_tail(self, v: Self::F, dst: &mut [f32]);

    /// `a + b`.
    fn add(self, a: Self::F, b: Self::F) -> Self::F;
    /// `a - b`.
    fn sub(self, a: Self::F, b: Self::F) -> Self::F;
    /// `a * b`.
    fn mul(self, a: Self::F, b: Self::F) -> Self::F;
    /// `a / b` (IEEE, correctly rounded).
    fn div(self, a: Self::F, b: Self::F) -> Self::F;
    /// `a * b + c` with one rounding.
    fn fma(self, a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    /// Lane-wise minimum (NaN: see the module docs).
    fn min(self, a: Self::F, b: Self::F) -> Self::F;
    /// Lane-wise maximum (NaN: see the module docs).
    fn max(self, a: Self::F, b: Self::F) -> Self::F;
    /// `|a|` (clears the sign bit, NaN included).
    fn abs(self, a: Self::F) -> Self::F;
    /// `-a` (flips the sign bit).
    fn neg(self, a: Self::F) -> Self::F;
    /// Correctly rounded square root.
    fn sqrt(self, a: Self::F) -> Self::F;
    /// `a < b` (false when either is NaN).
    fn lt(self, a: Self::F, b: Self::F) -> Self::M;
    /// `m ? a : b` per lane.
    fn select(self, m: Self::M, a: Self::F, b: Self::F) -> Self::F;
    /// The sum of the lanes, added in f32 as a tree.
    fn reduce_sum(self, v: Self::F) -> f32;

    /// An all-zero f64 accumulator.
    fn acc_zero(self) -> Self::Acc;
    /// `acc + v`, each lane widened exactly to f64 first.
    fn acc_add(self, acc: Self::Acc, v: Self::F) -> Self::Acc;
    /// The sum of an accumulator's lanes, in f64.
    fn acc_sum(self, acc: Self::Acc) -> f64;

    /// Lanes that are ±inf or NaN.
    fn nonfinite(self, v: Self::F) -> Self::M;
    /// Whether any lane of `m` is set.
    fn any(self, m: Self::M) -> bool;
    /// How many lanes of `m` are set.
    fn count(self, m: Self::M) -> u32;

    // ---- u32 --------------------------------------------------------------

    /// Every lane `x`.
    fn u_splat(self, x: u32) -> Self::U;
    /// Lane `i` holds `i`.
    fn iota(self) -> Self::U;
    /// The bits of `v`.
    fn to_bits(self, v: Self::F) -> Self::U;
    /// The f32 with bits `u`.
    fn bits_to_f(self, u: Self::U) -> Self::F;
    /// Wrapping `a + b`.
    fn u_add(self, a: Self::U, b: Self::U) -> Self::U;
    /// Wrapping `a - b`.
    fn u_sub(self, a: Self::U, b: Self::U) -> Self::U;
    /// Low 32 bits of `a * b`.
    fn u_mul(self, a: Self::U, b: Self::U) -> Self::U;
    /// `a & b`.
    fn u_and(self, a: Self::U, b: Self::U) -> Self::U;
    /// `a | b`.
    fn u_or(self, a: Self::U, b: Self::U) -> Self::U;
    /// `a ^ b`.
    fn u_xor(self, a: Self::U, b: Self::U) -> Self::U;
    /// `a >> n`, every lane by the same `n` (a constant `n` compiles to an
    /// immediate shift).
    fn u_shr(self, a: Self::U, n: u32) -> Self::U;
    /// `a << n`, every lane by the same `n`.
    fn u_shl(self, a: Self::U, n: u32) -> Self::U;
    /// `a >> n` lane by lane; `n >= 32` gives 0.
    fn u_shrv(self, a: Self::U, n: Self::U) -> Self::U;
    /// `a << n` lane by lane; `n >= 32` gives 0.
    fn u_shlv(self, a: Self::U, n: Self::U) -> Self::U;
    /// `a > b`, unsigned.
    fn u_gt(self, a: Self::U, b: Self::U) -> Self::M;
    /// `a > b` for lanes below 2^31 (an absolute value's bits, a
    /// constant): the same as [`F32Simd::u_gt`] there, and one signed
    /// compare on ISAs that have no unsigned one (AVX2), where `u_gt`
    /// takes three instructions.
    #[inline(always)]
    fn u_gt_small(self, a: Self::U, b: Self::U) -> Self::M {
        self.u_gt(a, b)
    }
    /// `a == b`.
    fn u_eq(self, a: Self::U, b: Self::U) -> Self::M;
    /// `m ? a : b` per lane.
    fn u_select(self, m: Self::M, a: Self::U, b: Self::U) -> Self::U;

    // ---- 16-bit storage ---------------------------------------------------

    /// `src[..LANES]`, zero-extended to u32 lanes.
    ///
    /// # Panics
    ///
    /// When `src.len() < LANES`.
    fn load_u16(self, src: &[u16]) -> Self::U;
    /// `src.len() <= LANES` elements, zero-extended; other lanes 0.
    fn load_u16_tail(self, src: &[u16]) -> Self::U;
    /// The low 16 bits of each lane into `dst[..LANES]`. Lanes must be
    /// `< 2^16` (others store an unspecified value).
    ///
    /// # Panics
    ///
    /// When `dst.len() < LANES`.
    fn store_u16(self, v: Self::U, dst: &mut [u16]);
    /// The first `dst.len() <= LANES` lanes, as in [`F32Simd::store_u16`].
    fn store_u16_tail(self, v: Self::U, dst: &mut [u16]);

    // ---- half precision (integer defaults, overridden where hardware is exact)

    /// bf16 bits (in the low 16 bits of each lane) to f32, exactly; a
    /// signalling NaN comes back quiet, as `half` does it.
    #[inline(always)]
    fn widen_bf16(self, h: Self::U) -> Self::F {
        let abs = self.u_and(h, self.u_splat(0x7FFF));
        let nan = self.u_gt_small(abs, self.u_splat(0x7F80));
        let quiet = self.u_or(h, self.u_splat(0x0040));
        self.bits_to_f(self.u_shl(self.u_select(nan, quiet, h), 16))
    }

    /// f32 to bf16 bits, round to nearest even, NaN quiet; bit-identical to
    /// `kernel::bits::f32_to_bf16_bits`.
    #[inline(always)]
    fn narrow_bf16(self, v: Self::F) -> Self::U {
        let x = self.to_bits(v);
        let abs = self.u_and(x, self.u_splat(0x7FFF_FFFF));
        let nan = self.u_gt_small(abs, self.u_splat(0x7F80_0000));
        let hi = self.u_shr(x, 16);
        let lsb = self.u_and(hi, self.u_splat(1));
        let rounded = self.u_shr(self.u_add(x, self.u_add(lsb, self.u_splat(0x7FFF))), 16);
        self.u_select(nan, self.u_or(hi, self.u_splat(0x0040)), rounded)
    }

    /// Stochastic f32 to bf16 bits with random bits `r`; bit-identical to
    /// `kernel::bits::f32_to_bf16_sr_bits`.
    #[inline(always)]
    fn narrow_bf16_sr(self, v: Self::F, r: Self::U) -> Self::U {
        let x = self.to_bits(v);
        let abs = self.u_and(x, self.u_splat(0x7FFF_FFFF));
        let nan = self.u_gt_small(abs, self.u_splat(0x7F80_0000));
        let hi = self.u_shr(x, 16);
        // inf needs no case of its own: its low 16 bits are 0, so adding
        // fewer than 2^16 never carries.
        let rounded = self.u_shr(self.u_add(x, self.u_shr(r, 16)), 16);
        self.u_select(nan, self.u_or(hi, self.u_splat(0x0040)), rounded)
    }

    /// f16 bits (low 16 bits of each lane) to f32, exactly; NaN quiet with
    /// sign and payload kept.
    #[inline(always)]
    fn widen_f16(self, h: Self::U) -> Self::F {
        let abs = self.u_and(h, self.u_splat(0x7FFF));
        let sign = self.u_shl(self.u_and(h, self.u_splat(0x8000)), 16);
        let shifted = self.u_shl(abs, 13);
        // Normal: rebias the exponent by 127 - 15.
        let normal = self.u_add(shifted, self.u_splat(112 << 23));
        // inf/NaN: exponent all ones, NaN quieted.
        let nan = self.u_gt_small(abs, self.u_splat(0x7C00));
        let special = self.u_or(shifted, self.u_splat(0x7F80_0000));
        let special = self.u_select(nan, self.u_or(special, self.u_splat(0x0040_0000)), special);
        // Subnormal (and zero): man * 2^-24 = (0.5 + man * 2^-24) - 0.5, exact.
        let magic = self.bits_to_f(self.u_add(abs, self.u_splat(0x3F00_0000)));
        let sub = self.to_bits(self.sub(magic, self.splat(0.5)));
        let is_special = self.u_gt_small(abs, self.u_splat(0x7BFF));
        let is_normal = self.u_gt_small(abs, self.u_splat(0x03FF));
        let r = self.u_select(is_normal, normal, sub);
        let r = self.u_select(is_special, special, r);
        self.bits_to_f(self.u_or(r, sign))
    }

    /// f32 to f16 bits, round to nearest even; bit-identical to
    /// `kernel::bits::f32_to_f16_bits`.
    #[inline(always)]
    fn narrow_f16(self, v: Self::F) -> Self::U {
        let x = self.to_bits(v);
        let abs = self.u_and(x, self.u_splat(0x7FFF_FFFF));
        let sign = self.u_shr(self.u_and(x, self.u_splat(0x8000_0000)), 16);
        // NaN: quiet, top 10 payload bits kept.
        let nan = self.u_gt_small(abs, self.u_splat(0x7F80_0000));
        let nan_bits = self.u_or(
            self.u_and(self.u_shr(abs, 13), self.u_splat(0x03FF)),
            self.u_splat(0x7E00),
        );
        // |x| >= 65536 (and inf): inf.
        let big = self.u_gt_small(abs, self.u_splat(0x477F_FFFF));
        // Normal: rebias, round the 13 dropped bits to nearest even (a
        // carry into exponent 31 gives inf, as it should).
        let rebased = self.u_sub(abs, self.u_splat(112 << 23));
        let lsb = self.u_and(self.u_shr(rebased, 13), self.u_splat(1));
        let normal = self.u_shr(
            self.u_add(rebased, self.u_add(lsb, self.u_splat(0x0FFF))),
            13,
        );
        // Subnormal: 0.5 + |x| rounds |x| to the 2^-24 grid in hardware
        // (round to nearest even, the default mode; no FTZ/DAZ).
        let sum = self.add(self.bits_to_f(abs), self.splat(0.5));
        let sub = self.u_sub(self.to_bits(sum), self.u_splat(0x3F00_0000));
        let is_normal = self.u_gt_small(abs, self.u_splat(0x387F_FFFF));
        let r = self.u_select(is_normal, normal, sub);
        let r = self.u_select(big, self.u_splat(0x7C00), r);
        let r = self.u_select(nan, nan_bits, r);
        self.u_or(r, sign)
    }

    /// Stochastic f32 to f16 bits with random bits `r`; bit-identical to
    /// `kernel::bits::f32_to_f16_sr_bits`.
    #[inline(always)]
    fn narrow_f16_sr(self, v: Self::F, r: Self::U) -> Self::U {
        let x = self.to_bits(v);
        let abs = self.u_and(x, self.u_splat(0x7FFF_FFFF));
        let sign = self.u_shr(self.u_and(x, self.u_splat(0x8000_0000)), 16);
        // Normal: 13 dropped bits; carry iff low13 + (r >> 19) >= 2^13.
        let rebased = self.u_sub(abs, self.u_splat(112 << 23));
        let normal = self.u_shr(self.u_add(rebased, self.u_shr(r, 19)), 13);
        // Subnormal: value = m * 2^-shift on the 2^-24 grid, shift >= 14.
        let biased = self.u_shr(abs, 23);
        let shift = self.u_sub(self.u_splat(126), biased);
        let implicit = self.u_gt_small(abs, self.u_splat(0x007F_FFFF));
        let m = self.u_select(
            implicit,
            self.u_or(
                self.u_and(abs, self.u_splat(0x007F_FFFF)),
                self.u_splat(0x0080_0000),
            ),
            abs,
        );
        let kept = self.u_shrv(m, shift);
        // The dropped part as a 0.32 fraction: one of the two shifts has a
        // count >= 32 (wrapped) and gives 0; at shift == 32 both give m.
        let frac = self.u_or(
            self.u_shlv(m, self.u_sub(self.u_splat(32), shift)),
            self.u_shrv(m, self.u_sub(shift, self.u_splat(32))),
        );
        let up = self.u_gt(r, self.u_xor(frac, self.u_splat(u32::MAX)));
        let sub = self.u_select(up, self.u_add(kept, self.u_splat(1)), kept);
        let is_normal = self.u_gt_small(abs, self.u_splat(0x387F_FFFF));
        let res = self.u_or(self.u_select(is_normal, normal, sub), sign);
        // inf/NaN as with nearest rounding; |x| >= 65536: inf.
        let special = self.u_gt_small(abs, self.u_splat(0x477F_FFFF));
        self.u_select(special, self.narrow_f16(v), res)
    }

    /// `kernel::bits::sr_bits(key, first + i)` in lane `i`.
    #[inline(always)]
    fn sr_bits(self, key: u32, first: u32) -> Self::U {
        let idx = self.u_add(self.u_splat(first), self.iota());
        let mut x = self.u_add(
            self.u_mul(idx, self.u_splat(0x9E37_79B9)),
            self.u_splat(key),
        );
        x = self.u_xor(x, self.u_shr(x, 16));
        x = self.u_mul(x, self.u_splat(0x7FEB_352D));
        x = self.u_xor(x, self.u_shr(x, 15));
        x = self.u_mul(x, self.u_splat(0x846C_A68B));
        self.u_xor(x, self.u_shr(x, 16))
    }

    /// `src[..LANES]` widened (see [`F32Simd::widen_f16`]).
    #[inline(always)]
    fn load_f16(self, src: &[f16]) -> Self::F {
        self.widen_f16(self.load_u16(src.reinterpret_cast()))
    }
    /// `src.len() < LANES` elements widened; other lanes 0.0.
    #[inline(always)]
    fn load_f16_tail(self, src: &[f16]) -> Self::F {
        self.widen_f16(self.load_u16_tail(src.reinterpret_cast()))
    }
    /// Rounds to nearest even into `dst[..LANES]`.
    #[inline(always)]
    fn store_f16(self, v: Self::F, dst: &mut [f16]) {
        self.store_u16(self.narrow_f16(v), dst.reinterpret_cast_mut())
    }
    /// Rounds the first `dst.len() < LANES` lanes into `dst`.
    #[inline(always)]
    fn store_f16_tail(self, v: Self::F, dst: &mut [f16]) {
        self.store_u16_tail(self.narrow_f16(v), dst.reinterpret_cast_mut())
    }
    /// `src[..LANES]` widened (see [`F32Simd::widen_bf16`]).
    #[inline(always)]
    fn load_bf16(self, src: &[bf16]) -> Self::F {
        self.widen_bf16(self.load_u16(src.reinterpret_cast()))
    }
    /// `src.len() < LANES` elements widened; other lanes 0.0.
    #[inline(always)]
    fn load_bf16_tail(self, src: &[bf16]) -> Self::F {
        self.widen_bf16(self.load_u16_tail(src.reinterpret_cast()))
    }
    /// Rounds to nearest even into `dst[..LANES]`.
    #[inline(always)]
    fn store_bf16(self, v: Self::F, dst: &mut [bf16]) {
        self.store_u16(self.narrow_bf16(v), dst.reinterpret_cast_mut())
    }
    /// Like [`F32Simd::store`], but a non-temporal (streaming) store where
    /// the ISA has one: it bypasses the caches, which pays for outputs much
    /// larger than the last-level cache share. `dst` must start on a
    /// multiple of `LANES * 4` bytes (see [`stream_head`]); call
    /// [`F32Simd::stream_fence`] after the last one.
    ///
    /// # Panics
    ///
    /// When `dst.len() < LANES`, or (where it streams) when `dst` is not
    /// aligned.
    #[inline(always)]
    fn stream(self, v: Self::F, dst: &mut [f32]) {
        self.store(v, dst)
    }
    /// [`F32Simd::store_bf16`], streaming; `dst` aligned to `LANES * 2`.
    #[inline(always)]
    fn stream_bf16(self, v: Self::F, dst: &mut [bf16]) {
        self.store_bf16(v, dst)
    }
    /// [`F32Simd::store_f16`], streaming; `dst` aligned to `LANES * 2`.
    #[inline(always)]
    fn stream_f16(self, v: Self::F, dst: &mut [f16]) {
        self.store_f16(v, dst)
    }
    /// Orders earlier streaming stores before later stores (`sfence`).
    #[inline(always)]
    fn stream_fence(self) {}
    /// Asks for the 64-byte line at `p` in L2 (`prefetcht2`); none by
    /// default. `p` need not point into an allocation: a prefetch never
    /// faults.
    #[inline(always)]
    fn prefetch_l2(self, _p: *const u8) {}

    // ---- two vectors per step (the conversions' main loop) -----------------
    //
    // The defaults are two calls of the one-vector method. An ISA overrides
    // one where a pair is cheaper than two singles: AVX2 narrows 8 lanes to
    // 8 u16, half a register, so two vectors pack into one full store, and
    // it widens 16 bf16 from one full load.

    /// `src[..2 * LANES]` as two vectors.
    ///
    /// # Panics
    ///
    /// When `src.len() < 2 * LANES`.
    #[inline(always)]
    fn load_x2(self, src: &[f32]) -> (Self::F, Self::F) {
        let src = &src[..2 * Self::LANES];
        (self.load(src), self.load(&src[Self::LANES..]))
    }
    /// `a` then `b` into `dst[..2 * LANES]`.
    ///
    /// # Panics
    ///
    /// When `dst.len() < 2 * LANES`.
    #[inline(always)]
    fn store_x2(self, a: Self::F, b: Self::F, dst: &mut [f32]) {
        let (lo, hi) = dst[..2 * Self::LANES].split_at_mut(Self::LANES);
        self.store(a, lo);
        self.store(b, hi);
    }
    /// `src[..2 * LANES]` widened (see [`F32Simd::widen_bf16`]).
    #[inline(always)]
    fn load_bf16_x2(self, src: &[bf16]) -> (Self::F, Self::F) {
        let src = &src[..2 * Self::LANES];
        (self.load_bf16(src), self.load_bf16(&src[Self::LANES..]))
    }
    /// `a` then `b` rounded to nearest even into `dst[..2 * LANES]`.
    #[inline(always)]
    fn store_bf16_x2(self, a: Self::F, b: Self::F, dst: &mut [bf16]) {
        let (lo, hi) = dst[..2 * Self::LANES].split_at_mut(Self::LANES);
        self.store_bf16(a, lo);
        self.store_bf16(b, hi);
    }
    /// `src[..2 * LANES]` widened (see [`F32Simd::widen_f16`]).
    #[inline(always)]
    fn load_f16_x2(self, src: &[f16]) -> (Self::F, Self::F) {
        let src = &src[..2 * Self::LANES];
        (self.load_f16(src), self.load_f16(&src[Self::LANES..]))
    }
    /// `a` then `b` rounded to nearest even into `dst[..2 * LANES]`.
    #[inline(always)]
    fn store_f16_x2(self, a: Self::F, b: Self::F, dst: &mut [f16]) {
        let (lo, hi) = dst[..2 * Self::LANES].split_at_mut(Self::LANES);
        self.store_f16(a, lo);
        self.store_f16(b, hi);
    }

    /// Rounds the first `dst.len() < LANES` lanes into `dst`.
    #[inline(always)]
    fn store_bf16_tail(self, v: Self::F, dst: &mut [bf16]) {
        self.store_u16_tail(self.narrow_bf16(v), dst.reinterpret_cast_mut())
    }
}

pub(crate) use super::chunk::{Chunk, Half, Io, for_each_chunk, stream_head};

/// Every method of an implementation against plain Rust, at every tail
/// length. The conversions are checked exhaustively in tests/convert.rs.
#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::kernel::bits as oracle;

    fn lanes<S: F32Simd>(s: S, v: S::F) -> Vec<f32> {
        let mut out = vec![0f32; S::LANES];
        s.store(v, &mut out);
        out
    }

    fn ulanes<S: F32Simd>(s: S, v: S::U) -> Vec<u32> {
        lanes(s, s.bits_to_f(v))
            .into_iter()
            .map(f32::to_bits)
            .collect()
    }

    fn mask<S: F32Simd>(s: S, m: S::M) -> Vec<bool> {
        let ones = s.u_select(m, s.u_splat(1), s.u_splat(0));
        ulanes(s, ones).into_iter().map(|x| x == 1).collect()
    }

    /// Checks `s` against scalar Rust on a few hundred inputs.
    pub(crate) fn check<S: F32Simd>(s: S) {
        let n = S::LANES;
        let mut state = 0x1234_5678u32;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        };
        for round in 0..64 {
            let a: Vec<f32> = (0..n)
                .map(|i| ((next() >> 8) as f32 / 65536.0 - 128.0) * (i + 1) as f32)
                .collect();
            let b: Vec<f32> = (0..n)
                .map(|_| (next() >> 8) as f32 / 4096.0 + 0.5)
                .collect();
            let c: Vec<f32> = (0..n).map(|_| next() as f32 / 1e9).collect();
            let (va, vb, vc) = (s.load(&a), s.load(&b), s.load(&c));
            type Op = fn(f32, f32) -> f32;
            let ops: [(Vec<f32>, Op); 6] = [
                (lanes(s, s.add(va, vb)), |x, y| x + y),
                (lanes(s, s.sub(va, vb)), |x, y| x - y),
                (lanes(s, s.mul(va, vb)), |x, y| x * y),
                (lanes(s, s.div(va, vb)), |x, y| x / y),
                (lanes(s, s.min(va, vb)), f32::min),
                (lanes(s, s.max(va, vb)), f32::max),
            ];
            for (k, (got, op)) in ops.iter().enumerate() {
                for i in 0..n {
                    assert_eq!(got[i].to_bits(), op(a[i], b[i]).to_bits(), "op {k}");
                }
            }
            let fma = lanes(s, s.fma(va, vb, vc));
            let abs = lanes(s, s.abs(va));
            let neg = lanes(s, s.neg(va));
            let sqrt = lanes(s, s.sqrt(vb));
            let lt = mask(s, s.lt(va, vb));
            let sel = lanes(s, s.select(s.lt(va, vb), va, vc));
            for i in 0..n {
                assert_eq!(fma[i], a[i].mul_add(b[i], c[i]));
                assert_eq!(abs[i], a[i].abs());
                assert_eq!(neg[i].to_bits(), (-a[i]).to_bits());
                assert_eq!(sqrt[i], b[i].sqrt());
                assert_eq!(lt[i], a[i] < b[i]);
                assert_eq!(sel[i], if a[i] < b[i] { a[i] } else { c[i] });
            }
            let exact: f64 = a.iter().map(|&x| x as f64).sum();
            let sum = s.reduce_sum(va) as f64;
            assert!((sum - exact).abs() <= 1e-6 * a.iter().map(|x| x.abs() as f64).sum::<f64>());
            let acc = s.acc_add(s.acc_add(s.acc_zero(), va), vb);
            let want: f64 = a.iter().chain(&b).map(|&x| x as f64).sum();
            assert!((s.acc_sum(acc) - want).abs() <= 1e-12 * want.abs().max(1.0));

            // Integer lanes.
            let x: Vec<u32> = (0..n).map(|_| next()).collect();
            let y: Vec<u32> = (0..n).map(|_| next() >> (round % 33).min(31)).collect();
            let ux = s.to_bits(s.load(&x.iter().map(|&v| f32::from_bits(v)).collect::<Vec<_>>()));
            let uy = s.to_bits(s.load(&y.iter().map(|&v| f32::from_bits(v)).collect::<Vec<_>>()));
            type UOp = fn(u32, u32) -> u32;
            let uops: [(Vec<u32>, UOp); 6] = [
                (ulanes(s, s.u_add(ux, uy)), u32::wrapping_add),
                (ulanes(s, s.u_sub(ux, uy)), u32::wrapping_sub),
                (ulanes(s, s.u_mul(ux, uy)), u32::wrapping_mul),
                (ulanes(s, s.u_and(ux, uy)), |p, q| p & q),
                (ulanes(s, s.u_or(ux, uy)), |p, q| p | q),
                (ulanes(s, s.u_xor(ux, uy)), |p, q| p ^ q),
            ];
            for (k, (got, op)) in uops.iter().enumerate() {
                for i in 0..n {
                    assert_eq!(got[i], op(x[i], y[i]), "u op {k}");
                }
            }
            let sh = (round % 32) as u32;
            let counts: Vec<u32> = (0..n).map(|_| next() % 40).collect();
            let uc = s.to_bits(
                s.load(
                    &counts
                        .iter()
                        .map(|&v| f32::from_bits(v))
                        .collect::<Vec<_>>(),
                ),
            );
            let (shr, shl) = (ulanes(s, s.u_shr(ux, sh)), ulanes(s, s.u_shl(ux, sh)));
            let (shrv, shlv) = (ulanes(s, s.u_shrv(ux, uc)), ulanes(s, s.u_shlv(ux, uc)));
            let (gt, eq) = (mask(s, s.u_gt(ux, uy)), mask(s, s.u_eq(ux, ux)));
            let usel = ulanes(s, s.u_select(s.u_gt(ux, uy), ux, uy));
            for i in 0..n {
                assert_eq!(shr[i], x[i] >> sh);
                assert_eq!(shl[i], x[i] << sh);
                assert_eq!(shrv[i], x[i].checked_shr(counts[i]).unwrap_or(0));
                assert_eq!(shlv[i], x[i].checked_shl(counts[i]).unwrap_or(0));
                assert_eq!(gt[i], x[i] > y[i]);
                assert!(eq[i]);
                assert_eq!(usel[i], x[i].max(y[i]));
            }
            let key = next();
            let bits = ulanes(s, s.sr_bits(key, x[0]));
            for (i, got) in bits.iter().enumerate() {
                assert_eq!(*got, oracle::sr_bits(key, x[0].wrapping_add(i as u32)));
            }
        }
        let iota = ulanes(s, s.iota());
        assert_eq!(iota, (0..n as u32).collect::<Vec<_>>());
        let special = [f32::INFINITY, f32::NAN, -f32::INFINITY, 1.0, f32::MAX, -0.0];
        let v: Vec<f32> = (0..n).map(|i| special[i % special.len()]).collect();
        let m = s.nonfinite(s.load(&v));
        let want = v.iter().filter(|x| !x.is_finite()).count() as u32;
        assert_eq!(s.count(m), want);
        assert!(s.any(m));
        assert!(!s.any(s.nonfinite(s.splat(f32::MAX))));

        // Tails: exactly `len` lanes read and written, the rest zero.
        for len in 0..n {
            let src: Vec<f32> = (1..=len).map(|i| i as f32).collect();
            let v = lanes(s, s.load_tail(&src));
            assert_eq!(&v[..len], &src[..]);
            assert!(v[len..].iter().all(|&x| x.to_bits() == 0));
            let mut buf = vec![-7.0f32; len + 2];
            s.store_tail(s.splat(3.0), &mut buf[1..len + 1]);
            assert!(buf[1..len + 1].iter().all(|&x| x == 3.0));
            assert!(buf[0] == -7.0 && buf[len + 1] == -7.0);
            let src16: Vec<u16> = (1..=len as u16).collect();
            let u = ulanes(s, s.load_u16_tail(&src16));
            assert!(u[..len].iter().zip(&src16).all(|(&a, &b)| a == b as u32));
            assert!(u[len..].iter().all(|&x| x == 0));
            let mut buf = vec![0xAAAAu16; len + 2];
            s.store_u16_tail(s.u_splat(0x1234), &mut buf[1..len + 1]);
            assert!(buf[1..len + 1].iter().all(|&x| x == 0x1234));
            assert!(buf[0] == 0xAAAA && buf[len + 1] == 0xAAAA);
        }

        // The integer half-precision paths against the oracle on a sweep
        // (the overridden F16C paths are covered by tests/convert.rs; these
        // defaults are what NEON and the stochastic kernels use).
        for h in (0..=u16::MAX).step_by(n) {
            let hs: Vec<u16> = (0..n as u16).map(|i| h.wrapping_add(i)).collect();
            let u = s.load_u16(&hs);
            let (wb, wh) = (lanes(s, s.widen_bf16(u)), lanes(s, s.widen_f16(u)));
            for i in 0..n {
                assert_eq!(wb[i].to_bits(), oracle::bf16_to_f32_bits(hs[i]));
                assert_eq!(
                    wh[i].to_bits(),
                    oracle::f16_to_f32_bits(hs[i]),
                    "{:#x}",
                    hs[i]
                );
            }
        }
        let step = if cfg!(miri) { 1 << 24 } else { 4099 };
        for x in (0..=u32::MAX).step_by(step * n) {
            let xs: Vec<f32> = (0..n as u32)
                .map(|i| f32::from_bits(x.wrapping_add(i * 977)))
                .collect();
            let v = s.load(&xs);
            let r = s.u_splat(x.rotate_left(7));
            let (nb, nh) = (ulanes(s, s.narrow_bf16(v)), ulanes(s, s.narrow_f16(v)));
            let (sb, sh) = (
                ulanes(s, s.narrow_bf16_sr(v, r)),
                ulanes(s, s.narrow_f16_sr(v, r)),
            );
            for i in 0..n {
                let b = xs[i].to_bits();
                let rr = x.rotate_left(7);
                assert_eq!(nb[i], oracle::f32_to_bf16_bits(b) as u32, "{b:#x}");
                assert_eq!(nh[i], oracle::f32_to_f16_bits(b) as u32, "{b:#x}");
                assert_eq!(sb[i], oracle::f32_to_bf16_sr_bits(b, rr) as u32, "{b:#x}");
                assert_eq!(sh[i], oracle::f32_to_f16_sr_bits(b, rr) as u32, "{b:#x}");
            }
        }
    }
}
