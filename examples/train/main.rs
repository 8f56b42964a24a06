//! bf16 or f16 for training on this CPU? This example answers by
//! measurement: it trains the same MLP (64 -> 256 -> 256 -> 10, ReLU,
//! softmax cross-entropy, AdamW) on the UCI handwritten digits in f32, bf16
//! with f32 master weights, f16 with dynamic loss scaling, and pure bf16 with
//! stochastic rounding, from the same initial weights and in the same data
//! order, then prints a table and a recommendation and writes the loss
//! curves as an SVG plot.
//!
//! ```sh
//! cargo run --release --example train
//! cargo run --release --example train -- --help
//! ```
//!
//! Layout: `mlp.rs` holds the data, the model and the training loop (every
//! matrix product through `halfkern::gemm`, the optimizer and loss scaling
//! through `halfkern::train`); `tests/train_example.rs` includes it too.
//! This file is the command line, the progress bar, the table and the
//! recommendation; `plot.rs` draws the SVG.

mod mlp;
mod plot;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use mlp::{Config, Recipe, RunResult};

/// bf16 and f16 count as "as accurate as f32" within this many percentage
/// points of test accuracy (the issue's bar; 1.5 points is 5 of the 359
/// test images).
const TOLERANCE_POINTS: f64 = 1.5;

/// Step times closer than this (relative) to f32's count as the same speed:
/// wall-clock times on a shared machine vary by a few percent run to run.
const SPEED_NOISE: f64 = 0.05;

const HELP: &str = "\
Trains a 64-256-256-10 MLP on the UCI 8x8 handwritten digits in several
precisions through halfkern, then prints which one to use on this CPU.

USAGE:
    cargo run --release --example train -- [OPTIONS]

OPTIONS:
    --epochs N           passes over the training set            [default: 20]
    --batch-size N       images per step                         [default: 32]
    --precisions LIST    comma-separated, any of f32, bf16, f16, bf16-pure
                                                                  [default: all]
    --seed N             initial weights, data order, stochastic rounding
                                                                  [default: 42]
    --lr X               AdamW learning rate                     [default: 0.002]
    --out PATH           where to write the loss-curve SVG
                                                     [default: target/train-loss.svg]
    -h, --help           print this help

ENVIRONMENT:
    HALFKERN_ISA=<isa>   force an instruction set (scalar, avx2, avx512, ...)
    RAYON_NUM_THREADS=N  threads for the matrix products
";

struct Args {
    cfg: Config,
    precisions: Vec<Recipe>,
    out: PathBuf,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut cfg = Config::default();
    let mut precisions = Recipe::ALL.to_vec();
    let mut out = default_out();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        if flag == "-h" || flag == "--help" {
            return Ok(None);
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{flag} needs a value (see --help)"))
        };
        match flag.as_str() {
            "--epochs" => cfg.epochs = positive(&flag, &value()?)?,
            "--batch-size" => cfg.batch_size = positive(&flag, &value()?)?,
            "--seed" => {
                let v = value()?;
                cfg.seed = v
                    .parse()
                    .map_err(|_| format!("--seed: '{v}' is not a non-negative integer"))?;
            }
            "--lr" => {
                let v = value()?;
                cfg.lr = v
                    .parse::<f32>()
                    .ok()
                    .filter(|lr| lr.is_finite() && *lr > 0.0)
                    .ok_or_else(|| format!("--lr: '{v}' is not a positive number"))?;
            }
            "--precisions" => {
                let v = value()?;
                precisions = Vec::new();
                for name in v.split(',').filter(|s| !s.trim().is_empty()) {
                    let p = Recipe::parse(name).ok_or_else(|| {
                        format!(
                            "--precisions: unknown precision '{name}' (choose from f32, bf16, f16, bf16-pure)"
                        )
                    })?;
                    if !precisions.contains(&p) {
                        precisions.push(p);
                    }
                }
                if precisions.is_empty() {
                    return Err("--precisions: name at least one precision".into());
                }
            }
            "--out" => out = PathBuf::from(value()?),
            _ => return Err(format!("unknown argument '{arg}' (see --help)")),
        }
    }
    Ok(Some(Args {
        cfg,
        precisions,
        out,
    }))
}

fn positive(flag: &str, v: &str) -> Result<usize, String> {
    v.parse::<usize>()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{flag}: '{v}' is not a positive integer"))
}

/// `target/train-loss.svg` in the package's target directory, wherever the
/// example is run from (CARGO_TARGET_DIR is honoured).
fn default_out() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("train-loss.svg")
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("error: {msg}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let isa = halfkern::Isa::selected().map_err(|e| e.to_string())?;
    let data = mlp::load_digits()?;
    let cfg = &args.cfg;
    println!(
        "halfkern train: {} training / {} test images, MLP 64-256-256-10, AdamW lr {}, \
         batch {}, {} epochs, seed {}, ISA {isa}, {} threads",
        data.train_len(),
        data.test_len(),
        cfg.lr,
        cfg.batch_size,
        cfg.epochs,
        cfg.seed,
        rayon::current_num_threads(),
    );

    let mut results = Vec::new();
    let started = Instant::now();
    for &precision in &args.precisions {
        let mut bar = ProgressBar::new(precision);
        let result = mlp::train(&data, precision, cfg, &mut |p| bar.update(p))
            .map_err(|e| format!("{}: {e}", precision.name()))?;
        bar.finish(&result);
        results.push(result);
    }
    let total = started.elapsed();

    println!();
    print_table(&results, &isa.to_string());
    println!();
    for line in recommendation(&results) {
        println!("{line}");
    }
    println!();

    let svg = plot_svg(&results, cfg);
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(&args.out, svg).map_err(|e| format!("{}: {e}", args.out.display()))?;
    println!("loss curves: {}", args.out.display());
    println!("total time: {:.1} s", total.as_secs_f64());
    Ok(())
}

/// A one-line progress bar on stderr, redrawn in place with `\r` at most
/// every 50 ms; when stderr is not a terminal, one line per precision.
struct ProgressBar {
    precision: Recipe,
    tty: bool,
    last_draw: Option<Instant>,
    started: Instant,
}

impl ProgressBar {
    const WIDTH: usize = 30;

    fn new(precision: Recipe) -> ProgressBar {
        ProgressBar {
            precision,
            tty: std::io::stderr().is_terminal(),
            last_draw: None,
            started: Instant::now(),
        }
    }

    fn update(&mut self, p: &mlp::Progress) {
        if !self.tty {
            return;
        }
        let due = self.last_draw.is_none_or(|t| t.elapsed().as_millis() >= 50);
        if !due && p.step != p.total_steps {
            return;
        }
        self.last_draw = Some(Instant::now());
        let filled = Self::WIDTH * p.step / p.total_steps.max(1);
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[2K{:<9} [{}{}] {:>3}%  epoch {:>2}  step {:>5}/{}  loss {:.4}",
            self.precision.name(),
            "#".repeat(filled),
            ".".repeat(Self::WIDTH - filled),
            100 * p.step / p.total_steps.max(1),
            p.epoch,
            p.step,
            p.total_steps,
            p.loss,
        );
        let _ = err.flush();
    }

    fn finish(&mut self, r: &RunResult) {
        let line = format!(
            "{:<9} done in {:.1} s: test accuracy {:.2}%, train loss {:.4}",
            self.precision.name(),
            self.started.elapsed().as_secs_f64(),
            100.0 * r.test_accuracy,
            r.final_train_loss,
        );
        if self.tty {
            eprintln!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
    }
}

fn print_table(results: &[RunResult], isa: &str) {
    let f32_step = results
        .iter()
        .find(|r| r.precision == Recipe::F32)
        .map(|r| r.secs_per_step);
    println!(
        "{:<10} {:>9} {:>10} {:>9} {:>7} {:>8} {:>10}  {:<11} stores",
        "precision", "test acc", "train loss", "ms/step", "vs f32", "skipped", "loss scale", "isa"
    );
    for r in results {
        let speed = f32_step.map_or("-".into(), |t| format!("{:.2}x", t / r.secs_per_step));
        println!(
            "{:<10} {:>8.2}% {:>10.4} {:>9.3} {:>7} {:>4}/{:<3} {:>10}  {:<11} {}",
            r.precision.name(),
            100.0 * r.test_accuracy,
            r.final_train_loss,
            1e3 * r.secs_per_step,
            speed,
            r.skipped,
            r.steps,
            r.final_scale,
            isa,
            r.precision.describe(),
        );
    }
    println!(
        "(vs f32: f32's time per step over this one's, >1 is faster; wall-clock, \
         so numbers vary with machine load)"
    );
}

/// Which precision to train in on this CPU, from what was measured.
fn recommendation(results: &[RunResult]) -> Vec<String> {
    let mut lines = vec!["Recommendation for this CPU:".to_string()];
    let Some(base) = results.iter().find(|r| r.precision == Recipe::F32) else {
        lines.push(
            "  run with f32 among --precisions to compare accuracy and speed against it.".into(),
        );
        return lines;
    };
    let acc = |r: &RunResult| 100.0 * r.test_accuracy;
    let speedup = |r: &RunResult| base.secs_per_step / r.secs_per_step;
    let halves: Vec<&RunResult> = results
        .iter()
        .filter(|r| r.precision != Recipe::F32)
        .collect();
    for r in &halves {
        let gap = acc(r) - acc(base);
        let verdict = if gap >= -TOLERANCE_POINTS {
            "matches f32"
        } else {
            "falls short of f32"
        };
        let mut line = format!(
            "  {:<9} {verdict} ({:+.2} points, tolerance {TOLERANCE_POINTS}); step {:.2}x f32's speed",
            r.precision.name(),
            gap,
            speedup(r)
        );
        if let Some(u) = r.f16_without_scaling {
            let pct = |n: u64| 100.0 * n as f64 / u.values.max(1) as f64;
            line += &format!(
                "; loss scale ended at {}, {} of {} steps skipped. Without loss scaling \
                 {:.1}% of its activation gradients would have been f16 subnormals and \
                 {:.2}% would have rounded to zero",
                r.final_scale,
                r.skipped,
                r.steps,
                pct(u.subnormal),
                pct(u.zero)
            );
        }
        lines.push(line);
    }
    let accurate: Vec<&RunResult> = halves
        .iter()
        .copied()
        .filter(|r| acc(r) >= acc(base) - TOLERANCE_POINTS)
        .collect();
    // The fastest accurate one; bf16 (mixed) wins a near tie (within 5%)
    // because it needs no loss scaling and has f32's range.
    let mut best = accurate
        .iter()
        .copied()
        .max_by(|a, b| speedup(a).total_cmp(&speedup(b)));
    if let (Some(b), Some(bf)) = (best, accurate.iter().find(|r| r.precision == Recipe::Bf16))
        && speedup(bf) >= 0.95 * speedup(b)
    {
        best = Some(bf);
    }
    match best {
        None => lines.push(format!(
            "  => train in f32: no half precision came within {TOLERANCE_POINTS} points of its accuracy."
        )),
        Some(b) if speedup(b) >= 1.0 + SPEED_NOISE => lines.push(format!(
            "  => train in {}: it matches f32's accuracy and steps {:.2}x as fast.",
            b.precision.name(),
            speedup(b)
        )),
        Some(b) if speedup(b) >= 1.0 - SPEED_NOISE => lines.push(format!(
            "  => train in {}: it matches f32's accuracy at f32's speed (within {:.0}%) \
             with half the bytes per weight and activation{}.",
            b.precision.name(),
            100.0 * SPEED_NOISE,
            if b.precision == Recipe::F16 {
                ""
            } else {
                ", and needs no loss scaling"
            }
        )),
        Some(b) => lines.push(format!(
            "  => for speed, f32: no half precision stepped as fast at this model size \
             (best: {} at {:.2}x). {} matches f32's accuracy with half the bytes per \
             weight and activation, which pays off once layers outgrow the caches.",
            b.precision.name(),
            speedup(b),
            b.precision.name()
        )),
    }
    lines.extend(hardware_notes());
    lines
}

/// What this CPU has natively for bf16 and f16, and what halfkern does with
/// it.
fn hardware_notes() -> Vec<String> {
    let mut notes = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        let bf16 = std::arch::is_x86_feature_detected!("avx512bf16");
        let fp16 = std::arch::is_x86_feature_detected!("avx512fp16");
        let f16c = std::arch::is_x86_feature_detected!("f16c");
        if bf16 {
            notes.push(
                "  This CPU has AVX512_BF16 (vdpbf16ps: bf16 products summed in f32), \
                 so bf16 GEMMs can run natively."
                    .to_string(),
            );
        } else {
            notes.push(
                "  This CPU has no AVX512_BF16: bf16 is widened to f32 (exactly, a shift) \
                 and multiplied with f32 FMA."
                    .to_string(),
            );
        }
        if fp16 {
            notes.push(
                "  It also has AVX512-FP16, but halfkern's f16 path widens f16 to f32 \
                 (vcvtph2ps) and uses f32 FMA, because training needs f32 accumulation; \
                 f16 gets no native arithmetic here."
                    .to_string(),
            );
        } else if f16c {
            notes.push(
                "  f16 is widened to f32 with F16C (vcvtph2ps) and multiplied with f32 FMA."
                    .to_string(),
            );
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        let bf16 = std::arch::is_aarch64_feature_detected!("bf16");
        let fp16 = std::arch::is_aarch64_feature_detected!("fp16");
        notes.push(format!(
            "  This CPU has FEAT_BF16: {}; FEAT_FP16: {}. halfkern sums every product in f32.",
            if bf16 { "yes (BFDOT/BFMMLA)" } else { "no" },
            if fp16 { "yes" } else { "no" },
        ));
    }
    notes.push(
        "  Either way: bf16 keeps f32's range (no loss scaling needed); f16 has 3 more \
         mantissa bits but needs loss scaling to keep small gradients from underflowing."
            .to_string(),
    );
    notes
}

/// The loss curves (log scale) and test accuracy per epoch, one line per
/// precision.
fn plot_svg(results: &[RunResult], cfg: &Config) -> String {
    let style = |p: Recipe| match p {
        Recipe::F32 => ("#222222", ""),
        Recipe::Bf16 => ("#1f77b4", ""),
        Recipe::F16 => ("#d62728", "6 3"),
        Recipe::Bf16Pure => ("#2ca02c", "2 3"),
    };
    let series = |f: &dyn Fn(&RunResult) -> Vec<(f64, f64)>| -> Vec<plot::Series<'_>> {
        results
            .iter()
            .map(|r| {
                let (color, dash) = style(r.precision);
                plot::Series {
                    name: r.precision.name(),
                    color,
                    dash,
                    points: f(r),
                }
            })
            .collect()
    };
    let loss = series(&|r| {
        r.epoch_loss
            .iter()
            .enumerate()
            .map(|(i, &l)| ((i + 1) as f64, f64::from(l)))
            .collect()
    });
    let accuracy = series(&|r| {
        r.epoch_accuracy
            .iter()
            .enumerate()
            .map(|(i, &a)| ((i + 1) as f64, 100.0 * a))
            .collect()
    });
    let caption = format!(
        "halfkern: MLP 64-256-256-10 on UCI digits, AdamW lr {}, batch {}, seed {}",
        cfg.lr, cfg.batch_size, cfg.seed
    );
    plot::render(
        &caption,
        &[
            plot::Panel {
                title: "training loss (mean per epoch)",
                x_label: "epoch",
                y_label: "cross-entropy (log scale)",
                log_y: true,
                legend_bottom: false,
                series: loss,
            },
            plot::Panel {
                title: "held-out test accuracy",
                x_label: "epoch",
                y_label: "accuracy (%)",
                log_y: false,
                legend_bottom: true,
                series: accuracy,
            },
        ],
    )
}
