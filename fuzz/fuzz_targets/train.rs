//! Arbitrary loss-scaler options and overflow-flag sequences, and training
//! steps on gradients of arbitrary bits (inf and NaN included), on every
//! available ISA. Invariants: the scale stays a normal f32 in
//! [min_scale, max_scale]; a step is applied exactly when every unscaled
//! gradient is finite; a skipped step changes no master weight, moment,
//! model weight or step counter; every ISA gives the scalar oracle's bits.

#![no_main]

use halfkern::train::{
    AdamW, LossScaler, Optimizer, Precision, Rounding, ScalerOptions, Sgd, Trainer,
};
use halfkern::{Backend, Isa, bf16, f16};
use libfuzzer_sys::fuzz_target;

#[path = "common/bytes.rs"]
mod bytes;
use bytes::Bytes;

fn scaler_flags(b: &mut Bytes<'_>) {
    let d = ScalerOptions::default();
    let opts = ScalerOptions {
        growth_factor: 1.0 + (b.u8() as f64 + 1.0) / 64.0,
        backoff_factor: (b.u8() as f64 + 1.0) / 257.0,
        growth_interval: b.u8() as u32 % 8 + 1,
        hysteresis: b.u8() as u32 % 4 + 1,
        min_scale: 2f32.powi(-(b.u8() as i32 % 127)),
        max_scale: if b.u8() % 2 == 0 {
            f32::MAX
        } else {
            2f32.powi(b.u8() as i32 % 128)
        },
        ..d
    };
    let opts = ScalerOptions {
        init_scale: f32::from_bits(b.u32())
            .abs()
            .clamp(opts.min_scale, opts.max_scale.max(opts.min_scale)),
        ..opts
    };
    let Ok(mut s) = LossScaler::with_options(opts) else {
        assert!(opts.max_scale < opts.min_scale || opts.init_scale.is_nan());
        return;
    };
    for _ in 0..64 {
        let flags = b.u8();
        for k in 0..8 {
            let before = s.scale();
            s.update(flags >> k & 1 == 1);
            let x = s.scale();
            assert!(
                x.is_normal() && x >= opts.min_scale && x <= opts.max_scale,
                "{x:e}"
            );
            if flags >> k & 1 == 1 {
                assert!(x <= before && s.growth_tracker() == 0);
            } else {
                assert!(x >= before);
            }
        }
    }
    assert_eq!(LossScaler::from_bytes(&s.to_bytes()).unwrap(), s);
}

type Snapshot = (Vec<u32>, u64, Vec<u16>);

fn snapshot(t: &Trainer, model: &[Vec<bf16>]) -> Snapshot {
    let mut state = Vec::new();
    for i in 0..model.len() {
        let (m, v) = t.moments(i).unwrap();
        for s in [t.master(i).unwrap(), m, v] {
            state.extend(s.iter().map(|x| x.to_bits()));
        }
    }
    (
        state,
        t.steps(),
        model.iter().flatten().map(|x| x.to_bits()).collect(),
    )
}

fn steps(b: &mut Bytes<'_>) {
    let opt: Optimizer = match b.u8() % 3 {
        0 => Sgd::new(0.1).into(),
        1 => Sgd::new(0.05).momentum(0.9).weight_decay(0.01).into(),
        _ => AdamW::new(1e-2).into(),
    };
    let precision = match b.u8() % 3 {
        0 => Precision::default(),
        1 => Precision::Master {
            rounding: Rounding::Stochastic,
        },
        _ => Precision::Pure,
    };
    let lens: Vec<usize> = (0..b.u8() % 4).map(|_| b.u8() as usize % 40).collect();
    let init: Vec<Vec<bf16>> = lens
        .iter()
        .map(|&n| {
            (0..n)
                .map(|i| bf16::from_f32((i as f32 * 0.37).sin()))
                .collect()
        })
        .collect();
    let n_steps = b.u8() % 6 + 1;
    let as_f16 = b.u8() % 2 == 1;
    // Gradients: a byte picks each value's kind, so inf/NaN are common.
    let grads: Vec<Vec<Vec<f32>>> = (0..n_steps)
        .map(|_| {
            lens.iter()
                .map(|&n| {
                    (0..n)
                        .map(|_| match b.u8() % 16 {
                            0 => f32::from_bits(b.u32()),
                            1 => [f32::INFINITY, f32::NEG_INFINITY, f32::NAN][b.u8() as usize % 3],
                            k => (k as f32 - 8.0) * 64.0 * (b.u8() as f32 / 255.0),
                        })
                        .collect()
                })
                .collect()
        })
        .collect();
    let mut results: Vec<(Isa, Snapshot)> = Vec::new();
    for isa in Isa::available() {
        let backend = Backend::new(isa).unwrap();
        let mut t = Trainer::builder(opt)
            .backend(backend)
            .precision(precision)
            .seed(9)
            .build(&init)
            .unwrap();
        let mut model = init.clone();
        for g in &grads {
            let before = snapshot(&t, &model);
            let inv = t.scaler().inv_scale();
            let (lo, hi) = (
                t.scaler().options().min_scale,
                t.scaler().options().max_scale,
            );
            let r = if as_f16 {
                let g: Vec<Vec<f16>> = g
                    .iter()
                    .map(|v| v.iter().map(|&x| f16::from_f32(x)).collect())
                    .collect();
                let finite = g.iter().flatten().all(|x| (x.to_f32() * inv).is_finite());
                let r = t.step(&g, &mut model).unwrap();
                assert_eq!(r.applied, finite);
                r
            } else {
                let finite = g.iter().flatten().all(|x| (x * inv).is_finite());
                let r = t.step(g, &mut model).unwrap();
                assert_eq!(r.applied, finite);
                r
            };
            if !r.applied {
                assert!(r.nonfinite > 0);
                assert!(
                    snapshot(&t, &model) == before,
                    "{isa}: a skipped step changed the state"
                );
            }
            let s = t.scale();
            assert!(s.is_normal() && s >= lo && s <= hi);
        }
        results.push((isa, snapshot(&t, &model)));
    }
    for (isa, r) in &results[1..] {
        assert!(r == &results[0].1, "{isa} differs from scalar");
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    if b.u8() % 2 == 0 {
        scaler_flags(&mut b);
    } else {
        steps(&mut b);
    }
});
