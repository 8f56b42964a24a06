//! The split of C over threads: [`run`] (B~ packed once and shared, a
//! static split of row and column blocks), [`run_local_b`] (each thread
//! packs its own B~ for one cell of a grid) and [`run_dynamic`] (A~ and
//! B~ shared, blocks handed out one at a time), and the rules that choose
//! between them.

use super::block::{BlockJob, Prefetch, block};
use super::pack::{PackedPanels, pack_a_shared, pack_b_scratch, recycle};
use super::{MC_MAX, NC_MAX, div_ceil, scratch, total_slots};
use crate::element::Element;
use crate::gemm::view::{MatMut, MatRef};
use crate::kernel::epilogue::Epilogue;
use crate::kernel::gemm::{Microkernel, RowOps};
use crate::kernel::store::Block;
use crate::pool::sum_over_threads;

/// Runs the GEMM with B already packed by [`pack_b`](super::pack_b) for
/// this kernel ([`run_dynamic`] where [`dynamic_pays`]). Shapes, strides
/// and `packed` were validated by the caller. Returns the number of
/// non-finite outputs.
pub(crate) fn run<K: Microkernel + RowOps, T: Element, C: Element>(
    kern: K,
    a: MatRef<'_, T>,
    packed: &PackedPanels,
    c: MatMut<'_, C>,
    ep: &Epilogue<'_>,
    threads: usize,
) -> usize {
    let (m, k, n) = (a.rows, packed.k, packed.n);
    // Checked for real: the blocks below are cut from these sizes and
    // written through a raw pointer.
    assert_eq!((a.cols, c.rows, c.cols), (k, m, n), "gemm shapes");
    assert_eq!(
        (packed.format, packed.nr, packed.kc),
        (K::FORMAT, K::NR, K::BLOCKING.kc)
    );
    if m == 0 || n == 0 {
        return 0;
    }
    if dynamic_pays::<K>(m, n, k, threads) {
        return run_dynamic(kern, a, packed, c, ep, threads);
    }
    // Balanced blocks: MR-row panels spread evenly over `mb` blocks (sizes
    // differ by at most one panel), and `mb` a multiple of the thread count
    // so that the round-robin below gives every thread the same share.
    let panels = div_ceil(m, K::MR);
    let mut mb = div_ceil(m, K::BLOCKING.mc);
    if threads > 1 {
        mb = div_ceil(mb, threads) * threads;
    }
    let mb = mb.min(panels).max(1);
    // Narrower column blocks where there are fewer row blocks than threads
    // (few rows of A, as in decode with prepacked weights): every thread
    // then streams its own share of B~.
    let mut nb = div_ceil(n, NC_MAX);
    if mb * nb < threads {
        nb = div_ceil(threads, mb).min(div_ceil(n, K::NR));
    }
    let nc = div_ceil(div_ceil(n, nb), K::NR) * K::NR;
    let nb = div_ceil(n, nc);
    let rows_of = |ib: usize| (ib * panels / mb * K::MR).min(m);
    let items = mb * nb;
    let threads = threads.min(items).max(1);
    let (c, c_len) = super::c_ptr(c);
    let job = BlockJob {
        kern,
        a,
        shared_a: None,
        packed,
        packed_j0: 0,
        c,
        c_len,
        ep,
        ahead: Prefetch::for_threads(threads, K::BLOCKING),
    };
    let work = |t: usize| -> usize {
        let _mode = crate::fp_env::Ieee::enter();
        let mut ws = scratch::take_workspace();
        ws.a_rows = None; // A~ of an earlier call is stale
        let mut nonfinite = 0;
        // A contiguous run of items per thread, column blocks innermost:
        // the blocks of one row block follow each other on one thread, so
        // its A~ is packed once for all of them (see `block`).
        for item in t * items / threads..(t + 1) * items / threads {
            // LOOP 5 (jc) and LOOP 3 (ic), flattened into work items.
            let (ib, jc) = (item / nb, (item % nb) * nc);
            let (ic, ic_end) = (rows_of(ib), rows_of(ib + 1));
            let blk = Block {
                i0: ic,
                m: ic_end - ic,
                j0: jc,
                n: nc.min(n - jc),
            };
            // SAFETY: the items' blocks tile the m x n of C (checked above)
            // without overlap, and each item runs on one thread only.
            nonfinite += unsafe { block(&job, blk, &mut ws) };
        }
        scratch::give_workspace(ws);
        nonfinite
    };
    sum_over_threads(threads, work)
}

/// Runs the GEMM with unpacked B on `threads` > 1 threads: C is cut into
/// a grid of cells, one per thread (see [`grid`]), and each thread packs
/// the B~ of its own columns over all of k into its scratch, then runs its
/// cell's blocks. No packing pass before the threads start, and each
/// core's B~ stays in its own caches, where with B~ packed once and shared
/// every core fetches panels other cores have just written, which limits
/// a kernel as fast as AMX (see `AmxBf16::BLOCKING`, and BENCHMARKS.md, AMX).
/// Shapes and strides were validated by the caller. Returns the number of
/// non-finite outputs.
pub(crate) fn run_local_b<K: Microkernel + RowOps, T: Element, C: Element>(
    kern: K,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    c: MatMut<'_, C>,
    ep: &Epilogue<'_>,
    threads: usize,
) -> usize {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    // Checked for real: the cells are cut from these sizes.
    assert_eq!((b.rows, c.rows, c.cols), (k, m, n), "gemm shapes");
    if m == 0 || n == 0 {
        return 0;
    }
    let (pm, pn) = (div_ceil(m, K::MR), div_ceil(n, K::NR));
    let (mt, nt) = grid(pm, pn, threads);
    let rows_of = |i: usize| (i * pm / mt * K::MR).min(m);
    let cols_of = |j: usize| (j * pn / nt * K::NR).min(n);
    let (c, c_len) = super::c_ptr(c);
    let cell = |t: usize| -> usize {
        let _mode = crate::fp_env::Ieee::enter();
        let (i, j) = (t / nt, t % nt);
        let (r0, r1, c0, c1) = (rows_of(i), rows_of(i + 1), cols_of(j), cols_of(j + 1));
        if r0 == r1 || c0 == c1 {
            return 0;
        }
        // Columns c0..c1 of B, from element (0, c0) on (none when k = 0).
        let b_cell = MatRef {
            data: b.data.get(c0 * b.cs..).unwrap_or(&[]),
            rows: k,
            cols: c1 - c0,
            rs: b.rs,
            cs: b.cs,
        };
        let packed = pack_b_scratch(kern, b_cell, 1);
        let job = BlockJob {
            kern,
            a,
            shared_a: None,
            packed: &packed,
            packed_j0: c0,
            c,
            c_len,
            ep,
            ahead: Prefetch::NextOperand,
        };
        let mut ws = scratch::take_workspace();
        ws.a_rows = None; // A~ of an earlier call is stale
        let mut nonfinite = 0;
        // Row blocks of at most MC_MAX rows, column blocks of at most
        // NC_MAX columns, both balanced; column blocks innermost so each
        // row block's A~ is packed once.
        let (cpm, cpn) = (div_ceil(r1 - r0, K::MR), div_ceil(c1 - c0, K::NR));
        let (mb, nb) = (div_ceil(r1 - r0, MC_MAX), div_ceil(c1 - c0, NC_MAX));
        for ib in 0..mb {
            let i0 = r0 + ib * cpm / mb * K::MR;
            let i1 = (r0 + (ib + 1) * cpm / mb * K::MR).min(r1);
            for jb in 0..nb {
                let j0 = c0 + jb * cpn / nb * K::NR;
                let j1 = (c0 + (jb + 1) * cpn / nb * K::NR).min(c1);
                let blk = Block {
                    i0,
                    m: i1 - i0,
                    j0,
                    n: j1 - j0,
                };
                // SAFETY: the grid's cells tile C (checked above) without
                // overlap, one thread each; the blocks tile the cell.
                nonfinite += unsafe { block(&job, blk, &mut ws) };
            }
        }
        scratch::give_workspace(ws);
        recycle(packed);
        nonfinite
    };
    sum_over_threads(mt * nt, cell)
}

/// Runs the GEMM on `threads` > 1 threads with both operands packed once
/// and shared, and blocks of C handed out one at a time: A~ is packed
/// whole (in parallel, row panels split evenly), B~ comes packed, and each
/// thread takes the next block of C from a shared counter until none is
/// left, so a core that runs slower (the lent AMX host's cores differ
/// widely under load, and change from moment to moment) takes fewer
/// blocks instead of holding up the call. Blocks are small enough for at
/// least [`ITEMS_PER_THREAD`] per thread (see [`item_shape`]); in the
/// counter's order the row blocks of one column block follow each other,
/// so the threads at work at one time share that column block's B~.
/// Shapes, strides and `packed` were validated by the caller. Returns the
/// number of non-finite outputs.
pub(super) fn run_dynamic<K: Microkernel + RowOps, T: Element, C: Element>(
    kern: K,
    a: MatRef<'_, T>,
    packed: &PackedPanels,
    c: MatMut<'_, C>,
    ep: &Epilogue<'_>,
    threads: usize,
) -> usize {
    let (m, k, n) = (a.rows, packed.k, packed.n);
    // Checked for real: the blocks below are cut from these sizes.
    assert_eq!((a.cols, c.rows, c.cols), (k, m, n), "gemm shapes");
    if m == 0 || n == 0 {
        return 0;
    }
    let shared_a = pack_a_shared(kern, a, threads);
    let (mc, nc) = item_shape(m, n, threads, K::MR, K::NR, K::BLOCKING.mc);
    let (mb, nb) = (div_ceil(m, mc), div_ceil(n, nc));
    let items = mb * nb;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let (c, c_len) = super::c_ptr(c);
    let job = BlockJob {
        kern,
        a,
        shared_a: Some(&shared_a),
        packed,
        packed_j0: 0,
        c,
        c_len,
        ep,
        ahead: Prefetch::NextOperand,
    };
    let work = |_| -> usize {
        let _mode = crate::fp_env::Ieee::enter();
        let mut ws = scratch::take_workspace();
        let mut nonfinite = 0;
        loop {
            let item = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if item >= items {
                break;
            }
            let (ib, jb) = (item % mb, item / mb);
            let (i0, j0) = (ib * mc, jb * nc);
            let blk = Block {
                i0,
                m: mc.min(m - i0),
                j0,
                n: nc.min(n - j0),
            };
            // SAFETY: the items tile C (checked above) without overlap,
            // and the counter hands each one to exactly one thread.
            nonfinite += unsafe { block(&job, blk, &mut ws) };
        }
        scratch::give_workspace(ws);
        nonfinite
    };
    let nonfinite = sum_over_threads(threads, work);
    shared_a.recycle();
    nonfinite
}

/// Blocks of C per thread that [`run_dynamic`] aims for: enough that the
/// last block a thread starts is a small part of its share, few enough
/// that blocks stay large (other counts: docs/tried.md, Threads).
pub(super) const ITEMS_PER_THREAD: usize = 4;

/// Whether [`run_dynamic`] is the split for this kernel and shape: kernels
/// that ask for it ([`Blocking::dynamic`]), on several threads, with at
/// least 2^28 multiply-adds per thread (n = 2048 on 16 threads). Below
/// that its two packing passes and finer blocks cost more than the balance
/// gains (see BENCHMARKS.md, AMX; docs/tried.md, Threads).
///
/// [`Blocking::dynamic`]: crate::kernel::gemm::Blocking::dynamic
pub(super) fn dynamic_pays<K: Microkernel>(m: usize, n: usize, k: usize, threads: usize) -> bool {
    K::BLOCKING.dynamic
        && threads > 1
        && (m as u128) * (n as u128) * (k as u128) >= (threads as u128) << 28
}

/// Rows and columns of [`run_dynamic`]'s blocks of C (multiples of `mr`
/// and `nr`): from `mc_max x 512`, the larger side halved until there are
/// [`ITEMS_PER_THREAD`] blocks per thread or the sides reach `2 * mr` and
/// `4 * nr`.
pub(super) fn item_shape(
    m: usize,
    n: usize,
    threads: usize,
    mr: usize,
    nr: usize,
    mc_max: usize,
) -> (usize, usize) {
    let round = |x: usize, r: usize| div_ceil(x, r) * r;
    let (mut mc, mut nc) = (round(mc_max.min(m), mr), round(512.min(n), nr));
    while div_ceil(m, mc) * div_ceil(n, nc) < ITEMS_PER_THREAD * threads {
        if mc >= nc / 2 && mc > 2 * mr {
            mc = round(mc / 2, mr);
        } else if nc > 4 * nr {
            nc = round(nc / 2, nr);
        } else if mc > 2 * mr {
            mc = round(mc / 2, mr);
        } else {
            break;
        }
    }
    (mc, nc)
}

/// Largest B~ a thread of [`run_local_b`] packs for its cell: 2 MiB at
/// n = 2048 on 16 threads (4 x 4 cells) is inside; 8 MiB at n = 4096 is
/// not, and there the shared B~ is faster (16 copies of B~ crowd the
/// shared L3; BENCHMARKS.md, AMX).
const LOCAL_B_MAX_BYTES: usize = 4 << 20;

/// Whether [`run_local_b`] is the better split for this kernel and shape
/// (never where [`dynamic_pays`]).
pub(crate) fn local_b_pays<K: Microkernel>(m: usize, n: usize, k: usize, threads: usize) -> bool {
    let (pm, pn) = (div_ceil(m, K::MR), div_ceil(n, K::NR));
    let (_, nt) = grid(pm.max(1), pn.max(1), threads);
    let cell_cols = div_ceil(pn, nt) * K::NR;
    K::BLOCKING.local_b
        && !dynamic_pays::<K>(m, n, k, threads)
        && total_slots(k, K::FORMAT)
            .checked_mul(cell_cols * size_of::<f32>())
            .is_some_and(|bytes| bytes <= LOCAL_B_MAX_BYTES)
}

/// The grid of [`run_local_b`]: `mt x nt` cells (`mt * nt <= threads`)
/// over `pm` row panels and `pn` column panels that give the smallest
/// largest cell (the compute of the slowest thread), then the fewest
/// panels of A and B per cell (what each thread packs).
pub(super) fn grid(pm: usize, pn: usize, threads: usize) -> (usize, usize) {
    let mut best = (1, 1);
    let mut best_cost = (usize::MAX, usize::MAX);
    for mt in 1..=threads.min(pm) {
        let nt = (threads / mt).min(pn);
        let (rows, cols) = (div_ceil(pm, mt), div_ceil(pn, nt));
        let cost = (rows * cols, rows + cols);
        if cost < best_cost {
            (best, best_cost) = ((mt, nt), cost);
        }
    }
    best
}
