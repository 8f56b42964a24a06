//! The training code of the `train` example: the digits data, a
//! 64 -> 256 -> 256 -> 10 MLP, and one training run per precision.
//!
//! This file is shared, not copied: `examples/train/main.rs` adds the
//! command line, progress bar, table and plot around it, and
//! `tests/train_example.rs` includes it with `#[path]` and trains every
//! precision on a small budget. It lives beside the example rather than in
//! the crate because it is a user of halfkern, not part of it: everything it
//! does goes through halfkern's public API, which is the point of the
//! example.
//!
//! What runs in the precision under test: the weights and biases the model
//! computes with, the activations, and the activation gradients. What is
//! always f32: the products' accumulation (inside `halfkern::gemm`), the
//! logits and the loss, the weight gradients (the weight-gradient GEMMs
//! write them in f32 and unscale them in their epilogue, so
//! `halfkern::train`'s `check_unscaled` only counts inf/NaN and sums squares,
//! and the update uses them as they are), the master weights where the
//! precision has them, and the AdamW moments.

use std::time::Instant;

use halfkern::train::{AdamW, LossScaler, Precision, StepReport, Trainer, TrainerBuilder};
use halfkern::{Activation, Bias, Element, Error, Gemm, MatMut, MatRef, bf16, f16};

/// Pixels per image (8x8).
pub const FEATURES: usize = 64;
/// Width of both hidden layers.
pub const HIDDEN: usize = 256;
/// Digits 0..=9.
pub const CLASSES: usize = 10;

/// The vendored dataset (see `examples/data/README.md`).
const DIGITS_CSV: &str = include_str!("../data/digits.csv");

/// The train/test split does not depend on `--seed`: every run, whatever
/// its seed, is measured on the same 20% of held-out images.
const SPLIT_SEED: u64 = 0x0D16_175E_ED00_2026;

/// Fraction of the images held out for testing.
const TEST_FRACTION: f64 = 0.2;

// ---------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------

/// The digits, split into a training and a held-out test set. Pixels are
/// scaled from `0..=16` to `0..=1` (exact in bf16 and f16: k/16 needs at most
/// 5 significant bits).
#[derive(Clone, Debug)]
pub struct Dataset {
    /// Training images, row-major, `FEATURES` values each.
    pub train_x: Vec<f32>,
    /// Training labels.
    pub train_y: Vec<u8>,
    /// Test images, row-major.
    pub test_x: Vec<f32>,
    /// Test labels.
    pub test_y: Vec<u8>,
}

impl Dataset {
    /// Number of training images.
    pub fn train_len(&self) -> usize {
        self.train_y.len()
    }

    /// Number of test images.
    pub fn test_len(&self) -> usize {
        self.test_y.len()
    }
}

/// Parses the vendored CSV and splits it 80/20 with a fixed seed.
///
/// # Errors
///
/// A message naming the line and field when the CSV is malformed.
pub fn load_digits() -> Result<Dataset, String> {
    let (x, y) = parse_digits(DIGITS_CSV)?;
    Ok(split(&x, &y))
}

/// Parses lines of 64 pixels in `0..=16` and a label in `0..=9`.
fn parse_digits(csv: &str) -> Result<(Vec<f32>, Vec<u8>), String> {
    let mut x = Vec::new();
    let mut y = Vec::new();
    for (line_no, line) in csv.lines().enumerate() {
        let line_no = line_no + 1;
        if line.trim().is_empty() {
            continue;
        }
        let mut fields = 0;
        for (i, field) in line.split(',').enumerate() {
            let v: u8 = field
                .trim()
                .parse()
                .map_err(|e| format!("digits.csv line {line_no}, field {}: {e}", i + 1))?;
            match i {
                0..FEATURES if v <= 16 => x.push(f32::from(v) / 16.0),
                FEATURES if (v as usize) < CLASSES => y.push(v),
                0..=FEATURES => {
                    return Err(format!(
                        "digits.csv line {line_no}, field {}: {v} out of range",
                        i + 1
                    ));
                }
                _ => {}
            }
            fields += 1;
        }
        if fields != FEATURES + 1 {
            return Err(format!(
                "digits.csv line {line_no}: {fields} fields, expected {}",
                FEATURES + 1
            ));
        }
    }
    if y.is_empty() {
        return Err("digits.csv holds no images".into());
    }
    Ok((x, y))
}

/// A seeded Fisher-Yates shuffle of the image indices, then the first 20%
/// are the test set.
fn split(x: &[f32], y: &[u8]) -> Dataset {
    let n = y.len();
    let mut order: Vec<usize> = (0..n).collect();
    Rng::new(SPLIT_SEED).shuffle(&mut order);
    let n_test = (n as f64 * TEST_FRACTION).round() as usize;
    let gather = |idx: &[usize]| {
        let xs = idx
            .iter()
            .flat_map(|&i| x[i * FEATURES..(i + 1) * FEATURES].iter().copied())
            .collect();
        let ys = idx.iter().map(|&i| y[i]).collect();
        (xs, ys)
    };
    let (test_x, test_y) = gather(&order[..n_test]);
    let (train_x, train_y) = gather(&order[n_test..]);
    Dataset {
        train_x,
        train_y,
        test_x,
        test_y,
    }
}

/// SplitMix64: seeds, shuffles and the initial weights. Small, and good
/// enough for all three.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..n` (n > 0), by rejection so it is unbiased.
    fn below(&mut self, n: usize) -> usize {
        let n = n as u64;
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let r = self.next_u64();
            if r < zone {
                return (r % n) as usize;
            }
        }
    }

    /// Fisher-Yates.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

// ---------------------------------------------------------------------------
// Precisions and configuration
// ---------------------------------------------------------------------------

/// A training recipe: what the model is stored and computed in, and how
/// its updates are kept (f32 master weights or stochastic rounding) and
/// scaled. Each maps onto the library's `train::Precision` and a
/// `LossScaler`; named apart from `Precision` so the two never mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Recipe {
    /// Everything in f32: the reference.
    F32,
    /// bf16 weights, activations and activation gradients; f32 master
    /// weights; no loss scaling (bf16 has f32's range).
    Bf16,
    /// f16 weights, activations and activation gradients; f32 master
    /// weights; dynamic loss scaling.
    F16,
    /// bf16 only: no master copy, every update rounded stochastically.
    Bf16Pure,
}

impl Recipe {
    /// Every precision, in the order the table shows them.
    pub const ALL: [Recipe; 4] = [Recipe::F32, Recipe::Bf16, Recipe::F16, Recipe::Bf16Pure];

    /// The name used on the command line and in the table.
    pub const fn name(self) -> &'static str {
        match self {
            Recipe::F32 => "f32",
            Recipe::Bf16 => "bf16",
            Recipe::F16 => "f16",
            Recipe::Bf16Pure => "bf16-pure",
        }
    }

    /// One line on what the precision stores.
    pub const fn describe(self) -> &'static str {
        match self {
            Recipe::F32 => "f32 everywhere",
            Recipe::Bf16 => "bf16 model, f32 master weights",
            Recipe::F16 => "f16 model, f32 master weights, dynamic loss scaling",
            Recipe::Bf16Pure => "bf16 only, stochastic rounding, no master copy",
        }
    }

    /// Parses a name as [`Recipe::name`] writes it.
    pub fn parse(s: &str) -> Option<Recipe> {
        Recipe::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s.trim()))
    }
}

/// Hyper-parameters shared by every precision of one run.
#[derive(Clone, Debug)]
pub struct Config {
    /// Passes over the training set.
    pub epochs: usize,
    /// Images per step (the last step of an epoch may have fewer).
    pub batch_size: usize,
    /// AdamW learning rate.
    pub lr: f32,
    /// Seeds the initial weights, the data order and stochastic rounding.
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            epochs: 20,
            batch_size: 32,
            lr: 2e-3,
            seed: 42,
        }
    }
}

/// AdamW's decoupled weight decay (on the weights, not the biases).
const WEIGHT_DECAY: f32 = 1e-4;

/// Where a run is, for a progress bar.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// Current epoch, 1-based.
    pub epoch: usize,
    /// Steps done so far in this run.
    pub step: usize,
    /// Steps the run will take.
    pub total_steps: usize,
    /// Mean training loss of the current epoch so far.
    pub loss: f32,
}

/// What one precision's run measured.
#[derive(Clone, Debug)]
pub struct RunResult {
    /// The precision.
    pub precision: Recipe,
    /// Fraction of test images classified correctly at the end.
    pub test_accuracy: f64,
    /// Mean training loss of the last epoch.
    pub final_train_loss: f32,
    /// Mean training loss of each epoch.
    pub epoch_loss: Vec<f32>,
    /// Test accuracy after each epoch.
    pub epoch_accuracy: Vec<f64>,
    /// Optimizer steps taken (applied or skipped).
    pub steps: usize,
    /// Steps skipped because a gradient was inf or NaN.
    pub skipped: usize,
    /// Loss scale at the end (1 where the precision does not scale).
    pub final_scale: f32,
    /// Mean wall time of one step (forward, backward, update), seconds.
    pub secs_per_step: f64,
    /// For f16 only: what loss scaling saved. Of the nonzero activation
    /// gradients of the run, the fraction that would have been f16
    /// subnormals (lost precision) and the fraction that would have
    /// rounded to zero, had the loss not been scaled.
    pub f16_without_scaling: Option<Underflow>,
}

/// Activation-gradient values measured against f16's range at scale 1.
#[derive(Clone, Copy, Debug, Default)]
pub struct Underflow {
    /// Nonzero values looked at.
    pub values: u64,
    /// Of those, below f16's smallest normal (2^-14) once unscaled.
    pub subnormal: u64,
    /// Of those, at most half f16's smallest subnormal (2^-25) once
    /// unscaled: they would round to zero.
    pub zero: u64,
}

impl Underflow {
    /// Counts `dz / scale` for the nonzero elements of `dz`.
    fn count<T: Element>(&mut self, dz: &[T], scale: f32) {
        for v in dz {
            let v = v.to_f32().abs();
            if v != 0.0 {
                let u = f64::from(v) / f64::from(scale);
                self.values += 1;
                self.subnormal += u64::from(u < 2f64.powi(-14));
                self.zero += u64::from(u <= 2f64.powi(-25));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Training
// ---------------------------------------------------------------------------

/// Trains one precision from the seeded initial weights and returns what it
/// measured. `progress` is called after every step.
///
/// # Errors
///
/// Whatever halfkern returns (a shape mismatch here would be a bug in this
/// file), or [`Error::InvalidArgument`] for a zero batch size or epoch count.
pub fn train(
    data: &Dataset,
    precision: Recipe,
    cfg: &Config,
    progress: &mut dyn FnMut(&Progress),
) -> Result<RunResult, Error> {
    if cfg.batch_size == 0 {
        return Err(Error::InvalidArgument {
            arg: "batch_size",
            reason: "must be at least 1".into(),
        });
    }
    if cfg.epochs == 0 {
        return Err(Error::InvalidArgument {
            arg: "epochs",
            reason: "must be at least 1".into(),
        });
    }
    match precision {
        Recipe::F32 => Run::<f32>::new(data, precision, cfg)?.train(progress),
        Recipe::Bf16 | Recipe::Bf16Pure => Run::<bf16>::new(data, precision, cfg)?.train(progress),
        Recipe::F16 => Run::<f16>::new(data, precision, cfg)?.train(progress),
    }
}

/// One layer's parameters as the model computes with them: `w` is
/// `fan_in x fan_out` row-major (so the forward product is `x * w`), `b`
/// one bias per output.
struct Layer<T> {
    w: Vec<T>,
    b: Vec<T>,
    fan_in: usize,
    fan_out: usize,
}

/// Activations and gradients of one step, sized for the largest batch.
struct Buffers<T> {
    x: Vec<T>,
    h1: Vec<T>,
    h2: Vec<T>,
    logits: Vec<f32>,
    dlogits: Vec<f32>,
    dz3: Vec<T>,
    dz2: Vec<T>,
    dz1: Vec<T>,
    ones: Vec<T>,
    /// Biases widened to f32 for the GEMM epilogue, one per layer.
    bias: [Vec<f32>; 3],
    /// Weight and bias gradients, f32, in parameter order (w1 b1 w2 b2 w3 b3).
    grads: [Vec<f32>; 6],
}

/// A run of one precision with element type `T`.
struct Run<'d, T> {
    data: &'d Dataset,
    precision: Recipe,
    cfg: Config,
    layers: [Layer<T>; 3],
    /// The training images in `T`, converted once.
    train_x: Vec<T>,
    test_x: Vec<T>,
    buf: Buffers<T>,
    trainer: Trainer,
    underflow: Underflow,
}

impl<'d, T: Element> Run<'d, T> {
    fn new(data: &'d Dataset, precision: Recipe, cfg: &Config) -> Result<Run<'d, T>, Error> {
        // The same f32 initial weights for every precision (He-uniform from
        // the seed), rounded to nearest into T.
        let mut rng = Rng::new(cfg.seed ^ 0x1417_1A1F_0000_0001);
        let dims = [(FEATURES, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, CLASSES)];
        let mut layers = Vec::new();
        for (fan_in, fan_out) in dims {
            let bound = (6.0 / fan_in as f64).sqrt();
            let w32: Vec<f32> = (0..fan_in * fan_out)
                .map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32)
                .collect();
            let b32 = vec![0f32; fan_out];
            let mut w = vec![T::default(); w32.len()];
            let mut b = vec![T::default(); b32.len()];
            halfkern::convert(&w32, &mut w)?;
            halfkern::convert(&b32, &mut b)?;
            layers.push(Layer {
                w,
                b,
                fan_in,
                fan_out,
            });
        }
        let layers: [Layer<T>; 3] = layers.try_into().ok().expect("three layers");

        let mut train_x = vec![T::default(); data.train_x.len()];
        let mut test_x = vec![T::default(); data.test_x.len()];
        halfkern::convert(&data.train_x, &mut train_x)?;
        halfkern::convert(&data.test_x, &mut test_x)?;

        let m = cfg.batch_size.max(data.test_len());
        let buf = Buffers {
            x: vec![T::default(); m * FEATURES],
            h1: vec![T::default(); m * HIDDEN],
            h2: vec![T::default(); m * HIDDEN],
            logits: vec![0.0; m * CLASSES],
            dlogits: vec![0.0; m * CLASSES],
            dz3: vec![T::default(); m * CLASSES],
            dz2: vec![T::default(); m * HIDDEN],
            dz1: vec![T::default(); m * HIDDEN],
            ones: vec![T::from_f32(1.0); m],
            bias: [vec![0.0; HIDDEN], vec![0.0; HIDDEN], vec![0.0; CLASSES]],
            grads: [
                vec![0.0; FEATURES * HIDDEN],
                vec![0.0; HIDDEN],
                vec![0.0; HIDDEN * HIDDEN],
                vec![0.0; HIDDEN],
                vec![0.0; HIDDEN * CLASSES],
                vec![0.0; CLASSES],
            ],
        };
        let params: Vec<&[T]> = layers.iter().flat_map(|l| [&l.w[..], &l.b[..]]).collect();
        let trainer = trainer_builder(precision, cfg).build(&params)?;
        Ok(Run {
            data,
            precision,
            cfg: cfg.clone(),
            layers,
            train_x,
            test_x,
            buf,
            trainer,
            underflow: Underflow::default(),
        })
    }

    fn train(mut self, progress: &mut dyn FnMut(&Progress)) -> Result<RunResult, Error> {
        let n = self.data.train_len();
        let bs = self.cfg.batch_size;
        let steps_per_epoch = n.div_ceil(bs);
        let total_steps = steps_per_epoch * self.cfg.epochs;
        // The data order depends on the seed only: every precision sees the
        // same batches in the same order.
        let mut order_rng = Rng::new(self.cfg.seed ^ 0x0DE7_0000_0000_0002);
        let mut order: Vec<usize> = (0..n).collect();
        let mut epoch_loss = Vec::new();
        let mut epoch_accuracy = Vec::new();
        let mut step_time = 0.0f64;
        let mut step = 0;
        let mut skipped = 0;
        for epoch in 1..=self.cfg.epochs {
            order_rng.shuffle(&mut order);
            let (mut loss_sum, mut seen) = (0.0f64, 0usize);
            for batch in order.chunks(bs) {
                let start = Instant::now();
                let loss = self.step(batch)?;
                step_time += start.elapsed().as_secs_f64();
                step += 1;
                if !loss.applied {
                    skipped += 1;
                }
                loss_sum += f64::from(loss.loss) * batch.len() as f64;
                seen += batch.len();
                progress(&Progress {
                    epoch,
                    step,
                    total_steps,
                    loss: (loss_sum / seen as f64) as f32,
                });
            }
            epoch_loss.push((loss_sum / seen as f64) as f32);
            epoch_accuracy.push(self.test_accuracy()?);
        }
        Ok(RunResult {
            precision: self.precision,
            test_accuracy: *epoch_accuracy.last().expect("epochs >= 1"),
            final_train_loss: *epoch_loss.last().expect("epochs >= 1"),
            epoch_loss,
            epoch_accuracy,
            steps: step,
            skipped,
            final_scale: self.trainer.scale(),
            secs_per_step: step_time / step as f64,
            f16_without_scaling: (self.precision == Recipe::F16).then_some(self.underflow),
        })
    }

    /// Widens the model's biases to f32 for the GEMM epilogue.
    fn widen_biases(&mut self) -> Result<(), Error> {
        for (layer, b32) in self.layers.iter().zip(&mut self.buf.bias) {
            halfkern::convert(&layer.b, b32)?;
        }
        Ok(())
    }

    /// Forward pass of `m` images already in `buf.x`: hidden activations in
    /// T (bias and ReLU fused into the products), logits in f32.
    fn forward(&mut self, x: &[T], m: usize) -> Result<(), Error> {
        let [l1, l2, l3] = &self.layers;
        let b = &mut self.buf;
        let relu = Epilogue {
            relu: true,
            ..Epilogue::default()
        };
        gemm(
            view(x, m, FEATURES)?,
            view(&l1.w, l1.fan_in, l1.fan_out)?,
            &mut b.h1[..m * HIDDEN],
            Epilogue {
                bias: Some(&b.bias[0]),
                ..relu
            },
        )?;
        gemm(
            view(&b.h1[..m * HIDDEN], m, HIDDEN)?,
            view(&l2.w, l2.fan_in, l2.fan_out)?,
            &mut b.h2[..m * HIDDEN],
            Epilogue {
                bias: Some(&b.bias[1]),
                ..relu
            },
        )?;
        gemm(
            view(&b.h2[..m * HIDDEN], m, HIDDEN)?,
            view(&l3.w, l3.fan_in, l3.fan_out)?,
            &mut b.logits[..m * CLASSES],
            Epilogue {
                bias: Some(&b.bias[2]),
                ..Epilogue::default()
            },
        )?;
        Ok(())
    }

    /// One optimizer step on the images `batch` (indices into the training
    /// set).
    fn step(&mut self, batch: &[usize]) -> Result<StepOutcome, Error> {
        let m = batch.len();
        let scale = self.trainer.scale();
        let inv_scale = self.trainer.scaler().inv_scale();
        let loss = self.backward(batch, m, scale, inv_scale)?;
        let loss = (loss / m as f64) as f32;
        let applied = self.apply_grads()?.applied;
        Ok(StepOutcome { loss, applied })
    }

    /// Forward and backward passes on the images `batch`, for the loss
    /// averaged over `mean_over` images (the whole batch, or the global
    /// batch of which `batch` is one data-parallel shard) and multiplied by
    /// `scale`. Leaves the weight gradients, unscaled by `inv_scale`, in
    /// `buf.grads`; returns the sum of the images' losses.
    fn backward(
        &mut self,
        batch: &[usize],
        mean_over: usize,
        scale: f32,
        inv_scale: f32,
    ) -> Result<f64, Error> {
        let m = batch.len();
        for (row, &i) in batch.iter().enumerate() {
            self.buf.x[row * FEATURES..(row + 1) * FEATURES]
                .copy_from_slice(&self.train_x[i * FEATURES..(i + 1) * FEATURES]);
        }
        self.widen_biases()?;
        let x = std::mem::take(&mut self.buf.x);
        self.forward(&x[..m * FEATURES], m)?;

        // Softmax cross-entropy in f32; its gradient is multiplied by the
        // loss scale before it is rounded to T, which is the whole point of
        // loss scaling: small gradients stay above f16's underflow.
        let b = &mut self.buf;
        let mut loss = 0.0f64;
        for (row, &i) in batch.iter().enumerate() {
            let z = &b.logits[row * CLASSES..(row + 1) * CLASSES];
            let g = &mut b.dlogits[row * CLASSES..(row + 1) * CLASSES];
            let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0f32;
            for (g, &z) in g.iter_mut().zip(z) {
                *g = (z - max).exp();
                sum += *g;
            }
            let label = usize::from(self.data.train_y[i]);
            loss += f64::from(sum.ln() - (z[label] - max));
            for (c, g) in g.iter_mut().enumerate() {
                let p = *g / sum;
                let y = if c == label { 1.0 } else { 0.0 };
                *g = (p - y) * (scale / mean_over as f32);
            }
        }
        halfkern::convert(&b.dlogits[..m * CLASSES], &mut b.dz3[..m * CLASSES])?;

        // Backward. Weight gradients: f32 outputs, unscaled in the GEMM's
        // epilogue; bias gradients: the same with a row of ones (the column
        // sums of dz as a 1 x m times m x n product). Activation gradients
        // are in T, still scaled (that is what keeps f16's small values).
        let [_, l2, l3] = &self.layers;
        let [gw1, gb1, gw2, gb2, gw3, gb3] = &mut b.grads;
        // The scale is a power of two, so unscaling is exact unless it
        // underflows; an overflow shows up as inf, which the trainer's
        // check counts (the GEMM report says the same, per product).
        let unscaled = Epilogue {
            unscale: Some(inv_scale),
            ..Epilogue::default()
        };
        let ones = view(&b.ones[..m], 1, m)?;

        let dz3 = view(&b.dz3[..m * CLASSES], m, CLASSES)?;
        gemm(
            view(&b.h2[..m * HIDDEN], m, HIDDEN)?.t(),
            dz3,
            gw3,
            unscaled,
        )?;
        gemm(ones, dz3, gb3, unscaled)?;
        gemm(
            dz3,
            view(&l3.w, l3.fan_in, l3.fan_out)?.t(),
            &mut b.dz2[..m * HIDDEN],
            Epilogue::default(),
        )?;
        relu_backward(&mut b.dz2[..m * HIDDEN], &b.h2[..m * HIDDEN]);

        let dz2 = view(&b.dz2[..m * HIDDEN], m, HIDDEN)?;
        gemm(
            view(&b.h1[..m * HIDDEN], m, HIDDEN)?.t(),
            dz2,
            gw2,
            unscaled,
        )?;
        gemm(ones, dz2, gb2, unscaled)?;
        gemm(
            dz2,
            view(&l2.w, l2.fan_in, l2.fan_out)?.t(),
            &mut b.dz1[..m * HIDDEN],
            Epilogue::default(),
        )?;
        relu_backward(&mut b.dz1[..m * HIDDEN], &b.h1[..m * HIDDEN]);

        let dz1 = view(&b.dz1[..m * HIDDEN], m, HIDDEN)?;
        gemm(
            view(&x[..m * FEATURES], m, FEATURES)?.t(),
            dz1,
            gw1,
            unscaled,
        )?;
        gemm(ones, dz1, gb1, unscaled)?;
        if self.precision == Recipe::F16 {
            for dz in [
                &b.dz3[..m * CLASSES],
                &b.dz2[..m * HIDDEN],
                &b.dz1[..m * HIDDEN],
            ] {
                self.underflow.count(dz, scale);
            }
        }
        self.buf.x = x;
        Ok(loss)
    }

    /// Checks the gradients in `buf.grads` and applies (or skips) the
    /// update with this run's trainer.
    fn apply_grads(&mut self) -> Result<StepReport, Error> {
        let [l1, l2, l3] = &mut self.layers;
        let mut params: [&mut [T]; 6] = [
            &mut l1.w, &mut l1.b, &mut l2.w, &mut l2.b, &mut l3.w, &mut l3.b,
        ];
        self.trainer
            .begin()
            .check_unscaled(&self.buf.grads)?
            .apply(&mut params)
    }

    /// Fraction of the test set classified correctly (one forward pass in
    /// the precision under test).
    fn test_accuracy(&mut self) -> Result<f64, Error> {
        let m = self.data.test_len();
        self.widen_biases()?;
        let x = std::mem::take(&mut self.test_x);
        let result = self.forward(&x, m);
        self.test_x = x;
        result?;
        let correct = self
            .buf
            .logits
            .chunks(CLASSES)
            .zip(&self.data.test_y)
            .filter(|(z, y)| argmax(z) == usize::from(**y))
            .count();
        Ok(correct as f64 / m as f64)
    }
}

struct StepOutcome {
    loss: f32,
    applied: bool,
}

/// The optimizer, master-weight mode, loss scaler and seed of `precision`:
/// what every run's trainer is built from. halfkern::train owns the
/// optimizer state, the master weights (or their absence) and the loss
/// scale.
pub fn trainer_builder(precision: Recipe, cfg: &Config) -> TrainerBuilder {
    let optimizer = AdamW::new(cfg.lr).weight_decay(WEIGHT_DECAY);
    let (weights, scaler) = match precision {
        Recipe::F32 | Recipe::Bf16 => (Precision::default(), LossScaler::disabled()),
        Recipe::F16 => (Precision::default(), LossScaler::dynamic()),
        Recipe::Bf16Pure => (Precision::Pure, LossScaler::disabled()),
    };
    Trainer::builder(optimizer)
        .precision(weights)
        .scaler(scaler)
        .seed(cfg.seed)
}

// ---------------------------------------------------------------------------
// Data parallel: the same model, with a step split where an engine reduces
// the gradients (integrations/mpi's `train_ddp`).
// ---------------------------------------------------------------------------

/// The model of one data-parallel rank: the weights, initial values and
/// buffers of [`train`]'s run, with its step split in two. An engine calls
/// [`Replica::backward`] on its shard of each batch, reduces
/// [`Replica::grads`] across ranks, and updates with its own trainer (or
/// [`Replica::apply`], which uses the run's full trainer).
#[allow(dead_code, reason = "the train example steps whole batches")]
pub struct Replica<'d, T>(Run<'d, T>);

#[allow(dead_code, reason = "the train example steps whole batches")]
impl<'d, T: Element> Replica<'d, T> {
    /// The model [`train`] starts from for `precision` (its element type
    /// must be `T`), with buffers for `cfg.batch_size` images a call.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a zero batch size; whatever halfkern
    /// returns.
    pub fn new(data: &'d Dataset, precision: Recipe, cfg: &Config) -> Result<Self, Error> {
        if cfg.batch_size == 0 {
            return Err(Error::InvalidArgument {
                arg: "batch_size",
                reason: "must be at least 1".into(),
            });
        }
        Run::new(data, precision, cfg).map(Replica)
    }

    /// Forward and backward passes on the training images `rows` (at most
    /// `cfg.batch_size`), for the loss averaged over `mean_over` images and
    /// multiplied by `scale`: summed over the shards of a batch of
    /// `mean_over` images, these gradients are the batch's. Leaves the f32
    /// weight gradients, unscaled by `inv_scale` in the GEMMs' epilogue, in
    /// [`Replica::grads`]; returns the sum of the rows' losses.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] when `rows` is empty, longer than the
    /// buffers, or `mean_over < rows.len()`; whatever halfkern returns.
    pub fn backward(
        &mut self,
        rows: &[usize],
        mean_over: usize,
        scale: f32,
        inv_scale: f32,
    ) -> Result<f64, Error> {
        if rows.is_empty() || rows.len() > self.0.cfg.batch_size || mean_over < rows.len() {
            return Err(Error::InvalidArgument {
                arg: "rows",
                reason: format!(
                    "{} rows for buffers of {} and a mean over {mean_over}",
                    rows.len(),
                    self.0.cfg.batch_size
                ),
            });
        }
        if let Some(&i) = rows.iter().find(|&&i| i >= self.0.data.train_len()) {
            return Err(Error::InvalidArgument {
                arg: "rows",
                reason: format!("image {i} of {}", self.0.data.train_len()),
            });
        }
        self.0.backward(rows, mean_over, scale, inv_scale)
    }

    /// The weight gradients of the last [`Replica::backward`], in parameter
    /// order (w1 b1 w2 b2 w3 b3).
    pub fn grads(&self) -> &[Vec<f32>; 6] {
        &self.0.buf.grads
    }

    /// The gradients, to be replaced by their reduction across ranks.
    pub fn grads_mut(&mut self) -> &mut [Vec<f32>; 6] {
        &mut self.0.buf.grads
    }

    /// The model's parameters, in the order of [`Replica::grads`].
    pub fn params(&self) -> [&[T]; 6] {
        let [l1, l2, l3] = &self.0.layers;
        [&l1.w, &l1.b, &l2.w, &l2.b, &l3.w, &l3.b]
    }

    /// The model's parameters, for an engine's update and broadcast.
    pub fn params_mut(&mut self) -> [&mut [T]; 6] {
        let [l1, l2, l3] = &mut self.0.layers;
        [
            &mut l1.w, &mut l1.b, &mut l2.w, &mut l2.b, &mut l3.w, &mut l3.b,
        ]
    }

    /// The run's own trainer (over every parameter).
    pub fn trainer(&self) -> &Trainer {
        &self.0.trainer
    }

    /// Frees the run's own trainer (f32 master weights and moments for
    /// every parameter), for an engine that updates with trainers of its
    /// own; [`Replica::apply`] then returns an error.
    ///
    /// # Errors
    ///
    /// Whatever building an empty trainer returns.
    pub fn release_trainer(&mut self) -> Result<(), Error> {
        let none: [&[T]; 0] = [];
        self.0.trainer = trainer_builder(self.0.precision, &self.0.cfg).build(&none)?;
        Ok(())
    }

    /// Checks [`Replica::grads`] and applies (or skips) the update with
    /// the run's own trainer: a single process's step.
    ///
    /// # Errors
    ///
    /// Whatever halfkern's step returns.
    pub fn apply(&mut self) -> Result<StepReport, Error> {
        self.0.apply_grads()
    }

    /// Fraction of the test images the model classifies correctly.
    ///
    /// # Errors
    ///
    /// Whatever halfkern returns.
    pub fn test_accuracy(&mut self) -> Result<f64, Error> {
        self.0.test_accuracy()
    }
}

/// `dz <- dz * (h > 0)`: the gradient through ReLU, where `h` is ReLU's
/// output (positive exactly where its input was).
fn relu_backward<T: Element>(dz: &mut [T], h: &[T]) {
    for (d, h) in dz.iter_mut().zip(h) {
        if h.to_f32() <= 0.0 {
            *d = T::default();
        }
    }
}

/// Index of the largest logit (the first one on ties; NaN never wins).
fn argmax(z: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in z.iter().enumerate() {
        if v > z[best] {
            best = i;
        }
    }
    best
}

// ---------------------------------------------------------------------------
// Matrix products: halfkern::gemm.
// ---------------------------------------------------------------------------

/// A row-major view (`halfkern::MatRef`); `.t()` on it is the transpose.
fn view<T: Element>(data: &[T], rows: usize, cols: usize) -> Result<MatRef<'_, T>, Error> {
    MatRef::row_major(data, rows, cols)
}

/// The epilogue of one product: bias per column, ReLU, unscale.
#[derive(Clone, Copy, Default)]
struct Epilogue<'a> {
    bias: Option<&'a [f32]>,
    relu: bool,
    unscale: Option<f32>,
}

/// `c (a.rows x b.cols, row-major) <- a * b` through `halfkern::gemm`,
/// products summed in f32, then unscale, bias, ReLU and rounding to `U` in
/// the fused epilogue. Returns whether any output is inf or NaN (the
/// report's count, so no separate pass over the gradient).
fn gemm<T: Element, U: Element>(
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    c: &mut [U],
    epi: Epilogue<'_>,
) -> Result<bool, Error> {
    let (m, n) = (a.rows(), b.cols());
    let mut params = Gemm::new();
    if let Some(bias) = epi.bias {
        params = params.bias(Bias::PerCol(bias));
    }
    if epi.relu {
        params = params.activation(Activation::Relu);
    }
    if let Some(inv) = epi.unscale {
        params = params.unscale(inv);
    }
    let report = halfkern::gemm(a, b, MatMut::row_major(c, m, n)?, &params)?;
    Ok(report.any_nonfinite())
}
