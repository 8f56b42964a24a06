//! The end of a block: the epilogue (alpha, unscale, beta, bias,
//! activation, rounding to C's type) applied row by row, the single store
//! of each output through [`CPtr`], and the count of non-finite outputs.

use super::epilogue::{Activation, Bias, Epilogue};
use super::gemm::{Microkernel, RowOps};
use crate::element::{DType, Element, SliceMut};

/// One block of C: rows `i0..i0 + m`, columns `j0..j0 + n`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Block {
    pub(crate) i0: usize,
    pub(crate) m: usize,
    pub(crate) j0: usize,
    pub(crate) n: usize,
}

/// C's base pointer and strides, shared by the threads. Each work item
/// writes a disjoint block of C's elements, and C's strides never alias
/// (`MatMut` checks that when the view is made), so the blocks are
/// disjoint in memory too.
#[derive(Clone, Copy)]
pub(crate) struct CPtr<C> {
    pub(crate) ptr: *mut C,
    pub(crate) rs: usize,
    pub(crate) cs: usize,
}

// SAFETY: the pointer is only used for disjoint elements per thread (see
// the type's docs) while the `&mut` borrow of C is held by `run`.
unsafe impl<C: Send> Send for CPtr<C> {}
// SAFETY: as above; no two threads touch the same element.
unsafe impl<C: Send> Sync for CPtr<C> {}

/// A finished block of C: its f32 sums in the workspace (tile by tile,
/// `(jp * m_panels + ip) * MR * NR`), waiting for the epilogue and the
/// single store of each output ([`Microkernel::store_block`]).
///
/// Only [`StoreBlock::new`] makes one (the fields are private), and its
/// contract is that the block lies inside C and this thread alone writes
/// it. That is what lets [`StoreBlock::run`] be a safe fn.
pub(crate) struct StoreBlock<'a, C> {
    ep: &'a Epilogue<'a>,
    acc: &'a [f32],
    blk: Block,
    m_panels: usize,
    n_panels: usize,
    c: CPtr<C>,
    c_len: usize,
}

impl<'a, C> StoreBlock<'a, C> {
    /// The store of block `blk` of C (`c`, its slice `c_len` long) from
    /// the f32 tiles in `acc`: `m_panels x n_panels` tiles of `MR x NR`,
    /// tile `(ip, jp)` at `(jp * m_panels + ip) * MR * NR`.
    ///
    /// # Safety
    ///
    /// `blk` lies inside the C view `c` was taken from, whose borrow
    /// outlives the store, and no other thread reads or writes `blk`'s
    /// elements of C until it is done.
    pub(crate) unsafe fn new(
        ep: &'a Epilogue<'a>,
        acc: &'a [f32],
        blk: Block,
        (m_panels, n_panels): (usize, usize),
        c: CPtr<C>,
        c_len: usize,
    ) -> Self {
        StoreBlock {
            ep,
            acc,
            blk,
            m_panels,
            n_panels,
            c,
            c_len,
        }
    }
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
    pub(crate) fn run<K: Microkernel + RowOps>(&self, kern: K) -> usize {
        if let Some(nonfinite) = self.run_f32_direct::<K>() {
            return nonfinite;
        }
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
                    // SAFETY: row i, columns j0..j0 + cols of the block, inside
                    // C and this thread's alone (`StoreBlock::new`'s contract).
                    nonfinite += unsafe { store_row(kern, self.ep, t, i, j0, self.c, self.c_len) };
                }
            }
        }
        nonfinite
    }
}

impl<C: Element> StoreBlock<'_, C> {
    /// [`StoreBlock::run`] where C is contiguous f32 along its rows and
    /// the epilogue has no bias and no activation (a plain `C = alpha A B
    /// (+ beta C)`): each tile row segment goes from the workspace to C in
    /// one pass, the non-finite count taken from the values in registers.
    /// The general path stages each row in a span first and counts by
    /// reading C back, which at n = 512 made the store about 5% of a
    /// one-thread AVX2 GEMM. `None` where the case does not apply.
    #[inline(always)]
    fn run_f32_direct<K: Microkernel>(&self) -> Option<usize> {
        let ep = self.ep;
        let plain = matches!(ep.bias, Bias::None) && ep.activation == Activation::None;
        if C::DTYPE != DType::F32 || self.c.cs != 1 || !plain {
            return None;
        }
        let (alpha, beta) = (ep.alpha, ep.beta);
        // One loop per case, as in `store_row_f32` (the same operations in
        // the same order, so the same bits).
        Some(match (ep.inv_scale, beta != 0.0) {
            (None, false) => self.each_segment::<K>(|y, _| alpha * y),
            (Some(s), false) => self.each_segment::<K>(|y, _| alpha * y * s),
            (None, true) => self.each_segment::<K>(|y, o| alpha * y + beta * o),
            (Some(s), true) => self.each_segment::<K>(|y, o| alpha * y * s + beta * o),
        })
    }

    /// `c = f(acc, c)` over the block, row by row across its tiles (C
    /// written along its rows, as in [`StoreBlock::run`]); returns how
    /// many results are non-finite. Only for f32 C with `cs == 1`.
    #[inline(always)]
    fn each_segment<K: Microkernel>(&self, f: impl Fn(f32, f32) -> f32) -> usize {
        debug_assert!(C::DTYPE == DType::F32 && self.c.cs == 1);
        let (mr, nr) = (K::MR, K::NR);
        let (blk, tile) = (self.blk, mr * nr);
        let c = self.c.ptr.cast::<f32>();
        // Counts per column of a tile, summed at the end: a sum per
        // segment would add a horizontal reduction to every 16 outputs.
        const { assert!(K::NR <= MAX_NR) };
        let mut counts = [0u32; MAX_NR];
        let counts = &mut counts[..nr];
        for ip in 0..self.m_panels {
            let rows = mr.min(blk.m - ip * mr);
            for r in 0..rows {
                let i = blk.i0 + ip * mr + r;
                let base = i * self.c.rs + blk.j0;
                debug_assert!(blk.n == 0 || base + blk.n <= self.c_len);
                // SAFETY: row i, columns j0..j0 + n, inside f32 C (cs = 1,
                // checked above), this thread's alone (`StoreBlock::new`).
                let row = unsafe { core::slice::from_raw_parts_mut(c.add(base), blk.n) };
                for (jp, d) in row.chunks_mut(nr).enumerate() {
                    let at = (jp * self.m_panels + ip) * tile + r * nr;
                    let acc = &self.acc[at..at + d.len()];
                    for ((o, &y), n) in d.iter_mut().zip(acc).zip(counts.iter_mut()) {
                        let v = f(y, *o);
                        *n += u32::from(!v.is_finite());
                        *o = v;
                    }
                }
            }
        }
        counts.iter().map(|&n| n as usize).sum()
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
/// (whole tiles of every ISA; a block up to `blis::NC_MAX` wide takes two spans,
/// so the tests of any ISA reach the span loop).
pub(crate) const ROW_SPAN: usize = 512;
const _: () = assert!(ROW_SPAN >= 64);

/// The widest tile of any microkernel (`NR`), for per-column counts.
const MAX_NR: usize = 64;

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
pub(crate) unsafe fn store_row<K: RowOps, C: Element>(
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
                    let bits = crate::kernel::bits::f32_to_bf16_bits(x.to_bits());
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
