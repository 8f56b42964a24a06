//! `Step::all_reduced` and `GradStats::from_array` with arbitrary
//! statistics, as a broken or averaging all-reduce could hand them over.
//! Oracle, written here from the documented rule (`GradStats` docs, "Valid
//! statistics"):
//!
//! - `from_array([c, s])` is `Ok` exactly when `c` is a finite integer in
//!   `[0, 2^64)` and `s` is finite and `>= 0`, and then holds those values.
//! - `all_reduced(stats)` is `Err` exactly when `stats.sum_sq` is negative,
//!   NaN or infinite; then the trainer, its scaler and the model are
//!   bit-identical to before.
//! - On `Ok`, `apply` skips exactly when `stats.nonfinite > 0` (then only
//!   the scaler moves, as `LossScaler::update(true)` moves it) and
//!   otherwise applies one step with norm `sqrt(sum_sq)` and the clip
//!   coefficient `GradStats::clip_coef` gives, the scaler moving as
//!   `update(false)`.

#![no_main]

use halfkern::finite::GradStats;
use halfkern::train::{AdamW, Optimizer, Sgd, Trainer};
use halfkern::{Backend, Isa, bf16};
use libfuzzer_sys::fuzz_target;

#[path = "common/bytes.rs"]
mod bytes;
use bytes::Bytes;

/// An f64 at the edges of the rule, or any bits.
fn edge_f64(b: &mut Bytes<'_>) -> f64 {
    const E: [f64; 14] = [
        0.0,
        -0.0,
        0.5,
        1.0,
        -1.0,
        3.0,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        18446744073709549568.0, // 2^64 - 2048, the largest below 2^64
        18446744073709551616.0, // 2^64
        9007199254740993.0,     // 2^53 + 1 (rounds to 2^53)
        f64::MAX,
        f64::MIN_POSITIVE,
    ];
    match b.u8() % 3 {
        0 => E[b.u8() as usize % E.len()],
        1 => f64::from_bits(b.u64()),
        _ => (b.u8() as f64 - 64.0) / 4.0,
    }
}

fn valid_count(c: f64) -> bool {
    c.is_finite() && c >= 0.0 && c.fract() == 0.0 && c < 18446744073709551616.0
}

fn valid_sum(s: f64) -> bool {
    s.is_finite() && s >= 0.0
}

/// The trainer's checkpoint bytes (everything, the scaler included) and
/// the model.
type State = (Vec<u8>, Vec<Vec<bf16>>);

fn state(t: &Trainer, model: &[Vec<bf16>]) -> State {
    (t.to_bytes(), model.to_vec())
}

/// Everything a skipped step keeps: master weights, moments, step counter
/// and model, as bits.
fn kept(t: &Trainer, model: &[Vec<bf16>]) -> (Vec<u32>, u64, Vec<u16>) {
    let mut bits = Vec::new();
    for i in 0..model.len() {
        let (m, v) = t.moments(i).unwrap();
        for s in [t.master(i).unwrap(), m, v] {
            bits.extend(s.iter().map(|x| x.to_bits()));
        }
    }
    let model = model.iter().flatten().map(|x| x.to_bits()).collect();
    (bits, t.steps(), model)
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    // from_array against the rule.
    let arr = [edge_f64(&mut b), edge_f64(&mut b)];
    match GradStats::from_array(arr) {
        Ok(s) => {
            assert!(valid_count(arr[0]) && valid_sum(arr[1]), "{arr:?} accepted");
            assert_eq!(s.nonfinite as f64, arr[0]);
            assert_eq!(s.sum_sq.to_bits(), arr[1].to_bits());
        }
        Err(_) => assert!(
            !(valid_count(arr[0]) && valid_sum(arr[1])),
            "{arr:?} rejected"
        ),
    }

    // all_reduced on a trainer that has taken a step.
    let isas = Isa::available();
    let backend = Backend::new(isas[b.u8() as usize % isas.len()]).unwrap();
    let opt: Optimizer = match b.u8() % 3 {
        0 => Sgd::new(0.1).into(),
        1 => Sgd::new(0.05).momentum(0.9).into(),
        _ => AdamW::new(1e-2).into(),
    };
    let clip = (b.u8() % 2 == 1).then_some(0.5f32);
    let n = b.u8() as usize % 12;
    let mut model = vec![
        (0..n)
            .map(|i| bf16::from_f32((i as f32).sin()))
            .collect::<Vec<_>>(),
    ];
    let mut builder = Trainer::builder(opt).backend(backend);
    if let Some(c) = clip {
        builder = builder.clip_grad_norm(c);
    }
    let mut t = builder.build(&model).unwrap();
    let s = t.scale();
    let g = vec![
        (0..n)
            .map(|i| (i as f32 - 5.0) * 0.1 * s)
            .collect::<Vec<f32>>(),
    ];
    assert!(t.step(&g, &mut model).unwrap().applied);

    let stats = match b.u8() % 2 {
        0 => GradStats::new(
            [0, 1, usize::MAX, b.u64() as usize][b.u8() as usize % 4],
            edge_f64(&mut b),
        ),
        _ => match GradStats::from_array([edge_f64(&mut b), edge_f64(&mut b)]) {
            Ok(s) => s,
            Err(_) => return,
        },
    };
    let before = state(&t, &model);
    let kept_before = kept(&t, &model);
    let scaler_before = *t.scaler();
    let steps = t.steps();
    let step = t.begin().unscale_and_check(&g).unwrap();
    let step = match step.all_reduced(stats) {
        Err(_) => {
            assert!(!valid_sum(stats.sum_sq), "{stats:?} rejected");
            assert!(
                state(&t, &model) == before,
                "a rejected all_reduced changed the state"
            );
            return;
        }
        Ok(step) => {
            assert!(valid_sum(stats.sum_sq), "{stats:?} accepted");
            step
        }
    };
    let r = step.apply(&mut model).unwrap();
    let mut scaler = scaler_before;
    if stats.nonfinite > 0 {
        assert!(!r.applied && r.nonfinite == stats.nonfinite);
        assert!(
            kept(&t, &model) == kept_before,
            "a skipped step changed the state"
        );
        scaler.update(true);
    } else {
        assert!(r.applied && t.steps() == steps + 1);
        assert_eq!(r.grad_norm.to_bits(), stats.sum_sq.sqrt().to_bits());
        let want_coef = clip.map_or(1.0, |c| stats.clip_coef(c));
        assert_eq!(r.clip_coef.to_bits(), want_coef.to_bits());
        scaler.update(false);
    }
    assert_eq!(*t.scaler(), scaler);
});
