//! [`Linear`]: `y = act(x W^T + b)` with `W` prepared once and the bias
//! and activation applied in halfkern's epilogue, as a candle [`Module`]
//! (and [`CustomOp1`]) that replaces `candle_nn::Linear`.
//!
//! candle-nn's `Linear` multiplies by a transposed view of `W` on every
//! call; on the CPU in bf16 that widens the whole weight matrix to f32
//! each time. Here the weights are laid out once, at construction, the way
//! halfkern's kernels stream them, and a forward call is one GEMM whose
//! epilogue adds the bias and applies the activation before the single
//! rounding of each output (no separate passes over `y`).
//!
//! Two layouts are kept, because halfkern has two fast paths: `W` itself
//! (`out x in`, row-major), whose rows its small-m path (decode: at most 16
//! rows of `x`) streams as dot products without packing, and a [`PackedB`]
//! for the blocked kernels that larger batches (prefill) run. The packed
//! kernels at one row cost several times more.

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, DType, Error, Layout, Module, Result, Shape, Tensor, WithDType,
};
use halfkern::{Activation, Bias, Element, Gemm, MatMut, MatRef, PackedB, bf16, f16};

use crate::layout::{Batched, view_at};

const OP: &str = "halfkern-linear";

/// A linear layer `y = act(x W^T + b)` over halfkern's GEMM with
/// prepared weights.
///
/// `W` is candle's `[out_features, in_features]` weight, prepared once by
/// [`Linear::new`] in its own type (bf16, f16 or f32); inputs must have that
/// type. An input `[.., in_features]` of any rank and strides (read in
/// place) gives a contiguous `[.., out_features]` output of the same type.
/// The optional bias (any type, kept in f32) and the [`Activation`] run in
/// the GEMM's epilogue, in f32, before the output's single rounding.
///
/// Memory: the layer keeps `W` as stored (the weights' own size) and
/// `W^T` packed (up to 4 bytes a weight: halfkern packs f16, and bf16 where no
/// bf16 dot kernel runs, widened to f32). The `candle_nn::Linear` it
/// replaces can be dropped.
///
/// A model swaps it in where it holds a `candle_nn::Linear` (both are
/// [`Module`]s): `Linear::new(l.weight(), l.bias())`.
///
/// # Examples
///
/// ```
/// use candle_core::{DType, Device, Module, Tensor};
/// use halfkern_candle::{Activation, Linear};
///
/// let dev = Device::Cpu;
/// let w = Tensor::new(&[[1f32, 0.0], [0.0, 1.0], [1.0, 1.0]], &dev)?.to_dtype(DType::BF16)?;
/// let b = Tensor::new(&[0f32, -10.0, 0.5], &dev)?;
/// let layer = Linear::new(&w, Some(&b))?.with_activation(Activation::Relu);
/// let x = Tensor::new(&[[2f32, 3.0]], &dev)?.to_dtype(DType::BF16)?;
/// let y = layer.forward(&x)?.to_dtype(DType::F32)?;
/// assert_eq!(y.to_vec2::<f32>()?, [[2.0, 0.0, 5.5]]);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Linear {
    packed: Packed,
    bias: Option<Vec<f32>>,
    activation: Activation,
}

/// Up to this many rows, an input runs on `W` as stored (`W^T` seen
/// through a transposed view): halfkern's small-m path streams its rows
/// once without packing, faster than the packed kernels for decode.
/// (halfkern takes that path for `m <= 16`.)
const SMALL_M: usize = 16;

/// `W` twice over, in its own type: as stored for small batches, packed
/// (as `W^T`) for the process-wide halfkern backend for larger ones.
#[derive(Clone, Debug)]
struct Prepared<T: Element> {
    rows: Vec<T>,
    packed: PackedB<T>,
}

impl<T: Element + WithDType> Prepared<T> {
    /// From `w`, a contiguous `[out, in]` tensor of type `T`.
    fn of(w: &Tensor) -> Result<Self> {
        let (n, k) = w.dims2()?;
        let rows = w.flatten_all()?.to_vec1::<T>()?;
        let wt = MatRef::row_major(&rows, n, k).map_err(|e| crate::to_candle(OP, e))?;
        let packed = PackedB::new(wt.t()).map_err(|e| crate::to_candle(OP, e))?;
        Ok(Prepared { rows, packed })
    }

    /// `W^T` (`in x out`), a transposed view of `W` as stored.
    fn view(&self) -> Result<MatRef<'_, T>> {
        let (k, n) = (self.packed.rows(), self.packed.cols());
        let w = MatRef::row_major(&self.rows, n, k).map_err(|e| crate::to_candle(OP, e))?;
        Ok(w.t())
    }
}

/// [`Prepared`] weights of each supported type.
#[derive(Clone, Debug)]
enum Packed {
    Bf16(Prepared<bf16>),
    F16(Prepared<f16>),
    F32(Prepared<f32>),
}

impl Linear {
    /// Packs `weight` (`[out_features, in_features]`, bf16, f16 or f32, on
    /// the CPU, any strides) and keeps `bias` (`[out_features]`, any float
    /// type, widened to f32). No activation: see [`Linear::with_activation`].
    ///
    /// # Errors
    ///
    /// A weight that is not rank 2, not on the CPU or not bf16/f16/f32; a
    /// bias whose length is not `out_features`; halfkern's packing errors
    /// (memory) as `Error::Msg`.
    pub fn new(weight: &Tensor, bias: Option<&Tensor>) -> Result<Self> {
        crate::require_cpu(OP, weight)?;
        let (out, _) = weight.dims2()?;
        let bias = match bias {
            None => None,
            Some(b) => {
                let v = b.to_dtype(DType::F32)?.to_vec1::<f32>()?;
                if v.len() != out {
                    return Err(Error::ShapeMismatchBinaryOp {
                        lhs: weight.shape().clone(),
                        rhs: b.shape().clone(),
                        op: "halfkern-linear (bias length != out_features)",
                    }
                    .bt());
                }
                Some(v)
            }
        };
        // W as stored, contiguous (a view of a larger tensor is copied once).
        let wt = weight.contiguous()?;
        let packed = match weight.dtype() {
            DType::BF16 => Packed::Bf16(Prepared::of(&wt)?),
            DType::F16 => Packed::F16(Prepared::of(&wt)?),
            DType::F32 => Packed::F32(Prepared::of(&wt)?),
            other => return Err(Error::UnsupportedDTypeForOp(other, OP).bt()),
        };
        Ok(Linear {
            packed,
            bias,
            activation: Activation::None,
        })
    }

    /// Applies `activation` to every output, fused in the GEMM's epilogue.
    pub fn with_activation(mut self, activation: Activation) -> Self {
        self.activation = activation;
        self
    }

    /// The weights' (and so the inputs' and outputs') type.
    pub fn dtype(&self) -> DType {
        match self.packed {
            Packed::Bf16(_) => DType::BF16,
            Packed::F16(_) => DType::F16,
            Packed::F32(_) => DType::F32,
        }
    }

    /// `in_features`: the last dimension of an input.
    pub fn in_features(&self) -> usize {
        match &self.packed {
            Packed::Bf16(p) => p.packed.rows(),
            Packed::F16(p) => p.packed.rows(),
            Packed::F32(p) => p.packed.rows(),
        }
    }

    /// `out_features`: the last dimension of an output.
    pub fn out_features(&self) -> usize {
        match &self.packed {
            Packed::Bf16(p) => p.packed.cols(),
            Packed::F16(p) => p.packed.cols(),
            Packed::F32(p) => p.packed.cols(),
        }
    }

    fn params(&self) -> Gemm<'_> {
        let bias = self.bias.as_deref().map_or(Bias::None, Bias::PerCol);
        Gemm::new().bias(bias).activation(self.activation)
    }

    /// `act(x W^T + b)` for CPU inputs of [`Linear::dtype`].
    fn run<T: Element + WithDType>(
        &self,
        x: &[T],
        layout: &Layout,
        w: &Prepared<T>,
    ) -> Result<Vec<T>> {
        let a = Batched::new(layout, OP, "x")?;
        let (m, n, k) = (a.rows, w.packed.cols(), a.cols);
        let each = m.checked_mul(n);
        let mut y = crate::zeroed::<T>(each.and_then(|e| e.checked_mul(a.count())), OP)?;
        if y.is_empty() {
            return Ok(y);
        }
        let params = self.params();
        let gemm = |x: MatRef<'_, T>, y: &mut [T]| -> Result<()> {
            let rows = x.rows();
            let y = MatMut::row_major(y, rows, n).map_err(|e| crate::to_candle(OP, e))?;
            let done = if rows <= SMALL_M {
                halfkern::gemm(x, w.view()?, y, &params)
            } else {
                halfkern::gemm_packed(x, &w.packed, y, &params)
            };
            done.map_err(|e| crate::to_candle(OP, e))?;
            Ok(())
        };
        if let Some((rows, rs)) = a.folded_rows() {
            // Every row of the batch in one GEMM: the usual case.
            gemm(view_at(x, a.start(), (rows, k), (rs, a.cs), OP)?, &mut y)?;
        } else {
            // The batch's strides do not fold (a permuted input): one GEMM
            // per matrix, still reading the input in place.
            for (i, y) in y.chunks_mut(m * n).enumerate() {
                gemm(a.view(x, i, OP)?, y)?;
            }
        }
        Ok(y)
    }
}

impl Module for Linear {
    /// `act(x W^T + b)`; `x` is `[.., in_features]` of [`Linear::dtype`].
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        crate::require_cpu(OP, x)?;
        x.apply_op1_no_bwd(self)
    }
}

impl CustomOp1 for Linear {
    fn name(&self) -> &'static str {
        OP
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = layout.dims();
        let Some(&k) = dims.last() else {
            return Err(Error::Msg(format!(
                "{OP}: the input is a scalar, need [.., in_features]"
            ))
            .bt());
        };
        if k != self.in_features() {
            return Err(Error::ShapeMismatchBinaryOp {
                lhs: layout.shape().clone(),
                rhs: Shape::from((self.out_features(), self.in_features())),
                op: "halfkern-linear (x's last dim != in_features)",
            }
            .bt());
        }
        let mut out_dims = dims[..dims.len() - 1].to_vec();
        out_dims.push(self.out_features());
        let out = match (storage, &self.packed) {
            (CpuStorage::BF16(x), Packed::Bf16(w)) => CpuStorage::BF16(self.run(x, layout, w)?),
            (CpuStorage::F16(x), Packed::F16(w)) => CpuStorage::F16(self.run(x, layout, w)?),
            (CpuStorage::F32(x), Packed::F32(w)) => CpuStorage::F32(self.run(x, layout, w)?),
            (x, _) => {
                return Err(Error::DTypeMismatchBinaryOp {
                    lhs: x.dtype(),
                    rhs: self.dtype(),
                    op: OP,
                }
                .bt());
            }
        };
        Ok((out, Shape::from(out_dims)))
    }
}
