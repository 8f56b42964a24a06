//! The rows of the wide workload (`wide.rs`) and what each measures: the
//! recipe or missing safeguard of each row, the workload's configuration,
//! and the per-row results (loss, step times, gradient range, what the
//! rounding kept of the updates, memory). Plain data, apart from the
//! training loop, so the report and the tests read it without training.

use halfkern::train::LossScaler;

use crate::accum::Operands;
use crate::mlp::{CLASSES, FEATURES};

/// What the `*-big` rows multiply the inputs (pixels in `0..=1`) by: the
/// first hidden layer then reaches a few times 65504 at initialization.
/// The scaled pixels themselves (at most 2^15) are still finite in f16.
pub const BIG_INPUT_SCALE: f32 = 32768.0;

/// The default [`WideConfig::loss_weight`], 2^-12. On a three-layer MLP
/// whose loss is the mean over 256 images, activation gradients are large:
/// f16 without loss scaling flushes a third of them to zero and AdamW still
/// ends at f32's loss (`--loss-weight 1` shows it). Gradients are that much
/// smaller where the loss is a per-token mean over thousands of tokens, a
/// small term of a weighted sum, or divided over many accumulation steps,
/// which is where f16 without scaling is known to fail. Every row uses the
/// same weight; AdamW's update does not depend on the gradient's scale
/// (except through its `eps`), so the f32 and bf16 rows train as at 1.
pub const LOSS_WEIGHT: f32 = 1.0 / 4096.0;

/// One row of the wide workload: a recipe, or a recipe with one safeguard
/// removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Row {
    /// f32 everywhere (weights updated in place, no master copy).
    F32,
    /// bf16 model, f32 master weights, no loss scaling.
    Bf16,
    /// f16 model, f32 master weights, dynamic loss scaling.
    F16,
    /// bf16 only, stochastic rounding of every update.
    Bf16Pure,
    /// f16 with f32 master weights and no loss scaling.
    F16NoScaling,
    /// f16 with dynamic loss scaling, inputs times [`BIG_INPUT_SCALE`].
    F16Big,
    /// f16 without loss scaling, inputs times [`BIG_INPUT_SCALE`].
    F16BigNoScaling,
    /// bf16 with f32 master weights, inputs times [`BIG_INPUT_SCALE`].
    Bf16Big,
    /// bf16 only, every update rounded to nearest (simulated).
    Bf16PureNearest,
}

/// The element type a row computes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elem {
    /// 4 bytes.
    F32,
    /// 2 bytes, 8 exponent bits.
    Bf16,
    /// 2 bytes, 5 exponent bits.
    F16,
}

impl Elem {
    /// Bytes per value.
    pub const fn bytes(self) -> usize {
        match self {
            Elem::F32 => 4,
            Elem::Bf16 | Elem::F16 => 2,
        }
    }
}

impl Row {
    /// The rows with a safeguard removed (or, for `bf16-big`, the setting
    /// that breaks f16, in bf16).
    pub const FAILURES: [Row; 5] = [
        Row::F16NoScaling,
        Row::F16Big,
        Row::F16BigNoScaling,
        Row::Bf16Big,
        Row::Bf16PureNearest,
    ];
    /// Every row, in table order.
    pub const ALL: [Row; 9] = [
        Row::F32,
        Row::Bf16,
        Row::F16,
        Row::Bf16Pure,
        Row::F16NoScaling,
        Row::F16Big,
        Row::F16BigNoScaling,
        Row::Bf16Big,
        Row::Bf16PureNearest,
    ];

    /// The name in the table, the plot and `--json`.
    pub const fn name(self) -> &'static str {
        match self {
            Row::F32 => "f32",
            Row::Bf16 => "bf16",
            Row::F16 => "f16",
            Row::Bf16Pure => "bf16-pure",
            Row::F16NoScaling => "f16-noscale",
            Row::F16Big => "f16-big",
            Row::F16BigNoScaling => "f16-big-noscale",
            Row::Bf16Big => "bf16-big",
            Row::Bf16PureNearest => "bf16-pure-rne",
        }
    }

    /// One line on what the row does.
    pub const fn describe(self) -> &'static str {
        match self {
            Row::F32 => "f32 everywhere",
            Row::Bf16 => "bf16 model, f32 master weights",
            Row::F16 => "f16 model, f32 master weights, dynamic loss scaling",
            Row::Bf16Pure => "bf16 only, stochastic rounding",
            Row::F16NoScaling => "f16, master weights, NO loss scaling",
            Row::F16Big => "f16, dynamic loss scaling, inputs x 32768",
            Row::F16BigNoScaling => "f16, NO loss scaling, inputs x 32768",
            Row::Bf16Big => "bf16, master weights, inputs x 32768",
            Row::Bf16PureNearest => "bf16 only, round to nearest (simulated)",
        }
    }

    /// Whether the row removes a safeguard (or shows the setting that
    /// breaks f16).
    pub fn is_failure(self) -> bool {
        Row::FAILURES.contains(&self)
    }

    /// The element type of the model, activations and activation
    /// gradients.
    pub const fn elem(self) -> Elem {
        match self {
            Row::F32 => Elem::F32,
            Row::Bf16 | Row::Bf16Pure | Row::Bf16Big | Row::Bf16PureNearest => Elem::Bf16,
            Row::F16 | Row::F16NoScaling | Row::F16Big | Row::F16BigNoScaling => Elem::F16,
        }
    }

    /// Whether the row keeps f32 master weights.
    pub const fn has_master(self) -> bool {
        matches!(
            self,
            Row::Bf16
                | Row::F16
                | Row::F16NoScaling
                | Row::F16Big
                | Row::F16BigNoScaling
                | Row::Bf16Big
        )
    }

    /// The loss scaler the row trains with.
    pub fn scaler(self) -> LossScaler {
        match self {
            Row::F16 | Row::F16Big => LossScaler::dynamic(),
            _ => LossScaler::disabled(),
        }
    }

    /// What the row multiplies the inputs by.
    pub fn input_scale(self) -> f32 {
        match self {
            Row::F16Big | Row::F16BigNoScaling | Row::Bf16Big => BIG_INPUT_SCALE,
            _ => 1.0,
        }
    }

    /// How a pure row rounds its updates (`None`: the trainer writes the
    /// model itself).
    pub fn pure_rounding(self) -> Option<PureRounding> {
        match self {
            Row::Bf16Pure => Some(PureRounding::Stochastic),
            Row::Bf16PureNearest => Some(PureRounding::Nearest),
            _ => None,
        }
    }
}

/// How a pure row rounds the updated weights to bf16.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PureRounding {
    /// `halfkern::convert`: to nearest, ties to even.
    Nearest,
    /// `halfkern::convert_stochastic`.
    Stochastic,
}

/// The wide workload's hyper-parameters, shared by every row.
#[derive(Clone, Debug)]
pub struct WideConfig {
    /// Width of both hidden layers.
    pub width: usize,
    /// Images per step (every step has a full batch).
    pub batch: usize,
    /// Optimizer steps per row.
    pub steps: usize,
    /// AdamW's peak learning rate (linear warm-up over the first 10% of
    /// the steps, then cosine decay to 1% of it).
    pub lr: f32,
    /// Initial weights, data order, stochastic rounding.
    pub seed: u64,
    /// Steps between two test-set evaluations.
    pub eval_every: usize,
    /// Multiplies the loss before the backward pass (not the loss that is
    /// reported); see [`LOSS_WEIGHT`].
    pub loss_weight: f32,
}

impl Default for WideConfig {
    fn default() -> WideConfig {
        WideConfig {
            width: 1024,
            batch: 256,
            steps: 80,
            lr: 1e-3,
            seed: 42,
            eval_every: 10,
            loss_weight: LOSS_WEIGHT,
        }
    }
}

impl WideConfig {
    /// Multiply-adds of one training step (forward, activation gradients,
    /// weight gradients), times two: FLOP.
    pub fn flop_per_step(&self) -> f64 {
        let (b, w) = (self.batch as f64, self.width as f64);
        let macs = b * (FEATURES as f64 * w + w * w + w * CLASSES as f64);
        // Forward, weight gradients, activation gradients (all but layer 1).
        2.0 * macs * 3.0 - 2.0 * b * FEATURES as f64 * w
    }

    /// Number of parameters (weights and biases).
    pub fn params(&self) -> usize {
        let w = self.width;
        FEATURES * w + w + w * w + w + w * CLASSES + CLASSES
    }

    /// The learning rate of step `step` (0-based).
    pub fn lr_at(&self, step: usize) -> f32 {
        let warm = (self.steps / 10).max(1);
        let lr = f64::from(self.lr);
        let f = if step < warm {
            (step + 1) as f64 / warm as f64
        } else {
            let t = (step - warm) as f64 / (self.steps - warm).max(1) as f64;
            0.01 + 0.99 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
        };
        (lr * f) as f32
    }
}

/// Bytes per parameter of one row's training state, and the activation
/// bytes of one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Memory {
    /// The model's weights as the GEMMs read them.
    pub weights: usize,
    /// Weight gradients (f32 here: the weight-gradient GEMMs write f32 and
    /// unscale in their epilogue).
    pub grads: usize,
    /// The trainer's f32 master copy (0 where there is none).
    pub master: usize,
    /// AdamW's two f32 moments.
    pub moments: usize,
    /// Activations and activation gradients of one step at the configured
    /// batch, in bytes (not per parameter).
    pub activations: usize,
}

impl Memory {
    /// The row's bytes at this configuration.
    pub fn of(row: Row, cfg: &WideConfig) -> Memory {
        let s = row.elem().bytes();
        let (b, w) = (cfg.batch, cfg.width);
        // x, h1, h2 and the activation gradients dz3, dz2, dz1 in the row's
        // type; logits and their gradient in f32.
        let activations = s * b * (FEATURES + 2 * w + CLASSES + 2 * w) + 4 * 2 * b * CLASSES;
        Memory {
            weights: s,
            grads: 4,
            master: if row.has_master() { 4 } else { 0 },
            moments: 8,
            activations,
        }
    }

    /// Bytes per parameter, activations aside.
    pub fn per_param(&self) -> usize {
        self.weights + self.grads + self.master + self.moments
    }
}

/// f16 activation gradients measured against f16's range: the values
/// that flow (not masked by ReLU), and of those how many were stored as
/// zero or as subnormals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GradRange {
    /// Live activation-gradient values looked at.
    pub live: u64,
    /// Of those, stored as zero: flushed (their f32 value was not zero).
    pub zero: u64,
    /// Of those, stored as f16 subnormals (fewer significant bits).
    pub subnormal: u64,
}

impl GradRange {
    /// Percentage of live values flushed to zero.
    pub fn zero_pct(&self) -> f64 {
        100.0 * self.zero as f64 / self.live.max(1) as f64
    }

    /// Percentage of live values stored as subnormals.
    pub fn subnormal_pct(&self) -> f64 {
        100.0 * self.subnormal as f64 / self.live.max(1) as f64
    }
}

/// What the rounding of a pure row kept of the updates.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct UpdateKeep {
    /// Weight updates the optimizer asked for (nonzero), over all steps.
    pub asked: u64,
    /// Of those, rounded away: the bf16 weight did not change.
    pub lost: u64,
    /// Sum of |update asked|.
    pub sum_asked: f64,
    /// Sum of the update made, signed along the one asked.
    pub sum_made: f64,
}

impl UpdateKeep {
    /// Percentage of updates rounded away.
    pub fn lost_pct(&self) -> f64 {
        100.0 * self.lost as f64 / self.asked.max(1) as f64
    }

    /// The fraction of the asked movement that was made (1 = all of it;
    /// stochastic rounding gives 1 in expectation).
    pub fn kept(&self) -> f64 {
        if self.sum_asked > 0.0 {
            self.sum_made / self.sum_asked
        } else {
            1.0
        }
    }
}

/// What one row measured.
#[derive(Clone, Debug)]
pub struct RowResult {
    /// The row.
    pub row: Row,
    /// The mean batch loss of each step (NaN where the forward pass
    /// overflowed).
    pub loss: Vec<f32>,
    /// The loss scale each step's gradients were computed with.
    pub scale: Vec<f32>,
    /// (steps done, test accuracy) at each evaluation.
    pub accuracy: Vec<(usize, f64)>,
    /// Wall time of each step, seconds.
    pub step_secs: Vec<f64>,
    /// Steps skipped because a gradient was inf or NaN.
    pub skipped: usize,
    /// Loss scale after the last step.
    pub final_scale: f32,
    /// f16 rows: activation gradients against f16's range.
    pub grad_range: Option<GradRange>,
    /// Pure rows: what the rounding kept of the updates.
    pub updates: Option<UpdateKeep>,
    /// Training state and activation bytes.
    pub memory: Memory,
    /// The bf16 row only: two of its GEMMs' operands at the last step
    /// (layer 2's forward product and its weight gradient), for
    /// `accum::growth`.
    pub operands: Vec<Operands>,
}

impl RowResult {
    /// The mean loss of the last `n` steps (NaN if any was NaN).
    pub fn final_loss(&self, n: usize) -> f32 {
        let tail = &self.loss[self.loss.len().saturating_sub(n)..];
        tail.iter().sum::<f32>() / tail.len().max(1) as f32
    }

    /// The last test accuracy.
    pub fn final_accuracy(&self) -> f64 {
        self.accuracy.last().map_or(0.0, |a| a.1)
    }
}
