//! Checkpoints of the scaler and the trainer as bytes.
//!
//! Layout (little-endian): magic `b"HKTRAIN\0"`, format version `u32`, kind
//! `u8` (1 scaler, 2 trainer), payload length `u64`, payload, then an FNV-1a
//! 64-bit checksum of everything before it. No dependency: the format is
//! small and fixed, and the checksum only has to catch corruption, not
//! tampering.
//!
//! # What a checkpoint must hold
//!
//! A checksum that matches says the bytes are the ones written, not that
//! they mean something: a buggy writer, a hand-edited file or a checksum
//! recomputed over changed bytes gets past it. So [`LossScaler::from_bytes`]
//! and [`Trainer::restore`] also check every field against the invariants
//! a live trainer keeps, and reject (changing nothing) a checkpoint that
//! breaks one. Every state `to_bytes` writes satisfies them, except a
//! diverged one (below), and every state they accept continues with the
//! same invariants:
//!
//! - **Scaler** (`LossScaler::check_state`): its options pass
//!   [`ScalerOptions::validate`] (growth factor finite and `> 1`, back-off
//!   in `(0, 1)`, interval and hysteresis `>= 1`, `min_scale` a positive
//!   normal `f32`, `max_scale` finite and `>= min_scale`, `init_scale` in
//!   between). Dynamic: `min_scale <= scale <= max_scale`, growth tracker
//!   `< growth_interval`, `1 <= hysteresis_left <= hysteresis`. Fixed: the
//!   default options with `init_scale == scale`, tracker 0,
//!   `hysteresis_left == hysteresis`. Disabled: the same with scale 1. The
//!   mode byte is 0, 1 or 2.
//! - **Hyper-parameters**: [`Optimizer::validate`], the builders' check
//!   (lr finite and `>= 0`; SGD momentum and dampening in `[0, 1]`,
//!   Nesterov only with momentum `> 0` and dampening 0, weight decay finite
//!   and `>= 0`; AdamW betas in `[0, 1)`, eps finite and `> 0`, weight
//!   decay finite and `>= 0`). The Nesterov byte is 0 or 1. `max_norm` is
//!   `+0.0` (no clipping) or finite and `> 0`, as
//!   [`TrainerBuilder::clip_grad_norm`] requires. The optimizer kind and
//!   the precision mode (master weights or pure) are the restoring
//!   trainer's; the precision byte is 0, 1 or 2.
//! - **Step counter**: `< u64::MAX`. [`Step::apply`] never wraps it (a wrap
//!   to 0 would divide AdamW's bias correction by zero), so a trainer at
//!   the maximum could never apply another step; no run gets there.
//! - **Tensors**: as many as the restoring trainer has, each of its length;
//!   the master buffer holds one value per element in master mode and none
//!   in pure mode, the first buffer one per element when the optimizer
//!   keeps one (AdamW; SGD with momentum `!= 0`), the second one per
//!   element for AdamW only.
//! - **Values**: every master weight and every first-buffer value
//!   (momentum, AdamW `m`) is finite; every AdamW second moment `v` is
//!   `>= 0` and not NaN. `v = +inf` is kept: a live trainer gets there,
//!   as torch does, when an unclipped gradient above about 1.8e19 squares
//!   to inf in f32 (that weight then stops moving; it does not turn NaN).
//!   While the counter is 0 no step was applied, so every moment is `+0.0`.
//!
//! A live trainer can hold a non-finite master weight or first moment only
//! after an update overflowed f32 (a learning rate or an unclipped
//! gradient so large that the step itself is inf): such a run has
//! diverged, and restoring it is refused rather than resumed.
//!
//! [`ScalerOptions::validate`]: crate::train::ScalerOptions::validate
//! [`Optimizer::validate`]: crate::train::Optimizer::validate
//! [`TrainerBuilder::clip_grad_norm`]: crate::train::TrainerBuilder::clip_grad_norm
//! [`Step::apply`]: crate::train::Step::apply

use crate::error::Error;
use crate::train::optim::{AdamW, Optimizer, Precision, Rounding, Sgd};
use crate::train::scaler::{LossScaler, ScalerMode, ScalerOptions};
use crate::train::step::{State, Trainer};

const MAGIC: &[u8; 8] = b"HKTRAIN\0";
const VERSION: u32 = 1;
const KIND_SCALER: u8 = 1;
const KIND_TRAINER: u8 = 2;
const HEADER: usize = 8 + 4 + 1 + 8;

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h = 0xCBF2_9CE4_8422_2325u64;
    for &b in bytes {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

fn err<T>(reason: impl Into<String>) -> Result<T, Error> {
    Err(Error::Checkpoint {
        reason: reason.into(),
    })
}

#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, x: u8) {
        self.0.push(x);
    }
    fn u32(&mut self, x: u32) {
        self.0.extend_from_slice(&x.to_le_bytes());
    }
    fn u64(&mut self, x: u64) {
        self.0.extend_from_slice(&x.to_le_bytes());
    }
    fn f32(&mut self, x: f32) {
        self.u32(x.to_bits());
    }
    fn f64(&mut self, x: f64) {
        self.u64(x.to_bits());
    }
    fn f32s(&mut self, xs: &[f32]) {
        self.u64(xs.len() as u64);
        self.0.reserve(xs.len() * 4);
        for &x in xs {
            self.f32(x);
        }
    }
    fn finish(self, kind: u8) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.0.len() + 8);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.push(kind);
        out.extend_from_slice(&(self.0.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.0);
        let sum = fnv1a(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Checks the envelope and returns a reader over the payload.
    fn open(bytes: &'a [u8], kind: u8) -> Result<Reader<'a>, Error> {
        if bytes.len() < HEADER + 8 {
            return err(format!(
                "truncated: {} bytes, the header alone needs {}",
                bytes.len(),
                HEADER + 8
            ));
        }
        if &bytes[..8] != MAGIC {
            return err("not a halfkern training checkpoint (bad magic)");
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap_or_default());
        if version != VERSION {
            return err(format!(
                "format version {version}, this build reads {VERSION}"
            ));
        }
        if bytes[12] != kind {
            let name = |k| match k {
                KIND_SCALER => "a loss scaler",
                KIND_TRAINER => "a trainer",
                _ => "unknown",
            };
            return err(format!(
                "holds {}, expected {}",
                name(bytes[12]),
                name(kind)
            ));
        }
        let len = u64::from_le_bytes(bytes[13..21].try_into().unwrap_or_default());
        let want = (HEADER as u64)
            .checked_add(len)
            .and_then(|n| n.checked_add(8));
        if want != Some(bytes.len() as u64) {
            return err(format!(
                "truncated or padded: payload of {len} bytes needs {} bytes in all, got {}",
                want.map_or("too many".to_string(), |n| n.to_string()),
                bytes.len()
            ));
        }
        let body = bytes.len() - 8;
        let sum = u64::from_le_bytes(bytes[body..].try_into().unwrap_or_default());
        if fnv1a(&bytes[..body]) != sum {
            return err("checksum mismatch: the bytes are corrupt");
        }
        Ok(Reader {
            bytes: &bytes[HEADER..body],
            pos: 0,
        })
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], Error> {
        match self.pos.checked_add(n) {
            Some(end) if end <= self.bytes.len() => {
                let s = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            _ => err(format!("payload ends inside {what}")),
        }
    }
    fn u8(&mut self, what: &str) -> Result<u8, Error> {
        Ok(self.take(1, what)?[0])
    }
    fn u32(&mut self, what: &str) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().unwrap_or_default(),
        ))
    }
    fn u64(&mut self, what: &str) -> Result<u64, Error> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().unwrap_or_default(),
        ))
    }
    fn f32(&mut self, what: &str) -> Result<f32, Error> {
        self.u32(what).map(f32::from_bits)
    }
    fn f64(&mut self, what: &str) -> Result<f64, Error> {
        self.u64(what).map(f64::from_bits)
    }
    fn f32s(&mut self, what: &str) -> Result<Vec<f32>, Error> {
        let n = self.u64(what)?;
        let bytes = usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_mul(4))
            .ok_or_else(|| Error::Checkpoint {
                reason: format!("{what}: length {n} overflows"),
            })?;
        let raw = self.take(bytes, what)?;
        Ok(raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect())
    }
    fn end(&self) -> Result<(), Error> {
        if self.pos == self.bytes.len() {
            Ok(())
        } else {
            err(format!(
                "{} unread bytes after the state",
                self.bytes.len() - self.pos
            ))
        }
    }
}

fn write_scaler(w: &mut Writer, s: &LossScaler) {
    w.u8(match s.mode {
        ScalerMode::Dynamic => 0,
        ScalerMode::Fixed => 1,
        ScalerMode::Disabled => 2,
    });
    w.f32(s.scale);
    w.u32(s.growth_tracker);
    w.u32(s.hysteresis_left);
    let o = &s.opts;
    w.f32(o.init_scale);
    w.f64(o.growth_factor);
    w.f64(o.backoff_factor);
    w.u32(o.growth_interval);
    w.u32(o.hysteresis);
    w.f32(o.min_scale);
    w.f32(o.max_scale);
}

fn read_scaler(r: &mut Reader<'_>) -> Result<LossScaler, Error> {
    let mode = match r.u8("scaler mode")? {
        0 => ScalerMode::Dynamic,
        1 => ScalerMode::Fixed,
        2 => ScalerMode::Disabled,
        k => return err(format!("unknown scaler mode {k}")),
    };
    let scale = r.f32("scale")?;
    let growth_tracker = r.u32("growth tracker")?;
    let hysteresis_left = r.u32("hysteresis tracker")?;
    let opts = ScalerOptions {
        init_scale: r.f32("init_scale")?,
        growth_factor: r.f64("growth_factor")?,
        backoff_factor: r.f64("backoff_factor")?,
        growth_interval: r.u32("growth_interval")?,
        hysteresis: r.u32("hysteresis")?,
        min_scale: r.f32("min_scale")?,
        max_scale: r.f32("max_scale")?,
    };
    let s = LossScaler {
        mode,
        scale,
        growth_tracker,
        hysteresis_left,
        opts,
    };
    s.check_state().map_err(|e| Error::Checkpoint {
        reason: format!("scaler ({mode:?}): {e}"),
    })?;
    Ok(s)
}

impl LossScaler {
    /// The scaler's state as bytes (see [`LossScaler::from_bytes`]).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::default();
        write_scaler(&mut w, self);
        w.finish(KIND_SCALER)
    }

    /// A scaler from [`LossScaler::to_bytes`]; it continues exactly where
    /// the saved one was.
    ///
    /// # Errors
    ///
    /// [`Error::Checkpoint`] when the bytes are truncated, corrupt (bad
    /// magic, version or checksum), hold something else, or describe a
    /// state no live scaler can be in (options [`ScalerOptions::validate`]
    /// rejects; a dynamic scale outside `[min_scale, max_scale]`, a growth
    /// tracker `>= growth_interval` or a hysteresis budget outside
    /// `[1, hysteresis]`; a fixed or disabled scaler whose options, counters
    /// or scale (1 when disabled) no constructor gives), naming the field
    /// and its value.
    ///
    /// # Examples
    ///
    /// ```
    /// use halfkern::train::LossScaler;
    ///
    /// let mut s = LossScaler::dynamic();
    /// s.update(true);
    /// let bytes = s.to_bytes();
    /// assert_eq!(LossScaler::from_bytes(&bytes)?, s);
    /// assert!(LossScaler::from_bytes(&bytes[..bytes.len() - 1]).is_err());
    /// # Ok::<(), halfkern::Error>(())
    /// ```
    pub fn from_bytes(bytes: &[u8]) -> Result<LossScaler, Error> {
        let mut r = Reader::open(bytes, KIND_SCALER)?;
        let s = read_scaler(&mut r)?;
        r.end()?;
        Ok(s)
    }
}

impl Trainer {
    /// The whole optimizer state as bytes: hyper-parameters, loss scaler,
    /// step counter, seed, master weights and moments. Restore it with
    /// [`Trainer::restore`]; the engine saves its own model weights.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::default();
        write_scaler(&mut w, &self.scaler);
        match self.optimizer {
            Optimizer::Sgd(o) => {
                w.u8(1);
                w.f32(o.lr);
                w.f32(o.momentum);
                w.f32(o.dampening);
                w.u8(o.nesterov as u8);
                w.f32(o.weight_decay);
            }
            Optimizer::AdamW(o) => {
                w.u8(2);
                w.f32(o.lr);
                w.f32(o.beta1);
                w.f32(o.beta2);
                w.f32(o.eps);
                w.f32(o.weight_decay);
            }
        }
        w.u8(match self.precision {
            Precision::Master {
                rounding: Rounding::Nearest,
            } => 0,
            Precision::Master {
                rounding: Rounding::Stochastic,
            } => 1,
            Precision::Pure => 2,
        });
        w.f32(self.clip.unwrap_or(0.0));
        w.u64(self.seed);
        w.u64(self.steps);
        w.u64(self.tensors.len() as u64);
        for t in &self.tensors {
            w.u64(t.len as u64);
            w.f32s(&t.master);
            w.f32s(&t.m);
            w.f32s(&t.v);
        }
        w.finish(KIND_TRAINER)
    }

    /// Replaces this trainer's state (hyper-parameters, scaler, counters,
    /// master weights, moments) by a checkpoint of a trainer for the same
    /// model: the same optimizer kind, precision mode and tensor lengths. A
    /// resumed run continues bit for bit as the saved one would have. The
    /// backend is kept.
    ///
    /// # Errors
    ///
    /// [`Error::Checkpoint`] when the bytes are truncated or corrupt, were
    /// saved for another optimizer, precision mode or model shape, or
    /// break an invariant of a live trainer, naming the field and its
    /// value: a scaler [`LossScaler::from_bytes`] rejects, hyper-parameters
    /// [`Optimizer::validate`] rejects, a `max_norm` that is neither +0 (no
    /// clipping) nor finite and `> 0`, a step counter at `u64::MAX`, a
    /// non-finite master weight or first-buffer value, a second moment
    /// that is negative or NaN, non-zero moments at step 0, or a flag byte
    /// out of range. Then this trainer is unchanged.
    ///
    /// # Examples
    ///
    /// ```
    /// use halfkern::train::{AdamW, Sgd, Trainer};
    ///
    /// let w = vec![vec![1.0f32; 3]];
    /// let t = Trainer::builder(AdamW::new(1e-3)).build(&w)?;
    /// let bytes = t.to_bytes();
    /// let mut same = Trainer::builder(AdamW::new(5e-3)).build(&w)?;
    /// same.restore(&bytes)?;
    /// assert_eq!(same.optimizer().lr(), 1e-3);
    /// let mut other = Trainer::builder(Sgd::new(0.1)).build(&w)?;
    /// assert!(other.restore(&bytes).is_err());
    /// # Ok::<(), halfkern::Error>(())
    /// ```
    pub fn restore(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let mut r = Reader::open(bytes, KIND_TRAINER)?;
        let scaler = read_scaler(&mut r)?;
        let optimizer = match r.u8("optimizer kind")? {
            1 => Optimizer::Sgd(Sgd {
                lr: r.f32("lr")?,
                momentum: r.f32("momentum")?,
                dampening: r.f32("dampening")?,
                nesterov: match r.u8("nesterov")? {
                    0 => false,
                    1 => true,
                    k => return err(format!("nesterov flag {k}, must be 0 or 1")),
                },
                weight_decay: r.f32("weight_decay")?,
            }),
            2 => Optimizer::AdamW(AdamW {
                lr: r.f32("lr")?,
                beta1: r.f32("beta1")?,
                beta2: r.f32("beta2")?,
                eps: r.f32("eps")?,
                weight_decay: r.f32("weight_decay")?,
            }),
            k => return err(format!("unknown optimizer kind {k}")),
        };
        optimizer.validate().map_err(|e| Error::Checkpoint {
            reason: format!("optimizer: {e}"),
        })?;
        let kind = |o: &Optimizer| match o {
            Optimizer::Sgd(_) => "SGD",
            Optimizer::AdamW(_) => "AdamW",
        };
        if kind(&optimizer) != kind(&self.optimizer) {
            return err(format!(
                "saved for {}, this trainer runs {}",
                kind(&optimizer),
                kind(&self.optimizer)
            ));
        }
        let precision = match r.u8("precision")? {
            0 => Precision::Master {
                rounding: Rounding::Nearest,
            },
            1 => Precision::Master {
                rounding: Rounding::Stochastic,
            },
            2 => Precision::Pure,
            k => return err(format!("unknown precision mode {k}")),
        };
        let pure = |p: Precision| p == Precision::Pure;
        if pure(precision) != pure(self.precision) {
            return err("saved with another precision mode (master weights vs pure)");
        }
        let clip = r.f32("max_norm")?;
        // +0.0 is what `to_bytes` writes for "no clipping"; -0.0 is not, so
        // that an accepted checkpoint writes back the same bytes.
        let clip = if clip.to_bits() == 0 {
            None
        } else if clip.is_finite() && clip > 0.0 {
            Some(clip)
        } else {
            return err(format!(
                "max_norm {clip:e} out of range: must be +0 (no clipping) or finite and > 0"
            ));
        };
        let seed = r.u64("seed")?;
        let steps = r.u64("step counter")?;
        if steps == u64::MAX {
            return err(format!(
                "step counter {steps} is at its maximum: no further step could be applied"
            ));
        }
        let n = r.u64("tensor count")?;
        if n != self.tensors.len() as u64 {
            return err(format!(
                "saved for {n} parameter tensors, this trainer has {}",
                self.tensors.len()
            ));
        }
        let (has_m, has_v) = (optimizer.has_m(), optimizer.has_v());
        let mut tensors = Vec::with_capacity(self.tensors.len());
        for (i, mine) in self.tensors.iter().enumerate() {
            let len = r.u64("tensor length")?;
            if len != mine.len as u64 {
                return err(format!(
                    "tensor {i} was saved with {len} elements, this trainer's has {}",
                    mine.len
                ));
            }
            let t = State {
                len: mine.len,
                master: r.f32s("master weights")?,
                m: r.f32s("first buffer")?,
                v: r.f32s("second buffer")?,
            };
            let want = |has: bool| if has { mine.len } else { 0 };
            if t.master.len() != want(!pure(precision))
                || t.m.len() != want(has_m)
                || t.v.len() != want(has_v)
            {
                return err(format!(
                    "tensor {i}: buffer lengths do not match the optimizer"
                ));
            }
            check_values(i, &t, steps)?;
            tensors.push(t);
        }
        r.end()?;
        *self = Trainer {
            backend: self.backend,
            optimizer,
            scaler,
            clip,
            precision,
            seed,
            steps,
            tensors,
        };
        Ok(())
    }
}

/// The value invariants of one restored tensor (see the module docs):
/// finite master weights and first buffer, second moments `>= 0` and not
/// NaN, and all-zero moments before the first applied step.
fn check_values(i: usize, t: &State, steps: u64) -> Result<(), Error> {
    let first_bad = |xs: &[f32], ok: fn(f32) -> bool| xs.iter().position(|&x| !ok(x));
    if let Some(j) = first_bad(&t.master, f32::is_finite) {
        return err(format!(
            "tensor {i}: master weight {j} is {:e}, must be finite",
            t.master[j]
        ));
    }
    if let Some(j) = first_bad(&t.m, f32::is_finite) {
        return err(format!(
            "tensor {i}: first buffer value {j} is {:e}, must be finite",
            t.m[j]
        ));
    }
    if let Some(j) = first_bad(&t.v, |x| x >= 0.0) {
        return err(format!(
            "tensor {i}: second moment {j} is {:e}, must be >= 0 (and not NaN)",
            t.v[j]
        ));
    }
    if steps == 0 {
        let zero = |x: f32| x.to_bits() == 0;
        if let Some(j) = first_bad(&t.m, zero) {
            return err(format!(
                "tensor {i}: first buffer value {j} is {:e} before any step, must be +0",
                t.m[j]
            ));
        }
        if let Some(j) = first_bad(&t.v, zero) {
            return err(format!(
                "tensor {i}: second moment {j} is {:e} before any step, must be +0",
                t.v[j]
            ));
        }
    }
    Ok(())
}
