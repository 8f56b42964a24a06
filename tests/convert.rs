//! Conversions on every ISA the machine has, against `half` and the scalar
//! oracle: all 2^32 f32 inputs, all 2^16 half inputs, every length up to
//! 65 at every byte offset with poisoned outputs, and the stochastic
//! contract.

mod common;

use common::{Rng, backends, poison, simd_backends, special_f32, stride};
use half::slice::HalfFloatSliceExt;
use halfkern::{Backend, Error, Isa, bf16, f16};
use rayon::prelude::*;

const BLOCK: usize = 1 << 16;

/// All 2^32 f32 bit patterns (every `stride()`-th under emulation), in
/// blocks: each backend's f32 -> bf16 and f32 -> f16 must equal `half`'s.
#[test]
fn f32_to_half_is_bit_identical_to_half_for_every_input() {
    let stride = stride() as u64;
    let total = (1u64 << 32).div_ceil(stride);
    let blocks = total.div_ceil(BLOCK as u64);
    let backends = backends();
    (0..blocks).into_par_iter().for_each_init(
        || {
            (
                vec![0f32; BLOCK],
                vec![bf16::ZERO; BLOCK],
                vec![f16::ZERO; BLOCK],
                vec![bf16::ZERO; BLOCK],
                vec![f16::ZERO; BLOCK],
            )
        },
        |(src, want_b, want_h, got_b, got_h), block| {
            let first = block * BLOCK as u64;
            let n = (total - first).min(BLOCK as u64) as usize;
            for (i, x) in src[..n].iter_mut().enumerate() {
                *x = f32::from_bits(((first + i as u64) * stride) as u32);
            }
            let (src, want_b, want_h) = (&src[..n], &mut want_b[..n], &mut want_h[..n]);
            want_b.convert_from_f32_slice(src);
            want_h.convert_from_f32_slice(src);
            for backend in &backends {
                let (got_b, got_h) = (&mut got_b[..n], &mut got_h[..n]);
                poison(got_b, bf16::from_bits(0x5A5A));
                poison(got_h, f16::from_bits(0x5A5A));
                backend.convert(src, got_b).unwrap();
                backend.convert(src, got_h).unwrap();
                if !same_bits(got_b, want_b) || !same_bits(got_h, want_h) {
                    report_first_difference(backend, src, want_b, got_b, want_h, got_h);
                }
            }
        },
    );
}

/// Bitwise slice equality (`==` on floats says NaN != NaN).
fn same_bits<T: Bits>(a: &[T], b: &[T]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.bits() == y.bits())
}

#[cold]
fn report_first_difference(
    backend: &Backend,
    src: &[f32],
    want_b: &[bf16],
    got_b: &[bf16],
    want_h: &[f16],
    got_h: &[f16],
) {
    for i in 0..src.len() {
        let x = src[i].to_bits();
        assert_eq!(
            got_b[i].to_bits(),
            want_b[i].to_bits(),
            "{}: f32 {x:#010x} -> bf16",
            backend.isa()
        );
        assert_eq!(
            got_h[i].to_bits(),
            want_h[i].to_bits(),
            "{}: f32 {x:#010x} -> f16",
            backend.isa()
        );
    }
    unreachable!("blocks differed but no element did");
}

/// All 2^16 bf16 and f16 inputs: to f32 and to each other, as `half` does it
/// through f32.
#[test]
fn half_inputs_are_converted_like_half_for_every_input() {
    let all: Vec<u16> = (0..=u16::MAX).collect();
    let b: Vec<bf16> = all.iter().map(|&x| bf16::from_bits(x)).collect();
    let h: Vec<f16> = all.iter().map(|&x| f16::from_bits(x)).collect();
    let want_bf: Vec<u32> = b.iter().map(|x| x.to_f32().to_bits()).collect();
    let want_hf: Vec<u32> = h.iter().map(|x| x.to_f32().to_bits()).collect();
    let want_bh: Vec<u16> = b
        .iter()
        .map(|x| f16::from_f32(x.to_f32()).to_bits())
        .collect();
    let want_hb: Vec<u16> = h
        .iter()
        .map(|x| bf16::from_f32(x.to_f32()).to_bits())
        .collect();
    for backend in backends() {
        let isa = backend.isa();
        let mut f = vec![f32::from_bits(0x7FA5_A5A5); all.len()];
        backend.convert(&b, &mut f).unwrap();
        let got: Vec<u32> = f.iter().map(|x| x.to_bits()).collect();
        assert_first_equal(isa, "bf16 -> f32", &all, &got, &want_bf);
        poison(&mut f, f32::from_bits(0x7FA5_A5A5));
        backend.convert(&h, &mut f).unwrap();
        let got: Vec<u32> = f.iter().map(|x| x.to_bits()).collect();
        assert_first_equal(isa, "f16 -> f32", &all, &got, &want_hf);

        let mut out_h = vec![f16::from_bits(0x5A5A); all.len()];
        backend.convert(&b, &mut out_h).unwrap();
        let got: Vec<u16> = out_h.iter().map(|x| x.to_bits()).collect();
        assert_first_equal(isa, "bf16 -> f16", &all, &got, &want_bh);
        let mut out_b = vec![bf16::from_bits(0x5A5A); all.len()];
        backend.convert(&h, &mut out_b).unwrap();
        let got: Vec<u16> = out_b.iter().map(|x| x.to_bits()).collect();
        assert_first_equal(isa, "f16 -> bf16", &all, &got, &want_hb);
    }
}

fn assert_first_equal<T: PartialEq + std::fmt::LowerHex>(
    isa: Isa,
    what: &str,
    inputs: &[u16],
    got: &[T],
    want: &[T],
) {
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        panic!(
            "{isa}: {what}: input {:#06x} gave {:#x}, want {:#x}",
            inputs[i], got[i], want[i]
        );
    }
}

/// Every length 0..=65 at every start offset 0..=63 bytes of source and
/// destination (the two misaligned independently), outputs poisoned, with
/// the special values sprinkled in; the scalar oracle defines the answer
/// and nothing outside `dst` may change.
#[test]
fn every_length_and_offset_on_every_isa() {
    let mut rng = Rng::fresh("every_length_and_offset_on_every_isa");
    let specials = special_f32();
    const PAD: usize = 40;
    for backend in backends() {
        for len in 0..=65usize {
            for offset_bytes in 0..64usize {
                // f32 source offsets move by 4 bytes, half ones by 2.
                let src_off = offset_bytes / 4;
                let dst_off = offset_bytes / 2 % 32;
                let mut src: Vec<f32> = (0..len + PAD).map(|_| rng.any_f32()).collect();
                for k in 0..len.min(4) {
                    src[src_off + rng.below(len)] = specials[rng.below(specials.len())];
                    let _ = k;
                }
                let s = &src[src_off..src_off + len];
                check_narrow::<bf16>(&backend, s, dst_off, halfkern::oracle::f32_to_bf16);
                check_narrow::<f16>(&backend, s, dst_off, halfkern::oracle::f32_to_f16);

                let halves: Vec<u16> = (0..len + PAD).map(|_| rng.next_u32() as u16).collect();
                let hb: Vec<bf16> = halves.iter().map(|&x| bf16::from_bits(x)).collect();
                let hh: Vec<f16> = halves.iter().map(|&x| f16::from_bits(x)).collect();
                let (sb, sh) = (&hb[src_off..src_off + len], &hh[src_off..src_off + len]);
                check_widen(&backend, sb, dst_off, halfkern::oracle::bf16_to_f32);
                check_widen(&backend, sh, dst_off, halfkern::oracle::f16_to_f32);
                check_cross(&backend, sb, dst_off, halfkern::oracle::bf16_to_f16);
                check_cross(&backend, sh, dst_off, halfkern::oracle::f16_to_bf16);
            }
        }
    }
}

trait Bits: Copy {
    fn bits(self) -> u32;
    fn poison() -> Self;
}
impl Bits for f32 {
    fn bits(self) -> u32 {
        self.to_bits()
    }
    fn poison() -> f32 {
        f32::from_bits(0x7FA5_A5A5)
    }
}
impl Bits for bf16 {
    fn bits(self) -> u32 {
        self.to_bits() as u32
    }
    fn poison() -> bf16 {
        bf16::from_bits(0x5A5A)
    }
}
impl Bits for f16 {
    fn bits(self) -> u32 {
        self.to_bits() as u32
    }
    fn poison() -> f16 {
        f16::from_bits(0x5A5A)
    }
}

fn check_into<S, D>(backend: &Backend, src: &[S], dst_off: usize, oracle: impl Fn(S) -> D)
where
    S: halfkern::Element + Bits,
    D: halfkern::Element + Bits,
{
    let len = src.len();
    let mut buf = vec![D::poison(); dst_off + len + 8];
    backend
        .convert(src, &mut buf[dst_off..dst_off + len])
        .unwrap();
    for (i, x) in buf.iter().enumerate() {
        let want = if (dst_off..dst_off + len).contains(&i) {
            oracle(src[i - dst_off]).bits()
        } else {
            D::poison().bits()
        };
        assert_eq!(
            x.bits(),
            want,
            "{}: len {len}, dst offset {dst_off}, element {i}",
            backend.isa()
        );
    }
}

fn check_narrow<D: halfkern::Element + Bits>(
    backend: &Backend,
    src: &[f32],
    dst_off: usize,
    oracle: fn(f32) -> D,
) {
    check_into(backend, src, dst_off, oracle);
}

fn check_widen<S: halfkern::Element + Bits>(
    backend: &Backend,
    src: &[S],
    dst_off: usize,
    oracle: fn(S) -> f32,
) {
    check_into(backend, src, dst_off, oracle);
}

fn check_cross<S: halfkern::Element + Bits, D: halfkern::Element + Bits>(
    backend: &Backend,
    src: &[S],
    dst_off: usize,
    oracle: fn(S) -> D,
) {
    check_into(backend, src, dst_off, oracle);
}

#[test]
fn length_mismatch_is_an_error_and_dst_is_untouched() {
    for backend in backends() {
        let src = [1.0f32; 5];
        let mut dst = [bf16::from_bits(0x1234); 4];
        let err = backend.convert(&src, &mut dst).unwrap_err();
        assert_eq!(
            err,
            Error::LengthMismatch {
                op: "convert",
                src: 5,
                dst: 4
            }
        );
        assert!(err.to_string().contains('5') && err.to_string().contains('4'));
        assert!(dst.iter().all(|x| x.to_bits() == 0x1234));
        let err = backend.convert_stochastic(&src, &mut dst, 1).unwrap_err();
        assert!(matches!(err, Error::LengthMismatch { src: 5, dst: 4, .. }));
        assert!(dst.iter().all(|x| x.to_bits() == 0x1234));
    }
    let mut dst = [f16::from_bits(0x1234); 3];
    assert!(halfkern::convert(&[0f32; 2], &mut dst).is_err());
    assert!(dst.iter().all(|x| x.to_bits() == 0x1234));
}

#[test]
fn empty_slices_are_fine() {
    for backend in backends() {
        backend.convert::<f32, bf16>(&[], &mut []).unwrap();
        backend.convert::<f16, f32>(&[], &mut []).unwrap();
        backend.convert_stochastic::<f16>(&[], &mut [], 3).unwrap();
    }
}

/// Stochastic rounding: only ever the two neighbours, unbiased on average,
/// and identical across ISAs, chunkings and thread counts.
#[test]
fn stochastic_rounding_contract() {
    let mut rng = Rng::fresh("stochastic_rounding_contract");
    let n = 200_000;
    // Values strictly between two bf16 (and f16) neighbours, in f16's range.
    let src: Vec<f32> = (0..n)
        .map(|_| (1.0 + rng.unit().abs()) * 2f32.powi(rng.below(20) as i32 - 10))
        .collect();
    let seed = rng.next_u64();
    let scalar = Backend::scalar();
    let mut want_b = vec![bf16::ZERO; n];
    let mut want_h = vec![f16::ZERO; n];
    scalar.convert_stochastic(&src, &mut want_b, seed).unwrap();
    scalar.convert_stochastic(&src, &mut want_h, seed).unwrap();

    // Neighbours only, and the mean error is near zero relative to an ulp:
    // a kernel that rounds to nearest, truncates, or uses a biased generator
    // fails the mean test by a wide margin.
    let (mut err_b, mut err_h) = (0f64, 0f64);
    for i in 0..n {
        let x = src[i] as f64;
        let (lo, hi) = neighbours_bf16(src[i]);
        let g = want_b[i].to_f64();
        assert!(g == lo || g == hi, "bf16 of {x}: {g} not in {{{lo}, {hi}}}");
        err_b += (g - x) / (hi - lo);
        let (lo, hi) = neighbours_f16(src[i]);
        let g = want_h[i].to_f64();
        assert!(g == lo || g == hi, "f16 of {x}: {g} not in {{{lo}, {hi}}}");
        err_h += (g - x) / (hi - lo);
    }
    // Each term has mean 0 and variance <= 1/4: 6 sigma over n draws.
    let bound = 6.0 * 0.5 / (n as f64).sqrt();
    assert!(
        (err_b / n as f64).abs() < bound,
        "bf16 bias {}",
        err_b / n as f64
    );
    assert!(
        (err_h / n as f64).abs() < bound,
        "f16 bias {}",
        err_h / n as f64
    );

    // Every ISA, and every way of cutting the slice, gives the same bits.
    for backend in backends() {
        let mut got_b = vec![bf16::from_bits(0x5A5A); n];
        let mut got_h = vec![f16::from_bits(0x5A5A); n];
        backend.convert_stochastic(&src, &mut got_b, seed).unwrap();
        backend.convert_stochastic(&src, &mut got_h, seed).unwrap();
        assert!(
            got_b == want_b,
            "{}: stochastic bf16 differs",
            backend.isa()
        );
        assert!(
            same_bits(&got_h, &want_h),
            "{}: stochastic f16 differs",
            backend.isa()
        );
    }
    let mut whole = vec![bf16::ZERO; n];
    halfkern::convert_stochastic(&src, &mut whole, seed).unwrap();
    assert!(same_bits(&whole, &want_b));
    for threads in [1, 2, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let mut big_src = Vec::new();
        while big_src.len() < (3 << 20) + 17 {
            big_src.extend_from_slice(&src);
        }
        let mut a = vec![f16::ZERO; big_src.len()];
        let mut b = vec![f16::ZERO; big_src.len()];
        pool.install(|| halfkern::convert_stochastic(&big_src, &mut a, seed))
            .unwrap();
        scalar
            .convert_stochastic(&big_src[..], &mut b, seed)
            .unwrap();
        assert!(same_bits(&a, &b), "{threads} threads differ from one");
    }
    // A different seed gives different bits.
    let mut other = vec![bf16::ZERO; n];
    scalar
        .convert_stochastic(&src, &mut other, seed ^ 1)
        .unwrap();
    assert!(!same_bits(&other, &want_b));
}

fn neighbours_bf16(x: f32) -> (f64, f64) {
    let lo = f32::from_bits(x.to_bits() & 0xFFFF_0000);
    let hi = f32::from_bits((x.to_bits() & 0xFFFF_0000) + 0x1_0000);
    (lo as f64, hi as f64)
}

fn neighbours_f16(x: f32) -> (f64, f64) {
    let lo = f32::from_bits(x.to_bits() & !0x1FFF);
    let hi = f32::from_bits((x.to_bits() & !0x1FFF) + 0x2000);
    (lo as f64, hi as f64)
}

/// `HALFKERN_ISA` naming a missing or unknown ISA makes every call an
/// error. Checked in child processes, since the choice is made once per
/// process.
#[test]
fn forcing_an_isa_the_machine_lacks_is_an_error_not_a_fallback() {
    let missing = Isa::ALL.iter().copied().find(|isa| !isa.is_available());
    match std::env::var("HALFKERN_CHILD").as_deref() {
        Ok("missing") => {
            let missing = missing.unwrap();
            let err = halfkern::convert(&[1.0f32; 16], &mut [bf16::ZERO; 16]).unwrap_err();
            assert_eq!(err, Error::IsaUnavailable { isa: missing });
            assert!(
                Isa::selected()
                    .unwrap_err()
                    .to_string()
                    .contains(missing.name())
            );
        }
        Ok("unknown") => {
            let err = halfkern::convert(&[1.0f32; 16], &mut [f16::ZERO; 16]).unwrap_err();
            assert!(matches!(err, Error::UnknownIsa { ref name } if name == "avx9000"));
        }
        Ok("not_utf8") => {
            // Bytes that are no name at all: an error like any unknown name,
            // never the best ISA.
            let err = halfkern::convert(&[1.0f32; 16], &mut [f16::ZERO; 16]).unwrap_err();
            assert!(matches!(err, Error::UnknownIsa { ref name } if name.starts_with("avx")));
            assert!(Isa::selected().is_err());
        }
        _ => {
            let mut cases = vec![("unknown", std::ffi::OsString::from("avx9000"))];
            if let Some(missing) = missing {
                cases.push(("missing", missing.name().into()));
            }
            #[cfg(unix)]
            {
                use std::os::unix::ffi::OsStringExt;
                let raw = std::ffi::OsString::from_vec(b"avx\xff512".to_vec());
                cases.push(("not_utf8", raw));
            }
            for (case, isa) in cases {
                let out = common::self_command()
                    .args([
                        "--exact",
                        "forcing_an_isa_the_machine_lacks_is_an_error_not_a_fallback",
                        "--nocapture",
                    ])
                    .env("HALFKERN_ISA", isa)
                    .env("HALFKERN_CHILD", case)
                    .output()
                    .unwrap();
                let log = String::from_utf8_lossy(&out.stdout);
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(
                    out.status.success() && log.contains("1 passed"),
                    "{case}: {:?}\n{log}\n{err}",
                    out.status
                );
            }
        }
    }
}

/// Stochastic rounding at every length 0..=65 and every start offset, on
/// every ISA: bit-identical to the scalar oracle, nothing outside `dst`
/// written.
#[test]
fn stochastic_every_length_and_offset_on_every_isa() {
    let mut rng = Rng::fresh("stochastic_every_length_and_offset_on_every_isa");
    let specials = special_f32();
    let scalar = Backend::scalar();
    for backend in simd_backends() {
        for len in 0..=65usize {
            for offset_bytes in (0..64usize).step_by(2) {
                let src_off = offset_bytes / 4;
                let dst_off = offset_bytes / 2 % 32;
                let mut src: Vec<f32> = (0..len + 40).map(|_| rng.any_f32()).collect();
                for _ in 0..len.min(4) {
                    src[src_off + rng.below(len)] = specials[rng.below(specials.len())];
                }
                let s = &src[src_off..src_off + len];
                let seed = rng.next_u64();
                check_stochastic::<bf16>(&backend, &scalar, s, dst_off, seed);
                check_stochastic::<f16>(&backend, &scalar, s, dst_off, seed);
            }
        }
    }
}

fn check_stochastic<D: halfkern::Element + Bits>(
    backend: &Backend,
    scalar: &Backend,
    src: &[f32],
    dst_off: usize,
    seed: u64,
) {
    let len = src.len();
    let mut want = vec![D::poison(); len];
    scalar.convert_stochastic(src, &mut want, seed).unwrap();
    let mut buf = vec![D::poison(); dst_off + len + 8];
    backend
        .convert_stochastic(src, &mut buf[dst_off..dst_off + len], seed)
        .unwrap();
    for (i, x) in buf.iter().enumerate() {
        let want = if (dst_off..dst_off + len).contains(&i) {
            want[i - dst_off].bits()
        } else {
            D::poison().bits()
        };
        assert_eq!(
            x.bits(),
            want,
            "{}: stochastic len {len}, dst offset {dst_off}, element {i}, seed {seed}",
            backend.isa()
        );
    }
}

/// Outputs large enough for streaming stores (and the rayon split), at
/// misaligned starts, on every ISA: equal to the scalar oracle, nothing
/// outside `dst` written.
#[test]
fn large_outputs_match_the_oracle_at_every_alignment() {
    let mut rng = Rng::fresh("large_outputs_match_the_oracle_at_every_alignment");
    let n = (5 << 20) / 2 + 37; // > 4 MiB of bf16/f16, > 8 MiB of f32
    let src: Vec<f32> = (0..n + 8).map(|_| rng.any_f32()).collect();
    let halves: Vec<bf16> = (0..n + 8)
        .map(|_| bf16::from_bits(rng.next_u32() as u16))
        .collect();
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    for backend in simd_backends() {
        for off in [0usize, 1, 3, 7] {
            let s = &src[off..off + n];
            one.install(|| {
                check_into(&backend, s, 8 - off, halfkern::oracle::f32_to_bf16);
                check_into(&backend, s, off, halfkern::oracle::f32_to_f16);
            });
            let h = &halves[off..off + n];
            check_into(&backend, h, off + 1, halfkern::oracle::bf16_to_f32);
        }
    }
}
