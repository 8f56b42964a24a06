//! `Trainer::restore` and `LossScaler::from_bytes` on arbitrary bytes, on
//! arbitrary payloads in a valid envelope, and on real checkpoints with
//! fields overwritten, each with the checksum recomputed so that only the
//! meaning can reject them. Oracle:
//!
//! - `Err`: the trainer is bit-identical to before (its checkpoint bytes,
//!   its scaler, its model copy).
//! - `Ok`: the restored state writes back exactly the bytes read; it holds
//!   the documented invariants (finite master weights and first buffer,
//!   second moments >= 0, step counter < u64::MAX, a scale in the scaler's
//!   range, 1 when disabled); and one step with finite gradients is applied,
//!   moves the counter by one, and leaves every weight finite unless an f64
//!   evaluation of the same update on the same values overflows f32 (a
//!   learning rate or state so large that the step itself is inf).

#![no_main]

use halfkern::train::{
    AdamW, LossScaler, Optimizer, Precision, Rounding, ScalerMode, Sgd, Trainer,
};
use halfkern::{Backend, Isa, bf16};
use libfuzzer_sys::fuzz_target;

#[path = "common/bytes.rs"]
mod bytes;
use bytes::Bytes;

/// FNV-1a 64, the checkpoint's checksum.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h = 0xCBF2_9CE4_8422_2325u64;
    for &b in bytes {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// Magic, version 1, `kind`, the payload's length, the payload, checksum.
fn envelope(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = b"HKTRAIN\0".to_vec();
    out.extend_from_slice(&1u32.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(payload);
    let sum = fnv1a(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

const HEADER: usize = 21;

/// The payload of a checkpoint written by `to_bytes`.
fn payload(bytes: &[u8]) -> &[u8] {
    &bytes[HEADER..bytes.len() - 8]
}

/// Values that hit the invariants' edges.
fn edge_f32(b: &mut Bytes<'_>) -> f32 {
    const E: [f32; 16] = [
        0.0,
        -0.0,
        1.0,
        -1.0,
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MAX,
        -f32::MAX,
        f32::MIN_POSITIVE,
        1e-45,
        65536.0,
        0.5,
        2.0,
        1e30,
        -1e-30,
    ];
    match b.u8() % 3 {
        0 => E[b.u8() as usize % E.len()],
        1 => f32::from_bits(b.u32()),
        _ => (b.u8() as f32 - 128.0) / 16.0,
    }
}

/// A small trainer chosen by the input, trained a few steps.
fn trainer(b: &mut Bytes<'_>, backend: Backend) -> (Trainer, Vec<Vec<bf16>>) {
    let opt: Optimizer = match b.u8() % 4 {
        0 => Sgd::new(0.1).into(),
        1 => Sgd::new(0.05).momentum(0.9).nesterov(true).into(),
        2 => AdamW::new(1e-2).into(),
        _ => AdamW::new(1e-3).betas(0.5, 0.9).eps(1e-3).into(),
    };
    let precision = match b.u8() % 3 {
        0 => Precision::default(),
        1 => Precision::Master {
            rounding: Rounding::Stochastic,
        },
        _ => Precision::Pure,
    };
    let scaler = match b.u8() % 3 {
        0 => LossScaler::dynamic(),
        1 => LossScaler::fixed(256.0).unwrap(),
        _ => LossScaler::disabled(),
    };
    let lens: Vec<usize> = (0..b.u8() % 3 + 1).map(|_| b.u8() as usize % 9).collect();
    let model: Vec<Vec<bf16>> = lens
        .iter()
        .map(|&n| {
            (0..n)
                .map(|i| bf16::from_f32((i as f32 * 0.7).cos()))
                .collect()
        })
        .collect();
    let mut builder = Trainer::builder(opt)
        .backend(backend)
        .precision(precision)
        .scaler(scaler)
        .seed(b.u8() as u64);
    if b.u8() % 2 == 1 {
        builder = builder.clip_grad_norm(1.0);
    }
    let mut t = builder.build(&model).unwrap();
    let mut model = model;
    for _ in 0..b.u8() % 3 {
        let s = t.scale();
        let g: Vec<Vec<f32>> = lens
            .iter()
            .map(|&n| (0..n).map(|_| (b.u8() as f32 - 128.0) / 64.0 * s).collect())
            .collect();
        t.step(&g, &mut model).unwrap();
    }
    (t, model)
}

/// The largest magnitude an f64 evaluation of the documented update rule
/// reaches on one element (weight `p`, buffers `m`, `v`, gradient `g`
/// already clipped), step `t` (1-based).
fn reference_peak(opt: &Optimizer, t: u64, p: f64, m: f64, v: f64, g: f64) -> f64 {
    let mut peak = p.abs().max(g.abs());
    let mut see = |x: f64| {
        peak = peak.max(x.abs());
        x
    };
    match *opt {
        Optimizer::Sgd(o) => {
            let mut d = see(g + o.weight_decay as f64 * p);
            if o.momentum != 0.0 {
                let b = if t == 1 {
                    d
                } else {
                    see(o.momentum as f64 * m + (1.0 - o.dampening as f64) * d)
                };
                d = if o.nesterov {
                    see(o.momentum as f64 * b + d)
                } else {
                    b
                };
            }
            see(p - o.lr as f64 * d);
        }
        Optimizer::AdamW(o) => {
            let t = t.min(i32::MAX as u64) as i32;
            let bc1 = 1.0 - (o.beta1 as f64).powi(t);
            let bc2 = 1.0 - (o.beta2 as f64).powi(t);
            let decay = see(1.0 - o.lr as f64 * o.weight_decay as f64);
            let step = see(o.lr as f64 / bc1);
            let inv_bc2 = see(1.0 / bc2.sqrt());
            let p = see(p * decay);
            let m = see(m + (g - m) * (1.0 - o.beta1 as f64));
            let v = see(v * o.beta2 as f64 + g * g * (1.0 - o.beta2 as f64));
            let denom = v.sqrt() * inv_bc2 + o.eps as f64;
            let ratio = see(m / denom);
            see(p - step * ratio);
        }
        _ => unreachable!("no other optimizer"),
    }
    peak
}

/// Above this an f32 evaluation may overflow where f64 does not; below it,
/// with every intermediate this small, a non-finite weight is a bug.
const SAFE: f64 = 1e36;

/// The invariants a restored trainer must hold, and one step.
fn check_restored(t: &mut Trainer, model: &mut [Vec<bf16>], b: &mut Bytes<'_>) {
    let n = model.len();
    let s = t.scaler();
    let o = s.options();
    assert!(s.scale().is_normal() && s.scale() >= o.min_scale && s.scale() <= o.max_scale);
    assert!(s.growth_tracker() < o.growth_interval);
    assert!((1..=o.hysteresis).contains(&s.hysteresis_left()));
    if s.mode() == ScalerMode::Disabled {
        assert_eq!(s.scale(), 1.0);
    }
    assert!(t.steps() < u64::MAX);
    assert!(t.optimizer().validate().is_ok());
    for i in 0..n {
        let (m, v) = t.moments(i).unwrap();
        assert!(t.master(i).unwrap().iter().all(|x| x.is_finite()));
        assert!(m.iter().all(|x| x.is_finite()));
        assert!(v.iter().all(|&x| x >= 0.0));
    }
    // One step with small finite gradients, already unscaled.
    let grads: Vec<Vec<f32>> = model
        .iter()
        .map(|w| w.iter().map(|_| (b.u8() as f32 - 128.0) / 128.0).collect())
        .collect();
    // Pure mode keeps no master copy: the model is the weights.
    let pure = (0..n).any(|i| !model[i].is_empty() && t.master(i).unwrap().is_empty());
    let before: Vec<(Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>)> = (0..n)
        .map(|i| {
            let (m, v) = t.moments(i).unwrap();
            let p: Vec<f32> = if pure {
                model[i].iter().map(|x| x.to_f32()).collect()
            } else {
                t.master(i).unwrap().to_vec()
            };
            (p, m.to_vec(), v.to_vec(), grads[i].clone())
        })
        .collect();
    let steps = t.steps();
    let opt = *t.optimizer();
    let r = t
        .begin()
        .check_unscaled(&grads)
        .unwrap()
        .apply(model)
        .unwrap();
    assert!(r.applied && t.steps() == steps + 1 && r.step == steps + 1);
    let coef = r.clip_coef as f64;
    for (i, (p, m, v, g)) in before.iter().enumerate() {
        let after: Vec<f32> = if pure {
            model[i].iter().map(|x| x.to_f32()).collect()
        } else {
            t.master(i).unwrap().to_vec()
        };
        for j in 0..p.len() {
            let at = |xs: &[f32]| xs.get(j).map_or(0.0, |&x| x as f64);
            let peak = reference_peak(
                &opt,
                steps + 1,
                p[j] as f64,
                at(m),
                at(v),
                g[j] as f64 * coef,
            );
            if peak < SAFE {
                assert!(
                    after[j].is_finite(),
                    "tensor {i}[{j}]: {} -> {} with {opt:?} at step {} (f64 peak {peak:e})",
                    p[j],
                    after[j],
                    steps + 1
                );
            }
        }
    }
}

/// Restores `bytes` into `t`; checks the oracle of the module docs.
fn restore_and_check(t: &mut Trainer, model: &mut [Vec<bf16>], bytes: &[u8], b: &mut Bytes<'_>) {
    let before = (t.to_bytes(), *t.scaler(), t.steps(), model.to_vec());
    match t.restore(bytes) {
        Err(_) => {
            assert!(
                (t.to_bytes(), *t.scaler(), t.steps(), model.to_vec()) == before,
                "a rejected restore changed the trainer"
            );
        }
        Ok(()) => {
            assert!(
                t.to_bytes() == bytes,
                "a restored state does not write back its bytes"
            );
            check_restored(t, model, b);
        }
    }
    match LossScaler::from_bytes(bytes) {
        Err(_) => {}
        Ok(s) => assert!(s.to_bytes() == bytes),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let isas = Isa::available();
    let backend = Backend::new(isas[b.u8() as usize % isas.len()]).unwrap();
    let mode = b.u8() % 4;
    let (mut t, mut model) = trainer(&mut b, backend);
    let real = t.to_bytes();
    let bytes = match mode {
        // Anything at all.
        0 => b.0.to_vec(),
        // Any payload in a valid trainer or scaler envelope.
        1 => {
            let kind = b.u8() % 2 + 1;
            envelope(kind, b.0)
        }
        // A real checkpoint with fields overwritten (an f32 at an edge or
        // any bits, a u64 at an edge, or any byte, at any offset), checksum
        // recomputed.
        2 => {
            let mut p = payload(&real).to_vec();
            for _ in 0..b.u8() % 4 + 1 {
                if p.is_empty() {
                    break;
                }
                let at = b.u32() as usize % p.len();
                match b.u8() % 3 {
                    0 if p.len() >= 4 => {
                        let at = at.min(p.len() - 4);
                        p[at..at + 4].copy_from_slice(&edge_f32(&mut b).to_le_bytes());
                    }
                    // A counter or length at its edges.
                    1 if p.len() >= 8 => {
                        let at = at.min(p.len() - 8);
                        let x = [u64::MAX, u64::MAX - 1, 0, 1, 1 << 62][b.u8() as usize % 5];
                        p[at..at + 8].copy_from_slice(&x.to_le_bytes());
                    }
                    _ => p[at] = b.u8(),
                }
            }
            envelope(2, &p)
        }
        // A real scaler checkpoint with fields overwritten.
        _ => {
            let mut p = payload(&t.scaler().to_bytes()).to_vec();
            let at = b.u32() as usize % p.len();
            if b.u8() % 2 == 0 {
                let at = at.min(p.len() - 4);
                p[at..at + 4].copy_from_slice(&edge_f32(&mut b).to_le_bytes());
            } else {
                p[at] = b.u8();
            }
            let bytes = envelope(1, &p);
            if let Ok(s) = LossScaler::from_bytes(&bytes) {
                assert!(s.to_bytes() == bytes);
                let o = s.options();
                assert!(s.scale() >= o.min_scale && s.scale() <= o.max_scale);
                assert!(s.mode() != ScalerMode::Disabled || s.scale() == 1.0);
            }
            return;
        }
    };
    restore_and_check(&mut t, &mut model, &bytes, &mut b);
});
