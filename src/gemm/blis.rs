//! The BLIS algorithm, written once over [`Microkernel`]: blocking, packing
//! with zero-padded edges, the five loops, the epilogue of each tile, and
//! the split over threads.
//!
//! Loop order (Goto/BLIS, with B packed whole up front so that the same
//! packed form serves [`PackedB`](super::PackedB)):
//!
//! ```text
//! pack B~ (k x n, NR-column panels, each split in KC blocks)   [parallel]
//! LOOP 5  jc over n by NC  } work items (ic, jc), split over threads
//! LOOP 3  ic over m by MC  }
//!   LOOP 4  pc over k by KC: pack A~ (MC x KC, MR-row panels)
//!     LOOP 2  jr over NC by NR
//!       LOOP 1  ir over MC by MR: microkernel on one MR x NR tile
//!   epilogue and the single store of the MC x NC block, row by row
//! ```
//!
//! A kernel may take LOOP 4 in runs of [`Microkernel::KC_RUN`] KC blocks
//! and put LOOP 2 outside each run (every column of tiles through the
//! run's blocks, then the next): AMX, whose accumulators go through memory
//! between KC blocks, then finds a column's tiles near the core again.
//!
//! Large GEMMs on several threads with a kernel that asks for it
//! ([`Microkernel::DYNAMIC`], AMX) pack A~ whole as well and hand the
//! blocks of C out one at a time instead ([`run_dynamic`]); smaller ones
//! with unpacked B may give each thread its own B~ ([`run_local_b`]).
//!
//! LOOP 4 sits inside LOOP 3 (BLIS has it outside) so a thread keeps the
//! f32 partial sums of its own `MC x NC` block across KC blocks in a
//! private workspace: C is stored once, in its own type, after the
//! epilogue, and never read back in a lower precision. The cost is
//! re-reading a `KC x NC` block of B~ per MC block, which is L2/L3 traffic
//! of a few bytes per thousand flops.
//!
//! Edge tiles never reach the microkernel as such: packing pads panels
//! with zeros to full `MR`/`NR` and to a whole slot along k, so the kernel
//! always computes full tiles; the epilogue stores only the valid part.

use rayon::prelude::*;

use super::epilogue::Epilogue;
use super::kernel::{Ahead, Format, Microkernel, ROW_GROUP};
use super::view::{MatMut, MatRef};
use crate::element::{DType, Element, Slice, SliceMut};
use half::bf16;

/// Depth of a packed block: a `KC x NR` micro-panel of B~ (32 KiB for
/// NR = 32 f32) stays in L1 (48 KiB here) while LOOP 1 runs over it. A
/// multiple of 4, so a bf16 pair or quad never straddles two blocks.
pub(crate) const KC: usize = 256;
/// Upper bound for the rows of an A~ block: `MC x KC` f32 = 168 KiB for
/// MC = 168, well inside a 2 MiB L2 with room for B~ micro-panels.
pub(crate) const MC_MAX: usize = 168;
/// Upper bound for the columns of a work item: its f32 workspace
/// (`MC x NC`, 672 KiB) and the `KC x NC` slice of B~ it streams stay in L2.
const NC_MAX: usize = 1024;

const fn div_ceil(a: usize, b: usize) -> usize {
    a.div_ceil(b)
}

/// Slots of one k range of `len` values.
const fn slots(len: usize, format: Format) -> usize {
    format.slots(len)
}

/// Total slots of a whole k, block by block (the same for every even
/// block depth, so for every kernel's [`Microkernel::KC`]).
pub(crate) const fn total_slots(k: usize, format: Format) -> usize {
    let full = k / KC;
    full * slots(KC, format) + slots(k % KC, format)
}

/// Bytes of scratch the blocked GEMM allocates for `A (m x k) B (k x n)`
/// on `threads` threads with kernel `K`: B~ unless `b_prepacked`, and A~
/// (one row block of at most `max(K::MC, MC_MAX)` rows per thread, or all
/// of A where [`run_dynamic`] takes it), plus each thread's tile workspace.
/// `None` when the count overflows or passes `isize::MAX`: a broadcast
/// view (stride 0) can name a shape whose packed form cannot exist.
pub(crate) fn scratch_bytes<K: Microkernel>(
    m: usize,
    n: usize,
    k: usize,
    threads: usize,
    b_prepacked: bool,
) -> Option<usize> {
    let b = if b_prepacked {
        0
    } else {
        packed_b_slots::<K>(k, n)?
    };
    let a_panel = total_slots(k, K::FORMAT_A).checked_mul(K::MR)?;
    let a = if dynamic_pays::<K>(m, n, k, threads) {
        div_ceil(m, K::MR).checked_mul(a_panel)?
    } else {
        let rows = m.min(K::MC.max(MC_MAX));
        let busy = threads.clamp(1, div_ceil(m, K::MR).max(1));
        div_ceil(rows, K::MR)
            .checked_mul(a_panel)?
            .checked_mul(busy)?
    };
    let tiles = threads.checked_mul((K::MC.max(MC_MAX) + K::MR) * (NC_MAX + K::NR))?;
    let slots = b.checked_add(a)?.checked_add(tiles)?;
    slots
        .checked_mul(size_of::<f32>())
        .filter(|&bytes| bytes <= isize::MAX as usize)
}

/// f32 slots of B~ for a `k x n` B and kernel `K` (see [`PackedPanels`]),
/// or `None` on overflow.
pub(crate) fn packed_b_slots<K: Microkernel>(k: usize, n: usize) -> Option<usize> {
    total_slots(k, K::FORMAT)
        .checked_mul(K::NR)?
        .checked_mul(div_ceil(n, K::NR))?
        .checked_add(LINE)
}

/// Rows of B packed per pass over all panels (see `pack_b_into`); a
/// multiple of 4.
const PACK_ROWS: usize = 64;
const _: () = assert!(PACK_ROWS.is_multiple_of(4));

/// f32 slots per 64-byte cache line.
const LINE: usize = 16;

/// `v` resized so that `len` slots fit from a 64-byte-aligned start, and
/// those slots. Packed panels and the tile workspace start on a cache line
/// so that no 64-byte AMX tile row or zmm load straddles two lines (each
/// such access costs two); a misaligned start is only slower.
///
/// Only grows `v`: every user writes all the slots it reads (packing pads
/// with zeros itself, the first k block overwrites the tile workspace), so
/// a reused buffer is never cleared.
fn aligned(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len + LINE {
        v.resize(len + LINE, 0.0);
    }
    let off = v.as_ptr().align_offset(64).min(LINE);
    &mut v[off..off + len]
}

/// The packed form of B: `ceil(n / NR)` panels of `total_slots(k) * NR`
/// slots, each block `pc` of a panel contiguous, starting at
/// `buf[start]` (a cache-line boundary, see [`aligned`]).
#[derive(Clone, Debug)]
pub(crate) struct PackedPanels {
    pub(crate) format: Format,
    pub(crate) nr: usize,
    pub(crate) kc: usize,
    buf: Vec<f32>,
    start: usize,
    len: usize,
}

impl PartialEq for PackedPanels {
    fn eq(&self, other: &Self) -> bool {
        (self.format, self.nr, self.kc) == (other.format, other.nr, other.kc)
            && self.data() == other.data()
    }
}

impl PackedPanels {
    /// The packed slots.
    pub(crate) fn data(&self) -> &[f32] {
        &self.buf[self.start..self.start + self.len]
    }

    fn panel_len(&self, k: usize) -> usize {
        total_slots(k, self.format) * self.nr
    }
}

/// Packs lanes `l0..l0+lanes` (at most `w`) by depth `d0..d0+depth` of `v`
/// (lane = row of `v`, depth = column) into `dst[s * w + lane]` (or the
/// grouped order of [`Format::Bf16Rows`]), zero-padded to `w` lanes and
/// whole slots.
#[expect(clippy::too_many_arguments, reason = "internal: a panel's coordinates")]
fn pack_panel<K: Microkernel, T: Element>(
    kern: K,
    v: MatRef<'_, T>,
    l0: usize,
    lanes: usize,
    d0: usize,
    depth: usize,
    w: usize,
    format: Format,
    dst: &mut [f32],
    tmp: &mut Vec<f32>,
) {
    let nslots = slots(depth, format);
    let dst = &mut dst[..nslots * w];
    match format {
        Format::F32 => {
            if lanes < w || depth == 0 {
                dst.fill(0.0);
            }
            if v.cs == 1 && depth > 1 && T::DTYPE != DType::F16 {
                // Depth contiguous, cheap widening (f32 copy, bf16 shift):
                // gather lane by lane per slot, so the writes are contiguous
                // and each lane's reads are one sequential stream.
                let rows: Vec<&[T]> = (0..lanes)
                    .map(|lane| {
                        let off = (l0 + lane) * v.rs + d0;
                        &v.data[off..off + depth]
                    })
                    .collect();
                for (s, out) in dst.chunks_exact_mut(w).enumerate() {
                    for (o, row) in out.iter_mut().zip(&rows) {
                        *o = row[s].to_f32();
                    }
                }
            } else if v.cs == 1 && depth > 1 {
                // Depth contiguous (A row-major, B column-major): widen each
                // lane's run, then scatter it with stride `w`.
                tmp.resize(depth, 0.0);
                for lane in 0..lanes {
                    let off = (l0 + lane) * v.rs + d0;
                    kern.widen(&v.data[off..off + depth], tmp);
                    for (s, &x) in tmp.iter().enumerate() {
                        dst[s * w + lane] = x;
                    }
                }
            } else if v.rs == 1 && lanes > 1 {
                // Lanes contiguous (B row-major, A column-major): widen
                // straight into each slot.
                for s in 0..depth {
                    let off = l0 + (d0 + s) * v.cs;
                    kern.widen(&v.data[off..off + lanes], &mut dst[s * w..s * w + lanes]);
                }
            } else {
                for s in 0..depth {
                    for lane in 0..lanes {
                        dst[s * w + lane] = v.at(l0 + lane, d0 + s).to_f32();
                    }
                }
            }
        }
        Format::Bf16Pairs | Format::Bf16Quads | Format::Bf16Rows => {
            let Slice::Bf16(data) = T::slice(v.data) else {
                unreachable!("bf16 pair formats are only chosen for bf16 inputs")
            };
            let bits = |lane: usize, d: usize| -> u32 {
                if lane < lanes && d < depth {
                    u32::from(data[(l0 + lane) * v.rs + (d0 + d) * v.cs].to_bits())
                } else {
                    0
                }
            };
            let pair = |lo: bf16, hi: bf16| {
                f32::from_bits(u32::from(lo.to_bits()) | u32::from(hi.to_bits()) << 16)
            };
            if format == Format::Bf16Rows {
                // Lane-major groups of ROW_GROUP slots (see `Format::Bf16Rows`).
                for (g, group) in dst.chunks_mut(ROW_GROUP * w).enumerate() {
                    let gs = group.len() / w;
                    let s0 = g * ROW_GROUP;
                    for (lane, out) in group.chunks_exact_mut(gs).enumerate() {
                        if lane < lanes && v.cs == 1 && 2 * (s0 + gs) <= depth {
                            // Depth contiguous (A row-major): a slot is two
                            // consecutive bf16, low half first, which is
                            // their little-endian memory order: one copy.
                            let off = (l0 + lane) * v.rs + d0 + 2 * s0;
                            let run = &data[off..off + 2 * gs];
                            const _: () = assert!(cfg!(target_endian = "little"));
                            if let (Ok(src), Ok(dst)) = (
                                <&[bf16; 2 * ROW_GROUP]>::try_from(run),
                                <&mut [f32; ROW_GROUP]>::try_from(&mut *out),
                            ) {
                                // A whole group, the common case: a copy of
                                // a constant 64 bytes, a few moves inline
                                // instead of a call to `memcpy`.
                                // SAFETY: both are 64 bytes; every bit
                                // pattern is a valid f32.
                                *dst = unsafe {
                                    core::mem::transmute::<[bf16; 2 * ROW_GROUP], [f32; ROW_GROUP]>(
                                        *src,
                                    )
                                };
                            } else {
                                // `run` is 2 * gs bf16, `out` gs f32: 4 * gs
                                // bytes each, in distinct allocations.
                                // SAFETY: both valid for 4 * gs bytes, no
                                // overlap; any bit pattern is a valid f32.
                                unsafe {
                                    core::ptr::copy_nonoverlapping(
                                        run.as_ptr().cast::<u8>(),
                                        out.as_mut_ptr().cast::<u8>(),
                                        4 * gs,
                                    );
                                }
                            }
                        } else {
                            for (t, o) in out.iter_mut().enumerate() {
                                let d = 2 * (s0 + t);
                                *o = f32::from_bits(bits(lane, d) | bits(lane, d + 1) << 16);
                            }
                        }
                    }
                }
            } else if format == Format::Bf16Quads {
                // One 2 x 4 bf16 block per (quad, lane pair); see `Format`.
                debug_assert!(w.is_multiple_of(2) && nslots.is_multiple_of(2));
                let pair = |lane: usize, s: usize| {
                    f32::from_bits(bits(lane, 2 * s) | bits(lane, 2 * s + 1) << 16)
                };
                for q in 0..nslots / 2 {
                    for p in 0..w / 2 {
                        let o = 2 * q * w + 4 * p;
                        dst[o] = pair(2 * p, 2 * q);
                        dst[o + 1] = pair(2 * p, 2 * q + 1);
                        dst[o + 2] = pair(2 * p + 1, 2 * q);
                        dst[o + 3] = pair(2 * p + 1, 2 * q + 1);
                    }
                }
            } else if v.rs == 1 && lanes > 1 {
                // Lanes contiguous (B row-major): interleave two depth rows.
                for (s, out) in dst.chunks_exact_mut(w).enumerate() {
                    let (d, out) = (d0 + 2 * s, &mut out[..lanes]);
                    let lo = &data[l0 + d * v.cs..][..lanes];
                    if 2 * s + 1 < depth {
                        let hi = &data[l0 + (d + 1) * v.cs..][..lanes];
                        for ((o, &x), &y) in out.iter_mut().zip(lo).zip(hi) {
                            *o = pair(x, y);
                        }
                    } else {
                        for (o, &x) in out.iter_mut().zip(lo) {
                            *o = pair(x, bf16::ZERO);
                        }
                    }
                }
                if lanes < w {
                    for out in dst.chunks_exact_mut(w) {
                        out[lanes..].fill(0.0);
                    }
                }
            } else {
                for s in 0..nslots {
                    for lane in 0..w {
                        let pair = bits(lane, 2 * s) | bits(lane, 2 * s + 1) << 16;
                        dst[s * w + lane] = f32::from_bits(pair);
                    }
                }
            }
        }
    }
}

/// Scratch buffers kept per thread between calls: a fresh multi-MiB `Vec`
/// per call costs a page fault per 4 KiB and a zero fill, a large part of
/// a multi-threaded AMX GEMM (see BENCHMARKS.md, AMX). Only buffers up to
/// [`SCRATCH_MAX`] are kept.
mod scratch {
    use std::cell::Cell;

    /// Largest buffer kept for reuse: 16 Mi f32 slots (64 MiB), B~ of a
    /// 4096 x 4096 bf16 B.
    pub(super) const SCRATCH_MAX: usize = 16 << 20;

    thread_local! {
        static PACKED_A: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
        static PACKED_B: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
        static WORKSPACE: Cell<Option<super::Workspace>> = const { Cell::new(None) };
    }

    /// This thread's B~ scratch (empty if none, or if a caller on this
    /// thread holds it).
    pub(super) fn take_b() -> Vec<f32> {
        PACKED_B.with(Cell::take)
    }

    /// Gives a B~ buffer back for the next call on this thread.
    pub(super) fn give_b(buf: Vec<f32>) {
        if buf.capacity() <= SCRATCH_MAX {
            PACKED_B.with(|c| c.set(buf));
        }
    }

    /// This thread's shared-A~ scratch (see [`super::run_dynamic`]).
    pub(super) fn take_a() -> Vec<f32> {
        PACKED_A.with(Cell::take)
    }

    /// Gives a shared-A~ buffer back for the next call on this thread.
    pub(super) fn give_a(buf: Vec<f32>) {
        if buf.capacity() <= SCRATCH_MAX {
            PACKED_A.with(|c| c.set(buf));
        }
    }

    pub(super) fn take_workspace() -> super::Workspace {
        WORKSPACE.with(Cell::take).unwrap_or_default()
    }

    pub(super) fn give_workspace(ws: super::Workspace) {
        if ws.a.capacity() + ws.acc.capacity() + ws.tmp.capacity() <= SCRATCH_MAX {
            WORKSPACE.with(|c| c.set(Some(ws)));
        }
    }
}

/// Packs all of `b` (`k x n`) for kernel `K`, over up to `threads` threads,
/// into a fresh buffer (for [`PackedB`](super::PackedB), which keeps it).
pub(crate) fn pack_b<K: Microkernel, T: Element>(
    kern: K,
    b: MatRef<'_, T>,
    threads: usize,
) -> PackedPanels {
    pack_b_into(kern, b, threads, Vec::new())
}

/// [`pack_b`] into this thread's scratch buffer, for one call; hand it
/// back with [`recycle`].
pub(crate) fn pack_b_scratch<K: Microkernel, T: Element>(
    kern: K,
    b: MatRef<'_, T>,
    threads: usize,
) -> PackedPanels {
    pack_b_into(kern, b, threads, scratch::take_b())
}

/// Returns the buffer of a [`pack_b_scratch`] result to this thread.
pub(crate) fn recycle(packed: PackedPanels) {
    scratch::give_b(packed.buf);
}

fn pack_b_into<K: Microkernel, T: Element>(
    kern: K,
    b: MatRef<'_, T>,
    threads: usize,
    mut buf: Vec<f32>,
) -> PackedPanels {
    let (k, n) = (b.rows, b.cols);
    let per_panel = total_slots(k, K::FORMAT) * K::NR;
    let panels = div_ceil(n, K::NR);
    let data = aligned(&mut buf, per_panel * panels);
    let bt = b.t(); // lanes = columns of B, depth = k
    // Packs the panels from `p0` on into `chunk`, rows of B outermost: each
    // pass packs `PACK_ROWS` rows of B into every panel of the chunk, so a
    // row-major B is read along its rows. Panel by panel would walk all k
    // rows for each NR columns (for a wide B, a new page per row). Any
    // multiple of 4 rows starts a whole slot (and quad) inside its KC
    // block.
    let pack_range = |p0: usize, chunk: &mut [f32], tmp: &mut Vec<f32>| {
        let mut block_off = 0;
        for pc in (0..k).step_by(K::KC) {
            let kc = K::KC.min(k - pc);
            for sub in (0..kc).step_by(PACK_ROWS) {
                let depth = PACK_ROWS.min(kc - sub);
                let off = block_off + slots(sub, K::FORMAT) * K::NR;
                let len = slots(depth, K::FORMAT) * K::NR;
                for (q, panel) in chunk.chunks_mut(per_panel).enumerate() {
                    let j0 = (p0 + q) * K::NR;
                    let lanes = K::NR.min(n - j0);
                    let dst = &mut panel[off..off + len];
                    pack_panel(
                        kern,
                        bt,
                        j0,
                        lanes,
                        pc + sub,
                        depth,
                        K::NR,
                        K::FORMAT,
                        dst,
                        tmp,
                    );
                }
            }
            block_off += slots(kc, K::FORMAT) * K::NR;
        }
    };
    if per_panel > 0 {
        if threads > 1 && panels > 1 {
            let per_task = div_ceil(panels, threads);
            data.par_chunks_mut(per_panel * per_task)
                .enumerate()
                .for_each(|(t, chunk)| pack_range(t * per_task, chunk, &mut Vec::new()));
        } else {
            pack_range(0, data, &mut Vec::new());
        }
    }
    let len = per_panel * panels;
    let start = buf.as_ptr().align_offset(64).min(LINE);
    PackedPanels {
        format: K::FORMAT,
        nr: K::NR,
        kc: K::KC,
        buf,
        start,
        len,
    }
}

/// C's base pointer and strides, shared by the threads. Each work item
/// writes a disjoint block of C's elements, and [`MatMut`]'s strides never
/// alias (checked when the view was made), so the blocks are disjoint in
/// memory too.
#[derive(Clone, Copy)]
pub(super) struct CPtr<C> {
    pub(super) ptr: *mut C,
    pub(super) rs: usize,
    pub(super) cs: usize,
}

impl<C> CPtr<C> {
    /// C's pointer and strides, and the length of its slice (for debug
    /// checks), for the threads that write it while the caller's borrow of
    /// C lasts.
    pub(super) fn of(c: MatMut<'_, C>) -> (Self, usize)
    where
        C: Element,
    {
        let (rs, cs) = (c.rs, c.cs);
        let len = c.data.len();
        (
            CPtr {
                ptr: c.data.as_mut_ptr(),
                rs,
                cs,
            },
            len,
        )
    }
}

// SAFETY: the pointer is only used for disjoint elements per thread (see
// the type's docs) while the `&mut` borrow of C is held by `run`.
unsafe impl<C: Send> Send for CPtr<C> {}
// SAFETY: as above; no two threads touch the same element.
unsafe impl<C: Send> Sync for CPtr<C> {}

/// Runs the GEMM with B already packed by [`pack_b`] for this kernel
/// ([`run_dynamic`] where [`dynamic_pays`]). Shapes, strides and `packed`
/// were validated by the caller. Returns the number of non-finite outputs.
#[expect(clippy::too_many_arguments, reason = "internal: the loops' inputs")]
pub(crate) fn run<K: Microkernel, T: Element, C: Element>(
    kern: K,
    a: MatRef<'_, T>,
    packed: &PackedPanels,
    k: usize,
    n: usize,
    c: MatMut<'_, C>,
    ep: &Epilogue<'_>,
    threads: usize,
) -> usize {
    let m = a.rows;
    // Checked for real: the blocks below are cut from these sizes and
    // written through a raw pointer.
    assert_eq!((a.cols, c.rows, c.cols), (k, m, n), "gemm shapes");
    assert_eq!(
        (packed.format, packed.nr, packed.kc),
        (K::FORMAT, K::NR, K::KC)
    );
    if m == 0 || n == 0 {
        return 0;
    }
    if dynamic_pays::<K>(m, n, k, threads) {
        return run_dynamic(kern, a, packed, k, n, c, ep, threads);
    }
    // Balanced blocks: MR-row panels spread evenly over `mb` blocks (sizes
    // differ by at most one panel), and `mb` a multiple of the thread count
    // so that the round-robin below gives every thread the same share.
    let nb = div_ceil(n, NC_MAX);
    let nc = div_ceil(div_ceil(n, nb), K::NR) * K::NR;
    let nb = div_ceil(n, nc);
    let panels = div_ceil(m, K::MR);
    let mut mb = div_ceil(m, K::MC);
    if threads > 1 {
        mb = div_ceil(mb, threads) * threads;
    }
    let mb = mb.min(panels).max(1);
    let rows_of = |ib: usize| (ib * panels / mb * K::MR).min(m);
    let items = mb * nb;
    let threads = threads.min(items).max(1);
    let (cptr, c_len) = CPtr::of(c);
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
            let ahead = Prefetch::for_threads(threads);
            // SAFETY: the items' blocks tile the m x n of C (checked above)
            // without overlap, and each item runs on one thread only.
            nonfinite += unsafe {
                block(
                    kern, a, packed, 0, k, blk, cptr, c_len, ep, ahead, None, &mut ws,
                )
            };
        }
        scratch::give_workspace(ws);
        nonfinite
    };
    if threads == 1 {
        work(0)
    } else {
        (0..threads).into_par_iter().map(work).sum()
    }
}

/// Runs the GEMM with unpacked B on `threads` > 1 threads: C is cut into
/// a grid of cells, one per thread (see [`grid`]), and each thread packs
/// the B~ of its own columns over all of k into its scratch, then runs its
/// cell's blocks. No packing pass before the threads start, and each
/// core's B~ stays in its own caches, where with B~ packed once and shared
/// every core fetches panels other cores have just written, which limits
/// a kernel as fast as AMX (see `AmxBf16::LOCAL_B`, and BENCHMARKS.md, AMX).
/// Shapes and strides were validated by the caller. Returns the number of
/// non-finite outputs.
pub(crate) fn run_local_b<K: Microkernel, T: Element, C: Element>(
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
    let (cptr, c_len) = CPtr::of(c);
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
                // SAFETY: the cells of the grid tile C (checked above)
                // without overlap, one thread each, and the blocks tile
                // the cell.
                nonfinite += unsafe {
                    block(
                        kern,
                        a,
                        &packed,
                        c0,
                        k,
                        blk,
                        cptr,
                        c_len,
                        ep,
                        Prefetch::NextOperand,
                        None,
                        &mut ws,
                    )
                };
            }
        }
        scratch::give_workspace(ws);
        recycle(packed);
        nonfinite
    };
    (0..mt * nt).into_par_iter().map(cell).sum()
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
#[expect(clippy::too_many_arguments, reason = "internal: the loops' inputs")]
fn run_dynamic<K: Microkernel, T: Element, C: Element>(
    kern: K,
    a: MatRef<'_, T>,
    packed: &PackedPanels,
    k: usize,
    n: usize,
    c: MatMut<'_, C>,
    ep: &Epilogue<'_>,
    threads: usize,
) -> usize {
    let m = a.rows;
    // Checked for real: the blocks below are cut from these sizes.
    assert_eq!((a.cols, c.rows, c.cols), (k, m, n), "gemm shapes");
    if m == 0 || n == 0 {
        return 0;
    }
    let shared_a = pack_a_shared(kern, a, threads);
    let a_panel_len = total_slots(k, K::FORMAT_A) * K::MR;
    let (mc, nc) = item_shape(m, n, threads, K::MR, K::NR, K::MC);
    let (mb, nb) = (div_ceil(m, mc), div_ceil(n, nc));
    let items = mb * nb;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let (cptr, c_len) = CPtr::of(c);
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
            let a_rows = &shared_a[i0 / K::MR * a_panel_len..];
            // SAFETY: the items tile C (checked above) without overlap,
            // and the counter hands each one to exactly one thread.
            nonfinite += unsafe {
                block(
                    kern,
                    a,
                    packed,
                    0,
                    k,
                    blk,
                    cptr,
                    c_len,
                    ep,
                    Prefetch::NextOperand,
                    Some(a_rows),
                    &mut ws,
                )
            };
        }
        scratch::give_workspace(ws);
        nonfinite
    };
    let nonfinite = (0..threads).into_par_iter().map(work).sum();
    shared_a.recycle();
    nonfinite
}

/// Blocks of C per thread that [`run_dynamic`] aims for: enough that the
/// last block a thread starts is a small part of its share, few enough
/// that blocks stay large (other counts: docs/tried.md, Threads).
const ITEMS_PER_THREAD: usize = 4;

/// Whether [`run_dynamic`] is the split for this kernel and shape: kernels
/// that ask for it ([`Microkernel::DYNAMIC`]), on several threads, with at
/// least 2^28 multiply-adds per thread (n = 2048 on 16 threads). Below
/// that its two packing passes and finer blocks cost more than the balance
/// gains (see BENCHMARKS.md, AMX; docs/tried.md, Threads).
fn dynamic_pays<K: Microkernel>(m: usize, n: usize, k: usize, threads: usize) -> bool {
    K::DYNAMIC && threads > 1 && (m as u128) * (n as u128) * (k as u128) >= (threads as u128) << 28
}

/// Rows and columns of [`run_dynamic`]'s blocks of C (multiples of `mr`
/// and `nr`): from `mc_max x 512`, the larger side halved until there are
/// [`ITEMS_PER_THREAD`] blocks per thread or the sides reach `2 * mr` and
/// `4 * nr`.
fn item_shape(
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

/// A~ of all of `a` for kernel `K`, row panel by row panel, each panel's
/// KC blocks one after the other (the layout `block` reads), packed over
/// up to `threads` threads into this thread's A~ scratch.
fn pack_a_shared<K: Microkernel, T: Element>(kern: K, a: MatRef<'_, T>, threads: usize) -> SharedA {
    let (m, k) = (a.rows, a.cols);
    let mr = K::MR;
    let panel_len = total_slots(k, K::FORMAT_A) * mr;
    let panels = div_ceil(m, mr);
    let mut buf = scratch::take_a();
    let data = aligned(&mut buf, panel_len * panels);
    let pack_panels = |p0: usize, chunk: &mut [f32]| {
        let mut tmp = Vec::new();
        for (q, dst) in chunk.chunks_mut(panel_len).enumerate() {
            let i0 = (p0 + q) * mr;
            let lanes = mr.min(m - i0);
            let mut off = 0;
            for pc in (0..k).step_by(K::KC) {
                let kc = K::KC.min(k - pc);
                let len = slots(kc, K::FORMAT_A) * mr;
                pack_panel(
                    kern,
                    a,
                    i0,
                    lanes,
                    pc,
                    kc,
                    mr,
                    K::FORMAT_A,
                    &mut dst[off..off + len],
                    &mut tmp,
                );
                off += len;
            }
        }
    };
    if panel_len > 0 {
        let per_task = div_ceil(panels, threads.max(1));
        data.par_chunks_mut(panel_len * per_task)
            .enumerate()
            .for_each(|(t, chunk)| pack_panels(t * per_task, chunk));
    }
    let start = buf.as_ptr().align_offset(64).min(LINE);
    SharedA {
        buf,
        start,
        len: panel_len * panels,
    }
}

/// The result of [`pack_a_shared`]: its slots, and the buffer to recycle.
struct SharedA {
    buf: Vec<f32>,
    start: usize,
    len: usize,
}

impl core::ops::Deref for SharedA {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl SharedA {
    /// Gives the buffer back to this thread's scratch.
    fn recycle(self) {
        scratch::give_a(self.buf);
    }
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
    K::LOCAL_B
        && !dynamic_pays::<K>(m, n, k, threads)
        && total_slots(k, K::FORMAT)
            .checked_mul(cell_cols * size_of::<f32>())
            .is_some_and(|bytes| bytes <= LOCAL_B_MAX_BYTES)
}

/// The grid of [`run_local_b`]: `mt x nt` cells (`mt * nt <= threads`)
/// over `pm` row panels and `pn` column panels that give the smallest
/// largest cell (the compute of the slowest thread), then the fewest
/// panels of A and B per cell (what each thread packs).
fn grid(pm: usize, pn: usize, threads: usize) -> (usize, usize) {
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

#[derive(Clone, Copy, Debug)]
struct Block {
    i0: usize,
    m: usize,
    j0: usize,
    n: usize,
}

/// A thread's buffers, reused across its work items.
#[derive(Default)]
struct Workspace {
    /// A~ of one row block over all of k, block `pc` after block `pc - 1`.
    a: Vec<f32>,
    /// The rows (first, count) whose A~ is in `a`, if any.
    a_rows: Option<(usize, usize)>,
    acc: Vec<f32>,
    tmp: Vec<f32>,
}

/// What the kernel calls of a block prefetch: the policy for a whole GEMM,
/// which gives each kernel call its per-call [`Ahead`] (`Prefetch::X`
/// produces `Ahead::X`; a kernel may ignore it, the AMX kernel does not).
/// Measurements: BENCHMARKS.md, AMX; rejected variants: docs/tried.md,
/// Prefetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prefetch {
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
    /// The choice for a GEMM on `threads` threads.
    fn for_threads(threads: usize) -> Self {
        if threads > 1 {
            Prefetch::NextOperand
        } else {
            Prefetch::PanelAndTile
        }
    }
}

/// One `MC x NC` block of C: LOOP 4, 2 and 1, and the epilogue. `packed`
/// holds B~ from column `packed_j0` on (a multiple of NR); `shared_a`, if
/// given, A~ from the block's first row panel on (see [`pack_a_shared`]),
/// else the block packs its A~ into `ws`; `ahead` says what each kernel
/// call may prefetch for the calls after it.
///
/// # Safety
///
/// `blk` lies inside the C view that `c` was taken from ([`CPtr::of`]),
/// whose borrow outlives the call, and no other thread reads or writes
/// `blk`'s elements of C during the call. (Everything else is read
/// through bounds-checked slices.)
#[expect(clippy::too_many_arguments, reason = "internal: the loops' inputs")]
#[inline(never)]
unsafe fn block<K: Microkernel, T: Element, C: Element>(
    kern: K,
    a: MatRef<'_, T>,
    packed: &PackedPanels,
    packed_j0: usize,
    k: usize,
    blk: Block,
    c: CPtr<C>,
    c_len: usize,
    ep: &Epilogue<'_>,
    ahead: Prefetch,
    shared_a: Option<&[f32]>,
    ws: &mut Workspace,
) -> usize {
    let (mr, nr) = (K::MR, K::NR);
    let m_panels = div_ceil(blk.m, mr);
    let n_panels = div_ceil(blk.n, nr);
    let tile = mr * nr;
    let panel_len = packed.panel_len(k);
    let acc_all = aligned(&mut ws.acc, m_panels * n_panels * tile);
    let blocks_k = div_ceil(k, K::KC).max(1);
    // A~ over all of k for the block's rows, panel by panel (each MR-row
    // panel's KC blocks one after the other, as in [`pack_a_shared`]):
    // `shared_a` from the block's first panel on, or packed here by the
    // first block of these rows and reused by the next ones (the same
    // rows, other columns).
    let a_panel_len = total_slots(k, K::FORMAT_A) * mr;
    let mut own_a = match shared_a {
        Some(_) => None,
        None => Some(aligned(&mut ws.a, m_panels * a_panel_len)),
    };
    let a_packed = shared_a.is_some() || ws.a_rows == Some((blk.i0, blk.m));
    ws.a_rows = shared_a.is_none().then_some((blk.i0, blk.m));
    // KC block q: its first k, its depth, its slots, and its slot offset
    // inside a B~ or A~ panel (every block before the last is KC deep).
    let kblock = |q: usize| {
        let pc = q * K::KC;
        let kc = K::KC.min(k - pc.min(k));
        (pc, kc, slots(kc, K::FORMAT), q * slots(K::KC, K::FORMAT))
    };
    // LOOP 4: pc over k by KC, in runs of `K::KC_RUN` blocks: each column
    // of tiles goes through a run's blocks before the next column starts.
    for q0 in (0..blocks_k).step_by(K::KC_RUN) {
        let q1 = (q0 + K::KC_RUN).min(blocks_k);
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
    // A `StoreBlock` is only made here, under this function's contract.
    kern.store_block(&StoreBlock {
        ep,
        acc: acc_all,
        blk,
        m_panels,
        n_panels,
        c,
        c_len,
    })
}

/// A finished block of C: its f32 sums in the workspace (tile by tile,
/// `(jp * m_panels + ip) * MR * NR`), waiting for the epilogue and the
/// single store of each output ([`Microkernel::store_block`]).
///
/// Only [`block`] makes one (the fields are private to this module), under
/// its contract: the block lies inside C and this thread alone writes it.
/// That is what lets [`StoreBlock::run`] be a safe fn.
pub(crate) struct StoreBlock<'a, C> {
    ep: &'a Epilogue<'a>,
    acc: &'a [f32],
    blk: Block,
    m_panels: usize,
    n_panels: usize,
    c: CPtr<C>,
    c_len: usize,
}

impl<C: Element> StoreBlock<'_, C> {
    /// The epilogue and the store of each output, row by row across the
    /// block's tiles: C is written along its rows in runs of the block's
    /// width, the order its cache lines are best fetched for ownership in.
    /// Tile by tile (32 rows in 32 pages at a time) cost about a quarter
    /// of a one-thread AMX GEMM at n = 2048. Each row's tile segments are
    /// gathered into one span first, so every stage of the epilogue (and
    /// the non-finite count) runs once per row instead of once per tile.
    /// Returns how many stored values are non-finite.
    #[inline(always)]
    pub(crate) fn run<K: Microkernel>(&self, kern: K) -> usize {
        let (mr, nr) = (K::MR, K::NR);
        let (blk, tile) = (self.blk, mr * nr);
        let span_tiles = ROW_SPAN / nr;
        let mut span = [0.0f32; ROW_SPAN];
        let mut nonfinite = 0;
        for ip in 0..self.m_panels {
            let rows = mr.min(blk.m - ip * mr);
            for r in 0..rows {
                let i = blk.i0 + ip * mr + r;
                for jp0 in (0..self.n_panels).step_by(span_tiles) {
                    let jp1 = (jp0 + span_tiles).min(self.n_panels);
                    let cols = (blk.n - jp0 * nr).min((jp1 - jp0) * nr);
                    let t = &mut span[..cols];
                    let (whole, tail) = t.split_at_mut(cols / nr * nr);
                    let row_at = |jp: usize| (jp * self.m_panels + ip) * tile + r * nr;
                    for (jp, seg) in (jp0..).zip(whole.chunks_exact_mut(nr)) {
                        seg.copy_from_slice(&self.acc[row_at(jp)..][..nr]);
                    }
                    if !tail.is_empty() {
                        let jp = jp0 + cols / nr;
                        tail.copy_from_slice(&self.acc[row_at(jp)..][..tail.len()]);
                    }
                    let j0 = blk.j0 + jp0 * nr;
                    // SAFETY: row i, columns j0..j0 + cols of the block,
                    // which `block`'s contract puts inside C and gives to
                    // this thread alone (see the type's docs).
                    nonfinite += unsafe { store_row(kern, self.ep, t, i, j0, self.c, self.c_len) };
                }
            }
        }
        nonfinite
    }
}

/// [`store_row`] for a contiguous f32 row of C, `d`: the stages run in `d`
/// itself, with the same operations in the same order (so the same bits).
/// No staging buffer: copying one just written by narrower stores (SSE2
/// in this generic code) into C with a wide `memcpy` stalls each row on
/// store forwarding.
#[inline(always)]
fn store_row_f32(ep: &Epilogue<'_>, acc: &[f32], i: usize, j0: usize, d: &mut [f32]) -> usize {
    let alpha = ep.alpha;
    let beta = ep.beta;
    // One loop per case, so each vectorizes without branches inside.
    match (ep.inv_scale, beta != 0.0) {
        (None, false) => {
            for (o, &y) in d.iter_mut().zip(acc) {
                *o = alpha * y;
            }
        }
        (Some(s), false) => {
            for (o, &y) in d.iter_mut().zip(acc) {
                *o = alpha * y * s;
            }
        }
        (None, true) => {
            for (o, &y) in d.iter_mut().zip(acc) {
                *o = alpha * y + beta * *o;
            }
        }
        (Some(s), true) => {
            for (o, &y) in d.iter_mut().zip(acc) {
                *o = alpha * y * s + beta * *o;
            }
        }
    }
    ep.add_bias_and_activate(d, i, j0);
    count_nonfinite(d)
}

/// How many of `d` are inf or NaN, counted in 32-bit lanes (`filter().count()`
/// vectorizes with 64-bit ones).
#[inline(always)]
fn count_nonfinite(d: &[f32]) -> usize {
    d.iter().map(|x| u32::from(!x.is_finite())).sum::<u32>() as usize
}

/// The most columns of a row of C that [`StoreBlock::run`] stages at once
/// (whole tiles of every ISA; a block up to [`NC_MAX`] wide takes two spans,
/// so the tests of any ISA reach the span loop).
const ROW_SPAN: usize = 512;
const _: () = assert!(ROW_SPAN >= 64 && ROW_SPAN < NC_MAX);

/// Applies the epilogue to `acc` (outputs `(i, j0..j0 + acc.len())`) and
/// stores it into C; returns how many stored values are non-finite. `acc`
/// is the staging buffer of the stages (left holding the f32 results where
/// C is not contiguous f32).
///
/// # Safety
///
/// Outputs `(i, j0..j0 + acc.len())` lie inside the C view that `c` was
/// taken from ([`CPtr::of`], `c_len` its slice's length), whose borrow
/// outlives the call, and no other thread reads or writes them during it.
#[inline(always)]
pub(super) unsafe fn store_row<K: Microkernel, C: Element>(
    kern: K,
    ep: &Epilogue<'_>,
    acc: &mut [f32],
    i: usize,
    j0: usize,
    c: CPtr<C>,
    c_len: usize,
) -> usize {
    let n = acc.len();
    let base = i * c.rs + j0 * c.cs;
    debug_assert!(n == 0 || base + (n - 1) * c.cs < c_len);
    let _ = c_len;
    if c.cs == 1 && C::DTYPE == DType::F32 {
        // SAFETY: as for the contiguous store below (the caller's contract).
        let dst = unsafe { core::slice::from_raw_parts_mut(c.ptr.add(base), n) };
        if let SliceMut::F32(d) = C::slice_mut(dst) {
            return store_row_f32(ep, acc, i, j0, d);
        }
    }
    let t = acc;
    // Stage by stage, so each loop vectorizes.
    for x in t.iter_mut() {
        *x *= ep.alpha;
    }
    if let Some(s) = ep.inv_scale {
        t.iter_mut().for_each(|x| *x *= s);
    }
    if ep.beta != 0.0 {
        for (j, x) in t.iter_mut().enumerate() {
            // SAFETY: (i, j0 + j) is inside C and this thread's alone (the
            // caller's contract), so the offset is inside `c.ptr`'s slice.
            let old = unsafe { *c.ptr.add(base + j * c.cs) };
            *x += ep.beta * old.to_f32();
        }
    }
    ep.add_bias_and_activate(t, i, j0);
    if c.cs == 1 {
        // SAFETY: base..base + n is the row segment the caller's contract
        // puts inside C's slice and gives to this thread only.
        let dst = unsafe { core::slice::from_raw_parts_mut(c.ptr.add(base), n) };
        match C::slice_mut(dst) {
            SliceMut::F32(d) => {
                d.copy_from_slice(t);
                return count_nonfinite(t);
            }
            SliceMut::F16(d) => {
                kern.narrow_f16(t, d);
                return d.iter().filter(|x| !x.is_finite()).count();
            }
            SliceMut::Bf16(d) => {
                // The scalar oracle's rounding, which vectorizes where the
                // ISA's `store_block` compiles this with its features.
                // (A u32 count: 32-bit lanes in the vector loop.)
                let mut bad = 0u32;
                for (o, &x) in d.iter_mut().zip(t.iter()) {
                    let bits = crate::arch::scalar::convert::f32_to_bf16_bits(x.to_bits());
                    *o = half::bf16::from_bits(bits);
                    bad += u32::from(bits & 0x7F80 == 0x7F80);
                }
                return bad as usize;
            }
        }
    }
    let mut bad = 0;
    for (j, &x) in t.iter().enumerate() {
        let y = C::from_f32(x);
        bad += usize::from(!y.to_f32().is_finite());
        // SAFETY: as for the read above.
        unsafe { *c.ptr.add(base + j * c.cs) = y };
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gemm::Gemm;
    use crate::gemm::kernel::ScalarKernel;

    /// 64 random bits per call (splitmix64) from a clock seed, printed so a
    /// failure can be replayed.
    fn fresh_rng() -> impl FnMut() -> u64 {
        let mut seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        println!("seed {seed}");
        move || {
            seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let z = (seed ^ (seed >> 31)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z ^ (z >> 29)
        }
    }

    /// The grid covers at most `threads` cells, never more cells than
    /// panels along a side, and no split of the same threads has a smaller
    /// largest cell (brute force).
    #[test]
    fn grid_is_the_best_split() {
        for threads in 1..=17 {
            for (pm, pn) in [
                (1, 1),
                (1, 64),
                (64, 1),
                (64, 64),
                (5, 7),
                (147, 64),
                (3, 100),
            ] {
                let (mt, nt) = grid(pm, pn, threads);
                assert!(
                    mt * nt <= threads && mt <= pm && nt <= pn,
                    "{pm}x{pn} on {threads}"
                );
                let largest = |mt: usize, nt: usize| pm.div_ceil(mt) * pn.div_ceil(nt);
                for a in 1..=threads.min(pm) {
                    for b in 1..=(threads / a).min(pn) {
                        assert!(
                            largest(mt, nt) <= largest(a, b),
                            "{pm}x{pn} on {threads}: {mt}x{nt} vs {a}x{b}"
                        );
                    }
                }
            }
        }
    }

    /// `run_local_b` (each thread packs its own B~) and `run_dynamic` (A~
    /// and B~ shared, blocks handed out) give the bits of `run` (one
    /// thread), on 2 to 4 threads, with every epilogue step, for
    /// shapes with edge tiles, several row and column blocks and a KC tail;
    /// fresh random inputs, C poisoned before each call.
    fn splits_match_one_thread<K: Microkernel>(kern: K) {
        let mut bits = fresh_rng();
        let mut next = move || (bits() >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .unwrap();
        for (m, n, k) in [
            (1, 1, 1),
            (5, 40, 0),
            (37, 45, 300),
            (200, 1100, 70),
            (9, 2100, 530),
        ] {
            let a: Vec<bf16> = (0..m * k).map(|_| bf16::from_f32(next())).collect();
            let b: Vec<bf16> = (0..k * n).map(|_| bf16::from_f32(next())).collect();
            let bias: Vec<f32> = (0..n).map(|_| next()).collect();
            let c0: Vec<f32> = (0..m * n).map(|_| next()).collect();
            let params = Gemm::new()
                .alpha(1.5)
                .beta(0.5)
                .unscale(4.0)
                .bias(crate::gemm::params::Bias::PerCol(&bias));
            let ep = Epilogue::new(&params);
            let av = MatRef::row_major(&a, m, k).unwrap();
            let bv = MatRef::row_major(&b, k, n).unwrap();
            let mut want = c0.clone();
            let packed = pack_b(kern, bv, 1);
            let bad_want = run(
                kern,
                av,
                &packed,
                k,
                n,
                MatMut::row_major(&mut want, m, n).unwrap(),
                &ep,
                1,
            );
            for threads in 2..=4 {
                let mut got = c0.clone();
                let bad = pool.install(|| {
                    run_local_b(
                        kern,
                        av,
                        bv,
                        MatMut::row_major(&mut got, m, n).unwrap(),
                        &ep,
                        threads,
                    )
                });
                assert_eq!(bad, bad_want);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(
                        g.to_bits(),
                        w.to_bits(),
                        "{m}x{n}x{k}, {threads} threads, output {i}"
                    );
                }
                let mut got = c0.clone();
                let bad = pool.install(|| {
                    run_dynamic(
                        kern,
                        av,
                        &packed,
                        k,
                        n,
                        MatMut::row_major(&mut got, m, n).unwrap(),
                        &ep,
                        threads,
                    )
                });
                assert_eq!(bad, bad_want);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(
                        g.to_bits(),
                        w.to_bits(),
                        "{m}x{n}x{k}, {threads} threads, dynamic, output {i}"
                    );
                }
            }
        }
    }

    /// `item_shape` gives whole tiles, at most `mc_max` rows (rounded up to
    /// whole tiles), and enough blocks per thread unless both sides are at
    /// their floor.
    #[test]
    fn item_shape_gives_enough_whole_blocks() {
        for (m, n) in [
            (1, 1),
            (31, 2000),
            (512, 512),
            (1024, 1024),
            (2048, 2048),
            (100, 9000),
        ] {
            for threads in 1..=16 {
                let (mr, nr, mc_max) = (32, 32, 256);
                let (mc, nc) = item_shape(m, n, threads, mr, nr, mc_max);
                let items = m.div_ceil(mc) * n.div_ceil(nc);
                assert!(
                    mc % mr == 0 && nc % nr == 0 && mc > 0 && nc > 0,
                    "{m}x{n}: {mc}x{nc}"
                );
                assert!(mc <= mc_max && nc <= 512, "{m}x{n}: {mc}x{nc}");
                assert!(
                    items >= ITEMS_PER_THREAD * threads || (mc <= 2 * mr && nc <= 4 * nr),
                    "{m}x{n} on {threads} threads: {mc}x{nc} gives {items} blocks"
                );
            }
        }
    }

    /// Calls `$check` with every BLIS kernel this machine has (the scalar
    /// one everywhere).
    macro_rules! with_every_kernel {
        ($check:ident) => {{
            $check(ScalarKernel);
            #[cfg(target_arch = "x86_64")]
            if let Some(t) = crate::arch::x86_64::Avx512Bf16::try_new() {
                $check(crate::arch::x86_64::avx512bf16::gemm::Avx512Dot(t));
            }
            #[cfg(target_arch = "x86_64")]
            if let Some(t) = crate::arch::x86_64::amx::Amx::try_new() {
                $check(crate::arch::x86_64::amx::gemm::AmxBf16(t));
            }
            #[cfg(target_arch = "aarch64")]
            if let Some(t) = crate::arch::aarch64::Neon::try_new() {
                $check(crate::arch::aarch64::neon::gemm::NeonF32(t));
            }
            #[cfg(target_arch = "aarch64")]
            if let Some(t) = crate::arch::aarch64::NeonBf16::try_new() {
                $check(crate::arch::aarch64::neonbf16::gemm::NeonBfmmla(t));
            }
        }};
    }

    #[test]
    fn threaded_splits_match_one_thread() {
        with_every_kernel!(splits_match_one_thread);
    }

    /// `K` with KC = 64 and runs of `R` KC blocks per column of tiles
    /// ([`Microkernel::KC_RUN`]); everything else is `K`'s.
    #[derive(Clone, Copy)]
    struct InRuns<K, const R: usize>(K);

    impl<K: Microkernel, const R: usize> Microkernel for InRuns<K, R> {
        const MR: usize = K::MR;
        const NR: usize = K::NR;
        const FORMAT: Format = K::FORMAT;
        const FORMAT_A: Format = K::FORMAT_A;
        const KC: usize = 64;
        const KC_RUN: usize = R;
        const NAME: &'static str = "in-runs";

        fn kernel(self, slots: usize, a: &[f32], b: &[f32], tile: &mut [f32], acc: bool) {
            self.0.kernel(slots, a, b, tile, acc);
        }

        fn widen<T: Element>(self, src: &[T], dst: &mut [f32]) {
            self.0.widen(src, dst);
        }

        fn narrow_f16(self, src: &[f32], dst: &mut [half::f16]) {
            self.0.narrow_f16(src, dst);
        }

        fn axpy_rows(self, x: &[f32], b: &[f32], y: &mut [&mut [f32]]) {
            self.0.axpy_rows(x, b, y);
        }

        fn axpy_rows4(self, x: &[f32], b: [&[f32]; 4], y: &mut [&mut [f32]]) {
            self.0.axpy_rows4(x, b, y);
        }
    }

    /// Columns of tiles run through 3 KC blocks at a time: the bits of the
    /// BLIS order (one KC block for every column), for k with whole runs,
    /// a short last run and a KC tail; then the threaded splits in runs.
    fn runs_match_blis_order<K: Microkernel>(kern: K) {
        let mut bits = fresh_rng();
        let mut next = move || (bits() >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
        for (m, n, k) in [(37, 45, 300), (70, 90, 384), (9, 130, 64), (3, 5, 0)] {
            let a: Vec<bf16> = (0..m * k).map(|_| bf16::from_f32(next())).collect();
            let b: Vec<bf16> = (0..k * n).map(|_| bf16::from_f32(next())).collect();
            let c0: Vec<f32> = (0..m * n).map(|_| next()).collect();
            let ep = Epilogue::new(&Gemm::new().beta(0.5));
            let av = MatRef::row_major(&a, m, k).unwrap();
            let bv = MatRef::row_major(&b, k, n).unwrap();
            let one_by_one = |c: &mut Vec<f32>| {
                let kern = InRuns::<K, 1>(kern);
                let packed = pack_b(kern, bv, 1);
                let cv = MatMut::row_major(c, m, n).unwrap();
                run(kern, av, &packed, k, n, cv, &ep, 1)
            };
            let in_runs = |c: &mut Vec<f32>| {
                let kern = InRuns::<K, 3>(kern);
                let packed = pack_b(kern, bv, 1);
                let cv = MatMut::row_major(c, m, n).unwrap();
                run(kern, av, &packed, k, n, cv, &ep, 1)
            };
            let (mut want, mut got) = (c0.clone(), c0.clone());
            assert_eq!(in_runs(&mut got), one_by_one(&mut want));
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g.to_bits(), w.to_bits(), "{m}x{n}x{k}, output {i}");
            }
        }
        splits_match_one_thread(InRuns::<K, 3>(kern));
    }

    #[test]
    fn kc_runs_match_blis_order() {
        with_every_kernel!(runs_match_blis_order);
    }

    /// [`Format::Bf16Rows`] (the AMX A~ layout, otherwise only packed on
    /// AMX hosts) against its definition: row-major and strided A, whole
    /// and short groups (the 64-byte copy and the element path), edge
    /// lanes, odd depths; fresh random bits, a poisoned destination.
    #[test]
    fn bf16_rows_packing_matches_its_definition() {
        let mut next = fresh_rng();
        let w = 32;
        for (rows, cols, rs_pad) in [(40, 100, 0), (33, 512, 0), (32, 64, 7), (7, 33, 3)] {
            let rs = cols + rs_pad;
            let data: Vec<bf16> = (0..rows * rs)
                .map(|_| bf16::from_bits(next() as u16))
                .collect();
            let v = MatRef::strided(&data, rows, cols, rs, 1).unwrap();
            for (l0, d0, depth) in [(0, 0, cols), (rows / 2, 1, cols - 1), (1, 32, cols - 32)] {
                let lanes = w.min(rows - l0);
                let nslots = Format::Bf16Rows.slots(depth);
                let mut dst = vec![f32::from_bits(0x7FC0_DEAD); nslots * w];
                let fmt = Format::Bf16Rows;
                let mut tmp = Vec::new();
                pack_panel(
                    ScalarKernel,
                    v,
                    l0,
                    lanes,
                    d0,
                    depth,
                    w,
                    fmt,
                    &mut dst,
                    &mut tmp,
                );
                let bits = |lane: usize, d: usize| -> u32 {
                    if lane < lanes && d < depth {
                        u32::from(data[(l0 + lane) * rs + d0 + d].to_bits())
                    } else {
                        0
                    }
                };
                for s in 0..nslots {
                    let (g, t) = (s / ROW_GROUP, s % ROW_GROUP);
                    let gs = ROW_GROUP.min(nslots - g * ROW_GROUP);
                    for lane in 0..w {
                        let got = dst[g * ROW_GROUP * w + lane * gs + t].to_bits();
                        let want = bits(lane, 2 * s) | bits(lane, 2 * s + 1) << 16;
                        assert_eq!(
                            got, want,
                            "{rows}x{cols} rs {rs}, lanes {l0}+{lanes}, depth {d0}+{depth}: slot {s} lane {lane}"
                        );
                    }
                }
            }
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod probe {
    use super::*;
    use crate::arch::x86_64::Avx512Bf16;
    use crate::arch::x86_64::avx512bf16::gemm::Avx512Dot;
    use crate::gemm::Gemm;
    use std::sync::OnceLock;

    /// Multiplies per 256 slots of the busy kernel: `PROBE_BUSY`, or 745,
    /// about as long as the AMX kernel takes for 256 slots on one core of
    /// the lent host; 0 leaves the loops alone.
    fn busy_per_256() -> usize {
        static BUSY: OnceLock<usize> = OnceLock::new();
        *BUSY.get_or_init(|| std::env::var("PROBE_BUSY").map_or(745, |v| v.parse().unwrap()))
    }

    /// A kernel with the AMX kernel's shape and formats that touches no
    /// memory and stays busy about as long as the AMX kernel computes, its
    /// packing and epilogue those of the AMX kernel: what the driver costs
    /// around it, on any x86-64 with AVX512_BF16.
    #[derive(Clone, Copy)]
    struct Busy(Avx512Dot);

    impl Microkernel for Busy {
        const MR: usize = 32;
        const NR: usize = 32;
        const FORMAT: Format = Format::Bf16Pairs;
        const FORMAT_A: Format = Format::Bf16Rows;
        const KC: usize = 512;
        const NAME: &'static str = "busy";

        fn kernel(self, slots: usize, a: &[f32], b: &[f32], tile: &mut [f32], _: bool) {
            let mut x = 3u64;
            // SAFETY: register arithmetic only: a chain of 3-cycle
            // multiplies (about 2.9 GHz here).
            unsafe {
                core::arch::asm!(
                    "2:", "imul {x}, {x}", "dec {n}", "jnz 2b",
                    x = inout(reg) x,
                    n = inout(reg) (slots * busy_per_256() / 256).max(1) => _,
                    options(nomem, nostack),
                );
            }
            tile[0] = a[0] + b[0] + x as f32;
        }

        fn widen<T: Element>(self, src: &[T], dst: &mut [f32]) {
            self.0.widen(src, dst);
        }

        fn narrow_f16(self, src: &[f32], dst: &mut [half::f16]) {
            self.0.narrow_f16(src, dst);
        }

        fn store_block<C: Element>(self, job: &StoreBlock<'_, C>) -> usize {
            // SAFETY: `self.0`'s token proves every feature it enables.
            unsafe { crate::arch::x86_64::avx512::gemm::store_block(self, job) }
        }

        fn axpy_rows(self, _: &[f32], _: &[f32], _: &mut [&mut [f32]]) {}

        fn axpy_rows4(self, _: &[f32], _: [&[f32]; 4], _: &mut [&mut [f32]]) {}
    }

    /// Packing B, then the best of three runs of the loops at `n`.
    fn time_loops<C: Element>(busy: Busy, n: usize, threads: usize) -> (f64, f64) {
        let a = vec![bf16::from_f32(1.0); n * n];
        let b = vec![bf16::from_f32(1.0); n * n];
        let mut c = vec![C::from_f32(0.0); n * n];
        let av = MatRef::row_major(&a, n, n).unwrap();
        let bv = MatRef::row_major(&b, n, n).unwrap();
        let ep = Epilogue::new(&Gemm::new());
        let reps = (4096 / n).pow(2).max(1);
        let (mut pack, mut loops) = (f64::MAX, f64::MAX);
        for _ in 0..3 {
            let t0 = std::time::Instant::now();
            for _ in 0..reps {
                recycle(pack_b_scratch(busy, bv, threads));
            }
            pack = pack.min(t0.elapsed().as_secs_f64() / reps as f64);
            let p = pack_b_scratch(busy, bv, threads);
            let t0 = std::time::Instant::now();
            for _ in 0..reps {
                let cv = MatMut::row_major(&mut c, n, n).unwrap();
                run(busy, av, &p, n, n, cv, &ep, threads);
            }
            loops = loops.min(t0.elapsed().as_secs_f64() / reps as f64);
            recycle(p);
        }
        (pack, loops)
    }

    /// `cargo test --release --lib driver_overhead -- --ignored --nocapture`:
    /// packing B, then the BLIS loops around the busy kernel (A packing,
    /// epilogue, stores to C), bf16 -> f32 and bf16 -> bf16; one thread,
    /// or `PROBE_THREADS` (the busy time is then divided among them).
    /// `PROBE_BUSY=0` times the loops alone.
    #[test]
    #[ignore = "timing probe"]
    fn driver_overhead() {
        let Some(t) = Avx512Bf16::try_new() else {
            eprintln!("no AVX512_BF16 here");
            return;
        };
        let busy = Busy(Avx512Dot(t));
        let threads: usize = std::env::var("PROBE_THREADS").map_or(1, |t| t.parse().unwrap());
        let ns: Vec<usize> = std::env::var("PROBE_N").map_or(vec![512, 1024, 2048, 4096], |v| {
            v.split(',').map(|x| x.parse().unwrap()).collect()
        });
        for n in ns {
            let busy_s = 2.0 * (n as f64).powi(3) / 1370e9 / threads as f64;
            let busy_s = busy_s * busy_per_256() as f64 / 745.0;
            for (out, (pack, loops)) in [
                ("f32", time_loops::<f32>(busy, n, threads)),
                ("bf16", time_loops::<bf16>(busy, n, threads)),
            ] {
                eprintln!(
                    "n={n}, {threads} threads, {out} out: pack B {:.2} ms, loops {:.2} ms of which the busy kernel {:.2} ms",
                    pack * 1e3,
                    loops * 1e3,
                    busy_s * 1e3
                );
            }
        }
    }
}
