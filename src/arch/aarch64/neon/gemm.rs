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
use crate::arch::generic::gemv::{GemvBlock, block_cols, takes};
use crate::element::Element;
use crate::kernel::gemm::{
    Format, Microkernel, RowOps, generic_axpy_rows, generic_axpy_rows4, generic_gemv_block,
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
