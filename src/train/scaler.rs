//! Dynamic loss scaling with `torch.amp.GradScaler`'s semantics.
//!
//! The state machine is torch's `_amp_update_scale_` kernel, transcribed:
//! the scale is an `f32`, the factors are `f64` (torch passes Python floats
//! as C++ `double`), and every new scale is the `f64` product rounded once
//! to `f32`, exactly as `current_scale * backoff_factor` does in the CPU and
//! CUDA kernels. On an overflow the scale backs off and the growth tracker
//! resets; after `growth_interval` consecutive clean updates the scale grows
//! only if the product is finite, and the tracker resets either way.
//!
//! Two departures, both only reachable where torch's own scale is no longer
//! a normal `f32`:
//!
//! - **`min_scale`** (default `f32::MIN_POSITIVE`, 2^-126): a back-off never
//!   goes below it. torch has no floor, so after 142 back-offs from 2^16 its
//!   scale becomes subnormal and after 165 it is 0, and `1/scale` is inf:
//!   every later step is skipped forever. Ours stays at 2^-126. For any
//!   sequence of overflow flags the two trajectories are equal for as long
//!   as torch's scale is a normal `f32`.
//! - **`max_scale`** (default `f32::MAX`): growth is clamped to it. With the
//!   default, torch's own finiteness rule is what stops growth (a scale of
//!   2^127 never doubles), so nothing changes.
//!
//! `hysteresis` (default 1, torch's behaviour) is how many consecutive
//! overflows are tolerated before the scale backs off, as Megatron-LM's
//! `DynamicGradScaler` and DeepSpeed's `DynamicLossScaler` offer it. Every
//! overflow resets the growth tracker; a tolerated one leaves the scale
//! alone. The budget refills on every clean update (DeepSpeed's
//! `consecutive_hysteresis=True`; Megatron refills it only when the scale
//! grows, which lets isolated overflows far apart use up the budget: we took
//! the reading "consecutive overflows").

use crate::error::Error;

/// Options of a dynamic [`LossScaler`]. `Default` is PyTorch's GradScaler.
///
/// # Examples
///
/// ```
/// use halfkern::train::{LossScaler, ScalerOptions};
///
/// let scaler = LossScaler::with_options(ScalerOptions {
///     growth_interval: 100,
///     hysteresis: 2,
///     ..ScalerOptions::default()
/// })?;
/// assert_eq!(scaler.scale(), 65536.0);
/// # Ok::<(), halfkern::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScalerOptions {
    /// The first scale (torch: `init_scale = 2.0**16`).
    pub init_scale: f32,
    /// Multiplier on growth, `> 1` and finite (torch: 2.0).
    pub growth_factor: f64,
    /// Multiplier on an overflow, in `(0, 1)` (torch: 0.5).
    pub backoff_factor: f64,
    /// Consecutive clean updates before the scale grows, `>= 1` (torch: 2000).
    pub growth_interval: u32,
    /// Consecutive overflows that back the scale off, `>= 1` (torch: 1).
    pub hysteresis: u32,
    /// The floor of a back-off: a normal, finite `f32` (default 2^-126,
    /// which keeps the scale normal; see the module docs).
    pub min_scale: f32,
    /// The ceiling of growth: finite, `>= min_scale` (default `f32::MAX`).
    pub max_scale: f32,
}

impl Default for ScalerOptions {
    fn default() -> ScalerOptions {
        ScalerOptions {
            init_scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
            hysteresis: 1,
            min_scale: f32::MIN_POSITIVE,
            max_scale: f32::MAX,
        }
    }
}

impl ScalerOptions {
    /// Checks every option's range.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] naming the first option out of range.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |arg: &'static str, reason: String| Err(Error::InvalidArgument { arg, reason });
        let o = self;
        if !(o.growth_factor.is_finite() && o.growth_factor > 1.0) {
            return bad(
                "growth_factor",
                format!("must be finite and > 1, got {}", o.growth_factor),
            );
        }
        if !(o.backoff_factor > 0.0 && o.backoff_factor < 1.0) {
            return bad(
                "backoff_factor",
                format!("must be in (0, 1), got {}", o.backoff_factor),
            );
        }
        if o.growth_interval == 0 {
            return bad("growth_interval", "must be >= 1, got 0".into());
        }
        if o.hysteresis == 0 {
            return bad("hysteresis", "must be >= 1, got 0".into());
        }
        if !(o.min_scale.is_normal() && o.min_scale > 0.0) {
            return bad(
                "min_scale",
                format!("must be a positive normal f32, got {:e}", o.min_scale),
            );
        }
        if !(o.max_scale.is_finite() && o.max_scale >= o.min_scale) {
            return bad(
                "max_scale",
                format!(
                    "must be finite and >= min_scale ({:e}), got {:e}",
                    o.min_scale, o.max_scale
                ),
            );
        }
        if !(o.init_scale >= o.min_scale && o.init_scale <= o.max_scale) {
            return bad(
                "init_scale",
                format!(
                    "must be in [min_scale, max_scale] = [{:e}, {:e}], got {:e}",
                    o.min_scale, o.max_scale, o.init_scale
                ),
            );
        }
        Ok(())
    }
}

/// How a [`LossScaler`] behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ScalerMode {
    /// The scale adapts to overflows ([`LossScaler::dynamic`]).
    Dynamic,
    /// The scale never changes ([`LossScaler::fixed`]).
    Fixed,
    /// Scale 1, never changes ([`LossScaler::disabled`]).
    Disabled,
}

/// The loss scale of mixed-precision training, and its update rule.
///
/// Multiply the loss by [`scale`](LossScaler::scale) before the backward
/// pass, so small f16 gradients do not flush to zero; after the step call
/// [`update`](LossScaler::update) with whether any gradient was inf/NaN.
/// [`Trainer`](crate::train::Trainer) does both for you, in order.
///
/// The scale is always a positive normal `f32` (see the module docs for
/// where that departs from torch).
///
/// # Examples
///
/// ```
/// use halfkern::train::LossScaler;
///
/// let mut s = LossScaler::dynamic();
/// assert_eq!(s.scale(), 65536.0);
/// s.update(true); // an overflow: back off
/// assert_eq!(s.scale(), 32768.0);
/// for _ in 0..2000 {
///     s.update(false);
/// }
/// assert_eq!(s.scale(), 65536.0); // 2000 clean steps: grow
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossScaler {
    pub(crate) mode: ScalerMode,
    pub(crate) scale: f32,
    pub(crate) growth_tracker: u32,
    pub(crate) hysteresis_left: u32,
    pub(crate) opts: ScalerOptions,
}

impl LossScaler {
    /// A dynamic scaler with PyTorch GradScaler's defaults: scale 2^16,
    /// growth 2.0 every 2000 clean steps, back-off 0.5, hysteresis 1.
    pub fn dynamic() -> LossScaler {
        LossScaler::new_dynamic(ScalerOptions::default())
    }

    fn new_dynamic(opts: ScalerOptions) -> LossScaler {
        LossScaler {
            mode: ScalerMode::Dynamic,
            scale: opts.init_scale,
            growth_tracker: 0,
            hysteresis_left: opts.hysteresis,
            opts,
        }
    }

    /// A dynamic scaler with other options.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] when an option is out of range (see
    /// [`ScalerOptions::validate`]): `growth_factor <= 1`, `backoff_factor`
    /// outside `(0, 1)`, a zero interval or hysteresis, a `min_scale` that
    /// is not a positive normal `f32`, `max_scale < min_scale`, or an
    /// `init_scale` outside `[min_scale, max_scale]`.
    ///
    /// # Examples
    ///
    /// ```
    /// use halfkern::train::{LossScaler, ScalerOptions};
    ///
    /// let bad = ScalerOptions { growth_factor: 1.0, ..ScalerOptions::default() };
    /// assert!(LossScaler::with_options(bad).is_err());
    /// ```
    pub fn with_options(opts: ScalerOptions) -> Result<LossScaler, Error> {
        opts.validate()?;
        Ok(LossScaler::new_dynamic(opts))
    }

    /// A static scale that never changes (steps with inf/NaN gradients are
    /// still skipped).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidScale`] unless `scale` is a positive normal `f32`.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut s = halfkern::train::LossScaler::fixed(1024.0)?;
    /// s.update(true);
    /// assert_eq!(s.scale(), 1024.0);
    /// # Ok::<(), halfkern::Error>(())
    /// ```
    pub fn fixed(scale: f32) -> Result<LossScaler, Error> {
        if !(scale.is_normal() && scale > 0.0) {
            return Err(Error::InvalidScale {
                op: "LossScaler::fixed",
                arg: "scale",
                value: scale,
            });
        }
        let opts = ScalerOptions {
            init_scale: scale,
            ..ScalerOptions::default()
        };
        Ok(LossScaler {
            mode: ScalerMode::Fixed,
            ..LossScaler::new_dynamic(opts)
        })
    }

    /// No loss scaling: the scale is 1 and never changes (for f32 and bf16
    /// training; steps with inf/NaN gradients are still skipped).
    pub fn disabled() -> LossScaler {
        let opts = ScalerOptions {
            init_scale: 1.0,
            ..ScalerOptions::default()
        };
        LossScaler {
            mode: ScalerMode::Disabled,
            ..LossScaler::new_dynamic(opts)
        }
    }

    /// The current scale: multiply the loss by it.
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// `1 / scale`, computed as torch does (`double` reciprocal, rounded
    /// to `f32`): multiply the gradients by it.
    pub fn inv_scale(&self) -> f32 {
        (1.0 / self.scale as f64) as f32
    }

    /// Whether it is dynamic, fixed or disabled.
    pub fn mode(&self) -> ScalerMode {
        self.mode
    }

    /// The options (for fixed and disabled scalers, defaults with
    /// `init_scale` set to the scale).
    pub fn options(&self) -> ScalerOptions {
        self.opts
    }

    /// Consecutive clean updates since the last growth or overflow
    /// (torch's `_growth_tracker`).
    pub fn growth_tracker(&self) -> u32 {
        self.growth_tracker
    }

    /// Overflows still tolerated before the next back-off.
    pub fn hysteresis_left(&self) -> u32 {
        self.hysteresis_left
    }

    /// Advances the state machine after a step: `found_nonfinite` says
    /// whether any gradient was inf/NaN (then the step was skipped).
    /// Fixed and disabled scalers ignore it.
    pub fn update(&mut self, found_nonfinite: bool) {
        if self.mode != ScalerMode::Dynamic {
            return;
        }
        let o = &self.opts;
        if found_nonfinite {
            self.growth_tracker = 0;
            if self.hysteresis_left > 1 {
                self.hysteresis_left -= 1;
            } else {
                // f32 * double, rounded once to f32, as torch; then the floor
                // (`max` also maps a 0 from a huge back-off to min_scale).
                let backed = (self.scale as f64 * o.backoff_factor) as f32;
                self.scale = backed.max(o.min_scale);
            }
        } else {
            self.hysteresis_left = o.hysteresis;
            let successful = self.growth_tracker + 1;
            if successful == o.growth_interval {
                let grown = (self.scale as f64 * o.growth_factor) as f32;
                // Do not grow past the f32 range (torch) nor past max_scale.
                if grown.is_finite() {
                    self.scale = grown.min(o.max_scale);
                }
                self.growth_tracker = 0;
            } else {
                self.growth_tracker = successful;
            }
        }
    }
}

impl LossScaler {
    /// Checks the invariants every scaler built by this module's
    /// constructors keeps through any sequence of updates (the checkpoint
    /// reader relies on it, and its module docs list them):
    ///
    /// - the options pass [`ScalerOptions::validate`];
    /// - dynamic: `min_scale <= scale <= max_scale` (so the scale is a
    ///   positive normal `f32`), `growth_tracker < growth_interval`,
    ///   `1 <= hysteresis_left <= hysteresis`;
    /// - fixed: the options are the defaults with `init_scale == scale`,
    ///   the tracker is 0 and `hysteresis_left == hysteresis` (nothing ever
    ///   moves them);
    /// - disabled: as fixed, with `scale == 1`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] naming the first field out of range.
    pub(crate) fn check_state(&self) -> Result<(), Error> {
        let bad = |arg: &'static str, reason: String| Err(Error::InvalidArgument { arg, reason });
        let o = &self.opts;
        o.validate()?;
        let s = self.scale;
        if !(s >= o.min_scale && s <= o.max_scale) {
            return bad(
                "scale",
                format!(
                    "must be in [min_scale, max_scale] = [{:e}, {:e}], got {s:e}",
                    o.min_scale, o.max_scale
                ),
            );
        }
        if self.mode != ScalerMode::Dynamic {
            let (name, want_scale) = match self.mode {
                ScalerMode::Disabled => ("a disabled", 1.0),
                _ => ("a fixed", s),
            };
            if s != want_scale {
                return bad(
                    "scale",
                    format!("{name} scaler's scale is always {want_scale:e}, got {s:e}"),
                );
            }
            let want = ScalerOptions {
                init_scale: s,
                ..ScalerOptions::default()
            };
            if *o != want {
                return bad(
                    "options",
                    format!(
                        "{name} scaler keeps the default options with init_scale = scale, got {o:?}"
                    ),
                );
            }
            if self.growth_tracker != 0 || self.hysteresis_left != o.hysteresis {
                return bad(
                    "growth_tracker",
                    format!(
                        "{name} scaler never updates: growth tracker 0 and hysteresis left {}, got {} and {}",
                        o.hysteresis, self.growth_tracker, self.hysteresis_left
                    ),
                );
            }
            return Ok(());
        }
        if self.growth_tracker >= o.growth_interval {
            return bad(
                "growth_tracker",
                format!(
                    "must be < growth_interval ({}), got {}",
                    o.growth_interval, self.growth_tracker
                ),
            );
        }
        if !(1..=o.hysteresis).contains(&self.hysteresis_left) {
            return bad(
                "hysteresis_left",
                format!(
                    "must be in [1, hysteresis] = [1, {}], got {}",
                    o.hysteresis, self.hysteresis_left
                ),
            );
        }
        Ok(())
    }
}

impl Default for LossScaler {
    /// [`LossScaler::dynamic`].
    fn default() -> LossScaler {
        LossScaler::dynamic()
    }
}
