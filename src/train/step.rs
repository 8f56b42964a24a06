//! [`Trainer`]: the optimizer state, and the order of a step as types.

use core::marker::PhantomData;

use crate::element::Element;
use crate::error::Error;
use crate::finite::GradStats;
use crate::isa::Backend;
use crate::train::kernel::{self, Tensor, Update};
use crate::train::optim::{Optimizer, Precision, Rounding, check_lr};
use crate::train::scaler::LossScaler;

/// One parameter tensor's optimizer state.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct State {
    pub(crate) len: usize,
    /// f32 master weights; empty in [`Precision::Pure`].
    pub(crate) master: Vec<f32>,
    /// Momentum buffer (SGD) or first moment (AdamW); empty if none.
    pub(crate) m: Vec<f32>,
    /// Second moment (AdamW); empty otherwise.
    pub(crate) v: Vec<f32>,
}

/// Mixed-precision training: loss scaling, gradient checks, optional
/// clipping by global norm, and the fused optimizer update, in that order.
///
/// The engine owns the parameters (the model copy: bf16, f16 or f32) and
/// the gradients; the trainer owns the f32 master weights, the optimizer
/// moments, the step counter and the [`LossScaler`]. See the
/// [module docs](crate::train) for a full step and the data-parallel form.
///
/// # Examples
///
/// ```
/// use halfkern::bf16;
/// use halfkern::train::{AdamW, Trainer};
///
/// let mut weights = vec![vec![bf16::from_f32(0.5); 4]];
/// let mut trainer = Trainer::builder(AdamW::new(1e-2)).build(&weights)?;
/// let grads = vec![vec![bf16::from_f32(0.25 * trainer.scale()); 4]]; // from a scaled loss
/// let report = trainer.step(&grads, &mut weights)?;
/// assert!(report.applied);
/// assert!(weights[0][0].to_f32() < 0.5);
/// # Ok::<(), halfkern::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Trainer {
    pub(crate) backend: Backend,
    pub(crate) optimizer: Optimizer,
    pub(crate) scaler: LossScaler,
    pub(crate) clip: Option<f32>,
    pub(crate) precision: Precision,
    pub(crate) seed: u64,
    pub(crate) steps: u64,
    pub(crate) tensors: Vec<State>,
}

/// Builds a [`Trainer`] (see [`Trainer::builder`]).
#[derive(Clone, Debug)]
#[must_use = "call .build(&params) to get a Trainer"]
pub struct TrainerBuilder {
    optimizer: Optimizer,
    scaler: LossScaler,
    clip: Option<f32>,
    precision: Precision,
    seed: u64,
    backend: Option<Backend>,
}

impl TrainerBuilder {
    /// The loss scaler (default [`LossScaler::dynamic`]).
    pub fn scaler(self, scaler: LossScaler) -> TrainerBuilder {
        TrainerBuilder { scaler, ..self }
    }

    /// Clip gradients by their global L2 norm, as
    /// `torch.nn.utils.clip_grad_norm_(max_norm)`: the unscaled gradients
    /// are multiplied by `min(1, max_norm / (norm + 1e-6))`.
    pub fn clip_grad_norm(self, max_norm: f32) -> TrainerBuilder {
        TrainerBuilder {
            clip: Some(max_norm),
            ..self
        }
    }

    /// Master weights and the model copy's rounding, or pure mode
    /// (default: f32 master, nearest-even copy).
    pub fn precision(self, precision: Precision) -> TrainerBuilder {
        TrainerBuilder { precision, ..self }
    }

    /// The seed of stochastic rounding (default 0). Step `t`'s tensor `i`
    /// rounds with a seed derived from `(seed, t, i)`.
    pub fn seed(self, seed: u64) -> TrainerBuilder {
        TrainerBuilder { seed, ..self }
    }

    /// Runs the kernels on this backend (default [`Backend::global`]).
    pub fn backend(self, backend: Backend) -> TrainerBuilder {
        TrainerBuilder {
            backend: Some(backend),
            ..self
        }
    }

    /// A trainer for these parameter tensors: their lengths fix the shape
    /// of the state, and their values initialise the f32 master weights
    /// (exactly: widening is exact). Pass f32 weights to start the master
    /// copy from f32 values, then bf16/f16 copies to [`Trainer::step`].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for an optimizer hyper-parameter or
    /// `max_norm` out of range (see [`Optimizer::validate`]), or the
    /// process-wide ISA error when no backend was given.
    pub fn build<W: Element, P: AsRef<[W]>>(self, params: &[P]) -> Result<Trainer, Error> {
        self.optimizer.validate()?;
        if let Some(c) = self.clip
            && !(c.is_finite() && c > 0.0)
        {
            return Err(Error::InvalidArgument {
                arg: "max_norm",
                reason: format!("must be finite and > 0, got {c}"),
            });
        }
        let backend = match self.backend {
            Some(b) => b,
            None => Backend::global()?,
        };
        let master = matches!(self.precision, Precision::Master { .. });
        let (has_m, has_v) = (self.optimizer.has_m(), self.optimizer.has_v());
        let tensors = params
            .iter()
            .map(|p| {
                let p = p.as_ref();
                State {
                    len: p.len(),
                    master: if master {
                        p.iter().map(|x| x.to_f32()).collect()
                    } else {
                        Vec::new()
                    },
                    m: if has_m {
                        vec![0.0; p.len()]
                    } else {
                        Vec::new()
                    },
                    v: if has_v {
                        vec![0.0; p.len()]
                    } else {
                        Vec::new()
                    },
                }
            })
            .collect();
        Ok(Trainer {
            backend,
            optimizer: self.optimizer,
            scaler: self.scaler,
            clip: self.clip,
            precision: self.precision,
            seed: self.seed,
            steps: 0,
            tensors,
        })
    }
}

/// What one step did.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct StepReport {
    /// Whether the update was applied (false: some gradient was inf/NaN,
    /// and nothing but the loss scaler changed).
    pub applied: bool,
    /// The loss scale the gradients were computed with.
    pub scale_before: f32,
    /// The loss scale for the next step.
    pub scale_after: f32,
    /// L2 norm of the unscaled gradients (over all ranks when all-reduced);
    /// NaN when a gradient was inf/NaN ([`GradStats::norm`]).
    pub grad_norm: f64,
    /// How many unscaled gradient values were inf or NaN.
    pub nonfinite: usize,
    /// The clip coefficient applied (1 when not clipping or under the norm).
    pub clip_coef: f32,
    /// Optimizer steps applied so far, this one included.
    pub step: u64,
}

/// The first state of a step: the loss scale is fixed; run the backward
/// pass on `loss * scale`, then [`Step::unscale_and_check`].
#[derive(Debug)]
pub struct Scaled(());

/// The gradients were checked; [`Step::apply`] applies or skips.
#[derive(Debug)]
pub struct Checked<'g, G, A> {
    grads: &'g [A],
    stats: GradStats,
    /// What the update multiplies the gradients by: `1/scale`, or 1 for
    /// gradients the engine already unscaled ([`Step::check_unscaled`]).
    inv_scale: f32,
    _g: PhantomData<G>,
}

/// One training step, in the state `S` ([`Scaled`] or [`Checked`]).
///
/// Each transition consumes the step, so out-of-order use does not compile:
/// there is no `apply` before `unscale_and_check`, no second check, and the
/// scaler update is part of `apply`. A step dropped before `apply` changes
/// nothing at all (the check writes nothing).
///
/// ```compile_fail
/// # use halfkern::train::{Sgd, Trainer};
/// # let mut w = vec![vec![0f32; 2]];
/// # let mut t = Trainer::builder(Sgd::new(0.1)).build(&w).unwrap();
/// t.begin().apply(&mut w); // no check: does not compile
/// ```
///
/// ```compile_fail
/// # use halfkern::train::{Sgd, Trainer};
/// # let w = vec![vec![0f32; 2]];
/// # let mut t = Trainer::builder(Sgd::new(0.1)).build(&w).unwrap();
/// let c = t.begin().unscale_and_check(&w).unwrap();
/// c.unscale_and_check(&w); // checking twice: does not compile
/// ```
#[derive(Debug)]
#[must_use = "a step does nothing until it is checked and applied"]
pub struct Step<'t, S> {
    trainer: &'t mut Trainer,
    state: S,
}

impl Trainer {
    /// Starts building a trainer with this optimizer.
    ///
    /// # Examples
    ///
    /// ```
    /// use halfkern::train::{LossScaler, Precision, Sgd, Trainer};
    ///
    /// let w = vec![vec![halfkern::bf16::ZERO; 8]];
    /// let t = Trainer::builder(Sgd::new(0.1).momentum(0.9))
    ///     .scaler(LossScaler::disabled())
    ///     .precision(Precision::Pure)
    ///     .clip_grad_norm(1.0)
    ///     .seed(42)
    ///     .build(&w)?;
    /// assert_eq!(t.steps(), 0);
    /// # Ok::<(), halfkern::Error>(())
    /// ```
    pub fn builder(optimizer: impl Into<Optimizer>) -> TrainerBuilder {
        TrainerBuilder {
            optimizer: optimizer.into(),
            scaler: LossScaler::dynamic(),
            clip: None,
            precision: Precision::default(),
            seed: 0,
            backend: None,
        }
    }

    /// Starts a step: multiply the loss by [`Step::loss_scale`] (or use
    /// [`Step::scale_loss`]) before the backward pass.
    pub fn begin(&mut self) -> Step<'_, Scaled> {
        Step {
            trainer: self,
            state: Scaled(()),
        }
    }

    /// One whole step for engines that need no hook between the phases:
    /// `begin().unscale_and_check(grads)?.apply(params)`.
    ///
    /// # Errors
    ///
    /// As [`Step::unscale_and_check`] and [`Step::apply`]; nothing changes
    /// on an `Err`.
    pub fn step<G, A, W, P>(&mut self, grads: &[A], params: &mut [P]) -> Result<StepReport, Error>
    where
        G: Element,
        A: AsRef<[G]>,
        W: Element,
        P: AsMut<[W]>,
    {
        self.begin().unscale_and_check(grads)?.apply(params)
    }

    /// The current loss scale.
    pub fn scale(&self) -> f32 {
        self.scaler.scale()
    }

    /// The loss scaler.
    pub fn scaler(&self) -> &LossScaler {
        &self.scaler
    }

    /// The optimizer (with the current learning rate).
    pub fn optimizer(&self) -> &Optimizer {
        &self.optimizer
    }

    /// Optimizer steps applied so far (skipped steps do not count).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The backend the kernels run on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Sets the learning rate (for schedules).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] unless `lr` is finite and `>= 0`.
    pub fn set_lr(&mut self, lr: f32) -> Result<(), Error> {
        check_lr(lr)?;
        self.optimizer.set_lr(lr);
        Ok(())
    }

    /// The f32 master weights of tensor `i` (empty in pure mode), or
    /// `None` when there is no tensor `i`.
    pub fn master(&self, i: usize) -> Option<&[f32]> {
        self.tensors.get(i).map(|t| &t.master[..])
    }

    /// The optimizer buffers of tensor `i`: momentum or first moment, and
    /// second moment (each empty when the optimizer keeps none).
    pub fn moments(&self, i: usize) -> Option<(&[f32], &[f32])> {
        self.tensors.get(i).map(|t| (&t.m[..], &t.v[..]))
    }

    /// The lengths of the parameter tensors.
    pub fn shapes(&self) -> Vec<usize> {
        self.tensors.iter().map(|t| t.len).collect()
    }

    /// Writes the master weights into the engine's model copy (rounded to
    /// nearest-even), e.g. after [`Trainer::restore`] when the engine did
    /// not save its own weights.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] in pure mode (there is no master copy),
    /// [`Error::ShapeMismatch`] / [`Error::InvalidArgument`] when `params`
    /// does not match the trainer's tensors (then nothing is written).
    ///
    /// # Examples
    ///
    /// ```
    /// use halfkern::bf16;
    /// use halfkern::train::{Sgd, Trainer};
    ///
    /// let t = Trainer::builder(Sgd::new(0.1)).build(&[vec![1.5f32, -2.0]])?;
    /// let mut model = vec![vec![bf16::ZERO; 2]];
    /// t.write_model(&mut model)?;
    /// assert_eq!(model[0][1].to_f32(), -2.0);
    /// # Ok::<(), halfkern::Error>(())
    /// ```
    pub fn write_model<W: Element, P: AsMut<[W]>>(&self, params: &mut [P]) -> Result<(), Error> {
        if self.precision == Precision::Pure {
            return Err(Error::InvalidArgument {
                arg: "precision",
                reason: "pure mode keeps no master weights to write".into(),
            });
        }
        let lens: Vec<usize> = params.iter_mut().map(|p| p.as_mut().len()).collect();
        self.check_shapes("params", lens.into_iter())?;
        for (t, p) in self.tensors.iter().zip(params.iter_mut()) {
            self.backend.convert(&t.master, p.as_mut())?;
        }
        Ok(())
    }

    fn check_shapes(
        &self,
        arg: &'static str,
        lens: impl ExactSizeIterator<Item = usize>,
    ) -> Result<(), Error> {
        if lens.len() != self.tensors.len() {
            return Err(Error::ShapeMismatch {
                op: "train step",
                what: if arg == "grads" {
                    "number of gradient tensors != number of parameter tensors"
                } else {
                    "number of model tensors != number of parameter tensors"
                },
                left: lens.len(),
                right: self.tensors.len(),
            });
        }
        for (i, (len, t)) in lens.zip(&self.tensors).enumerate() {
            if len != t.len {
                return Err(Error::InvalidArgument {
                    arg,
                    reason: format!("tensor {i} has {len} elements, the trainer's has {}", t.len),
                });
            }
        }
        Ok(())
    }
}

impl<'t> Step<'t, Scaled> {
    /// The loss scale of this step.
    pub fn loss_scale(&self) -> f32 {
        self.trainer.scaler.scale()
    }

    /// `1 / loss_scale()`, rounded as the trainer rounds it: what an engine
    /// passes to [`Gemm::unscale`](crate::Gemm::unscale) before
    /// [`Step::check_unscaled`].
    pub fn inv_loss_scale(&self) -> f32 {
        self.trainer.scaler.inv_scale()
    }

    /// `loss * loss_scale()`.
    pub fn scale_loss(&self, loss: f32) -> f32 {
        loss * self.loss_scale()
    }

    /// Checks the gradients of the scaled loss: counts the values that are
    /// inf or NaN once multiplied by `1/scale`, and sums their squares for
    /// clipping. Reads the gradients, writes nothing (the update unscales
    /// them on the fly), and keeps borrowing them until [`Step::apply`].
    ///
    /// # Errors
    ///
    /// [`Error::ShapeMismatch`] / [`Error::InvalidArgument`] when the
    /// tensors do not match the trainer's in number or length.
    pub fn unscale_and_check<'g, G: Element, A: AsRef<[G]>>(
        self,
        grads: &'g [A],
    ) -> Result<Step<'t, Checked<'g, G, A>>, Error> {
        let inv = self.trainer.scaler.inv_scale();
        self.check(grads, inv)
    }

    /// Checks gradients the engine has already multiplied by
    /// [`Step::inv_loss_scale`]: typically the output of a weight-gradient
    /// [`gemm`](crate::gemm()) with
    /// [`Gemm::unscale`](crate::Gemm::unscale)`(step.inv_loss_scale())`,
    /// which unscales in the GEMM's epilogue so no pass of its own is
    /// needed. Counts the inf/NaN values (an overflow the GEMM reported
    /// shows up here as inf) and sums the squares for clipping, writes
    /// nothing; [`Step::apply`] then uses the gradients as they are.
    ///
    /// # Errors
    ///
    /// As [`Step::unscale_and_check`].
    pub fn check_unscaled<'g, G: Element, A: AsRef<[G]>>(
        self,
        grads: &'g [A],
    ) -> Result<Step<'t, Checked<'g, G, A>>, Error> {
        self.check(grads, 1.0)
    }

    fn check<'g, G: Element, A: AsRef<[G]>>(
        self,
        grads: &'g [A],
        inv_scale: f32,
    ) -> Result<Step<'t, Checked<'g, G, A>>, Error> {
        let tr = &*self.trainer;
        tr.check_shapes("grads", grads.iter().map(|g| g.as_ref().len()))?;
        let stats = grads.iter().fold(GradStats::ZERO, |acc, g| {
            acc.merge(kernel::stats(
                tr.backend.token,
                G::slice(g.as_ref()),
                inv_scale,
            ))
        });
        Ok(Step {
            trainer: self.trainer,
            state: Checked {
                grads,
                stats,
                inv_scale,
                _g: PhantomData,
            },
        })
    }
}

impl<'t, 'g, G: Element, A: AsRef<[G]>> Step<'t, Checked<'g, G, A>> {
    /// This process's check result: the count of non-finite unscaled
    /// gradient values and the sum of squares of the finite ones.
    pub fn stats(&self) -> GradStats {
        self.state.stats
    }

    /// `stats().nonfinite`.
    pub fn nonfinite(&self) -> usize {
        self.state.stats.nonfinite
    }

    /// `stats().sum_sq`.
    pub fn sum_sq(&self) -> f64 {
        self.state.stats.sum_sq
    }

    /// Replaces the local check result by its sum over all ranks (the
    /// data-parallel form: each rank checks its shard, the engine
    /// all-reduces [`GradStats::to_array`] with a sum and rebuilds it with
    /// [`GradStats::from_array`], and every rank then applies or skips
    /// alike, clipping by the global norm). See the
    /// [module docs](crate::train) for an example.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] when `global` cannot be a sum of real
    /// stats ([`GradStats::validate`]: a negative, NaN or infinite
    /// `sum_sq`). The step is dropped and nothing changed (weights, moments,
    /// step counter and scaler keep their bits); begin a new one.
    pub fn all_reduced(self, global: GradStats) -> Result<Self, Error> {
        global.validate()?;
        Ok(Step {
            trainer: self.trainer,
            state: Checked {
                stats: global,
                ..self.state
            },
        })
    }

    /// Applies the update to every tensor (one fused pass each) if all
    /// gradients were finite, else skips it; then updates the loss scaler.
    /// `params` are the engine's weights: the model copy (master mode) or
    /// the weights themselves (pure mode).
    ///
    /// A skipped step changes nothing but the scaler: master weights, model
    /// weights, moments and the step counter keep their bits.
    ///
    /// # Errors
    ///
    /// [`Error::ShapeMismatch`] / [`Error::InvalidArgument`] when `params`
    /// does not match the trainer's tensors; [`Error::InvalidArgument`]
    /// naming `sum_sq` for stats that fail [`GradStats::validate`] (only
    /// [`Step::all_reduced`] can bring such stats, and it checks them too),
    /// or naming `steps` when the step would be applied with the step
    /// counter at `u64::MAX` (it never wraps). In every case nothing
    /// changed, the scaler included.
    pub fn apply<W: Element, P: AsMut<[W]>>(self, params: &mut [P]) -> Result<StepReport, Error> {
        let Step { trainer: tr, state } = self;
        let lens: Vec<usize> = params.iter_mut().map(|p| p.as_mut().len()).collect();
        tr.check_shapes("params", lens.into_iter())?;
        let stats = state.stats;
        stats.validate()?;
        let found = !stats.is_finite();
        // The counter of the step to apply, checked before anything changes:
        // a wrap to 0 would make AdamW's bias correction divide by zero.
        let next = if found {
            tr.steps
        } else {
            tr.steps.checked_add(1).ok_or_else(|| Error::InvalidArgument {
                arg: "steps",
                reason: format!(
                    "the step counter is at its maximum ({}); another applied step would wrap it",
                    tr.steps
                ),
            })?
        };
        let scale_before = tr.scaler.scale();
        let inv_scale = state.inv_scale;
        let mut report = StepReport {
            applied: !found,
            scale_before,
            scale_after: scale_before,
            grad_norm: stats.norm(),
            nonfinite: stats.nonfinite,
            clip_coef: 1.0,
            step: tr.steps,
        };
        if !found {
            if let Some(max_norm) = tr.clip {
                report.clip_coef = stats.clip_coef(max_norm);
            }
            let t = next;
            let rule = tr.optimizer.rule(t);
            let stochastic = match tr.precision {
                Precision::Master { rounding } => rounding == Rounding::Stochastic,
                _ => true,
            };
            for (i, ((state_i, g), p)) in tr
                .tensors
                .iter_mut()
                .zip(state.grads)
                .zip(params.iter_mut())
                .enumerate()
            {
                let update = Update {
                    rule,
                    inv_scale,
                    clip: report.clip_coef,
                    sr_seed: stochastic.then(|| step_seed(tr.seed, t, i as u64)),
                };
                let State { master, m, v, .. } = state_i;
                kernel::apply(
                    tr.backend.token,
                    &update,
                    Tensor {
                        grad: G::slice(g.as_ref()),
                        master,
                        m,
                        v,
                        model: W::slice_mut(p.as_mut()),
                    },
                );
            }
            tr.steps = t;
            report.step = t;
        }
        tr.scaler.update(found);
        report.scale_after = tr.scaler.scale();
        Ok(report)
    }
}

/// The stochastic-rounding seed of step `t`, tensor `i`.
pub(crate) fn step_seed(seed: u64, t: u64, i: u64) -> u64 {
    let mut z =
        seed ^ t.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::{AdamW, Sgd};
    use half::f16;

    /// A few steps on the scalar path, small enough for Miri (CI runs the
    /// `scalar` lib tests there): SGD moves by `lr * g`, a NaN step is
    /// skipped bit-identically, AdamW's first step moves each weight by
    /// about `lr` against its gradient's sign, and a checkpoint restores.
    #[test]
    fn scalar_steps_skip_and_restore() {
        let w0 = [vec![1.0f32, -2.0, 0.5], vec![4.0]];
        let mut model: Vec<Vec<f16>> = w0
            .iter()
            .map(|w| w.iter().map(|&x| f16::from_f32(x)).collect())
            .collect();
        let mut t = Trainer::builder(Sgd::new(0.5))
            .backend(Backend::scalar())
            .build(&w0)
            .unwrap();
        let s = t.scale();
        let g = [vec![s, -s, 0.0], vec![2.0 * s]];
        let r = t
            .begin()
            .unscale_and_check(&g)
            .unwrap()
            .apply(&mut model)
            .unwrap();
        assert!(r.applied && r.nonfinite == 0 && r.step == 1);
        assert_eq!(t.master(0).unwrap(), &[0.5, -1.5, 0.5]);
        assert_eq!(t.master(1).unwrap(), &[3.0]);
        assert_eq!(model[0][1], f16::from_f32(-1.5));

        let saved = t.to_bytes();
        let before = (model.clone(), t.master(0).unwrap().to_vec(), t.steps());
        let g = [vec![0.0, f32::NAN, 0.0], vec![0.0]];
        let r = t
            .begin()
            .unscale_and_check(&g)
            .unwrap()
            .apply(&mut model)
            .unwrap();
        assert!(!r.applied && r.nonfinite == 1 && r.scale_after == s / 2.0);
        assert_eq!(
            (model.clone(), t.master(0).unwrap().to_vec(), t.steps()),
            before
        );
        t.restore(&saved).unwrap();
        assert_eq!(t.scale(), s);

        let mut a = Trainer::builder(AdamW::new(0.01).weight_decay(0.0))
            .backend(Backend::scalar())
            .scaler(crate::train::LossScaler::disabled())
            .build(&w0)
            .unwrap();
        let g = [vec![3.0f32, -0.25, 0.0], vec![1e-3]];
        assert!(a.step(&g, &mut model).unwrap().applied);
        let m = a.master(0).unwrap();
        assert!((m[0] - 0.99).abs() < 1e-6 && (m[1] + 1.99).abs() < 1e-6);
        assert_eq!(m[2], 0.5);
        assert!((a.master(1).unwrap()[0] - 3.99).abs() < 1e-5);
    }
}
