//! The epilogue every path applies to an f32 accumulator before the single
//! store of an output (the order is documented on [`Gemm`]).

use super::params::{Activation, Bias, Gemm};

/// The epilogue's parameters, resolved once per call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Epilogue<'a> {
    pub(crate) alpha: f32,
    pub(crate) inv_scale: Option<f32>,
    pub(crate) beta: f32,
    pub(crate) bias: Bias<'a>,
    pub(crate) activation: Activation,
}

impl<'a> Epilogue<'a> {
    pub(crate) fn new(params: &Gemm<'a>) -> Self {
        Epilogue {
            alpha: params.alpha,
            inv_scale: params.inv_scale,
            beta: params.beta,
            bias: params.bias,
            activation: params.activation,
        }
    }

    /// Output `(i, j)` from its accumulator; `old` reads C's old value and is
    /// called only when `beta != 0`.
    #[inline(always)]
    pub(crate) fn apply(&self, acc: f32, old: impl FnOnce() -> f32, i: usize, j: usize) -> f32 {
        let mut t = self.alpha * acc;
        if let Some(s) = self.inv_scale {
            t *= s;
        }
        if self.beta != 0.0 {
            t += self.beta * old();
        }
        match self.bias {
            Bias::PerRow(b) => t += b[i],
            Bias::PerCol(b) => t += b[j],
            Bias::None => {}
        }
        activate(self.activation, t)
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
