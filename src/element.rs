//! The element types halfkern computes on: `f32`, [`bf16`] and [`f16`].
//!
//! [`Element`] is sealed. Generic public functions turn a `&[T]` into one of
//! the [`Slice`]/[`SliceMut`] variants through the trait, which is a plain
//! safe `match` for the dispatch code: no `TypeId`, no pointer casts.

use half::{bf16, f16};

/// Which element type a slice holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// bfloat16: 1 sign, 8 exponent, 7 mantissa bits.
    Bf16,
    /// IEEE binary16: 1 sign, 5 exponent, 10 mantissa bits.
    F16,
}

impl DType {
    /// `"f32"`, `"bf16"` or `"f16"`.
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::Bf16 => "bf16",
            DType::F16 => "f16",
        }
    }
}

/// A borrowed slice of one of the element types.
#[derive(Clone, Copy, Debug)]
#[doc(hidden)]
pub enum Slice<'a> {
    /// `f32` elements.
    F32(&'a [f32]),
    /// `bf16` elements.
    Bf16(&'a [bf16]),
    /// `f16` elements.
    F16(&'a [f16]),
}

/// A mutably borrowed slice of one of the element types.
#[derive(Debug)]
#[doc(hidden)]
pub enum SliceMut<'a> {
    /// `f32` elements.
    F32(&'a mut [f32]),
    /// `bf16` elements.
    Bf16(&'a mut [bf16]),
    /// `f16` elements.
    F16(&'a mut [f16]),
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::bf16 {}
    impl Sealed for half::f16 {}
}

/// An element type halfkern computes on: `f32`, [`bf16`] or [`f16`](struct@f16).
/// Sealed: the kernels exist for exactly these three.
pub trait Element: sealed::Sealed + Copy + Default + Send + Sync + 'static {
    /// The runtime tag of this type.
    const DTYPE: DType;

    /// Widens to `f32` (exact for every element type).
    fn to_f32(self) -> f32;

    /// Rounds from `f32` to nearest, ties to even (the crate's numerics
    /// contract; identical to `half`'s `from_f32`).
    fn from_f32(x: f32) -> Self;

    #[doc(hidden)]
    fn slice(s: &[Self]) -> Slice<'_>;

    #[doc(hidden)]
    fn slice_mut(s: &mut [Self]) -> SliceMut<'_>;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;

    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }

    #[inline(always)]
    fn from_f32(x: f32) -> f32 {
        x
    }

    fn slice(s: &[f32]) -> Slice<'_> {
        Slice::F32(s)
    }

    fn slice_mut(s: &mut [f32]) -> SliceMut<'_> {
        SliceMut::F32(s)
    }
}

impl Element for bf16 {
    const DTYPE: DType = DType::Bf16;

    #[inline(always)]
    fn to_f32(self) -> f32 {
        crate::kernel::bits::bf16_to_f32(self)
    }

    #[inline(always)]
    fn from_f32(x: f32) -> bf16 {
        crate::kernel::bits::f32_to_bf16(x)
    }

    fn slice(s: &[bf16]) -> Slice<'_> {
        Slice::Bf16(s)
    }

    fn slice_mut(s: &mut [bf16]) -> SliceMut<'_> {
        SliceMut::Bf16(s)
    }
}

impl Element for f16 {
    const DTYPE: DType = DType::F16;

    #[inline(always)]
    fn to_f32(self) -> f32 {
        crate::kernel::bits::f16_to_f32(self)
    }

    #[inline(always)]
    fn from_f32(x: f32) -> f16 {
        crate::kernel::bits::f32_to_f16(x)
    }

    fn slice(s: &[f16]) -> Slice<'_> {
        Slice::F16(s)
    }

    fn slice_mut(s: &mut [f16]) -> SliceMut<'_> {
        SliceMut::F16(s)
    }
}
