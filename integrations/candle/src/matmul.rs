//! The batched matrix product as a candle [`CustomOp2`]: [`MatMul`], and
//! the functions [`matmul`] and [`broadcast_matmul`] that apply it.
//!
//! `CustomOp2` is candle's hook for a user-defined binary operation: candle
//! hands `cpu_fwd` the two storages with their layouts untouched, so the
//! product reads transposed, narrowed and broadcast tensors in place. The
//! operation is forward-only (`apply_op2_no_bwd`): candle records no
//! gradient for it, which is what inference needs.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Error, Layout, Result, Shape, Tensor, WithDType};
use halfkern::{Element, Gemm, MatMut, Threads, bf16, f16};
use rayon::prelude::*;

use crate::layout::{Batched, view_at};

const OP: &str = "halfkern-matmul";

/// Below this many multiply-adds per matrix, the matrices of a batch run
/// one per thread instead of one after another on all threads: a GEMM this
/// small cannot use several threads (halfkern gives it one), but a batch of
/// them (attention heads in decode, say) can.
const SMALL_GEMM: usize = 1 << 21;

/// `lhs x rhs` for CPU tensors of `[batch.., m, k]` and `[batch.., k, n]`,
/// both bf16, f16 or f32, through halfkern's GEMM (products summed in f32,
/// one rounding to the output type): candle's [`Tensor::matmul`] as a
/// [`CustomOp2`].
///
/// Both operands have the same rank (at least 2) and the same batch
/// dimensions; any strides are read in place, including transposed
/// (`.t()`), narrowed and broadcast (`broadcast_as`, stride 0) ones. The
/// result is a new contiguous `[batch.., m, n]` tensor of the output type
/// (by default the inputs' type; see [`MatMul::out_dtype`]).
///
/// For weights, prefer [`Linear`](crate::Linear): a product of a few rows
/// (decode) by a transposed weight view `W.t()` makes halfkern pack all of
/// `W` on every call, several times slower than the layer's prepared
/// layouts.
///
/// # Examples
///
/// ```
/// use candle_core::{DType, Device, Tensor};
///
/// let a = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &Device::Cpu)?.to_dtype(DType::BF16)?;
/// let b = a.t()?; // a transposed view: not copied
/// let c = halfkern_candle::MatMul::new().out_dtype(DType::F32).apply(&a, &b)?;
/// assert_eq!(c.to_vec2::<f32>()?, [[5.0, 11.0], [11.0, 25.0]]);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MatMul {
    out: Option<DType>,
}

impl MatMul {
    /// The product in the inputs' type.
    pub const fn new() -> Self {
        MatMul { out: None }
    }

    /// Writes the result as `dtype` (bf16, f16 or f32) instead of the
    /// inputs' type: an f32 result of bf16 inputs is one rounding less.
    pub const fn out_dtype(mut self, dtype: DType) -> Self {
        self.out = Some(dtype);
        self
    }

    /// `lhs x rhs` (see [`MatMul`]).
    ///
    /// # Errors
    ///
    /// candle errors, never panics: `ShapeMismatchBinaryOp` when the ranks,
    /// the batch dimensions or `k` differ; `DTypeMismatchBinaryOp` for
    /// mixed types; `UnsupportedDTypeForOp` for a type other than bf16, f16
    /// and f32; an error naming the device for a tensor not on the CPU;
    /// halfkern's errors (an output too large to allocate, say) as
    /// `Error::Msg`.
    pub fn apply(&self, lhs: &Tensor, rhs: &Tensor) -> Result<Tensor> {
        crate::require_cpu(OP, lhs)?;
        crate::require_cpu(OP, rhs)?;
        lhs.apply_op2_no_bwd(rhs, self)
    }
}

/// `lhs x rhs` through halfkern, in the inputs' type: [`MatMul::apply`].
///
/// # Errors
///
/// As [`MatMul::apply`].
pub fn matmul(lhs: &Tensor, rhs: &Tensor) -> Result<Tensor> {
    MatMul::new().apply(lhs, rhs)
}

/// [`matmul`] with the batch dimensions broadcast as
/// [`Tensor::broadcast_matmul`] does, e.g. `[b, m, k] x [k, n]`. The
/// broadcast operand is read in place (stride 0), never copied, and a
/// contiguous `lhs` times a broadcast matrix runs as one GEMM.
///
/// # Errors
///
/// As [`MatMul::apply`], and candle's error when the batch dimensions do
/// not broadcast.
pub fn broadcast_matmul(lhs: &Tensor, rhs: &Tensor) -> Result<Tensor> {
    let (ld, rd) = (lhs.dims(), rhs.dims());
    if ld.len() < 2 || rd.len() < 2 {
        return Err(Error::ShapeMismatchBinaryOp {
            lhs: lhs.shape().clone(),
            rhs: rhs.shape().clone(),
            op: OP,
        }
        .bt());
    }
    let (lb, rb) = (ld.len() - 2, rd.len() - 2);
    let batch = Shape::from(&ld[..lb]).broadcast_shape_binary_op(&Shape::from(&rd[..rb]), OP)?;
    let l = [batch.dims(), &ld[lb..]].concat();
    let r = [batch.dims(), &rd[rb..]].concat();
    matmul(&lhs.broadcast_as(l)?, &rhs.broadcast_as(r)?)
}

impl CustomOp2 for MatMul {
    fn name(&self) -> &'static str {
        OP
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if s1.dtype() != s2.dtype() {
            return Err(Error::DTypeMismatchBinaryOp {
                lhs: s1.dtype(),
                rhs: s2.dtype(),
                op: OP,
            }
            .bt());
        }
        let (dims1, dims2) = (l1.dims(), l2.dims());
        let r = dims1.len();
        let mismatch = || {
            Error::ShapeMismatchBinaryOp {
                lhs: l1.shape().clone(),
                rhs: l2.shape().clone(),
                op: OP,
            }
            .bt()
        };
        if r < 2 || dims2.len() != r || dims1[..r - 2] != dims2[..r - 2] {
            return Err(mismatch());
        }
        if dims1[r - 1] != dims2[r - 2] {
            return Err(mismatch());
        }
        let mut out_dims = dims1.to_vec();
        out_dims[r - 1] = dims2[r - 1];
        let shape = Shape::from(out_dims);
        let a = Batched::new(l1, OP, "lhs")?;
        let b = Batched::new(l2, OP, "rhs")?;
        let out = self.out.unwrap_or(s1.dtype());
        let storage = match s1 {
            CpuStorage::BF16(x) => product_to::<bf16>(x, &a, s2, &b, out)?,
            CpuStorage::F16(x) => product_to::<f16>(x, &a, s2, &b, out)?,
            CpuStorage::F32(x) => product_to::<f32>(x, &a, s2, &b, out)?,
            other => return Err(Error::UnsupportedDTypeForOp(other.dtype(), OP).bt()),
        };
        Ok((storage, shape))
    }
}

/// The product of inputs of type `T` written as `out`.
fn product_to<T: Element + WithDType>(
    a: &[T],
    la: &Batched,
    s2: &CpuStorage,
    lb: &Batched,
    out: DType,
) -> Result<CpuStorage> {
    let b = T::cpu_storage_as_slice(s2)?;
    Ok(match out {
        DType::BF16 => CpuStorage::BF16(product::<T, bf16>(a, la, b, lb)?),
        DType::F16 => CpuStorage::F16(product::<T, f16>(a, la, b, lb)?),
        DType::F32 => CpuStorage::F32(product::<T, f32>(a, la, b, lb)?),
        other => return Err(Error::UnsupportedDTypeForOp(other, OP).bt()),
    })
}

/// The batched product into a fresh contiguous `[batch, m, n]` vector.
fn product<T: Element, C: Element + WithDType>(
    a: &[T],
    la: &Batched,
    b: &[T],
    lb: &Batched,
) -> Result<Vec<C>> {
    let (m, n, k) = (la.rows, lb.cols, la.cols);
    let each = m.checked_mul(n).ok_or_else(|| too_large(OP))?;
    let mut c = crate::zeroed::<C>(la.count().checked_mul(each), OP)?;
    if c.is_empty() {
        return Ok(c);
    }
    // One weight matrix for the whole batch and a batch that folds into
    // rows: a single GEMM, as candle-nn's `Linear` does by reshaping.
    if lb.is_one_matrix()
        && let Some((rows, rs)) = la.folded_rows()
    {
        let a = view_at(a, la.start(), (rows, k), (rs, la.cs), OP)?;
        let b = lb.view(b, 0, OP)?;
        let cv = MatMut::row_major(&mut c, rows, n).map_err(|e| crate::to_candle(OP, e))?;
        halfkern::gemm(a, b, cv, &Gemm::new()).map_err(|e| crate::to_candle(OP, e))?;
        return Ok(c);
    }
    let one = |(i, c): (usize, &mut [C]), threads: Threads| -> Result<()> {
        let c = MatMut::row_major(c, m, n).map_err(|e| crate::to_candle(OP, e))?;
        let params = Gemm::new().threads(threads);
        halfkern::gemm(la.view(a, i, OP)?, lb.view(b, i, OP)?, c, &params)
            .map_err(|e| crate::to_candle(OP, e))?;
        Ok(())
    };
    let work = each.saturating_mul(k);
    if la.count() > 1 && work < SMALL_GEMM {
        c.par_chunks_mut(each)
            .enumerate()
            .try_for_each(|ic| one(ic, Threads::Single))?;
    } else {
        c.chunks_mut(each)
            .enumerate()
            .try_for_each(|ic| one(ic, Threads::Auto))?;
    }
    Ok(c)
}

fn too_large(op: &'static str) -> Error {
    Error::Msg(format!("{op}: the output's element count overflows usize")).bt()
}
