//! The mixed-precision training step: dynamic loss scaling, f32 master
//! weights, a fused optimizer update and downcast, and skipped steps that
//! change nothing.
//!
//! The engine owns the parameters (its bf16/f16 model copy) and computes
//! the gradients; this module owns the order of everything around the
//! backward pass, and the state that goes with it:
//!
//! 1. [`Trainer::begin`]: the loss scale of this step is fixed; the engine
//!    multiplies its loss by [`Step::loss_scale`] and runs backward.
//! 2. [`Step::unscale_and_check`]: one read-only pass per gradient tensor
//!    counts the values that are inf/NaN once multiplied by `1/scale`, and
//!    sums the squares of the others (for clipping by global norm), as a
//!    [`GradStats`](crate::finite::GradStats). Nothing is written, which is
//!    why this is not [`finite::unscale`](crate::finite::unscale): the skip
//!    decision needs every tensor before any update, the update unscales on
//!    the fly anyway, and f16 gradients unscaled in place would lose their
//!    small values (the very ones loss scaling protects).
//!    [`Step::check_unscaled`] is the same check for gradients the engine
//!    already unscaled, typically in a weight-gradient GEMM's epilogue
//!    ([`Gemm::unscale`](crate::Gemm::unscale)); the update then uses them
//!    as they are.
//! 3. [`Step::apply`]: if every gradient was finite, one fused SIMD pass per
//!    tensor reads the gradient (f32, bf16 or f16), unscales it, multiplies
//!    by the clip coefficient, updates the f32 master weight and moments,
//!    and writes the model copy (nearest-even or stochastic rounding);
//!    otherwise nothing changes. Then the [`LossScaler`] is updated.
//!
//! The steps are types ([`Step`]`<`[`Scaled`]`>` then
//! [`Step`]`<`[`Checked`]`>`), each transition consumes the value, so
//! applying without a check, checking twice or skipping the scaler update
//! does not compile.
//!
//! # Examples
//!
//! A step by step, with a toy "backward":
//!
//! ```
//! use halfkern::bf16;
//! use halfkern::train::{AdamW, Trainer};
//!
//! let mut weights = vec![vec![bf16::from_f32(1.0); 1000], vec![bf16::ZERO; 10]];
//! let mut trainer = Trainer::builder(AdamW::new(1e-3)).clip_grad_norm(1.0).build(&weights)?;
//!
//! let step = trainer.begin();
//! let scale = step.loss_scale();
//! let grads: Vec<Vec<bf16>> = weights
//!     .iter()
//!     .map(|w| w.iter().map(|x| bf16::from_f32(x.to_f32() * 0.01 * scale)).collect())
//!     .collect();
//! let report = step.unscale_and_check(&grads)?.apply(&mut weights)?;
//! assert!(report.applied);
//! assert!((report.grad_norm - (1000f64 * 1e-4).sqrt()).abs() < 1e-3);
//!
//! // An overflow in the backward pass: the step is skipped, the scale halves.
//! let mut bad = grads.clone();
//! bad[1][3] = bf16::INFINITY;
//! let before = weights.clone();
//! let report = trainer.step(&bad, &mut weights)?;
//! assert!(!report.applied && report.scale_after == report.scale_before / 2.0);
//! assert_eq!(weights, before);
//! # Ok::<(), halfkern::Error>(())
//! ```
//!
//! # Data parallel
//!
//! When each rank holds a shard of the gradients (ZeRO, FSDP), every rank
//! checks its shard, the engine all-reduces the
//! [`GradStats`](crate::finite::GradStats) (non-finite count and sum of
//! squares, both with a sum), and every rank then makes the same decision
//! and clips by the same global norm:
//!
//! ```
//! use halfkern::finite::GradStats;
//! use halfkern::train::{Sgd, Trainer};
//!
//! // Two ranks, each with its own shard of one model and its own trainer.
//! let mut w = [vec![vec![1.0f32; 4]], vec![vec![1.0f32; 4]]];
//! let mut ranks = [
//!     Trainer::builder(Sgd::new(0.1)).clip_grad_norm(1.0).build(&w[0])?,
//!     Trainer::builder(Sgd::new(0.1)).clip_grad_norm(1.0).build(&w[1])?,
//! ];
//! let s = ranks[0].scale();
//! let g = [vec![vec![3.0 * s; 4]], vec![vec![4.0 * s; 4]]];
//!
//! let [r0, r1] = &mut ranks;
//! let c0 = r0.begin().unscale_and_check(&g[0])?;
//! let c1 = r1.begin().unscale_and_check(&g[1])?;
//! // The engine's all-reduce (a sum) of each rank's two numbers:
//! let (a0, a1) = (c0.stats().to_array(), c1.stats().to_array());
//! // `from_array` and `all_reduced` reject stats no sum of real ones gives
//! // (a fractional or negative count, a negative or non-finite sum).
//! let global = GradStats::from_array([a0[0] + a1[0], a0[1] + a1[1]])?;
//! let [w0, w1] = &mut w;
//! let rep0 = c0.all_reduced(global)?.apply(w0)?;
//! let rep1 = c1.all_reduced(global)?.apply(w1)?;
//! // Global norm sqrt(4*9 + 4*16) = 10: both ranks clip by 1/10.
//! assert!((rep0.grad_norm - 10.0).abs() < 1e-9 && rep0.clip_coef == rep1.clip_coef);
//! assert!((w0[0][0] - (1.0 - 0.1 * 0.3)).abs() < 1e-6);
//! assert!((w1[0][0] - (1.0 - 0.1 * 0.4)).abs() < 1e-6);
//! # Ok::<(), halfkern::Error>(())
//! ```
//!
//! # Numerics
//!
//! Per-step constants (`lr / (1 - beta1^t)`, `1/sqrt(1 - beta2^t)`,
//! `1 - lr*wd`, `1/scale`) are computed in f64 and rounded once to f32; the
//! per-element update is f32 with FMAs, the same operations in the same
//! order on every ISA (the scalar oracle uses `f32::mul_add`), so every ISA
//! produces the same bits given the same clip coefficient. The gradient
//! norm's sum of squares is summed in a different order per ISA (f32 blocks
//! folded into f64), so with clipping enabled the coefficient, and hence
//! the weights, may differ in the last bit between ISAs; never between runs
//! on one ISA. Stochastic rounding of element `j` of tensor `i` at step `t`
//! follows `halfkern::oracle::sr_key/sr_bits` with a seed derived from
//! `(seed, t, i)` and index `j`: independent of ISA and chunking.

mod checkpoint;
pub(crate) mod kernel;
pub(crate) mod optim;
mod scaler;
mod step;

pub use optim::{AdamW, Optimizer, Precision, Rounding, Sgd};
pub use scaler::{LossScaler, ScalerMode, ScalerOptions};
pub use step::{Checked, Scaled, Step, StepReport, Trainer, TrainerBuilder};
