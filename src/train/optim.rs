//! Optimizer configurations (SGD, AdamW), the precision of the weights,
//! and the per-step constants the fused kernels consume.

use crate::error::Error;
use crate::kernel::train::Rule;

/// `torch.optim.SGD`: momentum, dampening, Nesterov, L2 weight decay
/// (added to the gradient, not decoupled).
///
/// Per element, with `g` the unscaled, clipped gradient:
/// `d = g + wd*p`; with momentum, `b = d` on the first step and
/// `b = momentum*b + (1-dampening)*d` after; `d = d + momentum*b`
/// (Nesterov) or `d = b`; then `p = p - lr*d`.
///
/// # Examples
///
/// ```
/// let sgd = halfkern::train::Sgd::new(0.1).momentum(0.9).nesterov(true);
/// assert_eq!(sgd.lr, 0.1);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sgd {
    /// Learning rate, `>= 0`.
    pub lr: f32,
    /// Momentum factor in `[0, 1]`; 0 keeps no buffer.
    pub momentum: f32,
    /// Dampening of the momentum, in `[0, 1]`.
    pub dampening: f32,
    /// Nesterov momentum (needs `momentum > 0` and `dampening == 0`).
    pub nesterov: bool,
    /// L2 penalty, `>= 0`.
    pub weight_decay: f32,
}

impl Sgd {
    /// Plain SGD with learning rate `lr`.
    pub fn new(lr: f32) -> Sgd {
        Sgd {
            lr,
            momentum: 0.0,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        }
    }
    /// Sets the momentum factor.
    pub fn momentum(self, momentum: f32) -> Sgd {
        Sgd { momentum, ..self }
    }
    /// Sets the dampening.
    pub fn dampening(self, dampening: f32) -> Sgd {
        Sgd { dampening, ..self }
    }
    /// Turns Nesterov momentum on or off.
    pub fn nesterov(self, nesterov: bool) -> Sgd {
        Sgd { nesterov, ..self }
    }
    /// Sets the L2 weight decay.
    pub fn weight_decay(self, weight_decay: f32) -> Sgd {
        Sgd {
            weight_decay,
            ..self
        }
    }
}

/// `torch.optim.AdamW` (no amsgrad): bias-corrected moments, decoupled
/// weight decay, `eps` added outside the square root.
///
/// Per element at step `t` (1-based): `p = p*(1 - lr*wd)`;
/// `m = b1*m + (1-b1)*g`; `v = b2*v + (1-b2)*g^2`;
/// `p = p - lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)`.
///
/// # Examples
///
/// ```
/// let adam = halfkern::train::AdamW::new(1e-3).betas(0.9, 0.95).weight_decay(0.1);
/// assert_eq!(adam.beta2, 0.95);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    /// Learning rate, `>= 0`.
    pub lr: f32,
    /// First-moment decay, in `[0, 1)`.
    pub beta1: f32,
    /// Second-moment decay, in `[0, 1)`.
    pub beta2: f32,
    /// Added to the bias-corrected `sqrt(v)`, finite and `> 0` (with 0 a
    /// zero gradient gives `0 / 0`).
    pub eps: f32,
    /// Decoupled weight decay, `>= 0`.
    pub weight_decay: f32,
}

impl AdamW {
    /// torch's defaults with learning rate `lr`: betas (0.9, 0.999),
    /// eps 1e-8, weight decay 0.01.
    pub fn new(lr: f32) -> AdamW {
        AdamW {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
    /// Sets the betas.
    pub fn betas(self, beta1: f32, beta2: f32) -> AdamW {
        AdamW {
            beta1,
            beta2,
            ..self
        }
    }
    /// Sets eps.
    pub fn eps(self, eps: f32) -> AdamW {
        AdamW { eps, ..self }
    }
    /// Sets the decoupled weight decay.
    pub fn weight_decay(self, weight_decay: f32) -> AdamW {
        AdamW {
            weight_decay,
            ..self
        }
    }
}

/// The update rule of a [`Trainer`](crate::train::Trainer).
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum Optimizer {
    /// [`Sgd`].
    Sgd(Sgd),
    /// [`AdamW`].
    AdamW(AdamW),
}

impl From<Sgd> for Optimizer {
    fn from(o: Sgd) -> Optimizer {
        Optimizer::Sgd(o)
    }
}

impl From<AdamW> for Optimizer {
    fn from(o: AdamW) -> Optimizer {
        Optimizer::AdamW(o)
    }
}

fn bad<T>(arg: &'static str, reason: String) -> Result<T, Error> {
    Err(Error::InvalidArgument { arg, reason })
}

fn in_range(arg: &'static str, x: f32, lo: f32, hi: f32, hi_open: bool) -> Result<(), Error> {
    let ok = x >= lo && if hi_open { x < hi } else { x <= hi };
    if ok {
        Ok(())
    } else {
        let close = if hi_open { ')' } else { ']' };
        bad(arg, format!("must be in [{lo}, {hi}{close}, got {x}"))
    }
}

pub(crate) fn check_lr(lr: f32) -> Result<(), Error> {
    in_range("lr", lr, 0.0, f32::MAX, false)
}

impl Optimizer {
    /// The learning rate.
    pub fn lr(&self) -> f32 {
        match self {
            Optimizer::Sgd(o) => o.lr,
            Optimizer::AdamW(o) => o.lr,
        }
    }

    pub(crate) fn set_lr(&mut self, lr: f32) {
        match self {
            Optimizer::Sgd(o) => o.lr = lr,
            Optimizer::AdamW(o) => o.lr = lr,
        }
    }

    /// Checks every hyper-parameter's range (torch's rules).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] naming the first one out of range:
    /// negative or non-finite lr or weight decay, an SGD momentum or
    /// dampening outside `[0, 1]`, Nesterov without momentum or with
    /// dampening, an AdamW beta outside `[0, 1)`, an AdamW `eps` that is
    /// not finite and `> 0`. Builders and [`Trainer::restore`] use this
    /// same check.
    ///
    /// [`Trainer::restore`]: crate::train::Trainer::restore
    pub fn validate(&self) -> Result<(), Error> {
        check_lr(self.lr())?;
        match *self {
            Optimizer::Sgd(o) => {
                in_range("momentum", o.momentum, 0.0, 1.0, false)?;
                in_range("dampening", o.dampening, 0.0, 1.0, false)?;
                in_range("weight_decay", o.weight_decay, 0.0, f32::MAX, false)?;
                if o.nesterov && (o.momentum <= 0.0 || o.dampening != 0.0) {
                    return bad(
                        "nesterov",
                        format!(
                            "needs momentum > 0 and dampening == 0, got momentum {} and dampening {}",
                            o.momentum, o.dampening
                        ),
                    );
                }
            }
            Optimizer::AdamW(o) => {
                in_range("beta1", o.beta1, 0.0, 1.0, true)?;
                in_range("beta2", o.beta2, 0.0, 1.0, true)?;
                // eps = 0 divides 0 by 0 on a zero gradient (m = v = 0):
                // the weight becomes NaN. torch accepts it; we do not.
                if !(o.eps.is_finite() && o.eps > 0.0) {
                    return bad("eps", format!("must be finite and > 0, got {}", o.eps));
                }
                in_range("weight_decay", o.weight_decay, 0.0, f32::MAX, false)?;
            }
        }
        Ok(())
    }

    /// Whether tensors keep a first buffer (momentum or `m`).
    pub(crate) fn has_m(&self) -> bool {
        match self {
            Optimizer::Sgd(o) => o.momentum != 0.0,
            Optimizer::AdamW(_) => true,
        }
    }

    /// Whether tensors keep a second buffer (`v`).
    pub(crate) fn has_v(&self) -> bool {
        matches!(self, Optimizer::AdamW(_))
    }

    /// The per-step constants of step `t` (1-based), computed in f64 and
    /// rounded once to f32, as torch's scalar arithmetic does.
    pub(crate) fn rule(&self, t: u64) -> Rule {
        match *self {
            Optimizer::Sgd(o) => Rule::Sgd {
                neg_lr: -o.lr,
                weight_decay: o.weight_decay,
                momentum: o.momentum,
                one_minus_dampening: (1.0 - o.dampening as f64) as f32,
                nesterov: o.nesterov,
                first: t == 1,
            },
            Optimizer::AdamW(o) => {
                let t = t.min(i32::MAX as u64) as i32;
                let bc1 = 1.0 - (o.beta1 as f64).powi(t);
                let bc2 = 1.0 - (o.beta2 as f64).powi(t);
                Rule::AdamW {
                    decay: (1.0 - o.lr as f64 * o.weight_decay as f64) as f32,
                    one_minus_beta1: (1.0 - o.beta1 as f64) as f32,
                    beta2: o.beta2,
                    one_minus_beta2: (1.0 - o.beta2 as f64) as f32,
                    eps: o.eps,
                    neg_step_size: (-(o.lr as f64) / bc1) as f32,
                    inv_bc2_sqrt: (1.0 / bc2.sqrt()) as f32,
                }
            }
        }
    }
}

/// How the model copy (or, in pure mode, the weights) is rounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rounding {
    /// Round to nearest, ties to even (the crate's `convert`).
    Nearest,
    /// Stochastic rounding (the crate's `convert_stochastic` contract),
    /// seeded per step and tensor.
    Stochastic,
}

/// Where the weights live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Precision {
    /// The trainer keeps f32 master weights (and f32 moments); the engine's
    /// weights are a bf16/f16 (or f32) copy rewritten every applied step.
    Master {
        /// How the copy is rounded from the master.
        rounding: Rounding,
    },
    /// No master copy: the engine's (bf16) weights are widened, updated in
    /// f32 and written back with stochastic rounding, so updates smaller
    /// than half an ulp still move the weights in expectation. Moments stay
    /// f32.
    Pure,
}

impl Default for Precision {
    /// f32 master weights, copy rounded to nearest-even.
    fn default() -> Precision {
        Precision::Master {
            rounding: Rounding::Nearest,
        }
    }
}
