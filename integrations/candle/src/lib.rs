//! halfkern's GEMM inside [candle](https://github.com/huggingface/candle):
//! a matrix product and a linear layer for CPU tensors of bf16, f16 and f32.
//!
//! candle's CPU matmul widens bf16 operands to fresh f32 copies on every
//! call, and sums f16 products in f16 between blocks. Here both run through
//! halfkern: products summed in f32, one rounding to the output type, the
//! operands read where they lie, and weights prepared once.
//!
//! - [`matmul`] / [`broadcast_matmul`]: [`Tensor::matmul`] and
//!   [`Tensor::broadcast_matmul`] for bf16, f16 and f32 ([`MatMul`] is the
//!   [`candle_core::CustomOp2`] behind them, with an optional output type).
//! - [`Linear`]: `act(x W^T + b)`, a [`candle_core::Module`] that replaces
//!   `candle_nn::Linear`, with `W` prepared once (row-major `W^T` for
//!   decode, a `PackedB` for larger batches) and the bias and activation
//!   fused in the GEMM's epilogue.
//!
//! # Swapping it into a model
//!
//! Where a model holds `candle_nn::Linear` fields, build
//! `halfkern_candle::Linear::new(l.weight(), l.bias())?` from each once at
//! load time (the field's type changes; both are `Module`s, so `forward`
//! calls stay). Where it calls `a.matmul(&b)` (attention scores and their
//! product with V), call `halfkern_candle::matmul(&a, &b)?` instead; the
//! `.contiguous()` calls candle's matmul needs before it can be dropped.
//!
//! # Layouts
//!
//! A candle tensor is a storage, a shape, strides in elements (never
//! negative) and a start offset. Its last two dimensions map onto one
//! halfkern `MatRef` per batch element: the start offset plus the batch
//! index times the batch strides, with the last two strides as the view's
//! row and column strides. halfkern's views take any non-negative strides,
//! including 0, so transposed, narrowed, permuted and broadcast tensors are
//! read in place: no input is ever copied. Batches whose rows fold into
//! one strided dimension against one weight matrix (`[b, m, k] x [k, n]`
//! broadcast, or any input of [`Linear`]) run as a single GEMM. The
//! output is always a new contiguous tensor.
//!
//! # Accuracy
//!
//! For each output, `|C - C_exact| <= c k 2^-24 sum_l |a_il||b_lj|` plus
//! the final rounding to the output type, `C_exact` being the exact
//! product of the (already rounded) inputs (see `halfkern::gemm`). The
//! bf16 dot kernels flush subnormal inputs to zero.
//!
//! # Errors
//!
//! Bad shapes and types are candle errors (`ShapeMismatchBinaryOp`,
//! `DTypeMismatchBinaryOp`, `UnsupportedDTypeForOp`), never panics;
//! halfkern's own errors arrive as `Error::Msg` naming the operation.
//! Tensors on other devices are an error: this crate is for the CPU. The
//! operations are forward-only: candle records no gradient through them.

mod layout;
mod linear;
mod matmul;

pub use halfkern::Activation;
pub use linear::Linear;
pub use matmul::{MatMul, broadcast_matmul, matmul};

use candle_core::{Device, Error, Result, Tensor, WithDType};

/// halfkern's error as candle's, naming the operation.
pub(crate) fn to_candle(op: &'static str, e: halfkern::Error) -> Error {
    Error::Msg(format!("{op}: {e}")).bt()
}

/// The error for a tensor on a device other than the CPU.
pub(crate) fn not_cpu(op: &'static str, device: &Device) -> Error {
    Error::Msg(format!(
        "{op}: halfkern runs on the CPU; got a tensor on {:?}",
        device.location()
    ))
    .bt()
}

/// `Ok` for a CPU tensor, [`not_cpu`] otherwise.
pub(crate) fn require_cpu(op: &'static str, t: &Tensor) -> Result<()> {
    if t.device().is_cpu() {
        Ok(())
    } else {
        Err(not_cpu(op, t.device()))
    }
}

/// A vector of `len` zeros (`None`: the length overflowed), its memory
/// asked for with `try_reserve` so that an impossible size is an error,
/// not an abort. (halfkern's GEMM never reads C at `beta = 0`; the zeros
/// only keep this crate free of `unsafe`.)
pub(crate) fn zeroed<T: WithDType>(len: Option<usize>, op: &'static str) -> Result<Vec<T>> {
    let too_large = || Error::Msg(format!("{op}: the output does not fit in memory")).bt();
    let len = len.ok_or_else(too_large)?;
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| too_large())?;
    v.resize(len, T::from_f64(0.0));
    Ok(v)
}
