//! AVX2 + FMA GEMM microkernel: f32 FMA over panels packed as f32, a 6 x 16
//! tile (12 ymm accumulators, two ymm of B, one broadcast: 15 of 16).

use core::arch::x86_64::*;

use super::super::Avx2;
use crate::element::{Element, Slice};
use crate::kernel::gemm::StoreBlock;
use crate::kernel::gemm::{
    Format, Microkernel, RowOps, generic_axpy_rows, generic_axpy_rows4, generic_kernel,
};

/// The AVX2 f32-FMA microkernel.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2F32(pub(crate) Avx2);

impl Microkernel for Avx2F32 {
    const MR: usize = 6;
    const NR: usize = 16;
    const FORMAT: Format = Format::F32;
    const NAME: &'static str = "avx2-f32fma-6x16";

    #[inline(always)]
    fn kernel(self, slots: usize, a: &[f32], b: &[f32], tile: &mut [f32], accumulate: bool) {
        // SAFETY: the token proves AVX2, FMA and F16C.
        unsafe { kernel(slots, a, b, tile, accumulate) }
    }

    #[inline(always)]
    fn store_block<C: Element>(self, job: &StoreBlock<'_, C>) -> usize
    where
        Self: RowOps,
    {
        // SAFETY: the token proves every feature `store_block` enables.
        unsafe { store_block(self, job) }
    }
}

impl RowOps for Avx2F32 {
    #[inline(always)]
    fn widen<T: Element>(self, src: &[T], dst: &mut [f32]) {
        // SAFETY: the token proves AVX2, FMA and F16C.
        unsafe { widen(T::slice(src), dst) }
    }

    #[inline(always)]
    fn narrow_f16(self, src: &[f32], dst: &mut [half::f16]) {
        // SAFETY: as above.
        unsafe { narrow_f16(src, dst) }
    }

    #[inline(always)]
    fn axpy_rows(self, x: &[f32], b: &[f32], y: &mut [&mut [f32]]) {
        // SAFETY: as above.
        unsafe { axpy_rows(x, b, y) }
    }

    #[inline(always)]
    fn axpy_rows4(self, x: &[f32], b: [&[f32]; 4], y: &mut [&mut [f32]]) {
        // SAFETY: as above.
        unsafe { axpy_rows4(x, b, y) }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn kernel(slots: usize, a: &[f32], b: &[f32], tile: &mut [f32], accumulate: bool) {
    generic_kernel::<6, 16>(slots, a, b, tile, accumulate, f32::mul_add);
}

#[target_feature(enable = "avx2,fma,f16c")]
fn axpy_rows(x: &[f32], b: &[f32], y: &mut [&mut [f32]]) {
    generic_axpy_rows(x, b, y, f32::mul_add);
}

#[target_feature(enable = "avx2,fma,f16c")]
fn axpy_rows4(x: &[f32], b: [&[f32]; 4], y: &mut [&mut [f32]]) {
    generic_axpy_rows4(x, b, y, f32::mul_add);
}

/// Widens a contiguous run: f16 through `vcvtph2ps`, bf16 by a shift.
#[target_feature(enable = "avx2,fma,f16c")]
fn widen(src: Slice<'_>, dst: &mut [f32]) {
    match src {
        Slice::F32(s) => dst.copy_from_slice(s),
        Slice::Bf16(s) => {
            // A plain shift: a signalling NaN stays signalling here, and
            // becomes quiet in the first arithmetic operation, so the GEMM's
            // results match the scalar path's (which quiets first).
            let n = s.len().min(dst.len());
            let mut i = 0;
            while i + 8 <= n {
                // SAFETY: i + 8 <= n <= both lengths: 8 bf16 (16 bytes) read,
                // 8 f32 written, unaligned access.
                unsafe {
                    let h = _mm_loadu_si128(s.as_ptr().add(i).cast());
                    let w = _mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h));
                    _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_castsi256_ps(w));
                }
                i += 8;
            }
            for (d, x) in dst[i..n].iter_mut().zip(&s[i..n]) {
                *d = x.to_f32();
            }
        }
        Slice::F16(s) => {
            let n = s.len().min(dst.len());
            let mut i = 0;
            while i + 8 <= n {
                // SAFETY: i + 8 <= n <= both lengths: 8 f16 read, 8 f32 written.
                unsafe {
                    let h = _mm_loadu_si128(s.as_ptr().add(i).cast());
                    _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
                }
                i += 8;
            }
            for (d, x) in dst[i..n].iter_mut().zip(&s[i..n]) {
                *d = x.to_f32();
            }
        }
    }
}

/// [`StoreBlock::run`] compiled for AVX2: the epilogue's loops use
/// 256-bit vectors instead of the baseline's SSE2.
#[target_feature(enable = "avx,avx2,fma,f16c")]
fn store_block<K: Microkernel + RowOps, C: Element>(kern: K, job: &StoreBlock<'_, C>) -> usize {
    job.run(kern)
}

/// Rounds to f16 with `vcvtps2ph` (nearest-even).
#[target_feature(enable = "avx2,fma,f16c")]
fn narrow_f16(src: &[f32], dst: &mut [half::f16]) {
    let n = src.len().min(dst.len());
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n <= both lengths: 8 f32 read, 8 f16 written.
        unsafe {
            let v = _mm256_loadu_ps(src.as_ptr().add(i));
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
            _mm_storeu_si128(dst.as_mut_ptr().add(i).cast(), h);
        }
        i += 8;
    }
    for (d, x) in dst[i..n].iter_mut().zip(&src[i..n]) {
        *d = <half::f16 as Element>::from_f32(*x);
    }
}
