//! AMX-BF16 tile primitives through `asm!`: Rust's AMX intrinsics are
//! nightly-only, and the instructions are few.
//!
//! One layout serves the whole GEMM: eight tiles of 16 rows x 64 bytes.
//! `tmm0..tmm3` accumulate a 32 x 32 f32 block of C (2 x 2 tiles),
//! `tmm4`/`tmm5` hold two 16-row slabs of A (16 rows x 32 bf16), `tmm6`/`tmm7`
//! two 16-column slabs of B in VNNI order (16 k-pairs x 16 columns x 2 bf16).
//! Per 32-deep k-block that is 4 loads feeding 4 `tdpbf16ps` of 16x16x32:
//! each loaded tile feeds two products (see BENCHMARKS.md, AMX).
//!
//! Tile state is per thread: a [`TileGuard`] loads the configuration on the
//! thread that makes it and releases the tiles when dropped, and it is
//! `!Send`, so a kernel that takes `&TileGuard` runs where tiles are set up.

use core::arch::asm;
use core::marker::PhantomData;

#[cfg(test)]
use half::bf16;

use super::Amx;

/// Rows of C per microkernel call (two 16-row tiles).
pub(crate) const MR: usize = 32;
/// Columns of C per microkernel call (two 16-column tiles).
pub(crate) const NR: usize = 32;
/// Depth of one k-block: 32 bf16 = 64 bytes per tile row.
#[cfg(test)] // the GEMM kernel is gemm.rs; this is its proven reference
pub(crate) const KB: usize = 32;
/// bf16 elements of one packed A (or B) k-block: two 16 x 32 tiles.
#[cfg(test)] // the GEMM kernel is gemm.rs; this is its proven reference
pub(crate) const BLOCK_ELEMS: usize = 2 * 16 * KB;

/// The 64-byte LDTILECFG operand (palette 1).
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

/// Proof that this thread's tiles are configured for the 2 x 2 layout.
/// Releases them (TILERELEASE) when dropped.
///
/// Guards must not nest on one thread: dropping an inner one releases the
/// tiles under the outer one, and the next tile instruction then faults
/// (`SIGILL`, a crash rather than a memory error). The GEMM keeps one per
/// thread in a thread-local (`amx::gemm`); only tests and probes make
/// others, each on a thread of its own.
pub(crate) struct TileGuard {
    _not_send: PhantomData<*const ()>,
}

impl TileGuard {
    /// Configures all eight tiles as 16 rows x 64 bytes on this thread.
    pub(crate) fn new(_amx: Amx) -> TileGuard {
        let mut cfg = TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb: [0; 16],
            rows: [0; 16],
        };
        for t in 0..8 {
            cfg.colsb[t] = 64;
            cfg.rows[t] = 16;
        }
        // LDTILECFG reads exactly the 64 bytes of `cfg` (64-byte aligned).
        // SAFETY: the `Amx` token proves AMX-TILE and Linux's grant of tile
        // state; `cfg` is valid for those 64 bytes.
        unsafe {
            asm!("ldtilecfg [{cfg}]", cfg = in(reg) &cfg, options(nostack, readonly));
        }
        TileGuard {
            _not_send: PhantomData,
        }
    }
}

impl Drop for TileGuard {
    fn drop(&mut self) {
        // SAFETY: tiles were configured by `new` on this thread (the guard is
        // !Send); TILERELEASE returns them to the init state.
        unsafe {
            asm!("tilerelease", options(nostack, nomem));
        }
    }
}

/// `c[32 x 32] (+)= A[32 x 32*kb] * B[32*kb x 32]` on tiles.
///
/// `a` holds `k_blocks` packed A blocks: per block, 32 rows of 32 bf16 (row
/// r of the block at `r * 32`). `b` holds `k_blocks` packed B blocks: per
/// block, two 16-column slabs, each 16 k-pairs x 16 columns x 2 bf16, so
/// element (k, n) of the block is at `(n / 16) * 512 + (k / 2) * 32 +
/// (n % 16) * 2 + k % 2`. `c` is row-major 32 x 32 f32; with `accumulate`
/// it is added to, else overwritten.
///
/// Numerics (Intel SDM, TDPBF16PS): bf16 products summed in f32 with
/// round-to-nearest-even; denormal inputs and results are flushed to zero
/// regardless of MXCSR.
#[cfg(test)] // the GEMM kernel is gemm.rs; this is its proven reference
pub(crate) fn microkernel(
    _tiles: &TileGuard,
    a: &[bf16],
    b: &[bf16],
    k_blocks: usize,
    c: &mut [f32; MR * NR],
    accumulate: bool,
) {
    // Divisions, not products: a huge `k_blocks` must not wrap past the check.
    assert!(k_blocks <= a.len() / BLOCK_ELEMS && k_blocks <= b.len() / BLOCK_ELEMS);
    let c_ptr = c.as_mut_ptr();
    const C_STRIDE: usize = NR * 4; // bytes per row of c
    const AB_STRIDE: usize = 64; // bytes per tile row of packed A and B
    if accumulate {
        // Each load reads 16 rows of 64 bytes at `C_STRIDE`.
        // SAFETY: `_tiles` proves the tiles are configured as 16 x 64 bytes;
        // the loads stay inside the 32 x 32 f32 array `c`.
        unsafe {
            asm!(
                "tileloadd tmm0, [{c} + {s}*1]",
                "tileloadd tmm1, [{c} + {s}*1 + 64]",
                "tileloadd tmm2, [{c} + {s}*1 + 2048]",
                "tileloadd tmm3, [{c} + {s}*1 + 2112]",
                c = in(reg) c_ptr,
                s = in(reg) C_STRIDE,
                options(nostack, readonly),
            );
        }
    } else {
        // SAFETY: tiles are configured (`_tiles`); TILEZERO touches no memory.
        unsafe {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem),
            );
        }
    }
    if k_blocks > 0 {
        // The loop reads k_blocks packed blocks of 2048 bytes from each of
        // `a` and `b`, and writes only tiles and its own registers.
        // SAFETY: tiles are configured (`_tiles`); the assert above proves
        // those reads in bounds.
        unsafe {
            asm!(
                "2:",
                "tileloadd tmm4, [{a} + {s}*1]",
                "tileloadd tmm5, [{a} + {s}*1 + 1024]",
                "tileloadd tmm6, [{b} + {s}*1]",
                "tileloadd tmm7, [{b} + {s}*1 + 1024]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                "add {a}, 2048",
                "add {b}, 2048",
                "dec {k}",
                "jnz 2b",
                a = inout(reg) a.as_ptr() => _,
                b = inout(reg) b.as_ptr() => _,
                k = inout(reg) k_blocks => _,
                s = in(reg) AB_STRIDE,
                options(nostack, readonly),
            );
        }
    }
    // Each store writes 16 rows of 64 bytes at `C_STRIDE`.
    // SAFETY: tiles are configured (`_tiles`); the stores stay inside the
    // 32 x 32 f32 array `c`, which we borrow mutably.
    unsafe {
        asm!(
            "tilestored [{c} + {s}*1], tmm0",
            "tilestored [{c} + {s}*1 + 64], tmm1",
            "tilestored [{c} + {s}*1 + 2048], tmm2",
            "tilestored [{c} + {s}*1 + 2112], tmm3",
            c = in(reg) c_ptr,
            s = in(reg) C_STRIDE,
            options(nostack),
        );
    }
}

/// Packs rows `0..32` x depth `0..32*k_blocks` of A, read through `at(row,
/// k)` (zero outside the matrix), into the layout [`microkernel`] reads.
#[cfg(test)] // the GEMM kernel is gemm.rs; this is its proven reference
pub(crate) fn pack_a(dst: &mut [bf16], k_blocks: usize, at: impl Fn(usize, usize) -> bf16) {
    for kb in 0..k_blocks {
        let block = &mut dst[kb * BLOCK_ELEMS..(kb + 1) * BLOCK_ELEMS];
        for r in 0..MR {
            for kk in 0..KB {
                block[r * KB + kk] = at(r, kb * KB + kk);
            }
        }
    }
}

/// Packs depth `0..32*k_blocks` x columns `0..32` of B, read through
/// `at(k, col)`, into the VNNI layout [`microkernel`] reads.
#[cfg(test)] // the GEMM kernel is gemm.rs; this is its proven reference
pub(crate) fn pack_b(dst: &mut [bf16], k_blocks: usize, at: impl Fn(usize, usize) -> bf16) {
    for kb in 0..k_blocks {
        let block = &mut dst[kb * BLOCK_ELEMS..(kb + 1) * BLOCK_ELEMS];
        for n in 0..NR {
            for kk in 0..KB {
                block[(n / 16) * 512 + (kk / 2) * 32 + (n % 16) * 2 + kk % 2] = at(kb * KB + kk, n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs where AMX exists (the Intel host); elsewhere `HALFKERN_REQUIRE`
    /// decides whether its absence is a failure (see tests/common).
    #[test]
    fn amx_microkernel_matches_exact_products() {
        let Some(amx) = Amx::try_new() else {
            let required = std::env::var("HALFKERN_REQUIRE").unwrap_or_default();
            assert!(
                !required.split(',').any(|s| s.trim() == "amx"),
                "HALFKERN_REQUIRE names amx but this machine cannot run it"
            );
            return;
        };
        // Small integers: every product and sum is exact in f32, so the tile
        // result must equal the f64 reference exactly.
        let k_blocks = 3;
        let depth = k_blocks * KB;
        let a_val = |r: usize, k: usize| ((r * 7 + k * 3) % 17) as f32 - 8.0;
        let b_val = |k: usize, n: usize| ((k * 5 + n * 11) % 13) as f32 - 6.0;
        let mut a = vec![bf16::ZERO; k_blocks * BLOCK_ELEMS];
        let mut b = vec![bf16::ZERO; k_blocks * BLOCK_ELEMS];
        pack_a(&mut a, k_blocks, |r, k| bf16::from_f32(a_val(r, k)));
        pack_b(&mut b, k_blocks, |k, n| bf16::from_f32(b_val(k, n)));
        let tiles = TileGuard::new(amx);
        let mut c = [f32::NAN; MR * NR];
        microkernel(&tiles, &a, &b, k_blocks, &mut c, false);
        let mut again = [0.5f32; MR * NR];
        microkernel(&tiles, &a, &b, k_blocks, &mut again, true);
        for r in 0..MR {
            for n in 0..NR {
                let want: f64 = (0..depth)
                    .map(|k| a_val(r, k) as f64 * b_val(k, n) as f64)
                    .sum();
                assert_eq!(c[r * NR + n] as f64, want, "({r}, {n})");
                assert_eq!(
                    again[r * NR + n] as f64,
                    want + 0.5,
                    "({r}, {n}) accumulate"
                );
            }
        }
    }
}
