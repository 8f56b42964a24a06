//! AVX512_BF16 GEMM microkernel: `vdpbf16ps` over K-pair-interleaved bf16
//! panels ([`Format::Bf16Pairs`]), a 14 x 32 tile.
//!
//! Numerics: per lane and pair, `vdpbf16ps` computes
//! `RNE(RNE(c + a[2s+1] b[2s+1]) + a[2s] b[2s])` (each product exact) and
//! **flushes denormal inputs, accumulators and results to zero**. So bf16
//! subnormals in A or B count as zero on this kernel, and partial sums
//! below 2^-126 vanish; every other result is within the crate's bound.
//! It is slower than widening to f32 and FMA on Intel, so there the
//! `avx512bf16` backend widens instead (see `dot_is_faster`); this kernel
//! runs where it wins (AMD Zen 4+) or when forced.

use core::arch::x86_64::*;

use super::super::Avx512Bf16;
use super::super::avx512::gemm as base;
use crate::element::Element;
use crate::kernel::gemm::StoreBlock;
use crate::kernel::gemm::{Format, Microkernel, RowOps};

/// The `vdpbf16ps` microkernel.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx512Dot(pub(crate) Avx512Bf16);

impl Microkernel for Avx512Dot {
    const MR: usize = 14;
    const NR: usize = 32;
    const FORMAT: Format = Format::Bf16Pairs;
    const NAME: &'static str = "avx512bf16-dpbf16-14x32";

    #[inline(always)]
    fn kernel(self, slots: usize, a: &[f32], b: &[f32], tile: &mut [f32], accumulate: bool) {
        // SAFETY: the token proves AVX-512 F/BW/VL/DQ and AVX512_BF16.
        unsafe { kernel(slots, a, b, tile, accumulate) }
    }

    #[inline(always)]
    fn store_block<C: Element>(self, job: &StoreBlock<'_, C>) -> usize
    where
        Self: RowOps,
    {
        // SAFETY: the token proves every feature `base::store_block` enables.
        unsafe { base::store_block(self, job) }
    }
}

impl RowOps for Avx512Dot {
    const PAIRS_ROWS: usize = PAIRS_ROWS;
    // Two passes over each panel, the second from L2: faster than the
    // 14 x 32 tile for up to 16 rows on Zen 4 (BENCHMARKS.md).
    const PAIRS_MAX_M: usize = 2 * PAIRS_ROWS;

    #[inline(always)]
    fn pairs_panel(self, m: usize, a: &[f32], b: &[f32], out: &mut [f32]) -> bool {
        // SAFETY: the token proves AVX-512 F/BW/VL/DQ and AVX512_BF16.
        unsafe { pairs_panel(m, a, b, out) }
    }

    #[inline(always)]
    fn widen<T: Element>(self, src: &[T], dst: &mut [f32]) {
        // SAFETY: the token proves AVX-512 F/BW/VL/DQ and AVX512_BF16 (a
        // superset of AVX-512's features).
        unsafe { base::widen(T::slice(src), dst) }
    }

    #[inline(always)]
    fn pack_pairs(self, rows: &[&[half::bf16]], w: usize, dst: &mut [f32]) -> bool {
        // SAFETY: as above.
        unsafe { base::pack_pairs(rows, w, dst) }
    }

    #[inline(always)]
    fn narrow_f16(self, src: &[f32], dst: &mut [half::f16]) {
        // SAFETY: as above.
        unsafe { base::narrow_f16(src, dst) }
    }

    #[inline(always)]
    fn axpy_rows(self, x: &[f32], b: &[f32], y: &mut [&mut [f32]]) {
        base::Avx512F32(self.0.avx512()).axpy_rows(x, b, y);
    }

    #[inline(always)]
    fn axpy_rows4(self, x: &[f32], b: [&[f32]; 4], y: &mut [&mut [f32]]) {
        base::Avx512F32(self.0.avx512()).axpy_rows4(x, b, y);
    }

    #[inline(always)]
    fn axpy_rows4_widen<T: Element>(
        self,
        x: &[f32],
        b: [&[T]; 4],
        tmp: &mut [f32],
        y: &mut [&mut [f32]],
    ) {
        base::Avx512F32(self.0.avx512()).axpy_rows4_widen(x, b, tmp, y);
    }
}

const MR: usize = 14;
const NR: usize = 32;

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c")]
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
        // SAFETY: this function's features; s < slots, so (s + 1) * NR <=
        // b.len() and (s + 1) * MR <= a.len() (asserted above).
        unsafe { dot_slot(&mut acc, bp.add(s * NR), ap.add(s * MR)) };
    }
    for (i, row) in acc.iter().enumerate() {
        for (h, v) in row.iter().enumerate() {
            // SAFETY: i * NR + h * 16 + 16 <= MR * NR <= tile.len().
            unsafe { _mm512_storeu_ps(tile.as_mut_ptr().add(i * NR + h * 16), *v) };
        }
    }
}

/// One slot for the `M` rows of `acc`: `acc[i][h] += pairs[i] . b[16h..]`
/// (each lane two bf16 products, `vdpbf16ps`), the step of both kernels.
///
/// # Safety
///
/// The caller has AVX-512 F and AVX512_BF16 (a `#[target_feature]`
/// function, into which this inlines); `b` is valid for 32 f32 reads and
/// `pairs` for `M`.
#[inline(always)]
unsafe fn dot_slot<const M: usize>(acc: &mut [[__m512; 2]; M], b: *const f32, pairs: *const f32) {
    // The transmutes read 16 f32 slots as the 32 bf16 they were packed
    // from (core::arch has no cast between the two).
    // SAFETY: the caller's contract (features, reads); both types are 64
    // plain bytes.
    unsafe {
        let b0 = core::mem::transmute::<__m512, __m512bh>(_mm512_loadu_ps(b));
        let b1 = core::mem::transmute::<__m512, __m512bh>(_mm512_loadu_ps(b.add(16)));
        for (i, row) in acc.iter_mut().enumerate() {
            let av = core::mem::transmute::<__m512, __m512bh>(_mm512_set1_ps(*pairs.add(i)));
            row[0] = _mm512_dpbf16_ps(row[0], av, b0);
            row[1] = _mm512_dpbf16_ps(row[1], av, b1);
        }
    }
}

/// Most rows of A in one pass of [`pairs_panel`]: two accumulators per row
/// (32 lanes), 16 of the 32 registers.
pub(crate) const PAIRS_ROWS: usize = 8;

/// [`RowOps::pairs_panel`] for `m <= PAIRS_ROWS` rows: one pass over the
/// panel, `vdpbf16ps` slot by slot from zero, as [`kernel`] sums each row
/// of its tile (so the same bits).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")]
pub(crate) fn pairs_panel(m: usize, a: &[f32], b: &[f32], out: &mut [f32]) -> bool {
    match m {
        1 => pairs_rows::<1>(a, b, out),
        2 => pairs_rows::<2>(a, b, out),
        3 => pairs_rows::<3>(a, b, out),
        4 => pairs_rows::<4>(a, b, out),
        5 => pairs_rows::<5>(a, b, out),
        6 => pairs_rows::<6>(a, b, out),
        7 => pairs_rows::<7>(a, b, out),
        8 => pairs_rows::<8>(a, b, out),
        _ => return false,
    }
    true
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")]
fn pairs_rows<const M: usize>(a: &[f32], b: &[f32], out: &mut [f32]) {
    let slots = b.len() / NR;
    // Divisions, not products: a huge `slots` must not wrap past the check.
    assert!(slots <= a.len() / M && out.len() >= M * NR);
    let mut acc = [[_mm512_setzero_ps(); 2]; M];
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    for s in 0..slots {
        // SAFETY: this function's features; s < slots = b.len() / NR and
        // slots <= a.len() / M (asserted above).
        unsafe { dot_slot(&mut acc, bp.add(s * NR), ap.add(s * M)) };
    }
    for (i, row) in acc.iter().enumerate() {
        for (h, v) in row.iter().enumerate() {
            // SAFETY: i * NR + h * 16 + 16 <= M * NR <= out.len().
            unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(i * NR + h * 16), *v) };
        }
    }
}

/// Whether `vdpbf16ps` beats widening to f32 + FMA on this CPU: on AMD
/// Zen 4 it issues at twice the f32 FMA throughput, on Intel
/// Sapphire/Emerald Rapids at half of it, so Intel widens (BENCHMARKS.md,
/// Other machines). Unknown vendors widen: never far behind the dot
/// kernel, and no denormal flushing.
pub(crate) fn dot_is_faster() -> bool {
    crate::arch::x86_64::amd()
}
