//! [`F32Simd`] for [`Neon`]: 4 f32 lanes in a `float32x4_t`; bf16 and f16
//! through the trait's integer defaults.
//!
//! `FCVTL`/`FCVTN` would convert f16 in one instruction (base Armv8, no
//! FEAT_FP16 needed), but Rust's `vcvt_f32_f16`/`vcvt_f16_f32` are stable
//! only since 1.94 and the crate's MSRV is 1.89; the integer path is exact
//! and was chosen until the MSRV moves. BFCVTN has no stable intrinsic.
//!
//! Tails go through a one-vector stack buffer: NEON has no masked loads.

use core::arch::aarch64::*;

use crate::arch::aarch64::Neon;
use crate::kernel::simd::F32Simd;

/// Calls value intrinsics inside a method of `impl F32Simd for Neon`.
macro_rules! v {
    ($e:expr) => {{
        // Only used in methods taking a `Neon` token by value; the
        // intrinsics here take and return values only.
        // SAFETY: the token proves NEON at run time; no memory is touched.
        unsafe { $e }
    }};
}

impl F32Simd for Neon {
    const LANES: usize = 4;
    const REGISTERS: usize = 32;
    type F = float32x4_t;
    type U = uint32x4_t;
    type M = uint32x4_t;
    type Acc = (float64x2_t, float64x2_t);

    #[inline(always)]
    fn splat(self, x: f32) -> float32x4_t {
        v!(vdupq_n_f32(x))
    }
    #[inline(always)]
    fn load(self, src: &[f32]) -> float32x4_t {
        let src = &src[..4];
        // SAFETY: `src` holds 4 f32 (checked above), all that is read;
        // NEON is proven by the token; `vld1q` needs only element alignment.
        unsafe { vld1q_f32(src.as_ptr()) }
    }
    #[inline(always)]
    fn store(self, v: float32x4_t, dst: &mut [f32]) {
        let dst = &mut dst[..4];
        // SAFETY: `dst` holds 4 f32 (checked above), all that is written.
        unsafe { vst1q_f32(dst.as_mut_ptr(), v) }
    }
    #[inline(always)]
    fn load_tail(self, src: &[f32]) -> float32x4_t {
        let mut buf = [0f32; 4];
        buf[..src.len()].copy_from_slice(src);
        self.load(&buf)
    }
    #[inline(always)]
    fn store_tail(self, v: float32x4_t, dst: &mut [f32]) {
        let mut buf = [0f32; 4];
        self.store(v, &mut buf);
        let n = dst.len();
        dst.copy_from_slice(&buf[..n]);
    }

    #[inline(always)]
    fn add(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
        v!(vaddq_f32(a, b))
    }
    #[inline(always)]
    fn sub(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
        v!(vsubq_f32(a, b))
    }
    #[inline(always)]
    fn mul(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
        v!(vmulq_f32(a, b))
    }
    #[inline(always)]
    fn div(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
        v!(vdivq_f32(a, b))
    }
    #[inline(always)]
    fn fma(self, a: float32x4_t, b: float32x4_t, c: float32x4_t) -> float32x4_t {
        v!(vfmaq_f32(c, a, b))
    }
    #[inline(always)]
    fn min(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
        v!(vminq_f32(a, b))
    }
    #[inline(always)]
    fn max(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
        v!(vmaxq_f32(a, b))
    }
    #[inline(always)]
    fn abs(self, a: float32x4_t) -> float32x4_t {
        v!(vabsq_f32(a))
    }
    #[inline(always)]
    fn neg(self, a: float32x4_t) -> float32x4_t {
        v!(vnegq_f32(a))
    }
    #[inline(always)]
    fn sqrt(self, a: float32x4_t) -> float32x4_t {
        v!(vsqrtq_f32(a))
    }
    #[inline(always)]
    fn lt(self, a: float32x4_t, b: float32x4_t) -> uint32x4_t {
        v!(vcltq_f32(a, b))
    }
    #[inline(always)]
    fn select(self, m: uint32x4_t, a: float32x4_t, b: float32x4_t) -> float32x4_t {
        v!(vbslq_f32(m, a, b))
    }
    #[inline(always)]
    fn reduce_sum(self, v: float32x4_t) -> f32 {
        v!({
            let p = vpaddq_f32(v, v);
            vgetq_lane_f32::<0>(vpaddq_f32(p, p))
        })
    }

    #[inline(always)]
    fn acc_zero(self) -> (float64x2_t, float64x2_t) {
        v!((vdupq_n_f64(0.0), vdupq_n_f64(0.0)))
    }
    #[inline(always)]
    fn acc_add(
        self,
        acc: (float64x2_t, float64x2_t),
        v: float32x4_t,
    ) -> (float64x2_t, float64x2_t) {
        v!((
            vaddq_f64(acc.0, vcvt_f64_f32(vget_low_f32(v))),
            vaddq_f64(acc.1, vcvt_high_f64_f32(v)),
        ))
    }
    #[inline(always)]
    fn acc_sum(self, acc: (float64x2_t, float64x2_t)) -> f64 {
        v!(vaddvq_f64(vaddq_f64(acc.0, acc.1)))
    }

    #[inline(always)]
    fn nonfinite(self, v: float32x4_t) -> uint32x4_t {
        let exp = self.u_splat(0x7F80_0000);
        self.u_eq(self.u_and(self.to_bits(v), exp), exp)
    }
    #[inline(always)]
    fn any(self, m: uint32x4_t) -> bool {
        v!(vmaxvq_u32(m)) != 0
    }
    #[inline(always)]
    fn count(self, m: uint32x4_t) -> u32 {
        v!(vaddvq_u32(vshrq_n_u32::<31>(m)))
    }

    #[inline(always)]
    fn u_splat(self, x: u32) -> uint32x4_t {
        v!(vdupq_n_u32(x))
    }
    #[inline(always)]
    fn iota(self) -> uint32x4_t {
        let lanes = [0u32, 1, 2, 3];
        // SAFETY: `lanes` holds 4 u32, all that is read.
        unsafe { vld1q_u32(lanes.as_ptr()) }
    }
    #[inline(always)]
    fn to_bits(self, v: float32x4_t) -> uint32x4_t {
        v!(vreinterpretq_u32_f32(v))
    }
    #[inline(always)]
    fn bits_to_f(self, u: uint32x4_t) -> float32x4_t {
        v!(vreinterpretq_f32_u32(u))
    }
    #[inline(always)]
    fn u_add(self, a: uint32x4_t, b: uint32x4_t) -> uint32x4_t {
        v!(vaddq_u32(a, b))
    }
    #[inline(always)]
    fn u_sub(self, a: uint32x4_t, b: uint32x4_t) -> uint32x4_t {
        v!(vsubq_u32(a, b))
    }
    #[inline(always)]
    fn u_mul(self, a: uint32x4_t, b: uint32x4_t) -> uint32x4_t {
        v!(vmulq_u32(a, b))
    }
    #[inline(always)]
    fn u_and(self, a: uint32x4_t, b: uint32x4_t) -> uint32x4_t {
        v!(vandq_u32(a, b))
    }
    #[inline(always)]
    fn u_or(self, a: uint32x4_t, b: uint32x4_t) -> uint32x4_t {
        v!(vorrq_u32(a, b))
    }
    #[inline(always)]
    fn u_xor(self, a: uint32x4_t, b: uint32x4_t) -> uint32x4_t {
        v!(veorq_u32(a, b))
    }
    #[inline(always)]
    fn u_shr(self, a: uint32x4_t, n: u32) -> uint32x4_t {
        // USHL by a negative count shifts right; a count of 32 or more
        // (in magnitude) gives 0.
        v!(vshlq_u32(a, vdupq_n_s32(-(n.min(32) as i32))))
    }
    #[inline(always)]
    fn u_shl(self, a: uint32x4_t, n: u32) -> uint32x4_t {
        v!(vshlq_u32(a, vdupq_n_s32(n.min(32) as i32)))
    }
    #[inline(always)]
    fn u_shrv(self, a: uint32x4_t, n: uint32x4_t) -> uint32x4_t {
        // USHL reads the low byte of each count as signed: clamp to 32 so
        // large counts stay large.
        let n = v!(vminq_u32(n, vdupq_n_u32(32)));
        v!(vshlq_u32(a, vnegq_s32(vreinterpretq_s32_u32(n))))
    }
    #[inline(always)]
    fn u_shlv(self, a: uint32x4_t, n: uint32x4_t) -> uint32x4_t {
        let n = v!(vminq_u32(n, vdupq_n_u32(32)));
        v!(vshlq_u32(a, vreinterpretq_s32_u32(n)))
    }
    #[inline(always)]
    fn u_gt(self, a: uint32x4_t, b: uint32x4_t) -> uint32x4_t {
        v!(vcgtq_u32(a, b))
    }
    #[inline(always)]
    fn u_eq(self, a: uint32x4_t, b: uint32x4_t) -> uint32x4_t {
        v!(vceqq_u32(a, b))
    }
    #[inline(always)]
    fn u_select(self, m: uint32x4_t, a: uint32x4_t, b: uint32x4_t) -> uint32x4_t {
        v!(vbslq_u32(m, a, b))
    }

    #[inline(always)]
    fn load_u16(self, src: &[u16]) -> uint32x4_t {
        let src = &src[..4];
        // SAFETY: `src` holds 4 u16 (checked above), all that is read.
        unsafe { vmovl_u16(vld1_u16(src.as_ptr())) }
    }
    #[inline(always)]
    fn load_u16_tail(self, src: &[u16]) -> uint32x4_t {
        let mut buf = [0u16; 4];
        buf[..src.len()].copy_from_slice(src);
        self.load_u16(&buf)
    }
    #[inline(always)]
    fn store_u16(self, v: uint32x4_t, dst: &mut [u16]) {
        let dst = &mut dst[..4];
        let h = v!(vmovn_u32(v));
        // SAFETY: `dst` holds 4 u16 (checked above), all that is written.
        unsafe { vst1_u16(dst.as_mut_ptr(), h) }
    }
    #[inline(always)]
    fn store_u16_tail(self, v: uint32x4_t, dst: &mut [u16]) {
        let mut buf = [0u16; 4];
        self.store_u16(v, &mut buf);
        let n = dst.len();
        dst.copy_from_slice(&buf[..n]);
    }
}
