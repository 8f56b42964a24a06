//! AMX-BF16 for the small-m path of a column-major B (`x W^T` with W
//! row-major `n x k`, the layout of `Linear` weights), 4 to 16 rows of A.
//!
//! The product is computed transposed, `C^T = W A^T`, so that W needs no
//! packing: a `tdpbf16ps` A-operand tile is 16 rows of 32 bf16, which is 16
//! rows of W over 32 values of k, loaded straight from W with W's row
//! stride. The B-operand tile is A^T in bf16 pairs (16 pair rows of k by
//! 16 columns, one per row of A, zero past m), built once per call. Each
//! step streams 64 W rows through four C^T tiles (16 W rows x 16 rows of
//! A each); the tiles are transposed into the block of dot products at the
//! end. W rows past the last multiple of 16 take the AVX-512 kernel.
//!
//! Numerics are the tile kernel's (see `amx::gemm`): pairs of exact
//! products added to the f32 accumulator with one rounding, bf16
//! subnormal inputs and subnormal results flushed to zero. Fewer rows
//! ([`MIN_ROWS`]) take the AVX-512 kernel: a tile would be mostly padding.

use core::arch::asm;
use core::arch::x86_64::{_MM_HINT_T1, _mm_prefetch};

use super::Amx;
use super::gemm::with_tiles;
use super::tile::TileGuard;
use crate::arch::generic::dot::{DotBlock, Line};
use crate::element::{DType, Element, Slice};
use half::slice::HalfFloatSliceExt;

/// W rows per tile, and the most rows of A a tile takes.
const ROWS: usize = 16;
/// k values per tile row: 32 bf16, 64 bytes.
const GROUP: usize = 32;
/// C^T tiles (and W tiles) per step.
const TILES: usize = 4;
/// Groups of k ahead that each W row is prefetched.
const AHEAD: usize = 8;

/// One group of A^T in bf16 pairs: 16 pair rows x 16 columns x 2.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Pairs([u16; ROWS * GROUP]);

/// The fewest rows of A the tiles take: below it a tile would be mostly
/// padding, and the AVX-512 kernel was faster on the Intel host (m = 2).
const MIN_ROWS: usize = 4;

/// Whether [`run`] takes this block on tiles (else the AVX-512 kernel).
pub(crate) fn takes<T: Element>(op: &DotBlock<'_, T>) -> bool {
    T::DTYPE == DType::Bf16 && (MIN_ROWS..=ROWS).contains(&op.m) && op.cols >= ROWS
}

/// The dot products of `op` (see [`takes`]) on tiles.
pub(crate) fn run<T: Element>(t: Amx, op: DotBlock<'_, T>) {
    assert!(takes(&op), "amx::dot::run: not a block for tiles");
    let DotBlock {
        a,
        m,
        kp,
        w: w_typed,
        ws,
        k,
        cols,
        out,
        prepared,
    } = op;
    let Slice::Bf16(w) = T::slice(w_typed) else {
        unreachable!("bf16, checked by `takes`")
    };
    assert!(kp >= k && a.len() >= m * kp && out.len() >= m * cols);
    assert!(w.len() >= (cols - 1) * ws + k);
    let w: &[u16] = w.reinterpret_cast();
    // A^T in pairs, made once per call (by whichever thread comes first).
    let lines = prepared.get_or_init(|| pairs(a, m, kp, k));
    let (ptr, groups) = (lines.as_ptr().cast::<Pairs>(), lines.len() / ROWS);
    // SAFETY: `Line` and `Pairs` are plain u16 arrays aligned to 64, and a
    // group of pairs is 16 lines; `pairs` made whole groups.
    let at: &[Pairs] = unsafe { core::slice::from_raw_parts(ptr, groups) };
    assert_eq!(at.len(), k.div_ceil(GROUP));
    let tiled = cols / ROWS * ROWS;
    with_tiles(t, |tiles| {
        let mut ct = [[0f32; ROWS * ROWS]; TILES];
        let mut j0 = 0;
        while j0 < tiled {
            let n_tiles = TILES.min((tiled - j0) / ROWS);
            // `at` holds a group per 32 values of k (asserted above).
            // SAFETY: W rows j0..j0 + 16 n_tiles <= cols, each of k values
            // from row * ws, are inside `w` (asserted above).
            unsafe { step(tiles, at, w, j0, ws, k, n_tiles, &mut ct) };
            for (q, tile) in ct.iter().take(n_tiles).enumerate() {
                for r in 0..ROWS {
                    for c in 0..m {
                        out[c * cols + j0 + q * ROWS + r] = tile[r * ROWS + c];
                    }
                }
            }
            j0 += n_tiles * ROWS;
        }
    });
    if tiled < cols {
        // The last W rows: the AVX-512 kernel, into a block of their own.
        let rest = cols - tiled;
        let mut dots = vec![0f32; m * rest];
        let op = DotBlock {
            a,
            m,
            kp,
            w: &w_typed[tiled * ws..],
            ws,
            k,
            cols: rest,
            out: &mut dots,
            prepared,
        };
        crate::arch::x86_64::avx512::run(t.avx512bf16().avx512(), op);
        for c in 0..m {
            out[c * cols + tiled..c * cols + cols].copy_from_slice(&dots[c * rest..][..rest]);
        }
    }
}

/// A^T in bf16 pairs, group by group (16 lines each: 16 pair rows of k by
/// 16 columns, one per row of A, zero past m and past k), from A widened
/// to f32 (exact for bf16 inputs, so the top 16 bits are the bf16 again).
fn pairs(a: &[f32], m: usize, kp: usize, k: usize) -> Vec<Line> {
    let groups = k.div_ceil(GROUP);
    let mut lines = vec![Line([0; GROUP]); groups * ROWS];
    for c in 0..m {
        let row = &a[c * kp..c * kp + k];
        for (l, x) in row.iter().enumerate() {
            let (g, r, e) = (l / GROUP, l % GROUP / 2, l % 2);
            lines[g * ROWS + r].0[2 * c + e] = (x.to_bits() >> 16) as u16;
        }
    }
    lines
}

/// `tile[q] = (W rows j0 + 16 q .. j0 + 16 q + 16) A^T` over all of k, for
/// `q < n_tiles`: C^T, 16 W rows by 16 rows of A, row-major.
///
/// # Safety
///
/// W rows `j0..j0 + 16 * n_tiles`, each `k` values from `row * ws`, must
/// be inside `w`, and `at` must hold `k.div_ceil(32)` groups.
#[expect(
    clippy::too_many_arguments,
    reason = "internal: one step's coordinates"
)]
unsafe fn step(
    _tiles: &TileGuard,
    at: &[Pairs],
    w: &[u16],
    j0: usize,
    ws: usize,
    k: usize,
    n_tiles: usize,
    tile: &mut [[f32; ROWS * ROWS]; TILES],
) {
    debug_assert!((1..=TILES).contains(&n_tiles) && at.len() == k.div_ceil(GROUP));
    // SAFETY: tiles are configured (`_tiles`); TILEZERO touches no memory.
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        )
    };
    let full = k / GROUP;
    // SAFETY: row j0 of W is inside `w` (the caller's contract).
    let base = unsafe { w.as_ptr().add(j0 * ws) };
    let stride = ws * 2;
    for (g, pairs) in at.iter().enumerate().take(full) {
        if g + AHEAD < full {
            // Into L2, not L1: 64 rows' lines in flight would crowd L1's
            // fill buffers (a T0 hint ran slower on the Intel host).
            for r in 0..n_tiles * ROWS {
                // SAFETY: prefetches never fault; the address is inside row
                // r's k values (g + AHEAD < full).
                unsafe {
                    _mm_prefetch::<_MM_HINT_T1>(base.add(r * ws + (g + AHEAD) * GROUP).cast())
                };
            }
        }
        // SAFETY: group g of each row: 32 values inside the row (g < full);
        // the caller's contract puts the rows inside `w`.
        unsafe { group(pairs.0.as_ptr(), base.add(g * GROUP), stride, n_tiles) };
    }
    if !k.is_multiple_of(GROUP) {
        // The short last group: each tile's W rows copied into a zero-padded
        // group (A^T is zero past k already).
        let tail = k - full * GROUP;
        let mut wt = [[0u16; ROWS * GROUP]; TILES];
        for (q, buf) in wt.iter_mut().take(n_tiles).enumerate() {
            for r in 0..ROWS {
                let row = (j0 + q * ROWS + r) * ws + full * GROUP;
                buf[r * GROUP..r * GROUP + tail].copy_from_slice(&w[row..row + tail]);
            }
        }
        for (q, buf) in wt.iter().take(n_tiles).enumerate() {
            // SAFETY: one tile of 16 rows of 64 bytes in `buf` (stride 64)
            // and in A^T's last group.
            unsafe { one(at[full].0.as_ptr(), buf.as_ptr(), GROUP * 2, q) };
        }
    }
    for (q, t) in tile.iter_mut().take(n_tiles).enumerate() {
        let c = t.as_mut_ptr();
        macro_rules! store {
            ($c:literal) => {
                asm!(
                    concat!("tilestored [{c} + {s}*1], tmm", $c),
                    c = in(reg) c, s = in(reg) 64usize, options(nostack)
                )
            };
        }
        // SAFETY: 16 rows of 64 bytes at stride 64: the 256 f32 of `t`.
        unsafe {
            match q {
                0 => store!(0),
                1 => store!(1),
                2 => store!(2),
                _ => store!(3),
            }
        }
    }
}

/// One group of k: A^T's tile (`a`, 16 rows of 64 bytes) into `tmm4`, then
/// for each of `n_tiles` W tiles (16 rows of 64 bytes at `w + 16 q rows`,
/// `stride` bytes apart) `tmm<q> += W A^T`. The W tiles rotate through
/// `tmm5..tmm7`, so a load waits only for the product three back.
///
/// # Safety
///
/// Tiles configured; `a` valid for 1024 bytes; `w` for 16 * n_tiles rows of
/// 64 bytes at `stride`.
#[inline(always)]
unsafe fn group(a: *const u16, w: *const u16, stride: usize, n_tiles: usize) {
    let q_row = 16 * stride;
    /// A^T's tile into `tmm4`, then per `(C, W)` pair of tile numbers the
    /// next 16 W rows into the W tile and its product into the C tile.
    macro_rules! tiles {
        ($(($c:literal, $t:literal)),+) => {
            asm!(
                "tileloadd tmm4, [{a} + {sa}*1]",
                $(
                    concat!("tileloadd tmm", $t, ", [{w} + {s}*1]"),
                    concat!("tdpbf16ps tmm", $c, ", tmm", $t, ", tmm4"),
                    "add {w}, {q}",
                )+
                a = in(reg) a, sa = in(reg) 64usize, w = inout(reg) w => _,
                s = in(reg) stride, q = in(reg) q_row, options(nostack, readonly)
            )
        };
    }
    // SAFETY: the caller's contract; the instructions read only those bytes
    // and write only tiles.
    unsafe {
        match n_tiles {
            4 => tiles!((0, 5), (1, 6), (2, 7), (3, 5)),
            3 => tiles!((0, 5), (1, 6), (2, 7)),
            2 => tiles!((0, 5), (1, 6)),
            _ => tiles!((0, 5)),
        }
    }
}

/// `tmm<q> += W A^T` for one W tile at `w` (16 rows of 64 bytes, `stride`
/// bytes apart) and A^T's tile at `a`.
///
/// # Safety
///
/// As [`group`] for one tile; `q < 4`.
#[inline(always)]
unsafe fn one(a: *const u16, w: *const u16, stride: usize, q: usize) {
    /// The product into C tile `$c`.
    macro_rules! into {
        ($c:literal) => {
            asm!(
                "tileloadd tmm4, [{a} + {sa}*1]",
                "tileloadd tmm5, [{w} + {s}*1]",
                concat!("tdpbf16ps tmm", $c, ", tmm5, tmm4"),
                a = in(reg) a, sa = in(reg) 64usize, w = in(reg) w, s = in(reg) stride,
                options(nostack, readonly)
            )
        };
    }
    // SAFETY: the caller's contract.
    unsafe {
        match q {
            0 => into!(0),
            1 => into!(1),
            2 => into!(2),
            _ => into!(3),
        }
    }
}
