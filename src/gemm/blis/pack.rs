//! Packing: B~ (NR-column panels over all of k, for one call or kept in a
//! [`PackedB`](crate::PackedB)) and A~ (MR-row panels, per block or all of
//! A at once), each widened or paired into the kernel's [`Format`] with
//! zero-padded edges, starting on a cache line.

use super::{div_ceil, scratch, slots, total_slots};
use crate::element::{DType, Element, Slice};
use crate::gemm::view::MatRef;
use crate::kernel::gemm::{Format, Microkernel, ROW_GROUP, RowOps};
use crate::pool::for_each_chunk_mut;
use half::bf16;

/// Rows of B packed per pass over all panels (see `pack_b_into`); a
/// multiple of 4.
pub(super) const PACK_ROWS: usize = 64;
const _: () = assert!(PACK_ROWS.is_multiple_of(4));

/// f32 slots per 64-byte cache line.
pub(super) const LINE: usize = 16;

/// `v` resized so that `len` slots fit from a 64-byte-aligned start, and
/// those slots. Packed panels and the tile workspace start on a cache line
/// so that no 64-byte AMX tile row or zmm load straddles two lines (each
/// such access costs two); a misaligned start is only slower.
///
/// Only grows `v`: every user writes all the slots it reads (packing pads
/// with zeros itself, the first k block overwrites the tile workspace), so
/// a reused buffer is never cleared. A larger one replaces it, allocated
/// zeroed rather than filled: large zeroed allocations come from the
/// system as untouched pages, so their page faults fall on the threads
/// that pack into them, in parallel, not on this one (B~ of an 11008 x 4096
/// bf16 B, filled here, cost more than the GEMM's 16-thread compute on the
/// Intel host).
pub(super) fn aligned(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len + LINE {
        *v = Vec::new(); // the old buffer goes before the new one comes
        *v = vec![0.0; len + LINE];
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
    /// The shape of the B it packs, `k x n`.
    pub(crate) k: usize,
    pub(crate) n: usize,
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

    /// Slots of one NR-column panel over all of k.
    pub(super) fn panel_len(&self) -> usize {
        total_slots(self.k, self.format) * self.nr
    }
}

/// Packs lanes `l0..l0+lanes` (at most `w`) by depth `d0..d0+depth` of `v`
/// (lane = row of `v`, depth = column) into `dst[s * w + lane]` (or the
/// grouped order of [`Format::Bf16Rows`]), zero-padded to `w` lanes and
/// whole slots.
#[expect(clippy::too_many_arguments, reason = "internal: a panel's coordinates")]
pub(super) fn pack_panel<K: RowOps, T: Element>(
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
            let rows = || -> Vec<&[T]> {
                (0..lanes)
                    .map(|lane| {
                        let off = (l0 + lane) * v.rs + d0;
                        &v.data[off..off + depth]
                    })
                    .collect()
            };
            if v.cs == 1 && depth > 1 && kern.pack_rows(&rows(), w, dst) {
                // Depth contiguous (A row-major): the ISA's transposing pack.
            } else if v.cs == 1 && depth > 1 && T::DTYPE != DType::F16 {
                // Depth contiguous, cheap widening (f32 copy, bf16 shift):
                // gather lane by lane per slot, so the writes are contiguous
                // and each lane's reads are one sequential stream.
                let rows = rows();
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
            } else if v.cs == 1 && depth > 1 {
                // Depth contiguous (B column-major: `Linear` weights): a
                // lane's slot is two consecutive bf16 of its row, read as
                // one pair and written with stride `w`, lane by lane, so
                // each row is read in one sequential run (16 slots of every
                // lane at a time was slower: docs/tried.md).
                if lanes < w {
                    dst.fill(0.0);
                }
                let mut runs: [&[bf16]; 64] = [&[]; 64];
                assert!(lanes <= runs.len(), "a panel is at most 64 lanes");
                let runs = &mut runs[..lanes];
                for (lane, run) in runs.iter_mut().enumerate() {
                    *run = &data[(l0 + lane) * v.rs + d0..][..depth];
                }
                if kern.pack_pairs(runs, w, dst) {
                    return;
                }
                for (lane, run) in runs.iter().enumerate() {
                    let (pairs, last) = run.as_chunks::<2>();
                    let out = dst[lane..].iter_mut().step_by(w);
                    for (o, &[x, y]) in out.zip(pairs) {
                        *o = pair(x, y);
                    }
                    if let [x] = *last {
                        dst[pairs.len() * w + lane] = pair(x, bf16::ZERO);
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

/// Packs all of `b` (`k x n`) for kernel `K`, over up to `threads` threads,
/// into a fresh buffer (for [`PackedB`](crate::PackedB), which keeps it).
pub(crate) fn pack_b<K: Microkernel + RowOps, T: Element>(
    kern: K,
    b: MatRef<'_, T>,
    threads: usize,
) -> PackedPanels {
    pack_b_into(kern, b, threads, Vec::new())
}

/// [`pack_b`] into this thread's scratch buffer, for one call; hand it
/// back with [`recycle`].
pub(crate) fn pack_b_scratch<K: Microkernel + RowOps, T: Element>(
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

fn pack_b_into<K: Microkernel + RowOps, T: Element>(
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
    //
    // In the kernel's f32 format, a B with contiguous rows is packed one
    // row at a time instead: each NR-column piece of the row goes to its
    // panel (a fixed-size copy for f32, `widen` otherwise). Every load then
    // follows a row, where the `PACK_ROWS` pass read each NR-column piece
    // down its rows, a new cache line per load, which made B~ a visible
    // share of a square GEMM (BENCHMARKS.md, AVX2).
    let rows_whole = K::FORMAT == Format::F32 && bt.rs == 1;
    // A B with contiguous columns (column-major, as `Linear` weights) is
    // packed panel by panel over the whole KC block instead: each lane is
    // one run along its column, where a `PACK_ROWS` pass would touch a
    // new page for each column of the chunk (BENCHMARKS.md, "Decode with
    // `Linear`-layout weights").
    let pass_rows = if bt.cs == 1 {
        K::BLOCKING.kc
    } else {
        PACK_ROWS
    };
    let pack_range = |p0: usize, chunk: &mut [f32], tmp: &mut Vec<f32>| {
        let chunk_panels = chunk.len() / per_panel;
        let (j0, j1) = (p0 * K::NR, ((p0 + chunk_panels) * K::NR).min(n));
        let mut block_off = 0;
        for pc in (0..k).step_by(K::BLOCKING.kc) {
            let kc = K::BLOCKING.kc.min(k - pc);
            if rows_whole {
                for d in 0..kc {
                    let off = (pc + d) * bt.cs + j0;
                    let row = &bt.data[off..off + (j1 - j0)];
                    let at = block_off + d * K::NR;
                    let panels = chunk.chunks_exact_mut(per_panel);
                    for (panel, src) in panels.zip(row.chunks(K::NR)) {
                        let dst = &mut panel[at..at + K::NR];
                        match T::slice(src) {
                            // A constant size after monomorphization: moves
                            // in registers, no `memcpy` call.
                            Slice::F32(src) if src.len() == K::NR => dst.copy_from_slice(src),
                            _ => kern.widen(src, &mut dst[..src.len()]),
                        }
                        // The last panel's columns past n: zero.
                        dst[src.len()..].fill(0.0);
                    }
                }
                block_off += slots(kc, K::FORMAT) * K::NR;
                continue;
            }
            for sub in (0..kc).step_by(pass_rows) {
                let depth = pass_rows.min(kc - sub);
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
            for_each_chunk_mut(data, per_panel * per_task, |t, chunk| {
                pack_range(t * per_task, chunk, &mut Vec::new())
            });
        } else {
            pack_range(0, data, &mut Vec::new());
        }
    }
    let len = per_panel * panels;
    let start = buf.as_ptr().align_offset(64).min(LINE);
    PackedPanels {
        format: K::FORMAT,
        nr: K::NR,
        kc: K::BLOCKING.kc,
        k,
        n,
        buf,
        start,
        len,
    }
}

/// A~ of all of `a` for kernel `K`, row panel by row panel, each panel's
/// KC blocks one after the other (the layout `block` reads), packed over
/// up to `threads` threads into this thread's A~ scratch.
pub(super) fn pack_a_shared<K: Microkernel + RowOps, T: Element>(
    kern: K,
    a: MatRef<'_, T>,
    threads: usize,
) -> SharedA {
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
            for pc in (0..k).step_by(K::BLOCKING.kc) {
                let kc = K::BLOCKING.kc.min(k - pc);
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
        for_each_chunk_mut(data, panel_len * per_task, |t, chunk| {
            pack_panels(t * per_task, chunk)
        });
    }
    let start = buf.as_ptr().align_offset(64).min(LINE);
    SharedA {
        buf,
        start,
        len: panel_len * panels,
    }
}

/// The result of [`pack_a_shared`]: its slots, and the buffer to recycle.
pub(super) struct SharedA {
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
    pub(super) fn recycle(self) {
        scratch::give_a(self.buf);
    }
}
