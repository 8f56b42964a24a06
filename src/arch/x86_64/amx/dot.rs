//! AMX-BF16 for the small-m path of a column-major B (`x W^T` with W
//! row-major `n x k`, the layout of `Linear` weights), 5 to 16 rows of A.
//!
//! The product is computed transposed, `C^T = W A^T`, so that W needs no
//! packing: a `tdpbf16ps` A-operand tile is 16 rows of 32 bf16, which is 16
//! rows of W over 32 values of k, loaded straight from W with W's row
//! stride. The B-operand tile is A^T in bf16 pairs (16 pair rows of k by
//! 16 columns, one per row of A, zero past m), built once per call. Each
//! step streams 16 W rows over all of k into four C^T tiles (16 W rows x
//! 16 rows of A each), the groups of k dealt round-robin over them so that
//! no product waits for the one before; the four are summed and
//! transposed into the block of dot products at the end. W rows past the
//! last multiple of 16 take the AVX-512 kernel.
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
/// C^T tiles per step, each summing every fourth group of k. One block of
/// 16 W rows per step: fewer rows read at once are fewer streams for the
/// prefetchers and fewer pages (a W row of k = 4096 is two). 64 and 32
/// rows per step were slower on one thread (docs/tried.md, "Decode, AMX").
const TILES: usize = 4;
/// Groups of k ahead that each W row is prefetched.
const AHEAD: usize = 8;

/// One group of A^T in bf16 pairs: 16 pair rows x 16 columns x 2.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Pairs([u16; ROWS * GROUP]);

/// The fewest rows of A the tiles take. Below it the AVX-512 kernel is as
/// fast on one thread and faster on 16: a tile of four rows is three
/// quarters padding (BENCHMARKS.md, AMX against torch).
const MIN_ROWS: usize = 5;

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
        ..
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
            let next = ROWS.min(tiled - j0 - ROWS);
            // `at` holds a group per 32 values of k (asserted above).
            // SAFETY: W rows j0..j0 + 16 + next <= cols, each of k values
            // from row * ws, are inside `w` (asserted above).
            unsafe { step(tiles, at, w, j0, ws, k, next, &mut ct) };
            for r in 0..ROWS {
                for c in 0..m {
                    let at = r * ROWS + c;
                    let dot = ct[1..].iter().fold(ct[0][at], |s, t| s + t[at]);
                    out[c * cols + j0 + r] = dot;
                }
            }
            j0 += ROWS;
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
            one_row: false,
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
    let bf16 = |x: f32| (x.to_bits() >> 16) as u16;
    // Line p (row p % 16 of group p / 16) holds pair p of k, values 2p and
    // 2p + 1, of every row of A.
    for c in 0..m {
        let (two, last) = a[c * kp..c * kp + k].as_chunks::<2>();
        for (line, &[x, y]) in lines.iter_mut().zip(two) {
            line.0[2 * c] = bf16(x);
            line.0[2 * c + 1] = bf16(y);
        }
        if let [x] = *last {
            lines[two.len()].0[2 * c] = bf16(x);
        }
    }
    lines
}

/// C^T of the 16 W rows from row `j0` on, over all of k, in the four
/// tiles: group g of k into tile `g % 4` (the whole groups past the last
/// full pass of four and the short last group into tile 0); the dot
/// products are the tiles' sum. Each W row is prefetched into L2
/// [`AHEAD`] groups ahead, and near the end the first groups of the
/// `next` rows after these.
///
/// # Safety
///
/// W rows `j0..j0 + 16 + next`, each `k` values from `row * ws`, must be
/// inside `w`, and `at` must hold `k.div_ceil(32)` groups.
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
    next: usize,
    tile: &mut [[f32; ROWS * ROWS]; TILES],
) {
    debug_assert!(at.len() == k.div_ceil(GROUP));
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
    let passes = full / TILES;
    for pass in 0..passes {
        let g = pass * TILES;
        // Into L2, not L1: a T0 hint ran slower on the Intel host.
        for ga in g + AHEAD..g + AHEAD + TILES {
            let (first, count, group) = if ga < full {
                (0, ROWS, ga)
            } else if ga - full < full {
                (ROWS, next, ga - full)
            } else {
                (0, 0, 0)
            };
            for r in first..first + count {
                // SAFETY: prefetches never fault; the address is inside row
                // j0 + r's k values (group < full, r < 16 + next).
                unsafe { _mm_prefetch::<_MM_HINT_T1>(base.add(r * ws + group * GROUP).cast()) };
            }
        }
        // SAFETY: groups g..g + 4 of each row are inside it (g + 4 <= full)
        // and of `at`; the caller puts the rows in `w`.
        unsafe { pass_groups(at[g..].as_ptr().cast(), base.add(g * GROUP), stride) };
    }
    for (g, pairs) in at.iter().enumerate().take(full).skip(passes * TILES) {
        // SAFETY: one whole group of the 16 rows, inside them.
        unsafe { one(pairs.0.as_ptr(), base.add(g * GROUP), stride, 0) };
    }
    if !k.is_multiple_of(GROUP) {
        // The short last group: the W rows copied into a zero-padded group
        // (A^T is zero past k already).
        let tail = k - full * GROUP;
        let mut wt = [0u16; ROWS * GROUP];
        for r in 0..ROWS {
            let row = (j0 + r) * ws + full * GROUP;
            wt[r * GROUP..r * GROUP + tail].copy_from_slice(&w[row..row + tail]);
        }
        // SAFETY: one tile of 16 rows of 64 bytes in `wt` (stride 64) and
        // in A^T's last group.
        unsafe { one(at[full].0.as_ptr(), wt.as_ptr(), GROUP * 2, 0) };
    }
    for (q, t) in tile.iter_mut().enumerate() {
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

/// One pass over four groups of k: for group q, A^T's tile (at `a`,
/// groups 1024 bytes apart) into `tmm4` or `tmm5` in turn, the W tile (16
/// rows of 64 bytes, `stride` bytes apart) into `tmm6` or `tmm7` in turn,
/// and their product into `tmm<q>`. Two tiles of each operand in turn: a
/// load waits only for the product two back.
///
/// # Safety
///
/// Tiles configured; `a` valid for 4096 bytes; `w` for 16 rows of 256
/// bytes at `stride`.
#[inline(always)]
unsafe fn pass_groups(a: *const u16, w: *const u16, stride: usize) {
    // SAFETY: the caller's contract; the instructions read only those bytes
    // and write only tiles.
    unsafe {
        asm!(
            "tileloadd tmm4, [{a} + {sa}*1]",
            "tileloadd tmm6, [{w} + {s}*1]",
            "tdpbf16ps tmm0, tmm6, tmm4",
            "tileloadd tmm5, [{a} + {sa}*1 + 1024]",
            "tileloadd tmm7, [{w} + {s}*1 + 64]",
            "tdpbf16ps tmm1, tmm7, tmm5",
            "tileloadd tmm4, [{a} + {sa}*1 + 2048]",
            "tileloadd tmm6, [{w} + {s}*1 + 128]",
            "tdpbf16ps tmm2, tmm6, tmm4",
            "tileloadd tmm5, [{a} + {sa}*1 + 3072]",
            "tileloadd tmm7, [{w} + {s}*1 + 192]",
            "tdpbf16ps tmm3, tmm7, tmm5",
            a = in(reg) a, sa = in(reg) 64usize, w = in(reg) w, s = in(reg) stride,
            options(nostack, readonly)
        )
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
