//! `unscale_many` over tensors of arbitrary bits split at arbitrary points
//! (empty tensors included), with an arbitrary or power-of-two
//! `inv_scale`, on every available ISA against the scalar backend. Oracle:
//!
//! - valid scale: the written values are bit-identical to the scalar
//!   backend's, which are bit-identical to `round(x * inv_scale)` element by
//!   element (`half`'s rounding); the non-finite count equals the count of
//!   non-finite written values; `sum_sq` is within 1e-6 relative of the f64
//!   sum of the squares of the finite written values (the documented
//!   bound), on every ISA;
//! - invalid scale (0, negative, NaN, inf): `Err` on every ISA, and no
//!   tensor is touched.

#![no_main]

use halfkern::{Backend, Element, Isa, bf16, f16};
use libfuzzer_sys::fuzz_target;

#[path = "common/bytes.rs"]
mod bytes;
use bytes::Bytes;

/// An element type's bits as u32, and the oracle's rounding.
trait Elem: Element + PartialEq + std::fmt::Debug {
    fn bits(self) -> u32;
    fn from_u32(b: u32) -> Self;
    fn unscaled(self, inv: f32) -> Self;
}

impl Elem for f32 {
    fn bits(self) -> u32 {
        self.to_bits()
    }
    fn from_u32(b: u32) -> f32 {
        f32::from_bits(b)
    }
    fn unscaled(self, inv: f32) -> f32 {
        self * inv
    }
}

impl Elem for bf16 {
    fn bits(self) -> u32 {
        self.to_bits() as u32
    }
    fn from_u32(b: u32) -> bf16 {
        bf16::from_bits(b as u16)
    }
    fn unscaled(self, inv: f32) -> bf16 {
        bf16::from_f32(self.to_f32() * inv)
    }
}

impl Elem for f16 {
    fn bits(self) -> u32 {
        self.to_bits() as u32
    }
    fn from_u32(b: u32) -> f16 {
        f16::from_bits(b as u16)
    }
    fn unscaled(self, inv: f32) -> f16 {
        f16::from_f32(self.to_f32() * inv)
    }
}

fn bits_of<T: Elem>(tensors: &[Vec<T>]) -> Vec<u32> {
    tensors.iter().flatten().map(|&x| x.bits()).collect()
}

/// Runs `unscale_many` on `backend` over copies of `tensors`.
fn run<T: Elem>(
    backend: Backend,
    tensors: &[Vec<T>],
    inv: f32,
) -> (
    Vec<Vec<T>>,
    Result<halfkern::finite::GradStats, halfkern::Error>,
) {
    let mut out = tensors.to_vec();
    let mut views: Vec<&mut [T]> = out.iter_mut().map(|t| &mut t[..]).collect();
    let stats = backend.unscale_many(&mut views, inv);
    (out, stats)
}

fn check<T: Elem>(b: &mut Bytes<'_>, inv: f32) {
    // Elements: a byte picks each value's kind, so specials are common.
    let n = b.u8() as usize * 2 + b.u8() as usize % 2;
    let flat: Vec<T> = (0..n)
        .map(|_| match b.u8() % 4 {
            0 => T::from_u32(b.u32()),
            1 => T::from_f32(
                [f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 0.0, -0.0][b.u8() as usize % 5],
            ),
            _ => T::from_f32((b.u8() as f32 - 128.0) * 2f32.powi(b.u8() as i32 % 64 - 32)),
        })
        .collect();
    // Split points: any, repeated ones make empty tensors.
    let mut cuts: Vec<usize> = (0..b.u8() % 8).map(|_| b.u8() as usize * n / 256).collect();
    cuts.sort_unstable();
    let mut tensors: Vec<Vec<T>> = Vec::new();
    let mut start = 0;
    for c in cuts.into_iter().chain([n]) {
        tensors.push(flat[start..c].to_vec());
        start = c;
    }

    let (want, want_stats) = run(Backend::scalar(), &tensors, inv);
    let valid = inv.is_finite() && inv > 0.0;
    if !valid {
        assert!(want_stats.is_err());
        assert!(
            bits_of(&want) == bits_of(&tensors),
            "scalar wrote with a bad scale"
        );
    } else {
        let want_stats = want_stats.as_ref().unwrap();
        let oracle: Vec<u32> = flat.iter().map(|&x| x.unscaled(inv).bits()).collect();
        assert!(
            bits_of(&want) == oracle,
            "scalar differs from round(x * inv)"
        );
        let written: Vec<f32> = want.iter().flatten().map(|x| x.to_f32()).collect();
        let bad = written.iter().filter(|x| !x.is_finite()).count();
        let sum: f64 = written
            .iter()
            .filter(|x| x.is_finite())
            .map(|&x| x as f64 * x as f64)
            .sum();
        assert_eq!(want_stats.nonfinite, bad);
        assert!(
            (want_stats.sum_sq - sum).abs() <= 1e-6 * sum,
            "scalar sum_sq {} vs {sum}",
            want_stats.sum_sq
        );
    }
    for isa in Isa::available().into_iter().skip(1) {
        let (got, stats) = run(Backend::new(isa).unwrap(), &tensors, inv);
        assert!(
            bits_of(&got) == bits_of(&want),
            "{isa}: written bits differ from scalar"
        );
        match (stats, &want_stats) {
            (Err(_), Err(_)) => {}
            (Ok(s), Ok(w)) => {
                assert_eq!(s.nonfinite, w.nonfinite, "{isa}");
                let written: f64 = got
                    .iter()
                    .flatten()
                    .map(|x| x.to_f32())
                    .filter(|x| x.is_finite())
                    .map(|x| x as f64 * x as f64)
                    .sum();
                assert!(
                    (s.sum_sq - written).abs() <= 1e-6 * written,
                    "{isa}: sum_sq {} vs {written}",
                    s.sum_sq
                );
            }
            (s, w) => panic!("{isa}: {s:?} vs scalar {w:?}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let inv = match b.u8() % 4 {
        // A dynamic loss scale's inverse: the bf16 fast path.
        0 | 1 => 2f32.powi(-(b.u8() as i32 % 127)),
        2 => f32::from_bits(b.u32()),
        _ => [0.0, -0.0, -1.0, f32::NAN, f32::INFINITY, 3.0, 1.0 / 3.0][b.u8() as usize % 7],
    };
    match b.u8() % 3 {
        0 => check::<f32>(&mut b, inv),
        1 => check::<bf16>(&mut b, inv),
        _ => check::<f16>(&mut b, inv),
    }
});
