//! One `MC x NC` block of C: LOOP 4 (pc over k by KC, in runs of
//! `K::BLOCKING.kc_run` blocks), LOOP 2 (jr over the block's columns by
//! NR) and LOOP 1 (ir over its rows by MR), with what each kernel call
//! may prefetch, then the hand-over to the store.

use super::pack::{PackedPanels, aligned, pack_panel};
use super::{div_ceil, slots, total_slots};
use crate::element::Element;
use crate::gemm::view::MatRef;
use crate::kernel::epilogue::Epilogue;
use crate::kernel::gemm::{Ahead, Blocking, Microkernel, RowOps};
use crate::kernel::store::{Block, CPtr, StoreBlock};

/// A thread's buffers, reused across its work items.
#[derive(Default)]
pub(super) struct Workspace {
    /// A~ of one row block over all of k, block `pc` after block `pc - 1`.
    pub(super) a: Vec<f32>,
    /// The rows (first, count) whose A~ is in `a`, if any.
    pub(super) a_rows: Option<(usize, usize)>,
    pub(super) acc: Vec<f32>,
    pub(super) tmp: Vec<f32>,
}

/// What the kernel calls of a block prefetch: the policy for a whole GEMM,
/// which gives each kernel call its per-call [`Ahead`] (`Prefetch::X`
/// produces `Ahead::X`; a kernel may ignore it, the AMX kernel does not).
/// Measurements: BENCHMARKS.md, AMX; rejected variants: docs/tried.md,
/// Prefetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Prefetch {
    /// What the next call reads first, into L1: on several threads, where
    /// leaving it out was slower and [`PanelAndTile`] was no better.
    ///
    /// [`PanelAndTile`]: Prefetch::PanelAndTile
    NextOperand,
    /// The B~ micro-panel of the next (column, KC block) step into L2, a
    /// share per call, and the next call's accumulator tile into L1: on
    /// one thread, where each pays and [`NextOperand`] was slower than no
    /// prefetch at all.
    ///
    /// [`NextOperand`]: Prefetch::NextOperand
    PanelAndTile,
}

impl Prefetch {
    /// The choice for a GEMM on `threads` threads with a kernel whose
    /// [`Blocking`] is `blocking`.
    pub(super) fn for_threads(threads: usize, blocking: Blocking) -> Self {
        if threads > 1 && !blocking.tile_prefetch_on_threads {
            Prefetch::NextOperand
        } else {
            Prefetch::PanelAndTile
        }
    }
}

/// What every block of one split reads: the same for all its blocks, and
/// shared by its threads.
pub(super) struct BlockJob<'a, K, T: Element, C> {
    pub(super) kern: K,
    /// A (`m x k`): its `k` is the GEMM's, and blocks without `shared_a`
    /// pack their A~ from it.
    pub(super) a: MatRef<'a, T>,
    /// A~ of all of A, if packed beforehand
    /// ([`pack_a_shared`](super::pack::pack_a_shared)); else each block
    /// packs its own A~ into its workspace.
    pub(super) shared_a: Option<&'a [f32]>,
    /// B~ from column `packed_j0` on (a multiple of NR).
    pub(super) packed: &'a PackedPanels,
    pub(super) packed_j0: usize,
    /// C ([`CPtr::of`]) and the length of its slice.
    pub(super) c: CPtr<C>,
    pub(super) c_len: usize,
    pub(super) ep: &'a Epilogue<'a>,
    /// What each kernel call may prefetch for the calls after it.
    pub(super) ahead: Prefetch,
}

/// One `MC x NC` block of C, `blk`, of `job`: LOOP 4, 2 and 1, and the
/// epilogue. Its A~ comes from `job.shared_a` (from the block's first row
/// panel on) or is packed into `ws`, where the next block of the same
/// rows finds it again.
///
/// # Safety
///
/// `blk` lies inside the C view that `job.c` was taken from
/// ([`CPtr::of`]), whose borrow outlives the call, and no other thread
/// reads or writes `blk`'s elements of C during the call. (Everything else
/// is read through bounds-checked slices.)
#[inline(never)]
pub(super) unsafe fn block<K: Microkernel + RowOps, T: Element, C: Element>(
    job: &BlockJob<'_, K, T, C>,
    blk: Block,
    ws: &mut Workspace,
) -> usize {
    let (kern, a, packed, packed_j0) = (job.kern, job.a, job.packed, job.packed_j0);
    let (c, c_len, ep, ahead, k) = (job.c, job.c_len, job.ep, job.ahead, a.cols);
    let (mr, nr) = (K::MR, K::NR);
    let m_panels = div_ceil(blk.m, mr);
    let n_panels = div_ceil(blk.n, nr);
    let tile = mr * nr;
    let panel_len = packed.panel_len();
    let acc_all = aligned(&mut ws.acc, m_panels * n_panels * tile);
    let blocks_k = div_ceil(k, K::BLOCKING.kc).max(1);
    // A~ over all of k for the block's rows, panel by panel (each MR-row
    // panel's KC blocks one after the other, as in [`pack_a_shared`]):
    // `shared_a` from the block's first panel on, or packed here by the
    // first block of these rows and reused by the next ones (the same
    // rows, other columns).
    let a_panel_len = total_slots(k, K::FORMAT_A) * mr;
    debug_assert!(blk.i0.is_multiple_of(mr));
    let shared_a = job
        .shared_a
        .map(|a_all| &a_all[blk.i0 / mr * a_panel_len..]);
    let mut own_a = match shared_a {
        Some(_) => None,
        None => Some(aligned(&mut ws.a, m_panels * a_panel_len)),
    };
    let a_packed = shared_a.is_some() || ws.a_rows == Some((blk.i0, blk.m));
    ws.a_rows = shared_a.is_none().then_some((blk.i0, blk.m));
    // KC block q: its first k, its depth, its slots, and its slot offset
    // inside a B~ or A~ panel (every block before the last is KC deep).
    let kblock = |q: usize| {
        let pc = q * K::BLOCKING.kc;
        let kc = K::BLOCKING.kc.min(k - pc.min(k));
        (
            pc,
            kc,
            slots(kc, K::FORMAT),
            q * slots(K::BLOCKING.kc, K::FORMAT),
        )
    };
    // LOOP 4: pc over k by KC, in runs of `K::BLOCKING.kc_run` blocks:
    // each column of tiles goes through a run's blocks before the next
    // column starts.
    for q0 in (0..blocks_k).step_by(K::BLOCKING.kc_run) {
        let q1 = (q0 + K::BLOCKING.kc_run).min(blocks_k);
        // A~ of this run's MC x KC blocks: MR-row panels, packed unless done.
        if let (Some(a_full), false) = (own_a.as_deref_mut(), a_packed) {
            for q in q0..q1 {
                let (pc, kc, nslots, b_off) = kblock(q);
                for p in 0..m_panels {
                    let lanes = mr.min(blk.m - p * mr);
                    let dst = &mut a_full[p * a_panel_len + b_off * mr..][..nslots * mr];
                    pack_panel(
                        kern,
                        a,
                        blk.i0 + p * mr,
                        lanes,
                        pc,
                        kc,
                        mr,
                        K::FORMAT_A,
                        dst,
                        &mut ws.tmp,
                    );
                }
            }
        }
        let a_full = match (shared_a, own_a.as_deref()) {
            (Some(a_full), _) | (None, Some(a_full)) => a_full,
            (None, None) => unreachable!("A~ is shared or packed here"),
        };
        let a_panel = |ip: usize, b_off: usize, nslots: usize| {
            &a_full[ip * a_panel_len + b_off * mr..][..nslots * mr]
        };
        let b_panel = |jp: usize, b_off: usize, nslots: usize| {
            let b0 = ((blk.j0 - packed_j0) / nr + jp) * panel_len + b_off * nr;
            &packed.data()[b0..b0 + nslots * nr]
        };
        // The (column, KC block) after (jp, q) in this run's order.
        let step_after = |jp: usize, q: usize| {
            if q + 1 < q1 {
                Some((jp, q + 1))
            } else if jp + 1 < n_panels {
                Some((jp + 1, q0))
            } else {
                None
            }
        };
        // LOOP 2: jr over the block's columns by NR.
        for jp in 0..n_panels {
            for q in q0..q1 {
                let (_, _, nslots, b_off) = kblock(q);
                let bp = b_panel(jp, b_off, nslots);
                // The next step and its B~ micro-panel.
                let next_step = step_after(jp, q);
                let b_next = next_step.map(|(jp, q)| {
                    let (_, _, nslots, b_off) = kblock(q);
                    b_panel(jp, b_off, nslots)
                });
                // LOOP 1: ir over the block's rows by MR.
                for ip in 0..m_panels {
                    let ap = a_panel(ip, b_off, nslots);
                    let ahead = match (ahead, b_next) {
                        // What the next call reads first: the next A~
                        // panel, or after the last the next B~ micro-panel.
                        (Prefetch::NextOperand, _) if ip + 1 < m_panels => {
                            Ahead::NextOperand(a_panel(ip + 1, b_off, nslots))
                        }
                        (Prefetch::NextOperand, Some(b_next)) => Ahead::NextOperand(b_next),
                        // Call ip's share of the next B~ micro-panel, and
                        // the next call's accumulator tile (the next row
                        // panel's, or after the last the next step's first).
                        (Prefetch::PanelAndTile, Some(b_next)) => {
                            let share = b_next.len().div_ceil(m_panels);
                            let lo = (ip * share).min(b_next.len());
                            let (njp, nip) = if ip + 1 < m_panels {
                                (jp, ip + 1)
                            } else {
                                (next_step.map_or(jp, |(njp, _)| njp), 0)
                            };
                            Ahead::PanelAndTile {
                                b_share: &b_next[lo..(lo + share).min(b_next.len())],
                                next_tile: acc_all
                                    .as_ptr()
                                    .wrapping_add((njp * m_panels + nip) * tile),
                            }
                        }
                        _ => Ahead::Nothing,
                    };
                    let t0 = (jp * m_panels + ip) * tile;
                    let acc = &mut acc_all[t0..t0 + tile];
                    if nslots > 0 {
                        kern.kernel_then(nslots, ap, bp, acc, q > 0, ahead);
                    } else {
                        acc.fill(0.0);
                    }
                }
            }
        }
    }
    // SAFETY: this function's contract is `StoreBlock::new`'s.
    let store = unsafe { StoreBlock::new(ep, acc_all, blk, (m_panels, n_panels), c, c_len) };
    kern.store_block(&store)
}
