//! AVX2 + FMA GEMM microkernel: f32 FMA over panels packed as f32, a 6 x 16
//! tile (12 ymm accumulators, two ymm of B, one broadcast: 15 of 16).

use core::arch::x86_64::*;

use super::super::Avx2;
use crate::arch::generic::gemv::{GemvBlock, block_cols, takes};
use crate::element::{DType, Element, Slice};
use crate::kernel::gemm::StoreBlock;
use crate::kernel::gemm::{
    Ahead, Blocking, Format, Microkernel, RowOps, generic_axpy_rows, generic_axpy_rows4,
    generic_gemv_block,
};

/// The AVX2 f32-FMA microkernel.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2F32(pub(crate) Avx2);

impl Microkernel for Avx2F32 {
    const MR: usize = MR;
    const NR: usize = NR;
    const FORMAT: Format = Format::F32;
    const NAME: &'static str = "avx2-f32fma-6x16";
    // The kernel prefetches only for `Ahead::PanelAndTile`: each core's
    // private L2 wants it on several threads as much as on one.
    const BLOCKING: Blocking = Blocking {
        tile_prefetch_on_threads: true,
        ..Blocking::BLIS
    };

    #[inline(always)]
    fn kernel(self, slots: usize, a: &[f32], b: &[f32], tile: &mut [f32], accumulate: bool) {
        // SAFETY: the token proves AVX2, FMA and F16C.
        unsafe { kernel(slots, a, b, tile, accumulate, Ahead::Nothing) }
    }

    #[inline(always)]
    fn kernel_then(
        self,
        slots: usize,
        a: &[f32],
        b: &[f32],
        tile: &mut [f32],
        accumulate: bool,
        ahead: Ahead<'_>,
    ) {
        // SAFETY: the token proves AVX2, FMA and F16C.
        unsafe { kernel(slots, a, b, tile, accumulate, ahead) }
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
    // Where packing B stops costing more than streaming it for each 16
    // rows of A (BENCHMARKS.md, "Small-m paths up to 128 rows").
    const SMALL_M_ROW: usize = 48;
    const SMALL_M_DOT: usize = 48;

    #[inline(always)]
    fn widen<T: Element>(self, src: &[T], dst: &mut [f32]) {
        // SAFETY: the token proves AVX2, FMA and F16C.
        unsafe { widen(T::slice(src), dst) }
    }

    #[inline(always)]
    fn pack_rows<T: Element>(self, rows: &[&[T]], w: usize, dst: &mut [f32]) -> bool {
        // SAFETY: the token proves AVX2, FMA and F16C.
        (w == MR || w == NR) && unsafe { pack_rows(rows, w, dst) }
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
        // 16 rows reload their accumulators three times a pass (a group
        // of rows each): half of L1 keeps them there with the pass's B
        // rows and A beside them (the whole of L1 was slower: BENCHMARKS.md,
        // "Fifth session on the Zen 4 VM").
        block_cols(mp, if mp >= 16 { 4096 } else { 8192 })
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

const MR: usize = 6;
const NR: usize = 16;

/// The 6 x 16 tile in 12 ymm accumulators (two loads of B~ and six
/// broadcasts of A~ per slot), with intrinsics so that it can issue the
/// prefetches of [`Ahead::PanelAndTile`] (one thread): the next call's
/// accumulator tile into L1 and this call's share of the next B~
/// micro-panel into L2, where a block's tile workspace (up to 672 KiB)
/// outgrows a small L2. Where it fits, the generic kernel (the same loop
/// without them) was as fast (docs/tried.md).
#[target_feature(enable = "avx2,fma,f16c")]
fn kernel(
    slots: usize,
    a: &[f32],
    b: &[f32],
    tile: &mut [f32],
    accumulate: bool,
    ahead: Ahead<'_>,
) {
    // Divisions, not products: a huge `slots` must not wrap past the check.
    assert!(slots <= a.len() / MR && slots <= b.len() / NR && tile.len() >= MR * NR);
    if let Ahead::PanelAndTile { b_share, next_tile } = ahead {
        for o in (0..MR * NR).step_by(16) {
            // A prefetch never faults: `next_tile` needs to point nowhere.
            _mm_prefetch::<_MM_HINT_T0>(next_tile.wrapping_add(o).cast());
        }
        for o in (0..b_share.len()).step_by(16) {
            _mm_prefetch::<_MM_HINT_T1>(b_share[o..].as_ptr().cast());
        }
    }
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    if accumulate {
        for (i, row) in acc.iter_mut().enumerate() {
            for (h, v) in row.iter_mut().enumerate() {
                // SAFETY: i * NR + h * 8 + 8 <= MR * NR <= tile.len().
                *v = unsafe { _mm256_loadu_ps(tile.as_ptr().add(i * NR + h * 8)) };
            }
        }
    }
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    for s in 0..slots {
        // SAFETY: s < slots, so (s + 1) * NR <= b.len() (asserted above).
        let (b0, b1) = unsafe {
            (
                _mm256_loadu_ps(bp.add(s * NR)),
                _mm256_loadu_ps(bp.add(s * NR + 8)),
            )
        };
        for (i, row) in acc.iter_mut().enumerate() {
            // SAFETY: s * MR + i < slots * MR <= a.len() (asserted above).
            let av = _mm256_set1_ps(unsafe { *ap.add(s * MR + i) });
            row[0] = _mm256_fmadd_ps(av, b0, row[0]);
            row[1] = _mm256_fmadd_ps(av, b1, row[1]);
        }
    }
    for (i, row) in acc.iter().enumerate() {
        for (h, v) in row.iter().enumerate() {
            // SAFETY: i * NR + h * 8 + 8 <= MR * NR <= tile.len().
            unsafe { _mm256_storeu_ps(tile.as_mut_ptr().add(i * NR + h * 8), *v) };
        }
    }
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
/// Packing a row-major B~ calls this once per slot, with one tile width
/// (`NR`) of f32: that copy has a fixed size, so it is two ymm moves
/// instead of a call to libc's `memcpy` per panel row, a large share of
/// the packing time (LLVM turns a copy loop of any length into that
/// call).
#[target_feature(enable = "avx2,fma,f16c")]
fn widen(src: Slice<'_>, dst: &mut [f32]) {
    match src {
        Slice::F32(s) => {
            if let (Ok(s), Ok(d)) = (
                <&[f32; NR]>::try_from(s),
                <&mut [f32; NR]>::try_from(&mut *dst),
            ) {
                *d = *s;
            } else {
                dst.copy_from_slice(s);
            }
        }
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

/// [`RowOps::pack_rows`] for an `MR`-lane panel (A~) or an `NR`-lane one
/// (B~ of a B with contiguous columns, as `Linear` weights): per 8 slots
/// and 8 lanes, 8 values of each row (zero for missing rows) in an 8 x 8
/// transpose, and each slot's 8 lanes stored at its place. In an `MR`
/// panel the 2 past `MR` are overwritten by the next slot (the last slot
/// of the panel stores 6 lanes, masked). The next panel's rows are
/// prefetched meanwhile: each panel reads only one KC block of its rows,
/// streams too short for the hardware prefetcher to catch before they end
/// (loads of A were about 70% of this pack).
#[target_feature(enable = "avx2,fma,f16c")]
fn pack_rows<T: Element>(rows: &[&[T]], w: usize, dst: &mut [f32]) -> bool {
    let depth = rows.first().map_or(0, |r| r.len());
    if !(w == MR || w == NR)
        || rows.len() > w
        || rows.iter().any(|r| r.len() != depth)
        || dst.len() < depth * w
    {
        return false;
    }
    let dst = &mut dst[..depth * w];
    let lanes_6 = _mm256_setr_epi32(-1, -1, -1, -1, -1, -1, 0, 0);
    // Bytes from one row to the next and from this panel to the next one
    // down, where the rows are evenly spaced (a row-major A, a column-major
    // B): the next panel's rows are prefetched as these are read.
    let addr = |i: usize| rows.get(i).map_or(0, |r| r.as_ptr() as usize);
    let row_step = addr(1).wrapping_sub(addr(0));
    let even = rows.len() == w && (2..w).all(|i| addr(i).wrapping_sub(addr(i - 1)) == row_step);
    let panel_step = if even { row_step.wrapping_mul(w) } else { 0 };
    for (l0, group) in (0..).step_by(8).zip(rows.chunks(8)) {
        let mut s = 0;
        while s + 8 <= depth {
            if even {
                for row in group {
                    // A prefetch never faults: past the last panel it may
                    // point anywhere.
                    let next = row.as_ptr().wrapping_add(s).wrapping_byte_add(panel_step);
                    _mm_prefetch::<_MM_HINT_T0>(next.cast());
                }
            }
            let mut r = [_mm256_setzero_ps(); 8];
            for (v, row) in r.iter_mut().zip(group) {
                // SAFETY: s + 8 <= depth = row.len(): 8 elements read.
                *v = unsafe {
                    let p = row.as_ptr().add(s);
                    match T::DTYPE {
                        DType::F32 => _mm256_loadu_ps(p.cast()),
                        DType::F16 => _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
                        // A plain shift, as `widen` does it.
                        _ => _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(
                            _mm_loadu_si128(p.cast()),
                        ))),
                    }
                };
            }
            let t = transpose_8x8(r);
            for (i, v) in t.iter().enumerate() {
                let at = (s + i) * w + l0;
                // The full store only where at + 8 <= dst.len(); past an
                // `MR` panel's last slot the mask writes lanes 0..6 only.
                // SAFETY: l0 + 8 <= w for `NR` (8 | NR), and l0 = 0 with 6
                // lanes for `MR`: at + min(8, w) <= (s + i + 1) w <= dst.len().
                unsafe {
                    let p = dst.as_mut_ptr().add(at);
                    if at + 8 <= dst.len() {
                        _mm256_storeu_ps(p, *v);
                    } else {
                        _mm256_maskstore_ps(p, lanes_6, *v);
                    }
                }
            }
            s += 8;
        }
        for s in s..depth {
            for (lane, row) in group.iter().enumerate() {
                dst[s * w + l0 + lane] = row[s].to_f32();
            }
        }
    }
    true
}

/// Row `i` of the result is column `i` of `r`.
#[inline]
#[target_feature(enable = "avx2")]
fn transpose_8x8(r: [__m256; 8]) -> [__m256; 8] {
    let t = [
        _mm256_unpacklo_ps(r[0], r[1]),
        _mm256_unpackhi_ps(r[0], r[1]),
        _mm256_unpacklo_ps(r[2], r[3]),
        _mm256_unpackhi_ps(r[2], r[3]),
        _mm256_unpacklo_ps(r[4], r[5]),
        _mm256_unpackhi_ps(r[4], r[5]),
        _mm256_unpacklo_ps(r[6], r[7]),
        _mm256_unpackhi_ps(r[6], r[7]),
    ];
    let u = [
        _mm256_shuffle_ps::<0x44>(t[0], t[2]),
        _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
        _mm256_shuffle_ps::<0x44>(t[1], t[3]),
        _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
        _mm256_shuffle_ps::<0x44>(t[4], t[6]),
        _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
        _mm256_shuffle_ps::<0x44>(t[5], t[7]),
        _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
    ];
    [
        _mm256_permute2f128_ps::<0x20>(u[0], u[4]),
        _mm256_permute2f128_ps::<0x20>(u[1], u[5]),
        _mm256_permute2f128_ps::<0x20>(u[2], u[6]),
        _mm256_permute2f128_ps::<0x20>(u[3], u[7]),
        _mm256_permute2f128_ps::<0x31>(u[0], u[4]),
        _mm256_permute2f128_ps::<0x31>(u[1], u[5]),
        _mm256_permute2f128_ps::<0x31>(u[2], u[6]),
        _mm256_permute2f128_ps::<0x31>(u[3], u[7]),
    ]
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
