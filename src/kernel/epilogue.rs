//! The epilogue every path applies to an f32 accumulator before the single
//! store of an output (the order is documented on `halfkern::Gemm`), and
//! the public [`Activation`] and [`Bias`] it reads (re-exported by `gemm`).

/// The activation applied to every output, after bias (see `halfkern::Gemm`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Activation {
    /// Identity.
    #[default]
    None,
    /// `max(x, 0)`; NaN stays NaN.
    Relu,
    /// GELU, tanh form: `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
    GeluTanh,
}

/// A bias added to every output before the activation (see `halfkern::Gemm`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[non_exhaustive]
pub enum Bias<'a> {
    /// No bias.
    #[default]
    None,
    /// `bias[i]` added to row `i` of C (length `m`).
    PerRow(&'a [f32]),
    /// `bias[j]` added to column `j` of C (length `n`): a linear layer's bias
    /// when C is `batch x features`.
    PerCol(&'a [f32]),
}

/// The epilogue's parameters, resolved once per call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Epilogue<'a> {
    pub(crate) alpha: f32,
    pub(crate) inv_scale: Option<f32>,
    pub(crate) beta: f32,
    pub(crate) bias: Bias<'a>,
    pub(crate) activation: Activation,
}

impl Epilogue<'_> {
    /// The same epilogue for `C^T`: a bias per row becomes one per column
    /// and the other way round.
    pub(crate) fn transposed(self) -> Self {
        let bias = match self.bias {
            Bias::PerRow(b) => Bias::PerCol(b),
            Bias::PerCol(b) => Bias::PerRow(b),
            Bias::None => Bias::None,
        };
        Epilogue { bias, ..self }
    }

    /// Steps 4 and 5 of the epilogue over outputs `(i, j0..j0 + t.len())`.
    #[inline(always)]
    pub(crate) fn add_bias_and_activate(&self, t: &mut [f32], i: usize, j0: usize) {
        match self.bias {
            Bias::PerRow(b) => {
                let v = b[i];
                t.iter_mut().for_each(|x| *x += v);
            }
            Bias::PerCol(b) => {
                let n = t.len();
                for (x, &v) in t.iter_mut().zip(&b[j0..j0 + n]) {
                    *x += v;
                }
            }
            Bias::None => {}
        }
        match self.activation {
            Activation::None => {}
            act => t.iter_mut().for_each(|x| *x = activate(act, *x)),
        }
    }
}

/// `sqrt(2 / pi)`.
const GELU_C: f32 = 0.797_884_6;

/// The activation of one value.
#[inline(always)]
pub(crate) fn activate(act: Activation, x: f32) -> f32 {
    match act {
        Activation::None => x,
        // `x.max(0.0)` would turn NaN into 0; keep NaN visible.
        Activation::Relu => {
            if x < 0.0 {
                0.0
            } else {
                x
            }
        }
        Activation::GeluTanh => gelu_tanh(x),
    }
}

/// GELU, tanh form, in f32.
#[inline(always)]
pub(crate) fn gelu_tanh(x: f32) -> f32 {
    let u = GELU_C * (x + 0.044_715 * x * x * x);
    0.5 * x * (1.0 + u.tanh())
}
