//! One AdamW training step over 16M parameters (f32 master weights, bf16
//! model copy, bf16 gradients): `Trainer::step` on every ISA this machine
//! has (a read-only check pass, then one fused update pass per tensor),
//! beside a plain unfused loop as an engine would write it: unscale the
//! bf16 gradients into an f32 buffer, check that buffer for inf/NaN, run
//! AdamW over f32, then downcast the master weights to bf16.
//!
//! One thread (the trainer does not split tensors). Throughput is in
//! parameters per second.
//!
//! ```sh
//! cargo bench --bench train -- --warm-up-time 1 --measurement-time 2
//! ```

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use halfkern::train::{AdamW, Trainer};
use halfkern::{Backend, Isa, bf16};

const N: usize = 16 << 20;
const LR: f32 = 1e-3;

fn inputs(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut state = seed | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
        })
        .collect()
}

/// The unfused reference: four passes over memory, plain Rust loops.
struct Plain {
    master: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    g32: Vec<f32>,
    t: i32,
}

impl Plain {
    fn step(&mut self, grads: &[bf16], model: &mut [bf16], scale: f32) -> bool {
        let inv = 1.0 / scale;
        // Pass 1: unscale (widen) into f32 gradients.
        for (d, g) in self.g32.iter_mut().zip(grads) {
            *d = g.to_f32() * inv;
        }
        // Pass 2: check.
        if !self.g32.iter().all(|x| x.is_finite()) {
            return false;
        }
        // Pass 3: AdamW.
        self.t += 1;
        let (b1, b2, eps, wd) = (0.9f32, 0.999f32, 1e-8f32, 0.01f32);
        let bc1 = 1.0 - b1.powi(self.t);
        let bc2 = 1.0 - b2.powi(self.t);
        let step_size = LR / bc1;
        let bc2_sqrt = bc2.sqrt();
        for i in 0..self.master.len() {
            let g = self.g32[i];
            let p = self.master[i] * (1.0 - LR * wd);
            self.m[i] = b1 * self.m[i] + (1.0 - b1) * g;
            self.v[i] = b2 * self.v[i] + (1.0 - b2) * g * g;
            let denom = self.v[i].sqrt() / bc2_sqrt + eps;
            self.master[i] = p - step_size * self.m[i] / denom;
        }
        // Pass 4: downcast the model copy.
        for (w, p) in model.iter_mut().zip(&self.master) {
            *w = bf16::from_f32(*p);
        }
        true
    }
}

fn adamw_step(c: &mut Criterion) {
    let scale = 65536.0f32;
    let master0 = inputs(N, 1, 2.0);
    let grads: Vec<bf16> = inputs(N, 2, 1e-2 * scale)
        .iter()
        .map(|&x| bf16::from_f32(x))
        .collect();
    let mut model: Vec<bf16> = master0.iter().map(|&x| bf16::from_f32(x)).collect();

    let mut g = c.benchmark_group("adamw_step/16M");
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(10);
    for isa in Isa::available() {
        let backend = Backend::new(isa).unwrap();
        let mut trainer = Trainer::builder(AdamW::new(LR))
            .backend(backend)
            .build(&[&master0])
            .unwrap();
        g.bench_function(BenchmarkId::from_parameter(isa.name()), |b| {
            b.iter(|| {
                let r = trainer
                    .step(&[black_box(&grads[..])], &mut [&mut model[..]])
                    .unwrap();
                assert!(r.applied);
            })
        });
    }
    let mut plain = Plain {
        master: master0.clone(),
        m: vec![0.0; N],
        v: vec![0.0; N],
        g32: vec![0.0; N],
        t: 0,
    };
    g.bench_function(BenchmarkId::from_parameter("plain-4-pass"), |b| {
        b.iter(|| assert!(plain.step(black_box(&grads), &mut model, scale)))
    });
    g.finish();
}

criterion_group!(benches, adamw_step);
criterion_main!(benches);
