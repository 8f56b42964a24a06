//! The training example's own code (`examples/train/*.rs`, included here
//! rather than copied) on a small budget, so that its lessons cannot
//! silently regress:
//!
//! - every precision of the digits check learns and lands near f32;
//! - f16 without loss scaling flushes its activation gradients and ends
//!   worse than f16 with it; f16 whose activations overflow skips every
//!   step while the scaler backs off, and bf16 trains at the same setting;
//! - pure bf16 rounded to nearest loses updates, stochastic rounding keeps
//!   them (in expectation) and ends lower;
//! - bf16 sums lose accuracy with k where halfkern's f32 sums do not;
//! - the recommendation's speed claims match the spreads it measured.
//!
//! The lesson tests draw a fresh seed each run (printed; set
//! `TRAIN_EXAMPLE_SEED` to repeat one).
//!
//! Budget: natively, 6 digits epochs and a few seconds of a 512-wide MLP.
//! Under emulation (`HALFKERN_TEST_STRIDE` > 1, as CI sets it for qemu) 3
//! epochs over the first 480 training images, looser bounds, and the wide
//! rows at a size that only checks the bookkeeping and the overflow lesson
//! (the statistical lessons need more steps than qemu affords).

#[path = "../examples/train/accum.rs"]
#[allow(dead_code, reason = "the example uses parts this test does not")]
mod accum;
#[path = "../examples/train/mlp.rs"]
#[allow(
    dead_code,
    reason = "the example uses parts of mlp.rs this test does not"
)]
mod mlp;
#[path = "../examples/train/plot.rs"]
mod plot;
#[path = "../examples/train/report.rs"]
#[allow(dead_code, reason = "the tables are printed by the example only")]
mod report;
#[path = "../examples/train/rows.rs"]
#[allow(dead_code, reason = "the example uses parts this test does not")]
mod rows;
#[path = "../examples/train/verdict.rs"]
mod verdict;
#[path = "../examples/train/wide.rs"]
#[allow(dead_code, reason = "the example uses parts this test does not")]
mod wide;

use mlp::{CLASSES, Config, FEATURES, Recipe, RunResult};
use rows::{Row, RowResult, WideConfig};
use verdict::{Comparison, Evidence, MIN_REPEATS, Speed, Spread};

/// True under qemu (CI sets the stride there to sample exhaustive sweeps).
fn emulated() -> bool {
    std::env::var("HALFKERN_TEST_STRIDE")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .is_some_and(|s| s > 1)
}

#[test]
fn digits_parse_and_split() {
    let data = mlp::load_digits().expect("vendored digits.csv parses");
    assert_eq!(data.train_len() + data.test_len(), 1797);
    assert_eq!(data.test_len(), 359, "20% held out");
    assert_eq!(data.train_x.len(), data.train_len() * FEATURES);
    assert_eq!(data.test_x.len(), data.test_len() * FEATURES);
    assert!(
        data.train_x
            .iter()
            .chain(&data.test_x)
            .all(|&x| (0.0..=1.0).contains(&x))
    );
    // Every class is in both sets, in roughly its share (the classes hold
    // 174 to 183 images each).
    for c in 0..CLASSES as u8 {
        let test = data.test_y.iter().filter(|&&y| y == c).count();
        let train = data.train_y.iter().filter(|&&y| y == c).count();
        assert!((15..=60).contains(&test), "class {c}: {test} test images");
        assert!(
            (120..=170).contains(&train),
            "class {c}: {train} train images"
        );
    }
    // The split is fixed: the same on every call.
    let again = mlp::load_digits().unwrap();
    assert_eq!(again.test_y, data.test_y);
}

#[test]
fn every_precision_learns_and_lands_near_f32() {
    let mut data = mlp::load_digits().unwrap();
    let (cfg, min_accuracy, max_gap) = if emulated() {
        data.train_x.truncate(480 * FEATURES);
        data.train_y.truncate(480);
        let cfg = Config {
            epochs: 3,
            ..Config::default()
        };
        (cfg, 0.75, 0.05)
    } else {
        let cfg = Config {
            epochs: 6,
            ..Config::default()
        };
        (cfg, 0.90, 0.03)
    };
    let results: Vec<RunResult> = Recipe::ALL
        .into_iter()
        .map(|p| mlp::train(&data, p, &cfg, &mut |_| {}).unwrap())
        .collect();
    for r in &results {
        println!(
            "{:<9} test accuracy {:.2}%, loss {:?}, skipped {}/{}, scale {}",
            r.precision.name(),
            100.0 * r.test_accuracy,
            r.epoch_loss,
            r.skipped,
            r.steps,
            r.final_scale
        );
    }
    let base = &results[0];
    assert_eq!(base.precision, Recipe::F32);
    for r in &results {
        let name = r.precision.name();
        // Chance is 10%.
        assert!(
            r.test_accuracy >= min_accuracy,
            "{name}: test accuracy {} below {min_accuracy}",
            r.test_accuracy
        );
        assert!(
            (r.test_accuracy - base.test_accuracy).abs() <= max_gap,
            "{name}: test accuracy {} vs f32's {}, more than {max_gap} apart",
            r.test_accuracy,
            base.test_accuracy
        );
        assert_eq!(r.steps, base.steps, "{name}: same batches as f32");
        assert!(r.skipped * 10 <= r.steps, "{name}: skipped {}", r.skipped);
        assert_eq!(r.epoch_loss.len(), cfg.epochs);
        let (first, last) = (r.epoch_loss[0], *r.epoch_loss.last().unwrap());
        assert!(last < 0.7 * first, "{name}: loss {first} -> {last}");
        // Same initial weights and data order: the first epoch's mean loss
        // agrees with f32's to within rounding effects.
        let rel = (first - base.epoch_loss[0]).abs() / base.epoch_loss[0];
        assert!(
            rel < 0.05,
            "{name}: first-epoch loss {first} vs f32's {}",
            base.epoch_loss[0]
        );
        assert!(r.final_scale.is_normal() && r.final_scale >= 1.0);
        assert!(r.secs_per_step > 0.0);
    }
}

#[test]
fn same_seed_same_run() {
    let mut data = mlp::load_digits().unwrap();
    data.train_x.truncate(256 * FEATURES);
    data.train_y.truncate(256);
    let cfg = Config {
        epochs: 1,
        ..Config::default()
    };
    for p in [Recipe::F16, Recipe::Bf16Pure] {
        let a = mlp::train(&data, p, &cfg, &mut |_| {}).unwrap();
        let b = mlp::train(&data, p, &cfg, &mut |_| {}).unwrap();
        assert_eq!(a.epoch_loss, b.epoch_loss, "{}", p.name());
        assert_eq!(a.test_accuracy, b.test_accuracy, "{}", p.name());
    }
    let other = Config { seed: 7, ..cfg };
    let a = mlp::train(&data, Recipe::F32, &cfg, &mut |_| {}).unwrap();
    let c = mlp::train(&data, Recipe::F32, &other, &mut |_| {}).unwrap();
    assert_ne!(a.epoch_loss, c.epoch_loss, "the seed changes the run");
}

#[test]
fn bad_config_is_an_error() {
    let data = mlp::load_digits().unwrap();
    for cfg in [
        Config {
            batch_size: 0,
            ..Config::default()
        },
        Config {
            epochs: 0,
            ..Config::default()
        },
    ] {
        assert!(mlp::train(&data, Recipe::F32, &cfg, &mut |_| {}).is_err());
    }
}

/// A fresh seed per run, printed so a failure can be repeated;
/// `TRAIN_EXAMPLE_SEED` pins it.
fn fresh_seed() -> u64 {
    let seed = std::env::var("TRAIN_EXAMPLE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(42, |d| d.as_nanos() as u64 % 1_000_000)
        });
    println!("seed {seed} (TRAIN_EXAMPLE_SEED={seed} repeats this run)");
    seed
}

fn find(results: &[RowResult], row: Row) -> &RowResult {
    results.iter().find(|r| r.row == row).expect("row trained")
}

fn print_rows(results: &[RowResult]) {
    for r in results {
        println!(
            "{:<16} loss {:?} acc {:.3} skipped {}/{} scale {:e} grads {:?} updates {:?}",
            r.row.name(),
            r.final_loss(report::FINAL_STEPS),
            r.final_accuracy(),
            r.skipped,
            r.loss.len(),
            r.final_scale,
            r.grad_range,
            r.updates
        );
    }
}

#[test]
fn failure_rows_teach_their_lessons() {
    let data = mlp::load_digits().unwrap();
    let seed = fresh_seed();
    let emulated = emulated();
    let cfg = if emulated {
        WideConfig {
            width: 128,
            batch: 64,
            steps: 12,
            seed,
            eval_every: 3,
            ..WideConfig::default()
        }
    } else {
        WideConfig {
            width: 512,
            batch: 256,
            steps: 60,
            seed,
            ..WideConfig::default()
        }
    };
    let rows = [
        Row::F16,
        Row::F16NoScaling,
        Row::F16Big,
        Row::F16BigNoScaling,
        Row::Bf16Big,
        Row::Bf16Pure,
        Row::Bf16PureNearest,
    ];
    let results = wide::train_rows(&data, &rows, &cfg, &mut |_| {}).unwrap();
    print_rows(&results);
    let steps = cfg.steps;
    for r in &results {
        assert_eq!(r.loss.len(), steps, "{}", r.row.name());
        assert_eq!(r.step_secs.len(), steps, "{}", r.row.name());
        assert!(r.step_secs.iter().all(|&t| t > 0.0));
    }

    // Forward overflow: steps' losses are NaN (most of them at full size;
    // a batch may stay under 65504, the seeds are fresh, and in the small
    // emulated model about half do, so there at least one of 12), and
    // every such step is skipped; the dynamic scaler halves on each skip,
    // without it the scale stays 1; bf16 trains.
    let overflows = |nan: usize| if emulated { nan >= 1 } else { nan * 2 > steps };
    let big = find(&results, Row::F16Big);
    let nan_steps = big.loss.iter().filter(|l| l.is_nan()).count();
    assert!(overflows(nan_steps), "f16-big loss {:?}", big.loss);
    assert!(big.skipped >= nan_steps, "f16-big skipped {}", big.skipped);
    assert_eq!(big.final_scale, 65536.0 * 0.5f32.powi(big.skipped as i32));
    let nos = find(&results, Row::F16BigNoScaling);
    let nos_nan = nos.loss.iter().filter(|l| l.is_nan()).count();
    assert!(overflows(nos_nan), "f16-big-noscale loss {:?}", nos.loss);
    assert!(nos.skipped >= nos_nan);
    assert_eq!(nos.final_scale, 1.0);
    let bf = find(&results, Row::Bf16Big);
    assert_eq!(bf.skipped, 0);
    assert!(bf.loss.iter().all(|l| l.is_finite()));
    assert!(
        bf.final_loss(report::FINAL_STEPS) < bf.loss[0],
        "bf16-big learns"
    );
    if emulated {
        return;
    }
    assert!(
        bf.final_accuracy() > 0.5,
        "bf16-big: {}",
        bf.final_accuracy()
    );

    // f16 without loss scaling: most activation gradients flushed, and a
    // worse loss than with scaling.
    let (ok, bad) = (find(&results, Row::F16), find(&results, Row::F16NoScaling));
    let (g_ok, g_bad) = (ok.grad_range.unwrap(), bad.grad_range.unwrap());
    assert!(g_bad.zero_pct() > 50.0, "flushed {}%", g_bad.zero_pct());
    assert!(g_bad.zero_pct() > 5.0 * g_ok.zero_pct());
    let (l_ok, l_bad) = (
        ok.final_loss(report::FINAL_STEPS),
        bad.final_loss(report::FINAL_STEPS),
    );
    assert!(
        l_bad > 1.25 * l_ok,
        "f16-noscale loss {l_bad} vs f16's {l_ok}"
    );
    assert_eq!((ok.skipped, bad.skipped), (0, 0));

    // Pure bf16: round to nearest drops updates and ends higher; stochastic
    // rounding makes the movement asked for, in expectation.
    let (sr, rne) = (
        find(&results, Row::Bf16Pure),
        find(&results, Row::Bf16PureNearest),
    );
    let (u_sr, u_rne) = (sr.updates.unwrap(), rne.updates.unwrap());
    assert!(
        u_rne.lost_pct() > 30.0,
        "rounded away {}%",
        u_rne.lost_pct()
    );
    assert!(
        u_rne.kept() < 0.95,
        "round to nearest kept {}",
        u_rne.kept()
    );
    assert!(
        (u_sr.kept() - 1.0).abs() < 0.02,
        "stochastic kept {}",
        u_sr.kept()
    );
    let (l_sr, l_rne) = (
        sr.final_loss(report::FINAL_STEPS),
        rne.final_loss(report::FINAL_STEPS),
    );
    assert!(
        l_rne > 1.1 * l_sr,
        "pure rne loss {l_rne} vs stochastic {l_sr}"
    );
}

#[test]
fn memory_is_exact_and_f16_costs_what_bf16_costs() {
    let cfg = WideConfig::default();
    let m = |row| rows::Memory::of(row, &cfg);
    assert_eq!(m(Row::F16), m(Row::Bf16), "2 bytes each");
    assert_eq!(m(Row::F16NoScaling), m(Row::F16));
    assert_eq!(m(Row::Bf16PureNearest), m(Row::Bf16Pure));
    assert_eq!(
        (
            m(Row::F32).per_param(),
            m(Row::Bf16).per_param(),
            m(Row::Bf16Pure).per_param()
        ),
        (16, 18, 14)
    );
    let (b, w) = (cfg.batch, cfg.width);
    assert_eq!(
        m(Row::Bf16).activations,
        2 * b * (FEATURES + 4 * w + CLASSES) + 8 * b * CLASSES
    );
    assert_eq!(
        m(Row::F32).activations - m(Row::Bf16).activations,
        2 * b * (FEATURES + 4 * w + CLASSES)
    );
    assert_eq!(
        cfg.params(),
        64 * 1024 + 1024 + 1024 * 1024 + 1024 + 10 * 1024 + 10
    );
}

#[test]
fn bf16_sums_lose_accuracy_with_k_and_f32_sums_do_not() {
    let seed = fresh_seed();
    let mut rng = mlp::Rng::new(seed);
    let (m, k, n) = (16, if emulated() { 256 } else { 1024 }, 16);
    let mut draw = |len: usize, nonneg: bool| -> Vec<halfkern::bf16> {
        (0..len)
            .map(|_| {
                let u = rng.next_f64();
                halfkern::bf16::from_f64(if nonneg { u } else { 2.0 * u - 1.0 })
            })
            .collect()
    };
    // ReLU outputs (>= 0) times weights of both signs, as layer 2's forward.
    let ops = accum::Operands {
        name: "random",
        a: draw(m * k, true),
        b: draw(k * n, false),
        m,
        k,
        n,
    };
    let errs = accum::growth(&ops, m, n).unwrap();
    println!("{errs:?}");
    assert_eq!(errs.last().unwrap().k, k);
    for e in &errs {
        assert!(e.f32_sum < 1e-5, "f32 sums at k = {}: {}", e.k, e.f32_sum);
        assert!(e.bf16_sum > 20.0 * e.f32_sum, "k = {}: {e:?}", e.k);
    }
    let (first, last) = (errs[0], *errs.last().unwrap());
    assert!(
        last.bf16_sum > 2.0 * first.bf16_sum,
        "bf16 error grows with k: {errs:?}"
    );
}

#[test]
fn verdict_needs_a_difference_beyond_the_spread() {
    let noisy = |base: f64, i: usize| base * (1.0 + 0.1 * ((i * 7919) % 13) as f64 / 13.0);
    let a: Vec<f64> = (0..60).map(|i| noisy(1.0, i)).collect();
    let same: Vec<f64> = (0..60).map(|i| noisy(1.0, i + 5)).collect();
    let half: Vec<f64> = a.iter().map(|t| 0.5 * t).collect();
    assert_eq!(Comparison::new("x", &half, "y", &a, 5).speed, Speed::Faster);
    assert_eq!(Comparison::new("y", &a, "x", &half, 5).speed, Speed::Slower);
    assert_eq!(Comparison::new("x", &same, "y", &a, 5).speed, Speed::Same);
    // Too few repeats: never a claim.
    assert_eq!(
        Comparison::new("x", &half[..5 * MIN_REPEATS], "y", &a[..5 * MIN_REPEATS], 5).speed,
        Speed::Same
    );
    let s = Spread::of(&[4.0, 1.0, 3.0, 2.0, 5.0, f64::NAN]);
    assert_eq!((s.median, s.q25, s.q75, s.n), (3.0, 2.0, 4.0, 5));
}

/// Every speed claim of the recommendation is its comparison's verdict,
/// and every verdict agrees with the spread it was measured with.
fn check_claims(rec: &verdict::Recommendation) {
    for c in &rec.claims {
        let beyond = c.difference() > c.ratio.width() && c.ratio.n >= MIN_REPEATS;
        let expected = match (beyond, c.ratio.median < 1.0) {
            (false, _) => Speed::Same,
            (true, true) => Speed::Faster,
            (true, false) => Speed::Slower,
        };
        assert_eq!(c.speed, expected, "{c:?}");
        let words = match c.speed {
            Speed::Faster => format!("faster than {}", c.b),
            Speed::Slower => format!("slower than {}", c.b),
            Speed::Same => format!("same speed as {}", c.b),
        };
        assert!(
            rec.lines.iter().any(|l| l.contains(&words)),
            "{words:?} not in {:?}",
            rec.lines
        );
    }
    for (word, speed) in [
        ("faster than", Speed::Faster),
        ("slower than", Speed::Slower),
    ] {
        let said = rec
            .lines
            .iter()
            .map(|l| l.matches(word).count())
            .sum::<usize>();
        let claimed = rec.claims.iter().filter(|c| c.speed == speed).count();
        assert_eq!(said, claimed, "{word}: {:?}", rec.lines);
    }
}

#[test]
fn recommendation_claims_match_measured_spreads() {
    let data = mlp::load_digits().unwrap();
    let cfg = WideConfig {
        width: if emulated() { 32 } else { 512 },
        steps: 5 * (MIN_REPEATS + 2),
        seed: fresh_seed(),
        ..WideConfig::default()
    };
    let results =
        wide::train_rows(&data, &[Row::F32, Row::Bf16, Row::F16], &cfg, &mut |_| {}).unwrap();
    let [f32_r, bf16_r, f16_r] = [Row::F32, Row::Bf16, Row::F16].map(|r| find(&results, r));
    let cmp = |a: &RowResult, b: &RowResult| {
        Comparison::new(
            a.row.name(),
            &a.step_secs,
            b.row.name(),
            &b.step_secs,
            report::BLOCK,
        )
    };
    let measured = Evidence {
        bf16_vs_f32: cmp(bf16_r, f32_r),
        f16_vs_f32: cmp(f16_r, f32_r),
        bf16_vs_f16: cmp(bf16_r, f16_r),
        bf16_accurate: true,
        f16_accurate: true,
        f16_overflowed_bf16_did_not: true,
    };
    let rec = verdict::recommend(&measured);
    println!("{:#?}", rec.lines);
    check_claims(&rec);
    assert!(!rec.claims.is_empty());

    // The other branches, on the same measurements and on made-up ones.
    let synth = |a: &str, b: &str, factor: f64| {
        let t: Vec<f64> = (0..50).map(|i| 1.0 + 0.01 * (i % 3) as f64).collect();
        let u: Vec<f64> = t.iter().map(|x| x * factor).collect();
        Comparison::new(a, &u, b, &t, 5)
    };
    let f16_faster = Evidence {
        bf16_vs_f32: synth("bf16", "f32", 0.9),
        f16_vs_f32: synth("f16", "f32", 0.6),
        bf16_vs_f16: synth("bf16", "f16", 1.5),
        bf16_accurate: true,
        f16_accurate: true,
        f16_overflowed_bf16_did_not: true,
    };
    let rec = verdict::recommend(&f16_faster);
    check_claims(&rec);
    assert_eq!(rec.choice, "f16");
    let rec = verdict::recommend(&Evidence {
        f16_accurate: false,
        ..f16_faster.clone()
    });
    check_claims(&rec);
    assert_eq!(rec.choice, "bf16", "f16 faster but inaccurate");
    let rec = verdict::recommend(&Evidence {
        bf16_vs_f16: synth("bf16", "f16", 1.0),
        ..f16_faster.clone()
    });
    check_claims(&rec);
    assert_eq!(rec.choice, "bf16", "a tie goes to bf16");
    let rec = verdict::recommend(&Evidence {
        bf16_accurate: false,
        f16_accurate: false,
        ..f16_faster
    });
    assert_eq!((rec.choice, rec.claims.len()), ("f32", 0));
}

#[test]
fn wide_config_errors_are_errors() {
    let data = mlp::load_digits().unwrap();
    for cfg in [
        WideConfig {
            batch: 0,
            ..WideConfig::default()
        },
        WideConfig {
            batch: data.train_len() + 1,
            ..WideConfig::default()
        },
        WideConfig {
            steps: 0,
            ..WideConfig::default()
        },
        WideConfig {
            width: 0,
            ..WideConfig::default()
        },
    ] {
        assert!(wide::train_rows(&data, &[Row::F32], &cfg, &mut |_| {}).is_err());
    }
}
