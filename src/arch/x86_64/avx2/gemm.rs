//! AVX2 + FMA GEMM microkernel: f32 FMA over panels packed as f32, a 6 x 16
//! tile (12 ymm accumulators, two ymm of B, one broadcast: 15 of 16).

use core::arch::x86_64::*;

use super::super::Avx2;
use crate::arch::x86_64::avx512::gemm::prefetch_row;
use crate::element::{DType, Element, Slice};
use crate::kernel::gemm::StoreBlock;
use crate::kernel::gemm::{
    Format, Microkernel, RowOps, gemv_block_shape, generic_axpy_rows, generic_axpy_rows4,
    generic_gemv_block, generic_kernel,
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

    #[inline(always)]
    fn gemv_rows(self, m: usize) -> usize {
        m.next_power_of_two()
    }

    #[inline(always)]
    fn gemv_cols(self, mp: usize) -> usize {
        crate::arch::x86_64::avx512::gemm::gemv_cols(mp)
    }

    #[inline(always)]
    fn gemv_block<T: Element>(
        self,
        x: &[f32],
        mp: usize,
        b: &[T],
        rs: usize,
        y: &mut [f32],
        tmp: &mut Vec<f32>,
    ) {
        if !matches!(mp, 1 | 2 | 4 | 8 | 16) {
            return generic_gemv_block(self, x, mp, b, rs, y, tmp);
        }
        // SAFETY: the token proves AVX2, FMA and F16C.
        unsafe { gemv_tiled(x, mp, b, rs, y) }
    }
}

/// [`RowOps::gemv_block`] for the row counts [`RowOps::gemv_rows`] gives
/// (1, 2, 4, 8, 16): the tile of each.
#[target_feature(enable = "sse,avx2,fma,f16c")]
fn gemv_tiled<T: Element>(x: &[f32], mp: usize, b: &[T], rs: usize, y: &mut [f32]) {
    match mp {
        1 => gemv_tiles::<T, 1, 8, 1>(x, b, rs, y),
        2 => gemv_tiles::<T, 2, 4, 1>(x, b, rs, y),
        4 => gemv_tiles::<T, 4, 2, 1>(x, b, rs, y),
        // 4 x 2 for more rows too: 8 x 1 (8 chains, as many as FMA latency
        // times ports) ran at 0.75-0.85x, 4 x 3 (spills) slower still.
        8 => gemv_tiles::<T, 4, 2, 2>(x, b, rs, y),
        16 => gemv_tiles::<T, 4, 2, 4>(x, b, rs, y),
        _ => unreachable!("gemv_tiled: {mp} rows"),
    }
}

/// [`RowOps::gemv_block`] with `G` groups of `R` rows, each group an
/// `R x 8V` tile of accumulators in registers (at most 8 of the 16 ymm):
/// as the AVX-512 kernel (`avx512::gemm::gemv_tiles`), per pass of 8 B
/// rows and strip of `8V` columns, the groups one after another (the
/// second reads the pass's B from L1). The last columns take strips of
/// one vector, their B elements widened one by one (AVX2 has no masked
/// 16-bit load).
#[target_feature(enable = "sse,avx2,fma,f16c")]
fn gemv_tiles<T: Element, const R: usize, const V: usize, const G: usize>(
    x: &[f32],
    b: &[T],
    rs: usize,
    y: &mut [f32],
) {
    let (k, w) = gemv_block_shape(x, R * G, b, rs, y);
    if k == 0 {
        y.fill(0.0);
        return;
    }
    let mut l0 = 0;
    while l0 < k {
        let l1 = (l0 + 8).min(k);
        let mut j = 0;
        while j + 8 * V <= w {
            for g in 0..G {
                gemv_strip::<T, R, V, G>(x, b, rs, y, w, j, l0, l1, g, 8);
            }
            j += 8 * V;
        }
        while j < w {
            for g in 0..G {
                gemv_strip::<T, R, 1, G>(x, b, rs, y, w, j, l0, l1, g, (w - j).min(8));
            }
            j += 8;
        }
        l0 = l1;
    }
}

/// One strip of [`gemv_tiles`]: rows `g * R..(g + 1) * R` of the tile,
/// columns `j..j + 8V` (or `lanes < 8` of them, with `V = 1`), B rows
/// `l0..l1`.
#[inline]
#[target_feature(enable = "sse,avx2,fma,f16c")]
#[expect(clippy::too_many_arguments, reason = "one strip's coordinates")]
fn gemv_strip<T: Element, const R: usize, const V: usize, const G: usize>(
    x: &[f32],
    b: &[T],
    rs: usize,
    y: &mut [f32],
    w: usize,
    j: usize,
    l0: usize,
    l1: usize,
    g: usize,
    lanes: usize,
) {
    let mp = R * G;
    let full = lanes == 8;
    let width = if full { 8 * V } else { lanes };
    // Checked here too (cheap beside a strip): the raw accesses rely on it.
    assert!(l0 < l1 && l1 * mp <= x.len() && j + width <= w && mp * w <= y.len() && g < G);
    assert!((l1 - 1) * rs + w <= b.len());
    // Lane i active where i < lanes (the partial strips' y accesses).
    let lane_mask = _mm256_cmpgt_epi32(
        _mm256_set1_epi32(lanes as i32),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    );
    let mut acc = [[_mm256_setzero_ps(); V]; R];
    if l0 > 0 {
        for (r, row) in acc.iter_mut().enumerate() {
            for (v, a) in row.iter_mut().enumerate() {
                // SAFETY: (g R + r) w + j + 8v + 8 <= mp w <= y.len() for a
                // full strip; a partial one reads only its `lanes` lanes.
                unsafe {
                    let p = y.as_ptr().add((g * R + r) * w + j + 8 * v);
                    *a = if full {
                        _mm256_loadu_ps(p)
                    } else {
                        _mm256_maskload_ps(p, lane_mask)
                    };
                }
            }
        }
    }
    let bp = b.as_ptr();
    let pass = l1 - l0;
    for l in l0..l1 {
        let row = l * rs + j;
        if g == 0 {
            // The same columns of the next pass's row, into L2 (see the
            // AVX-512 kernel).
            prefetch_row::<T>(bp.wrapping_add(row + pass * rs), 8 * V);
        }
        let mut bv = [_mm256_setzero_ps(); V];
        for (v, bq) in bv.iter_mut().enumerate() {
            *bq = if full {
                // 8 elements at (l, j + 8v).
                // SAFETY: l < l1 <= k, so row + 8v + 8 <= (k - 1) rs + w <=
                // b.len() (asserted).
                unsafe {
                    let p = bp.add(row + 8 * v);
                    match T::DTYPE {
                        DType::F32 => _mm256_loadu_ps(p.cast()),
                        DType::F16 => _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
                        _ => _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(
                            _mm_loadu_si128(p.cast()),
                        ))),
                    }
                }
            } else {
                let mut t = [0.0f32; 8];
                for (d, s) in t.iter_mut().zip(&b[row..row + lanes]) {
                    *d = s.to_f32();
                }
                // SAFETY: `t` holds 8 floats.
                unsafe { _mm256_loadu_ps(t.as_ptr()) }
            };
        }
        let xl = &x[l * mp + g * R..l * mp + g * R + R];
        for (row, &xr) in acc.iter_mut().zip(xl) {
            let xv = _mm256_set1_ps(xr);
            for (a, bq) in row.iter_mut().zip(&bv) {
                *a = _mm256_fmadd_ps(xv, *bq, *a);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (v, a) in row.iter().enumerate() {
            // SAFETY: as for the loads of the tile above.
            unsafe {
                let p = y.as_mut_ptr().add((g * R + r) * w + j + 8 * v);
                if full {
                    _mm256_storeu_ps(p, *a);
                } else {
                    _mm256_maskstore_ps(p, lane_mask, *a);
                }
            }
        }
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
