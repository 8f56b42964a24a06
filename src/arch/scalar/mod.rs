//! The portable ISA, and the oracle every other ISA is tested against.

pub mod convert;
pub(crate) mod finite;
pub(crate) mod gemm;
pub(crate) mod train;

use crate::element::{Slice, SliceMut};

/// Runs one conversion on the scalar kernels. Lengths are already equal.
pub(crate) fn convert(src: Slice<'_>, dst: SliceMut<'_>) {
    use convert::slices::*;
    match (src, dst) {
        (Slice::F32(s), SliceMut::Bf16(d)) => f32_to_bf16_slice(s, d),
        (Slice::F32(s), SliceMut::F16(d)) => f32_to_f16_slice(s, d),
        (Slice::Bf16(s), SliceMut::F32(d)) => bf16_to_f32_slice(s, d),
        (Slice::F16(s), SliceMut::F32(d)) => f16_to_f32_slice(s, d),
        (Slice::Bf16(s), SliceMut::F16(d)) => bf16_to_f16_slice(s, d),
        (Slice::F16(s), SliceMut::Bf16(d)) => f16_to_bf16_slice(s, d),
        (Slice::F32(s), SliceMut::F32(d)) => d.copy_from_slice(s),
        (Slice::Bf16(s), SliceMut::Bf16(d)) => d.copy_from_slice(s),
        (Slice::F16(s), SliceMut::F16(d)) => d.copy_from_slice(s),
    }
}
