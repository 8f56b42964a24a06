//! Fused unscale + inf/NaN check + sum of squares, every ISA this machine
//! has, beside a plain two-pass loop (check all finite, then scale, as
//! peers do) and a plain one-pass loop, on one core (a one-thread rayon
//! global pool). f32 and bf16 in place at 64K (in L2) and 16M (DRAM) elements.
//!
//! `inv_scale` is 1.0 behind `black_box` so that repeated in-place passes
//! leave the data unchanged (a real scale would drive it to zero over the
//! iterations); the multiply is still executed.
//!
//! `cargo bench --bench finite -- --warm-up-time 1 --measurement-time 2`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use halfkern::{Backend, Isa, bf16};

/// Peers' two passes: `all(is_finite)`, then the scaling loop (PyTorch's
/// `unscale_` + a separate `isfinite` reduction).
fn two_pass_f32(g: &mut [f32], inv: f32) -> (bool, f64) {
    let finite = g.iter().all(|x| x.is_finite());
    for x in g.iter_mut() {
        *x *= inv;
    }
    let sum: f32 = g.iter().map(|x| x * x).sum();
    (finite, sum as f64)
}

/// One plain pass: scale, flag non-finite, sum squares in f32.
fn one_pass_f32(g: &mut [f32], inv: f32) -> (bool, f64) {
    let mut bad = false;
    let mut sum = 0f32;
    for x in g.iter_mut() {
        let y = *x * inv;
        bad |= !y.is_finite();
        sum += y * y;
        *x = y;
    }
    (!bad, sum as f64)
}

fn two_pass_bf16(g: &mut [bf16], inv: f32) -> (bool, f64) {
    let finite = g.iter().all(|x| x.is_finite());
    for x in g.iter_mut() {
        *x = bf16::from_f32(x.to_f32() * inv);
    }
    let sum: f32 = g.iter().map(|x| x.to_f32() * x.to_f32()).sum();
    (finite, sum as f64)
}

fn one_pass_bf16(g: &mut [bf16], inv: f32) -> (bool, f64) {
    let mut bad = false;
    let mut sum = 0f32;
    for x in g.iter_mut() {
        let y = bf16::from_f32(x.to_f32() * inv);
        let v = y.to_f32();
        bad |= !v.is_finite();
        sum += v * v;
        *x = y;
    }
    (!bad, sum as f64)
}

fn data(n: usize) -> Vec<f32> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    // One core: with a one-thread global pool `unscale` never splits.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build_global();
    let inv = black_box(1.0f32);
    for (label, n) in [
        ("4K", 1usize << 12),
        ("64K", 1usize << 16),
        ("16M", 1 << 24),
    ] {
        let base = data(n);
        let mut g32 = base.clone();
        let mut g16: Vec<bf16> = base.iter().map(|&x| bf16::from_f32(x)).collect();

        let mut group = c.benchmark_group(format!("unscale_f32/{label}"));
        group.throughput(Throughput::Elements(n as u64));
        for isa in Isa::available() {
            let backend = Backend::new(isa).unwrap();
            group.bench_function(isa.name(), |b| {
                b.iter(|| backend.unscale(&mut g32, inv).unwrap())
            });
        }
        group.bench_function("plain_two_pass", |b| b.iter(|| two_pass_f32(&mut g32, inv)));
        group.bench_function("plain_one_pass", |b| b.iter(|| one_pass_f32(&mut g32, inv)));
        group.finish();

        let mut group = c.benchmark_group(format!("unscale_bf16/{label}"));
        group.throughput(Throughput::Elements(n as u64));
        for isa in Isa::available() {
            let backend = Backend::new(isa).unwrap();
            group.bench_function(isa.name(), |b| {
                b.iter(|| backend.unscale(&mut g16, inv).unwrap())
            });
        }
        group.bench_function("plain_two_pass", |b| {
            b.iter(|| two_pass_bf16(&mut g16, inv))
        });
        group.bench_function("plain_one_pass", |b| {
            b.iter(|| one_pass_bf16(&mut g16, inv))
        });
        group.finish();
    }
}

/// The cost of keeping IEEE subnormals (`fp_env`) per call: a small
/// unscale in this thread's default mode (the guard only reads MXCSR)
/// and with flush-to-zero and denormals-are-zero set (it clears and
/// restores them: two LDMXCSR per call).
#[cfg(target_arch = "x86_64")]
fn bench_fp_env(c: &mut Criterion) {
    fn mxcsr() -> u32 {
        let mut x = 0u32;
        // SAFETY: STMXCSR stores 4 bytes into `x`.
        unsafe { std::arch::asm!("stmxcsr [{}]", in(reg) &mut x, options(nostack)) };
        x
    }
    fn set_mxcsr(x: u32) {
        // SAFETY: LDMXCSR loads 4 bytes of a valid MXCSR value.
        unsafe { std::arch::asm!("ldmxcsr [{}]", in(reg) &x, options(nostack, readonly)) };
    }
    let inv = black_box(1.0f32);
    let backend = Backend::best();
    for n in [64usize, 4096] {
        let mut g = data(n);
        let mut group = c.benchmark_group(format!("fp_env/unscale_f32/{n}"));
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function("ieee_mode", |b| {
            b.iter(|| backend.unscale(&mut g, inv).unwrap())
        });
        let saved = mxcsr();
        set_mxcsr(saved | (1 << 15) | (1 << 6));
        group.bench_function("ftz_daz_mode", |b| {
            b.iter(|| backend.unscale(&mut g, inv).unwrap())
        });
        set_mxcsr(saved);
        group.finish();
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn bench_fp_env(_: &mut Criterion) {}

criterion_group!(benches, bench, bench_fp_env);
criterion_main!(benches);
