//! The training example's own code (`examples/train/mlp.rs`, included here
//! rather than copied) on a small budget: every precision must learn the
//! digits far above chance and land near f32.
//!
//! Budget: natively, 6 epochs over the full training set (a few seconds
//! with halfkern's kernels). Under emulation (`HALFKERN_TEST_STRIDE` > 1,
//! as CI sets it for qemu) 3 epochs over the first 480 training images, and
//! looser bounds, because a model that has seen less data is further from
//! converged and its precisions differ more.

#[path = "../examples/train/mlp.rs"]
#[allow(
    dead_code,
    reason = "the example uses parts of mlp.rs this test does not"
)]
mod mlp;

use mlp::{CLASSES, Config, FEATURES, Recipe, RunResult};

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
