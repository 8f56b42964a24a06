//! The speed workload and the failure rows of the `train` example.
//!
//! The digits MLP of `mlp.rs` steps in well under a millisecond, so its
//! step times say more about the scheduler than about the kernels. This file
//! trains the same digits on a model wide enough that matrix products
//! dominate a step: 64 -> 1024 -> 1024 -> 10 with batches of 256 images is
//! about 1.7 GFLOP per step (nine GEMMs), against one pass over 1.1 M
//! parameters for the update. All rows are trained in lockstep, one step of
//! each in turn on the same batches, so every row's step times are measured
//! interleaved with every other row's, under the same machine load, and two
//! rows can be compared step block by step block (`verdict.rs`).
//!
//! Beside the recipes halfkern recommends it trains one row per missing
//! safeguard, so that each lesson is seen, not just counted:
//!
//! - `f16-noscale`: f16 without loss scaling. Activation gradients below
//!   half f16's smallest subnormal (2^-25) flush to zero; the row counts
//!   them (see [`LOSS_WEIGHT`](crate::rows::LOSS_WEIGHT) for the gradients'
//!   scale).
//! - `f16-big` / `f16-big-noscale` / `bf16-big`: the inputs multiplied by
//!   [`BIG_INPUT_SCALE`](crate::rows::BIG_INPUT_SCALE), which pushes the hidden activations past f16's
//!   largest finite value (65504), as an unnormalized input or a growing
//!   residual stream does. The forward pass overflows, every gradient is
//!   NaN, and every step is skipped; the dynamic scaler backs off on each
//!   skip (down to its floor), which cannot help, because the overflow is
//!   in the activations, not in the scaled gradients. Without the scaler the
//!   trainer's inf/NaN check still skips the steps (it is not part of the
//!   scaler). bf16, with f32's range, trains at the same setting.
//! - `bf16-pure-rne`: bf16 weights, no f32 master copy, updates rounded to
//!   nearest. halfkern offers no such mode (`Precision::Pure` always rounds
//!   stochastically), so the row simulates it: `halfkern::train` updates an
//!   f32 copy of the bf16 weights (`Precision::Pure` on f32, where no
//!   rounding happens), and this file rounds the result to bf16 with
//!   `halfkern::convert` (nearest) and widens it back. `bf16-pure` goes
//!   through the same code with `halfkern::convert_stochastic`, so the two
//!   differ in the rounding alone; `Precision::Pure` does the same update
//!   and rounding in one fused pass (the digits check trains with it).
//!
//! bf16 products accumulated in bf16 are the fourth lesson; halfkern never
//! does that, so `accum.rs` measures it on this workload's own GEMM
//! operands against halfkern's f32 accumulation and an f64 reference.

use std::time::Instant;

use halfkern::train::{AdamW, Precision, Trainer};
use halfkern::{Activation, Bias, Element, Error, Gemm, MatMut, MatRef, bf16, f16};

use crate::accum::{Operands, to_bf16};
use crate::mlp::{CLASSES, Dataset, FEATURES, Rng};
use crate::rows::{Elem, GradRange, Memory, PureRounding, Row, RowResult, UpdateKeep, WideConfig};

/// AdamW's decoupled weight decay.
const WEIGHT_DECAY: f32 = 1e-4;

/// f16's smallest normal value, 2^-14.
const F16_MIN_NORMAL: f32 = 6.103_515_6e-5;

/// Where the lockstep run is, for a progress bar.
#[derive(Clone, Copy, Debug)]
pub struct WideProgress<'a> {
    /// Row steps done so far (all rows).
    pub done: usize,
    /// Row steps in all.
    pub total: usize,
    /// The row that just stepped.
    pub row: &'a str,
    /// Its loss on that step.
    pub loss: f32,
}

/// Trains `rows` in lockstep (one step of each in turn, the same batches
/// in the same order) and returns what each measured, in the order given.
///
/// # Errors
///
/// [`Error::InvalidArgument`] for a zero width, batch or step count, or a
/// batch larger than the training set; otherwise whatever halfkern returns.
pub fn train_rows(
    data: &Dataset,
    rows: &[Row],
    cfg: &WideConfig,
    progress: &mut dyn FnMut(&WideProgress<'_>),
) -> Result<Vec<RowResult>, Error> {
    let bad = |arg: &'static str, reason: String| Err(Error::InvalidArgument { arg, reason });
    if cfg.width == 0 || cfg.steps == 0 || cfg.eval_every == 0 {
        return bad(
            "width/steps",
            "width, steps and eval_every must be at least 1".into(),
        );
    }
    if cfg.batch == 0 || cfg.batch > data.train_len() {
        return bad(
            "batch",
            format!(
                "must be in 1..={} (the training images), got {}",
                data.train_len(),
                cfg.batch
            ),
        );
    }
    let mut runs: Vec<Box<dyn Trainee + '_>> = Vec::new();
    for &row in rows {
        runs.push(match row.elem() {
            Elem::F32 => Box::new(Run::<f32>::new(data, row, cfg)?),
            Elem::Bf16 => Box::new(Run::<bf16>::new(data, row, cfg)?),
            Elem::F16 => Box::new(Run::<f16>::new(data, row, cfg)?),
        });
    }
    // The same batches for every row: a fresh shuffle per pass over the
    // data, full batches only (the remainder of a pass is dropped).
    let mut order_rng = Rng::new(cfg.seed ^ 0x3DE7_0000_0000_0003);
    let mut order: Vec<usize> = (0..data.train_len()).collect();
    let per_pass = data.train_len() / cfg.batch;
    let total = cfg.steps * runs.len();
    let mut done = 0;
    for step in 0..cfg.steps {
        if step % per_pass == 0 {
            order_rng.shuffle(&mut order);
        }
        let k = step % per_pass;
        let batch = &order[k * cfg.batch..(k + 1) * cfg.batch];
        let lr = cfg.lr_at(step);
        for run in &mut runs {
            run.step(batch, lr)?;
            done += 1;
            progress(&WideProgress {
                done,
                total,
                row: run.row().name(),
                loss: run.last_loss(),
            });
        }
        if (step + 1) % cfg.eval_every == 0 || step + 1 == cfg.steps {
            for run in &mut runs {
                run.evaluate(step + 1)?;
            }
        }
    }
    Ok(runs.into_iter().map(|r| r.finish()).collect())
}

/// A row's run behind one type, so rows of different element types step in
/// one loop.
trait Trainee {
    fn row(&self) -> Row;
    fn step(&mut self, batch: &[usize], lr: f32) -> Result<(), Error>;
    fn last_loss(&self) -> f32;
    fn evaluate(&mut self, steps_done: usize) -> Result<(), Error>;
    fn finish(self: Box<Self>) -> RowResult;
}

/// One layer: `w` is `fan_in x fan_out` row-major, `b` one bias per output.
struct Layer<T> {
    w: Vec<T>,
    b: Vec<T>,
    fan_in: usize,
    fan_out: usize,
}

struct Run<'d, T> {
    data: &'d Dataset,
    row: Row,
    width: usize,
    layers: [Layer<T>; 3],
    train_x: Vec<T>,
    test_x: Vec<T>,
    x: Vec<T>,
    h1: Vec<T>,
    h2: Vec<T>,
    logits: Vec<f32>,
    dlogits: Vec<f32>,
    dz3: Vec<T>,
    dz2: Vec<T>,
    dz1: Vec<T>,
    ones: Vec<T>,
    bias: [Vec<f32>; 3],
    grads: [Vec<f32>; 6],
    trainer: Trainer,
    /// Pure rows: the f32 copy of the bf16 weights that the trainer updates
    /// in place (see the module docs).
    pure: Option<(PureRounding, Vec<Vec<f32>>)>,
    seed: u64,
    loss_weight: f32,
    steps_done: u64,
    total_steps: u64,
    result: RowResult,
}

impl<'d, T: Element> Run<'d, T> {
    fn new(data: &'d Dataset, row: Row, cfg: &WideConfig) -> Result<Run<'d, T>, Error> {
        let w = cfg.width;
        // The same f32 initial weights for every row (He-uniform), rounded
        // to nearest into T.
        let mut rng = Rng::new(cfg.seed ^ 0x3141_5926_0000_0001);
        let mut layers = Vec::new();
        for (fan_in, fan_out) in [(FEATURES, w), (w, w), (w, CLASSES)] {
            let bound = (6.0 / fan_in as f64).sqrt();
            let w32: Vec<f32> = (0..fan_in * fan_out)
                .map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32)
                .collect();
            let mut wt = vec![T::default(); w32.len()];
            halfkern::convert(&w32, &mut wt)?;
            layers.push(Layer {
                w: wt,
                b: vec![T::default(); fan_out],
                fan_in,
                fan_out,
            });
        }
        let layers: [Layer<T>; 3] = layers.try_into().ok().expect("three layers");
        let scale = row.input_scale();
        let scaled = |x: &[f32]| -> Result<Vec<T>, Error> {
            let x32: Vec<f32> = x.iter().map(|v| v * scale).collect();
            let mut t = vec![T::default(); x32.len()];
            halfkern::convert(&x32, &mut t)?;
            Ok(t)
        };
        let train_x = scaled(&data.train_x)?;
        let test_x = scaled(&data.test_x)?;
        let m = cfg.batch.max(data.test_len());
        let params: Vec<&[T]> = layers.iter().flat_map(|l| [&l.w[..], &l.b[..]]).collect();
        let optimizer = AdamW::new(cfg.lr).weight_decay(WEIGHT_DECAY);
        let (trainer, pure) = match row.pure_rounding() {
            // Pure rows: the trainer updates an f32 copy without a master
            // (nothing to round in f32); `apply_pure` rounds it to bf16.
            Some(rounding) => {
                let copy: Vec<Vec<f32>> = params
                    .iter()
                    .map(|p| p.iter().map(|v| v.to_f32()).collect())
                    .collect();
                let trainer = Trainer::builder(optimizer)
                    .precision(Precision::Pure)
                    .scaler(row.scaler())
                    .seed(cfg.seed)
                    .build(&copy)?;
                (trainer, Some((rounding, copy)))
            }
            None => {
                // f32 weights need no master copy: `Pure` on f32 updates them
                // in place, with nothing to round.
                let precision = if row == Row::F32 {
                    Precision::Pure
                } else {
                    Precision::default()
                };
                let trainer = Trainer::builder(optimizer)
                    .precision(precision)
                    .scaler(row.scaler())
                    .seed(cfg.seed)
                    .build(&params)?;
                (trainer, None)
            }
        };
        let result = RowResult {
            row,
            loss: Vec::with_capacity(cfg.steps),
            scale: Vec::with_capacity(cfg.steps),
            accuracy: Vec::new(),
            step_secs: Vec::with_capacity(cfg.steps),
            skipped: 0,
            final_scale: trainer.scale(),
            grad_range: matches!(row, Row::F16 | Row::F16NoScaling).then(GradRange::default),
            updates: pure.as_ref().map(|_| UpdateKeep::default()),
            memory: Memory::of(row, cfg),
            operands: Vec::new(),
        };
        Ok(Run {
            data,
            row,
            width: w,
            layers,
            train_x,
            test_x,
            x: vec![T::default(); cfg.batch * FEATURES],
            h1: vec![T::default(); m * w],
            h2: vec![T::default(); m * w],
            logits: vec![0.0; m * CLASSES],
            dlogits: vec![0.0; cfg.batch * CLASSES],
            dz3: vec![T::default(); cfg.batch * CLASSES],
            dz2: vec![T::default(); cfg.batch * w],
            dz1: vec![T::default(); cfg.batch * w],
            ones: vec![T::from_f32(1.0); cfg.batch],
            bias: [vec![0.0; w], vec![0.0; w], vec![0.0; CLASSES]],
            grads: [
                vec![0.0; FEATURES * w],
                vec![0.0; w],
                vec![0.0; w * w],
                vec![0.0; w],
                vec![0.0; w * CLASSES],
                vec![0.0; CLASSES],
            ],
            trainer,
            pure,
            seed: cfg.seed,
            loss_weight: cfg.loss_weight,
            steps_done: 0,
            total_steps: cfg.steps as u64,
            result,
        })
    }

    /// Hidden activations in T (bias and ReLU fused), logits in f32, for
    /// the `m` rows of `x`.
    fn forward(&mut self, test: bool, m: usize) -> Result<(), Error> {
        for (layer, b32) in self.layers.iter().zip(&mut self.bias) {
            halfkern::convert(&layer.b, b32)?;
        }
        let w = self.width;
        let x = if test { &self.test_x[..] } else { &self.x[..] };
        let [l1, l2, l3] = &self.layers;
        let relu = |bias| {
            Gemm::new()
                .bias(Bias::PerCol(bias))
                .activation(Activation::Relu)
        };
        gemm(
            view(&x[..m * FEATURES], m, FEATURES)?,
            weights(l1)?,
            &mut self.h1[..m * w],
            &relu(&self.bias[0]),
        )?;
        gemm(
            view(&self.h1[..m * w], m, w)?,
            weights(l2)?,
            &mut self.h2[..m * w],
            &relu(&self.bias[1]),
        )?;
        gemm(
            view(&self.h2[..m * w], m, w)?,
            weights(l3)?,
            &mut self.logits[..m * CLASSES],
            &Gemm::new().bias(Bias::PerCol(&self.bias[2])),
        )
    }

    fn step_inner(&mut self, batch: &[usize], lr: f32) -> Result<(), Error> {
        let (m, w) = (batch.len(), self.width);
        for (row, &i) in batch.iter().enumerate() {
            self.x[row * FEATURES..(row + 1) * FEATURES]
                .copy_from_slice(&self.train_x[i * FEATURES..(i + 1) * FEATURES]);
        }
        self.forward(false, m)?;
        self.trainer.set_lr(lr)?;
        let scale = self.trainer.scale();
        let inv_scale = self.trainer.scaler().inv_scale();
        let labels: Vec<u8> = batch.iter().map(|&i| self.data.train_y[i]).collect();
        let loss = softmax_xent(
            &self.logits[..m * CLASSES],
            &labels,
            scale * self.loss_weight,
            &mut self.dlogits,
        );
        halfkern::convert(&self.dlogits, &mut self.dz3)?;
        if let Some(r) = &mut self.result.grad_range {
            count_range(r, &self.dz3, None);
        }

        // Backward: weight gradients in f32, unscaled in the epilogue;
        // activation gradients in T, still scaled.
        let unscaled = Gemm::new().unscale(inv_scale);
        let [_, l2, l3] = &self.layers;
        let [gw1, gb1, gw2, gb2, gw3, gb3] = &mut self.grads;
        let ones = view(&self.ones[..m], 1, m)?;
        let dz3 = view(&self.dz3, m, CLASSES)?;
        gemm(view(&self.h2[..m * w], m, w)?.t(), dz3, gw3, &unscaled)?;
        gemm(ones, dz3, gb3, &unscaled)?;
        gemm(dz3, weights(l3)?.t(), &mut self.dz2, &Gemm::new())?;
        if let Some(r) = &mut self.result.grad_range {
            count_range(r, &self.dz2, Some(&self.h2[..m * w]));
        }
        relu_backward(&mut self.dz2, &self.h2[..m * w]);
        let dz2 = view(&self.dz2, m, w)?;
        gemm(view(&self.h1[..m * w], m, w)?.t(), dz2, gw2, &unscaled)?;
        gemm(ones, dz2, gb2, &unscaled)?;
        gemm(dz2, weights(l2)?.t(), &mut self.dz1, &Gemm::new())?;
        if let Some(r) = &mut self.result.grad_range {
            count_range(r, &self.dz1, Some(&self.h1[..m * w]));
        }
        relu_backward(&mut self.dz1, &self.h1[..m * w]);
        let dz1 = view(&self.dz1, m, w)?;
        gemm(view(&self.x, m, FEATURES)?.t(), dz1, gw1, &unscaled)?;
        gemm(ones, dz1, gb1, &unscaled)?;
        if self.row == Row::Bf16 && self.steps_done + 1 == self.total_steps {
            self.result.operands = self.operands(m)?;
        }

        let report = match &mut self.pure {
            None => {
                let [l1, l2, l3] = &mut self.layers;
                let mut params: [&mut [T]; 6] = [
                    &mut l1.w, &mut l1.b, &mut l2.w, &mut l2.b, &mut l3.w, &mut l3.b,
                ];
                self.trainer
                    .begin()
                    .check_unscaled(&self.grads)?
                    .apply(&mut params)?
            }
            Some((rounding, copy)) => {
                let report = self
                    .trainer
                    .begin()
                    .check_unscaled(&self.grads)?
                    .apply(copy)?;
                if report.applied {
                    let keep = self.result.updates.get_or_insert_default();
                    let [l1, l2, l3] = &mut self.layers;
                    let params: [&mut [T]; 6] = [
                        &mut l1.w, &mut l1.b, &mut l2.w, &mut l2.b, &mut l3.w, &mut l3.b,
                    ];
                    for (i, (model, p)) in params.into_iter().zip(copy.iter_mut()).enumerate() {
                        let seed = self.seed ^ (self.steps_done << 8) ^ i as u64;
                        round_pure(*rounding, p, model, seed, keep)?;
                    }
                }
                report
            }
        };
        self.steps_done += 1;
        self.result.loss.push(loss);
        self.result.scale.push(scale);
        self.result.skipped += usize::from(!report.applied);
        self.result.final_scale = report.scale_after;
        Ok(())
    }
}

impl<T: Element> Run<'_, T> {
    /// Layer 2's forward product (`h1 * W2`, k = width) and weight
    /// gradient (`h1^T * dz2`, k = batch) of the current step, in bf16.
    fn operands(&self, m: usize) -> Result<Vec<Operands>, Error> {
        let w = self.width;
        let h1 = to_bf16(&self.h1[..m * w])?;
        let mut h1t = vec![bf16::ZERO; m * w];
        for i in 0..m {
            for j in 0..w {
                h1t[j * m + i] = h1[i * w + j];
            }
        }
        Ok(vec![
            Operands {
                name: "layer 2 forward, h1 * W2",
                a: h1,
                b: to_bf16(&self.layers[1].w)?,
                m,
                k: w,
                n: w,
            },
            Operands {
                name: "layer 2 weight gradient, h1^T * dz2",
                a: h1t,
                b: to_bf16(&self.dz2)?,
                m: w,
                k: m,
                n: w,
            },
        ])
    }
}

impl<T: Element> Trainee for Run<'_, T> {
    fn row(&self) -> Row {
        self.row
    }

    fn step(&mut self, batch: &[usize], lr: f32) -> Result<(), Error> {
        let start = Instant::now();
        self.step_inner(batch, lr)?;
        self.result.step_secs.push(start.elapsed().as_secs_f64());
        Ok(())
    }

    fn last_loss(&self) -> f32 {
        self.result.loss.last().copied().unwrap_or(f32::NAN)
    }

    fn evaluate(&mut self, steps_done: usize) -> Result<(), Error> {
        let m = self.data.test_len();
        self.forward(true, m)?;
        let correct = self.logits[..m * CLASSES]
            .chunks(CLASSES)
            .zip(&self.data.test_y)
            .filter(|(z, y)| argmax(z) == Some(usize::from(**y)))
            .count();
        self.result
            .accuracy
            .push((steps_done, correct as f64 / m as f64));
        Ok(())
    }

    fn finish(self: Box<Self>) -> RowResult {
        self.result
    }
}

/// Rounds the trainer's f32 result `p` into the bf16 model `model` (to
/// nearest or stochastically), counts what the rounding kept of each
/// update, and widens the model back into `p` for the next step.
fn round_pure<T: Element>(
    rounding: PureRounding,
    p: &mut [f32],
    model: &mut [T],
    seed: u64,
    keep: &mut UpdateKeep,
) -> Result<(), Error> {
    let mut old = vec![0f32; model.len()];
    halfkern::convert(model, &mut old)?;
    match rounding {
        PureRounding::Nearest => halfkern::convert(p, model)?,
        PureRounding::Stochastic => halfkern::convert_stochastic(p, model, seed)?,
    }
    let mut new = vec![0f32; model.len()];
    halfkern::convert(model, &mut new)?;
    for ((&o, &n), &asked) in old.iter().zip(&new).zip(p.iter()) {
        let d = f64::from(asked) - f64::from(o);
        if d != 0.0 {
            keep.asked += 1;
            keep.lost += u64::from(n == o);
            keep.sum_asked += d.abs();
            keep.sum_made += (f64::from(n) - f64::from(o)) * d.signum();
        }
    }
    p.copy_from_slice(&new);
    Ok(())
}

/// Counts the values of an f16 activation gradient that flow (where `h`,
/// the layer's ReLU output, is positive; everywhere when `h` is `None`),
/// and how many of them are stored as zero or as subnormals.
fn count_range<T: Element>(r: &mut GradRange, dz: &[T], h: Option<&[T]>) {
    for (i, v) in dz.iter().enumerate() {
        if h.is_some_and(|h| h[i].to_f32() <= 0.0) {
            continue;
        }
        let v = v.to_f32().abs();
        r.live += 1;
        r.zero += u64::from(v == 0.0);
        r.subnormal += u64::from(v != 0.0 && v < F16_MIN_NORMAL);
    }
}

/// Mean softmax cross-entropy of the rows of `logits` (f32), and its
/// gradient times `scale` in `dlogits`. NaN when a logit is not finite.
fn softmax_xent(logits: &[f32], labels: &[u8], scale: f32, dlogits: &mut [f32]) -> f32 {
    let m = labels.len();
    let mut loss = 0.0f64;
    for (row, &label) in labels.iter().enumerate() {
        let z = &logits[row * CLASSES..(row + 1) * CLASSES];
        let g = &mut dlogits[row * CLASSES..(row + 1) * CLASSES];
        let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f32;
        for (g, &z) in g.iter_mut().zip(z) {
            *g = (z - max).exp();
            sum += *g;
        }
        let label = usize::from(label);
        loss += f64::from(sum.ln() - (z[label] - max));
        for (c, g) in g.iter_mut().enumerate() {
            let y = if c == label { 1.0 } else { 0.0 };
            *g = (*g / sum - y) * (scale / m as f32);
        }
    }
    (loss / m as f64) as f32
}

fn relu_backward<T: Element>(dz: &mut [T], h: &[T]) {
    for (d, h) in dz.iter_mut().zip(h) {
        if h.to_f32() <= 0.0 {
            *d = T::default();
        }
    }
}

/// Index of the largest logit; `None` when any is NaN (an overflowed
/// forward pass classifies nothing).
fn argmax(z: &[f32]) -> Option<usize> {
    if z.iter().any(|v| v.is_nan()) {
        return None;
    }
    let mut best = 0;
    for (i, &v) in z.iter().enumerate() {
        if v > z[best] {
            best = i;
        }
    }
    Some(best)
}

fn view<T: Element>(data: &[T], rows: usize, cols: usize) -> Result<MatRef<'_, T>, Error> {
    MatRef::row_major(data, rows, cols)
}

fn weights<T: Element>(l: &Layer<T>) -> Result<MatRef<'_, T>, Error> {
    MatRef::row_major(&l.w, l.fan_in, l.fan_out)
}

/// `c <- a * b` (row-major `c`), the epilogue in `params`.
fn gemm<T: Element, U: Element>(
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    c: &mut [U],
    params: &Gemm<'_>,
) -> Result<(), Error> {
    let (m, n) = (a.rows(), b.cols());
    halfkern::gemm(a, b, MatMut::row_major(c, m, n)?, params).map(|_| ())
}
