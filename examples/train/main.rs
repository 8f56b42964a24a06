//! bf16 or f16 for training on this CPU? This example answers by
//! measurement, and shows what goes wrong without each safeguard.
//!
//! ```sh
//! cargo run --release --example train
//! cargo run --release --example train -- --json
//! cargo run --release --example train -- --help
//! ```
//!
//! Three phases:
//!
//! 1. **Accuracy check** (`mlp.rs`): a small MLP on the UCI digits in f32,
//!    bf16 and f16 with f32 master weights, and pure bf16 with stochastic
//!    rounding. Its steps take well under a millisecond, too short to time.
//! 2. **Speed and failure rows** (`wide.rs`, `rows.rs`): a 64-1024-1024-10
//!    MLP on the same digits, batches of 256, where matrix products
//!    dominate a step. The recommended recipes and one row per missing
//!    safeguard (f16 without loss scaling, f16 whose activations overflow,
//!    pure bf16 rounded to nearest) are trained in lockstep, so their step
//!    times are measured interleaved; `verdict.rs` calls a precision faster
//!    only when the difference exceeds the spread of its repeats.
//! 3. **Accumulation** (`accum.rs`): the error of bf16 products summed in
//!    bf16 (simulated; halfkern always sums in f32) on the wide model's own
//!    GEMM operands, as k grows.
//!
//! Then the tables, the lessons, the memory per parameter, the
//! recommendation (or `--json`), and the SVG plot (`plot.rs`, drawn by
//! `report.rs`). `tests/train_example.rs` includes these files too.

mod accum;
#[allow(
    dead_code,
    reason = "the per-epoch curves and timings of mlp.rs are for its tests and the MPI example"
)]
mod mlp;
mod plot;
mod report;
mod rows;
mod verdict;
mod wide;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use mlp::{Config, Recipe};
use rows::{Row, WideConfig};
use verdict::{Comparison, Evidence};

/// bf16 and f16 count as "as accurate as f32" within this many percentage
/// points of test accuracy (1.5 points is 5 of the 359 test images).
const TOLERANCE_POINTS: f64 = 1.5;

const HELP: &str = "\
Trains MLPs on the UCI 8x8 handwritten digits through halfkern in f32, bf16,
f16 and pure bf16, and with one safeguard removed at a time; prints which
precision to use on this CPU, why, and what each safeguard prevents.

USAGE:
    cargo run --release --example train -- [OPTIONS]

ACCURACY CHECK (64-256-256-10):
    --epochs N           passes over the training set            [default: 20]
    --batch-size N       images per step                         [default: 32]
    --precisions LIST    comma-separated, any of f32, bf16, f16, bf16-pure
                                                                  [default: all]
    --lr X               AdamW learning rate                     [default: 0.002]

SPEED AND FAILURE ROWS (64-W-W-10):
    --steps N            steps per row                           [default: 80]
    --width W            hidden width, at most 8192              [default: 1024]
    --wide-batch N       images per step (at most 1438)          [default: 256]
    --wide-lr X          AdamW peak learning rate (cosine)       [default: 0.001]
    --loss-weight X      multiplies the loss before backward     [default: 0.000244140625]

BOTH:
    --seed N             initial weights, data order, stochastic rounding
                                                                  [default: 42]
    --out PATH           where to write the loss-curve SVG
                                                     [default: target/train-loss.svg]
    --json               print the recommendation and tables as JSON on stdout
    -h, --help           print this help

ENVIRONMENT:
    HALFKERN_ISA=<isa>   force an instruction set (scalar, avx2, avx512, ...)
    RAYON_NUM_THREADS=N  threads for the matrix products
";

struct Args {
    cfg: Config,
    wide: WideConfig,
    precisions: Vec<Recipe>,
    out: PathBuf,
    json: bool,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut cfg = Config::default();
    let mut wide = WideConfig::default();
    let mut precisions = Recipe::ALL.to_vec();
    let mut out = default_out();
    let mut json = false;
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        if flag == "-h" || flag == "--help" {
            return Ok(None);
        }
        if flag == "--json" {
            if inline.is_some() {
                return Err("--json takes no value".into());
            }
            json = true;
            continue;
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{flag} needs a value (see --help)"))
        };
        match flag.as_str() {
            "--epochs" => cfg.epochs = bounded(&flag, &value()?, 10_000)?,
            "--batch-size" => cfg.batch_size = bounded(&flag, &value()?, 100_000)?,
            "--steps" => wide.steps = bounded(&flag, &value()?, 1_000_000)?,
            "--width" => wide.width = bounded(&flag, &value()?, 8192)?,
            "--wide-batch" => wide.batch = bounded(&flag, &value()?, 100_000)?,
            "--seed" => {
                let v = value()?;
                cfg.seed = v
                    .parse()
                    .map_err(|_| format!("--seed: '{v}' is not a non-negative integer"))?;
                wide.seed = cfg.seed;
            }
            "--lr" => cfg.lr = positive_f32(&flag, &value()?)?,
            "--wide-lr" => wide.lr = positive_f32(&flag, &value()?)?,
            "--loss-weight" => wide.loss_weight = positive_f32(&flag, &value()?)?,
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
        wide,
        precisions,
        out,
        json,
    }))
}

/// A positive integer up to `max`: the limits keep a typo from asking for
/// more memory than any machine has (a failed allocation aborts).
fn bounded(flag: &str, v: &str, max: usize) -> Result<usize, String> {
    v.parse::<usize>()
        .ok()
        .filter(|&n| n > 0 && n <= max)
        .ok_or_else(|| format!("{flag}: '{v}' is not an integer in 1..={max}"))
}

fn positive_f32(flag: &str, v: &str) -> Result<f32, String> {
    v.parse::<f32>()
        .ok()
        .filter(|x| x.is_normal() && *x > 0.0)
        .ok_or_else(|| format!("{flag}: '{v}' is not a positive number"))
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
    if args.wide.batch > data.train_len() {
        return Err(format!(
            "--wide-batch: {} is more than the {} training images",
            args.wide.batch,
            data.train_len()
        ));
    }
    let threads = rayon::current_num_threads();
    let started = Instant::now();
    eprintln!(
        "halfkern train: ISA {isa}, {threads} threads; {} training / {} test digits",
        data.train_len(),
        data.test_len()
    );

    // Phase 1: the accuracy check.
    let cfg = &args.cfg;
    let mut digits = Vec::new();
    let mut bar = Phase::new("1/3 digits MLP, accuracy check");
    let n = args.precisions.len();
    for (i, &precision) in args.precisions.iter().enumerate() {
        let result = mlp::train(&data, precision, cfg, &mut |p| {
            let done = i * p.total_steps + p.step;
            bar.update(
                done,
                n * p.total_steps,
                &format!("{} epoch {} loss {:.4}", precision.name(), p.epoch, p.loss),
            );
        })
        .map_err(|e| format!("{}: {e}", precision.name()))?;
        digits.push(result);
    }
    bar.finish(&format!("{n} precisions, {} epochs each", cfg.epochs));

    // Phase 2: the wide workload, every row in lockstep.
    let mut bar = Phase::new("2/3 wide MLP, 9 rows in lockstep");
    let wide = wide::train_rows(&data, &Row::ALL, &args.wide, &mut |p| {
        bar.update(p.done, p.total, &format!("{} loss {:.4}", p.row, p.loss));
    })
    .map_err(|e| format!("wide workload: {e}"))?;
    bar.finish(&format!("{} steps per row", args.wide.steps));

    // Phase 3: bf16 accumulation on the bf16 row's operands.
    let mut bar = Phase::new("3/3 bf16 accumulation");
    let operands = wide
        .iter()
        .find(|r| r.row == Row::Bf16)
        .map(|r| r.operands.clone())
        .unwrap_or_default();
    let mut accumulation = Vec::new();
    for (i, ops) in operands.iter().enumerate() {
        bar.update(i, operands.len(), ops.name);
        let errs = accum::growth(ops, 64, 64).map_err(|e| format!("accumulation: {e}"))?;
        accumulation.push((ops.name, errs));
    }
    bar.finish("2 GEMMs");

    let find = |row: Row| {
        wide.iter()
            .find(|r| r.row == row)
            .ok_or_else(|| format!("row {} missing", row.name()))
    };
    let (f32_row, bf16_row, f16_row) = (find(Row::F32)?, find(Row::Bf16)?, find(Row::F16)?);
    let cmp = |a: &rows::RowResult, b: &rows::RowResult| {
        Comparison::new(
            a.row.name(),
            &a.step_secs,
            b.row.name(),
            &b.step_secs,
            report::BLOCK,
        )
    };
    let mut comparisons: Vec<Comparison> = wide
        .iter()
        .filter(|r| r.row != Row::F32)
        .map(|r| cmp(r, f32_row))
        .collect();
    comparisons.push(cmp(bf16_row, f16_row));
    let wide_ok = |r: &rows::RowResult| {
        100.0 * (r.final_accuracy() - f32_row.final_accuracy()) >= -TOLERANCE_POINTS
    };
    let find_cmp = |a: &str, b: &str| {
        comparisons
            .iter()
            .find(|c| c.a == a && c.b == b)
            .cloned()
            .expect("compared above")
    };
    let evidence = Evidence {
        bf16_vs_f32: find_cmp("bf16", "f32"),
        f16_vs_f32: find_cmp("f16", "f32"),
        bf16_vs_f16: find_cmp("bf16", "f16"),
        bf16_accurate: wide_ok(bf16_row)
            && report::digits_accurate(&digits, Recipe::Bf16, TOLERANCE_POINTS),
        f16_accurate: wide_ok(f16_row)
            && report::digits_accurate(&digits, Recipe::F16, TOLERANCE_POINTS),
        f16_overflowed_bf16_did_not: find(Row::F16Big)?.skipped > 0
            && find(Row::Bf16Big)?.skipped == 0,
    };
    let recommendation = verdict::recommend(&evidence);
    let rep = report::Report {
        isa: isa.to_string(),
        threads,
        digits: &digits,
        wide_cfg: &args.wide,
        wide: &wide,
        comparisons: &comparisons,
        accumulation: &accumulation,
        recommendation: &recommendation,
    };

    let svg = report::plot_svg(&rep);
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(&args.out, svg).map_err(|e| format!("{}: {e}", args.out.display()))?;

    if args.json {
        print!("{}", report::json(&rep));
        return Ok(());
    }
    let mut out = String::new();
    report::digits_table(&mut out, &digits);
    out.push('\n');
    report::wide_table(&mut out, &rep);
    out.push_str("\nWhat each safeguard prevents:\n");
    for line in report::lessons(&rep) {
        out.push_str(&format!("  - {line}\n"));
    }
    out.push('\n');
    report::accumulation_table(&mut out, &accumulation);
    out.push('\n');
    report::memory_table(&mut out, &rep);
    out.push_str("\nRecommendation for this CPU:\n");
    for line in &recommendation.lines {
        out.push_str(&format!("  {line}\n"));
    }
    out.push_str(&format!("  => train in {}.\n", recommendation.choice));
    for line in hardware_notes(isa) {
        out.push_str(&format!("{line}\n"));
    }
    out.push_str(&format!(
        "\nloss curves: {}\ntotal time: {:.1} s\n",
        args.out.display(),
        started.elapsed().as_secs_f64()
    ));
    print!("{out}");
    Ok(())
}

/// One phase's progress bar on stderr, redrawn in place at most every
/// 50 ms when stderr is a terminal; one line when the phase ends either
/// way.
struct Phase {
    label: &'static str,
    tty: bool,
    last_draw: Option<Instant>,
    started: Instant,
}

impl Phase {
    const WIDTH: usize = 30;

    fn new(label: &'static str) -> Phase {
        Phase {
            label,
            tty: std::io::stderr().is_terminal(),
            last_draw: None,
            started: Instant::now(),
        }
    }

    fn update(&mut self, done: usize, total: usize, detail: &str) {
        if !self.tty || self.last_draw.is_some_and(|t| t.elapsed().as_millis() < 50) {
            return;
        }
        self.last_draw = Some(Instant::now());
        let total = total.max(1);
        let filled = Self::WIDTH * done.min(total) / total;
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[2K{} [{}{}] {:>3}%  {:.0} s  {detail}",
            self.label,
            "#".repeat(filled),
            ".".repeat(Self::WIDTH - filled),
            100 * done / total,
            self.started.elapsed().as_secs_f64(),
        );
        let _ = err.flush();
    }

    fn finish(&mut self, summary: &str) {
        let line = format!(
            "{} done in {:.1} s: {summary}",
            self.label,
            self.started.elapsed().as_secs_f64()
        );
        if self.tty {
            eprintln!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
    }
}

/// What this CPU has natively for bf16 and f16, and what halfkern does with
/// it.
fn hardware_notes(isa: halfkern::Isa) -> Vec<String> {
    let mut notes = Vec::new();
    if isa != halfkern::Isa::best() {
        notes.push(format!(
            "  HALFKERN_ISA forces {isa} (the CPU's best is {}): the numbers above are {isa}'s.",
            halfkern::Isa::best()
        ));
    }
    #[cfg(target_arch = "x86_64")]
    {
        let bf16 = std::arch::is_x86_feature_detected!("avx512bf16")
            && matches!(isa.name(), "avx512bf16" | "amx");
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
                "  No AVX512_BF16 in use: bf16 is widened to f32 (exactly, a shift) \
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
