//! Conversion throughput: every direction at 4K, 64K and 16M elements, on
//! every ISA this machine has (through `Backend::new`), beside `half`'s
//! slice conversion and a plain per-element loop.
//!
//! Single-threaded numbers run inside a one-thread rayon pool (so the 16M
//! case is not split); `parallel` is the 16M case on the global pool.
//! Throughput is in elements per second.
//!
//! ```sh
//! cargo bench --bench convert -- --warm-up-time 1 --measurement-time 2
//! ```

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use half::slice::HalfFloatSliceExt;
use halfkern::{Backend, Element, Isa, bf16, f16};

const SIZES: [(usize, &str); 3] = [(4 << 10, "4K"), (64 << 10, "64K"), (16 << 20, "16M")];

/// Inputs of every magnitude a training run sees (no NaN: the peers'
/// speed should not depend on a rare slow path).
fn inputs(n: usize) -> Vec<f32> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let unit = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            unit * 2f32.powi((state % 24) as i32 - 12)
        })
        .collect()
}

type Peer<S, D> = (&'static str, fn(&[S], &mut [D]));

/// One group: `direction/size`, the ISAs, then the peers.
fn group<S: Element, D: Element>(
    c: &mut Criterion,
    one: &rayon::ThreadPool,
    direction: &str,
    src: &[S],
    peers: &[Peer<S, D>],
) {
    for (n, size) in SIZES {
        let src = &src[..n];
        let mut dst = vec![D::default(); n];
        let mut g = c.benchmark_group(format!("{direction}/{size}"));
        g.throughput(Throughput::Elements(n as u64));
        if n >= 1 << 20 {
            g.sample_size(10);
        }
        for isa in Isa::available() {
            let backend = Backend::new(isa).unwrap();
            g.bench_function(BenchmarkId::from_parameter(isa.name()), |b| {
                one.install(|| b.iter(|| backend.convert(black_box(src), &mut dst).unwrap()))
            });
        }
        for (name, f) in peers {
            g.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter(|| f(black_box(src), &mut dst))
            });
        }
        if n >= 1 << 20 {
            g.bench_function(BenchmarkId::from_parameter("parallel"), |b| {
                b.iter(|| halfkern::convert(black_box(src), &mut dst).unwrap())
            });
        }
        g.finish();
    }
}

fn stochastic<D: Element>(
    c: &mut Criterion,
    one: &rayon::ThreadPool,
    direction: &str,
    src: &[f32],
) {
    for (n, size) in SIZES {
        let src = &src[..n];
        let mut dst = vec![D::default(); n];
        let mut g = c.benchmark_group(format!("{direction}/{size}"));
        g.throughput(Throughput::Elements(n as u64));
        if n >= 1 << 20 {
            g.sample_size(10);
        }
        for isa in Isa::available() {
            let backend = Backend::new(isa).unwrap();
            g.bench_function(BenchmarkId::from_parameter(isa.name()), |b| {
                one.install(|| {
                    b.iter(|| {
                        backend
                            .convert_stochastic(black_box(src), &mut dst, 7)
                            .unwrap()
                    })
                })
            });
        }
        if n >= 1 << 20 {
            g.bench_function(BenchmarkId::from_parameter("parallel"), |b| {
                b.iter(|| halfkern::convert_stochastic(black_box(src), &mut dst, 7).unwrap())
            });
        }
        g.finish();
    }
}

fn convert(c: &mut Criterion) {
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let n = SIZES[2].0;
    let f: Vec<f32> = inputs(n);
    let b: Vec<bf16> = f.iter().map(|&x| bf16::from_f32(x)).collect();
    let h: Vec<f16> = f.iter().map(|&x| f16::from_f32(x)).collect();

    group::<f32, bf16>(
        c,
        &one,
        "f32_to_bf16",
        &f,
        &[
            ("half", |s, d| d.convert_from_f32_slice(s)),
            ("loop", |s, d| {
                for (d, s) in d.iter_mut().zip(s) {
                    *d = bf16::from_f32(*s);
                }
            }),
        ],
    );
    group::<f32, f16>(
        c,
        &one,
        "f32_to_f16",
        &f,
        &[
            ("half", |s, d| d.convert_from_f32_slice(s)),
            ("loop", |s, d| {
                for (d, s) in d.iter_mut().zip(s) {
                    *d = f16::from_f32(*s);
                }
            }),
        ],
    );
    group::<bf16, f32>(
        c,
        &one,
        "bf16_to_f32",
        &b,
        &[
            ("half", |s, d| s.convert_to_f32_slice(d)),
            ("loop", |s, d| {
                for (d, s) in d.iter_mut().zip(s) {
                    *d = s.to_f32();
                }
            }),
        ],
    );
    group::<f16, f32>(
        c,
        &one,
        "f16_to_f32",
        &h,
        &[
            ("half", |s, d| s.convert_to_f32_slice(d)),
            ("loop", |s, d| {
                for (d, s) in d.iter_mut().zip(s) {
                    *d = s.to_f32();
                }
            }),
        ],
    );
    group::<bf16, f16>(
        c,
        &one,
        "bf16_to_f16",
        &b,
        &[("loop", |s, d| {
            for (d, s) in d.iter_mut().zip(s) {
                *d = f16::from_f32(s.to_f32());
            }
        })],
    );
    group::<f16, bf16>(
        c,
        &one,
        "f16_to_bf16",
        &h,
        &[("loop", |s, d| {
            for (d, s) in d.iter_mut().zip(s) {
                *d = bf16::from_f32(s.to_f32());
            }
        })],
    );
    stochastic::<bf16>(c, &one, "f32_to_bf16_sr", &f);
    stochastic::<f16>(c, &one, "f32_to_f16_sr", &f);
}

/// What the memory system allows, for reading the table: plain copies
/// moving the same bytes per element as the conversions (`copy-4B`: u16 to
/// u16, a quarter less than bf16 <-> f32's 6; `copy-8B`: f32 to f32, a
/// third more), one core, at every size.
fn bounds(c: &mut Criterion) {
    for (n, size) in SIZES {
        let mut g = c.benchmark_group(format!("bound/{size}"));
        g.throughput(Throughput::Elements(n as u64));
        let (s2, mut d2) = (vec![1u16; n], vec![0u16; n]);
        g.bench_function("copy-4B", |b| b.iter(|| d2.copy_from_slice(black_box(&s2))));
        let (s4, mut d4) = (vec![1f32; n], vec![0f32; n]);
        g.bench_function("copy-8B", |b| b.iter(|| d4.copy_from_slice(black_box(&s4))));
        g.finish();
    }
}

criterion_group!(benches, convert, bounds);
criterion_main!(benches);
