//! [`F32Simd`] for [`Avx2`]: 8 f32 lanes in a `__m256`; F16C for f16.
//!
//! Tails go through a one-vector stack buffer (AVX2 has no 16-bit masked
//! loads, and `vmaskmovps` is slower than the copy on some cores).

use core::arch::x86_64::*;

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

use crate::arch::x86_64::Avx2;
use crate::kernel::simd::F32Simd;

/// Calls value intrinsics inside a method of `impl F32Simd for Avx2`.
macro_rules! v {
    ($e:expr) => {{
        // Only used in methods taking an `Avx2` token by value; the
        // intrinsics here take and return values only.
        // SAFETY: the token proves AVX2 + FMA + F16C; no memory is touched.
        unsafe { $e }
    }};
}

impl F32Simd for Avx2 {
    const LANES: usize = 8;
    const REGISTERS: usize = 16;
    const CONVERT_PAIRS: bool = true;

    type F = __m256;
    type U = __m256i;
    type M = __m256i;
    type Acc = (__m256d, __m256d);

    #[inline(always)]
    fn unscale_bf16_pow2(
        self,
        blocks: &mut [half::bf16],
        d: i32,
    ) -> Option<crate::kernel::stats::GradStats> {
        // SAFETY: the token proves the features of the `#[target_feature]`
        // pass.
        Some(unsafe { super::finite::unscale_bf16_pow2(self, blocks, d) })
    }

    #[inline(always)]
    fn prefetch_l2(self, p: *const u8) {
        // SAFETY: a prefetch reads nothing and never faults, wherever `p`
        // points; SSE is proven by the token.
        unsafe { _mm_prefetch::<_MM_HINT_T2>(p.cast()) }
    }
    #[inline(always)]
    fn splat(self, x: f32) -> __m256 {
        v!(_mm256_set1_ps(x))
    }
    #[inline(always)]
    fn load(self, src: &[f32]) -> __m256 {
        let src = &src[..8];
        // SAFETY: `src` holds 8 f32 (checked above), all that is read;
        // AVX is proven by the token; `loadu` has no alignment requirement.
        unsafe { _mm256_loadu_ps(src.as_ptr()) }
    }
    #[inline(always)]
    fn store(self, v: __m256, dst: &mut [f32]) {
        let dst = &mut dst[..8];
        // SAFETY: `dst` holds 8 f32 (checked above), all that is written.
        unsafe { _mm256_storeu_ps(dst.as_mut_ptr(), v) }
    }
    #[inline(always)]
    fn load_tail(self, src: &[f32]) -> __m256 {
        let mut buf = [0f32; 8];
        buf[..src.len()].copy_from_slice(src);
        self.load(&buf)
    }
    #[inline(always)]
    fn store_tail(self, v: __m256, dst: &mut [f32]) {
        let mut buf = [0f32; 8];
        self.store(v, &mut buf);
        let n = dst.len();
        dst.copy_from_slice(&buf[..n]);
    }

    #[inline(always)]
    fn add(self, a: __m256, b: __m256) -> __m256 {
        v!(_mm256_add_ps(a, b))
    }
    #[inline(always)]
    fn sub(self, a: __m256, b: __m256) -> __m256 {
        v!(_mm256_sub_ps(a, b))
    }
    #[inline(always)]
    fn mul(self, a: __m256, b: __m256) -> __m256 {
        v!(_mm256_mul_ps(a, b))
    }
    #[inline(always)]
    fn div(self, a: __m256, b: __m256) -> __m256 {
        v!(_mm256_div_ps(a, b))
    }
    #[inline(always)]
    fn fma(self, a: __m256, b: __m256, c: __m256) -> __m256 {
        v!(_mm256_fmadd_ps(a, b, c))
    }
    #[inline(always)]
    fn min(self, a: __m256, b: __m256) -> __m256 {
        v!(_mm256_min_ps(a, b))
    }
    #[inline(always)]
    fn max(self, a: __m256, b: __m256) -> __m256 {
        v!(_mm256_max_ps(a, b))
    }
    #[inline(always)]
    fn abs(self, a: __m256) -> __m256 {
        v!(_mm256_and_ps(
            a,
            _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF))
        ))
    }
    #[inline(always)]
    fn neg(self, a: __m256) -> __m256 {
        v!(_mm256_xor_ps(a, _mm256_set1_ps(-0.0)))
    }
    #[inline(always)]
    fn sqrt(self, a: __m256) -> __m256 {
        v!(_mm256_sqrt_ps(a))
    }
    #[inline(always)]
    fn lt(self, a: __m256, b: __m256) -> __m256i {
        v!(_mm256_castps_si256(_mm256_cmp_ps::<_CMP_LT_OQ>(a, b)))
    }
    #[inline(always)]
    fn select(self, m: __m256i, a: __m256, b: __m256) -> __m256 {
        v!(_mm256_blendv_ps(b, a, _mm256_castsi256_ps(m)))
    }
    #[inline(always)]
    fn reduce_sum(self, v: __m256) -> f32 {
        v!({
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_movehdup_ps(s));
            _mm_cvtss_f32(s)
        })
    }

    #[inline(always)]
    fn acc_zero(self) -> (__m256d, __m256d) {
        v!((_mm256_setzero_pd(), _mm256_setzero_pd()))
    }
    #[inline(always)]
    fn acc_add(self, acc: (__m256d, __m256d), v: __m256) -> (__m256d, __m256d) {
        v!({
            let lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
            let hi = _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v));
            (_mm256_add_pd(acc.0, lo), _mm256_add_pd(acc.1, hi))
        })
    }
    #[inline(always)]
    fn acc_sum(self, acc: (__m256d, __m256d)) -> f64 {
        v!({
            let s = _mm256_add_pd(acc.0, acc.1);
            let s = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd::<1>(s));
            _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)))
        })
    }

    #[inline(always)]
    fn nonfinite(self, v: __m256) -> __m256i {
        let exp = self.u_splat(0x7F80_0000);
        self.u_eq(self.u_and(self.to_bits(v), exp), exp)
    }
    #[inline(always)]
    fn any(self, m: __m256i) -> bool {
        v!(_mm256_movemask_ps(_mm256_castsi256_ps(m))) != 0
    }
    #[inline(always)]
    fn count(self, m: __m256i) -> u32 {
        v!(_mm256_movemask_ps(_mm256_castsi256_ps(m))).count_ones()
    }

    #[inline(always)]
    fn u_splat(self, x: u32) -> __m256i {
        v!(_mm256_set1_epi32(x as i32))
    }
    #[inline(always)]
    fn iota(self) -> __m256i {
        v!(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
    }
    #[inline(always)]
    fn to_bits(self, v: __m256) -> __m256i {
        v!(_mm256_castps_si256(v))
    }
    #[inline(always)]
    fn bits_to_f(self, u: __m256i) -> __m256 {
        v!(_mm256_castsi256_ps(u))
    }
    #[inline(always)]
    fn u_add(self, a: __m256i, b: __m256i) -> __m256i {
        v!(_mm256_add_epi32(a, b))
    }
    #[inline(always)]
    fn u_sub(self, a: __m256i, b: __m256i) -> __m256i {
        v!(_mm256_sub_epi32(a, b))
    }
    #[inline(always)]
    fn u_mul(self, a: __m256i, b: __m256i) -> __m256i {
        v!(_mm256_mullo_epi32(a, b))
    }
    #[inline(always)]
    fn u_and(self, a: __m256i, b: __m256i) -> __m256i {
        v!(_mm256_and_si256(a, b))
    }
    #[inline(always)]
    fn u_or(self, a: __m256i, b: __m256i) -> __m256i {
        v!(_mm256_or_si256(a, b))
    }
    #[inline(always)]
    fn u_xor(self, a: __m256i, b: __m256i) -> __m256i {
        v!(_mm256_xor_si256(a, b))
    }
    #[inline(always)]
    fn u_shr(self, a: __m256i, n: u32) -> __m256i {
        v!(_mm256_srl_epi32(a, _mm_cvtsi32_si128(n as i32)))
    }
    #[inline(always)]
    fn u_shl(self, a: __m256i, n: u32) -> __m256i {
        v!(_mm256_sll_epi32(a, _mm_cvtsi32_si128(n as i32)))
    }
    #[inline(always)]
    fn u_shrv(self, a: __m256i, n: __m256i) -> __m256i {
        v!(_mm256_srlv_epi32(a, n))
    }
    #[inline(always)]
    fn u_shlv(self, a: __m256i, n: __m256i) -> __m256i {
        v!(_mm256_sllv_epi32(a, n))
    }
    #[inline(always)]
    fn u_gt(self, a: __m256i, b: __m256i) -> __m256i {
        // No unsigned compare: flip the sign bits and compare signed.
        let bias = self.u_splat(0x8000_0000);
        v!(_mm256_cmpgt_epi32(self.u_xor(a, bias), self.u_xor(b, bias)))
    }
    #[inline(always)]
    fn u_gt_small(self, a: __m256i, b: __m256i) -> __m256i {
        // Both below 2^31: the signed compare is the unsigned one.
        v!(_mm256_cmpgt_epi32(a, b))
    }
    #[inline(always)]
    fn u_eq(self, a: __m256i, b: __m256i) -> __m256i {
        v!(_mm256_cmpeq_epi32(a, b))
    }
    #[inline(always)]
    fn u_select(self, m: __m256i, a: __m256i, b: __m256i) -> __m256i {
        v!(_mm256_blendv_epi8(b, a, m))
    }

    #[inline(always)]
    fn load_u16(self, src: &[u16]) -> __m256i {
        let src = &src[..8];
        // SAFETY: `src` holds 8 u16 = 16 bytes (checked above), all that
        // is read; SSE2/AVX2 are proven by the token.
        unsafe { _mm256_cvtepu16_epi32(_mm_loadu_si128(src.as_ptr().cast())) }
    }
    #[inline(always)]
    fn load_u16_tail(self, src: &[u16]) -> __m256i {
        let mut buf = [0u16; 8];
        buf[..src.len()].copy_from_slice(src);
        self.load_u16(&buf)
    }
    #[inline(always)]
    fn store_u16(self, v: __m256i, dst: &mut [u16]) {
        store_8_u16(pack_u16(self, v), dst)
    }
    #[inline(always)]
    fn store_u16_tail(self, v: __m256i, dst: &mut [u16]) {
        let mut buf = [0u16; 8];
        self.store_u16(v, &mut buf);
        let n = dst.len();
        dst.copy_from_slice(&buf[..n]);
    }

    // f32 -> bf16 in eight ALU uops per 8 lanes, one of them a shift (the
    // generic form: nine, two shifts); see `round_bf16`. NaN
    // keeps its upper bits with the quiet bit set. The unordered compare
    // finds NaN in one uop; it only sets MXCSR's sticky invalid flag for a
    // signalling NaN (exceptions are masked), and subnormal modes do not
    // change which lanes are NaN.
    #[inline(always)]
    fn narrow_bf16(self, v: __m256) -> __m256i {
        v!({
            let up = round_bf16(self, v);
            let nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
            let quiet = _mm256_or_si256(_mm256_castps_si256(v), _mm256_set1_epi32(0x0040_0000));
            _mm256_srli_epi32::<16>(_mm256_blendv_epi8(up, quiet, nan))
        })
    }

    // Pairs (see `F32Simd::store_bf16_x2`): one `vpackusdw` and one
    // `vpermq` turn two vectors of results into one 32-byte store, and 16
    // bf16 widen from one 32-byte load, their NaNs quieted on the 16-bit
    // lanes (one compare for 16 values). A pair without NaN, nearly every
    // pair of real data, skips the NaN fix-up (one compare tests both
    // vectors): the loop is bound by its uop count, and the fix-up is
    // three of eight uops per vector.
    #[inline(always)]
    fn store_bf16_x2(self, a: __m256, b: __m256, dst: &mut [bf16]) {
        let nan = v!(_mm256_cmp_ps::<_CMP_UNORD_Q>(a, b));
        // SAFETY: the token proves AVX.
        let any_nan = unsafe { movmsk_ps(nan) } != 0;
        let (a, b) = if any_nan {
            (self.narrow_bf16(a), self.narrow_bf16(b))
        } else {
            v!((
                _mm256_srli_epi32::<16>(round_bf16(self, a)),
                _mm256_srli_epi32::<16>(round_bf16(self, b))
            ))
        };
        store_16_u16(self, pack_u16_x2(self, a, b), dst.reinterpret_cast_mut())
    }
    #[inline(always)]
    fn load_bf16_x2(self, src: &[bf16]) -> (__m256, __m256) {
        let src: &[u16] = &src.reinterpret_cast()[..16];
        // SAFETY: `src` holds 16 u16 = 32 bytes (checked above), all that
        // is read; AVX is proven by the token.
        let h = unsafe { _mm256_loadu_si256(src.as_ptr().cast()) };
        v!({
            let abs = _mm256_and_si256(h, _mm256_set1_epi16(0x7FFF));
            let nan = _mm256_cmpgt_epi16(abs, _mm256_set1_epi16(0x7F80));
            let quiet = _mm256_and_si256(nan, _mm256_set1_epi16(0x0040));
            // Quadwords 0, 2, 1, 3: the low halves of the two 128-bit
            // lanes hold elements 0-7, the high halves 8-15, and
            // interleaving zeros below them (per 128-bit lane) widens each
            // to the upper half of an f32 lane.
            let h = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_or_si256(h, quiet));
            let z = _mm256_setzero_si256();
            (
                _mm256_castsi256_ps(_mm256_unpacklo_epi16(z, h)),
                _mm256_castsi256_ps(_mm256_unpackhi_epi16(z, h)),
            )
        })
    }
    // `vcvtps2ph` into a register, then one 32-byte store: LLVM folds the
    // intrinsic's result into `vcvtps2ph` to memory, clearly slower than
    // the register form on Zen 4 (docs/tried.md; hence `cvtps_ph_reg`).
    #[inline(always)]
    fn store_f16_x2(self, a: __m256, b: __m256, dst: &mut [f16]) {
        // SAFETY: the token proves AVX and F16C.
        let (a, b) = unsafe { (cvtps_ph_reg(a), cvtps_ph_reg(b)) };
        let h = v!(_mm256_set_m128i(b, a));
        store_16_u16(self, h, dst.reinterpret_cast_mut())
    }

    // F16C converts f16 exactly as `half` does (NaN quieted, payload kept;
    // subnormals kept since Rust never sets MXCSR's FTZ/DAZ): proven by the
    // exhaustive tests.
    #[inline(always)]
    fn load_f16(self, src: &[f16]) -> __m256 {
        let src: &[u16] = &src.reinterpret_cast()[..8];
        // SAFETY: `src` holds 8 u16 = 16 bytes (checked above), all that
        // is read; F16C is proven by the token.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(src.as_ptr().cast())) }
    }
    #[inline(always)]
    fn load_f16_tail(self, src: &[f16]) -> __m256 {
        let mut buf = [f16::ZERO; 8];
        buf[..src.len()].copy_from_slice(src);
        self.load_f16(&buf)
    }
    #[inline(always)]
    fn store_f16(self, v: __m256, dst: &mut [f16]) {
        let h = v!(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v));
        store_8_u16(h, dst.reinterpret_cast_mut())
    }
    #[inline(always)]
    fn store_f16_tail(self, v: __m256, dst: &mut [f16]) {
        let mut buf = [f16::ZERO; 8];
        self.store_f16(v, &mut buf);
        let n = dst.len();
        dst.copy_from_slice(&buf[..n]);
    }
}

/// Packs 8 u32 lanes (each `< 2^16`) into 8 u16.
#[inline(always)]
fn pack_u16(_: Avx2, v: __m256i) -> __m128i {
    // SAFETY: the token proves AVX2; value intrinsics, no memory access. `packus` saturates, which is
    // the identity on lanes below 2^16.
    unsafe { _mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v)) }
}

/// `v`'s bits rounded to nearest even at bit 16 (the bf16 is the upper 16
/// bits; not for NaN): `x + 0x8000`, minus one where the kept part is even
/// (bit 16 clear), is `x + 0x7FFF + lsb`, the carry of
/// `f32_to_bf16_bits`, in four ALU uops and no shift.
#[inline(always)]
fn round_bf16(_: Avx2, v: __m256) -> __m256i {
    // SAFETY: the token proves AVX2; value intrinsics, no memory access.
    unsafe {
        let x = _mm256_castps_si256(v);
        let kept_lsb = _mm256_and_si256(x, _mm256_set1_epi32(0x1_0000));
        let even = _mm256_cmpeq_epi32(kept_lsb, _mm256_setzero_si256());
        _mm256_add_epi32(_mm256_add_epi32(x, _mm256_set1_epi32(0x8000)), even)
    }
}

/// `vcvtps2ph` (nearest even) into a register, which LLVM cannot fold into
/// a store (see `store_f16_x2`).
#[inline]
#[target_feature(enable = "avx,f16c")]
fn cvtps_ph_reg(v: __m256) -> __m128i {
    let h: __m128i;
    // SAFETY: F16C is enabled on this function; the instruction reads and
    // writes registers only (rounding by its immediate, not MXCSR).
    unsafe {
        core::arch::asm!(
            "vcvtps2ph {h}, {v}, 0",
            h = lateout(xmm_reg) h,
            v = in(ymm_reg) v,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    h
}

/// `vmovmskps`: the sign bits of `m`'s lanes. LLVM compiles
/// `_mm256_movemask_ps(m) != 0` to `vtestps`, which slowed the f32 ->
/// bf16 loop (one test per 16 values) measurably on Zen 4 (docs/tried.md);
/// the mask and a scalar test cost one vector uop.
#[inline]
#[target_feature(enable = "avx")]
fn movmsk_ps(m: __m256) -> u32 {
    let bits: u32;
    // SAFETY: AVX is enabled on this function; the instruction reads a
    // register and writes a general-purpose one, nothing else.
    unsafe {
        core::arch::asm!(
            "vmovmskps {bits:e}, {m}",
            bits = lateout(reg) bits,
            m = in(ymm_reg) m,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    bits
}

/// Packs two vectors of u32 lanes (each `< 2^16`) into 16 u16, `a`'s
/// first.
#[inline(always)]
fn pack_u16_x2(_: Avx2, a: __m256i, b: __m256i) -> __m256i {
    // `vpackusdw` works per 128-bit lane (quadwords a0-3, b0-3, a4-7,
    // b4-7) and saturates, the identity below 2^16; `vpermq` puts the
    // quadwords in order.
    // SAFETY: the token proves AVX2; value intrinsics, no memory access.
    unsafe { _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packus_epi32(a, b)) }
}

/// Stores 16 u16 to `dst[..16]`.
#[inline(always)]
fn store_16_u16(_: Avx2, v: __m256i, dst: &mut [u16]) {
    let dst = &mut dst[..16];
    // SAFETY: `dst` holds 16 u16 = 32 bytes (checked above), all that is
    // written; the token proves AVX.
    unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), v) }
}

/// Stores 8 u16 to `dst[..8]`.
#[inline(always)]
fn store_8_u16(v: __m128i, dst: &mut [u16]) {
    let dst = &mut dst[..8];
    // SAFETY: `dst` holds 8 u16 = 16 bytes (checked above), all that is
    // written; SSE2 is part of x86-64.
    unsafe { _mm_storeu_si128(dst.as_mut_ptr().cast(), v) }
}
