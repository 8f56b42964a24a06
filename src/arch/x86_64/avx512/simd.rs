//! [`F32Simd`] for [`Avx512`]: 16 f32 lanes in a `__m512`, `__mmask16`
//! masks, masked loads/stores for tails, F16C-style `vcvtph2ps`/`vcvtps2ph`
//! for f16.

use core::arch::x86_64::*;

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

use crate::arch::x86_64::Avx512;
use crate::kernel::simd::F32Simd;

/// Calls value intrinsics inside a method of `impl F32Simd for Avx512`.
macro_rules! v {
    ($e:expr) => {{
        // Only used in methods taking an `Avx512` token by value; the
        // intrinsics here take and return values only.
        // SAFETY: the token proves AVX-512 F/BW/VL/DQ + AVX2 + FMA + F16C.
        unsafe { $e }
    }};
}

/// The mask of the first `n < 16` lanes.
#[inline(always)]
fn first(n: usize) -> __mmask16 {
    debug_assert!(n < 16);
    ((1u32 << n) - 1) as __mmask16
}

impl F32Simd for Avx512 {
    const LANES: usize = 16;
    const REGISTERS: usize = 32;

    type F = __m512;
    type U = __m512i;
    type M = __mmask16;
    type Acc = (__m512d, __m512d);

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
    fn splat(self, x: f32) -> __m512 {
        v!(_mm512_set1_ps(x))
    }
    #[inline(always)]
    fn load(self, src: &[f32]) -> __m512 {
        let src = &src[..16];
        // SAFETY: `src` holds 16 f32 (checked above), all that is read;
        // AVX-512F is proven by the token; `loadu` needs no alignment.
        unsafe { _mm512_loadu_ps(src.as_ptr()) }
    }
    #[inline(always)]
    fn store(self, v: __m512, dst: &mut [f32]) {
        let dst = &mut dst[..16];
        // SAFETY: `dst` holds 16 f32 (checked above), all that is written.
        unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), v) }
    }
    #[inline(always)]
    fn load_tail(self, src: &[f32]) -> __m512 {
        let src = &src[..src.len().min(15)];
        // SAFETY: the mask enables lanes 0..src.len(), all inside `src`;
        // masked-off lanes are not accessed and cannot fault.
        unsafe { _mm512_maskz_loadu_ps(first(src.len()), src.as_ptr()) }
    }
    #[inline(always)]
    fn store_tail(self, v: __m512, dst: &mut [f32]) {
        let n = dst.len().min(15);
        let dst = &mut dst[..n];
        // SAFETY: the mask enables lanes 0..dst.len(), all inside `dst`;
        // masked-off lanes are not written.
        unsafe { _mm512_mask_storeu_ps(dst.as_mut_ptr(), first(dst.len()), v) }
    }

    #[inline(always)]
    fn add(self, a: __m512, b: __m512) -> __m512 {
        v!(_mm512_add_ps(a, b))
    }
    #[inline(always)]
    fn sub(self, a: __m512, b: __m512) -> __m512 {
        v!(_mm512_sub_ps(a, b))
    }
    #[inline(always)]
    fn mul(self, a: __m512, b: __m512) -> __m512 {
        v!(_mm512_mul_ps(a, b))
    }
    #[inline(always)]
    fn div(self, a: __m512, b: __m512) -> __m512 {
        v!(_mm512_div_ps(a, b))
    }
    #[inline(always)]
    fn fma(self, a: __m512, b: __m512, c: __m512) -> __m512 {
        v!(_mm512_fmadd_ps(a, b, c))
    }
    #[inline(always)]
    fn min(self, a: __m512, b: __m512) -> __m512 {
        v!(_mm512_min_ps(a, b))
    }
    #[inline(always)]
    fn max(self, a: __m512, b: __m512) -> __m512 {
        v!(_mm512_max_ps(a, b))
    }
    #[inline(always)]
    fn abs(self, a: __m512) -> __m512 {
        v!(_mm512_abs_ps(a))
    }
    #[inline(always)]
    fn neg(self, a: __m512) -> __m512 {
        v!(_mm512_xor_ps(a, _mm512_set1_ps(-0.0)))
    }
    #[inline(always)]
    fn sqrt(self, a: __m512) -> __m512 {
        v!(_mm512_sqrt_ps(a))
    }
    #[inline(always)]
    fn lt(self, a: __m512, b: __m512) -> __mmask16 {
        v!(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, b))
    }
    #[inline(always)]
    fn select(self, m: __mmask16, a: __m512, b: __m512) -> __m512 {
        v!(_mm512_mask_blend_ps(m, b, a))
    }
    #[inline(always)]
    fn reduce_sum(self, v: __m512) -> f32 {
        v!(_mm512_reduce_add_ps(v))
    }

    #[inline(always)]
    fn acc_zero(self) -> (__m512d, __m512d) {
        v!((_mm512_setzero_pd(), _mm512_setzero_pd()))
    }
    #[inline(always)]
    fn acc_add(self, acc: (__m512d, __m512d), v: __m512) -> (__m512d, __m512d) {
        v!({
            let lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
            let hi = _mm512_cvtps_pd(_mm512_extractf32x8_ps::<1>(v));
            (_mm512_add_pd(acc.0, lo), _mm512_add_pd(acc.1, hi))
        })
    }
    #[inline(always)]
    fn acc_sum(self, acc: (__m512d, __m512d)) -> f64 {
        v!(_mm512_reduce_add_pd(_mm512_add_pd(acc.0, acc.1)))
    }

    #[inline(always)]
    fn nonfinite(self, v: __m512) -> __mmask16 {
        let exp = self.u_splat(0x7F80_0000);
        self.u_eq(self.u_and(self.to_bits(v), exp), exp)
    }
    #[inline(always)]
    fn any(self, m: __mmask16) -> bool {
        m != 0
    }
    #[inline(always)]
    fn count(self, m: __mmask16) -> u32 {
        m.count_ones()
    }

    #[inline(always)]
    fn u_splat(self, x: u32) -> __m512i {
        v!(_mm512_set1_epi32(x as i32))
    }
    #[inline(always)]
    fn iota(self) -> __m512i {
        v!(_mm512_setr_epi32(
            0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15
        ))
    }
    #[inline(always)]
    fn to_bits(self, v: __m512) -> __m512i {
        v!(_mm512_castps_si512(v))
    }
    #[inline(always)]
    fn bits_to_f(self, u: __m512i) -> __m512 {
        v!(_mm512_castsi512_ps(u))
    }
    #[inline(always)]
    fn u_add(self, a: __m512i, b: __m512i) -> __m512i {
        v!(_mm512_add_epi32(a, b))
    }
    #[inline(always)]
    fn u_sub(self, a: __m512i, b: __m512i) -> __m512i {
        v!(_mm512_sub_epi32(a, b))
    }
    #[inline(always)]
    fn u_mul(self, a: __m512i, b: __m512i) -> __m512i {
        v!(_mm512_mullo_epi32(a, b))
    }
    #[inline(always)]
    fn u_and(self, a: __m512i, b: __m512i) -> __m512i {
        v!(_mm512_and_si512(a, b))
    }
    #[inline(always)]
    fn u_or(self, a: __m512i, b: __m512i) -> __m512i {
        v!(_mm512_or_si512(a, b))
    }
    #[inline(always)]
    fn u_xor(self, a: __m512i, b: __m512i) -> __m512i {
        v!(_mm512_xor_si512(a, b))
    }
    #[inline(always)]
    fn u_shr(self, a: __m512i, n: u32) -> __m512i {
        v!(_mm512_srl_epi32(a, _mm_cvtsi32_si128(n as i32)))
    }
    #[inline(always)]
    fn u_shl(self, a: __m512i, n: u32) -> __m512i {
        v!(_mm512_sll_epi32(a, _mm_cvtsi32_si128(n as i32)))
    }
    #[inline(always)]
    fn u_shrv(self, a: __m512i, n: __m512i) -> __m512i {
        v!(_mm512_srlv_epi32(a, n))
    }
    #[inline(always)]
    fn u_shlv(self, a: __m512i, n: __m512i) -> __m512i {
        v!(_mm512_sllv_epi32(a, n))
    }
    #[inline(always)]
    fn u_gt(self, a: __m512i, b: __m512i) -> __mmask16 {
        v!(_mm512_cmpgt_epu32_mask(a, b))
    }
    #[inline(always)]
    fn u_eq(self, a: __m512i, b: __m512i) -> __mmask16 {
        v!(_mm512_cmpeq_epi32_mask(a, b))
    }
    #[inline(always)]
    fn u_select(self, m: __mmask16, a: __m512i, b: __m512i) -> __m512i {
        v!(_mm512_mask_blend_epi32(m, b, a))
    }

    #[inline(always)]
    fn load_u16(self, src: &[u16]) -> __m512i {
        let src = &src[..16];
        // SAFETY: `src` holds 16 u16 = 32 bytes (checked above), all that
        // is read; AVX-512F is proven by the token.
        unsafe { _mm512_cvtepu16_epi32(_mm256_loadu_si256(src.as_ptr().cast())) }
    }
    #[inline(always)]
    fn load_u16_tail(self, src: &[u16]) -> __m512i {
        let src = &src[..src.len().min(15)];
        // SAFETY: the mask enables the 16-bit lanes 0..src.len(), all
        // inside `src`; masked-off lanes are not accessed. BW+VL proven.
        unsafe {
            _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(
                first(src.len()),
                src.as_ptr().cast(),
            ))
        }
    }
    #[inline(always)]
    fn store_u16(self, v: __m512i, dst: &mut [u16]) {
        let dst = &mut dst[..16];
        let h = v!(_mm512_cvtepi32_epi16(v));
        // SAFETY: `dst` holds 16 u16 = 32 bytes (checked above), all that
        // is written.
        unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), h) }
    }
    #[inline(always)]
    fn store_u16_tail(self, v: __m512i, dst: &mut [u16]) {
        let h = v!(_mm512_cvtepi32_epi16(v));
        store_u16_masked(self, h, dst)
    }

    // bf16 -> f32: shift into place, then quiet signalling NaNs (`* 1.0`
    // would in hardware, but LLVM folds it away: it does not model sNaN).
    // vfpclassps finds them in one uop, a masked or quiets them.
    #[inline(always)]
    fn widen_bf16(self, h: __m512i) -> __m512 {
        v!({
            let x = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(h));
            // Class 0x80: signalling NaN.
            let snan = _mm512_fpclass_ps_mask::<0x80>(x);
            let quiet = _mm512_mask_or_epi32(
                _mm512_castps_si512(x),
                snan,
                _mm512_castps_si512(x),
                _mm512_set1_epi32(0x0040_0000),
            );
            _mm512_castsi512_ps(quiet)
        })
    }

    //
    // f32 -> bf16: round in place (the result is the upper 16 bits of each
    // lane), then one `vpermw` gathers the upper halves: cheaper than
    // shifting down and `vpmovdw` (two port-5 uops, more as a store).
    #[inline(always)]
    fn store_bf16(self, v: __m512, dst: &mut [bf16]) {
        let dst: &mut [u16] = &mut dst.reinterpret_cast_mut()[..16];
        let h = self.bf16_upper(v);
        // SAFETY: `dst` holds 16 u16 = 32 bytes (checked above), all that
        // is written.
        unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), h) }
    }
    #[inline(always)]
    fn store_bf16_tail(self, v: __m512, dst: &mut [bf16]) {
        let h = self.bf16_upper(v);
        store_u16_masked(self, h, dst.reinterpret_cast_mut())
    }

    // vcvtph2ps/vcvtps2ph convert exactly as `half` does (see the AVX2
    // shim); the exhaustive tests prove it on every run.
    #[inline(always)]
    fn load_f16(self, src: &[f16]) -> __m512 {
        let src: &[u16] = &src.reinterpret_cast()[..16];
        // SAFETY: `src` holds 16 u16 = 32 bytes (checked above), all that
        // is read; AVX-512F is proven by the token.
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(src.as_ptr().cast())) }
    }
    #[inline(always)]
    fn load_f16_tail(self, src: &[f16]) -> __m512 {
        let src: &[u16] = src.reinterpret_cast();
        let src = &src[..src.len().min(15)];
        // SAFETY: as in `load_u16_tail`.
        unsafe {
            _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(
                first(src.len()),
                src.as_ptr().cast(),
            ))
        }
    }
    #[inline(always)]
    fn store_f16(self, v: __m512, dst: &mut [f16]) {
        let dst: &mut [u16] = &mut dst.reinterpret_cast_mut()[..16];
        let h = v!(_mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v));
        // SAFETY: `dst` holds 16 u16 = 32 bytes (checked above), all that
        // is written.
        unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), h) }
    }
    #[inline(always)]
    fn stream(self, v: __m512, dst: &mut [f32]) {
        let dst = &mut dst[..16];
        assert!(
            (dst.as_ptr() as usize).is_multiple_of(64),
            "unaligned streaming store"
        );
        // SAFETY: `dst` holds 16 f32 = 64 bytes and starts on a multiple of
        // 64 (both checked above), as `vmovntps` requires.
        unsafe { _mm512_stream_ps(dst.as_mut_ptr(), v) }
    }
    #[inline(always)]
    fn stream_bf16(self, v: __m512, dst: &mut [bf16]) {
        let h = self.bf16_upper(v);
        stream_32_bytes(self, h, dst.reinterpret_cast_mut())
    }
    #[inline(always)]
    fn stream_f16(self, v: __m512, dst: &mut [f16]) {
        let h = v!(_mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v));
        stream_32_bytes(self, h, dst.reinterpret_cast_mut())
    }
    #[inline(always)]
    fn stream_fence(self) {
        // SAFETY: `sfence` only orders stores (SSE, part of x86-64).
        unsafe { _mm_sfence() }
    }
    #[inline(always)]
    fn store_f16_tail(self, v: __m512, dst: &mut [f16]) {
        let h = v!(_mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v));
        store_u16_masked(self, h, dst.reinterpret_cast_mut())
    }
}

impl Avx512 {
    /// `f32_to_bf16_bits` of each lane, packed into 16 u16.
    #[inline(always)]
    fn bf16_upper(self, v: __m512) -> __m256i {
        // Nearest-even by integer addition, as `f32_to_bf16_bits`: add
        // 0x7FFF, plus 1 when the kept part is odd (bit 16); NaN keeps its
        // upper bits with the quiet bit set. Mask registers keep it at six
        // ALU uops per 16 lanes (a compare-and-blend form took nine).
        let r = v!({
            let x = _mm512_castps_si512(v);
            let odd = _mm512_test_epi32_mask(x, _mm512_set1_epi32(0x1_0000));
            let up = _mm512_add_epi32(x, _mm512_set1_epi32(0x7FFF));
            let up = _mm512_mask_add_epi32(up, odd, x, _mm512_set1_epi32(0x8000));
            // Classes 0x01 | 0x80: quiet and signalling NaN.
            let nan = _mm512_fpclass_ps_mask::<0x81>(v);
            _mm512_mask_or_epi32(up, nan, x, _mm512_set1_epi32(0x0040_0000))
        });
        v!({
            let upper_halves = _mm512_setr_epi32(
                0x0003_0001,
                0x0007_0005,
                0x000B_0009,
                0x000F_000D,
                0x0013_0011,
                0x0017_0015,
                0x001B_0019,
                0x001F_001D,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
            );
            _mm512_castsi512_si256(_mm512_permutexvar_epi16(upper_halves, r))
        })
    }
}

/// Streams 16 u16 into `dst[..16]`, which must start on a multiple of 32.
#[inline(always)]
fn stream_32_bytes(_: Avx512, h: __m256i, dst: &mut [u16]) {
    let dst = &mut dst[..16];
    assert!(
        (dst.as_ptr() as usize).is_multiple_of(32),
        "unaligned streaming store"
    );
    // SAFETY: the token proves AVX; `dst` holds 32 bytes and is 32-byte
    // aligned (both checked above), as `vmovntdq` requires.
    unsafe { _mm256_stream_si256(dst.as_mut_ptr().cast(), h) }
}

/// Stores the first `dst.len() < 16` u16 lanes of `h` into `dst`.
#[inline(always)]
fn store_u16_masked(_: Avx512, h: __m256i, dst: &mut [u16]) {
    let n = dst.len().min(15);
    let dst = &mut dst[..n];
    // SAFETY: the token proves AVX-512 BW+VL; the mask enables the lanes
    // 0..dst.len(), all inside `dst`; masked-off lanes are not written.
    unsafe { _mm256_mask_storeu_epi16(dst.as_mut_ptr().cast(), first(dst.len()), h) }
}
