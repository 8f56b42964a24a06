//! `halfkern::train` on every ISA the machine has: the loss scaler against
//! a transcription of torch's update rule (unit and proptest), SGD and
//! AdamW against f64 references of the published rules, cross-ISA bit
//! identity, skipped steps that change nothing, pure-bf16 stochastic
//! rounding, checkpoints (round trip, resume, corruption, mismatch, states
//! no live trainer reaches), and bad input (all-reduced statistics,
//! hyper-parameters, a step counter at its maximum).

mod common;

use common::{Rng, backends, special_f32};
use halfkern::finite::GradStats;
use halfkern::train::{
    AdamW, LossScaler, Optimizer, Precision, Rounding, ScalerMode, ScalerOptions, Sgd, Trainer,
};
use halfkern::{Backend, Element, Error, bf16, f16};
use proptest::prelude::*;

// ---------------------------------------------------------------------------
// Loss scaler
// ---------------------------------------------------------------------------

/// torch's `_amp_update_scale_` (aten/src/ATen/native/cpu/AmpGradScalerKernels.cpp
/// and the CUDA kernel), transcribed: f32 scale, double factors, int tracker.
#[derive(Clone, Copy, Debug)]
struct TorchScaler {
    scale: f32,
    tracker: i32,
    growth: f64,
    backoff: f64,
    interval: i64,
}

impl TorchScaler {
    fn new(o: &ScalerOptions) -> TorchScaler {
        TorchScaler {
            scale: o.init_scale,
            tracker: 0,
            growth: o.growth_factor,
            backoff: o.backoff_factor,
            interval: o.growth_interval as i64,
        }
    }
    fn update(&mut self, found_inf: bool) {
        if found_inf {
            self.scale = (self.scale as f64 * self.backoff) as f32;
            self.tracker = 0;
        } else {
            let successful = self.tracker + 1;
            if successful as i64 == self.interval {
                let new_scale = (self.scale as f64 * self.growth) as f32;
                if new_scale.is_finite() {
                    self.scale = new_scale;
                }
                self.tracker = 0;
            } else {
                self.tracker = successful;
            }
        }
    }
}

#[test]
fn scaler_defaults_are_torchs() {
    let s = LossScaler::dynamic();
    let o = s.options();
    assert_eq!(s.scale(), 65536.0);
    assert_eq!(
        (o.growth_factor, o.backoff_factor, o.growth_interval),
        (2.0, 0.5, 2000)
    );
    assert_eq!(o.hysteresis, 1);
    assert_eq!(s.mode(), ScalerMode::Dynamic);
    assert_eq!(s.inv_scale(), 1.0 / 65536.0);
}

#[test]
fn scaler_tracker_rules() {
    let mut s = LossScaler::dynamic();
    for i in 1..2000 {
        s.update(false);
        assert_eq!(s.growth_tracker(), i);
        assert_eq!(s.scale(), 65536.0);
    }
    s.update(false); // the 2000th clean update grows and resets
    assert_eq!((s.scale(), s.growth_tracker()), (131072.0, 0));
    for _ in 0..1500 {
        s.update(false);
    }
    s.update(true); // an overflow resets the tracker and backs off
    assert_eq!((s.scale(), s.growth_tracker()), (65536.0, 0));
    for _ in 0..1999 {
        s.update(false);
    }
    assert_eq!(s.scale(), 65536.0);
    s.update(false);
    assert_eq!(s.scale(), 131072.0);
}

#[test]
fn scaler_refuses_growth_at_the_top_of_the_f32_range() {
    let top = 2f32.powi(127);
    let opts = ScalerOptions {
        init_scale: top,
        growth_interval: 3,
        ..ScalerOptions::default()
    };
    let mut s = LossScaler::with_options(opts).unwrap();
    let mut t = TorchScaler::new(&opts);
    for i in 0..10 {
        s.update(false);
        t.update(false);
        assert_eq!(s.scale(), top, "update {i}");
        assert_eq!(s.growth_tracker() as i32, t.tracker);
        assert_eq!(t.scale, top);
    }
    // A non-power-of-two near the top: 1.5 * 2^127 * 2 overflows too.
    let near = 1.5 * 2f32.powi(127);
    let mut s = LossScaler::with_options(ScalerOptions {
        init_scale: near,
        growth_interval: 1,
        ..opts
    })
    .unwrap();
    s.update(false);
    assert_eq!((s.scale(), s.growth_tracker()), (near, 0));
}

#[test]
fn scaler_stays_normal_where_torch_underflows() {
    let mut s = LossScaler::dynamic();
    let mut t = TorchScaler::new(&ScalerOptions::default());
    for i in 0..200 {
        s.update(true);
        t.update(true);
        if t.scale.is_normal() {
            assert_eq!(s.scale().to_bits(), t.scale.to_bits(), "overflow {i}");
        } else {
            assert_eq!(s.scale(), f32::MIN_POSITIVE, "overflow {i}");
        }
    }
    assert_eq!(t.scale, 0.0, "torch's scale reaches 0");
    assert!(s.scale().is_normal());
    assert!(s.inv_scale().is_finite());
}

#[test]
fn scaler_hysteresis_tolerates_consecutive_overflows() {
    let mut s = LossScaler::with_options(ScalerOptions {
        hysteresis: 3,
        growth_interval: 4,
        ..ScalerOptions::default()
    })
    .unwrap();
    s.update(false);
    s.update(true);
    s.update(true);
    assert_eq!(
        (s.scale(), s.growth_tracker(), s.hysteresis_left()),
        (65536.0, 0, 1)
    );
    s.update(true); // third in a row: back off
    assert_eq!(s.scale(), 32768.0);
    s.update(true); // budget stays spent until a clean update
    assert_eq!(s.scale(), 16384.0);
    s.update(false); // refills
    assert_eq!(s.hysteresis_left(), 3);
    s.update(true);
    s.update(true);
    assert_eq!(s.scale(), 16384.0);
}

#[test]
fn scaler_min_and_max_clamp() {
    let mut s = LossScaler::with_options(ScalerOptions {
        init_scale: 4.0,
        min_scale: 1.0,
        max_scale: 6.0,
        growth_interval: 1,
        ..ScalerOptions::default()
    })
    .unwrap();
    s.update(false);
    assert_eq!(s.scale(), 6.0);
    s.update(false);
    assert_eq!(s.scale(), 6.0);
    for _ in 0..5 {
        s.update(true);
    }
    assert_eq!(s.scale(), 1.0);
}

#[test]
fn scaler_fixed_and_disabled() {
    let mut f = LossScaler::fixed(128.0).unwrap();
    let mut d = LossScaler::disabled();
    for flag in [true, false, true] {
        f.update(flag);
        d.update(flag);
    }
    assert_eq!((f.scale(), d.scale()), (128.0, 1.0));
    assert_eq!(
        (f.mode(), d.mode()),
        (ScalerMode::Fixed, ScalerMode::Disabled)
    );
    for bad in [0.0, -1.0, f32::INFINITY, f32::NAN, 1e-40] {
        assert!(
            matches!(LossScaler::fixed(bad), Err(Error::InvalidScale { .. })),
            "{bad}"
        );
    }
}

#[test]
fn scaler_rejects_bad_options() {
    let d = ScalerOptions::default();
    let cases = [
        (
            "growth_factor",
            ScalerOptions {
                growth_factor: 1.0,
                ..d
            },
        ),
        (
            "growth_factor",
            ScalerOptions {
                growth_factor: f64::INFINITY,
                ..d
            },
        ),
        (
            "growth_factor",
            ScalerOptions {
                growth_factor: f64::NAN,
                ..d
            },
        ),
        (
            "backoff_factor",
            ScalerOptions {
                backoff_factor: 1.0,
                ..d
            },
        ),
        (
            "backoff_factor",
            ScalerOptions {
                backoff_factor: 0.0,
                ..d
            },
        ),
        (
            "backoff_factor",
            ScalerOptions {
                backoff_factor: f64::NAN,
                ..d
            },
        ),
        (
            "growth_interval",
            ScalerOptions {
                growth_interval: 0,
                ..d
            },
        ),
        ("hysteresis", ScalerOptions { hysteresis: 0, ..d }),
        (
            "min_scale",
            ScalerOptions {
                min_scale: 0.0,
                ..d
            },
        ),
        (
            "min_scale",
            ScalerOptions {
                min_scale: 1e-40,
                ..d
            },
        ),
        (
            "max_scale",
            ScalerOptions {
                max_scale: f32::INFINITY,
                ..d
            },
        ),
        (
            "max_scale",
            ScalerOptions {
                min_scale: 2.0,
                max_scale: 1.0,
                init_scale: 1.5,
                ..d
            },
        ),
        (
            "init_scale",
            ScalerOptions {
                init_scale: 0.5,
                min_scale: 1.0,
                ..d
            },
        ),
        (
            "init_scale",
            ScalerOptions {
                init_scale: f32::NAN,
                ..d
            },
        ),
    ];
    for (arg, o) in cases {
        match LossScaler::with_options(o) {
            Err(Error::InvalidArgument { arg: got, .. }) => assert_eq!(got, arg, "{o:?}"),
            other => panic!("{o:?}: {other:?}"),
        }
    }
}

fn options() -> impl Strategy<Value = ScalerOptions> {
    (
        prop_oneof![Just(2.0f64), 1.0001f64..10.0],
        prop_oneof![Just(0.5f64), 0.001f64..0.999],
        1u32..6,
        prop_oneof![Just(65536.0f32), 1e-30f32..1e30],
    )
        .prop_map(
            |(growth_factor, backoff_factor, growth_interval, init_scale)| ScalerOptions {
                growth_factor,
                backoff_factor,
                growth_interval,
                init_scale,
                ..ScalerOptions::default()
            },
        )
}

proptest! {
    /// With hysteresis 1 and the default bounds, the trajectory is torch's
    /// for as long as torch's scale stays normal; ours always stays normal.
    #[test]
    fn scaler_matches_torch_while_normal(o in options(), flags in prop::collection::vec(any::<bool>(), 0..400)) {
        let mut s = LossScaler::with_options(o).unwrap();
        let mut t = TorchScaler::new(&o);
        let mut diverged = false;
        for &f in &flags {
            s.update(f);
            t.update(f);
            prop_assert!(s.scale().is_normal() && s.scale() > 0.0);
            diverged |= !t.scale.is_normal();
            if !diverged {
                prop_assert_eq!(s.scale().to_bits(), t.scale.to_bits());
                prop_assert_eq!(s.growth_tracker() as i32, t.tracker);
            }
        }
    }

    /// Any options, any flags: the scale stays a normal f32 in [min, max],
    /// the tracker below the interval, and hysteresis 1 backs off on every
    /// overflow.
    #[test]
    fn scaler_invariants(o in options(), h in 1u32..4, lo in -126i32..0, hi in 0i32..128,
                         flags in prop::collection::vec(any::<bool>(), 0..300)) {
        let (min_scale, max_scale) = (2f32.powi(lo), f32::MAX.min(2f32.powi(hi) * 1.5));
        let o = ScalerOptions { hysteresis: h, min_scale, max_scale,
            init_scale: o.init_scale.clamp(min_scale, max_scale), ..o };
        let mut s = LossScaler::with_options(o).unwrap();
        let mut run = 0;
        for &f in &flags {
            let before = s.scale();
            s.update(f);
            run = if f { run + 1 } else { 0 };
            prop_assert!(s.scale().is_normal() && s.scale() >= min_scale && s.scale() <= max_scale);
            prop_assert!(s.growth_tracker() < o.growth_interval);
            if f {
                prop_assert_eq!(s.growth_tracker(), 0);
                prop_assert!(s.scale() <= before);
                if run < h { prop_assert_eq!(s.scale(), before); }
            } else {
                prop_assert!(s.scale() >= before);
            }
            // A round trip through bytes changes nothing.
            prop_assert_eq!(LossScaler::from_bytes(&s.to_bytes()).unwrap(), s);
        }
    }
}

// ---------------------------------------------------------------------------
// Optimizers against f64 references
// ---------------------------------------------------------------------------

/// The published update rules in f64 (torch.optim.SGD / AdamW docs).
#[derive(Clone, Debug)]
struct Reference {
    opt: Optimizer,
    p: Vec<f64>,
    m: Vec<f64>,
    v: Vec<f64>,
    t: i32,
    /// Per element: the sum of the magnitudes that went into it, for the
    /// tolerance.
    mag: Vec<f64>,
}

impl Reference {
    fn new(opt: Optimizer, p: &[f32]) -> Reference {
        let n = p.len();
        Reference {
            opt,
            p: p.iter().map(|&x| x as f64).collect(),
            m: vec![0.0; n],
            v: vec![0.0; n],
            t: 0,
            mag: p.iter().map(|&x| x.abs() as f64).collect(),
        }
    }

    fn step(&mut self, g: &[f64]) {
        self.t += 1;
        let t = self.t;
        for (i, &gi) in g.iter().enumerate() {
            let p = self.p[i];
            let new = match self.opt {
                Optimizer::Sgd(o) => {
                    let mut d = gi + o.weight_decay as f64 * p;
                    if o.momentum != 0.0 {
                        let mo = o.momentum as f64;
                        self.m[i] = if t == 1 {
                            d
                        } else {
                            mo * self.m[i] + (1.0 - o.dampening as f64) * d
                        };
                        d = if o.nesterov {
                            d + mo * self.m[i]
                        } else {
                            self.m[i]
                        };
                    }
                    p - o.lr as f64 * d
                }
                Optimizer::AdamW(o) => {
                    let (b1, b2) = (o.beta1 as f64, o.beta2 as f64);
                    let p = p * (1.0 - o.lr as f64 * o.weight_decay as f64);
                    self.m[i] = b1 * self.m[i] + (1.0 - b1) * gi;
                    self.v[i] = b2 * self.v[i] + (1.0 - b2) * gi * gi;
                    let mhat = self.m[i] / (1.0 - b1.powi(t));
                    let vhat = self.v[i] / (1.0 - b2.powi(t));
                    p - o.lr as f64 * mhat / (vhat.sqrt() + o.eps as f64)
                }
                _ => unreachable!(),
            };
            self.mag[i] += (new - p).abs() + p.abs();
            self.p[i] = new;
        }
    }
}

fn optimizers() -> Vec<Optimizer> {
    vec![
        Sgd::new(0.1).into(),
        Sgd::new(0.05).momentum(0.9).into(),
        Sgd::new(0.05)
            .momentum(0.8)
            .dampening(0.5)
            .weight_decay(0.01)
            .into(),
        Sgd::new(0.05)
            .momentum(0.9)
            .nesterov(true)
            .weight_decay(0.1)
            .into(),
        AdamW::new(1e-2).into(),
        // A large eps, so eps inside the square root would be caught.
        AdamW::new(3e-2)
            .betas(0.8, 0.95)
            .eps(1e-2)
            .weight_decay(0.1)
            .into(),
    ]
}

/// Draws `n` gradients as `G`, of varied magnitude, times `scale`.
fn grads<G: Element>(rng: &mut Rng, n: usize, scale: f32) -> Vec<G> {
    (0..n)
        .map(|_| G::from_f32(rng.unit() * 2f32.powi(rng.below(9) as i32 - 4) * scale))
        .collect()
}

fn bits<T: Element>(x: T) -> u32 {
    // Every element type round-trips through f32 bits except NaN payloads,
    // which the tests below never produce in weights.
    x.to_f32().to_bits()
}

/// Runs `steps` steps of every optimizer on one backend with gradients `G`
/// and model copy `W`, checking the master weights against the f64
/// reference and the model copy against nearest-even of the master.
fn check_against_reference<G: Element, W: Element>(backend: Backend, rng: &mut Rng, n: usize) {
    for opt in optimizers() {
        let init: Vec<f32> = (0..n).map(|_| rng.unit()).collect();
        let mut model: Vec<Vec<W>> = vec![init.iter().map(|&x| W::from_f32(x)).collect()];
        let mut trainer = Trainer::builder(opt)
            .backend(backend)
            .clip_grad_norm(1e30)
            .scaler(LossScaler::fixed(1024.0).unwrap())
            .build(&[&init])
            .unwrap();
        let mut reference = Reference::new(opt, &init);
        for step in 0..3 {
            let scale = trainer.scale();
            let g: Vec<G> = grads(rng, n, scale);
            let g64: Vec<f64> = g.iter().map(|x| x.to_f32() as f64 / scale as f64).collect();
            let report = trainer.step(&[&g], &mut model).unwrap();
            assert!(report.applied);
            let norm = g64.iter().map(|x| x * x).sum::<f64>().sqrt();
            assert!(
                (report.grad_norm - norm).abs() <= 1e-6 * norm + 1e-30,
                "{} {opt:?}",
                backend.isa()
            );
            reference.step(&g64);
            let master = trainer.master(0).unwrap();
            for i in 0..n {
                let (got, want) = (master[i] as f64, reference.p[i]);
                let tol = 2e-6 * reference.mag[i] + 1e-12;
                assert!(
                    (got - want).abs() <= tol,
                    "{} {opt:?} G={:?} W={:?} n={n} step {step} i={i}: got {got}, want {want}",
                    backend.isa(),
                    G::DTYPE,
                    W::DTYPE
                );
                assert_eq!(bits(model[0][i]), bits(W::from_f32(master[i])));
            }
        }
    }
}

#[test]
fn optimizers_match_the_f64_reference_on_every_isa() {
    let mut rng = Rng::fresh("optimizers_match_the_f64_reference_on_every_isa");
    for backend in backends() {
        for n in (0..=33).chain([257, 1000]) {
            check_against_reference::<f32, bf16>(backend, &mut rng, n);
            check_against_reference::<bf16, bf16>(backend, &mut rng, n);
            check_against_reference::<f16, f16>(backend, &mut rng, n);
        }
        check_against_reference::<bf16, f32>(backend, &mut rng, 100);
        check_against_reference::<f16, bf16>(backend, &mut rng, 100);
        check_against_reference::<f32, f16>(backend, &mut rng, 100);
        check_against_reference::<bf16, f16>(backend, &mut rng, 100);
        check_against_reference::<f16, f32>(backend, &mut rng, 100);
        check_against_reference::<f32, f32>(backend, &mut rng, 100);
    }
}

/// State of a trainer plus model, for bitwise comparison.
fn snapshot<W: Element>(t: &Trainer, model: &[Vec<W>]) -> (Vec<Vec<u32>>, u64, Vec<u32>) {
    let mut state = Vec::new();
    for i in 0..model.len() {
        let (m, v) = t.moments(i).unwrap();
        for s in [t.master(i).unwrap(), m, v] {
            state.push(s.iter().map(|x| x.to_bits()).collect());
        }
    }
    let model = model.iter().flatten().map(|&x| bits(x)).collect();
    (state, t.steps(), model)
}

/// Every ISA gives the scalar oracle's bits (no clipping), in every
/// precision mode, with tensors at misaligned starts.
#[test]
fn every_isa_matches_scalar_bit_for_bit() {
    let mut rng = Rng::fresh("every_isa_matches_scalar_bit_for_bit");
    let precisions = [
        Precision::Master {
            rounding: Rounding::Nearest,
        },
        Precision::Master {
            rounding: Rounding::Stochastic,
        },
        Precision::Pure,
    ];
    let lens = [0usize, 1, 7, 15, 16, 17, 31, 33, 100];
    for opt in optimizers() {
        for precision in precisions {
            let init: Vec<Vec<bf16>> = lens
                .iter()
                .map(|&n| (0..n).map(|_| bf16::from_f32(rng.unit())).collect())
                .collect();
            let gs: Vec<Vec<Vec<f16>>> = (0..3)
                .map(|_| lens.iter().map(|&n| grads(&mut rng, n, 1024.0)).collect())
                .collect();
            let mut results = Vec::new();
            for backend in backends() {
                let mut t = Trainer::builder(opt)
                    .backend(backend)
                    .precision(precision)
                    .scaler(LossScaler::fixed(1024.0).unwrap())
                    .seed(7)
                    .build(&init)
                    .unwrap();
                // Misaligned starts: each tensor lives one element into a buffer.
                let mut bufs: Vec<Vec<bf16>> = init
                    .iter()
                    .map(|w| {
                        std::iter::once(bf16::ZERO)
                            .chain(w.iter().copied())
                            .collect()
                    })
                    .collect();
                for g in &gs {
                    let gref: Vec<&[f16]> = g.iter().map(|x| &x[..]).collect();
                    let mut views: Vec<&mut [bf16]> =
                        bufs.iter_mut().map(|b| &mut b[1..]).collect();
                    assert!(t.step(&gref, &mut views).unwrap().applied);
                }
                let model: Vec<Vec<bf16>> = bufs.iter().map(|b| b[1..].to_vec()).collect();
                results.push((backend.isa(), snapshot(&t, &model)));
            }
            for (isa, r) in &results[1..] {
                assert!(r == &results[0].1, "{isa} != scalar: {opt:?} {precision:?}");
            }
        }
    }
}

/// Pure bf16 with updates of an eighth of an ulp: stochastic rounding moves
/// the weights by the right amount on average (nearest rounding would not
/// move them at all).
#[test]
fn pure_bf16_stochastic_rounding_is_unbiased() {
    let n = 1 << 14;
    for backend in backends() {
        let mut w = vec![vec![bf16::from_f32(1.0); n]];
        // ulp of bf16 at [1, 2) is 2^-7; lr * g = 2^-10 per step.
        let mut t = Trainer::builder(Sgd::new(1.0))
            .backend(backend)
            .precision(Precision::Pure)
            .scaler(LossScaler::disabled())
            .seed(3)
            .build(&w)
            .unwrap();
        let g = vec![vec![-(2f32.powi(-10)); n]];
        for _ in 0..4 {
            t.step(&g, &mut w).unwrap();
        }
        let mean = w[0].iter().map(|x| x.to_f64()).sum::<f64>() / n as f64;
        let want = 1.0 + 4.0 * 2f64.powi(-10);
        // Each element's error has std <= 2^-7; the mean's is ~2^-7/128.
        assert!(
            (mean - want).abs() < 2e-4,
            "{}: mean {mean}, want {want}",
            backend.isa()
        );
        assert!(w[0].iter().all(|x| {
            let x = x.to_f32();
            (1.0..=1.0 + 4.0 * 2f32.powi(-7)).contains(&x)
        }));
    }
}

/// A step with an inf or NaN anywhere (in any tensor, as any gradient
/// type) changes nothing but the scaler, on every ISA.
#[test]
fn skipped_steps_change_nothing() {
    let mut rng = Rng::fresh("skipped_steps_change_nothing");
    let specials: Vec<f32> = special_f32()
        .into_iter()
        .filter(|x| !x.is_finite())
        .collect();
    for backend in backends() {
        for opt in optimizers() {
            for precision in [Precision::default(), Precision::Pure] {
                let lens = [5usize, 40, 0, 17];
                let init: Vec<Vec<f32>> = lens
                    .iter()
                    .map(|&n| (0..n).map(|_| rng.unit()).collect())
                    .collect();
                let mut model: Vec<Vec<bf16>> = init
                    .iter()
                    .map(|w| w.iter().map(|&x| bf16::from_f32(x)).collect())
                    .collect();
                let mut t = Trainer::builder(opt)
                    .backend(backend)
                    .precision(precision)
                    .clip_grad_norm(0.5)
                    .build(&init)
                    .unwrap();
                // A clean step first, so moments are non-zero.
                let g: Vec<Vec<f32>> = lens
                    .iter()
                    .map(|&n| grads(&mut rng, n, t.scale()))
                    .collect();
                assert!(t.step(&g, &mut model).unwrap().applied);
                for _ in 0..4 {
                    let before = snapshot(&t, &model);
                    let scale = t.scale();
                    let mut g: Vec<Vec<f32>> =
                        lens.iter().map(|&n| grads(&mut rng, n, scale)).collect();
                    let k = [0, 1, 3][rng.below(3)];
                    let at = rng.below(lens[k]);
                    g[k][at] = specials[rng.below(specials.len())];
                    // Half of the time as bf16 gradients.
                    let r = if rng.below(2) == 0 {
                        t.step(&g, &mut model).unwrap()
                    } else {
                        let gb: Vec<Vec<bf16>> = g
                            .iter()
                            .map(|v| v.iter().map(|&x| bf16::from_f32(x)).collect())
                            .collect();
                        t.step(&gb, &mut model).unwrap()
                    };
                    assert!(!r.applied && r.nonfinite >= 1, "{}", backend.isa());
                    assert!(r.grad_norm.is_nan());
                    assert_eq!(r.scale_after, scale / 2.0);
                    assert!(snapshot(&t, &model) == before, "{} {opt:?}", backend.isa());
                }
                // Finite values that overflow only once unscaled are caught
                // too: a scale below 1 makes 1/scale large.
                let mut t2 = Trainer::builder(opt)
                    .backend(backend)
                    .scaler(LossScaler::fixed(2f32.powi(-100)).unwrap())
                    .build(&init)
                    .unwrap();
                let before = snapshot(&t2, &model);
                let mut g: Vec<Vec<f32>> = lens.iter().map(|&n| vec![0.0; n]).collect();
                g[1][7] = 2f32.powi(40);
                let r = t2.step(&g, &mut model).unwrap();
                assert!(!r.applied && r.nonfinite == 1);
                assert!(snapshot(&t2, &model) == before);
            }
        }
    }
}

/// Clipping by global norm as torch's clip_grad_norm_ does it.
#[test]
fn clipping_scales_by_the_global_norm() {
    for backend in backends() {
        let mut w = vec![vec![0f32; 3], vec![0f32; 1]];
        let mut t = Trainer::builder(Sgd::new(1.0))
            .backend(backend)
            .scaler(LossScaler::fixed(4.0).unwrap())
            .clip_grad_norm(1.0)
            .build(&w)
            .unwrap();
        // Unscaled gradients (1, 2, 2) and (4): norm 5.
        let g = vec![vec![4.0f32, 8.0, 8.0], vec![16.0]];
        let r = t.step(&g, &mut w).unwrap();
        assert!((r.grad_norm - 5.0).abs() < 1e-12);
        assert_eq!(r.clip_coef, (1.0f64 / (5.0 + 1e-6)) as f32);
        let c = r.clip_coef as f64;
        for (got, want) in w.iter().flatten().zip([1.0, 2.0, 2.0, 4.0]) {
            assert!(
                (*got as f64 + want * c).abs() < 1e-6,
                "{} {got}",
                backend.isa()
            );
        }
        // Under the norm: no clipping.
        let g = vec![vec![0.4f32, 0.0, 0.0], vec![0.0]];
        assert_eq!(t.step(&g, &mut w).unwrap().clip_coef, 1.0);
    }
}

// ---------------------------------------------------------------------------
// Checkpoints
// ---------------------------------------------------------------------------

fn trained(backend: Backend, opt: Optimizer, precision: Precision) -> (Trainer, Vec<Vec<bf16>>) {
    let init = vec![vec![0.25f32; 37], vec![-0.5; 9]];
    let mut model: Vec<Vec<bf16>> = init
        .iter()
        .map(|w| w.iter().map(|&x| bf16::from_f32(x)).collect())
        .collect();
    let mut t = Trainer::builder(opt)
        .backend(backend)
        .precision(precision)
        .seed(11)
        .build(&init)
        .unwrap();
    let mut rng = Rng::fresh("trained");
    for k in 0..5 {
        let mut g: Vec<Vec<f32>> = [37, 9]
            .iter()
            .map(|&n| grads(&mut rng, n, t.scale()))
            .collect();
        if k == 2 {
            g[1][1] = f32::NAN;
        }
        t.step(&g, &mut model).unwrap();
    }
    (t, model)
}

#[test]
fn checkpoint_resumes_bit_identically() {
    for backend in backends() {
        for opt in optimizers() {
            for precision in [
                Precision::default(),
                Precision::Master {
                    rounding: Rounding::Stochastic,
                },
                Precision::Pure,
            ] {
                let (mut a, mut model_a) = trained(backend, opt, precision);
                let bytes = a.to_bytes();
                let mut b = Trainer::builder(opt)
                    .backend(backend)
                    .precision(precision)
                    .build(&model_a)
                    .unwrap();
                b.restore(&bytes).unwrap();
                assert_eq!(b.to_bytes(), bytes);
                // The model copy can be rebuilt from the master weights.
                let mut rebuilt: Vec<Vec<bf16>> =
                    model_a.iter().map(|w| vec![bf16::NAN; w.len()]).collect();
                match precision {
                    Precision::Pure => assert!(b.write_model(&mut rebuilt).is_err()),
                    _ => {
                        b.write_model(&mut rebuilt).unwrap();
                        for (i, w) in rebuilt.iter().enumerate() {
                            let want: Vec<bf16> = b
                                .master(i)
                                .unwrap()
                                .iter()
                                .map(|&x| bf16::from_f32(x))
                                .collect();
                            assert_eq!(w, &want);
                        }
                        if precision == Precision::default() {
                            assert_eq!(rebuilt, model_a);
                        }
                    }
                }
                let mut model_b = model_a.clone();
                let mut rng = Rng::fresh("resume");
                for _ in 0..3 {
                    let g: Vec<Vec<f32>> = [37, 9]
                        .iter()
                        .map(|&n| grads(&mut rng, n, a.scale()))
                        .collect();
                    let ra = a.step(&g, &mut model_a).unwrap();
                    let rb = b.step(&g, &mut model_b).unwrap();
                    assert_eq!(ra, rb);
                }
                assert!(
                    snapshot(&a, &model_a) == snapshot(&b, &model_b),
                    "{} {opt:?}",
                    backend.isa()
                );
            }
        }
    }
}

#[test]
fn corrupt_truncated_or_mismatched_checkpoints_are_errors() {
    let backend = Backend::scalar();
    let opt: Optimizer = AdamW::new(1e-3).into();
    let (t, model) = trained(backend, opt, Precision::default());
    let bytes = t.to_bytes();
    let fresh = || {
        Trainer::builder(opt)
            .backend(backend)
            .build(&model)
            .unwrap()
    };
    let untouched = fresh().to_bytes();
    let is_checkpoint_err = |r: Result<(), Error>| matches!(r, Err(Error::Checkpoint { .. }));
    // Every truncation.
    for len in 0..bytes.len() {
        let mut u = fresh();
        assert!(is_checkpoint_err(u.restore(&bytes[..len])), "len {len}");
        assert_eq!(u.to_bytes(), untouched);
    }
    // A flipped bit anywhere.
    let mut rng = Rng::fresh("corrupt_checkpoints");
    for _ in 0..200 {
        let mut c = bytes.clone();
        let at = rng.below(c.len());
        c[at] ^= 1 << rng.below(8);
        let mut u = fresh();
        assert!(is_checkpoint_err(u.restore(&c)), "flip at {at}");
        assert_eq!(u.to_bytes(), untouched);
    }
    // Extra bytes.
    let mut c = bytes.clone();
    c.push(0);
    assert!(is_checkpoint_err(fresh().restore(&c)));
    // Another optimizer, shape, tensor count, precision mode, or a scaler.
    let mism = [
        Trainer::builder(Sgd::new(0.1)).build(&model).unwrap(),
        Trainer::builder(opt)
            .build(&[&model[0][..], &model[1][..8]])
            .unwrap(),
        Trainer::builder(opt).build(&model[..1]).unwrap(),
        Trainer::builder(opt)
            .precision(Precision::Pure)
            .build(&model)
            .unwrap(),
    ];
    for mut m in mism {
        let before = m.to_bytes();
        let e = m.restore(&bytes);
        assert!(is_checkpoint_err(e.clone()), "{e:?}");
        assert_eq!(m.to_bytes(), before);
    }
    assert!(LossScaler::from_bytes(&bytes).is_err());
    assert!(fresh().restore(&LossScaler::dynamic().to_bytes()).is_err());
    // The error message says what was wrong.
    let e = Trainer::builder(Sgd::new(0.1))
        .build(&model)
        .unwrap()
        .restore(&bytes)
        .unwrap_err();
    assert!(e.to_string().contains("AdamW"), "{e}");
}

// ---------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------

#[test]
fn bad_shapes_and_hyperparameters_are_errors_and_change_nothing() {
    let w = vec![vec![1.0f32; 4], vec![2.0; 3]];
    let mut t = Trainer::builder(AdamW::new(1e-3)).build(&w).unwrap();
    let mut model = w.clone();
    let before = t.to_bytes();
    let g_short = vec![vec![0.0f32; 4]];
    let g_len = vec![vec![0.0f32; 4], vec![0.0; 2]];
    assert!(matches!(
        t.step(&g_short, &mut model),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        t.step(&g_len, &mut model),
        Err(Error::InvalidArgument { arg: "grads", .. })
    ));
    let g = vec![vec![f32::NAN; 4], vec![0.0; 3]];
    let mut m_len = vec![vec![1.0f32; 4], vec![2.0; 5]];
    assert!(matches!(
        t.step(&g, &mut m_len),
        Err(Error::InvalidArgument { arg: "params", .. })
    ));
    assert_eq!(
        t.to_bytes(),
        before,
        "an Err changed the trainer (scaler included)"
    );
    assert_eq!(model, w);
    assert!(t.set_lr(-1.0).is_err() && t.set_lr(f32::NAN).is_err());
    let bad: [Optimizer; 7] = [
        Sgd::new(-0.1).into(),
        Sgd::new(0.1).momentum(-0.5).into(),
        Sgd::new(0.1).nesterov(true).into(),
        Sgd::new(0.1)
            .momentum(0.9)
            .dampening(0.1)
            .nesterov(true)
            .into(),
        AdamW::new(1e-3).betas(1.0, 0.9).into(),
        AdamW::new(1e-3).eps(-1.0).into(),
        AdamW::new(f32::INFINITY).into(),
    ];
    for o in bad {
        assert!(
            matches!(
                Trainer::builder(o).build(&w),
                Err(Error::InvalidArgument { .. })
            ),
            "{o:?}"
        );
    }
    assert!(
        Trainer::builder(Sgd::new(0.1))
            .clip_grad_norm(0.0)
            .build(&w)
            .is_err()
    );
    // Zero tensors and empty tensors are valid.
    let mut none: Vec<Vec<f32>> = vec![];
    let mut t = Trainer::builder(Sgd::new(0.1)).build(&none).unwrap();
    assert!(t.step(&none.clone(), &mut none).unwrap().applied);
}

/// The norm is right (and the step applied) for finite gradients whose
/// squares overflow or underflow f32, found by the fuzzer: SIMD sums f32
/// squares and must rescale in those cases.
#[test]
fn grad_norm_survives_huge_and_tiny_gradients() {
    let mut rng = Rng::fresh("grad_norm_survives_huge_and_tiny_gradients");
    for backend in backends() {
        for magnitude in [1e30f32, 3e19, 1e-20, 1e-30, 1e-44, f32::MAX / 2.0] {
            for n in [1usize, 17, 100, 5000] {
                let g: Vec<f32> = (0..n).map(|_| rng.unit() * magnitude).collect();
                let mut w = vec![vec![0f32; n]];
                let mut t = Trainer::builder(Sgd::new(0.0))
                    .backend(backend)
                    .scaler(LossScaler::disabled())
                    .clip_grad_norm(1.0)
                    .build(&w)
                    .unwrap();
                let r = t.step(&[&g], &mut w).unwrap();
                let want = g.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
                assert!(r.applied, "{} {magnitude:e}", backend.isa());
                assert!(
                    (r.grad_norm - want).abs() <= 1e-6 * want,
                    "{} {magnitude:e} n={n}: {} vs {want}",
                    backend.isa(),
                    r.grad_norm
                );
            }
        }
    }
}

/// The training check's statistics of one gradient tensor `g`, unscaled by
/// a fixed loss scale `scale`, on `backend`.
fn check_stats(backend: Backend, g: &[f32], scale: f32) -> halfkern::finite::GradStats {
    let w = vec![vec![0f32; g.len()]];
    let mut t = Trainer::builder(Sgd::new(0.1))
        .backend(backend)
        .scaler(LossScaler::fixed(scale).unwrap())
        .build(&w)
        .unwrap();
    t.begin().unscale_and_check(&[g]).unwrap().stats()
}

/// The check's stats follow `finite::GradStats`: the count of inf/NaN
/// unscaled values and the sum of squares of the finite ones, on every ISA,
/// with inf/NaN at every position of short tensors.
#[test]
fn check_stats_count_nonfinite_and_sum_the_finite_squares() {
    let mut rng = Rng::fresh("check_stats_count_nonfinite_and_sum_the_finite_squares");
    let specials = special_f32();
    for backend in backends() {
        for n in 0..=40usize {
            for at in 0..n.max(1) {
                let mut g: Vec<f32> = (0..n).map(|_| rng.unit() * 8.0).collect();
                if n > 0 {
                    g[at] = specials[rng.below(specials.len())];
                }
                let stats = check_stats(backend, &g, 4.0);
                let unscaled: Vec<f32> = g.iter().map(|&x| x * 0.25).collect();
                let bad = unscaled.iter().filter(|x| !x.is_finite()).count();
                let want: f64 = unscaled
                    .iter()
                    .filter(|x| x.is_finite())
                    .map(|&x| x as f64 * x as f64)
                    .sum();
                assert_eq!(stats.nonfinite, bad, "{} n={n} at={at}", backend.isa());
                assert!(
                    (stats.sum_sq - want).abs() <= 1e-6 * want,
                    "{} n={n} at={at}: {} vs {want}",
                    backend.isa(),
                    stats.sum_sq
                );
            }
        }
    }
}

/// One large gradient beside many whose squares are just under half an
/// f32 ulp of its square: the check's sum of squares keeps them (1e-6
/// relative), on every ISA; fresh random signs and position.
#[test]
fn check_stats_keep_small_squares_beside_a_large_one() {
    let mut rng = Rng::fresh("check_stats_keep_small_squares_beside_a_large_one");
    for backend in backends() {
        for n in [256usize, 1024, 4100] {
            let small = 0.99f32.sqrt() * 2f32.powi(-12);
            let mut g: Vec<f32> = (0..n)
                .map(|_| if rng.below(2) == 0 { small } else { -small })
                .collect();
            g[rng.below(8)] = 1.0;
            let stats = check_stats(backend, &g, 1.0);
            let want: f64 = g.iter().map(|&x| x as f64 * x as f64).sum();
            assert!(
                (stats.sum_sq - want).abs() <= 1e-6 * want,
                "{} n={n}: {} vs {want} (rel {:e})",
                backend.isa(),
                stats.sum_sq,
                (stats.sum_sq - want).abs() / want
            );
        }
    }
}

/// `check_unscaled` takes gradients the engine already unscaled (a GEMM's
/// `unscale` epilogue): with a power-of-two scale it lands on exactly the
/// bits `unscale_and_check` gives for the scaled gradients, reports the
/// same norm, and skips (changing nothing) on an inf/NaN.
#[test]
fn check_unscaled_matches_unscale_and_check() {
    let mut rng = Rng::fresh("check_unscaled_matches_unscale_and_check");
    let lens = [0usize, 1, 17, 40];
    for backend in backends() {
        for opt in optimizers() {
            let init: Vec<Vec<f32>> = lens
                .iter()
                .map(|&n| (0..n).map(|_| rng.unit()).collect())
                .collect();
            let mut model_a: Vec<Vec<bf16>> = init
                .iter()
                .map(|w| w.iter().map(|&x| bf16::from_f32(x)).collect())
                .collect();
            let mut model_b = model_a.clone();
            let build = || {
                Trainer::builder(opt)
                    .backend(backend)
                    .clip_grad_norm(0.7)
                    .build(&init)
                    .unwrap()
            };
            let (mut ta, mut tb) = (build(), build());
            for step in 0..4 {
                let scale = ta.scale();
                assert_eq!(scale, tb.scale());
                let mut scaled: Vec<Vec<f32>> =
                    lens.iter().map(|&n| grads(&mut rng, n, scale)).collect();
                if step == 2 {
                    scaled[2][5] = f32::NAN;
                }
                let inv = ta.scaler().inv_scale();
                assert_eq!(inv, tb.begin().inv_loss_scale());
                let unscaled: Vec<Vec<f32>> = scaled
                    .iter()
                    .map(|g| g.iter().map(|&x| x * inv).collect())
                    .collect();
                let before = snapshot(&tb, &model_b);
                let ra = ta
                    .begin()
                    .unscale_and_check(&scaled)
                    .unwrap()
                    .apply(&mut model_a)
                    .unwrap();
                let rb = tb
                    .begin()
                    .check_unscaled(&unscaled)
                    .unwrap()
                    .apply(&mut model_b)
                    .unwrap();
                let isa = backend.isa();
                assert_eq!(ra.applied, step != 2, "{isa} step {step}");
                assert_eq!(ra.applied, rb.applied, "{isa} step {step}");
                assert_eq!(ra.nonfinite, rb.nonfinite, "{isa} step {step}");
                assert_eq!(ra.scale_after, rb.scale_after, "{isa} step {step}");
                if ra.applied {
                    assert_eq!(ra.grad_norm, rb.grad_norm, "{isa} step {step}");
                    assert_eq!(ra.clip_coef, rb.clip_coef, "{isa} step {step}");
                } else {
                    assert!(
                        snapshot(&tb, &model_b) == before,
                        "{isa}: skip changed state"
                    );
                }
                assert!(
                    snapshot(&ta, &model_a) == snapshot(&tb, &model_b),
                    "{isa} {opt:?} step {step}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Statistics from an all-reduce
// ---------------------------------------------------------------------------

/// Everything a rejected call must leave alone: the checkpoint bytes (the
/// scaler, hyper-parameters, step counter, master weights and moments, bit
/// for bit), the scaler itself, and the model.
#[expect(clippy::type_complexity, reason = "a tuple compared as a whole")]
fn full_state<W: Element>(
    t: &Trainer,
    model: &[Vec<W>],
) -> (Vec<u8>, LossScaler, (Vec<Vec<u32>>, u64, Vec<u32>)) {
    (t.to_bytes(), *t.scaler(), snapshot(t, model))
}

/// Stats no sum all-reduce of real ones gives (`sum_sq` negative, NaN or
/// infinite) are an error at `all_reduced`, whatever the count, and change
/// nothing: not the weights, the moments, the step counter or the scaler.
/// Valid global stats then apply or skip as their count says. Every ISA,
/// every optimizer, fresh random gradients and values.
#[test]
fn all_reduced_rejects_invalid_stats_and_changes_nothing() {
    let mut rng = Rng::fresh("all_reduced_rejects_invalid_stats_and_changes_nothing");
    let lens = [7usize, 33];
    for backend in backends() {
        for opt in optimizers() {
            let init: Vec<Vec<f32>> = lens
                .iter()
                .map(|&n| (0..n).map(|_| rng.unit()).collect())
                .collect();
            let mut model: Vec<Vec<bf16>> = init
                .iter()
                .map(|w| w.iter().map(|&x| bf16::from_f32(x)).collect())
                .collect();
            let mut t = Trainer::builder(opt)
                .backend(backend)
                .clip_grad_norm(0.5)
                .build(&init)
                .unwrap();
            let g: Vec<Vec<f32>> = lens
                .iter()
                .map(|&n| grads(&mut rng, n, t.scale()))
                .collect();
            assert!(t.step(&g, &mut model).unwrap().applied);
            let g: Vec<Vec<f32>> = lens
                .iter()
                .map(|&n| grads(&mut rng, n, t.scale()))
                .collect();
            let isa = backend.isa();
            let neg = -(rng.unit().abs() as f64 + 1e-3);
            for sum in [neg, -1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
                for count in [0usize, 1 + rng.below(5)] {
                    let before = full_state(&t, &model);
                    let step = t.begin().unscale_and_check(&g).unwrap();
                    let e = step.all_reduced(GradStats::new(count, sum)).unwrap_err();
                    assert!(
                        matches!(e, Error::InvalidArgument { arg: "sum_sq", .. }),
                        "{isa} {sum}: {e:?}"
                    );
                    assert!(full_state(&t, &model) == before, "{isa} {opt:?} {sum}");
                }
            }
            // Valid stats decide: a count > 0 skips (only the scaler moves),
            // a count of 0 applies with the global norm.
            let before = snapshot(&t, &model);
            let global = GradStats::new(1 + rng.below(5), rng.unit().abs() as f64);
            let r = t
                .begin()
                .unscale_and_check(&g)
                .unwrap()
                .all_reduced(global)
                .unwrap()
                .apply(&mut model)
                .unwrap();
            assert!(!r.applied && r.nonfinite == global.nonfinite, "{isa}");
            assert!(snapshot(&t, &model) == before, "{isa}");
            let global = GradStats::new(0, 4.0 + rng.unit().abs() as f64);
            let steps = t.steps();
            let r = t
                .begin()
                .unscale_and_check(&g)
                .unwrap()
                .all_reduced(global)
                .unwrap()
                .apply(&mut model)
                .unwrap();
            assert!(r.applied && t.steps() == steps + 1, "{isa}");
            assert_eq!(r.grad_norm, global.sum_sq.sqrt());
            assert_eq!(r.clip_coef, global.clip_coef(0.5));
            assert!(t.master(1).unwrap().iter().all(|x| x.is_finite()));
        }
    }
}

// ---------------------------------------------------------------------------
// Checkpoints no live trainer writes
// ---------------------------------------------------------------------------

/// FNV-1a 64, the checkpoint's checksum (src/train/checkpoint.rs).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h = 0xCBF2_9CE4_8422_2325u64;
    for &b in bytes {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// `bytes` with `new` written at `at` and the checksum recomputed, so only
/// a check of the meaning can reject it.
fn patch(bytes: &[u8], at: usize, new: &[u8]) -> Vec<u8> {
    let mut c = bytes.to_vec();
    c[at..at + new.len()].copy_from_slice(new);
    let body = c.len() - 8;
    let sum = fnv1a(&c[..body]);
    c[body..].copy_from_slice(&sum.to_le_bytes());
    c
}

// Offsets in a checkpoint (layout in src/train/checkpoint.rs): a 21-byte
// header, then the scaler (mode u8, scale f32, growth tracker u32,
// hysteresis left u32, options), then the optimizer.
const CK_SCALE: usize = 22;
const CK_OPT_KIND: usize = 70;

/// Offset of the field after the optimizer: the precision byte.
fn ck_precision(bytes: &[u8]) -> usize {
    match bytes[CK_OPT_KIND] {
        1 => CK_OPT_KIND + 18,
        _ => CK_OPT_KIND + 21,
    }
}

fn ck_steps(bytes: &[u8]) -> usize {
    ck_precision(bytes) + 1 + 4 + 8
}

/// Offset of element `j` of buffer `b` (0 master, 1 first, 2 second) of
/// tensor `i`.
fn ck_buf(bytes: &[u8], i: usize, b: usize, j: usize) -> usize {
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
    let mut at = ck_steps(bytes) + 8 + 8;
    for ti in 0..=i {
        at += 8; // tensor length
        for bi in 0..3 {
            let n = u64_at(at);
            at += 8;
            if (ti, bi) == (i, b) {
                assert!(j < n, "tensor {i} buffer {b} has {n} values");
                return at + 4 * j;
            }
            at += 4 * n;
        }
    }
    unreachable!()
}

/// Restores `bytes` into a fresh trainer like `like`'s and returns the
/// error; the trainer must be bit-identical afterwards.
fn rejected(fresh: &dyn Fn() -> Trainer, bytes: &[u8], what: &str) -> String {
    let mut u = fresh();
    let before = (u.to_bytes(), *u.scaler(), u.steps());
    let e = u.restore(bytes).unwrap_err();
    assert!(matches!(e, Error::Checkpoint { .. }), "{what}: {e:?}");
    assert!(
        (u.to_bytes(), *u.scaler(), u.steps()) == before,
        "{what}: a rejected restore changed the trainer"
    );
    e.to_string()
}

/// Checkpoints whose checksum is right but whose state no live trainer can
/// be in are rejected, naming the field, with the trainer untouched: a step
/// counter at u64::MAX (the next step would wrap to t = 0 and AdamW would
/// divide by zero), a NaN or infinite master weight, a negative or NaN
/// second moment, an infinite first moment, a disabled scaler holding scale
/// 65536, AdamW eps = 0, a Nesterov byte of 2, max_norm -0, non-zero
/// moments at step 0. The same bytes with a valid value there restore.
#[test]
fn checkpoints_breaking_live_invariants_are_rejected() {
    let mut rng = Rng::fresh("checkpoints_breaking_live_invariants_are_rejected");
    let backend = backends()[rng.below(backends().len())];
    let adam: Optimizer = AdamW::new(1e-3).into();
    let (t, model) = trained(backend, adam, Precision::default());
    let bytes = t.to_bytes();
    let fresh = || {
        Trainer::builder(adam)
            .backend(backend)
            .build(&model)
            .unwrap()
    };
    // The patching is right: a valid value in each place restores.
    let (i, j) = (rng.below(2), rng.below(9));
    let x = rng.unit();
    for (at, new) in [
        (ck_buf(&bytes, i, 0, j), x.to_le_bytes()),
        (ck_buf(&bytes, i, 1, j), x.to_le_bytes()),
        (ck_buf(&bytes, i, 2, j), x.abs().to_le_bytes()),
    ] {
        let mut u = fresh();
        u.restore(&patch(&bytes, at, &new)).unwrap();
    }
    let mut u = fresh();
    u.restore(&patch(
        &bytes,
        ck_steps(&bytes),
        &(u64::MAX - 1).to_le_bytes(),
    ))
    .unwrap();
    assert_eq!(u.steps(), u64::MAX - 1);

    let steps = ck_steps(&bytes);
    let e = rejected(
        &fresh,
        &patch(&bytes, steps, &u64::MAX.to_le_bytes()),
        "steps",
    );
    assert!(
        e.contains("step counter") && e.contains(&u64::MAX.to_string()),
        "{e}"
    );

    for nan in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let e = rejected(
            &fresh,
            &patch(&bytes, ck_buf(&bytes, i, 0, j), &nan.to_le_bytes()),
            "master",
        );
        assert!(e.contains("master weight"), "{e}");
        let e = rejected(
            &fresh,
            &patch(&bytes, ck_buf(&bytes, i, 1, j), &nan.to_le_bytes()),
            "m",
        );
        assert!(e.contains("first buffer"), "{e}");
    }
    let neg = -(rng.unit().abs() + 1e-3);
    for bad in [neg, -f32::MIN_POSITIVE, f32::NAN, f32::NEG_INFINITY] {
        let e = rejected(
            &fresh,
            &patch(&bytes, ck_buf(&bytes, i, 2, j), &bad.to_le_bytes()),
            "v",
        );
        assert!(e.contains("second moment"), "{e}");
    }
    // eps at its offset in the AdamW record (lr, beta1, beta2, eps, wd).
    for eps in [0.0f32, -0.0, f32::INFINITY] {
        let e = rejected(
            &fresh,
            &patch(&bytes, CK_OPT_KIND + 13, &eps.to_le_bytes()),
            "eps",
        );
        assert!(e.contains("eps"), "{e}");
    }
    let clip = ck_precision(&bytes) + 1;
    let e = rejected(
        &fresh,
        &patch(&bytes, clip, &(-0.0f32).to_le_bytes()),
        "clip",
    );
    assert!(e.contains("max_norm"), "{e}");

    // A disabled scaler holding 65536 (in [min_scale, max_scale], so the
    // range check alone passes it); and as a scaler checkpoint.
    let disabled = || {
        Trainer::builder(adam)
            .backend(backend)
            .scaler(LossScaler::disabled())
            .build(&model)
            .unwrap()
    };
    let dbytes = disabled().to_bytes();
    disabled().restore(&dbytes).unwrap();
    let e = rejected(
        &disabled,
        &patch(&dbytes, CK_SCALE, &65536f32.to_le_bytes()),
        "disabled scale",
    );
    assert!(e.contains("scale") && e.contains("6.5536e4"), "{e}");
    let sbytes = LossScaler::disabled().to_bytes();
    let e = LossScaler::from_bytes(&patch(&sbytes, CK_SCALE, &65536f32.to_le_bytes())).unwrap_err();
    assert!(matches!(e, Error::Checkpoint { .. }), "{e:?}");
    // A fixed scaler's growth tracker never moves.
    let fbytes = LossScaler::fixed(1024.0).unwrap().to_bytes();
    assert!(LossScaler::from_bytes(&fbytes).is_ok());
    assert!(LossScaler::from_bytes(&patch(&fbytes, CK_SCALE + 4, &1u32.to_le_bytes())).is_err());

    // Nesterov byte 2 (SGD record: lr, momentum, dampening, nesterov).
    let sgd: Optimizer = Sgd::new(0.05).momentum(0.9).nesterov(true).into();
    let sgd_fresh = || {
        Trainer::builder(sgd)
            .backend(backend)
            .build(&model)
            .unwrap()
    };
    let sgd_bytes = sgd_fresh().to_bytes();
    sgd_fresh().restore(&sgd_bytes).unwrap();
    let e = rejected(
        &sgd_fresh,
        &patch(&sgd_bytes, CK_OPT_KIND + 13, &[2]),
        "nesterov",
    );
    assert!(e.contains("nesterov"), "{e}");
    // Step 0 with a non-zero momentum buffer: no step ever wrote it.
    let e = rejected(
        &sgd_fresh,
        &patch(
            &sgd_bytes,
            ck_buf(&sgd_bytes, i, 1, j),
            &0.5f32.to_le_bytes(),
        ),
        "moment at step 0",
    );
    assert!(e.contains("before any step"), "{e}");
}

/// The step counter never wraps: at u64::MAX an applied step is an error
/// that changes nothing (the scaler included), while a skipped one is
/// still a skip. Reached by restoring a checkpoint at u64::MAX - 1.
#[test]
fn the_step_counter_never_wraps() {
    let mut rng = Rng::fresh("the_step_counter_never_wraps");
    for backend in backends() {
        let adam: Optimizer = AdamW::new(1e-3).into();
        let (t, mut model) = trained(backend, adam, Precision::default());
        let bytes = t.to_bytes();
        let mut u = Trainer::builder(adam)
            .backend(backend)
            .build(&model)
            .unwrap();
        u.restore(&patch(
            &bytes,
            ck_steps(&bytes),
            &(u64::MAX - 1).to_le_bytes(),
        ))
        .unwrap();
        let g = |rng: &mut Rng, s: f32| -> Vec<Vec<f32>> {
            [37, 9].iter().map(|&n| grads(rng, n, s)).collect()
        };
        let r = u.step(&g(&mut rng, u.scale()), &mut model).unwrap();
        assert!(r.applied && r.step == u64::MAX && u.steps() == u64::MAX);
        assert!(u.master(0).unwrap().iter().all(|x| x.is_finite()));
        let before = full_state(&u, &model);
        let e = u.step(&g(&mut rng, u.scale()), &mut model).unwrap_err();
        assert!(
            matches!(e, Error::InvalidArgument { arg: "steps", .. }),
            "{e:?}"
        );
        assert!(full_state(&u, &model) == before, "{}", backend.isa());
        let mut bad = g(&mut rng, u.scale());
        bad[1][rng.below(9)] = f32::NAN;
        let r = u.step(&bad, &mut model).unwrap();
        assert!(!r.applied && u.steps() == u64::MAX);
    }
}

// ---------------------------------------------------------------------------
// Hyper-parameters
// ---------------------------------------------------------------------------

/// AdamW with eps = 0 (or -0, negative, NaN, inf) is rejected at build
/// time, naming eps: with eps = 0 a zero gradient makes `m / (sqrt(v) + eps)`
/// 0/0 and the master weight NaN. Any finite eps > 0 is accepted, and
/// then a zero gradient leaves every weight finite.
#[test]
fn adamw_eps_must_be_finite_and_positive() {
    let mut rng = Rng::fresh("adamw_eps_must_be_finite_and_positive");
    let w = vec![(0..17).map(|_| rng.unit()).collect::<Vec<f32>>()];
    for eps in [0.0f32, -0.0, -1e-8, f32::NAN, f32::INFINITY] {
        let e = Trainer::builder(AdamW::new(1e-3).eps(eps))
            .build(&w)
            .unwrap_err();
        assert!(
            matches!(e, Error::InvalidArgument { arg: "eps", .. }),
            "{eps}: {e:?}"
        );
        assert!(
            Optimizer::from(AdamW::new(1e-3).eps(eps))
                .validate()
                .is_err()
        );
    }
    for backend in backends() {
        let eps = f32::from_bits(1 + rng.below(0x7F7F_FFFF) as u32);
        let mut t = Trainer::builder(AdamW::new(1e-3).eps(eps))
            .backend(backend)
            .build(&w)
            .unwrap();
        let mut model = w.clone();
        assert!(t.step(&[vec![0f32; 17]], &mut model).unwrap().applied);
        assert!(
            t.master(0).unwrap().iter().all(|x| x.is_finite()),
            "{} eps {eps:e}",
            backend.isa()
        );
    }
}
