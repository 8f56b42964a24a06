//! FEAT_BF16 GEMM microkernel: `BFMMLA` over bf16 panels packed as 2 x 4
//! blocks ([`Format::Bf16Quads`]), an 8 x 12 tile. `BFMMLA` has no stable
//! Rust intrinsic, so it is emitted with `asm!`, one instruction per
//! statement, and LLVM allocates the registers and schedules around it.
//!
//! One `BFMMLA Vd.4S, Vn.8H, Vm.8H` multiplies a 2 x 4 block of A (two rows,
//! four k) by a 4 x 2 block of B (four k, two columns; stored as its 2 x 4
//! transpose) into a 2 x 2 f32 block `[c(0,0), c(0,1), c(1,0), c(1,1)]`:
//! 16 multiply-adds, four times `FMLA`'s 4. The 8 x 12 tile is 4 row pairs
//! x 6 column pairs = 24 accumulators; per k-quad 4 q of A and 6 q of B are
//! loaded (30 of 32 registers live) for 24 `BFMMLA`. This is the shape
//! Arm's own bf16 GEMM kernels use on Neoverse V1/N2 (24 accumulators hide
//! `BFMMLA`'s latency on 2 to 4 vector pipes). Not measured: aarch64 runs
//! under qemu here, which says nothing about speed.
//!
//! # Numerics (where this kernel departs from the f32-FMA kernels)
//!
//! The Arm ARM defines `BFMMLA` as two `BFDotAdd` steps per output
//! (`BFMatMulAdd`: k pair 0, then k pair 1), and, without FEAT_EBF16 or
//! with `FPCR.EBF == 0` (the Linux default; this crate never sets it),
//! `BFDotAdd(c, a0, a1, b0, b1) = c + (a0 b0 + a1 b1)` evaluated as
//! `RO(c + RO(RO(a0 b0) + RO(a1 b1)))`, where `RO` is **round to odd**
//! (overflow still goes to infinity), the FPCR is ignored, denormal inputs
//! and results are **flushed to zero**, and any NaN result is the default
//! NaN. (QEMU's `bfdotadd` models exactly this; the tests run under it.)
//! Consequences:
//!
//! - The products of two bf16 are exact in f32 (8-bit significands), so
//!   `RO` of a product only matters at overflow/underflow.
//! - Round to odd errs by less than one ulp (2^-23 relative) instead of
//!   half an ulp, and there are two roundings per k pair. An output summed
//!   over k therefore sees at most `k/2 + 1` roundings of `2^-23` each
//!   along any product's path: `|C - C_exact| <= (k + 2) 2^-24 sum|a||b|`
//!   (to first order), within the crate's `c k 2^-24 sum|a||b|` with
//!   `c = 2` for every `k >= 2` (and exact for `k = 1`). The f32-FMA kernels
//!   round once per product at half an ulp (`k 2^-24`).
//! - bf16 subnormal inputs (below 2^-126) count as zero, and partial sums
//!   below 2^-126 vanish, as with `vdpbf16ps` on x86.
//! - NaN payloads are not kept (every NaN output is the default NaN); inf
//!   and NaN still reach every output they touch.
//! - With FEAT_EBF16 and `FPCR.EBF == 1` (set by the caller, never by us)
//!   the pair is summed with one rounding, nearest-even, honouring FPCR:
//!   at least as accurate, within the same bound.
//!
//! The `neonbf16` backend takes this kernel for bf16 inputs by default (it
//! does four times the multiply-adds per instruction of widening + `FMLA`);
//! `Gemm::dot_kernel(Some(false))` forces widening instead.

use core::arch::aarch64::*;
use core::arch::asm;

use super::super::NeonBf16;
use super::super::neon::gemm::NeonF32;
use crate::gemm::kernel::{Format, Microkernel};

/// The `BFMMLA` microkernel.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NeonBfmmla(pub(crate) NeonBf16);

impl Microkernel for NeonBfmmla {
    const MR: usize = MR;
    const NR: usize = NR;
    const FORMAT: Format = Format::Bf16Quads;
    const NAME: &'static str = "neonbf16-bfmmla-8x12";

    #[inline(always)]
    fn kernel(self, slots: usize, a: &[f32], b: &[f32], tile: &mut [f32], accumulate: bool) {
        // SAFETY: the token proves NEON and FEAT_BF16.
        unsafe { kernel(slots, a, b, tile, accumulate) }
    }

    #[inline(always)]
    fn axpy_rows(self, x: &[f32], b: &[f32], y: &mut [&mut [f32]]) {
        NeonF32(self.0.neon()).axpy_rows(x, b, y);
    }
}

const MR: usize = 8;
const NR: usize = 12;

/// `acc` (a 2 x 2 f32 block, row-major) from two rows of the row-major
/// `MR x NR` tile: rows `2p` and `2p + 1`, columns `4h..4h + 4` give the
/// blocks of column pairs `2h` and `2h + 1`.
#[target_feature(enable = "neon")]
#[inline]
fn to_blocks(r0: float32x4_t, r1: float32x4_t) -> (float32x4_t, float32x4_t) {
    let (r0, r1) = (vreinterpretq_f64_f32(r0), vreinterpretq_f64_f32(r1));
    (
        vreinterpretq_f32_f64(vzip1q_f64(r0, r1)),
        vreinterpretq_f32_f64(vzip2q_f64(r0, r1)),
    )
}

#[target_feature(enable = "neon,bf16")]
fn kernel(slots: usize, a: &[f32], b: &[f32], tile: &mut [f32], accumulate: bool) {
    // `slots` is even (whole k-quads) for this format.
    assert!(slots.is_multiple_of(2));
    assert!(a.len() >= slots * MR && b.len() >= slots * NR && tile.len() >= MR * NR);
    // acc[p][c]: rows 2p, 2p + 1 by columns 2c, 2c + 1.
    let mut acc = [[vdupq_n_f32(0.0); NR / 2]; MR / 2];
    if accumulate {
        for (p, row) in acc.iter_mut().enumerate() {
            for h in 0..NR / 4 {
                let o = 2 * p * NR + 4 * h;
                // SAFETY: o + NR + 4 <= (2p + 1) NR + NR = (2p + 2) NR <= MR NR.
                let (r0, r1) = unsafe {
                    (
                        vld1q_f32(tile.as_ptr().add(o)),
                        vld1q_f32(tile.as_ptr().add(o + NR)),
                    )
                };
                (row[2 * h], row[2 * h + 1]) = to_blocks(r0, r1);
            }
        }
    }
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    for q in 0..slots / 2 {
        // SAFETY: q < slots / 2, so the 2 MR slots of A at 2q MR and the
        // 2 NR slots of B at 2q NR lie inside `a` and `b` (asserted above).
        let (av, bv) = unsafe {
            let (ap, bp) = (ap.add(2 * q * MR), bp.add(2 * q * NR));
            (
                [0, 1, 2, 3].map(|p| vld1q_f32(ap.add(4 * p))),
                [0, 1, 2, 3, 4, 5].map(|c| vld1q_f32(bp.add(4 * c))),
            )
        };
        for (row, &x) in acc.iter_mut().zip(&av) {
            for (v, &y) in row.iter_mut().zip(&bv) {
                // SAFETY: BFMMLA reads and writes these three registers
                // only (no memory, no flags: it ignores FPCR and leaves
                // FPSR); the token proves FEAT_BF16, enabled on this fn.
                unsafe {
                    asm!(
                        "bfmmla {acc:v}.4s, {x:v}.8h, {y:v}.8h",
                        acc = inout(vreg) *v,
                        x = in(vreg) x,
                        y = in(vreg) y,
                        options(pure, nomem, nostack, preserves_flags),
                    );
                }
            }
        }
    }
    for (p, row) in acc.iter().enumerate() {
        for h in 0..NR / 4 {
            // The inverse of `to_blocks`.
            let (r0, r1) = to_blocks(row[2 * h], row[2 * h + 1]);
            let o = 2 * p * NR + 4 * h;
            // SAFETY: as for the loads above.
            unsafe {
                vst1q_f32(tile.as_mut_ptr().add(o), r0);
                vst1q_f32(tile.as_mut_ptr().add(o + NR), r1);
            }
        }
    }
}
