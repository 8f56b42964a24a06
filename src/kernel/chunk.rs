//! How every elementwise kernel walks a slice: [`Chunk`]s of one vector
//! and a shorter tail ([`for_each_chunk!`]), and the element types it
//! loads and stores through an f32 vector ([`Io`], [`Half`]). The tail
//! rules are in `kernel::simd`'s module docs.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

use super::simd::F32Simd;

/// An element type a kernel can load into, and store from, an f32 vector:
/// `f32` as is, `bf16`/`f16` widened exactly and narrowed to nearest even.
pub(crate) trait Io: Copy {
    /// `src[..LANES]` as f32.
    fn load<S: F32Simd>(s: S, src: &[Self]) -> S::F;
    /// `src.len() < LANES` elements as f32, other lanes 0.0.
    fn load_tail<S: F32Simd>(s: S, src: &[Self]) -> S::F;
    /// `v` into `dst[..LANES]`.
    fn store<S: F32Simd>(s: S, v: S::F, dst: &mut [Self]);
    /// The first `dst.len() < LANES` lanes of `v` into `dst`.
    fn store_tail<S: F32Simd>(s: S, v: S::F, dst: &mut [Self]);
    /// `v` into `dst[..LANES]` with a streaming store ([`F32Simd::stream`]).
    fn stream<S: F32Simd>(s: S, v: S::F, dst: &mut [Self]);
    /// `src[..2 * LANES]` as two f32 vectors ([`F32Simd::load_x2`] and
    /// its kin).
    fn load_x2<S: F32Simd>(s: S, src: &[Self]) -> (S::F, S::F);
    /// `a` then `b` into `dst[..2 * LANES]`.
    fn store_x2<S: F32Simd>(s: S, a: S::F, b: S::F, dst: &mut [Self]);
    /// `src[..LANES]` as f32 for arithmetic only: a signalling NaN may stay
    /// signalling (any arithmetic on it gives the same quiet NaN as on the
    /// quieted value), which spares bf16 the quieting [`Io::load`] does.
    #[inline(always)]
    fn load_arith<S: F32Simd>(s: S, src: &[Self]) -> S::F {
        Self::load(s, src)
    }
}

/// How many leading elements of `dst` to write with ordinary stores so that
/// the rest starts on a multiple of one vector's bytes (`LANES` elements),
/// as streaming stores need. Less than `LANES`, and at most `dst.len()`.
#[inline(always)]
pub(crate) fn stream_head<S: F32Simd, T>(dst: &[T]) -> usize {
    let size = core::mem::size_of::<T>();
    let align = S::LANES * size;
    let misalign = dst.as_ptr() as usize % align;
    let head = if misalign == 0 {
        0
    } else {
        (align - misalign) / size
    };
    head.min(dst.len())
}

impl Io for f32 {
    #[inline(always)]
    fn load_x2<S: F32Simd>(s: S, src: &[f32]) -> (S::F, S::F) {
        s.load_x2(src)
    }
    #[inline(always)]
    fn store_x2<S: F32Simd>(s: S, a: S::F, b: S::F, dst: &mut [f32]) {
        s.store_x2(a, b, dst)
    }
    #[inline(always)]
    fn load<S: F32Simd>(s: S, src: &[f32]) -> S::F {
        s.load(src)
    }
    #[inline(always)]
    fn load_tail<S: F32Simd>(s: S, src: &[f32]) -> S::F {
        s.load_tail(src)
    }
    #[inline(always)]
    fn store<S: F32Simd>(s: S, v: S::F, dst: &mut [f32]) {
        s.store(v, dst)
    }
    #[inline(always)]
    fn stream<S: F32Simd>(s: S, v: S::F, dst: &mut [f32]) {
        s.stream(v, dst)
    }
    #[inline(always)]
    fn store_tail<S: F32Simd>(s: S, v: S::F, dst: &mut [f32]) {
        s.store_tail(v, dst)
    }
}

impl Io for bf16 {
    #[inline(always)]
    fn load_x2<S: F32Simd>(s: S, src: &[bf16]) -> (S::F, S::F) {
        s.load_bf16_x2(src)
    }
    #[inline(always)]
    fn store_x2<S: F32Simd>(s: S, a: S::F, b: S::F, dst: &mut [bf16]) {
        s.store_bf16_x2(a, b, dst)
    }
    #[inline(always)]
    fn load<S: F32Simd>(s: S, src: &[bf16]) -> S::F {
        s.load_bf16(src)
    }
    #[inline(always)]
    fn load_arith<S: F32Simd>(s: S, src: &[bf16]) -> S::F {
        s.bits_to_f(s.u_shl(s.load_u16(src.reinterpret_cast()), 16))
    }
    #[inline(always)]
    fn load_tail<S: F32Simd>(s: S, src: &[bf16]) -> S::F {
        s.load_bf16_tail(src)
    }
    #[inline(always)]
    fn store<S: F32Simd>(s: S, v: S::F, dst: &mut [bf16]) {
        s.store_bf16(v, dst)
    }
    #[inline(always)]
    fn stream<S: F32Simd>(s: S, v: S::F, dst: &mut [bf16]) {
        s.stream_bf16(v, dst)
    }
    #[inline(always)]
    fn store_tail<S: F32Simd>(s: S, v: S::F, dst: &mut [bf16]) {
        s.store_bf16_tail(v, dst)
    }
}

impl Io for f16 {
    #[inline(always)]
    fn load_x2<S: F32Simd>(s: S, src: &[f16]) -> (S::F, S::F) {
        s.load_f16_x2(src)
    }
    #[inline(always)]
    fn store_x2<S: F32Simd>(s: S, a: S::F, b: S::F, dst: &mut [f16]) {
        s.store_f16_x2(a, b, dst)
    }
    #[inline(always)]
    fn load<S: F32Simd>(s: S, src: &[f16]) -> S::F {
        s.load_f16(src)
    }
    #[inline(always)]
    fn load_tail<S: F32Simd>(s: S, src: &[f16]) -> S::F {
        s.load_f16_tail(src)
    }
    #[inline(always)]
    fn store<S: F32Simd>(s: S, v: S::F, dst: &mut [f16]) {
        s.store_f16(v, dst)
    }
    #[inline(always)]
    fn stream<S: F32Simd>(s: S, v: S::F, dst: &mut [f16]) {
        s.stream_f16(v, dst)
    }
    #[inline(always)]
    fn store_tail<S: F32Simd>(s: S, v: S::F, dst: &mut [f16]) {
        s.store_f16_tail(v, dst)
    }
}

/// A 16-bit element whose bits a kernel may store directly (the result of
/// `narrow_*`): `bf16` and `f16`.
pub(crate) trait Half: Io {
    /// The slice's bits.
    fn bits_mut(dst: &mut [Self]) -> &mut [u16];
    /// Stochastic rounding to this format's bits ([`F32Simd::narrow_bf16_sr`]
    /// or [`F32Simd::narrow_f16_sr`]).
    fn narrow_sr<S: F32Simd>(s: S, v: S::F, r: S::U) -> S::U;
}

impl Half for bf16 {
    #[inline(always)]
    fn bits_mut(dst: &mut [bf16]) -> &mut [u16] {
        dst.reinterpret_cast_mut()
    }
    #[inline(always)]
    fn narrow_sr<S: F32Simd>(s: S, v: S::F, r: S::U) -> S::U {
        s.narrow_bf16_sr(v, r)
    }
}

impl Half for f16 {
    #[inline(always)]
    fn bits_mut(dst: &mut [f16]) -> &mut [u16] {
        dst.reinterpret_cast_mut()
    }
    #[inline(always)]
    fn narrow_sr<S: F32Simd>(s: S, v: S::F, r: S::U) -> S::U {
        s.narrow_f16_sr(v, r)
    }
}

/// Elements `start..start + len` of the slices a kernel walks; `len` is
/// `LANES` except for the final chunk. Made by [`for_each_chunk!`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Chunk {
    /// Index of the chunk's first element.
    pub(crate) start: usize,
    /// Number of elements, `1..=LANES`.
    pub(crate) len: usize,
}

impl Chunk {
    /// Whether this chunk fills a whole vector.
    #[inline(always)]
    pub(crate) fn is_full<S: F32Simd>(self) -> bool {
        self.len == S::LANES
    }

    /// This chunk of `src` as f32 lanes (missing lanes 0.0).
    ///
    /// # Panics
    ///
    /// When `src` is shorter than the length [`for_each_chunk!`] walked.
    #[inline(always)]
    pub(crate) fn load<S: F32Simd, T: Io>(self, s: S, src: &[T]) -> S::F {
        let src = &src[self.start..self.start + self.len];
        if self.is_full::<S>() {
            T::load(s, src)
        } else {
            T::load_tail(s, src)
        }
    }

    /// Stores `v`'s first `len` lanes into this chunk of `dst`.
    ///
    /// # Panics
    ///
    /// When `dst` is shorter than the length [`for_each_chunk!`] walked.
    #[inline(always)]
    pub(crate) fn store<S: F32Simd, T: Io>(self, s: S, v: S::F, dst: &mut [T]) {
        let dst = &mut dst[self.start..self.start + self.len];
        if self.is_full::<S>() {
            T::store(s, v, dst)
        } else {
            T::store_tail(s, v, dst)
        }
    }

    /// Like [`Chunk::store`], streaming full chunks (see
    /// [`F32Simd::stream`]); the tail is stored normally.
    #[inline(always)]
    pub(crate) fn stream<S: F32Simd, T: Io>(self, s: S, v: S::F, dst: &mut [T]) {
        let dst = &mut dst[self.start..self.start + self.len];
        if self.is_full::<S>() {
            T::stream(s, v, dst)
        } else {
            T::store_tail(s, v, dst)
        }
    }

    /// Stores the low 16 bits of `bits`' first `len` lanes (a `narrow_*`
    /// result) into this chunk of `dst`.
    ///
    /// # Panics
    ///
    /// When `dst` is shorter than the length [`for_each_chunk!`] walked.
    #[inline(always)]
    pub(crate) fn store_bits<S: F32Simd, T: Half>(self, s: S, bits: S::U, dst: &mut [T]) {
        let dst = &mut T::bits_mut(dst)[self.start..self.start + self.len];
        if self.is_full::<S>() {
            s.store_u16(bits, dst)
        } else {
            s.store_u16_tail(bits, dst)
        }
    }
}

/// Runs `body` with `$c` bound to each [`Chunk`] of `0..len`: chunks of
/// `<$S as F32Simd>::LANES` elements, then the shorter remainder if there is
/// one. The one chunking loop every kernel uses; see the module docs for how
/// tails are handled.
///
/// ```ignore
/// for_each_chunk!(S, src.len(), |c| {
///     let v = c.load(s, src);
///     c.store(s, v, dst);
/// });
/// ```
///
/// A macro, not a function taking a closure: a closure is a function of its
/// own without the caller's `#[target_feature]`s, and when LLVM declines to
/// inline a large one, every intrinsic inside it becomes an out-of-line call
/// (see docs/tried.md, Conversions and the SIMD plumbing). The body is
/// expanded twice (full chunks, tail); `return` and `?` in it leave the
/// enclosing function.
macro_rules! for_each_chunk {
    ($S:ty, $len:expr, |$c:ident| $body:block) => {{
        let len: usize = $len;
        let lanes = <$S as $crate::kernel::simd::F32Simd>::LANES;
        let mut start = 0usize;
        while len - start >= lanes {
            let $c = $crate::kernel::chunk::Chunk { start, len: lanes };
            $body
            start += lanes;
        }
        if start < len {
            let $c = $crate::kernel::chunk::Chunk {
                start,
                len: len - start,
            };
            $body
        }
    }};
}
pub(crate) use for_each_chunk;
