//! The scalar ISA's GEMM microkernel.

use crate::kernel::gemm::{
    Format, Microkernel, RowOps, generic_axpy_rows, generic_axpy_rows4, generic_kernel,
};

/// The portable microkernel: what the scalar ISA (and any ISA without its
/// own kernel) runs. Separate multiply
/// and add: a software `fma` would be far slower.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ScalarKernel;

impl Microkernel for ScalarKernel {
    const MR: usize = 4;
    const NR: usize = 8;
    const FORMAT: Format = Format::F32;
    const NAME: &'static str = "scalar-4x8";

    fn kernel(self, slots: usize, a: &[f32], b: &[f32], tile: &mut [f32], accumulate: bool) {
        generic_kernel::<4, 8>(slots, a, b, tile, accumulate, |a, b, c| a * b + c);
    }
}

impl RowOps for ScalarKernel {
    fn axpy_rows(self, x: &[f32], b: &[f32], y: &mut [&mut [f32]]) {
        generic_axpy_rows(x, b, y, |a, b, c| a * b + c);
    }

    fn axpy_rows4(self, x: &[f32], b: [&[f32]; 4], y: &mut [&mut [f32]]) {
        generic_axpy_rows4(x, b, y, |a, b, c| a * b + c);
    }
}
