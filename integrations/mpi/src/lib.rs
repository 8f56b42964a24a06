//! The parts of the `train_ddp` example that need no MPI: how a batch and
//! the parameters are split between ranks, the reduction of the gradients
//! in rank order, and the bits that travel and get compared. They live in
//! a library so that `cargo test -p halfkern-mpi` checks them without
//! `mpirun`; the example (`examples/train_ddp/`) holds the MPI calls and
//! the training loop.
//!
//! # Why a fixed reduction order
//!
//! Float addition is not associative, and `MPI_SUM` on floats leaves the
//! order to the library: Open MPI picks a ring, a tree or recursive
//! doubling by size and rank count, so with three or more ranks the sum's
//! last bits depend on the algorithm chosen. Here no float is ever summed
//! by MPI: the gradients travel with `MPI_Alltoallv` (a reduce-scatter's
//! data movement, nothing added), and each rank sums the partials of the
//! slice it owns with [`sum_in_rank_order`]: `((p0 + p1) + p2) + ...` in
//! f32, the order a single process uses when it adds the shards' partial
//! gradients one after another. So every rank count gives bits that one
//! process can reproduce exactly, not only N = 2 (where `a + b == b + a`
//! would make any order match).

use std::ops::Range;

use halfkern::{Element, bf16, f16};
use mpi::datatype::Equivalence;

/// The `r`-th of `parts` contiguous pieces of `0..len`: the first
/// `len % parts` pieces hold one element more than the others.
///
/// # Panics
///
/// If `parts` is 0 or `r >= parts` (callers pass an MPI rank and size).
pub fn split(len: usize, parts: usize, r: usize) -> Range<usize> {
    assert!(r < parts, "piece {r} of {parts}");
    let (q, extra) = (len / parts, len % parts);
    let start = r * q + r.min(extra);
    start..start + q + usize::from(r < extra)
}

/// Which rank owns which elements of each parameter tensor: every tensor
/// is cut into `ranks` contiguous pieces with [`split`], so each rank owns
/// about `1/ranks` of every tensor and the work and the messages are
/// balanced whatever the tensors' sizes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    lens: Vec<usize>,
    ranks: usize,
}

impl Layout {
    /// The layout of tensors of these lengths over `ranks` ranks.
    ///
    /// # Errors
    ///
    /// A message when `ranks` is 0 or a count does not fit MPI's `int`.
    pub fn new(lens: &[usize], ranks: usize) -> Result<Layout, String> {
        if ranks == 0 {
            return Err("no ranks".into());
        }
        let total = lens.iter().try_fold(0usize, |a, &l| a.checked_add(l));
        if total.is_none_or(|t| i32::try_from(t).is_err()) {
            return Err(format!(
                "{lens:?} elements: more than MPI's int counts can address"
            ));
        }
        Ok(Layout {
            lens: lens.to_vec(),
            ranks,
        })
    }

    /// The number of ranks.
    pub fn ranks(&self) -> usize {
        self.ranks
    }

    /// The lengths of the tensors.
    pub fn lens(&self) -> &[usize] {
        &self.lens
    }

    /// The range of each tensor that rank `r` owns.
    pub fn owned(&self, r: usize) -> Vec<Range<usize>> {
        self.lens.iter().map(|&l| split(l, self.ranks, r)).collect()
    }

    /// How many elements rank `r` owns, over all tensors.
    pub fn owned_len(&self, r: usize) -> usize {
        self.owned(r).iter().map(|o| o.len()).sum()
    }

    /// MPI counts and displacements of a buffer that holds, for each rank
    /// in order, `per_rank(r)` elements.
    pub fn counts_displs(&self, per_rank: impl Fn(usize) -> usize) -> (Vec<i32>, Vec<i32>) {
        let mut counts = Vec::with_capacity(self.ranks);
        let mut displs = Vec::with_capacity(self.ranks);
        let mut at = 0usize;
        for r in 0..self.ranks {
            let c = per_rank(r);
            // Both fit: `new` checked that the sum of all lengths does, and
            // no buffer here is longer than `ranks` times a rank's share.
            counts.push(i32::try_from(c).unwrap_or(i32::MAX));
            displs.push(i32::try_from(at).unwrap_or(i32::MAX));
            at += c;
        }
        (counts, displs)
    }

    /// Appends, for each rank in order, that rank's pieces of `tensors`
    /// (tensor by tensor) to `out`: the send buffer of the reduce-scatter.
    ///
    /// # Panics
    ///
    /// If `tensors` does not match the layout's lengths.
    pub fn pack_by_owner<T: Copy, A: AsRef<[T]>>(&self, tensors: &[A], out: &mut Vec<T>) {
        assert_eq!(tensors.len(), self.lens.len(), "tensor count");
        for r in 0..self.ranks {
            for (t, range) in tensors.iter().zip(self.owned(r)) {
                out.extend_from_slice(&t.as_ref()[range]);
            }
        }
    }

    /// Writes a buffer laid out as [`Layout::pack_by_owner`]'s back into
    /// the tensors through `f` (the all-gather's receive side, where `f`
    /// turns bits back into elements).
    ///
    /// # Panics
    ///
    /// If `tensors` or `packed` does not match the layout.
    pub fn unpack_by_owner<W: Copy, T>(
        &self,
        packed: &[W],
        tensors: &mut [&mut [T]],
        f: impl Fn(W) -> T,
    ) {
        assert_eq!(tensors.len(), self.lens.len(), "tensor count");
        let mut at = 0;
        for r in 0..self.ranks {
            for (t, range) in tensors.iter_mut().zip(self.owned(r)) {
                let n = range.len();
                for (d, &w) in t[range].iter_mut().zip(&packed[at..at + n]) {
                    *d = f(w);
                }
                at += n;
            }
        }
        assert_eq!(at, packed.len(), "packed length");
    }
}

/// `out[j] = ((parts[0][j] + parts[1][j]) + parts[2][j]) + ...` in f32,
/// where `parts` holds `parts.len() / out.len()` equal pieces one after
/// another (rank 0's first): the one order of summation this example uses,
/// on every rank and in the single-process reference.
///
/// # Panics
///
/// If `out` is empty while `parts` is not, or `parts.len()` is not a
/// multiple of `out.len()`.
pub fn sum_in_rank_order(parts: &[f32], out: &mut [f32]) {
    if out.is_empty() {
        assert!(parts.is_empty(), "parts for an empty output");
        return;
    }
    assert_eq!(parts.len() % out.len(), 0, "parts of unequal length");
    let mut chunks = parts.chunks_exact(out.len());
    match chunks.next() {
        Some(first) => out.copy_from_slice(first),
        None => out.fill(0.0),
    }
    for part in chunks {
        for (o, p) in out.iter_mut().zip(part) {
            *o += p;
        }
    }
}

/// An element type as the integer of its bits, which MPI can carry and
/// a hash can read: weights travel and are compared bit for bit, never as
/// floats (a float comparison would call `0.0 == -0.0` equal and NaN
/// unequal to itself).
pub trait Bits: Element {
    /// `u16` for bf16 and f16, `u32` for f32.
    type Wire: Equivalence + Copy + Default + Into<u64>;
    /// The bits of `self`.
    fn to_wire(self) -> Self::Wire;
    /// The value with these bits.
    fn from_wire(w: Self::Wire) -> Self;
}

impl Bits for f32 {
    type Wire = u32;
    fn to_wire(self) -> u32 {
        self.to_bits()
    }
    fn from_wire(w: u32) -> f32 {
        f32::from_bits(w)
    }
}

impl Bits for bf16 {
    type Wire = u16;
    fn to_wire(self) -> u16 {
        self.to_bits()
    }
    fn from_wire(w: u16) -> bf16 {
        bf16::from_bits(w)
    }
}

impl Bits for f16 {
    type Wire = u16;
    fn to_wire(self) -> u16 {
        self.to_bits()
    }
    fn from_wire(w: u16) -> f16 {
        f16::from_bits(w)
    }
}

/// FNV-1a over 64-bit words: a fingerprint of a rank's state, all-gathered
/// so every rank can see whether all hold the same bits. Not a defence
/// against anyone, only against bugs.
#[derive(Clone, Copy, Debug)]
pub struct Fingerprint(u64);

impl Default for Fingerprint {
    fn default() -> Fingerprint {
        Fingerprint(0xCBF2_9CE4_8422_2325)
    }
}

impl Fingerprint {
    /// Mixes in one word.
    pub fn word(&mut self, w: u64) {
        for byte in w.to_le_bytes() {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01B3);
        }
    }

    /// Mixes in the bits of every element, and the length.
    pub fn elements<T: Bits>(&mut self, xs: &[T]) {
        self.word(xs.len() as u64);
        for &x in xs {
            self.word(x.to_wire().into());
        }
    }

    /// The fingerprint so far.
    pub fn value(self) -> u64 {
        self.0
    }
}

/// Parses `--inject-inf`'s `RANK:STEP` (STEP counts from 1).
///
/// # Errors
///
/// A message naming the flag and what was wrong.
pub fn parse_rank_step(s: &str) -> Result<(usize, u64), String> {
    let bad = || format!("--inject-inf wants RANK:STEP (e.g. 1:5), got {s:?}");
    let (r, t) = s.split_once(':').ok_or_else(bad)?;
    let r = r.trim().parse().map_err(|_| bad())?;
    let t: u64 = t.trim().parse().map_err(|_| bad())?;
    if t == 0 {
        return Err(format!("--inject-inf: steps count from 1, got {s:?}"));
    }
    Ok((r, t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_in_order() {
        for len in [0, 1, 5, 10, 64, 257] {
            for parts in 1..=9 {
                let pieces: Vec<_> = (0..parts).map(|r| split(len, parts, r)).collect();
                assert_eq!(pieces[0].start, 0);
                assert_eq!(pieces[parts - 1].end, len);
                for w in pieces.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                    assert!(w[0].len() >= w[1].len() && w[0].len() <= w[1].len() + 1);
                }
            }
        }
    }

    #[test]
    fn pack_unpack_round_trip() {
        let lens = [7, 1, 12];
        let t: Vec<Vec<u32>> = lens
            .iter()
            .enumerate()
            .map(|(i, &l)| (0..l as u32).map(|j| 100 * i as u32 + j).collect())
            .collect();
        for ranks in 1..=5 {
            let lay = Layout::new(&lens, ranks).unwrap();
            let mut packed = Vec::new();
            lay.pack_by_owner(&t, &mut packed);
            let (counts, displs) = lay.counts_displs(|r| lay.owned_len(r));
            assert_eq!(counts.iter().sum::<i32>(), 20);
            assert_eq!(*displs.last().unwrap() + counts.last().unwrap(), 20);
            let mut back: Vec<Vec<u32>> = lens.iter().map(|&l| vec![0; l]).collect();
            let mut views: Vec<&mut [u32]> = back.iter_mut().map(|v| &mut v[..]).collect();
            lay.unpack_by_owner(&packed, &mut views, |w| w);
            assert_eq!(back, t);
        }
        assert!(Layout::new(&lens, 0).is_err());
        assert!(Layout::new(&[usize::MAX, 1], 2).is_err());
    }

    #[test]
    fn sum_is_left_to_right() {
        // 1e8 + 1 - 1e8 is 0 left to right in f32, 1 in another order.
        let parts = [1.0e8f32, 1.0, -1.0e8];
        let mut out = [0.0f32];
        sum_in_rank_order(&parts, &mut out);
        assert_eq!(out[0], (1.0e8f32 + 1.0) - 1.0e8);
        let mut two = [0.0f32; 2];
        sum_in_rank_order(&[1.0, 2.0, 3.0, 4.0], &mut two);
        assert_eq!(two, [4.0, 6.0]);
    }

    #[test]
    fn bits_and_fingerprint() {
        assert_eq!(
            bf16::from_wire(bf16::from_f32(-2.5).to_wire()),
            bf16::from_f32(-2.5)
        );
        assert_eq!(f16::from_f32(1.0).to_wire(), 0x3C00);
        let (mut a, mut b) = (Fingerprint::default(), Fingerprint::default());
        a.elements(&[0.0f32]);
        b.elements(&[-0.0f32]);
        assert_ne!(a.value(), b.value());
    }

    #[test]
    fn rank_step_parses() {
        assert_eq!(parse_rank_step("1:5"), Ok((1, 5)));
        for bad in ["", "1", "x:2", "1:0", "1:-3", ":"] {
            assert!(parse_rank_step(bad).is_err(), "{bad}");
        }
    }
}
