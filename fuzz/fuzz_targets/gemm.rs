//! GEMM fuzzing: tiny shapes, strides, transposes, epilogue options and
//! element bits from the input, every available ISA (and both bf16
//! kernels of avx512bf16) against an f64 reference on the same inputs,
//! within the crate's bound. Also checks that C's padding is untouched and
//! that every `Err` leaves C as it was.

#![no_main]

use halfkern::{Backend, Bias, Element, Gemm, Isa, MatMut, MatRef, bf16, f16};
use libfuzzer_sys::fuzz_target;

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        *b
    }
    fn below(&mut self, n: usize) -> usize {
        self.byte() as usize % n
    }
    /// Mostly moderate values, sometimes any bit pattern (inf, NaN,
    /// subnormal, huge).
    fn value(&mut self) -> f32 {
        let b = self.byte();
        if b < 16 {
            f32::from_bits(u32::from_le_bytes([
                self.byte(),
                self.byte(),
                self.byte(),
                self.byte(),
            ]))
        } else {
            (b as f32 - 136.0) / 16.0 * 2f32.powi(self.below(9) as i32 - 4)
        }
    }
}

/// A view's storage: `(row_stride, col_stride, len)`; strides from the input
/// (row-major, column-major, padded, or transposed storage).
fn layout(bytes: &mut Bytes, rows: usize, cols: usize) -> (usize, usize, usize) {
    let pad = bytes.below(3);
    let (rs, cs) = match bytes.below(3) {
        0 => (cols + pad, 1),
        1 => (1, rows + pad),
        _ => ((cols * 2 + pad).max(1), 2), // every other element
    };
    let len = if rows == 0 || cols == 0 {
        bytes.below(3)
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1 + bytes.below(2)
    };
    (rs, cs, len)
}

fn run<T: Element, C: Element>(bytes: &mut Bytes) {
    let (m, n, k) = (bytes.below(20), bytes.below(40), bytes.below(40));
    let (ars, acs, alen) = layout(bytes, m, k);
    let (brs, bcs, blen) = layout(bytes, k, n);
    let (crs, ccs, clen) = layout(bytes, m, n);
    let a: Vec<T> = (0..alen).map(|_| T::from_f32(bytes.value())).collect();
    let b: Vec<T> = (0..blen).map(|_| T::from_f32(bytes.value())).collect();
    let c0: Vec<C> = (0..clen).map(|_| C::from_f32(bytes.value())).collect();
    let alpha = [1.0f32, -0.5, 3.0][bytes.below(3)];
    let beta = [0.0f32, 1.0, -2.0][bytes.below(3)];
    let inv_scale = [None, Some(0.25f32), Some(0.0)][bytes.below(3)];
    let bias_v: Vec<f32> = (0..m.max(n) + 1).map(|_| bytes.value()).collect();
    let bias_kind = bytes.below(3);
    let bias_len_off = bytes.below(8) == 0; // a wrong length now and then
    let transpose_a = bytes.below(2) == 1;
    let bias = match bias_kind {
        1 => Bias::PerRow(&bias_v[..m + usize::from(bias_len_off)]),
        2 => Bias::PerCol(&bias_v[..n + usize::from(bias_len_off)]),
        _ => Bias::None,
    };
    let av = if transpose_a {
        // The same matrix, reached through the transpose of its transpose view.
        MatRef::strided(&a, k, m, acs, ars).unwrap().t()
    } else {
        MatRef::strided(&a, m, k, ars, acs).unwrap()
    };
    let bv = MatRef::strided(&b, k, n, brs, bcs).unwrap();
    let Ok(_) = MatMut::strided(&mut c0.clone(), m, n, crs, ccs) else {
        return; // an aliasing layout: rejected, nothing to run
    };
    let mut variants: Vec<(Backend, Option<bool>)> = Vec::new();
    for isa in Isa::available() {
        let be = Backend::new(isa).unwrap();
        variants.push((be, None));
        if matches!(isa, Isa::Avx512Bf16 | Isa::Amx) {
            variants.push((be, Some(true)));
        }
    }
    for (backend, dot) in variants {
        let mut g = Gemm::new()
            .alpha(alpha)
            .beta(beta)
            .bias(bias)
            .dot_kernel(dot);
        if let Some(s) = inv_scale {
            g = g.unscale(s);
        }
        let mut c = c0.clone();
        let res = backend.gemm(av, bv, MatMut::strided(&mut c, m, n, crs, ccs).unwrap(), &g);
        let Ok(report) = res else {
            assert!(inv_scale == Some(0.0) || bias_len_off, "unexpected {res:?}");
            assert!(
                c.iter()
                    .zip(&c0)
                    .all(|(x, y)| x.to_f32().to_bits() == y.to_f32().to_bits())
            );
            continue;
        };
        let mut bad = 0;
        let mut inside = vec![false; clen];
        for i in 0..m {
            for j in 0..n {
                let idx = i * crs + j * ccs;
                inside[idx] = true;
                let got = c[idx].to_f32();
                bad += usize::from(!got.is_finite());
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
                let s = alpha as f64 * inv_scale.unwrap_or(1.0) as f64;
                let old = if beta != 0.0 {
                    c0[idx].to_f32() as f64
                } else {
                    0.0
                };
                let bias_t = match bias {
                    Bias::PerRow(v) => v[i] as f64,
                    Bias::PerCol(v) => v[j] as f64,
                    _ => 0.0,
                };
                let y = exact * s + beta as f64 * old + bias_t;
                let mag = abs * s.abs() + (beta as f64 * old).abs() + bias_t.abs();
                if !mag.is_finite() || mag > 1e36 || !y.is_finite() {
                    // Overflow in f32 partial sums, or inf/NaN inputs: a
                    // non-finite result is allowed; NaN in, NaN out.
                    if y.is_nan() {
                        assert!(
                            got.is_nan(),
                            "{} dot={dot:?}: want NaN at ({i},{j}), got {got}",
                            backend.isa()
                        );
                    }
                    continue;
                }
                let eps = 2f64.powi(-24);
                let ulp = match C::DTYPE {
                    halfkern::DType::F32 => 2f64.powi(-23),
                    halfkern::DType::Bf16 => 2f64.powi(-7),
                    _ => 2f64.powi(-10),
                };
                let tol = (2.0 * k as f64 * eps * abs * s.abs()
                    + 4.0 * eps * mag
                    + flushed * s.abs()
                    + k as f64 * 2f64.powi(-125))
                    * (1.0 + ulp)
                    + y.abs() * ulp / 2.0
                    + 2f64.powi(-24);
                let overflowed = y.abs() * (1.0 - ulp)
                    > match C::DTYPE {
                        halfkern::DType::F16 => 65504.0,
                        halfkern::DType::Bf16 => 3.38e38,
                        _ => f32::MAX as f64,
                    };
                assert!(
                    overflowed && got.is_infinite() || (got as f64 - y).abs() <= tol,
                    "{} dot={dot:?}: C[{i},{j}] = {got:e}, want {y:e} +- {tol:e} (m={m} n={n} k={k})",
                    backend.isa()
                );
            }
        }
        assert_eq!(report.nonfinite, bad, "{}: report", backend.isa());
        for idx in 0..clen {
            if !inside[idx] {
                assert_eq!(
                    c[idx].to_f32().to_bits(),
                    c0[idx].to_f32().to_bits(),
                    "padding written"
                );
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut bytes = Bytes(data);
    match bytes.below(6) {
        0 => run::<bf16, f32>(&mut bytes),
        1 => run::<bf16, bf16>(&mut bytes),
        2 => run::<f16, f32>(&mut bytes),
        3 => run::<f16, f16>(&mut bytes),
        4 => run::<f32, f32>(&mut bytes),
        _ => run::<f32, bf16>(&mut bytes),
    }
});
