//! NEON GEMM microkernel: f32 FMLA over panels packed as f32 (bf16 and f16
//! widened while packing), an 8 x 12 tile.
//!
//! Register budget (32 q registers): 24 accumulators (8 rows x 3 q of 4
//! columns), 2 q of A (8 rows) and 3 q of B (12 columns) per k step: 29.
//! Each k step is 5 loads and 24 `FMLA (by element)`, the A value taken
//! straight from a lane of its q register (`vfmaq_laneq_f32`), so no
//! broadcasts. Neoverse-class cores (N1/N2/V1/V2: 2 to 4 FMLA pipes of 4
//! cycles latency) need 8 to 16 independent accumulators to hide the
//! latency and at most one load per 4 FMLAs; 24 accumulators and 5 loads
//! per 24 FMLAs leave room on both. 8 x 12 rather than 12 x 8: the same
//! ratio, but row-major tiles of 12 columns store as 3 whole q per row.
//! (Its speed is untested: see BENCHMARKS.md, Other machines.)
//!
//! Numerics: one fused multiply-add per product, in k order, exactly as
//! the x86 FMA kernels and the small-m path (`axpy_rows`), so the packed
//! and the small-m paths give the same bits.
//!
//! Not used: `FMLAL`/`FMLAL2` (FEAT_FHM, f16 x f16 widened and added to
//! f32 with one rounding). Its products are exact, so it would give the
//! same bits as widening while packing; but each instruction still does 4
//! multiply-adds (the low or high half of 8 f16 lanes), the FMLA rate, so it
//! only halves the size of packed panels, at the price of a second packing
//! format, and Rust's `vfmlalq_*_f16` intrinsics are unstable (they take
//! `float16x8_t`). Widening while packing costs O(k (m + n)) against the
//! kernel's O(m n k).

use core::arch::aarch64::*;

use super::super::Neon;
use crate::element::{DType, Element};
use crate::kernel::gemm::{
    Format, Microkernel, RowOps, gemv_block_shape, generic_axpy_rows, generic_axpy_rows4,
    generic_gemv_block,
};

/// The NEON f32-FMLA microkernel.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NeonF32(pub(crate) Neon);

impl Microkernel for NeonF32 {
    const MR: usize = MR;
    const NR: usize = NR;
    const FORMAT: Format = Format::F32;
    const NAME: &'static str = "neon-f32fmla-8x12";

    #[inline(always)]
    fn kernel(self, slots: usize, a: &[f32], b: &[f32], tile: &mut [f32], accumulate: bool) {
        // SAFETY: the token proves NEON.
        unsafe { kernel(slots, a, b, tile, accumulate) }
    }
}

impl RowOps for NeonF32 {
    #[inline(always)]
    fn axpy_rows(self, x: &[f32], b: &[f32], y: &mut [&mut [f32]]) {
        // SAFETY: the token proves NEON.
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
        // The accumulators in 32 KiB; for one row up to 8192 columns, so
        // a B row is read from start to end in one stream.
        (8192 / mp.max(1)).clamp(16, 8192) / 16 * 16
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
        // SAFETY: the token proves NEON.
        unsafe { gemv_tiled(x, mp, b, rs, y) }
    }
}

/// [`RowOps::gemv_block`] for the row counts [`RowOps::gemv_rows`] gives
/// (1, 2, 4, 8, 16): the tile of each (as the AVX kernels, with 4-lane
/// vectors; its speed is untested, see the module docs).
#[target_feature(enable = "neon")]
fn gemv_tiled<T: Element>(x: &[f32], mp: usize, b: &[T], rs: usize, y: &mut [f32]) {
    match mp {
        1 => gemv_tiles::<T, 1, 16, 1>(x, b, rs, y),
        2 => gemv_tiles::<T, 2, 8, 1>(x, b, rs, y),
        4 => gemv_tiles::<T, 4, 4, 1>(x, b, rs, y),
        8 => gemv_tiles::<T, 8, 3, 1>(x, b, rs, y),
        16 => gemv_tiles::<T, 8, 3, 2>(x, b, rs, y),
        _ => unreachable!("gemv_tiled: {mp} rows"),
    }
}

/// [`RowOps::gemv_block`] with `G` groups of `R` rows, each an `R x 4V`
/// tile of accumulators in registers: per pass of 8 B rows (16 for 16
/// rows) and strip of `4V` columns, each group loads its tile from `y`
/// (zeros on the first pass), adds the pass's rows in k order (one FMLA
/// per product; B widened in registers: bf16 by a shift, f16 by `FCVTL`,
/// exact as `to_f32`), and stores it back. The last columns take strips of
/// one vector, the final partial one through a buffer.
#[target_feature(enable = "neon")]
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
    let kb = if R * G >= 16 { 16 } else { 8 };
    let mut l0 = 0;
    while l0 < k {
        let l1 = (l0 + kb).min(k);
        let mut j = 0;
        while j + 4 * V <= w {
            for g in 0..G {
                gemv_strip::<T, R, V, G>(x, b, rs, y, w, j, l0, l1, g, 4);
            }
            j += 4 * V;
        }
        while j < w {
            for g in 0..G {
                gemv_strip::<T, R, 1, G>(x, b, rs, y, w, j, l0, l1, g, (w - j).min(4));
            }
            j += 4;
        }
        l0 = l1;
    }
}

/// One strip of [`gemv_tiles`]: rows `g * R..(g + 1) * R` of the tile,
/// columns `j..j + 4V` (or `lanes < 4` of them, with `V = 1`), B rows
/// `l0..l1`.
#[inline]
#[target_feature(enable = "neon")]
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
    let full = lanes == 4;
    let width = if full { 4 * V } else { lanes };
    // Checked here too (cheap beside a strip): the raw accesses rely on it.
    assert!(l0 < l1 && l1 * mp <= x.len() && j + width <= w && mp * w <= y.len() && g < G);
    assert!((l1 - 1) * rs + w <= b.len());
    let mut acc = [[vdupq_n_f32(0.0); V]; R];
    if l0 > 0 {
        for (r, row) in acc.iter_mut().enumerate() {
            let at = (g * R + r) * w + j;
            for (v, a) in row.iter_mut().enumerate() {
                *a = if full {
                    // SAFETY: at + 4v + 4 <= mp w <= y.len() (asserted).
                    unsafe { vld1q_f32(y.as_ptr().add(at + 4 * v)) }
                } else {
                    let mut t = [0.0f32; 4];
                    t[..lanes].copy_from_slice(&y[at..at + lanes]);
                    // SAFETY: `t` holds 4 floats.
                    unsafe { vld1q_f32(t.as_ptr()) }
                };
            }
        }
    }
    let bp = b.as_ptr();
    for l in l0..l1 {
        let row = l * rs + j;
        let mut bv = [vdupq_n_f32(0.0); V];
        for (v, bq) in bv.iter_mut().enumerate() {
            *bq = if full {
                // 4 elements at (l, j + 4v).
                // SAFETY: l < l1 <= k, so row + 4v + 4 <= (k - 1) rs + w <=
                // b.len() (asserted).
                unsafe {
                    let p = bp.add(row + 4 * v);
                    match T::DTYPE {
                        DType::F32 => vld1q_f32(p.cast()),
                        DType::F16 => widen_f16(vld1_u16(p.cast())),
                        _ => vreinterpretq_f32_u32(vshll_n_u16::<16>(vld1_u16(p.cast()))),
                    }
                }
            } else {
                let mut t = [0.0f32; 4];
                for (d, s) in t.iter_mut().zip(&b[row..row + lanes]) {
                    *d = s.to_f32();
                }
                // SAFETY: `t` holds 4 floats.
                unsafe { vld1q_f32(t.as_ptr()) }
            };
        }
        let xl = &x[l * mp + g * R..l * mp + g * R + R];
        for (row, &xr) in acc.iter_mut().zip(xl) {
            for (a, bq) in row.iter_mut().zip(&bv) {
                *a = vfmaq_n_f32(*a, *bq, xr);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        let at = (g * R + r) * w + j;
        for (v, a) in row.iter().enumerate() {
            if full {
                // SAFETY: as for the loads of the tile above.
                unsafe { vst1q_f32(y.as_mut_ptr().add(at + 4 * v), *a) };
            } else {
                let mut t = [0.0f32; 4];
                // SAFETY: `t` holds 4 floats.
                unsafe { vst1q_f32(t.as_mut_ptr(), *a) };
                y[at..at + lanes].copy_from_slice(&t[..lanes]);
            }
        }
    }
}

/// Four f16 (as bits) to f32 with `FCVTL`: exact, as `f16::to_f32` (Rust's
/// `float16x4_t` intrinsics are unstable).
#[inline]
#[target_feature(enable = "neon")]
fn widen_f16(h: uint16x4_t) -> float32x4_t {
    let out: float32x4_t;
    // SAFETY: FCVTL reads one vector register and writes another; no
    // memory, no flags beyond FPSR's cumulative exception bits.
    unsafe {
        core::arch::asm!(
            "fcvtl {out:v}.4s, {h:v}.4h",
            out = lateout(vreg) out,
            h = in(vreg) h,
            options(pure, nomem, nostack)
        );
    }
    out
}

const MR: usize = 8;
const NR: usize = 12;

#[target_feature(enable = "neon")]
fn kernel(slots: usize, a: &[f32], b: &[f32], tile: &mut [f32], accumulate: bool) {
    // Divisions, not products: a huge `slots` must not wrap past the check.
    assert!(slots <= a.len() / MR && slots <= b.len() / NR && tile.len() >= MR * NR);
    let mut acc = [[vdupq_n_f32(0.0); NR / 4]; MR];
    if accumulate {
        for (i, row) in acc.iter_mut().enumerate() {
            for (h, v) in row.iter_mut().enumerate() {
                // SAFETY: i * NR + h * 4 + 4 <= MR * NR <= tile.len().
                *v = unsafe { vld1q_f32(tile.as_ptr().add(i * NR + h * 4)) };
            }
        }
    }
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    for s in 0..slots {
        // SAFETY: s < slots, so (s + 1) * MR <= a.len() and
        // (s + 1) * NR <= b.len() (asserted above).
        let (a0, a1, bv) = unsafe {
            (
                vld1q_f32(ap.add(s * MR)),
                vld1q_f32(ap.add(s * MR + 4)),
                [
                    vld1q_f32(bp.add(s * NR)),
                    vld1q_f32(bp.add(s * NR + 4)),
                    vld1q_f32(bp.add(s * NR + 8)),
                ],
            )
        };
        // Row i takes lane i % 4 of a0 (rows 0..4) or a1 (rows 4..8).
        macro_rules! row {
            ($i:literal, $a:ident, $lane:literal) => {
                for h in 0..NR / 4 {
                    acc[$i][h] = vfmaq_laneq_f32::<$lane>(acc[$i][h], bv[h], $a);
                }
            };
        }
        row!(0, a0, 0);
        row!(1, a0, 1);
        row!(2, a0, 2);
        row!(3, a0, 3);
        row!(4, a1, 0);
        row!(5, a1, 1);
        row!(6, a1, 2);
        row!(7, a1, 3);
    }
    for (i, row) in acc.iter().enumerate() {
        for (h, v) in row.iter().enumerate() {
            // SAFETY: i * NR + h * 4 + 4 <= MR * NR <= tile.len().
            unsafe { vst1q_f32(tile.as_mut_ptr().add(i * NR + h * 4), *v) };
        }
    }
}

/// `f32::mul_add` is one `FMADD`/`FMLA` on aarch64, so LLVM vectorizes this
/// into fused FMLA over 4 lanes.
#[target_feature(enable = "neon")]
fn axpy_rows(x: &[f32], b: &[f32], y: &mut [&mut [f32]]) {
    generic_axpy_rows(x, b, y, f32::mul_add);
}

/// Four fused steps of `axpy_rows` (the small-m path's main loop).
#[target_feature(enable = "neon")]
fn axpy_rows4(x: &[f32], b: [&[f32]; 4], y: &mut [&mut [f32]]) {
    generic_axpy_rows4(x, b, y, f32::mul_add);
}
