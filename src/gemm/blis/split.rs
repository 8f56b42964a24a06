//! The split of C over threads: [`run`] (B~ packed once and shared, a
//! static split of row and column blocks), [`run_grid`] (a grid of cells,
//! one per thread, whose A~ and B~ panels the cells that share them pack)
//! and [`run_dynamic`] (A~ and B~ shared, blocks handed out one at a
//! time), and the rules that choose between them.

use core::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::block::{BlockJob, Prefetch, block};
use super::pack::{PackedPanels, aligned, pack_a_panels, pack_a_shared, pack_b_panels};
use super::{MC_MAX, NC_MAX, div_ceil, scratch, total_slots};
use crate::element::Element;
use crate::gemm::view::{MatMut, MatRef};
use crate::kernel::epilogue::Epilogue;
use crate::kernel::gemm::{Microkernel, RowOps};
use crate::kernel::store::Block;
use crate::pool::{spin_until, sum_over_threads};

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
        shared_a_i0: 0,
        packed: packed.data(),
        panel_len: packed.panel_len(),
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

/// Runs the GEMM with unpacked B on `threads` > 1 threads as a grid of
/// cells of C, one per thread (see [`grid`]), over A~ and B~ packed once
/// and shared by the threads that read them: the cells of one row of the
/// grid pack that row block's A~ panels between them, each claiming the
/// next few ([`Claims`]), the cells of one column its B~ panels, and each
/// cell runs its blocks once its row and column are packed. Every panel is
/// packed once; with each cell packing its own A~ and B~ (this split
/// before) a 4 x 4 grid packed A and B four times each, more than the
/// cell's compute on AMX at n = 512 (BENCHMARKS.md, AMX). A cell waits
/// only for panels other running cells have claimed, so it never waits on
/// a thread that has not started. No packing pass before the threads
/// start, and the cells' panels stay in the caches of the cores that read
/// them. Shapes and strides were validated by the caller. Returns the
/// number of non-finite outputs.
pub(crate) fn run_grid<K: Microkernel + RowOps, T: Element, C: Element>(
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
    let a_panel = total_slots(k, K::FORMAT_A) * K::MR;
    let b_panel = total_slots(k, K::FORMAT) * K::NR;
    let (mut a_buf, mut b_buf) = (scratch::take_a(), scratch::take_b());
    let a_all = Panels::new(aligned(&mut a_buf, pm * a_panel), pm);
    let b_all = Panels::new(aligned(&mut b_buf, pn * b_panel), pn);
    // Row block i of the grid: A~ panels i * pm / mt.., shared by nt cells.
    let rows: Vec<Claims> = (0..mt)
        .map(|i| Claims::new(i * pm / mt, (i + 1) * pm / mt, nt))
        .collect();
    let cols: Vec<Claims> = (0..nt)
        .map(|j| Claims::new(j * pn / nt, (j + 1) * pn / nt, mt))
        .collect();
    let (c, c_len) = super::c_ptr(c);
    let cell = |t: usize| -> usize {
        let _mode = crate::fp_env::Ieee::enter();
        let (rows, cols) = (&rows[t / nt], &cols[t % nt]);
        let mut ws = scratch::take_workspace();
        rows.pack(|q0, q1| {
            // SAFETY: `Claims` hands panels q0..q1 to this thread alone,
            // and no cell reads them before they are counted packed.
            let dst = unsafe { a_all.panels_mut(q0, q1) };
            pack_a_panels(kern, a, q0, dst, &mut ws.tmp);
        });
        cols.pack(|q0, q1| {
            // SAFETY: as for A~ above.
            let dst = unsafe { b_all.panels_mut(q0, q1) };
            pack_b_panels(kern, b, q0, dst, &mut ws.tmp);
        });
        rows.wait();
        cols.wait();
        // SAFETY: every panel of the cell's row and column is packed (the
        // waits above), and nothing writes a packed panel again.
        let (a_cell, b_cell) = unsafe {
            (
                a_all.panels(rows.first, rows.end),
                b_all.panels(cols.first, cols.end),
            )
        };
        let (r0, r1) = (rows.first * K::MR, (rows.end * K::MR).min(m));
        let (c0, c1) = (cols.first * K::NR, (cols.end * K::NR).min(n));
        let job = BlockJob {
            kern,
            a,
            shared_a: Some(a_cell),
            shared_a_i0: r0,
            packed: b_cell,
            panel_len: b_panel,
            packed_j0: c0,
            c,
            c_len,
            ep,
            ahead: Prefetch::NextOperand,
        };
        let mut nonfinite = 0;
        // Row blocks of at most MC_MAX rows, column blocks of at most
        // NC_MAX columns, both balanced.
        let (cpm, cpn) = (rows.end - rows.first, cols.end - cols.first);
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
        nonfinite
    };
    let nonfinite = sum_over_threads(mt * nt, cell);
    scratch::give_a(a_buf);
    scratch::give_b(b_buf);
    nonfinite
}

/// Equal panels of one buffer that [`run_grid`]'s threads write and read
/// at the same time, each panel written by the one thread that claimed it
/// and read once it is counted packed ([`Claims`]).
struct Panels<'a> {
    ptr: *mut f32,
    panel_len: usize,
    panels: usize,
    _buf: PhantomData<&'a mut [f32]>,
}

// SAFETY: `Panels` is a `&mut [f32]` whose panels its users borrow from
// several threads under the rules of `panels_mut` and `panels`.
unsafe impl Send for Panels<'_> {}
// SAFETY: as above.
unsafe impl Sync for Panels<'_> {}

impl<'a> Panels<'a> {
    /// `buf` as `panels` panels of equal length (`buf.len()` a multiple).
    fn new(buf: &'a mut [f32], panels: usize) -> Self {
        let panel_len = buf.len().checked_div(panels).unwrap_or(0);
        assert_eq!(panel_len * panels, buf.len(), "whole panels");
        Panels {
            ptr: buf.as_mut_ptr(),
            panel_len,
            panels,
            _buf: PhantomData,
        }
    }

    /// Panels `q0..q1`, to write.
    ///
    /// # Safety
    ///
    /// No other thread reads or writes panels `q0..q1` while the borrow
    /// lasts.
    #[expect(
        clippy::mut_from_ref,
        reason = "panels shared by threads, see the contract"
    )]
    unsafe fn panels_mut(&self, q0: usize, q1: usize) -> &mut [f32] {
        assert!(q0 <= q1 && q1 <= self.panels, "panels {q0}..{q1}");
        // SAFETY: in the buffer (asserted); exclusive by the contract.
        unsafe {
            core::slice::from_raw_parts_mut(
                self.ptr.add(q0 * self.panel_len),
                (q1 - q0) * self.panel_len,
            )
        }
    }

    /// Panels `q0..q1`, to read.
    ///
    /// # Safety
    ///
    /// No thread writes panels `q0..q1` while the borrow lasts.
    unsafe fn panels(&self, q0: usize, q1: usize) -> &[f32] {
        assert!(q0 <= q1 && q1 <= self.panels, "panels {q0}..{q1}");
        // SAFETY: in the buffer (asserted); not written by the contract.
        unsafe {
            core::slice::from_raw_parts(
                self.ptr.add(q0 * self.panel_len),
                (q1 - q0) * self.panel_len,
            )
        }
    }
}

/// The panels `first..end` of one row (or column) block of [`run_grid`],
/// packed by the cells that share the block: each claims the next `step`
/// unclaimed panels until none are left, and counts them when packed.
struct Claims {
    first: usize,
    end: usize,
    step: usize,
    claimed: AtomicUsize,
    packed: AtomicUsize,
    /// Set when a packing thread panicked: its panels will never be
    /// counted, so the cells waiting for them stop waiting and panic too.
    failed: AtomicBool,
}

impl Claims {
    fn new(first: usize, end: usize, sharers: usize) -> Self {
        Claims {
            first,
            end,
            step: div_ceil(end - first, sharers.max(1)).max(1),
            claimed: AtomicUsize::new(0),
            packed: AtomicUsize::new(0),
            failed: AtomicBool::new(false),
        }
    }

    /// Claims and packs (`pack(q0, q1)`) panels until none are unclaimed.
    fn pack(&self, mut pack: impl FnMut(usize, usize)) {
        let count = self.end - self.first;
        loop {
            let q0 = self.claimed.fetch_add(self.step, Ordering::Relaxed);
            if q0 >= count {
                return;
            }
            let q1 = (q0 + self.step).min(count);
            let on_panic = FailOnPanic(&self.failed);
            pack(self.first + q0, self.first + q1);
            core::mem::forget(on_panic);
            self.packed.fetch_add(q1 - q0, Ordering::Release);
        }
    }

    /// Returns once every panel is packed (all claimed ones by now).
    fn wait(&self) {
        let count = self.end - self.first;
        spin_until(|| {
            assert!(
                !self.failed.load(Ordering::Relaxed),
                "another thread panicked while packing"
            );
            self.packed.load(Ordering::Acquire) == count
        });
    }
}

/// Sets its flag when dropped during a panic (forgotten otherwise).
struct FailOnPanic<'a>(&'a AtomicBool);

impl Drop for FailOnPanic<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
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
        shared_a_i0: 0,
        packed: packed.data(),
        panel_len: packed.panel_len(),
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

/// Largest B~ of one column of [`run_grid`]'s cells: 2 MiB at n = 2048 on
/// 16 threads (4 x 4 cells) is inside; 8 MiB at n = 4096 is not. Measured
/// when each cell packed its own B~ (16 copies of B~ then crowded the
/// shared L3, and past this size B~ packed once was faster; BENCHMARKS.md,
/// AMX); kept for the grid with shared panels, not measured again.
const GRID_B_MAX_BYTES: usize = 4 << 20;

/// Whether [`run_grid`] is the better split for this kernel and shape
/// (never where [`dynamic_pays`]).
pub(crate) fn grid_pays<K: Microkernel>(m: usize, n: usize, k: usize, threads: usize) -> bool {
    let (pm, pn) = (div_ceil(m, K::MR), div_ceil(n, K::NR));
    let (_, nt) = grid(pm.max(1), pn.max(1), threads);
    let cell_cols = div_ceil(pn, nt) * K::NR;
    K::BLOCKING.grid
        && !dynamic_pays::<K>(m, n, k, threads)
        && total_slots(k, K::FORMAT)
            .checked_mul(cell_cols * size_of::<f32>())
            .is_some_and(|bytes| bytes <= GRID_B_MAX_BYTES)
}

/// The grid of [`run_grid`]: `mt x nt` cells (`mt * nt <= threads`)
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
