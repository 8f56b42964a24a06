//! Step-time statistics and the answer to "bf16 or f16?" of the `train`
//! example.
//!
//! Wall-clock step times on a shared machine move by more than the
//! difference between two precisions when a step is short, so the example
//! never compares two single numbers. The rows of the wide workload are
//! trained in lockstep (`wide.rs`), so the same step block of two rows ran
//! under the same load; each block gives one ratio of their mean step
//! times, and the verdict reads the distribution of those ratios: one row is
//! called faster only when its median ratio differs from 1 by more than the
//! ratios' interquartile range (the spread), otherwise "same speed". A
//! paired ratio cancels the load both rows shared, which two independent
//! means with their own spreads would not.
//!
//! This file is shared with `tests/train_example.rs`, which checks that the
//! recommendation's claims match the spreads it measured.

/// Median and quartiles of a sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    /// The median.
    pub median: f64,
    /// The lower quartile.
    pub q25: f64,
    /// The upper quartile.
    pub q75: f64,
    /// How many values.
    pub n: usize,
}

impl Spread {
    /// The median and quartiles (linear interpolation between order
    /// statistics) of the finite values of `xs`; NaN for an empty sample.
    pub fn of(xs: &[f64]) -> Spread {
        let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        let q = |p: f64| {
            if v.is_empty() {
                return f64::NAN;
            }
            let pos = p * (v.len() - 1) as f64;
            let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
            v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
        };
        Spread {
            median: q(0.5),
            q25: q(0.25),
            q75: q(0.75),
            n: v.len(),
        }
    }

    /// The interquartile range.
    pub fn width(&self) -> f64 {
        self.q75 - self.q25
    }
}

/// Fewer repeats than this and no row is called faster.
pub const MIN_REPEATS: usize = 5;

/// The verdict of one comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Speed {
    /// The first row steps faster, by more than the spread.
    Faster,
    /// The first row steps slower, by more than the spread.
    Slower,
    /// The difference is within the spread.
    Same,
}

impl Speed {
    /// As the table and `--json` write it.
    pub const fn name(self) -> &'static str {
        match self {
            Speed::Faster => "faster",
            Speed::Slower => "slower",
            Speed::Same => "same speed",
        }
    }
}

/// Row `a` against row `b`: the per-block ratios of their mean step times.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    /// The first row's name.
    pub a: String,
    /// The second row's name.
    pub b: String,
    /// `a`'s mean step time over `b`'s, per block (< 1: `a` is faster).
    pub ratio: Spread,
    /// The verdict from `ratio`.
    pub speed: Speed,
}

impl Comparison {
    /// `a`'s and `b`'s step times (seconds, step by step, measured
    /// interleaved), compared in blocks of `block` steps. The first block is
    /// left out as warm-up.
    pub fn new(a: &str, a_secs: &[f64], b: &str, b_secs: &[f64], block: usize) -> Comparison {
        let (ra, rb) = (repeats(a_secs, block), repeats(b_secs, block));
        let ratios: Vec<f64> = ra.iter().zip(&rb).map(|(x, y)| x / y).collect();
        let ratio = Spread::of(&ratios);
        Comparison {
            a: a.to_string(),
            b: b.to_string(),
            ratio,
            speed: verdict(&ratio),
        }
    }

    /// How far the median ratio is from 1: the difference the verdict
    /// weighs against the spread.
    pub fn difference(&self) -> f64 {
        (1.0 - self.ratio.median).abs()
    }
}

/// Faster or slower only when the median ratio is further from 1 than the
/// ratios' interquartile range, over at least [`MIN_REPEATS`] repeats.
pub fn verdict(ratio: &Spread) -> Speed {
    let difference = 1.0 - ratio.median;
    // A NaN median or spread (no repeats) is no evidence either way.
    let beyond = difference.abs() > ratio.width();
    if ratio.n < MIN_REPEATS || !beyond {
        Speed::Same
    } else if difference > 0.0 {
        Speed::Faster
    } else {
        Speed::Slower
    }
}

/// The mean of each block of `block` consecutive step times, the first
/// block (warm-up) left out; an incomplete last block too.
pub fn repeats(secs: &[f64], block: usize) -> Vec<f64> {
    let block = block.max(1);
    secs.chunks_exact(block)
        .skip(1)
        .map(|c| c.iter().sum::<f64>() / block as f64)
        .collect()
}

/// What the recommendation is made from.
#[derive(Clone, Debug)]
pub struct Evidence {
    /// bf16 against f32.
    pub bf16_vs_f32: Comparison,
    /// f16 against f32.
    pub f16_vs_f32: Comparison,
    /// bf16 against f16.
    pub bf16_vs_f16: Comparison,
    /// Whether bf16 (with f32 master weights) matched f32's accuracy.
    pub bf16_accurate: bool,
    /// Whether f16 (with loss scaling) matched f32's accuracy.
    pub f16_accurate: bool,
    /// Whether the big-input rows showed f16 skipping steps for overflow
    /// where bf16 trained without a skip.
    pub f16_overflowed_bf16_did_not: bool,
}

/// The answer, and the lines that say why.
#[derive(Clone, Debug)]
pub struct Recommendation {
    /// "bf16", "f16" or "f32".
    pub choice: &'static str,
    /// Human-readable reasons, one per line.
    pub lines: Vec<String>,
    /// The comparisons the lines cite, each worded by its own verdict.
    pub claims: Vec<Comparison>,
}

/// bf16 wins unless f16 is faster by more than the spread (bf16 needs no
/// loss scaling and has f32's range); f32 only when neither half precision
/// matched its accuracy. Every speed claim in the lines is a
/// [`Comparison`]'s verdict, worded by [`Speed::name`].
pub fn recommend(e: &Evidence) -> Recommendation {
    let vs = |c: &Comparison| match c.speed {
        Speed::Faster => format!(
            "faster than {} ({:.2}x its step time, spread {:.2})",
            c.b,
            c.ratio.median,
            c.ratio.width()
        ),
        Speed::Slower => format!(
            "slower than {} ({:.2}x its step time, spread {:.2})",
            c.b,
            c.ratio.median,
            c.ratio.width()
        ),
        Speed::Same if c.ratio.n < MIN_REPEATS => format!(
            "same speed as {} as far as {} repeats tell (run more steps)",
            c.b, c.ratio.n
        ),
        Speed::Same => format!(
            "same speed as {} ({:.2}x, within the spread {:.2})",
            c.b,
            c.ratio.median,
            c.ratio.width()
        ),
    };
    let mut lines = Vec::new();
    let mut claims = Vec::new();
    let choice = match (e.bf16_accurate, e.f16_accurate) {
        (false, false) => {
            lines.push("neither bf16 nor f16 matched f32's accuracy: train in f32".into());
            "f32"
        }
        (true, f16_ok) if !f16_ok || e.bf16_vs_f16.speed != Speed::Slower => {
            lines.push(format!(
                "bf16: {}; {}",
                vs(&e.bf16_vs_f16),
                vs(&e.bf16_vs_f32)
            ));
            claims.extend([e.bf16_vs_f16.clone(), e.bf16_vs_f32.clone()]);
            lines.push(if e.f16_overflowed_bf16_did_not {
                "bf16 needs no loss scaling and keeps f32's range: it trained where f16 \
                 overflowed (bf16-big against f16-big)"
                    .into()
            } else {
                "bf16 needs no loss scaling and keeps f32's range".into()
            });
            "bf16"
        }
        _ => {
            claims.push(e.f16_vs_f32.clone());
            if e.bf16_accurate {
                claims.push(e.bf16_vs_f16.clone());
            }
            lines.push(format!(
                "f16: {}; {}",
                vs(&e.f16_vs_f32),
                if e.bf16_accurate {
                    format!("bf16 is {}", vs(&e.bf16_vs_f16))
                } else {
                    "bf16 fell short of f32's accuracy".to_string()
                }
            ));
            lines.push(
                "f16 needs dynamic loss scaling (f16-noscale) and activations below 65504 \
                 (f16-big)"
                    .into(),
            );
            "f16"
        }
    };
    Recommendation {
        choice,
        lines,
        claims,
    }
}
