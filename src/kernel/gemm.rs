//! The microkernel trait: all an ISA supplies to the GEMM.
//!
//! A microkernel multiplies one packed `MR x kc` panel of A (`A~`) by one
//! packed `kc x NR` panel of B (`B~`) into an `MR x NR` f32 tile. Everything
//! else (the five BLIS loops, packing with zero-padded edges, the epilogue,
//! threads, the small-m path) is written once in `blis/` / `gemv.rs` and
//! calls the trait. A new ISA is one small file: a zero-sized
//! type holding its token, `MR`, `NR`, a [`Format`], and a `#[target_feature]`
//! kernel, usually [`generic_kernel`] instantiated with the ISA's features
//! enabled; a [`Blocking`] where the BLIS defaults don't suit it; and the
//! [`RowOps`] helpers (widening, narrowing, the small-m loops), whose
//! portable defaults an ISA overrides only where it has a faster
//! instruction.
//!
//! Packed panels are stored as `f32` slots: in [`Format::F32`] each slot is
//! one element widened to f32 (bf16/f16 are widened while packing, so the
//! kernel only does f32 FMA); in [`Format::Bf16Pairs`] each slot holds the
//! bits of two bf16 neighbours along k (even k in the low half), the layout
//! `vdpbf16ps`/`BFDOT` read.

pub(crate) use super::store::StoreBlock;
use crate::element::Element;
/// Depth of a packed block: a `KC x NR` micro-panel of B~ (32 KiB for
/// NR = 32 f32) stays in L1 (48 KiB here) while LOOP 1 runs over it. A
/// multiple of 4, so a bf16 pair or quad never straddles two blocks.
pub(crate) const KC: usize = 256;
/// Upper bound for the rows of an A~ block: `MC x KC` f32 = 168 KiB for
/// MC = 168, well inside a 2 MiB L2 with room for B~ micro-panels.
pub(crate) const MC_MAX: usize = 168;

/// What the calls after a kernel call read, for the kernel to prefetch
/// (see [`Microkernel::kernel_then`]): the per-call value, which the
/// driver's policy `blis::Prefetch::X` produces as `Ahead::X`.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(
    not(target_arch = "x86_64"),
    expect(dead_code, reason = "only the AMX kernel prefetches")
)]
pub(crate) enum Ahead<'a> {
    /// Nothing to prefetch.
    Nothing,
    /// The operand the next call reads first (an A~ panel or a B~
    /// micro-panel), wanted in L1 by the time that call starts.
    NextOperand(&'a [f32]),
    /// This call's share of a B~ micro-panel read a few calls later,
    /// wanted in L2, and the accumulator tile the next call loads, wanted
    /// in L1 (an address only, never dereferenced: it points into the
    /// workspace that this call's own tile is borrowed from).
    PanelAndTile {
        b_share: &'a [f32],
        next_tile: *const f32,
    },
}

/// How a microkernel wants its panels packed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// One f32 per slot: slot `s` of row `i` of `A~` at `s * MR + i`.
    F32,
    /// Two bf16 per slot (k = 2s in the low 16 bits, 2s + 1 in the high),
    /// `A~` slot `s` of row `i` at `s * MR + i`. Only for bf16 inputs.
    Bf16Pairs,
    /// Bf16 pairs as in [`Format::Bf16Pairs`], but slots come in twos (one
    /// k-quad) and lanes in twos (a lane pair), so each 16-byte group is one
    /// `BFMMLA` operand: a 2 x 4 row-major bf16 block. For quad `q` (slots
    /// `2q`, `2q + 1`, at `2q * MR` in `A~`) and lane pair `p`, the four
    /// slots at `2q * MR + 4p` are `[pair(2p, 2q), pair(2p, 2q + 1),
    /// pair(2p + 1, 2q), pair(2p + 1, 2q + 1)]`. `MR`/`NR` must be even;
    /// the slot count of a k range is rounded up to even (a whole quad).
    /// Only for bf16 inputs.
    Bf16Quads,
    /// Slots as in [`Format::Bf16Pairs`], but lane-major per group of
    /// [`ROW_GROUP`] slots (32 k values, one 64-byte AMX tile row): group
    /// `g` of a panel starts at slot `g * ROW_GROUP * w`, and inside it lane
    /// `i`'s slots are contiguous at `i * gs`, with `gs = ROW_GROUP` except
    /// for a shorter last group (`gs = slots - g * ROW_GROUP`), so a panel
    /// is exactly `slots * w` slots. Only for bf16 inputs, and only for A~
    /// (see [`Microkernel::FORMAT_A`]).
    Bf16Rows,
}

/// Slots per group of [`Format::Bf16Rows`].
pub(crate) const ROW_GROUP: usize = 16;

impl Format {
    /// k values per slot.
    pub(crate) const fn k_per_slot(self) -> usize {
        match self {
            Format::F32 => 1,
            Format::Bf16Pairs | Format::Bf16Quads | Format::Bf16Rows => 2,
        }
    }

    /// Slots of a k range of `len` values (padded with zeros to a whole slot,
    /// and to a whole quad for [`Format::Bf16Quads`]).
    pub(crate) const fn slots(self, len: usize) -> usize {
        match self {
            Format::Bf16Quads => len.div_ceil(4) * 2,
            _ => len.div_ceil(self.k_per_slot()),
        }
    }
}

/// How a kernel's GEMM is blocked and split over threads: plain data, so a
/// kernel states its policy in one place ([`Microkernel::BLOCKING`]) and
/// the drivers read it. [`Blocking::BLIS`] is the default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Blocking {
    /// Depth of a packed block (LOOP 4's step); even, so a bf16 pair never
    /// straddles two blocks. Default: see `blis::KC`.
    pub(crate) kc: usize,
    /// KC blocks each column of tiles of a block of C runs through before
    /// the next column starts (`blis::block`): 1 is the BLIS order (every
    /// column per KC block); more keep a column's accumulators near the
    /// core across its KC blocks while the run's A~ stays in L2.
    pub(crate) kc_run: usize,
    /// Most rows of a block of C in `blis::run` (B~ packed once): each B~
    /// micro-panel serves `mc / MR` A~ panels from L1. Default: see
    /// `blis::MC_MAX`. (`blis::run_local_b` keeps `MC_MAX`.)
    pub(crate) mc: usize,
    /// Whether threads pack their own B~ for their cells of C when B is
    /// not packed beforehand (see `blis::run_local_b`): for kernels so fast
    /// that fetching B~ panels other cores packed is the limit (AMX). The
    /// AVX-512 kernels were slower with it (every thread then packs all of
    /// A or all of B; docs/tried.md, Threads).
    pub(crate) local_b: bool,
    /// Whether large GEMMs on several threads pack A~ and B~ once, shared,
    /// and hand out blocks of C one at a time (see `blis::run_dynamic` and
    /// `blis::dynamic_pays`): for kernels whose speed differs from core to
    /// core (AMX on the lent host, where a static split waits long for its
    /// slowest thread). Not tried for the AVX-512 kernels.
    pub(crate) dynamic: bool,
    /// Whether the kernel calls of a GEMM on several threads prefetch as
    /// on one thread (the next B~ micro-panel into L2 in shares, the next
    /// accumulator tile into L1: `blis::Prefetch::PanelAndTile`) instead
    /// of the next operand into L1: for kernels that act on the former
    /// only (AVX2), which would otherwise prefetch nothing there.
    pub(crate) tile_prefetch_on_threads: bool,
}

impl Blocking {
    /// The BLIS defaults: [`KC`] and [`MC_MAX`], one KC block per column
    /// of tiles, B~ packed once and shared, a static split.
    pub(crate) const BLIS: Blocking = Blocking {
        kc: KC,
        kc_run: 1,
        mc: MC_MAX,
        local_b: false,
        dynamic: false,
        tile_prefetch_on_threads: false,
    };
}

/// One ISA's microkernel (see the module docs): the tile shape, the
/// packing formats, the blocking, and the kernel and store of a block.
/// Every type that implements it also implements [`RowOps`], which the
/// drivers need for packing and stores.
pub(crate) trait Microkernel: Copy + Send + Sync {
    /// Rows of the tile (rows of A per panel).
    const MR: usize;
    /// Columns of the tile (columns of B per panel).
    const NR: usize;
    /// The packing format the kernel reads (B~, and A~ unless
    /// [`Microkernel::FORMAT_A`] says otherwise).
    const FORMAT: Format;
    /// The packing format of A~; must have the same
    /// [`Format::k_per_slot`] as [`Microkernel::FORMAT`].
    const FORMAT_A: Format = Self::FORMAT;
    /// Blocking and thread split; `BLOCKING.kc` must be even.
    const BLOCKING: Blocking = Blocking::BLIS;
    /// Shown in [`GemmReport::kernel`](crate::GemmReport).
    const NAME: &'static str;

    /// `tile = (accumulate ? tile : 0) + A~ B~` over `slots` packed slots.
    /// `a` holds `slots * MR`, `b` `slots * NR` slots; `tile` is `MR x NR`,
    /// row-major. Sums in k order, one rounding per product-add (or per
    /// pair for [`Format::Bf16Pairs`]).
    fn kernel(self, slots: usize, a: &[f32], b: &[f32], tile: &mut [f32], accumulate: bool);

    /// [`Microkernel::kernel`], told what calls after it read
    /// ([`Ahead`]), which a kernel may prefetch as it goes.
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
        let _ = ahead;
        self.kernel(slots, a, b, tile, accumulate);
    }

    /// The epilogue and stores of a finished block (`job.run(self)`). An
    /// ISA overrides this only to compile it with its target features
    /// (the default is baseline code for the target).
    #[inline(always)]
    fn store_block<C: Element>(self, job: &StoreBlock<'_, C>) -> usize
    where
        Self: RowOps,
    {
        job.run(self)
    }
}

/// Something to run with the microkernel chosen for an ISA and input type
/// (`isa::Token::with_microkernel`): GEMM's operation trait, as
/// [`SimdOp`](super::simd::SimdOp) is the elementwise kernels'.
pub(crate) trait KernelOp {
    /// What the operation returns.
    type Output;
    /// Runs the operation with the chosen microkernel.
    fn run<K: Microkernel + RowOps>(self, kern: K) -> Self::Output;
    /// Whether this op takes the small-m path (see `gemv`) on an
    /// [`Format::F32`] kernel: where an ISA would pick a kernel that
    /// cannot (AMX, the bf16 dot kernels), it picks one that can.
    fn small_m(&self) -> bool {
        false
    }
}

/// The run-wise helpers of an ISA that are not the microkernel proper:
/// widening while packing, narrowing while storing, and the small-m
/// path's inner loops. `widen`/`narrow_f16`/`axpy_rows4_widen` have
/// portable defaults that an ISA overrides only where it has a faster
/// instruction.
pub(crate) trait RowOps: Copy + Send + Sync {
    /// The most rows of A for which an f32-format kernel streams a large
    /// row-major B through the small-m path (`gemm::gemv::run`, 16 rows
    /// of A per pass over B) instead of packing it: up to here one more
    /// pass over B costs less than packing B for so few rows.
    const SMALL_M_ROW: usize = crate::gemm::gemv::GEMV_MAX_M;
    /// [`RowOps::SMALL_M_ROW`] for f32 inputs, whose B costs twice the
    /// bytes per pass.
    const SMALL_M_ROW_F32: usize = Self::SMALL_M_ROW;
    /// The same for a B whose columns are contiguous (`x W^T`,
    /// `gemm::gemv::run_dot`), where packing B means transposing it.
    const SMALL_M_DOT: usize = crate::gemm::gemv::GEMV_MAX_M;

    /// Widens a contiguous run to f32 (`dst.len() == src.len()`).
    #[inline(always)]
    fn widen<T: Element>(self, src: &[T], dst: &mut [f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = s.to_f32();
        }
    }

    /// Packs `rows` (at most `w`, each a contiguous run of the same
    /// `depth`) into `dst[s * w + lane] = rows[lane][s]` for `s < depth`,
    /// widened as [`RowOps::widen`] widens them (an A~ panel of a
    /// row-major A). The caller zero-fills the lanes past `rows.len()`;
    /// an implementation may write zeros there too. Returns
    /// `false`, writing nothing, where the ISA has no transposing pack for
    /// this width (the default): the driver then gathers element by
    /// element, several times slower (BENCHMARKS.md, AVX2).
    #[inline(always)]
    fn pack_rows<T: Element>(self, rows: &[&[T]], w: usize, dst: &mut [f32]) -> bool {
        let _ = (rows, w, dst);
        false
    }

    /// Packs `rows` of bf16 (at most `w`, each a contiguous run of the same
    /// `depth`) into the slots of [`Format::Bf16Pairs`]: `dst[s * w +
    /// lane]` holds `rows[lane][2s]` in its low half and `rows[lane][2s +
    /// 1]` (zero past the run) in its high half (a B~ panel of a
    /// column-major B, as `Linear` weights). The caller zero-fills the
    /// lanes past `rows.len()`; an implementation may write zeros there
    /// too. Returns `false`, writing nothing, where the ISA has no
    /// transposing pack for this width (the default): the driver then
    /// moves pair by pair.
    #[inline(always)]
    fn pack_pairs(self, rows: &[&[half::bf16]], w: usize, dst: &mut [f32]) -> bool {
        let _ = (rows, w, dst);
        false
    }

    /// Rounds a contiguous run of f32 to f16, nearest-even
    /// (`dst.len() == src.len()`).
    #[inline(always)]
    fn narrow_f16(self, src: &[f32], dst: &mut [half::f16]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = <half::f16 as Element>::from_f32(*s);
        }
    }

    /// The small-m path's inner loop: `y[r][j] += x[r] * b[j]` for every row
    /// `r` (`y[r].len() == b.len()`), with the ISA's FMA when it has one.
    fn axpy_rows(self, x: &[f32], b: &[f32], y: &mut [&mut [f32]]);

    /// Four steps of [`RowOps::axpy_rows`] in one pass over `y`:
    /// `x` holds `x[q * m + r]` for step `q` and row `r`; the same roundings,
    /// in the same order, as four calls, with a quarter of the `y` traffic.
    fn axpy_rows4(self, x: &[f32], b: [&[f32]; 4], y: &mut [&mut [f32]]);

    /// [`RowOps::axpy_rows4`] over four B rows in their storage type
    /// (`b[q].len() == y[r].len()`), widened as [`RowOps::widen`]
    /// widens them: the same bits. The default widens into `tmp` (at least
    /// `4 * len` floats) and calls `axpy_rows4`; an ISA that widens in
    /// registers overrides it, so B crosses the core once.
    #[inline(always)]
    fn axpy_rows4_widen<T: Element>(
        self,
        x: &[f32],
        b: [&[T]; 4],
        tmp: &mut [f32],
        y: &mut [&mut [f32]],
    ) {
        let w = b[0].len();
        let (t0, rest) = tmp.split_at_mut(w);
        let (t1, rest) = rest.split_at_mut(w);
        let (t2, rest) = rest.split_at_mut(w);
        let t3 = &mut rest[..w];
        for (src, dst) in b.into_iter().zip([&mut *t0, &mut *t1, &mut *t2, &mut *t3]) {
            self.widen(src, dst);
        }
        self.axpy_rows4(x, [t0, t1, t2, t3], y);
    }

    /// Most rows of A that [`RowOps::pairs_panel`] takes; 0 where the
    /// kernel has none (every kernel not in [`Format::Bf16Pairs`]).
    const PAIRS_ROWS: usize = 0;

    /// Most rows of A for which a `PackedB` of this kernel runs
    /// [`RowOps::pairs_panel`] instead of the kernel's tiles: in passes of
    /// up to [`RowOps::PAIRS_ROWS`] rows over each panel (the later passes
    /// find the panel in L2).
    const PAIRS_MAX_M: usize = Self::PAIRS_ROWS;

    /// For a [`Format::Bf16Pairs`] kernel with 32-lane panels, `m` rows of
    /// A (`1..=PAIRS_ROWS`) over one B~ panel of `slots = b.len() / 32`
    /// slots: `out[i * 32 + j]` = the sum over `s`, in order, of the bf16
    /// pair `a[s * m + i]` times the pair `b[s * 32 + j]`, each pair
    /// accumulated as the kernel's own tile accumulates it (so the same
    /// bits as that tile's rows where the instruction is the same).
    /// Returns false, writing nothing, where the kernel has none.
    fn pairs_panel(self, m: usize, a: &[f32], b: &[f32], out: &mut [f32]) -> bool {
        let _ = (m, a, b, out);
        false
    }

    /// Rows of the small-m path's tile for `m` rows of A: the driver pads
    /// A (with zeros) and the accumulators to this many rows before
    /// [`RowOps::gemv_block`], and stores the first `m`. At least `m`, and
    /// below `2m`.
    #[inline(always)]
    fn gemv_rows(self, m: usize) -> usize {
        m
    }

    /// Columns of one [`RowOps::gemv_block`] call for `mp` padded rows: a
    /// multiple of 16, at most [`GEMV_BLOCK_FLOATS`]` / (mp + 4)`. The
    /// default keeps the accumulators and four widened B rows in 40 KiB
    /// (a 48 KiB L1d).
    #[inline(always)]
    fn gemv_cols(self, mp: usize) -> usize {
        (10 * 1024 / (mp + 4)).clamp(16, 4096) / 16 * 16
    }

    /// The small-m path's whole k over one block of columns:
    /// `y[r * w + j] = sum over l, in k order, of x[l * mp + r] * b[l * rs + j]`
    /// with one fused multiply-add per product (or a plain multiply and add
    /// where the ISA's [`RowOps::axpy_rows`] has no FMA), B widened as
    /// [`RowOps::widen`] widens it. `mp = gemv_rows(m)` rows, `k = x.len() /
    /// mp`, `w = y.len() / mp` columns; B's rows start `rs` elements apart
    /// (`rs` may be 0) with unit column stride, so `b` holds at least
    /// `(k - 1) * rs + w` elements when `k > 0`. `y` is overwritten (zeros
    /// for `k = 0`). The default runs [`RowOps::axpy_rows4_widen`] over the
    /// accumulators in `y`, four B rows per pass, widening through `tmp`;
    /// an ISA overrides it with a kernel that keeps a tile of accumulators
    /// in registers.
    fn gemv_block<T: Element>(
        self,
        x: &[f32],
        mp: usize,
        b: &[T],
        rs: usize,
        y: &mut [f32],
        tmp: &mut Vec<f32>,
    ) {
        generic_gemv_block(self, x, mp, b, rs, y, tmp);
    }
}

/// The portable [`RowOps::gemv_block`] (its default): four B rows per pass
/// over the accumulators in `y`, through [`RowOps::axpy_rows4_widen`].
pub(crate) fn generic_gemv_block<K: RowOps, T: Element>(
    kern: K,
    x: &[f32],
    mp: usize,
    b: &[T],
    rs: usize,
    y: &mut [f32],
    tmp: &mut Vec<f32>,
) {
    let (k, w) = gemv_block_shape(x, mp, b, rs, y);
    y.fill(0.0);
    let mut rows: Vec<&mut [f32]> = y.chunks_mut(w.max(1)).take(mp).collect();
    if w == 0 {
        return;
    }
    if tmp.len() < 4 * w {
        tmp.resize(4 * w, 0.0);
    }
    let row = |l: usize| &b[l * rs..l * rs + w];
    let mut l = 0;
    while l + 4 <= k {
        let x4 = &x[l * mp..(l + 4) * mp];
        kern.axpy_rows4_widen(
            x4,
            [row(l), row(l + 1), row(l + 2), row(l + 3)],
            tmp,
            &mut rows,
        );
        l += 4;
    }
    for l in l..k {
        let t = &mut tmp[..w];
        kern.widen(row(l), t);
        kern.axpy_rows(&x[l * mp..(l + 1) * mp], t, &mut rows);
    }
}

/// Upper bound of `(mp + 4) * gemv_cols(mp)`: the floats of one thread's
/// scratch in the small-m path.
pub(crate) const GEMV_BLOCK_FLOATS: usize = 40 * 1024;

/// `(k, w)` of a [`RowOps::gemv_block`] call, after checking its slices
/// agree (panics otherwise): kernels read B through raw pointers on the
/// strength of this check.
#[inline(always)]
pub(crate) fn gemv_block_shape<T>(
    x: &[f32],
    mp: usize,
    b: &[T],
    rs: usize,
    y: &[f32],
) -> (usize, usize) {
    assert!(
        mp > 0 && x.len().is_multiple_of(mp) && y.len().is_multiple_of(mp),
        "gemv_block rows"
    );
    let (k, w) = (x.len() / mp, y.len() / mp);
    if k > 0 {
        let need = (k - 1).checked_mul(rs).and_then(|o| o.checked_add(w));
        assert!(
            need.is_some_and(|need| need <= b.len()),
            "gemv_block: B too short"
        );
    }
    (k, w)
}

/// The f32 microkernel written once: LLVM keeps the `MR x NR` accumulators in
/// registers and vectorizes over `NR` when this is inlined into a
/// `#[target_feature]` function with `MR`/`NR` sized to the register file
/// (e.g. 14 x 32 for AVX-512: 28 zmm accumulators). `madd(a, b, c)` is
/// `a * b + c`, fused where the ISA has FMA.
#[inline(always)]
pub(crate) fn generic_kernel<const MR: usize, const NR: usize>(
    slots: usize,
    a: &[f32],
    b: &[f32],
    tile: &mut [f32],
    accumulate: bool,
    madd: impl Fn(f32, f32, f32) -> f32,
) {
    let mut acc = [[0.0f32; NR]; MR];
    if accumulate {
        for (i, row) in acc.iter_mut().enumerate() {
            row.copy_from_slice(&tile[i * NR..(i + 1) * NR]);
        }
    }
    for (ap, bp) in a.chunks_exact(MR).zip(b.chunks_exact(NR)).take(slots) {
        let ap: &[f32; MR] = ap.try_into().expect("MR slots");
        let bp: &[f32; NR] = bp.try_into().expect("NR slots");
        for i in 0..MR {
            for j in 0..NR {
                acc[i][j] = madd(ap[i], bp[j], acc[i][j]);
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        tile[i * NR..(i + 1) * NR].copy_from_slice(row);
    }
}

/// The small-m inner loop written once (see [`RowOps::axpy_rows`]).
#[inline(always)]
pub(crate) fn generic_axpy_rows(
    x: &[f32],
    b: &[f32],
    y: &mut [&mut [f32]],
    madd: impl Fn(f32, f32, f32) -> f32,
) {
    for (&xr, yr) in x.iter().zip(y.iter_mut()) {
        for (yv, &bv) in yr.iter_mut().zip(b) {
            *yv = madd(xr, bv, *yv);
        }
    }
}

/// Four fused steps of [`generic_axpy_rows`] (see
/// [`RowOps::axpy_rows4`]).
#[inline(always)]
pub(crate) fn generic_axpy_rows4(
    x: &[f32],
    b: [&[f32]; 4],
    y: &mut [&mut [f32]],
    madd: impl Fn(f32, f32, f32) -> f32,
) {
    let m = y.len();
    for (r, yr) in y.iter_mut().enumerate() {
        let (x0, x1, x2, x3) = (x[r], x[m + r], x[2 * m + r], x[3 * m + r]);
        let n = yr.len();
        let (b0, b1, b2, b3) = (&b[0][..n], &b[1][..n], &b[2][..n], &b[3][..n]);
        for j in 0..n {
            let t = madd(x0, b0[j], yr[j]);
            let t = madd(x1, b1[j], t);
            let t = madd(x2, b2[j], t);
            yr[j] = madd(x3, b3[j], t);
        }
    }
}
