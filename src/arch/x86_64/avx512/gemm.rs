//! AVX-512 GEMM microkernel: f32 FMA over panels packed as f32 (bf16 and
//! f16 widened while packing), a 14 x 32 tile (28 zmm accumulators, two zmm
//! of B, one broadcast of A: 31 of 32 registers).

use core::arch::x86_64::*;

use super::super::Avx512;
use crate::arch::generic::gemv::{GemvBlock, block_cols, takes};
use crate::element::{DType, Element, Slice};
use crate::kernel::gemm::StoreBlock;
use crate::kernel::gemm::{
    Format, Microkernel, RowOps, generic_axpy_rows, generic_axpy_rows4, generic_gemv_block,
};

/// The AVX-512 f32-FMA microkernel.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx512F32(pub(crate) Avx512);

impl Microkernel for Avx512F32 {
    const MR: usize = 14;
    const NR: usize = 32;
    const FORMAT: Format = Format::F32;
    const NAME: &'static str = "avx512-f32fma-14x32";

    #[inline(always)]
    fn kernel(self, slots: usize, a: &[f32], b: &[f32], tile: &mut [f32], accumulate: bool) {
        // SAFETY: the token proves AVX-512 F/BW/VL/DQ (and FMA, F16C).
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

impl RowOps for Avx512F32 {
    // Where packing B stops costing more than streaming it for each 16
    // rows of A (BENCHMARKS.md, "Small-m paths up to 128 rows"); an f32 B
    // costs twice the bytes per pass, and packing it won from about 100
    // rows on ("Fifth session on the Zen 4 VM").
    const SMALL_M_ROW: usize = 128;
    const SMALL_M_ROW_F32: usize = 96;
    const SMALL_M_DOT: usize = 128;

    #[inline(always)]
    fn widen<T: Element>(self, src: &[T], dst: &mut [f32]) {
        // SAFETY: the token proves AVX-512 F/BW/VL/DQ (and FMA, F16C).
        unsafe { widen(T::slice(src), dst) }
    }

    #[inline(always)]
    fn pack_rows<T: Element>(self, rows: &[&[T]], w: usize, dst: &mut [f32]) -> bool {
        // SAFETY: as above.
        unsafe { pack_rows(rows, w, dst) }
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
    fn axpy_rows4_widen<T: Element>(
        self,
        x: &[f32],
        b: [&[T]; 4],
        _tmp: &mut [f32],
        y: &mut [&mut [f32]],
    ) {
        // SAFETY: as above.
        unsafe { axpy_rows4_widen(x, b, y) }
    }

    #[inline(always)]
    fn gemv_rows(self, m: usize) -> usize {
        m.next_power_of_two()
    }

    #[inline(always)]
    fn gemv_cols(self, mp: usize) -> usize {
        block_cols(mp, 8192)
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
        if !takes(mp) {
            return generic_gemv_block(self, x, mp, b, rs, y, tmp);
        }
        super::run(self.0, GemvBlock { x, mp, b, rs, y });
    }
}

const MR: usize = 14;
const NR: usize = 32;

/// Written with intrinsics: LLVM spills the generic kernel's 28
/// accumulators (docs/tried.md), but keeps these in registers.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")]
fn kernel(slots: usize, a: &[f32], b: &[f32], tile: &mut [f32], accumulate: bool) {
    // Divisions, not products: a huge `slots` must not wrap past the check.
    assert!(slots <= a.len() / MR && slots <= b.len() / NR && tile.len() >= MR * NR);
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    if accumulate {
        for (i, row) in acc.iter_mut().enumerate() {
            for (h, v) in row.iter_mut().enumerate() {
                // SAFETY: i * NR + h * 16 + 16 <= MR * NR <= tile.len().
                *v = unsafe { _mm512_loadu_ps(tile.as_ptr().add(i * NR + h * 16)) };
            }
        }
    }
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    for s in 0..slots {
        // SAFETY: s < slots, so (s + 1) * NR <= b.len() (asserted above).
        let (b0, b1) = unsafe {
            (
                _mm512_loadu_ps(bp.add(s * NR)),
                _mm512_loadu_ps(bp.add(s * NR + 16)),
            )
        };
        for (i, row) in acc.iter_mut().enumerate() {
            // SAFETY: s * MR + i < slots * MR <= a.len() (asserted above).
            let av = _mm512_set1_ps(unsafe { *ap.add(s * MR + i) });
            row[0] = _mm512_fmadd_ps(av, b0, row[0]);
            row[1] = _mm512_fmadd_ps(av, b1, row[1]);
        }
    }
    for (i, row) in acc.iter().enumerate() {
        for (h, v) in row.iter().enumerate() {
            // SAFETY: i * NR + h * 16 + 16 <= MR * NR <= tile.len().
            unsafe { _mm512_storeu_ps(tile.as_mut_ptr().add(i * NR + h * 16), *v) };
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")]
fn axpy_rows(x: &[f32], b: &[f32], y: &mut [&mut [f32]]) {
    generic_axpy_rows(x, b, y, f32::mul_add);
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")]
fn axpy_rows4(x: &[f32], b: [&[f32]; 4], y: &mut [&mut [f32]]) {
    generic_axpy_rows4(x, b, y, f32::mul_add);
}

/// [`RowOps::axpy_rows4_widen`]: each 16 columns of the four B rows
/// are widened in registers (as [`widen`] does: `vcvtph2ps`, a shift, a
/// load) and added into every row of `y` with four FMAs in k order.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")]
fn axpy_rows4_widen<T: Element>(x: &[f32], b: [&[T]; 4], y: &mut [&mut [f32]]) {
    let m = y.len();
    let n = b[0].len();
    assert!(x.len() >= 4 * m && b.iter().all(|r| r.len() == n) && y.iter().all(|r| r.len() == n));
    let mut j = 0;
    while j + 16 <= n {
        // 16 elements read from each B row, 16 f32 read and written in
        // each row of y, unaligned.
        // SAFETY: j + 16 <= n = every row's length (asserted above).
        unsafe {
            let load = |row: &[T]| -> __m512 {
                let p = row.as_ptr().add(j);
                match T::slice(row) {
                    Slice::F32(_) => _mm512_loadu_ps(p.cast()),
                    Slice::F16(_) => _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())),
                    Slice::Bf16(_) => _mm512_castsi512_ps(_mm512_slli_epi32::<16>(
                        _mm512_cvtepu16_epi32(_mm256_loadu_si256(p.cast())),
                    )),
                }
            };
            let bv = [load(b[0]), load(b[1]), load(b[2]), load(b[3])];
            for (r, yr) in y.iter_mut().enumerate() {
                let p = yr.as_mut_ptr().add(j);
                let mut t = _mm512_loadu_ps(p);
                for (q, bq) in bv.iter().enumerate() {
                    t = _mm512_fmadd_ps(_mm512_set1_ps(x[q * m + r]), *bq, t);
                }
                _mm512_storeu_ps(p, t);
            }
        }
        j += 16;
    }
    for j in j..n {
        for (r, yr) in y.iter_mut().enumerate() {
            let mut t = yr[j];
            for (q, bq) in b.iter().enumerate() {
                t = x[q * m + r].mul_add(bq[j].to_f32(), t);
            }
            yr[j] = t;
        }
    }
}

/// [`StoreBlock::run`] compiled for AVX-512, for every kernel whose token
/// proves it (`avx512`, `avx512bf16`, `amx`): the epilogue's loops (scale,
/// bias, activation, the count of non-finite outputs) use 512-bit vectors
/// instead of the baseline's SSE2.
#[target_feature(enable = "avx,avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")]
pub(crate) fn store_block<K: Microkernel + RowOps, C: Element>(
    kern: K,
    job: &StoreBlock<'_, C>,
) -> usize {
    job.run(kern)
}

/// [`RowOps::pack_pairs`]: per 16 lanes and 16 slots, 16 runs of 16 bf16
/// pairs loaded as 32-bit words, a 16 x 16 transpose, and each slot's 16
/// lanes stored at its place; the slots past the last 16 pair by pair.
/// Moving one pair at a time with a store per pair made packing a
/// column-major B slower than the GEMM that follows it on 16 AMX cores.
///
/// [`RowOps::pack_pairs`]: crate::kernel::gemm::RowOps::pack_pairs
#[target_feature(enable = "avx512f")]
pub(crate) fn pack_pairs(rows: &[&[half::bf16]], w: usize, dst: &mut [f32]) -> bool {
    let depth = rows.first().map_or(0, |r| r.len());
    let slots = depth.div_ceil(2);
    if rows.len() > w
        || !(w.is_multiple_of(16) || w < 16)
        || rows.iter().any(|r| r.len() != depth)
        || dst.len() < slots * w
    {
        return false;
    }
    let blocked = depth / 32 * 16; // slots in whole blocks of 16
    for (l0, group) in (0..).step_by(16).zip(rows.chunks(16)) {
        for s0 in (0..blocked).step_by(16) {
            let mut r = [_mm512_setzero_si512(); 16];
            for (v, run) in r.iter_mut().zip(group) {
                // Each run's line 512 bytes ahead (into the next KC block
                // of the column, which the next call packs).
                let ahead = run.as_ptr().wrapping_add(2 * s0 + PAIRS_AHEAD);
                _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
                // SAFETY: bf16 2 s0 .. 2 s0 + 32 <= 2 blocked <= depth =
                // run.len(): 64 bytes read.
                *v = unsafe { _mm512_loadu_si512(run.as_ptr().add(2 * s0).cast()) };
            }
            for (i, v) in transpose_16x16(r).into_iter().enumerate() {
                // Lanes l0 .. l0 + min(w, 16) <= w (16 | w and l0 < w, or l0 = 0).
                // SAFETY: s0 + i < slots: they end by slots w <= dst.len().
                unsafe { store_lanes(dst.as_mut_ptr().add((s0 + i) * w + l0), w, v) };
            }
        }
        for s in blocked..slots {
            for (lane, run) in group.iter().enumerate() {
                let lo = u32::from(run[2 * s].to_bits());
                let hi = run.get(2 * s + 1).map_or(0, |x| u32::from(x.to_bits()));
                dst[s * w + l0 + lane] = f32::from_bits(lo | hi << 16);
            }
        }
    }
    true
}

/// Stores the 16 words of `v` at `dst`, or only the first `w` where a
/// panel is narrower than 16 lanes (A~'s `MR`).
///
/// # Safety
///
/// `dst` is valid for `w.min(16)` writes of 4 bytes.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn store_lanes(dst: *mut f32, w: usize, v: __m512i) {
    if w >= 16 {
        // SAFETY: 16 words, by the caller's contract.
        unsafe { _mm512_storeu_si512(dst.cast(), v) }
    } else {
        let mask = ((1u32 << w) - 1) as u16;
        // SAFETY: the first w words only (masked), by the contract.
        unsafe { _mm512_mask_storeu_epi32(dst.cast(), mask, v) }
    }
}

/// bf16 ahead of the pairs being packed that [`pack_pairs`] prefetches.
const PAIRS_AHEAD: usize = 256;

/// [`RowOps::pack_rows`] for a panel of a multiple of 16 lanes (B~ of a B
/// with contiguous columns, as `Linear` weights, in the f32 format) or of
/// fewer (A~ of a row-major A, `MR` lanes): per 16 lanes and 16 slots, 16
/// values of each row widened (zero for missing rows), a 16 x 16
/// transpose, and each slot's lanes stored at its place; the slots past
/// the last 16 one by one. Element by element, the packing of such a B
/// cost more than the products for a few dozen rows of A, and A~'s was a
/// visible part of a square f32 GEMM (BENCHMARKS.md, "Small-m paths up to
/// 128 rows" and "A~ packed by transposes on AVX-512"). Other widths
/// return `false`.
///
/// [`RowOps::pack_rows`]: crate::kernel::gemm::RowOps::pack_rows
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")]
fn pack_rows<T: Element>(rows: &[&[T]], w: usize, dst: &mut [f32]) -> bool {
    let depth = rows.first().map_or(0, |r| r.len());
    if rows.len() > w
        || !(w.is_multiple_of(16) || w < 16)
        || rows.iter().any(|r| r.len() != depth)
        || dst.len() < depth * w
    {
        return false;
    }
    let blocked = depth / 16 * 16;
    let ahead = PAIRS_AHEAD * 2 / size_of::<T>();
    for (l0, group) in (0..).step_by(16).zip(rows.chunks(16)) {
        for s0 in (0..blocked).step_by(16) {
            let mut r = [_mm512_setzero_si512(); 16];
            for (v, row) in r.iter_mut().zip(group) {
                // Each row's line 512 bytes ahead (into the next KC block
                // of the column, which the next call packs).
                _mm_prefetch::<_MM_HINT_T0>(row.as_ptr().wrapping_add(s0 + ahead).cast());
                let p = row.as_ptr().wrapping_add(s0);
                // SAFETY: s0 + 16 <= blocked <= depth = row.len(): 16
                // elements read.
                *v = unsafe {
                    match T::DTYPE {
                        DType::F32 => _mm512_loadu_si512(p.cast()),
                        DType::F16 => {
                            _mm512_castps_si512(_mm512_cvtph_ps(_mm256_loadu_si256(p.cast())))
                        }
                        // A plain shift, as `widen` does it.
                        _ => _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm256_loadu_si256(
                            p.cast(),
                        ))),
                    }
                };
            }
            for (i, v) in transpose_16x16(r).into_iter().enumerate() {
                // SAFETY: l0 + min(w, 16) <= w (as in `pack_pairs`) and
                // s0 + i < depth: the lanes end by depth w <= dst.len().
                unsafe { store_lanes(dst.as_mut_ptr().add((s0 + i) * w + l0), w, v) };
            }
        }
        for s in blocked..depth {
            for (lane, row) in group.iter().enumerate() {
                dst[s * w + l0 + lane] = row[s].to_f32();
            }
        }
    }
    true
}

/// Column `c` of the 16 x 16 matrix of 32-bit words whose row `i` is
/// `r[i]`, as vector `c`: words interleaved within 128-bit lanes (rows in
/// pairs, then in fours), then the lanes gathered across vectors.
#[inline]
#[target_feature(enable = "avx512f")]
fn transpose_16x16(r: [__m512i; 16]) -> [__m512i; 16] {
    let mut a = r;
    for i in 0..8 {
        a[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        a[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    // Lane L of b[4i + j]: word 4L + j of rows 4i..4i + 4.
    let mut b = a;
    for i in 0..4 {
        b[4 * i] = _mm512_unpacklo_epi64(a[4 * i], a[4 * i + 2]);
        b[4 * i + 1] = _mm512_unpackhi_epi64(a[4 * i], a[4 * i + 2]);
        b[4 * i + 2] = _mm512_unpacklo_epi64(a[4 * i + 1], a[4 * i + 3]);
        b[4 * i + 3] = _mm512_unpackhi_epi64(a[4 * i + 1], a[4 * i + 3]);
    }
    let mut t = b;
    for j in 0..4 {
        let c0 = _mm512_shuffle_i32x4::<0x44>(b[j], b[4 + j]);
        let c1 = _mm512_shuffle_i32x4::<0xee>(b[j], b[4 + j]);
        let c2 = _mm512_shuffle_i32x4::<0x44>(b[8 + j], b[12 + j]);
        let c3 = _mm512_shuffle_i32x4::<0xee>(b[8 + j], b[12 + j]);
        t[j] = _mm512_shuffle_i32x4::<0x88>(c0, c2);
        t[4 + j] = _mm512_shuffle_i32x4::<0xdd>(c0, c2);
        t[8 + j] = _mm512_shuffle_i32x4::<0x88>(c1, c3);
        t[12 + j] = _mm512_shuffle_i32x4::<0xdd>(c1, c3);
    }
    t
}

/// Widens a contiguous run: f16 through `vcvtph2ps`, bf16 by a shift
/// (LLVM vectorizes the loop), f32 by a copy.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")]
pub(crate) fn widen(src: Slice<'_>, dst: &mut [f32]) {
    match src {
        Slice::F32(s) => dst.copy_from_slice(s),
        Slice::Bf16(s) => {
            // A plain shift: a signalling NaN stays signalling here, and
            // becomes quiet in the first arithmetic operation, so the GEMM's
            // results match the scalar path's (which quiets first).
            let n = s.len().min(dst.len());
            let mut i = 0;
            while i + 16 <= n {
                // SAFETY: i + 16 <= n <= both lengths: 16 bf16 (32 bytes) read,
                // 16 f32 written, unaligned access.
                unsafe {
                    let h = _mm256_loadu_si256(s.as_ptr().add(i).cast());
                    let w = _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h));
                    _mm512_storeu_ps(dst.as_mut_ptr().add(i), _mm512_castsi512_ps(w));
                }
                i += 16;
            }
            for (d, x) in dst[i..n].iter_mut().zip(&s[i..n]) {
                *d = x.to_f32();
            }
        }
        Slice::F16(s) => {
            let n = s.len().min(dst.len());
            let mut i = 0;
            while i + 16 <= n {
                // SAFETY: i + 16 <= n <= both lengths: 16 f16 (32 bytes)
                // read from `s`, 16 f32 written to `dst`, unaligned access.
                unsafe {
                    let h = _mm256_loadu_si256(s.as_ptr().add(i).cast());
                    _mm512_storeu_ps(dst.as_mut_ptr().add(i), _mm512_cvtph_ps(h));
                }
                i += 16;
            }
            for (d, x) in dst[i..n].iter_mut().zip(&s[i..n]) {
                *d = x.to_f32();
            }
        }
    }
}

/// Rounds to f16 with `vcvtps2ph` (nearest-even; subnormals and NaN
/// payloads as the scalar oracle, since MXCSR's FTZ/DAZ are left off).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")]
pub(crate) fn narrow_f16(src: &[f32], dst: &mut [half::f16]) {
    let n = src.len().min(dst.len());
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: i + 16 <= n <= both lengths: 16 f32 read, 16 f16 written.
        unsafe {
            let v = _mm512_loadu_ps(src.as_ptr().add(i));
            let h = _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
            _mm256_storeu_si256(dst.as_mut_ptr().add(i).cast(), h);
        }
        i += 16;
    }
    for (d, x) in dst[i..n].iter_mut().zip(&src[i..n]) {
        *d = <half::f16 as Element>::from_f32(*x);
    }
}
