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
//! A kernel may take LOOP 4 in runs of [`Blocking::kc_run`] KC blocks and
//! put LOOP 2 outside each run (every column of tiles through the run's
//! blocks, then the next): AMX, whose accumulators go through memory
//! between KC blocks, then finds a column's tiles near the core again.
//!
//! Large GEMMs on several threads with a kernel that asks for it
//! ([`Blocking::dynamic`], AMX) pack A~ whole as well and hand the blocks
//! of C out one at a time instead ([`split::run_dynamic`]); smaller ones
//! with unpacked B may give each thread its own B~ ([`run_local_b`]).
//!
//! [`Blocking::kc_run`]: super::kernel::Blocking::kc_run
//! [`Blocking::dynamic`]: super::kernel::Blocking::dynamic
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

//!
//! One idea per file: [`pack`] (A~ and B~), [`scratch`] (the buffers each
//! thread keeps between calls), [`split`] (the split of C over threads),
//! [`block`] (LOOP 4, 2 and 1 on one block of C) and [`store`] (the
//! epilogue and the single store of each output).

mod block;
mod pack;
mod scratch;
mod split;
#[cfg(test)]
pub(crate) mod tests;

pub(in crate::gemm) use crate::kernel::store::{CPtr, store_row};
pub(crate) use pack::{PackedPanels, pack_b, pack_b_scratch, recycle};
pub(crate) use split::{local_b_pays, run, run_local_b};

/// C's pointer and strides, and the length of its slice, for the threads
/// that write disjoint blocks of it while the caller's borrow of C lasts.
pub(in crate::gemm) fn c_ptr<C: crate::element::Element>(
    c: crate::gemm::MatMut<'_, C>,
) -> (CPtr<C>, usize) {
    let len = c.data.len();
    let ptr = CPtr {
        ptr: c.data.as_mut_ptr(),
        rs: c.rs,
        cs: c.cs,
    };
    (ptr, len)
}

// A block of at most NC_MAX columns takes at most two epilogue spans, so
// the tests of any ISA reach the span loop.
const _: () = assert!(crate::kernel::store::ROW_SPAN < NC_MAX);

use crate::kernel::gemm::{Format, Microkernel};
use pack::LINE;
use split::dynamic_pays;

pub(crate) use crate::kernel::gemm::{KC, MC_MAX};
/// Upper bound for the columns of a work item: its f32 workspace
/// (`MC x NC`, 672 KiB) and the `KC x NC` slice of B~ it streams stay in L2.
pub(super) const NC_MAX: usize = 1024;

pub(super) const fn div_ceil(a: usize, b: usize) -> usize {
    a.div_ceil(b)
}

/// Slots of one k range of `len` values.
pub(super) const fn slots(len: usize, format: Format) -> usize {
    format.slots(len)
}

/// Total slots of a whole k, block by block (the same for every even
/// block depth, so for every kernel's
/// [`Blocking::kc`](super::kernel::Blocking::kc)).
pub(crate) const fn total_slots(k: usize, format: Format) -> usize {
    let full = k / KC;
    full * slots(KC, format) + slots(k % KC, format)
}

/// Bytes of scratch the blocked GEMM allocates for `A (m x k) B (k x n)`
/// on `threads` threads with kernel `K`: B~ unless `b_prepacked`, and A~
/// (one row block of at most `max(K::BLOCKING.mc, MC_MAX)` rows per
/// thread, or all of A where [`split::run_dynamic`] takes it), plus each
/// thread's tile workspace.
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
        let rows = m.min(K::BLOCKING.mc.max(MC_MAX));
        let busy = threads.clamp(1, div_ceil(m, K::MR).max(1));
        div_ceil(rows, K::MR)
            .checked_mul(a_panel)?
            .checked_mul(busy)?
    };
    let tiles = threads.checked_mul((K::BLOCKING.mc.max(MC_MAX) + K::MR) * (NC_MAX + K::NR))?;
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
