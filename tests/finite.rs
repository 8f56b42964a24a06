//! Gradient checks on every ISA the machine has, against the element-wise
//! oracle (`round(x.to_f32() * inv_scale)`, tested and squared in f64):
//! written bits and counts identical on every ISA, sum of squares within
//! 1e-6 relative, NaN/inf at every position of short lengths, misaligned
//! starts, NaN payloads, subnormals, overflow by unscaling, bad scales.

mod common;

use common::{Rng, backends, poison, stride};
use halfkern::finite::{self, GradStats};
use halfkern::{Backend, Element, Error, bf16, f16};
use proptest::prelude::*;

/// Bit access for the three element types.
trait Bits: Element + std::fmt::Debug {
    fn bits(self) -> u32;
    fn from_bits32(b: u32) -> Self;
    /// Bit patterns of NaNs of this type: quiet, signalling, both signs,
    /// several payloads.
    fn nans() -> Vec<u32>;
    /// Largest finite and smallest subnormal bit patterns.
    const MAX: u32;
    const MIN_SUB: u32;
    const INF: u32;
}

impl Bits for f32 {
    fn bits(self) -> u32 {
        self.to_bits()
    }
    fn from_bits32(b: u32) -> f32 {
        f32::from_bits(b)
    }
    fn nans() -> Vec<u32> {
        vec![
            0x7FC0_0000,
            0xFFC0_0000,
            0x7F80_0001,
            0xFF80_0001,
            0x7FBF_FFFF,
            0x7FFF_FFFF,
            0x7F81_2345,
            0xFFA5_A5A5,
        ]
    }
    const MAX: u32 = 0x7F7F_FFFF;
    const MIN_SUB: u32 = 1;
    const INF: u32 = 0x7F80_0000;
}

impl Bits for bf16 {
    fn bits(self) -> u32 {
        self.to_bits() as u32
    }
    fn from_bits32(b: u32) -> bf16 {
        bf16::from_bits(b as u16)
    }
    fn nans() -> Vec<u32> {
        vec![
            0x7FC0, 0xFFC0, 0x7F81, 0xFF81, 0x7FBF, 0x7FFF, 0x7FA5, 0xFF92,
        ]
    }
    const MAX: u32 = 0x7F7F;
    const MIN_SUB: u32 = 1;
    const INF: u32 = 0x7F80;
}

impl Bits for f16 {
    fn bits(self) -> u32 {
        self.to_bits() as u32
    }
    fn from_bits32(b: u32) -> f16 {
        f16::from_bits(b as u16)
    }
    fn nans() -> Vec<u32> {
        vec![
            0x7E00, 0xFE00, 0x7C01, 0xFC01, 0x7DFF, 0x7FFF, 0x7D55, 0xFEAA,
        ]
    }
    const MAX: u32 = 0x7BFF;
    const MIN_SUB: u32 = 1;
    const INF: u32 = 0x7C00;
}

/// What every ISA must produce: the written values and their stats, with
/// the sum of squares in f64 (exact enough to be the reference).
fn oracle<S: Element, D: Element>(src: &[S], inv: f32) -> (Vec<D>, GradStats) {
    let mut out = Vec::with_capacity(src.len());
    let (mut nonfinite, mut sum_sq) = (0, 0.0f64);
    for &x in src {
        let y = D::from_f32(x.to_f32() * inv);
        let v = y.to_f32();
        if v.is_finite() {
            sum_sq += f64::from(v) * f64::from(v);
        } else {
            nonfinite += 1;
        }
        out.push(y);
    }
    (out, GradStats::new(nonfinite, sum_sq))
}

#[track_caller]
fn assert_same<T: Bits>(what: &str, got: &[T], want: &[T]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            g.bits(),
            w.bits(),
            "{what}: element {i}: got {g:?} want {w:?}"
        );
    }
}

#[track_caller]
fn assert_stats(what: &str, got: GradStats, want: GradStats) {
    assert_eq!(got.nonfinite, want.nonfinite, "{what}: nonfinite");
    let tol = 1e-6 * want.sum_sq;
    assert!(
        (got.sum_sq - want.sum_sq).abs() <= tol,
        "{what}: sum_sq {} want {} (rel {:e})",
        got.sum_sq,
        want.sum_sq,
        (got.sum_sq - want.sum_sq).abs() / want.sum_sq
    );
}

/// Runs every entry point of `backend` on `src` and checks it against the
/// oracle: in place, widening into poisoned f32, and the counts.
#[track_caller]
fn check_all<T: Bits>(backend: &Backend, src: &[T], inv: f32, what: &str) {
    let isa = backend.isa();
    let (want, want_stats) = oracle::<T, T>(src, inv);
    let mut got = src.to_vec();
    let stats = backend.unscale(&mut got, inv).unwrap();
    assert_same(&format!("{isa} {what} unscale"), &got, &want);
    assert_stats(&format!("{isa} {what} unscale"), stats, want_stats);

    let (want32, want32_stats) = oracle::<T, f32>(src, inv);
    let mut dst = vec![0f32; src.len() + 2];
    poison(&mut dst, f32::from_bits(0x7FA5_5A5A));
    let stats = backend
        .unscale_into(src, &mut dst[1..src.len() + 1], inv)
        .unwrap();
    assert_same(
        &format!("{isa} {what} unscale_into"),
        &dst[1..src.len() + 1],
        &want32,
    );
    assert_eq!(dst[0].to_bits(), 0x7FA5_5A5A, "{isa} {what}: wrote before");
    assert_eq!(
        dst[src.len() + 1].to_bits(),
        0x7FA5_5A5A,
        "{isa} {what}: wrote after"
    );
    assert_stats(&format!("{isa} {what} unscale_into"), stats, want32_stats);

    let count = src.iter().filter(|x| !x.to_f32().is_finite()).count();
    assert_eq!(backend.count_nonfinite(src), count, "{isa} {what} count");
    assert_eq!(
        backend.all_finite(src),
        count == 0,
        "{isa} {what} all_finite"
    );
}

/// Finite values of varied magnitude that stay finite when unscaled by
/// numbers near 1 (so an injected special value is the only non-finite).
fn finite_values<T: Bits>(rng: &mut Rng, n: usize) -> Vec<T> {
    (0..n)
        .map(|_| {
            let exp = rng.below(20) as i32 - 10;
            T::from_f32(rng.unit() * 2f32.powi(exp))
        })
        .collect()
}

fn positions_for<T: Bits>(test: &str) {
    let mut rng = Rng::fresh(test);
    let mut specials = T::nans();
    specials.push(T::INF);
    // -inf: the sign bit is the top bit of the type.
    let sign = if T::INF > 0xFFFF { 0x8000_0000 } else { 0x8000 };
    specials.push(T::INF | sign);
    for backend in backends() {
        for len in 0..=33 {
            for offset in 0..3 {
                let buf = finite_values::<T>(&mut rng, len + offset);
                let clean = &buf[offset..];
                check_all(
                    &backend,
                    clean,
                    0.75,
                    &format!("clean len {len} off {offset}"),
                );
                for pos in 0..len {
                    let special = specials[rng.below(specials.len())];
                    let mut data = buf.clone();
                    data[offset + pos] = T::from_bits32(special);
                    let inv = [1.0, 0.5, 1.0 / 65536.0, 3.0][rng.below(4)];
                    check_all(
                        &backend,
                        &data[offset..],
                        inv,
                        &format!("len {len} off {offset} {special:#x} at {pos}"),
                    );
                }
            }
        }
    }
}

#[test]
fn nan_and_inf_at_every_position_f32() {
    positions_for::<f32>("nan_and_inf_at_every_position_f32");
}

#[test]
fn nan_and_inf_at_every_position_bf16() {
    positions_for::<bf16>("nan_and_inf_at_every_position_bf16");
}

#[test]
fn nan_and_inf_at_every_position_f16() {
    positions_for::<f16>("nan_and_inf_at_every_position_f16");
}

/// Every bit pattern class in bulk: NaN payloads (signalling too), infs,
/// subnormals, the largest values, ties, random bits; many scales.
fn any_bits_for<T: Bits>(test: &str) {
    let mut rng = Rng::fresh(test);
    let nans = T::nans();
    let top = T::INF.max(0xFFFF) as u64 * 2 + 1;
    for backend in backends() {
        for round in 0..40 {
            let n = rng.below(700);
            let src: Vec<T> = (0..n)
                .map(|_| match rng.below(6) {
                    0 => T::from_bits32(nans[rng.below(nans.len())]),
                    1 => T::from_bits32((rng.next_u64() % top) as u32),
                    2 => T::from_bits32(T::MIN_SUB + rng.below(64) as u32),
                    3 => T::from_bits32(T::MAX - rng.below(4) as u32),
                    _ => T::from_f32(rng.unit() * 8.0),
                })
                .collect();
            let inv = match round % 5 {
                0 => 1.0,
                1 => 1.0 / 65536.0,
                2 => 65536.0,
                3 => f32::from_bits(1 + rng.below(1 << 23) as u32), // subnormal
                _ => f32::from_bits(0x3000_0000 + rng.below(0x1800_0000) as u32),
            };
            check_all(&backend, &src, inv, &format!("round {round} inv {inv:e}"));
        }
    }
}

/// bf16 unscaled in place by powers of two (every dynamic loss scale):
/// mostly normal values across the whole exponent range, so whole vectors
/// take exponent-arithmetic fast paths where an ISA has one, with a rare
/// special (NaN payload, inf, subnormal, zero) and results that underflow
/// for the larger exponents; lengths around the 512-value blocks, at an odd
/// start.
#[test]
fn bf16_by_powers_of_two_matches_the_oracle() {
    let mut rng = Rng::fresh("bf16_by_powers_of_two_matches_the_oracle");
    let nans = <bf16 as Bits>::nans();
    for backend in backends() {
        for d in [0i32, 1, 7, 16, 24, 60, 100, 125, 126] {
            let inv = f32::from_bits(((127 - d) as u32) << 23);
            for n in [0usize, 31, 32, 511, 512, 513, 1024 + 96, 2047] {
                let src: Vec<bf16> = (0..n + 1)
                    .map(|_| {
                        let sign = (rng.below(2) as u16) << 15;
                        let bits = match rng.below(400) {
                            0 => nans[rng.below(nans.len())] as u16,
                            1 => 0x7F80,
                            2 => 1 + rng.below(127) as u16, // subnormal
                            3 => 0,
                            _ => ((1 + rng.below(254)) << 7 | rng.below(128)) as u16,
                        };
                        bf16::from_bits(sign | bits)
                    })
                    .collect();
                check_all(&backend, &src[1..], inv, &format!("2^-{d} n={n}"));
            }
        }
    }
}

#[test]
fn any_bits_every_isa_matches_the_oracle_f32() {
    any_bits_for::<f32>("any_bits_every_isa_matches_the_oracle_f32");
}

#[test]
fn any_bits_every_isa_matches_the_oracle_bf16() {
    any_bits_for::<bf16>("any_bits_every_isa_matches_the_oracle_bf16");
}

#[test]
fn any_bits_every_isa_matches_the_oracle_f16() {
    any_bits_for::<f16>("any_bits_every_isa_matches_the_oracle_f16");
}

/// A total dominated by one value, with every other square just under
/// half an f32 ulp of it: an f32 lane that adds them one by one after the
/// big one drops each, 1.8e-6 relative over 32 terms (found by the `finite`
/// fuzz target on AVX2, in the re-summation of a tiny total). Tiny totals
/// and ordinary ones (the main passes, bf16 by a power of two included);
/// fresh random signs and positions; every ISA, in place and into f32.
#[test]
fn small_squares_beside_a_large_one_keep_the_bound() {
    let mut rng = Rng::fresh("small_squares_beside_a_large_one_keep_the_bound");
    for backend in backends() {
        // 2^-40: a tiny total, summed again scaled; 1: the main pass.
        for (n, big) in [64usize, 256, 1000, 512, 1536]
            .into_iter()
            .flat_map(|n| [(n, 2f32.powi(-40)), (n, 1.0)])
        {
            // s^2 = 0.99 * 2^-24 * big^2: just under half an ulp of big^2.
            let small = 0.99f32.sqrt() * 2f32.powi(-12) * big;
            let mut v: Vec<f32> = (0..n)
                .map(|_| if rng.below(2) == 0 { small } else { -small })
                .collect();
            v[rng.below(n.min(8))] = big;
            check_all(&backend, &v, 1.0, &format!("f32 n={n} big={big:e}"));
            let b: Vec<bf16> = v.iter().map(|&x| bf16::from_f32(x)).collect();
            check_all(&backend, &b, 1.0, &format!("bf16 n={n} big={big:e}"));
        }
    }
}

/// Only subnormals (and zeros): the sum of squares is ~1e-80 and must still
/// be within 1e-6 relative; all-zero slices sum to exactly 0.
#[test]
fn subnormal_and_zero_gradients_keep_their_sum_of_squares() {
    let mut rng = Rng::fresh("subnormal_and_zero_gradients_keep_their_sum_of_squares");
    for backend in backends() {
        for n in [1, 17, 1000, 5000] {
            let sub: Vec<f32> = (0..n)
                .map(|_| f32::from_bits(rng.next_u32() & 0x807F_FFFF))
                .collect();
            check_all(&backend, &sub, 1.0, &format!("f32 subnormals n={n}"));
            check_all(&backend, &sub, 0.5, &format!("f32 subnormals n={n}"));
            let sub: Vec<bf16> = (0..n)
                .map(|_| bf16::from_bits(rng.next_u32() as u16 & 0x807F))
                .collect();
            check_all(&backend, &sub, 1.0, &format!("bf16 subnormals n={n}"));
            let sub: Vec<f16> = (0..n)
                .map(|_| f16::from_bits(rng.next_u32() as u16 & 0x83FF))
                .collect();
            check_all(&backend, &sub, 1.0, &format!("f16 subnormals n={n}"));
            let mut zeros = vec![0f32; n];
            let s = backend.unscale(&mut zeros, 0.5).unwrap();
            assert_eq!(s, GradStats::ZERO);
        }
    }
}

/// Finite gradients that overflow only once unscaled count as non-finite,
/// in every position and in every type.
#[test]
fn finite_values_that_overflow_when_unscaled_count() {
    for backend in backends() {
        for len in 1..=33 {
            for pos in 0..len {
                let mut g = vec![1.0f32; len];
                g[pos] = 1e34;
                let s = backend.unscale(&mut g, 65536.0).unwrap();
                assert_eq!(s.nonfinite, 1, "{} f32 len {len} pos {pos}", backend.isa());
                assert!(g[pos].is_infinite());
                assert_eq!(s.sum_sq, (len - 1) as f64 * 65536.0f64.powi(2));

                let mut g = vec![bf16::ONE; len];
                g[pos] = bf16::from_f32(1e34);
                let s = backend.unscale(&mut g, 65536.0).unwrap();
                assert_eq!(s.nonfinite, 1, "{} bf16 len {len} pos {pos}", backend.isa());

                // f16: 40000 * 2 is finite in f32 but rounds to inf in f16
                // (counts in place), and stays finite widened to f32.
                let src = {
                    let mut v = vec![f16::ONE; len];
                    v[pos] = f16::from_f32(40000.0);
                    v
                };
                let mut g = src.clone();
                let s = backend.unscale(&mut g, 2.0).unwrap();
                assert_eq!(s.nonfinite, 1, "{} f16 len {len} pos {pos}", backend.isa());
                assert!(g[pos].is_infinite());
                let mut dst = vec![0f32; len];
                let s = backend.unscale_into(&src, &mut dst, 2.0).unwrap();
                assert_eq!(s.nonfinite, 0);
                assert_eq!(dst[pos], 80000.0);
            }
        }
    }
}

/// Fresh random data, lengths up to 16M: sum of squares within 1e-6 of an
/// f64 reference, counts and written bits identical to the oracle.
#[test]
fn sum_of_squares_is_within_1e6_of_f64_on_large_slices() {
    let mut rng = Rng::fresh("sum_of_squares_is_within_1e6_of_f64_on_large_slices");
    // 16M elements natively; 1M under emulation (HALFKERN_TEST_STRIDE > 1).
    let big = if stride() > 1 { 1 << 20 } else { 1 << 24 };
    for n in [1 << 16, 1_000_003, big] {
        let src: Vec<f32> = (0..n)
            .map(|_| rng.unit() * 2f32.powi(rng.below(30) as i32 - 15))
            .collect();
        let half: Vec<bf16> = src.iter().map(|&x| bf16::from_f32(x)).collect();
        let inv = 1.0 / 1024.0;
        let (want, want_stats) = oracle::<f32, f32>(&src, inv);
        let (want_b, want_b_stats) = oracle::<bf16, bf16>(&half, inv);
        let (want_w, want_w_stats) = oracle::<bf16, f32>(&half, inv);
        for backend in backends() {
            let isa = backend.isa();
            let mut got = src.clone();
            let s = backend.unscale(&mut got, inv).unwrap();
            assert_stats(&format!("{isa} f32 n={n}"), s, want_stats);
            assert!(got == want, "{isa} f32 n={n}: written values differ");
            let mut got = half.clone();
            let s = backend.unscale(&mut got, inv).unwrap();
            assert_stats(&format!("{isa} bf16 n={n}"), s, want_b_stats);
            assert_same(&format!("{isa} bf16 n={n}"), &got, &want_b);
            let mut dst = vec![f32::NAN; n];
            let s = backend.unscale_into(&half, &mut dst, inv).unwrap();
            assert_stats(&format!("{isa} bf16->f32 n={n}"), s, want_w_stats);
            assert!(
                dst == want_w,
                "{isa} bf16->f32 n={n}: written values differ"
            );
        }
    }
}

/// An invalid scale is an error on every entry point, and nothing is
/// written; a length mismatch likewise.
#[test]
fn invalid_scales_and_lengths_are_rejected_with_data_untouched() {
    let bad = [
        0.0f32,
        -0.0,
        -1.0,
        -f32::MIN_POSITIVE,
        f32::NAN,
        -f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
    ];
    let src: Vec<f32> = (0..100).map(|i| i as f32 - 50.0).collect();
    let half: Vec<bf16> = src.iter().map(|&x| bf16::from_f32(x)).collect();
    for backend in backends() {
        for &inv in &bad {
            let mut g = src.clone();
            let e = backend.unscale(&mut g, inv).unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::InvalidScale {
                        arg: "inv_scale",
                        ..
                    }
                ),
                "{e}"
            );
            assert!(e.to_string().contains("inv_scale"));
            assert_eq!(g, src);
            let mut dst = vec![7.0f32; 100];
            let e = backend.unscale_into(&half, &mut dst, inv).unwrap_err();
            assert!(matches!(e, Error::InvalidScale { .. }));
            assert!(dst.iter().all(|&x| x == 7.0));
            let (mut a, mut b) = (half.clone(), half.clone());
            let e = backend
                .unscale_many(&mut [&mut a[..], &mut b[..]], inv)
                .unwrap_err();
            assert!(matches!(e, Error::InvalidScale { .. }));
            assert!(a == half && b == half);
        }
        let mut dst = vec![7.0f32; 99];
        let e = backend.unscale_into(&half, &mut dst, 0.5).unwrap_err();
        assert_eq!(
            e,
            Error::LengthMismatch {
                op: "unscale_into",
                src: 100,
                dst: 99
            }
        );
        assert!(dst.iter().all(|&x| x == 7.0));
    }
    // The top-level functions validate too.
    let mut g = src.clone();
    assert!(finite::unscale(&mut g, 0.0).is_err());
    assert_eq!(g, src);
    // The smallest positive scale is valid.
    assert!(finite::unscale(&mut g, f32::from_bits(1)).is_ok());
}

/// `unscale_many` equals one `unscale` per tensor, also when large enough
/// to be spread over threads.
#[test]
fn unscale_many_equals_per_tensor_calls() {
    let mut rng = Rng::fresh("unscale_many_equals_per_tensor_calls");
    let sizes = [0usize, 1, 31, 1000, 70_000, 1 << 20, 3, (1 << 20) + 17];
    let tensors: Vec<Vec<bf16>> = sizes
        .iter()
        .map(|&n| {
            (0..n)
                .map(|_| match rng.below(100_000) {
                    0 => bf16::NAN,
                    1 => bf16::INFINITY,
                    _ => bf16::from_f32(rng.unit() * 100.0),
                })
                .collect()
        })
        .collect();
    let inv = 1.0 / 64.0;
    for backend in backends() {
        let mut one_by_one = tensors.clone();
        let mut want = GradStats::ZERO;
        for t in &mut one_by_one {
            want = want.merge(backend.unscale(t, inv).unwrap());
        }
        let mut many = tensors.clone();
        let mut refs: Vec<&mut [bf16]> = many.iter_mut().map(|t| &mut t[..]).collect();
        let got = backend.unscale_many(&mut refs, inv).unwrap();
        assert_stats(&format!("{} unscale_many", backend.isa()), got, want);
        assert!(want.nonfinite > 0, "the data holds some inf/NaN");
        for (a, b) in many.iter().zip(&one_by_one) {
            assert_same("unscale_many", a, b);
        }
        // And the whole matches the oracle.
        let flat: Vec<bf16> = tensors.iter().flatten().copied().collect();
        let (_, want_stats) = oracle::<bf16, bf16>(&flat, inv);
        assert_stats("unscale_many vs oracle", got, want_stats);
    }
    let mut empty: [&mut [f32]; 0] = [];
    assert_eq!(
        finite::unscale_many(&mut empty, 1.0).unwrap(),
        GradStats::ZERO
    );
}

/// The statistics' bits, `sum_sq` included, and the written values are
/// the same on any number of threads and on every call: a gradient norm
/// that decides a clip must not depend on the pool or on its timing.
#[test]
fn statistics_do_not_depend_on_the_thread_count() {
    let mut rng = Rng::fresh("statistics_do_not_depend_on_the_thread_count");
    // Squares over many binades, so that another order of additions gives
    // other bits; one large tensor and a mix around the split sizes.
    let mut value = || bf16::from_f32(rng.unit() * 2f32.powi(rng.below(40) as i32 - 20));
    let sizes = [
        (1usize << 21) + 4099,
        5,
        1 << 18,
        (1 << 18) + 1,
        300_001,
        0,
        77,
    ];
    let tensors: Vec<Vec<bf16>> = sizes
        .iter()
        .map(|&n| (0..n).map(|_| value()).collect())
        .collect();
    let inv = 1.0 / 8.0;
    for backend in backends() {
        let isa = backend.isa();
        let run = || {
            let mut many = tensors.clone();
            let mut refs: Vec<&mut [bf16]> = many.iter_mut().map(|t| &mut t[..]).collect();
            let stats_many = backend.unscale_many(&mut refs, inv).unwrap();
            let mut one = tensors[0].clone();
            let stats_one = backend.unscale(&mut one, inv).unwrap();
            let mut wide = vec![f32::NAN; tensors[0].len()];
            let stats_into = backend.unscale_into(&tensors[0], &mut wide, inv).unwrap();
            let bits = |s: GradStats| (s.nonfinite, s.sum_sq.to_bits());
            let stats = [bits(stats_many), bits(stats_one), bits(stats_into)];
            (stats, many, wide)
        };
        let want = run();
        for threads in [1, 2, 3, 5] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for call in 0..2 {
                let got = pool.install(run);
                assert_eq!(got.0, want.0, "{isa} {threads} threads call {call}: stats");
                assert!(got.1 == want.1, "{isa} {threads} threads: written values");
                assert!(got.2 == want.2, "{isa} {threads} threads: widened values");
            }
        }
    }
}

/// The top-level functions agree with the backends.
#[test]
fn top_level_functions_match_the_backends() {
    let mut g = vec![f16::from_f32(2.0); 40];
    g[17] = f16::NAN;
    assert!(!finite::all_finite(&g).unwrap());
    assert_eq!(finite::count_nonfinite(&g).unwrap(), 1);
    let s = finite::unscale(&mut g, 0.5).unwrap();
    assert_eq!(s.nonfinite, 1);
    assert_eq!(s.sum_sq, 39.0);
    let mut dst = vec![0f32; 40];
    let s = finite::unscale_into(&g, &mut dst, 2.0).unwrap();
    assert_eq!((s.nonfinite, s.sum_sq), (1, 39.0 * 4.0));
}

fn element_strategy() -> impl Strategy<Value = (Vec<u32>, u32, u8)> {
    (
        proptest::collection::vec(any::<u32>(), 0..200),
        any::<u32>(),
        0u8..3,
    )
}

proptest! {
    /// Arbitrary bits and any valid scale: every ISA equals the oracle.
    #[test]
    fn prop_every_isa_matches_the_oracle((bits, scale_bits, ty) in element_strategy()) {
        let inv = f32::from_bits(scale_bits & 0x7FFF_FFFF);
        prop_assume!(inv > 0.0 && inv.is_finite());
        for backend in backends() {
            match ty {
                0 => {
                    let v: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
                    check_all(&backend, &v, inv, "prop f32");
                }
                1 => {
                    let v: Vec<bf16> = bits.iter().map(|&b| bf16::from_bits(b as u16)).collect();
                    check_all(&backend, &v, inv, "prop bf16");
                }
                _ => {
                    let v: Vec<f16> = bits.iter().map(|&b| f16::from_bits(b as u16)).collect();
                    check_all(&backend, &v, inv, "prop f16");
                }
            }
        }
    }

    /// Merging is the stats of the concatenation.
    #[test]
    fn prop_split_and_merge_equal_the_whole(v in proptest::collection::vec(-1e3f32..1e3, 0..300), cut in 0usize..300) {
        let cut = cut.min(v.len());
        for backend in backends() {
            let (mut a, mut b) = (v[..cut].to_vec(), v[cut..].to_vec());
            let parts = backend.unscale(&mut a, 0.25).unwrap().merge(backend.unscale(&mut b, 0.25).unwrap());
            let mut whole = v.clone();
            let all = backend.unscale(&mut whole, 0.25).unwrap();
            prop_assert_eq!(parts.nonfinite, all.nonfinite);
            prop_assert!((parts.sum_sq - all.sum_sq).abs() <= 1e-6 * all.sum_sq);
        }
    }
}

// ---------------------------------------------------------------------------
// Statistics from outside (an all-reduce) and the process-wide ISA error
// ---------------------------------------------------------------------------

/// `GradStats::from_array` accepts exactly what a sum all-reduce of real
/// stats gives: a count that is a finite, non-negative integer fitting a
/// usize, and a finite sum `>= 0`. A fractional, negative, NaN or infinite
/// count (an engine that averaged, a rank that sent garbage) and a
/// negative or non-finite sum are errors naming the field, never "no
/// inf/NaN". Fresh random values around fixed edge cases.
#[test]
fn grad_stats_from_array_rejects_what_no_sum_of_counts_gives() {
    let mut rng = Rng::fresh("grad_stats_from_array_rejects_what_no_sum_of_counts_gives");
    let two_64 = 2f64.powi(64);
    for _ in 0..200 {
        // Valid: any integer count, any finite sum >= 0; round trip exact.
        let count = [
            0.0,
            -0.0,
            rng.below(1000) as f64,
            (rng.next_u64() >> 11) as f64,
            two_64 - 2048.0,
        ][rng.below(5)];
        let sum = [
            0.0,
            (rng.unit() as f64).abs() * 1e30,
            rng.unit().abs() as f64,
        ][rng.below(3)];
        let s = GradStats::from_array([count, sum]).unwrap();
        assert_eq!(s.nonfinite as f64, count);
        assert_eq!(s.sum_sq.to_bits(), sum.to_bits());
        assert_eq!(s.validate(), Ok(()));
        assert_eq!(GradStats::from_array(s.to_array()), Ok(s));

        // Invalid counts: each with a valid sum.
        let frac = rng.below(1 << 20) as f64 + 0.5 + 0.49 * rng.unit() as f64;
        let neg = -(rng.below(1000) as f64 + 1.0);
        for bad in [
            0.5,
            -1.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            two_64,
            frac,
            neg,
            -frac,
        ] {
            let e = GradStats::from_array([bad, sum]).unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::InvalidArgument {
                        arg: "nonfinite",
                        ..
                    }
                ),
                "{bad}: {e:?}"
            );
            assert!(e.to_string().contains(&format!("{bad:e}")), "{e}");
        }

        // Invalid sums, with a zero and a non-zero count alike.
        let neg_sum = -((rng.unit() as f64).abs() + 1e-300);
        for bad in [neg_sum, -1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            for count in [0usize, 1 + rng.below(100)] {
                let e = GradStats::from_array([count as f64, bad]).unwrap_err();
                assert!(
                    matches!(e, Error::InvalidArgument { arg: "sum_sq", .. }),
                    "{bad}: {e:?}"
                );
                assert!(e.to_string().contains(&format!("{bad:e}")), "{e}");
                // The same rule for stats built by hand.
                let e2 = GradStats::new(count, bad).validate().unwrap_err();
                assert_eq!(e, e2);
            }
        }
    }
}

/// `finite::all_finite` and `finite::count_nonfinite` return the
/// process-wide ISA error as every other top-level call does (no silent
/// scalar fallback); the `Backend` methods stay infallible. Checked in
/// child processes, since the choice is made once per process.
#[test]
fn all_finite_and_count_nonfinite_carry_the_isa_error() {
    let g = [bf16::ONE, bf16::NAN, bf16::INFINITY];
    match std::env::var("HALFKERN_CHILD").as_deref() {
        Ok("unknown") => {
            let want = Error::UnknownIsa {
                name: "avx9000".into(),
            };
            assert_eq!(finite::all_finite(&g), Err(want.clone()));
            assert_eq!(finite::count_nonfinite(&g), Err(want.clone()));
            assert_eq!(finite::all_finite::<f32>(&[]), Err(want.clone()));
            let mut h = g;
            assert_eq!(finite::unscale(&mut h, 1.0), Err(want));
            assert_eq!(Backend::scalar().count_nonfinite(&g), 2);
            assert!(!Backend::scalar().all_finite(&g));
        }
        _ => {
            assert!(!finite::all_finite(&g).unwrap());
            assert_eq!(finite::count_nonfinite(&g).unwrap(), 2);
            let out = common::self_command()
                .args([
                    "--exact",
                    "all_finite_and_count_nonfinite_carry_the_isa_error",
                    "--nocapture",
                ])
                .env("HALFKERN_ISA", "avx9000")
                .env("HALFKERN_CHILD", "unknown")
                .output()
                .unwrap();
            let log = String::from_utf8_lossy(&out.stdout);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && log.contains("1 passed"),
                "{:?}\n{log}\n{err}",
                out.status
            );
        }
    }
}
