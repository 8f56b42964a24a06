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
//! loaded for 24 `BFMMLA` (24 accumulators + 6 B + 2 A live at a time:
//! all 32 registers; the compiled loop is 10 q loads and 24 `BFMMLA`, no
//! spills). 24 independent
//! accumulators cover `BFMMLA`'s latency on cores with 2 to 4 vector pipes
//! (Neoverse N2/V1/V2), and one 16-byte load feeds 2.4 instructions. Its
//! speed is untested: see BENCHMARKS.md, Other machines.
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
//! the test hook `Gemm::dot_kernel(Some(false))` (feature `internals`)
//! forces widening instead.

use core::arch::aarch64::*;
use core::arch::asm;

use super::super::NeonBf16;
use super::super::neon::gemm::NeonF32;
use crate::kernel::gemm::{Format, Microkernel, RowOps};

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
}

impl RowOps for NeonBfmmla {
    #[inline(always)]
    fn axpy_rows(self, x: &[f32], b: &[f32], y: &mut [&mut [f32]]) {
        NeonF32(self.0.neon()).axpy_rows(x, b, y);
    }

    #[inline(always)]
    fn axpy_rows4(self, x: &[f32], b: [&[f32]; 4], y: &mut [&mut [f32]]) {
        NeonF32(self.0.neon()).axpy_rows4(x, b, y);
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
    // Divisions, not products: a huge `slots` must not wrap past the check.
    assert!(slots <= a.len() / MR && slots <= b.len() / NR && tile.len() >= MR * NR);
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
                // BFMMLA ignores FPCR and leaves FPSR.
                // SAFETY: the token proves FEAT_BF16 (enabled on this fn);
                // BFMMLA touches these three registers only, no memory.
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

#[cfg(test)]
mod tests {
    //! `BFMMLA` against a scalar model of the Arm ARM's `BFMatMulAdd` /
    //! `BFDotAdd` (FPCR.EBF = 0): round to odd, denormals flushed. Bit-exact,
    //! so it pins down both the packing layout and the numerics the module
    //! docs state.

    use super::{MR, NR, NeonBf16, kernel};

    /// Round to odd to f32 of the exact value `s + e` (`s` the f64 sum,
    /// `e` its error), denormal results flushed to zero; finite inputs
    /// within f32's range.
    fn round_odd(s: f64, e: f64) -> f32 {
        if s.abs() < f32::MIN_POSITIVE as f64 {
            return if s < 0.0 || (s == 0.0 && e < 0.0) {
                -0.0
            } else {
                0.0
            };
        }
        let mut f = s as f32;
        if (f as f64).abs() > s.abs() {
            f = f32::from_bits(f.to_bits() - 1); // toward zero
        }
        let r = (s - f as f64) + e;
        if r == 0.0 {
            return f;
        }
        if (r < 0.0) != (f < 0.0) {
            // The exact value lies below f in magnitude.
            f = f32::from_bits(f.to_bits() - 1);
        }
        f32::from_bits(f.to_bits() | 1)
    }

    /// `RO(x + y)` for f32 `x`, `y` (TwoSum gives the exact remainder).
    fn add_odd(x: f32, y: f32) -> f32 {
        let (x, y) = (x as f64, y as f64);
        let s = x + y;
        let bb = s - x;
        let e = (x - (s - bb)) + (y - bb);
        round_odd(s, e)
    }

    /// bf16 bits to f32, denormals flushed.
    fn bf(bits: u16) -> f32 {
        let x = f32::from_bits(u32::from(bits) << 16);
        if x.is_subnormal() {
            0.0 * x.signum()
        } else {
            x
        }
    }

    /// `BFDotAdd(c, a0, a1, b0, b1)` with FPCR.EBF = 0.
    fn bfdotadd(c: f32, a: [u16; 2], b: [u16; 2]) -> f32 {
        let p0 = round_odd(bf(a[0]) as f64 * bf(b[0]) as f64, 0.0);
        let p1 = round_odd(bf(a[1]) as f64 * bf(b[1]) as f64, 0.0);
        let c = if c.is_subnormal() { 0.0 } else { c };
        add_odd(c, add_odd(p0, p1))
    }

    struct Gen(u64);
    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 16
        }
        /// bf16 bits: mostly varied magnitudes (2^-20..2^20, so sums
        /// cancel and round at every position), some subnormals and zeros.
        fn bf16(&mut self) -> u16 {
            let r = self.next();
            let sign = ((r & 1) as u16) << 15;
            match (r >> 1) % 16 {
                0 => sign | ((r >> 8) as u16 & 0x7F), // subnormal or zero
                1 => sign,
                _ => sign | ((127 - 20 + (r >> 8) % 41) as u16) << 7 | ((r >> 20) as u16 & 0x7F),
            }
        }
    }

    #[test]
    fn bfmmla_matches_the_arm_pseudocode() {
        let Some(_) = NeonBf16::try_new() else {
            eprintln!("no FEAT_BF16: skipped (run under qemu -cpu max)");
            return;
        };
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        println!("seed {seed}");
        let mut g = Gen(seed);
        for round in 0..200 {
            let quads = 1 + round % 7;
            let kk = 4 * quads;
            // Logical A (MR x kk), B (kk x NR), and their packed forms.
            let a: Vec<u16> = (0..MR * kk).map(|_| g.bf16()).collect();
            let b: Vec<u16> = (0..kk * NR).map(|_| g.bf16()).collect();
            let pair = |x: &[u16], ld: usize, lane: usize, s: usize, lane_major: bool| {
                let at = |d: usize| {
                    if lane_major {
                        x[lane * ld + d]
                    } else {
                        x[d * ld + lane]
                    }
                };
                f32::from_bits(u32::from(at(2 * s)) | u32::from(at(2 * s + 1)) << 16)
            };
            let pack = |w: usize, get: &dyn Fn(usize, usize) -> f32| {
                let mut out = vec![0.0f32; 2 * quads * w];
                for q in 0..quads {
                    for p in 0..w / 2 {
                        let o = 2 * q * w + 4 * p;
                        out[o] = get(2 * p, 2 * q);
                        out[o + 1] = get(2 * p, 2 * q + 1);
                        out[o + 2] = get(2 * p + 1, 2 * q);
                        out[o + 3] = get(2 * p + 1, 2 * q + 1);
                    }
                }
                out
            };
            let ap = pack(MR, &|lane, s| pair(&a, kk, lane, s, true));
            let bp = pack(NR, &|lane, s| pair(&b, NR, lane, s, false));
            let accumulate = round % 2 == 1;
            let start: Vec<f32> = (0..MR * NR).map(|_| bf(g.bf16()) * 3.0).collect();
            let mut tile = if accumulate {
                start.clone()
            } else {
                vec![f32::NAN; MR * NR]
            };
            // SAFETY: the token above proves NEON and FEAT_BF16.
            unsafe { kernel(2 * quads, &ap, &bp, &mut tile, accumulate) };
            for i in 0..MR {
                for j in 0..NR {
                    let mut c = if accumulate { start[i * NR + j] } else { 0.0 };
                    for s in 0..kk / 2 {
                        let ar = [a[i * kk + 2 * s], a[i * kk + 2 * s + 1]];
                        let bc = [b[2 * s * NR + j], b[(2 * s + 1) * NR + j]];
                        c = bfdotadd(c, ar, bc);
                    }
                    let got = tile[i * NR + j];
                    assert!(
                        got == c,
                        "seed {seed} round {round}: C[{i},{j}] = {got:e} ({:#x}), model {c:e} ({:#x})",
                        got.to_bits(),
                        c.to_bits()
                    );
                }
            }
        }
    }
}
