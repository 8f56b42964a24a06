//! Slice conversions over any [`F32Simd`]: every pair among f32, bf16 and
//! f16 goes through an f32 vector (widening is exact, so `bf16 <-> f16`
//! rounds once), and stochastic rounding draws `sr_bits` per global index.

use crate::arch::scalar::convert::sr_key;
use crate::element::{Slice, SliceMut};
use crate::kernel::simd::{F32Simd, Half, Io, SimdOp, for_each_chunk, stream_head};

/// Converts `src` into `dst` (equal lengths) on `s`'s ISA; `stream` asks
/// for streaming stores (the caller decides from the whole output's size).
#[inline(always)]
pub(crate) fn convert<S: F32Simd>(s: S, src: Slice<'_>, dst: SliceMut<'_>, stream: bool) {
    match (src, dst) {
        (Slice::F32(a), SliceMut::Bf16(b)) => map(s, a, b, stream),
        (Slice::F32(a), SliceMut::F16(b)) => map(s, a, b, stream),
        (Slice::Bf16(a), SliceMut::F32(b)) => map(s, a, b, stream),
        (Slice::F16(a), SliceMut::F32(b)) => map(s, a, b, stream),
        (Slice::Bf16(a), SliceMut::F16(b)) => map(s, a, b, stream),
        (Slice::F16(a), SliceMut::Bf16(b)) => map(s, a, b, stream),
        (Slice::F32(a), SliceMut::F32(b)) => b.copy_from_slice(a),
        (Slice::Bf16(a), SliceMut::Bf16(b)) => b.copy_from_slice(a),
        (Slice::F16(a), SliceMut::F16(b)) => b.copy_from_slice(a),
    }
}

/// `dst[i] = src[i]` through an f32 vector.
#[inline(always)]
fn map<S: F32Simd, A: Io, B: Io>(s: S, src: &[A], dst: &mut [B], stream: bool) {
    assert_eq!(src.len(), dst.len());
    // Ordinary stores up to the first vector-aligned element of `dst`, then
    // aligned ones: streaming stores need it, and an ordinary store that
    // straddles two cache lines costs two (malloc's large buffers start 16
    // bytes past a page). Short slices skip the split.
    let head = if stream || dst.len() >= 4 * S::LANES {
        stream_head::<S, B>(dst)
    } else {
        0
    };
    let (src_head, src) = src.split_at(head);
    let (dst_head, dst) = dst.split_at_mut(head);
    for_each_chunk!(S, head, |c| {
        let v = c.load(s, src_head);
        c.store(s, v, dst_head);
    });
    if !stream {
        // Two vectors per step where the ISA asks for it (see
        // `F32Simd::CONVERT_PAIRS`), then at most one full chunk and a tail.
        let pair = 2 * S::LANES;
        let pairs = if S::CONVERT_PAIRS {
            src.len() - src.len() % pair
        } else {
            0
        };
        for (a, b) in src[..pairs]
            .chunks_exact(pair)
            .zip(dst[..pairs].chunks_exact_mut(pair))
        {
            let (v, w) = A::load_x2(s, a);
            B::store_x2(s, v, w, b);
        }
        let (src_rest, dst_rest) = (&src[pairs..], &mut dst[pairs..]);
        for_each_chunk!(S, src_rest.len(), |c| {
            let v = c.load(s, src_rest);
            c.store(s, v, dst_rest);
        });
        return;
    }
    for_each_chunk!(S, src.len(), |c| {
        let v = c.load(s, src);
        c.stream(s, v, dst);
    });
    s.stream_fence();
}

/// Stochastic rounding of `src` into `dst` (equal lengths); `first` is the
/// global index of `src[0]`. With an f32 `dst` this copies.
#[inline(always)]
pub(crate) fn convert_stochastic<S: F32Simd>(
    s: S,
    src: &[f32],
    dst: SliceMut<'_>,
    seed: u64,
    first: u64,
) {
    match dst {
        SliceMut::F32(d) => d.copy_from_slice(src),
        SliceMut::Bf16(d) => stochastic(s, src, d, seed, first),
        SliceMut::F16(d) => stochastic(s, src, d, seed, first),
    }
}

#[inline(always)]
fn stochastic<S: F32Simd, T: Half>(s: S, src: &[f32], dst: &mut [T], seed: u64, first: u64) {
    assert_eq!(src.len(), dst.len());
    // The key changes with the upper 32 bits of the global index, so walk
    // segments that do not cross a multiple of 2^32.
    let mut done = 0;
    while done < src.len() {
        let index = first + done as u64;
        let to_boundary = (1u64 << 32) - (index & 0xFFFF_FFFF);
        let n = to_boundary.min((src.len() - done) as u64) as usize;
        let key = sr_key(seed, (index >> 32) as u32);
        let lo = index as u32;
        let (src, dst) = (&src[done..done + n], &mut dst[done..done + n]);
        for_each_chunk!(S, n, |c| {
            let v = c.load(s, src);
            let r = s.sr_bits(key, lo.wrapping_add(c.start as u32));
            c.store_bits(s, T::narrow_sr(s, v, r), dst);
        });
        done += n;
    }
}

/// `halfkern::convert` of one chunk (equal lengths).
pub(crate) struct Convert<'a> {
    pub(crate) src: Slice<'a>,
    pub(crate) dst: SliceMut<'a>,
    /// Streaming stores, where the ISA has them (the caller decides from the
    /// whole output's size).
    pub(crate) stream: bool,
}

impl SimdOp for Convert<'_> {
    type Output = ();
    const IEEE: bool = false;
    fn scalar(self) {
        crate::arch::scalar::convert(self.src, self.dst)
    }
    #[inline(always)]
    fn simd<S: F32Simd>(self, s: S) {
        convert(s, self.src, self.dst, self.stream)
    }
}

/// `halfkern::convert_stochastic` of one chunk (equal lengths); `first`
/// is the global index of `src[0]`.
pub(crate) struct Stochastic<'a> {
    pub(crate) src: &'a [f32],
    pub(crate) dst: SliceMut<'a>,
    pub(crate) seed: u64,
    pub(crate) first: u64,
}

impl SimdOp for Stochastic<'_> {
    type Output = ();
    const IEEE: bool = false;
    fn scalar(self) {
        use crate::arch::scalar::convert::slices::{f32_to_bf16_sr_slice, f32_to_f16_sr_slice};
        let Stochastic {
            src,
            dst,
            seed,
            first,
        } = self;
        match dst {
            SliceMut::F32(d) => d.copy_from_slice(src),
            SliceMut::Bf16(d) => f32_to_bf16_sr_slice(src, d, seed, first),
            SliceMut::F16(d) => f32_to_f16_sr_slice(src, d, seed, first),
        }
    }
    #[inline(always)]
    fn simd<S: F32Simd>(self, s: S) {
        convert_stochastic(s, self.src, self.dst, self.seed, self.first)
    }
}
