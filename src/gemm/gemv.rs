//! The small-m path (m <= [`GEMV_MAX_M`], as in decode-time inference, and
//! for a large B up to a kernel's [`RowOps::SMALL_M_ROW`] /
//! [`RowOps::SMALL_M_DOT`], where packing B for so few rows costs more
//! than streaming it again): B is streamed without packing, once per 16
//! rows of A, and those rows are widened once into a small k-major buffer.
//!
//! For row-major B (`k x n`, unit column stride) the columns are cut into
//! blocks whose f32 accumulators (`m x NB`) stay in L1, and each block
//! runs the kernel's [`RowOps::gemv_block`] over the whole k (the SIMD
//! ISAs run `arch::generic::gemv`: a tile of accumulators in registers
//! over a few B rows, each B row read left to right). Each output is
//! summed in k order with one fused multiply-add per product, exactly as
//! the `Format::F32` microkernels sum it, so this path and the packed one
//! give the same bits.
//!
//! For a B whose columns are contiguous (unit row stride: the transpose of
//! row-major weights `W (n x k)`, as `x W^T` passes them) [`run_dot`] takes
//! dot products of A's rows with W's rows instead, each W row read once
//! from start to end ([`DotBlock`]: lane-wise partial sums, a different
//! order from the packed path's, inside the same bound). Packing such a B
//! for a few rows of A would cost as much as the product several times.
//!
//! A `PackedB` with few rows of A streams its panels too, instead of
//! padding the rows to the kernel's tile: in the f32 format each panel is
//! a row-major `k x NR` matrix for [`RowOps::gemv_block`] ([`run_panels`],
//! the same bits as the tiles); bf16 pairs go through the kernel's own
//! pair step ([`run_pairs`], `vdpbf16ps`, where AMX's tile would be 32
//! rows for one).

use super::blis::{PackedPanels, c_ptr, store_row};
use super::view::{MatMut, MatRef};
use crate::element::Element;
use crate::isa::Token;
use crate::isa::ops::DotBlock;
use crate::kernel::epilogue::Epilogue;
use crate::kernel::gemm::{Format, GEMV_BLOCK_FLOATS, Microkernel, RowOps};
use crate::pool::sum_over_threads;

/// The largest m this path takes with every kernel (the rows of one pass
/// over B, and of one AMX tile).
pub(crate) const GEMV_MAX_M: usize = 16;

/// Elements of B from which a kernel streams it for more than
/// [`GEMV_MAX_M`] rows of A (4 Mi: 8 MiB of bf16): a smaller B~ stays in
/// cache once packed, and the packed path wins.
const LARGE_B: usize = 1 << 22;

/// Whether a kernel that streams B for up to `max_m` rows of A streams
/// it for these `m` rows.
fn few_rows<T: Element>(a: &MatRef<'_, T>, b: &MatRef<'_, T>, max_m: usize) -> bool {
    a.rows <= GEMV_MAX_M || (a.rows <= max_m && b.rows.saturating_mul(b.cols) >= LARGE_B)
}

/// Whether [`run`] applies (and wins) for these operands with a kernel
/// that takes it up to `max_m` rows of A.
pub(crate) fn applies<T: Element>(a: &MatRef<'_, T>, b: &MatRef<'_, T>, max_m: usize) -> bool {
    few_rows(a, b, max_m) && (b.cs == 1 || b.cols <= 1) && b.rows > 0
}

/// Whether [`run_dot`] applies: at most `max_m` rows of A and a B read
/// along k (and not one [`run`] takes: a row-major B, or a single column).
pub(crate) fn dot_applies<T: Element>(a: &MatRef<'_, T>, b: &MatRef<'_, T>, max_m: usize) -> bool {
    few_rows(a, b, max_m) && b.rs == 1 && b.cs != 1 && b.cols > 1 && b.rows > 0
}

/// The split of W's rows (columns of C) over threads is in multiples of
/// this many.
const DOT_COLS: usize = 64;

/// Bytes of scratch [`run_dot`] allocates: A widened (`m` rows padded to
/// whole vectors), the dot products (`m x n`, split between the threads),
/// and at most as much again for a kernel's own copy of A; `None` on
/// overflow.
pub(crate) fn dot_scratch_bytes(m: usize, n: usize, k: usize) -> Option<usize> {
    let kp = k.checked_next_multiple_of(crate::arch::generic::dot::PAD)?;
    m.checked_mul(kp)?
        .checked_mul(2)?
        .checked_add(m.checked_mul(n.checked_add(DOT_COLS)?)?)?
        .checked_mul(size_of::<f32>())
        .filter(|&bytes| bytes <= isize::MAX as usize)
}

/// The small-m GEMM for a column-major B (see the module docs); returns
/// the number of non-finite outputs. Each thread's range of columns (a
/// multiple of [`DOT_COLS`]) is one [`DotBlock`] on `token`'s ISA
/// ([`Token::dot`]); `kern` (the same ISA's microkernel) stores it.
pub(crate) fn run_dot<K: RowOps, T: Element, C: Element>(
    token: Token,
    kern: K,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    c: MatMut<'_, C>,
    ep: &Epilogue<'_>,
    threads: usize,
) -> usize {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    // Checked for real: the rows below are written through a raw pointer.
    assert_eq!((b.rows, c.rows, c.cols), (k, m, n), "gemv shapes");
    assert!(b.rs == 1, "run_dot reads B's columns along k");
    if m == 0 || n == 0 {
        return 0;
    }
    let kp = k.next_multiple_of(crate::arch::generic::dot::PAD);
    // A widened, row by row, zero-padded to kp.
    let mut aw = vec![0.0f32; m * kp];
    for (r, row) in aw.chunks_exact_mut(kp).enumerate() {
        if a.cs == 1 {
            kern.widen(&a.data[r * a.rs..][..k], &mut row[..k]);
        } else {
            for (l, x) in row[..k].iter_mut().enumerate() {
                *x = a.at(r, l).to_f32();
            }
        }
    }
    let blocks = n.div_ceil(DOT_COLS);
    let threads = threads.min(blocks).max(1);
    let per = blocks.div_ceil(threads) * DOT_COLS;
    let (cptr, c_len) = c_ptr(c);
    let aw = &aw;
    let prepared = &std::sync::OnceLock::new();
    let one_row = m == 1 && crate::arch::generic::dot::one_w_row_at_a_time();
    let work = |t: usize| -> usize {
        let _mode = crate::fp_env::Ieee::enter();
        let (lo, hi) = ((t * per).min(n), ((t + 1) * per).min(n));
        let cols = hi - lo;
        if cols == 0 {
            return 0;
        }
        // One operation over the thread's whole range; a kernel with its
        // own form of A (AMX's) makes it once per call in `prepared`.
        let mut dots = vec![0.0f32; m * cols];
        token.dot(DotBlock {
            a: aw,
            m,
            kp,
            w: &b.data[lo * b.cs..],
            ws: b.cs,
            k,
            cols,
            out: &mut dots,
            prepared,
            one_row,
        });
        let mut bad = 0;
        for (r, row) in dots.chunks_exact_mut(cols).enumerate() {
            // SAFETY: row r < m, columns lo..hi <= n, this thread's own
            // range (shapes checked above; ranges disjoint).
            bad += unsafe { store_row(kern, ep, row, r, lo, cptr, c_len) };
        }
        bad
    };
    sum_over_threads(threads, work)
}

/// Whether [`run_panels`] takes a `PackedB` packed for kernel `K` with
/// `m` rows of A: up to 16 rows, where the kernel's tiles would pad them
/// by a quarter or more (one row on every kernel; 7-9 and 13-14 on
/// AVX2's six-row tile, 15-16 on AVX-512's fourteen). Where the tiles
/// waste less they were faster (AVX2 m = 12 and 16, AVX-512 m = 14;
/// BENCHMARKS.md).
pub(crate) fn panels_apply<K: Microkernel + RowOps>(m: usize) -> bool {
    K::FORMAT == Format::F32 && m <= GEMV_MAX_M && m.div_ceil(K::MR) * K::MR * 4 >= m * 5
}

/// The small-m path for a `PackedB` in [`Format::F32`] (f32 and f16
/// weights, and bf16 where the kernel widens): each `NR`-column B~ panel
/// is a row-major `k x NR` f32 matrix, which [`RowOps::gemv_block`]
/// streams once for all the rows ([`panels_apply`]), where the blocked
/// path would pad them to the kernel's `MR`-row tiles and pack A~. The
/// same bits as those tiles (one FMA per product in k order on both, see
/// the module docs). Each thread takes a contiguous range of panels.
/// Returns the number of non-finite outputs.
pub(crate) fn run_panels<K: Microkernel + RowOps, T: Element, C: Element>(
    kern: K,
    a: MatRef<'_, T>,
    packed: &PackedPanels,
    c: MatMut<'_, C>,
    ep: &Epilogue<'_>,
    threads: usize,
) -> usize {
    let (m, k, n, nr) = (a.rows, packed.k, packed.n, K::NR);
    // Checked for real: the rows below are written through a raw pointer.
    assert_eq!((a.cols, c.rows, c.cols), (k, m, n), "gemm shapes");
    assert!(panels_apply::<K>(m) && packed.format == K::FORMAT && packed.nr == nr);
    if m == 0 || n == 0 {
        return 0;
    }
    let mp = kern.gemv_rows(m);
    assert!(mp >= m && mp < 2 * m, "gemv_rows({m}) = {mp}");
    // A, widened, k-major and padded with zero rows: xt[l * mp + r] = a[r][l].
    let mut xt = vec![0.0f32; k * mp];
    for r in 0..m {
        for l in 0..k {
            xt[l * mp + r] = a.at(r, l).to_f32();
        }
    }
    let panels = n.div_ceil(nr);
    let panel_len = k * nr;
    debug_assert_eq!(panel_len * panels, packed.data().len());
    let threads = threads.min(panels).max(1);
    let (cptr, c_len) = c_ptr(c);
    let xt = &xt;
    let work = |t: usize| -> usize {
        let _mode = crate::fp_env::Ieee::enter();
        let mut acc = vec![0.0f32; mp * nr];
        let mut tmp = Vec::new();
        let mut bad = 0;
        for p in t * panels / threads..(t + 1) * panels / threads {
            let b = &packed.data()[p * panel_len..(p + 1) * panel_len];
            // Zero columns pad the last panel to NR: computed, not stored.
            kern.gemv_block(xt, mp, b, nr, &mut acc, &mut tmp);
            let (j0, cols) = (p * nr, nr.min(n - p * nr));
            let tile = &mut acc[..m * nr];
            // SAFETY: rows 0..m, columns j0..j0 + cols <= n: this thread's
            // own panels (shapes checked above; ranges disjoint).
            bad += unsafe { store_tile(kern, ep, tile, nr, 0, j0, cols, (cptr, c_len)) };
        }
        bad
    };
    sum_over_threads(threads, work)
}

/// Stores the first `cols` of each `w`-wide row of `tile` as rows `i0..`
/// of C from column `j0`, through the epilogue; returns the number of
/// non-finite outputs.
///
/// # Safety
///
/// Those rows and columns lie inside the C of `c` ([`c_ptr`]), whose borrow
/// outlives the call, and no other thread writes them meanwhile.
#[expect(clippy::too_many_arguments, reason = "internal: a tile's place in C")]
unsafe fn store_tile<K: RowOps, C: Element>(
    kern: K,
    ep: &Epilogue<'_>,
    tile: &mut [f32],
    w: usize,
    i0: usize,
    j0: usize,
    cols: usize,
    (cptr, c_len): (super::blis::CPtr<C>, usize),
) -> usize {
    let mut bad = 0;
    for (r, row) in tile.chunks_exact_mut(w).enumerate() {
        // SAFETY: row i0 + r, columns j0..j0 + cols: inside C, this
        // thread's alone (the contract).
        bad += unsafe { store_row(kern, ep, &mut row[..cols], i0 + r, j0, cptr, c_len) };
    }
    bad
}

/// Bytes of scratch [`run_panels`] allocates: A widened (`k x mp`, `mp <
/// 2m`) and a tile of `mp x NR` per thread; `None` on overflow.
pub(crate) fn panels_scratch_bytes(m: usize, k: usize, nr: usize, threads: usize) -> Option<usize> {
    let mp = m.checked_mul(2)?;
    k.checked_mul(mp)?
        .checked_add(threads.checked_mul(mp.checked_mul(nr)?)?)?
        .checked_mul(size_of::<f32>())
        .filter(|&bytes| bytes <= isize::MAX as usize)
}

/// Bytes of scratch [`run_pairs`] allocates: A as bf16 pairs (`m` rows
/// of `ceil(k / 2)` slots) and a tile of `m x 32` f32 per thread; `None`
/// on overflow.
pub(crate) fn pairs_scratch_bytes(m: usize, k: usize, threads: usize) -> Option<usize> {
    m.checked_mul(k.div_ceil(2))?
        .checked_add(threads.checked_mul(m.checked_mul(PAIRS_NR)?)?)?
        .checked_mul(size_of::<f32>())
        .filter(|&bytes| bytes <= isize::MAX as usize)
}

/// Lanes of the B~ panels [`RowOps::pairs_panel`] reads.
pub(crate) const PAIRS_NR: usize = 32;

/// Whether [`run_pairs`] takes a `PackedB` packed for kernel `K` with `m`
/// rows of A.
pub(crate) fn pairs_apply<K: Microkernel + RowOps>(m: usize) -> bool {
    K::FORMAT == Format::Bf16Pairs && K::NR == PAIRS_NR && m <= K::PAIRS_MAX_M && K::PAIRS_ROWS > 0
}

/// The small-m path for a `PackedB` in [`Format::Bf16Pairs`] (bf16 weights
/// packed for a `vdpbf16ps` or AMX kernel) with at most
/// [`RowOps::PAIRS_MAX_M`] rows of A: each B~ panel is read from start to
/// end for up to [`RowOps::PAIRS_ROWS`] rows at a time
/// ([`RowOps::pairs_panel`]; the second pass, if any, from L2), where the
/// blocked path would run the kernel's `MR`-row tile (32 rows on AMX)
/// for these few and pack A~ for it. Each thread takes a contiguous range
/// of panels, one stream through B~. Returns the number of non-finite
/// outputs.
pub(crate) fn run_pairs<K: Microkernel + RowOps, T: Element, C: Element>(
    kern: K,
    a: MatRef<'_, T>,
    packed: &PackedPanels,
    c: MatMut<'_, C>,
    ep: &Epilogue<'_>,
    threads: usize,
) -> usize {
    let (m, k, n) = (a.rows, packed.k, packed.n);
    // Checked for real: the rows below are written through a raw pointer.
    assert_eq!((a.cols, c.rows, c.cols), (k, m, n), "gemm shapes");
    assert!(pairs_apply::<K>(m) && packed.format == K::FORMAT && packed.nr == PAIRS_NR);
    if m == 0 || n == 0 {
        return 0;
    }
    // A as bf16 pairs in groups of up to PAIRS_ROWS rows, each group
    // slot-major (`ap[s * rows + i]`, as A~ lays out a panel), the last
    // slot's upper half zero for an odd k. The pairs of B~ run over k in
    // order whatever its KC blocks (each block is even).
    let slots = k.div_ceil(2);
    let bits = |i: usize, l: usize| -> u32 {
        if l < k {
            u32::from(half::bf16::from_f32(a.at(i, l).to_f32()).to_bits())
        } else {
            0
        }
    };
    let mut ap = vec![0.0f32; slots * m];
    let groups: Vec<(usize, usize)> = (0..m)
        .step_by(K::PAIRS_ROWS)
        .map(|g0| (g0, K::PAIRS_ROWS.min(m - g0)))
        .collect();
    for &(g0, rows) in &groups {
        let group = &mut ap[g0 * slots..(g0 + rows) * slots];
        for (s, pairs) in group.chunks_exact_mut(rows).enumerate() {
            for (i, p) in pairs.iter_mut().enumerate() {
                *p = f32::from_bits(bits(g0 + i, 2 * s) | bits(g0 + i, 2 * s + 1) << 16);
            }
        }
    }
    let panels = n.div_ceil(PAIRS_NR);
    let panel_len = slots * PAIRS_NR;
    debug_assert_eq!(panel_len * panels, packed.data().len());
    let threads = threads.min(panels).max(1);
    let (cptr, c_len) = c_ptr(c);
    let (ap, groups) = (&ap, &groups);
    let work = |t: usize| -> usize {
        let _mode = crate::fp_env::Ieee::enter();
        let mut tile = vec![0.0f32; K::PAIRS_ROWS * PAIRS_NR];
        let mut bad = 0;
        for p in t * panels / threads..(t + 1) * panels / threads {
            let b = &packed.data()[p * panel_len..(p + 1) * panel_len];
            let (j0, cols) = (p * PAIRS_NR, PAIRS_NR.min(n - p * PAIRS_NR));
            for &(g0, rows) in groups {
                let group = &ap[g0 * slots..(g0 + rows) * slots];
                let tile = &mut tile[..rows * PAIRS_NR];
                let done = kern.pairs_panel(rows, group, b, tile);
                assert!(done, "pairs_apply promised a pairs kernel");
                // SAFETY: rows g0..g0 + rows <= m, columns j0..j0 + cols <= n:
                // this thread's own panels (shapes checked above).
                bad += unsafe { store_tile(kern, ep, tile, PAIRS_NR, g0, j0, cols, (cptr, c_len)) };
            }
        }
        bad
    };
    sum_over_threads(threads, work)
}

/// Bytes of scratch [`run`] allocates, at most: one group of rows of A
/// widened (`k x mp` f32, with the kernel's padded row count `mp < 2m`,
/// see [`RowOps::gemv_rows`]) and each thread's accumulators (and widened
/// B rows, [`GEMV_BLOCK_FLOATS`] at most); `None` on overflow.
pub(crate) fn scratch_bytes(m: usize, k: usize, threads: usize) -> Option<usize> {
    let mp = m.min(GROUP_ROWS).checked_mul(2)?;
    let per_thread = GEMV_BLOCK_FLOATS;
    k.checked_mul(mp)?
        .checked_add(threads.checked_mul(per_thread)?)?
        .checked_mul(size_of::<f32>())
        .filter(|&bytes| bytes <= isize::MAX as usize)
}

/// Runs the small-m GEMM, [`GROUP_ROWS`] rows of A at a time (one pass
/// over B each: at 16 rows the kernels are bound by their multiply-adds,
/// not by B's bytes); returns the number of non-finite outputs.
pub(crate) fn run<K: RowOps, T: Element, C: Element>(
    kern: K,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    c: MatMut<'_, C>,
    ep: &Epilogue<'_>,
    threads: usize,
) -> usize {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    // Checked for real: the rows below are written through a raw pointer.
    assert_eq!((b.rows, c.rows, c.cols), (k, m, n), "gemv shapes");
    if m == 0 || n == 0 {
        return 0;
    }
    let (cptr, c_len) = c_ptr(c);
    let mut bad = 0;
    let mut g0 = 0;
    while g0 < m {
        let rows = GROUP_ROWS.min(m - g0);
        bad += run_group(kern, &a, &b, g0..g0 + rows, (cptr, c_len), ep, threads);
        g0 += rows;
    }
    bad
}

/// Rows of A one pass over B takes.
const GROUP_ROWS: usize = 16;

/// Rows `g` of A (at most [`GROUP_ROWS`]) times B, into the same rows of C.
fn run_group<K: RowOps, T: Element, C: Element>(
    kern: K,
    a: &MatRef<'_, T>,
    b: &MatRef<'_, T>,
    g: core::ops::Range<usize>,
    (cptr, c_len): (super::blis::CPtr<C>, usize),
    ep: &Epilogue<'_>,
    threads: usize,
) -> usize {
    let (m, k, n) = (g.len(), a.cols, b.cols);
    // Rows of the kernel's tile: A and the accumulators are padded to it.
    let mp = kern.gemv_rows(m);
    assert!(mp >= m && mp < 2 * m, "gemv_rows({m}) = {mp}");
    // A, widened, k-major and padded with zero rows: xt[l * mp + r] = a[r][l].
    let mut xt = vec![0.0f32; k * mp];
    for r in 0..m {
        for l in 0..k {
            xt[l * mp + r] = a.at(g.start + r, l).to_f32();
        }
    }
    let nb = kern.gemv_cols(mp);
    assert!(
        nb % 16 == 0 && nb > 0 && (mp + 4) * nb <= GEMV_BLOCK_FLOATS,
        "gemv_cols"
    );
    // Blocks of `nb` columns, narrower (down to 256) where that gives each
    // thread one; thread t takes blocks t, t + threads, ...: the threads
    // read neighbouring pieces of the same B rows at about the same time,
    // where one contiguous range per thread had them stream pieces of
    // rows far apart, which scaled worse (BENCHMARKS.md, "Small-m column
    // blocks dealt out to the threads").
    let per = n.div_ceil(threads.max(1)).div_ceil(16) * 16;
    let bw = nb.min(per.max(256));
    let blocks = n.div_ceil(bw);
    let threads = threads.min(blocks).max(1);
    let xt = &xt;
    let work = |t: usize| -> usize {
        let _mode = crate::fp_env::Ieee::enter();
        let mut acc = vec![0.0f32; mp * bw.min(n)];
        let mut tmp = Vec::new();
        let mut bad = 0;
        for j0 in (t * bw..n).step_by(threads * bw) {
            let w = bw.min(n - j0);
            let acc = &mut acc[..mp * w];
            // Column j0 of B's rows: `applies` gives a unit column stride,
            // or a single column (j0 = 0).
            let bj = &b.data[j0..];
            kern.gemv_block(xt, mp, bj, b.rs, acc, &mut tmp);
            for (r, row) in acc.chunks_mut(w).take(m).enumerate() {
                // SAFETY: row g.start + r of C, columns j0..j0 + w <= n of
                // this thread's own block (shapes checked by `run`).
                bad += unsafe { store_row(kern, ep, row, g.start + r, j0, cptr, c_len) };
            }
        }
        bad
    };
    sum_over_threads(threads, work)
}
