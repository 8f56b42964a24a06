//! A linear layer's product `x W^T` through candle, with and without
//! halfkern: a decode shape (one token) and a prefill shape (256 tokens),
//! `n = k = 4096`, in bf16 and f16, with candle's f32 beside them.
//!
//! Per shape and type:
//! - `candle`: `candle_nn::Linear::forward` (candle's CPU matmul; bf16 is
//!   widened to f32 copies on every call);
//! - `halfkern`: `halfkern_candle::broadcast_matmul(x, W.t())`, the same
//!   call through halfkern, `W` read in place;
//! - `halfkern-linear`: `halfkern_candle::Linear`, `W` prepared once
//!   (row-major `W^T` for the decode shape, packed for prefill).
//!
//! Both libraries use every core (candle its own threads, halfkern rayon's
//! pool). `cargo bench -p halfkern-candle --bench matmul`.

use std::hint::black_box;
use std::time::Duration;

use candle_core::{DType, Device, Module, Result, Tensor};
use criterion::{Criterion, criterion_group, criterion_main};

const N: usize = 4096;
const K: usize = 4096;

/// Deterministic values in [-1, 1) (SplitMix64).
fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 40) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

fn bench(c: &mut Criterion) -> Result<()> {
    let cpu = &Device::Cpu;
    let w32 = Tensor::from_vec(values(1, N * K), (N, K), cpu)?;
    for (shape, m) in [("decode", 1), ("prefill", 256)] {
        let x32 = Tensor::from_vec(values(2, m * K), (1, m, K), cpu)?;
        let mut group = c.benchmark_group(format!("{shape} m={m} n={N} k={K}"));
        group.sample_size(10);
        group.warm_up_time(Duration::from_secs(1));
        group.measurement_time(Duration::from_secs(if m == 1 { 3 } else { 6 }));
        let f32_layer = candle_nn::Linear::new(w32.clone(), None);
        group.bench_function("f32/candle", |bch| {
            bch.iter(|| f32_layer.forward(black_box(&x32)).map(black_box))
        });
        for dt in [DType::BF16, DType::F16] {
            let name = format!("{dt:?}").to_lowercase();
            let (w, x) = (w32.to_dtype(dt)?, x32.to_dtype(dt)?);
            let candle_layer = candle_nn::Linear::new(w.clone(), None);
            let layer = halfkern_candle::Linear::new(&w, None)?;
            let wt = w.t()?;
            group.bench_function(format!("{name}/candle"), |bch| {
                bch.iter(|| candle_layer.forward(black_box(&x)).map(black_box))
            });
            group.bench_function(format!("{name}/halfkern"), |bch| {
                bch.iter(|| halfkern_candle::broadcast_matmul(black_box(&x), &wt).map(black_box))
            });
            group.bench_function(format!("{name}/halfkern-linear"), |bch| {
                bch.iter(|| layer.forward(black_box(&x)).map(black_box))
            });
        }
        group.finish();
    }
    Ok(())
}

fn matmul(c: &mut Criterion) {
    if let Err(e) = bench(c) {
        eprintln!("matmul bench: {e}");
        std::process::exit(1);
    }
}

criterion_group!(benches, matmul);
criterion_main!(benches);
