//! AMX-BF16 GEMM microkernel: a 32 x 32 tile of C computed as 2 x 2 AMX
//! tiles with `tdpbf16ps`, over A~ in [`Format::Bf16Rows`] (each 32-deep
//! group is 32 rows of 64 bytes: two A tiles) and B~ in the same
//! [`Format::Bf16Pairs`] layout the `vdpbf16ps` kernel reads (with NR = 32 a
//! slot row is 128 bytes, so the two 16-column B tiles of a group are loaded
//! with stride 128 at offsets 0 and 64: no AMX-specific B packing).
//!
//! Numerics: `tdpbf16ps` multiplies bf16 pairs exactly and adds them to the
//! f32 accumulator with round-to-nearest-even, **ignoring MXCSR**: denormal
//! inputs (bf16 subnormals in A or B) count as zero and denormal results
//! are flushed to zero, always (Intel SDM, TDPBF16PS). Every other result is
//! within the crate's bound (each output is an f32 sum in k order, two
//! products per rounding). Inf and NaN propagate as in IEEE arithmetic.
//!
//! The `amx` backend runs this kernel for bf16 inputs except where the
//! small-m paths apply (m <= 16 with B row-major, or a `PackedB` with
//! m <= 8: streaming B for a few rows beats a 32-row tile that would be
//! mostly padding); f32 and f16 inputs run the `avx512bf16` backend's
//! kernels.
//!
//! Tile state is per thread. Each thread that runs this kernel configures
//! its tiles once (all eight as 16 rows x 64 bytes, see [`tile`]) on first
//! use and keeps the configuration until it exits (a thread-local
//! [`TileGuard`]); `ldtilecfg` per call would cost more than it protects.
//! Code that reprograms the tiles of a thread between two halfkern calls on
//! that thread would make the results wrong, never unsafe: any palette-1
//! configuration moves at most 16 rows of 64 bytes per tile, which is what
//! every load and store below stays inside, and released tiles fault
//! (SIGILL) instead of touching memory.

use core::arch::asm;
use core::cell::OnceCell;

use super::Amx;
use super::tile::{self, TileGuard};
use crate::arch::x86_64::avx512::gemm::store_block;
use crate::arch::x86_64::avx512bf16::gemm::Avx512Dot;
use crate::element::Element;
use crate::kernel::gemm::StoreBlock;
use crate::kernel::gemm::{Ahead, Blocking, Format, Microkernel, ROW_GROUP, RowOps};

/// Rows of a tile of C: two 16-row AMX tiles.
const MR: usize = 32;
/// Columns of a tile of C: two 16-column AMX tiles.
const NR: usize = 32;
/// Slots (bf16 pairs) of one packed group of A~ or B~ (32 k values).
const GROUP_SLOTS: usize = ROW_GROUP * MR;

/// The AMX-BF16 microkernel (bf16 inputs only).
#[derive(Clone, Copy, Debug)]
pub(crate) struct AmxBf16(pub(crate) Amx);

impl Microkernel for AmxBf16 {
    const MR: usize = MR;
    const NR: usize = NR;
    const FORMAT: Format = Format::Bf16Pairs;
    const FORMAT_A: Format = Format::Bf16Rows;
    const NAME: &'static str = "amx-tdpbf16-32x32";
    const BLOCKING: Blocking = Blocking {
        // Twice the default depth: the 32 x 32 f32 block of C goes through
        // the workspace (4 tile loads, 4 stores) once per 512 k instead of
        // per 256, and the `KC x NR` bf16 micro-panel of B~ (32 KiB) still
        // fits L1.
        kc: 512,
        // Each column of tiles runs through 4 KC blocks (2048 k) before the
        // next column: its 8 accumulator tiles (32 KiB) are reloaded after
        // 8 kernel calls instead of after the whole block's (1 MiB of them,
        // with a KC block of B~ as large passing through L2 in between),
        // while the run's A~ (256 rows x 2048 k, 1 MiB) stays in L2. A
        // deeper KC in one call instead was no faster (docs/tried.md, GEMM
        // blocking).
        kc_run: 4,
        // 8 A~ panels per B~ micro-panel instead of 5 where B~ is packed
        // once (one thread, or n past `local_b`'s limit): faster on one
        // thread, even on 16. `run_local_b`'s cells keep 168 rows
        // (docs/tried.md, GEMM blocking).
        mc: 256,
        // Threads pack their own B~ up to `blis::local_b_pays`'s size
        // limit: on 16 threads the shared B~ was slower there, and faster
        // past it (see BENCHMARKS.md, AMX; docs/tried.md, Threads).
        local_b: true,
        // The static split's cells finish at very different times on 16
        // threads; the dynamic split lets early threads take more blocks.
        dynamic: true,
        ..Blocking::BLIS
    };

    #[inline(always)]
    fn kernel(self, slots: usize, a: &[f32], b: &[f32], tile: &mut [f32], accumulate: bool) {
        self.kernel_then(slots, a, b, tile, accumulate, Ahead::Nothing);
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
        with_tiles(self.0, |guard| {
            kernel(guard, slots, a, b, tile, accumulate, ahead)
        });
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

impl RowOps for AmxBf16 {
    // Packing, the epilogue and a `PackedB` for one or two rows of A are
    // the avx512bf16 kernel's. From three rows the 32-row tile measured
    // faster on the Intel host in spite of its padding (BENCHMARKS.md,
    // "The host in the seventh session").
    const PAIRS_ROWS: usize = <Avx512Dot as RowOps>::PAIRS_ROWS;
    const PAIRS_MAX_M: usize = 2;

    #[inline(always)]
    fn pairs_panel(self, m: usize, a: &[f32], b: &[f32], out: &mut [f32]) -> bool {
        Avx512Dot(self.0.avx512bf16()).pairs_panel(m, a, b, out)
    }

    #[inline(always)]
    fn widen<T: Element>(self, src: &[T], dst: &mut [f32]) {
        Avx512Dot(self.0.avx512bf16()).widen(src, dst);
    }

    #[inline(always)]
    fn pack_pairs(self, rows: &[&[half::bf16]], w: usize, dst: &mut [f32]) -> bool {
        Avx512Dot(self.0.avx512bf16()).pack_pairs(rows, w, dst)
    }

    #[inline(always)]
    fn narrow_f16(self, src: &[f32], dst: &mut [half::f16]) {
        Avx512Dot(self.0.avx512bf16()).narrow_f16(src, dst);
    }

    #[inline(always)]
    fn axpy_rows(self, x: &[f32], b: &[f32], y: &mut [&mut [f32]]) {
        Avx512Dot(self.0.avx512bf16()).axpy_rows(x, b, y);
    }

    #[inline(always)]
    fn axpy_rows4(self, x: &[f32], b: [&[f32]; 4], y: &mut [&mut [f32]]) {
        Avx512Dot(self.0.avx512bf16()).axpy_rows4(x, b, y);
    }

    #[inline(always)]
    fn axpy_rows4_widen<T: Element>(
        self,
        x: &[f32],
        b: [&[T]; 4],
        tmp: &mut [f32],
        y: &mut [&mut [f32]],
    ) {
        Avx512Dot(self.0.avx512bf16()).axpy_rows4_widen(x, b, tmp, y);
    }
}

thread_local! {
    /// This thread's tile configuration, made on first use (module docs).
    static TILES: OnceCell<TileGuard> = const { OnceCell::new() };
}

/// Runs `f` with this thread's tiles configured (once per thread, kept
/// until it exits; see the module docs).
pub(super) fn with_tiles<R>(amx: Amx, f: impl FnOnce(&TileGuard) -> R) -> R {
    TILES.with(|t| f(t.get_or_init(|| TileGuard::new(amx))))
}

/// Bytes per row of the f32 tile of C.
const C_STRIDE: usize = NR * 4;
/// Bytes per tile row of A~ (one lane's 16 slots of a group).
const A_STRIDE: usize = ROW_GROUP * 4;
/// Bytes per tile row of B~ (one slot row of 32 lanes).
const B_STRIDE: usize = NR * 4;

/// `tile = (accumulate ? tile : 0) + A~ B~` over `slots` slots, prefetching
/// what `ahead` names as it goes: into L1 the first half of each group of
/// [`Ahead::NextOperand`] while it runs the same group here, or per group four
/// lines of [`Ahead::PanelAndTile`]'s B~ share into L2 and four of its next
/// accumulator tile into L1. The C tiles
/// `tmm0..tmm3` stay in tile registers from the first `asm!` block to the
/// last: the compiler never allocates tile registers itself, and nothing
/// called in between (a copy into the tail buffers) uses AMX.
#[inline(always)]
fn kernel(
    _tiles: &TileGuard,
    slots: usize,
    a: &[f32],
    b: &[f32],
    tile: &mut [f32],
    accumulate: bool,
    ahead: Ahead<'_>,
) {
    // Divisions, not products: a huge `slots` must not wrap past the check.
    assert!(slots <= a.len() / MR && slots <= b.len() / NR && tile.len() >= MR * NR);
    let c = tile.as_mut_ptr();
    if accumulate {
        // Each load reads 16 rows of 64 bytes at stride 128 from inside
        // the 32 x 32 f32 `tile`: rows 0..16 / 16..32, columns 0..16 /
        // 16..32.
        // SAFETY: `_tiles` proves the tiles are configured (at most 16 x 64
        // bytes each, module docs); the loads stay inside `tile` (asserted).
        unsafe {
            asm!(
                "tileloadd tmm0, [{c} + {s}*1]",
                "tileloadd tmm1, [{c} + {s}*1 + 64]",
                "tileloadd tmm2, [{c} + {s}*1 + 2048]",
                "tileloadd tmm3, [{c} + {s}*1 + 2112]",
                c = in(reg) c,
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
    let full = slots / ROW_GROUP;
    let tail = slots % ROW_GROUP;
    // The first `with` groups run beside prefetches: the next call's
    // group of the same index, or a 256-byte step of the B~ share.
    let with = match ahead {
        Ahead::Nothing => 0,
        Ahead::NextOperand(next) => (next.len() / GROUP_SLOTS).min(full),
        Ahead::PanelAndTile { b_share, .. } => (b_share.len() / SHARE_STEP).min(full),
    };
    let (a_ptr, b_ptr) = (a.as_ptr(), b.as_ptr());
    // SAFETY: `full` groups of `GROUP_SLOTS` f32 slots are inside `a` and
    // `b` (slots * 32 <= len, asserted above); prefetches never fault.
    unsafe {
        match ahead {
            Ahead::NextOperand(p) => groups_prefetch(_tiles, a_ptr, b_ptr, p.as_ptr(), with),
            Ahead::PanelAndTile { b_share, next_tile } => {
                groups_panel_and_tile(_tiles, a_ptr, b_ptr, b_share.as_ptr(), next_tile, with)
            }
            Ahead::Nothing => {}
        }
        let (a, b) = (a_ptr.add(with * GROUP_SLOTS), b_ptr.add(with * GROUP_SLOTS));
        groups(_tiles, a, b, full - with);
    }
    if tail > 0 {
        // The short last group: copy it into full, zero-padded groups (zero
        // pairs add nothing) so the tiles keep one configuration.
        let mut at = Group([0.0; GROUP_SLOTS]);
        let mut bt = Group([0.0; GROUP_SLOTS]);
        let a_tail = &a[full * GROUP_SLOTS..full * GROUP_SLOTS + tail * MR];
        for (lane, run) in a_tail.chunks_exact(tail).enumerate() {
            at.0[lane * ROW_GROUP..lane * ROW_GROUP + tail].copy_from_slice(run);
        }
        let b_tail = &b[full * GROUP_SLOTS..full * GROUP_SLOTS + tail * NR];
        bt.0[..tail * NR].copy_from_slice(b_tail);
        // SAFETY: one group of `GROUP_SLOTS` slots in each local buffer.
        unsafe { groups(_tiles, at.0.as_ptr(), bt.0.as_ptr(), 1) };
    }
    // Each store writes 16 rows of 64 bytes at stride 128.
    // SAFETY: tiles are configured (`_tiles`); the stores stay inside the
    // 32 x 32 f32 `tile`, borrowed mutably (asserted above).
    unsafe {
        asm!(
            "tilestored [{c} + {s}*1], tmm0",
            "tilestored [{c} + {s}*1 + 64], tmm1",
            "tilestored [{c} + {s}*1 + 2048], tmm2",
            "tilestored [{c} + {s}*1 + 2112], tmm3",
            c = in(reg) c,
            s = in(reg) C_STRIDE,
            options(nostack),
        );
    }
}

/// One packed group, aligned to a cache line.
#[repr(C, align(64))]
struct Group([f32; GROUP_SLOTS]);

/// The loop of [`groups`], with `$extra` (instructions, and the operands
/// they name) after each group's first `tdpbf16ps`.
///
/// Software-pipelined: the four operand tiles of group `g + 1` are loaded
/// while group `g` runs, each right after the last `tdpbf16ps` that reads
/// its register (tile registers are not renamed, so a load must wait for
/// the previous readers of its register), and A~ through `tileloaddt1`:
/// each A~ tile is read once per B~ micro-panel and comes from L2, so the
/// hint keeps it from pushing the B~ micro-panel (reused by every A~ panel
/// of the block) out of L1. Both changes pay on one thread against the
/// plain loop (`tileloadd` only, loads at the top of each group), and cost
/// nothing on 16 (see BENCHMARKS.md, AMX).
macro_rules! group_loop {
    ($a:ident, $b:ident, $n:ident, [$($extra:literal),*] $(, $name:ident = $op:expr)*) => {
        asm!(
            "tileloaddt1 tmm4, [{a} + {sa}*1]",
            "tileloadd tmm6, [{b} + {sb}*1]",
            "tileloadd tmm7, [{b} + {sb}*1 + 64]",
            "tileloaddt1 tmm5, [{a} + {sa}*1 + 1024]",
            "dec {n}",
            "jz 3f",
            "2:",
            "tdpbf16ps tmm0, tmm4, tmm6",
            $($extra,)*
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloaddt1 tmm4, [{a} + {sa}*1 + 2048]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tileloadd tmm6, [{b} + {sb}*1 + 2048]",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "tileloadd tmm7, [{b} + {sb}*1 + 2112]",
            "tileloaddt1 tmm5, [{a} + {sa}*1 + 3072]",
            "add {a}, 2048",
            "add {b}, 2048",
            "dec {n}",
            "jnz 2b",
            // The last group: its tiles are loaded, nothing follows.
            "3:",
            "tdpbf16ps tmm0, tmm4, tmm6",
            $($extra,)*
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            a = inout(reg) $a => _,
            b = inout(reg) $b => _,
            n = inout(reg) $n => _,
            sa = in(reg) A_STRIDE,
            sb = in(reg) B_STRIDE,
            $($name = inout(reg) $op => _,)*
            options(nostack, readonly),
        )
    };
}

/// `tmm0..tmm3 += A~ B~` over `n` packed groups.
///
/// # Safety
///
/// `a` and `b` must each be valid for reads of `n * GROUP_SLOTS` f32, and
/// this thread's tiles configured (the guard's proof).
#[inline(always)]
unsafe fn groups(_tiles: &TileGuard, a: *const f32, b: *const f32, n: usize) {
    if n == 0 {
        return;
    }
    // Per group the loop reads A rows 0..16 and 16..32 (16 x 64 bytes each
    // at stride 64: bytes 0..2048) and B columns 0..16 and 16..32 (16 x 64
    // bytes at stride 128, offsets 0 and 64: bytes 0..2048): group 0 before
    // the loop, group g + 1 while computing group g for g < n - 1, so the
    // last read ends at byte n * 2048.
    // SAFETY: tiles are configured (`_tiles`); the reads stay inside what
    // the caller guarantees; it writes only tiles and its own registers.
    unsafe { group_loop!(a, b, n, []) }
}

/// [`groups`], and the first 1024 bytes of each of `n` groups of `next`
/// prefetched into L1 (16 lines per 4 `tdpbf16ps`: half a group, which was
/// faster than a whole one, docs/tried.md; the driver asks for it on
/// several threads only, see `blis::Prefetch`).
///
/// # Safety
///
/// As [`groups`]; `next` need only be an address (prefetches never fault).
#[inline(always)]
unsafe fn groups_prefetch(
    _tiles: &TileGuard,
    a: *const f32,
    b: *const f32,
    next: *const f32,
    n: usize,
) {
    if n == 0 {
        return;
    }
    // SAFETY: as in `groups`; PREFETCHT0 reads nothing architecturally.
    unsafe {
        group_loop!(
            a,
            b,
            n,
            [
                "prefetcht0 [{p}]",
                "prefetcht0 [{p} + 64]",
                "prefetcht0 [{p} + 128]",
                "prefetcht0 [{p} + 192]",
                "prefetcht0 [{p} + 256]",
                "prefetcht0 [{p} + 320]",
                "prefetcht0 [{p} + 384]",
                "prefetcht0 [{p} + 448]",
                "prefetcht0 [{p} + 512]",
                "prefetcht0 [{p} + 576]",
                "prefetcht0 [{p} + 640]",
                "prefetcht0 [{p} + 704]",
                "prefetcht0 [{p} + 768]",
                "prefetcht0 [{p} + 832]",
                "prefetcht0 [{p} + 896]",
                "prefetcht0 [{p} + 960]",
                "add {p}, 2048"
            ],
            p = next
        )
    }
}

/// f32 of [`Ahead::PanelAndTile`] prefetched per group: four lines.
const SHARE_STEP: usize = 64;

/// [`groups`], and per group four lines of `later` prefetched into L2
/// (`prefetcht1`) and four of `tile` into L1 (`prefetcht0`): `n` steps of
/// [`SHARE_STEP`] each. The driver hands each of the 8 calls on one B~
/// micro-panel an eighth of the next one (4 KiB, the 16 groups of a KC =
/// 512 call) and the next call's accumulator tile (4 KiB), on one thread
/// (see `blis::Prefetch`).
///
/// # Safety
///
/// As [`groups`]; `later` and `tile` need only be addresses.
#[inline(always)]
unsafe fn groups_panel_and_tile(
    _tiles: &TileGuard,
    a: *const f32,
    b: *const f32,
    later: *const f32,
    tile: *const f32,
    n: usize,
) {
    if n == 0 {
        return;
    }
    // SAFETY: as in `groups`; prefetches read nothing architecturally.
    unsafe {
        group_loop!(
            a,
            b,
            n,
            [
                "prefetcht1 [{p}]",
                "prefetcht1 [{p} + 64]",
                "prefetcht1 [{p} + 128]",
                "prefetcht1 [{p} + 192]",
                "prefetcht0 [{t}]",
                "prefetcht0 [{t} + 64]",
                "prefetcht0 [{t} + 128]",
                "prefetcht0 [{t} + 192]",
                "add {p}, 256",
                "add {t}, 256"
            ],
            p = later,
            t = tile
        )
    }
}

// The group arithmetic above assumes these.
const _: () = assert!(GROUP_SLOTS * 4 == 2048 && SHARE_STEP * 4 == 256);
const _: () = assert!(tile::MR == MR && tile::NR == NR);
