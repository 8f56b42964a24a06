//! What the `train` example prints and writes: the tables, the failure
//! lessons in words, the memory table, `--json`, and the loss-curve plot.
//! Everything here reads results; nothing trains.

use std::fmt::Write as _;

use crate::accum::AccumError;
use crate::mlp::{Recipe, RunResult};
use crate::plot;
use crate::rows::{BIG_INPUT_SCALE, Row, RowResult, WideConfig};
use crate::verdict::{Comparison, Recommendation, Spread};

/// Steps per timing repeat: each block of this many steps of two rows gives
/// one ratio of their mean step times.
pub const BLOCK: usize = 5;

/// Steps averaged for a row's final loss.
pub const FINAL_STEPS: usize = 5;

/// Everything one run measured.
pub struct Report<'a> {
    /// The ISA the kernels ran on.
    pub isa: String,
    /// rayon's threads.
    pub threads: usize,
    /// The digits check, one result per precision.
    pub digits: &'a [RunResult],
    /// The wide workload's configuration.
    pub wide_cfg: &'a WideConfig,
    /// The wide workload, one result per row.
    pub wide: &'a [RowResult],
    /// Each row's step time against f32's, and bf16's against f16's.
    pub comparisons: &'a [Comparison],
    /// Error growth with k, per GEMM.
    pub accumulation: &'a [(&'static str, Vec<AccumError>)],
    /// The answer.
    pub recommendation: &'a Recommendation,
}

impl Report<'_> {
    fn row(&self, row: Row) -> Option<&RowResult> {
        self.wide.iter().find(|r| r.row == row)
    }

    fn vs_f32(&self, row: Row) -> Option<&Comparison> {
        self.comparisons
            .iter()
            .find(|c| c.a == row.name() && c.b == "f32")
    }
}

/// Mean step time of each repeat, in ms.
fn ms_spread(r: &RowResult) -> Spread {
    let reps: Vec<f64> = crate::verdict::repeats(&r.step_secs, BLOCK)
        .iter()
        .map(|s| 1e3 * s)
        .collect();
    Spread::of(&reps)
}

/// The digits check's table: accuracy is what it is for.
pub fn digits_table(out: &mut String, results: &[RunResult]) {
    let _ = writeln!(
        out,
        "Digits MLP 64-256-256-10 (the accuracy check; its steps are too short to time):"
    );
    let _ = writeln!(
        out,
        "{:<10} {:>9} {:>10} {:>8} {:>10}  stores",
        "precision", "test acc", "train loss", "skipped", "loss scale"
    );
    for r in results {
        let _ = writeln!(
            out,
            "{:<10} {:>8.2}% {:>10.4} {:>4}/{:<3} {:>10}  {}",
            r.precision.name(),
            100.0 * r.test_accuracy,
            r.final_train_loss,
            r.skipped,
            r.steps,
            r.final_scale,
            r.precision.describe(),
        );
    }
}

/// The wide workload's table, good rows then failure rows.
pub fn wide_table(out: &mut String, rep: &Report<'_>) {
    let c = rep.wide_cfg;
    let _ = writeln!(
        out,
        "Wide MLP 64-{w}-{w}-10, batch {b}, {s} steps, {g:.2} GFLOP/step, {p} parameters, \
         loss weight {lw} (step times: median of {n} interleaved repeats of {BLOCK} steps, \
         spread = interquartile range):",
        w = c.width,
        b = c.batch,
        s = c.steps,
        g = c.flop_per_step() / 1e9,
        p = c.params(),
        lw = c.loss_weight,
        n = rep.wide.first().map_or(0, |r| ms_spread(r).n),
    );
    let _ = writeln!(
        out,
        "{:<16} {:>9} {:>8} {:>8} {:>7} {:>15} {:>8} {:>10}  what",
        "row", "loss", "test acc", "ms/step", "spread", "vs f32", "skipped", "loss scale"
    );
    for (i, r) in rep.wide.iter().enumerate() {
        if i > 0 && r.row.is_failure() && !rep.wide[i - 1].row.is_failure() {
            let _ = writeln!(
                out,
                "-- one safeguard removed (bf16-big: f16-big's setting, in bf16):"
            );
        }
        let t = ms_spread(r);
        let vs = rep.vs_f32(r.row).map_or("-".to_string(), |c| {
            format!("{:.2}x {}", c.ratio.median, short(c))
        });
        let _ = writeln!(
            out,
            "{:<16} {:>9} {:>7.2}% {:>8.1} {:>7.1} {:>15} {:>4}/{:<3} {:>10}  {}",
            r.row.name(),
            fmt_loss(r.final_loss(FINAL_STEPS)),
            100.0 * r.final_accuracy(),
            t.median,
            t.width(),
            vs,
            r.skipped,
            r.loss.len(),
            fmt_scale(r.final_scale),
            r.row.describe(),
        );
    }
    let _ = writeln!(
        out,
        "(vs f32: this row's step time over f32's, per repeat; \"faster\"/\"slower\" only \
         when the median is further from 1 than the ratios' spread, else \"same\". The pure \
         rows round outside the trainer, two extra passes: Precision::Pure fuses them.)"
    );
}

fn short(c: &Comparison) -> &'static str {
    match c.speed {
        crate::verdict::Speed::Faster => "faster",
        crate::verdict::Speed::Slower => "slower",
        crate::verdict::Speed::Same => "same",
    }
}

fn fmt_loss(l: f32) -> String {
    if l.is_finite() && (l == 0.0 || l >= 1e-3) {
        format!("{l:.4}")
    } else if l.is_finite() {
        format!("{l:.2e}")
    } else {
        "NaN".into()
    }
}

fn fmt_scale(s: f32) -> String {
    if (1.0..=1e6).contains(&s) {
        format!("{s}")
    } else {
        format!("{s:.1e}")
    }
}

/// The lessons of the failure rows, in words, from what they measured.
pub fn lessons(rep: &Report<'_>) -> Vec<String> {
    let mut lines = Vec::new();
    let loss = |r: &RowResult| fmt_loss(r.final_loss(FINAL_STEPS));
    if let (Some(ok), Some(bad)) = (rep.row(Row::F16), rep.row(Row::F16NoScaling))
        && let (Some(g_ok), Some(g_bad)) = (ok.grad_range, bad.grad_range)
    {
        lines.push(format!(
            "f16 without loss scaling: {:.1}% of the activation gradients flushed to zero and \
             {:.1}% subnormal (with scaling: {:.1}% and {:.1}%); loss {} against {}.",
            g_bad.zero_pct(),
            g_bad.subnormal_pct(),
            g_ok.zero_pct(),
            g_ok.subnormal_pct(),
            loss(bad),
            loss(ok),
        ));
    }
    if let Some(big) = rep.row(Row::F16Big) {
        let mut line = format!(
            "f16 forward overflow (inputs x {BIG_INPUT_SCALE}, activations past 65504): the loss \
             is NaN; the scaler skipped {}/{} steps and backed off from {} to {} (it scales \
             gradients, not activations, so it cannot help)",
            big.skipped,
            big.loss.len(),
            fmt_scale(big.scale.first().copied().unwrap_or(1.0)),
            fmt_scale(big.final_scale),
        );
        if let Some(nos) = rep.row(Row::F16BigNoScaling) {
            let _ = write!(
                line,
                "; without it {}/{} steps were skipped at scale {}: halfkern's trainer checks \
                 for inf/NaN whatever the scaler, where a loop without the check writes NaN \
                 into the weights on the first step",
                nos.skipped,
                nos.loss.len(),
                fmt_scale(nos.final_scale),
            );
        }
        if let Some(bf) = rep.row(Row::Bf16Big) {
            let _ = write!(
                line,
                "; bf16 at the same setting trained to loss {}, {:.1}% test accuracy",
                loss(bf),
                100.0 * bf.final_accuracy()
            );
        }
        lines.push(line + ".");
    }
    if let (Some(sr), Some(rne)) = (rep.row(Row::Bf16Pure), rep.row(Row::Bf16PureNearest))
        && let (Some(u_sr), Some(u_rne)) = (sr.updates, rne.updates)
    {
        lines.push(format!(
            "bf16 without master weights: rounding to nearest made {:.1}% of the weight \
             movement AdamW asked for ({:.1}% of the updates were rounded away) and the loss \
             ended at {}; stochastic rounding made {:.1}% of it (unbiased: what it drops \
             here it adds there) and ended at {} (bf16 with master weights: {}).",
            100.0 * u_rne.kept(),
            u_rne.lost_pct(),
            loss(rne),
            100.0 * u_sr.kept(),
            loss(sr),
            rep.row(Row::Bf16).map_or("-".into(), loss),
        ));
    }
    lines
}

/// The bf16-accumulation table.
pub fn accumulation_table(out: &mut String, acc: &[(&'static str, Vec<AccumError>)]) {
    let _ = writeln!(
        out,
        "bf16 products summed in f32 (halfkern) or in bf16 (simulated: halfkern never does \
         this), relative error against f64, on the bf16 row's last step:"
    );
    let _ = writeln!(
        out,
        "{:<38} {:>6} {:>12} {:>12}",
        "GEMM", "k", "f32 sums", "bf16 sums"
    );
    for (name, errs) in acc {
        for e in errs {
            let _ = writeln!(
                out,
                "{:<38} {:>6} {:>12.2e} {:>12.2e}",
                name, e.k, e.f32_sum, e.bf16_sum
            );
        }
    }
}

/// The memory table: bytes per parameter of the training state, and the
/// activation bytes of one step.
pub fn memory_table(out: &mut String, rep: &Report<'_>) {
    let p = rep.wide_cfg.params();
    let _ = writeln!(
        out,
        "Memory, exact bytes ({p} parameters; activations and their gradients for one step \
         of {} images):",
        rep.wide_cfg.batch
    );
    let _ = writeln!(
        out,
        "{:<10} {:>7} {:>6} {:>7} {:>8} {:>10} {:>12} {:>12}",
        "recipe", "weights", "grads", "master", "moments", "B/param", "state B", "activation B"
    );
    for r in rep.wide.iter().filter(|r| !r.row.is_failure()) {
        let m = r.memory;
        let _ = writeln!(
            out,
            "{:<10} {:>7} {:>6} {:>7} {:>8} {:>10} {:>12} {:>12}",
            r.row.name(),
            m.weights,
            m.grads,
            m.master,
            m.moments,
            m.per_param(),
            m.per_param() * p,
            m.activations
        );
    }
    let _ = writeln!(
        out,
        "(bf16 and f16 both take 2 bytes a value: neither needs more memory than the other. \
         Gradients are f32 here because the weight-gradient GEMMs write f32; the failure \
         rows use their recipe's bytes.)"
    );
}

// ---------------------------------------------------------------------------
// --json
// ---------------------------------------------------------------------------

/// A JSON string literal.
fn js(s: &str) -> String {
    let mut o = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// A JSON number; `null` for NaN and infinities (JSON has none).
fn jn(x: f64) -> String {
    if x.is_finite() {
        format!("{x}")
    } else {
        "null".into()
    }
}

fn jopt(x: Option<f64>) -> String {
    x.map_or("null".into(), jn)
}

/// The recommendation, the speed comparisons, the tables: one JSON object.
pub fn json(rep: &Report<'_>) -> String {
    let mut o = String::from("{\n");
    let _ = writeln!(o, "  \"isa\": {},", js(&rep.isa));
    let _ = writeln!(o, "  \"threads\": {},", rep.threads);
    let reasons: Vec<String> = rep.recommendation.lines.iter().map(|l| js(l)).collect();
    let claims: Vec<String> = rep
        .recommendation
        .claims
        .iter()
        .map(|c| {
            format!(
                "{{\"a\": {}, \"b\": {}, \"verdict\": {}}}",
                js(&c.a),
                js(&c.b),
                js(c.speed.name())
            )
        })
        .collect();
    let _ = writeln!(
        o,
        "  \"recommendation\": {{\"choice\": {}, \"reasons\": [{}], \"claims\": [{}]}},",
        js(rep.recommendation.choice),
        reasons.join(", "),
        claims.join(", ")
    );
    let speed: Vec<String> = rep
        .comparisons
        .iter()
        .map(|c| {
            format!(
                "    {{\"a\": {}, \"b\": {}, \"ratio_median\": {}, \"ratio_q25\": {}, \
                 \"ratio_q75\": {}, \"repeats\": {}, \"difference\": {}, \"spread\": {}, \
                 \"verdict\": {}}}",
                js(&c.a),
                js(&c.b),
                jn(c.ratio.median),
                jn(c.ratio.q25),
                jn(c.ratio.q75),
                c.ratio.n,
                jn(c.difference()),
                jn(c.ratio.width()),
                js(c.speed.name())
            )
        })
        .collect();
    let _ = writeln!(o, "  \"speed\": [\n{}\n  ],", speed.join(",\n"));
    let c = rep.wide_cfg;
    let _ = writeln!(
        o,
        "  \"wide\": {{\"width\": {}, \"batch\": {}, \"steps\": {}, \"gflop_per_step\": {}, \
         \"params\": {}, \"loss_weight\": {}, \"block\": {BLOCK}, \"rows\": [",
        c.width,
        c.batch,
        c.steps,
        jn(c.flop_per_step() / 1e9),
        c.params(),
        jn(f64::from(c.loss_weight))
    );
    let rows: Vec<String> = rep
        .wide
        .iter()
        .map(|r| {
            let t = ms_spread(r);
            let m = r.memory;
            format!(
                "    {{\"row\": {}, \"what\": {}, \"failure\": {}, \"loss\": {}, \
                 \"test_accuracy\": {}, \"ms_per_step\": {}, \"ms_q25\": {}, \"ms_q75\": {}, \
                 \"skipped\": {}, \"steps\": {}, \"final_scale\": {}, \
                 \"grads_zero_pct\": {}, \"grads_subnormal_pct\": {}, \"updates_kept\": {}, \
                 \"updates_rounded_away_pct\": {}, \"memory\": {{\"weights\": {}, \"grads\": {}, \
                 \"master\": {}, \"moments\": {}, \"per_param\": {}, \"activation_bytes\": {}}}}}",
                js(r.row.name()),
                js(r.row.describe()),
                r.row.is_failure(),
                jn(f64::from(r.final_loss(FINAL_STEPS))),
                jn(r.final_accuracy()),
                jn(t.median),
                jn(t.q25),
                jn(t.q75),
                r.skipped,
                r.loss.len(),
                jn(f64::from(r.final_scale)),
                jopt(r.grad_range.map(|g| g.zero_pct())),
                jopt(r.grad_range.map(|g| g.subnormal_pct())),
                jopt(r.updates.map(|u| u.kept())),
                jopt(r.updates.map(|u| u.lost_pct())),
                m.weights,
                m.grads,
                m.master,
                m.moments,
                m.per_param(),
                m.activations
            )
        })
        .collect();
    let _ = writeln!(o, "{}\n  ]}},", rows.join(",\n"));
    let acc: Vec<String> = rep
        .accumulation
        .iter()
        .flat_map(|(name, errs)| {
            errs.iter().map(move |e| {
                format!(
                    "    {{\"gemm\": {}, \"k\": {}, \"f32_sum_rel_err\": {}, \"bf16_sum_rel_err\": {}}}",
                    js(name),
                    e.k,
                    jn(e.f32_sum),
                    jn(e.bf16_sum)
                )
            })
        })
        .collect();
    let _ = writeln!(o, "  \"accumulation\": [\n{}\n  ],", acc.join(",\n"));
    let digits: Vec<String> = rep
        .digits
        .iter()
        .map(|r| {
            format!(
                "    {{\"precision\": {}, \"test_accuracy\": {}, \"train_loss\": {}, \
                 \"skipped\": {}, \"steps\": {}}}",
                js(r.precision.name()),
                jn(r.test_accuracy),
                jn(f64::from(r.final_train_loss)),
                r.skipped,
                r.steps
            )
        })
        .collect();
    let _ = writeln!(o, "  \"digits\": [\n{}\n  ]", digits.join(",\n"));
    o.push_str("}\n");
    o
}

// ---------------------------------------------------------------------------
// The plot
// ---------------------------------------------------------------------------

fn style(row: Row) -> (&'static str, &'static str) {
    match row {
        Row::F32 => ("#222222", ""),
        Row::Bf16 => ("#1f77b4", ""),
        Row::F16 => ("#d62728", ""),
        Row::Bf16Pure => ("#2ca02c", ""),
        Row::F16NoScaling => ("#ff7f0e", "6 3"),
        Row::F16Big => ("#9467bd", "6 3"),
        Row::F16BigNoScaling => ("#8c564b", "2 3"),
        Row::Bf16Big => ("#17becf", "6 3"),
        Row::Bf16PureNearest => ("#e377c2", "6 3"),
    }
}

/// Three panels over the wide workload's steps: the training loss (mean
/// per block of steps, log scale), the test accuracy, and the loss scale
/// of the f16 rows.
pub fn plot_svg(rep: &Report<'_>) -> String {
    let names: Vec<String> = rep
        .wide
        .iter()
        .map(|r| {
            if r.loss.iter().all(|l| !l.is_finite()) {
                format!("{} (NaN)", r.row.name())
            } else {
                r.row.name().to_string()
            }
        })
        .collect();
    let series = |keep: &dyn Fn(&RowResult) -> bool,
                  f: &dyn Fn(&RowResult) -> Vec<(f64, f64)>|
     -> Vec<plot::Series<'_>> {
        rep.wide
            .iter()
            .zip(&names)
            .filter(|(r, _)| keep(r))
            .map(|(r, name)| {
                let (color, dash) = style(r.row);
                plot::Series {
                    name,
                    color,
                    dash,
                    points: f(r),
                }
            })
            .collect()
    };
    let loss = series(&|_| true, &|r| {
        r.loss
            .chunks(BLOCK)
            .enumerate()
            .map(|(i, c)| {
                let mean = c.iter().map(|&l| f64::from(l)).sum::<f64>() / c.len() as f64;
                ((i * BLOCK + c.len()) as f64, mean)
            })
            .collect()
    });
    let accuracy = series(&|_| true, &|r| {
        r.accuracy
            .iter()
            .map(|&(s, a)| (s as f64, 100.0 * a))
            .collect()
    });
    let scale = series(&|r| r.row.elem() == crate::rows::Elem::F16, &|r| {
        r.scale
            .iter()
            .enumerate()
            .map(|(i, &s)| ((i + 1) as f64, f64::from(s)))
            .collect()
    });
    let c = rep.wide_cfg;
    let caption = format!(
        "halfkern: MLP 64-{w}-{w}-10 on UCI digits, batch {}, AdamW lr {} (cosine), loss weight {}, {} on {} threads",
        c.batch,
        c.lr,
        c.loss_weight,
        rep.isa,
        rep.threads,
        w = c.width
    );
    plot::render(
        &caption,
        &[
            plot::Panel {
                title: "training loss",
                x_label: "step",
                y_label: "cross-entropy (log scale)",
                log_y: true,
                legend_bottom: false,
                series: loss,
            },
            plot::Panel {
                title: "held-out test accuracy",
                x_label: "step",
                y_label: "accuracy (%)",
                log_y: false,
                legend_bottom: true,
                series: accuracy,
            },
            plot::Panel {
                title: "loss scale (f16 rows)",
                x_label: "step",
                y_label: "scale (log)",
                log_y: true,
                legend_bottom: false,
                series: scale,
            },
        ],
    )
}

/// Whether the digits check's `p` came within `tolerance` points of f32's
/// test accuracy (true when either is missing: nothing to hold against).
pub fn digits_accurate(digits: &[RunResult], p: Recipe, tolerance: f64) -> bool {
    let acc = |q: Recipe| {
        digits
            .iter()
            .find(|r| r.precision == q)
            .map(|r| r.test_accuracy)
    };
    match (acc(Recipe::F32), acc(p)) {
        (Some(base), Some(a)) => 100.0 * (a - base) >= -tolerance,
        _ => true,
    }
}
