//! GEMM at the sizes where the blocked driver's seams are: shapes that
//! cross the KC, MC and NC blocks and the small-m limit, zero (broadcast)
//! and large strides, several threads, `PackedB`, activations, every C
//! type. Oracles, for every available ISA:
//! - an f64 reference on the same inputs, within the crate's bound;
//! - bit identity between one thread and several, and between `gemm` and
//!   `gemm_packed` (the same kernel sums in the same order);
//! - C's padding never written.

#![no_main]

use halfkern::{Activation, Backend, Bias, DType, Element, Gemm, Isa, MatMut, MatRef, Threads};
use halfkern::{bf16, f16};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

/// SplitMix64 from the input's seed: the matrices are too large to take
/// from the fuzzer's bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let z = (self.0 ^ (self.0 >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// Moderate values, now and then a special one.
    fn value(&mut self) -> f32 {
        match self.below(64) {
            0 => f32::INFINITY,
            1 => f32::NAN,
            2 => f32::from_bits(self.next() as u32 & 0x807F_FFFF), // subnormal
            3 => 0.0,
            _ => (self.below(2001) as f32 - 1000.0) / 256.0,
        }
    }
}

/// Sizes around the driver's seams: KC = 256, MC = 168 (AMX 256), the
/// 16-row small-m path, NR = 32 tiles, the 512-column epilogue span and
/// NC = 1024.
const MS: [usize; 11] = [0, 1, 2, 15, 16, 17, 33, 168, 169, 257, 300];
const NS: [usize; 9] = [0, 1, 31, 33, 64, 511, 513, 1025, 1100];
const KS: [usize; 8] = [0, 1, 3, 255, 256, 257, 513, 520];

/// A view's storage, `(row_stride, col_stride, len)`: row-major with a
/// large pad, column-major, or a broadcast (stride 0) along one side.
fn layout(rng: &mut Rng, rows: usize, cols: usize, kind: usize) -> (usize, usize, usize) {
    let (rs, cs) = match kind {
        0 => (cols + [0, 1, 1000][rng.below(3)], 1),
        1 => (1, rows + rng.below(3)),
        2 => (0, 1),    // every row the same
        _ => (cols, 0), // every column the same
    };
    let len = if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1
    };
    (rs, cs, len)
}

fn pool() -> &'static rayon::ThreadPool {
    static POOL: OnceLock<rayon::ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .unwrap()
    })
}

fn bits<C: Element>(c: &[C]) -> Vec<u32> {
    c.iter().map(|x| x.to_f32().to_bits()).collect()
}

fn run<T: Element, C: Element>(data: &[u8]) {
    let byte = |i: usize| data.get(i).copied().unwrap_or(0) as usize;
    let (mut m, mut n, k) = (MS[byte(1) % 11], NS[byte(2) % 9], KS[byte(3) % 8]);
    // Keep one input's work small enough for many runs a second.
    while m * n * k > 1 << 22 {
        if m > n { m /= 2 } else { n /= 2 }
    }
    let mut seed = [0u8; 8];
    for (i, s) in seed.iter_mut().enumerate() {
        *s = byte(8 + i) as u8;
    }
    let mut rng = Rng(u64::from_le_bytes(seed));
    let (ars, acs, alen) = layout(&mut rng, m, k, byte(4) % 4);
    let (brs, bcs, blen) = layout(&mut rng, k, n, byte(5) % 4);
    let a: Vec<T> = (0..alen).map(|_| T::from_f32(rng.value())).collect();
    let b: Vec<T> = (0..blen).map(|_| T::from_f32(rng.value())).collect();
    let c_pad = 3;
    let c_rs = n + c_pad;
    let clen = m * c_rs;
    let c0: Vec<C> = (0..clen).map(|_| C::from_f32(rng.value())).collect();
    let beta = [0.0f32, 1.0, -0.5][byte(6) % 3];
    let act = [Activation::None, Activation::Relu, Activation::GeluTanh][byte(7) % 3];
    let bias_v: Vec<f32> = (0..n).map(|_| rng.value()).collect();
    let bias = if byte(16) % 2 == 1 {
        Bias::PerCol(&bias_v)
    } else {
        Bias::None
    };
    let threads = 2 + byte(17) % 3;
    let av = MatRef::strided(&a, m, k, ars, acs).unwrap();
    let bv = MatRef::strided(&b, k, n, brs, bcs).unwrap();
    let params = |t| {
        Gemm::new()
            .beta(beta)
            .activation(act)
            .bias(bias)
            .threads(t)
            .unscale(0.5)
    };
    for isa in Isa::available() {
        let backend = Backend::new(isa).unwrap();
        let call = |t: Threads, packed: bool| -> Vec<C> {
            let mut c = c0.clone();
            let cv = MatMut::strided(&mut c, m, n, c_rs, 1).unwrap();
            pool().install(|| {
                if packed {
                    let pb = backend.pack_b(bv).unwrap();
                    backend.gemm_packed(av, &pb, cv, &params(t)).unwrap();
                } else {
                    backend.gemm(av, bv, cv, &params(t)).unwrap();
                }
            });
            c
        };
        let one = call(Threads::Single, false);
        let many = call(Threads::Count(threads), false);
        assert!(
            bits(&one) == bits(&many),
            "{isa}: {threads} threads != one ({m}x{n}x{k})"
        );
        if m > 16 && n > 1 {
            // Below 17 rows the unpacked call may take the small-m path,
            // whose bits match the packed path only for f32-format kernels;
            // one column runs as `x^T A^T`, dot products in another order.
            // (Past 16 rows a B this small is always packed.)
            let packed = call(Threads::Count(threads), true);
            assert!(
                bits(&one) == bits(&packed),
                "{isa}: packed != unpacked ({m}x{n}x{k})"
            );
        }
        check(isa, &one, &c0, av, bv, c_rs, beta, act, bias);
    }
}

/// `C` against the f64 reference within the crate's bound (looser where
/// the activation is GELU: its f32 tanh adds a few ulps).
#[allow(clippy::too_many_arguments)]
fn check<T: Element, C: Element>(
    isa: Isa,
    c: &[C],
    c0: &[C],
    av: MatRef<'_, T>,
    bv: MatRef<'_, T>,
    c_rs: usize,
    beta: f32,
    act: Activation,
    bias: Bias<'_>,
) {
    let (m, k, n) = (av.rows(), av.cols(), bv.cols());
    for i in 0..m {
        for j in 0..c_rs {
            let idx = i * c_rs + j;
            let got = c[idx].to_f32();
            if j >= n {
                assert_eq!(
                    got.to_bits(),
                    c0[idx].to_f32().to_bits(),
                    "{isa}: padding written"
                );
                continue;
            }
            let (mut exact, mut abs, mut flushed) = (0f64, 0f64, 0f64);
            for l in 0..k {
                let (x, y) = (av.get(i, l).unwrap(), bv.get(l, j).unwrap());
                let p = x as f64 * y as f64;
                exact += p;
                abs += p.abs();
                if x.is_subnormal() || y.is_subnormal() {
                    flushed += p.abs();
                }
            }
            let old = if beta != 0.0 {
                c0[idx].to_f32() as f64
            } else {
                0.0
            };
            let bias_t = match bias {
                Bias::PerCol(v) => v[j] as f64,
                _ => 0.0,
            };
            let z = 0.5 * exact + beta as f64 * old + bias_t;
            let mag = 0.5 * abs + (beta as f64 * old).abs() + bias_t.abs();
            if !mag.is_finite() || mag > 1e30 || !z.is_finite() {
                if z.is_nan() {
                    assert!(got.is_nan(), "{isa}: want NaN at ({i},{j}), got {got}");
                }
                continue;
            }
            let y = match act {
                Activation::Relu => z.max(0.0),
                Activation::GeluTanh => {
                    let u = (2.0 / std::f64::consts::PI).sqrt() * (z + 0.044715 * z * z * z);
                    0.5 * z * (1.0 + u.tanh())
                }
                _ => z,
            };
            let eps = 2f64.powi(-24);
            let ulp = match C::DTYPE {
                DType::F32 => 2f64.powi(-23),
                DType::Bf16 => 2f64.powi(-7),
                _ => 2f64.powi(-10),
            };
            let gelu = if act == Activation::GeluTanh {
                1.2
            } else {
                1.0
            };
            let tol = ((2.0 * k as f64 * eps * abs * 0.5 + 4.0 * eps * mag + flushed) * gelu
                + 16.0 * eps * (y.abs() + 1e-30) * f64::from(u8::from(gelu > 1.0))
                + k as f64 * 2f64.powi(-125))
                * (1.0 + ulp)
                + y.abs() * ulp / 2.0
                + 2f64.powi(-24);
            let max = match C::DTYPE {
                DType::F16 => 65504.0,
                DType::Bf16 => 3.38e38,
                _ => f32::MAX as f64,
            };
            let overflowed = y.abs() * (1.0 - ulp) > max;
            assert!(
                overflowed && got.is_infinite() || (got as f64 - y).abs() <= tol,
                "{isa}: C[{i},{j}] = {got:e}, want {y:e} +- {tol:e} (m={m} n={n} k={k})"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    match data.first().copied().unwrap_or(0) % 5 {
        0 => run::<bf16, f32>(data),
        1 => run::<bf16, bf16>(data),
        2 => run::<f16, f32>(data),
        3 => run::<f16, f16>(data),
        _ => run::<f32, f32>(data),
    }
});
