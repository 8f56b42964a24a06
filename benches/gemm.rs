//! GEMM throughput: every available ISA (and both bf16 kernels of
//! avx512bf16), bf16/f16/f32 inputs into f32 C, row-major, packing
//! included, 1 and 2 threads, with the `gemm` crate 0.19 (f16, f32) beside
//! it, and OpenBLAS's `cblas_sgemm` (f32) with the feature `openblas-peer`
//! (`benches/common/openblas.rs`); the `gemm` crate is built with its
//! `x86-v4` feature, so it runs its AVX-512 kernels where the CPU has
//! them. `square-same-c` writes C in the inputs' type instead (bf16 C is what
//! `torch.matmul` returns; f16 C is the `gemm` crate's native f16 form), so
//! the epilogue's rounding and stores are timed against the peer too.
//! Criterion's "elements" are flops (2 m n k), so its throughput reads as
//! GFLOP/s ("Gelem/s").
//!
//! Filter with criterion's regex, e.g. `cargo bench --bench gemm -- 'square/bf16/n512/'`;
//! with OpenBLAS (Debian's `libopenblas-dev`):
//!
//! ```sh
//! cargo bench --features openblas-peer --bench gemm -- 'square/f32/'
//! ```
//!
//! On an AVX-512 machine, `OPENBLAS_CORETYPE=Haswell` makes OpenBLAS use
//! its AVX2 kernels, the peer of halfkern's `avx2` rows.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use halfkern::{Backend, Element, Gemm, Isa, MatMut, MatRef, Threads, bf16, f16};

fn data<T: Element>(len: usize, seed: u32) -> Vec<T> {
    (0..len)
        .map(|i| {
            let x = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8;
            T::from_f32(x as f32 / (1u32 << 24) as f32 - 0.5)
        })
        .collect()
}

/// The variants to run: each ISA, plus the forced vdpbf16ps kernel.
fn variants<T: Element>() -> Vec<(String, Backend, Option<bool>)> {
    let mut v = Vec::new();
    for isa in Isa::available() {
        let b = Backend::new(isa).unwrap();
        v.push((isa.name().to_string(), b, None));
        if T::DTYPE == halfkern::DType::Bf16 && (isa == Isa::Avx512Bf16) {
            v.push(("avx512bf16-dot".into(), b, Some(true)));
            v.push(("avx512bf16-fma".into(), b, Some(false)));
        }
    }
    v
}

fn threads_of(t: usize) -> Threads {
    if t == 1 {
        Threads::Single
    } else {
        Threads::Count(t)
    }
}

#[cfg(feature = "openblas-peer")]
#[path = "common/openblas.rs"]
mod openblas;

/// A peer library's GEMM: `(a, b, c, threads)`.
type Peer<T, O> = dyn Fn(&[T], &[T], &mut [O], usize);

/// One shape, `T` inputs into an `O` C, every variant and the peers
/// (named).
fn one<T: Element + 'static, O: Element>(
    c: &mut Criterion,
    group: &str,
    m: usize,
    n: usize,
    k: usize,
    peers: &[(&str, &Peer<T, O>)],
) {
    let a: Vec<T> = data(m * k, 1);
    let b: Vec<T> = data(k * n, 2);
    let mut out = vec![O::from_f32(0.0); m * n];
    let mut g = c.benchmark_group(format!("{group}/{}/m{m}n{n}k{k}", T::DTYPE.name()));
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(300));
    let flops = 2.0 * m as f64 * n as f64 * k as f64;
    g.measurement_time(Duration::from_secs_f64((flops / 2e10).clamp(0.5, 3.0)));
    g.throughput(Throughput::Elements(flops as u64));
    for threads in [1usize, 2] {
        for (name, backend, dot) in variants::<T>() {
            // Scalar is far off the pace: only its smallest sizes.
            if backend.isa() == Isa::Scalar && flops > 1e8 {
                continue;
            }
            let params = Gemm::new().threads(threads_of(threads)).dot_kernel(dot);
            g.bench_function(BenchmarkId::new(name, format!("t{threads}")), |bench| {
                bench.iter(|| {
                    backend
                        .gemm(
                            MatRef::row_major(black_box(&a), m, k).unwrap(),
                            MatRef::row_major(black_box(&b), k, n).unwrap(),
                            MatMut::row_major(&mut out, m, n).unwrap(),
                            &params,
                        )
                        .unwrap()
                })
            });
        }
        for (name, peer) in peers {
            g.bench_function(BenchmarkId::new(*name, format!("t{threads}")), |bench| {
                bench.iter(|| peer(black_box(&a), black_box(&b), &mut out, threads))
            });
        }
    }
    g.finish();
}

/// The `gemm` crate, f32 C from f32 inputs (its f16 path writes f16 C, so
/// for f16 we time f16 x f16 -> f16, its native form).
fn peer_f32(m: usize, n: usize, k: usize) -> impl Fn(&[f32], &[f32], &mut [f32], usize) {
    move |a, b, c, threads| {
        // SAFETY: row-major m x k, k x n, m x n buffers of exactly those
        // sizes; the strides below stay inside them.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                k as isize,
                b.as_ptr(),
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                par(threads),
            )
        }
    }
}

/// The `gemm` crate, f16 x f16 -> f16 C (its native form), into `c`.
fn peer_f16_into(m: usize, n: usize, k: usize) -> impl Fn(&[f16], &[f16], &mut [f16], usize) {
    move |a, b, c, threads| {
        // SAFETY: as in `peer_f32`.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                k as isize,
                b.as_ptr(),
                1,
                n as isize,
                f16::ZERO,
                f16::ONE,
                false,
                false,
                false,
                par(threads),
            )
        }
    }
}

/// [`peer_f16_into`] beside halfkern's f32 C: the peer writes its f16 C
/// into a buffer of its own.
fn peer_f16(m: usize, n: usize, k: usize) -> impl Fn(&[f16], &[f16], &mut [f32], usize) {
    let into = peer_f16_into(m, n, k);
    let out = std::sync::Mutex::new(vec![f16::ZERO; m * n]);
    move |a, b, _c, threads| into(a, b, &mut out.lock().unwrap(), threads)
}

fn par(threads: usize) -> gemm::Parallelism {
    if threads == 1 {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(threads)
    }
}

/// OpenBLAS's `cblas_sgemm` on `threads` threads, where the feature
/// links it.
#[cfg(feature = "openblas-peer")]
fn peer_openblas(m: usize, n: usize, k: usize) -> impl Fn(&[f32], &[f32], &mut [f32], usize) {
    move |a, b, c, threads| openblas::sgemm(m, n, k, a, b, c, threads)
}

/// The peers of the f32 GEMM: the `gemm` crate, and OpenBLAS where the
/// feature links it.
fn run_f32(c: &mut Criterion, group: &str, m: usize, n: usize, k: usize) {
    let p = peer_f32(m, n, k);
    #[cfg(feature = "openblas-peer")]
    {
        let o = peer_openblas(m, n, k);
        one::<f32, f32>(c, group, m, n, k, &[(GEMM_CRATE, &p), ("openblas-0.3", &o)]);
    }
    #[cfg(not(feature = "openblas-peer"))]
    one::<f32, f32>(c, group, m, n, k, &[(GEMM_CRATE, &p)]);
}

/// The `gemm` crate's bench id.
const GEMM_CRATE: &str = "gemm-crate-0.19";

fn square(c: &mut Criterion) {
    #[cfg(feature = "openblas-peer")]
    eprintln!(
        "OpenBLAS peer: {} ({})",
        openblas::label(),
        openblas::config()
    );
    for n in [256usize, 512, 1024, 2048] {
        one::<bf16, f32>(c, "square", n, n, n, &[]);
        let p = peer_f16(n, n, n);
        one::<f16, f32>(c, "square", n, n, n, &[(GEMM_CRATE, &p)]);
        run_f32(c, "square", n, n, n);
    }
}

/// C in the inputs' type (see the module docs).
fn square_same_c(c: &mut Criterion) {
    for n in [512usize, 2048] {
        one::<bf16, bf16>(c, "square-same-c", n, n, n, &[]);
        let p = peer_f16_into(n, n, n);
        one::<f16, f16>(c, "square-same-c", n, n, n, &[(GEMM_CRATE, &p)]);
    }
}

/// Decode shapes, and m = 32 and 128: past 16 rows a B this large is
/// still streamed (16 rows per pass) by the f32-widening kernels on x86
/// (AVX2 up to 48 rows, AVX-512 up to 128). `onecol` is one column of C
/// (n = 1), which runs as `x^T A^T`: dot products with A's rows.
fn small_m(c: &mut Criterion) {
    for (group, m, n) in [
        ("smallm", 1usize, 4096usize),
        ("smallm", 16, 4096),
        ("smallm", 32, 4096),
        ("smallm", 128, 4096),
        ("onecol", 4096, 1),
    ] {
        let k = 4096;
        one::<bf16, f32>(c, group, m, n, k, &[]);
        let p = peer_f16(m, n, k);
        one::<f16, f32>(c, group, m, n, k, &[(GEMM_CRATE, &p)]);
        run_f32(c, group, m, n, k);
    }
}

/// The instruction ceilings of this core: 24 independent zmm chains of
/// `vfmadd231ps` (32 flop each) and of `vdpbf16ps` (64 flop each), no memory.
#[cfg(target_arch = "x86_64")]
mod peak {
    use core::arch::x86_64::*;

    pub const ITERS: u64 = 100_000;

    #[target_feature(enable = "avx512f")]
    pub fn fma() -> f32 {
        let mut acc = [_mm512_set1_ps(std::hint::black_box(1.0)); 24];
        let x = _mm512_set1_ps(std::hint::black_box(0.999));
        let y = _mm512_set1_ps(std::hint::black_box(1e-3));
        for _ in 0..ITERS {
            for a in acc.iter_mut() {
                *a = _mm512_fmadd_ps(*a, x, y);
            }
        }
        acc.iter().map(|a| _mm512_reduce_add_ps(*a)).sum()
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    pub fn dot() -> f32 {
        let mut acc = [_mm512_set1_ps(std::hint::black_box(1.0)); 24];
        let x = _mm512_cvtne2ps_pbh(_mm512_set1_ps(0.5), _mm512_set1_ps(0.25));
        for _ in 0..ITERS {
            for a in acc.iter_mut() {
                *a = _mm512_dpbf16_ps(*a, x, x);
            }
        }
        acc.iter().map(|a| _mm512_reduce_add_ps(*a)).sum()
    }
}

fn peaks(c: &mut Criterion) {
    #[cfg(target_arch = "x86_64")]
    {
        let mut g = c.benchmark_group("peak");
        g.sample_size(10);
        g.warm_up_time(Duration::from_millis(300));
        g.measurement_time(Duration::from_secs(1));
        if Isa::Avx512.is_available() {
            g.throughput(Throughput::Elements(peak::ITERS * 24 * 32));
            // SAFETY: AVX-512 F is available (checked above).
            g.bench_function("vfmadd231ps-zmm", |b| b.iter(|| unsafe { peak::fma() }));
        }
        if Isa::Avx512Bf16.is_available() {
            g.throughput(Throughput::Elements(peak::ITERS * 24 * 64));
            // SAFETY: AVX-512 F and AVX512_BF16 are available (checked above).
            g.bench_function("vdpbf16ps-zmm", |b| b.iter(|| unsafe { peak::dot() }));
        }
        g.finish();
    }
    // One core's read bandwidth over 64 MiB (the small-m path's ceiling;
    // the same memory level as its 32-64 MiB of B: on a box with a 260 MiB
    // L3 that may be L3, not DRAM); "elements" are bytes.
    let big = vec![1.0f32; 16 << 20];
    let mut g = c.benchmark_group("peak");
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(300));
    g.measurement_time(Duration::from_secs(1));
    g.throughput(Throughput::Bytes((big.len() * 4) as u64));
    g.bench_function("read-64MiB", |b| {
        b.iter(|| {
            let mut acc = [0.0f32; 16];
            for ch in black_box(&big).chunks_exact(16) {
                for (a, x) in acc.iter_mut().zip(ch) {
                    *a += x;
                }
            }
            acc.iter().sum::<f32>()
        })
    });
    g.finish();
}

criterion_group!(benches, peaks, square, square_same_c, small_m);
criterion_main!(benches);
