//! Slice conversions over any [`F32Simd`]: every pair among f32, bf16 and
//! f16 goes through an f32 vector (widening is exact, so `bf16 <-> f16`
//! rounds once), and stochastic rounding draws `sr_bits` per global index.

use crate::arch::scalar::convert::sr_key;
use crate::arch::simd::{F32Simd, Half, Io, for_each_chunk};
use crate::element::{Slice, SliceMut};

/// Converts `src` into `dst` (equal lengths) on `s`'s ISA.
#[inline(always)]
pub(crate) fn convert<S: F32Simd>(s: S, src: Slice<'_>, dst: SliceMut<'_>) {
    match (src, dst) {
        (Slice::F32(a), SliceMut::Bf16(b)) => map(s, a, b),
        (Slice::F32(a), SliceMut::F16(b)) => map(s, a, b),
        (Slice::Bf16(a), SliceMut::F32(b)) => map(s, a, b),
        (Slice::F16(a), SliceMut::F32(b)) => map(s, a, b),
        (Slice::Bf16(a), SliceMut::F16(b)) => map(s, a, b),
        (Slice::F16(a), SliceMut::Bf16(b)) => map(s, a, b),
        (Slice::F32(a), SliceMut::F32(b)) => b.copy_from_slice(a),
        (Slice::Bf16(a), SliceMut::Bf16(b)) => b.copy_from_slice(a),
        (Slice::F16(a), SliceMut::F16(b)) => b.copy_from_slice(a),
    }
}

/// `dst[i] = src[i]` through an f32 vector.
#[inline(always)]
fn map<S: F32Simd, A: Io, B: Io>(s: S, src: &[A], dst: &mut [B]) {
    assert_eq!(src.len(), dst.len());
    for_each_chunk::<S>(src.len(), |c| {
        let v = c.load(s, src);
        c.store(s, v, dst);
    });
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
        SliceMut::Bf16(d) => stochastic(s, src, d, seed, first, S::narrow_bf16_sr),
        SliceMut::F16(d) => stochastic(s, src, d, seed, first, S::narrow_f16_sr),
    }
}

#[inline(always)]
fn stochastic<S: F32Simd, T: Half>(
    s: S,
    src: &[f32],
    dst: &mut [T],
    seed: u64,
    first: u64,
    narrow: impl Fn(S, S::F, S::U) -> S::U,
) {
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
        for_each_chunk::<S>(n, |c| {
            let v = c.load(s, src);
            let r = s.sr_bits(key, lo.wrapping_add(c.start as u32));
            c.store_bits(s, narrow(s, v, r), dst);
        });
        done += n;
    }
}
