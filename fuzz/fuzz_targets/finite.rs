//! Arbitrary bytes as gradients (f32, bf16 or f16) and a scale: every ISA
//! must write the same bits and count the same non-finite values as the
//! scalar oracle, with sums of squares within 1e-6 relative; bad scales
//! must be rejected with nothing written.

#![no_main]

use halfkern::finite::GradStats;
use halfkern::{Backend, Element, Isa, bf16, f16};
use libfuzzer_sys::fuzz_target;

fn close(a: GradStats, b: GradStats) -> bool {
    a.nonfinite == b.nonfinite && (a.sum_sq - b.sum_sq).abs() <= 1e-6 * b.sum_sq
}

fn check<T: Element + PartialEq>(src: &[T], inv: f32, bits: impl Fn(&T) -> u32) {
    let scalar = Backend::scalar();
    let mut want = src.to_vec();
    let want_stats = scalar.unscale(&mut want, inv);
    let mut want32 = vec![0f32; src.len()];
    let want32_stats = scalar.unscale_into(src, &mut want32, inv);
    let want_count = scalar.count_nonfinite(src);
    for isa in Isa::available() {
        let backend = Backend::new(isa).unwrap();
        let mut got = src.to_vec();
        let stats = backend.unscale(&mut got, inv);
        match (&stats, &want_stats) {
            (Ok(g), Ok(w)) => {
                assert!(close(*g, *w), "{isa}: {g:?} vs {w:?}");
                assert!(got.iter().map(&bits).eq(want.iter().map(&bits)), "{isa}");
            }
            (Err(_), Err(_)) => assert!(got.iter().map(&bits).eq(src.iter().map(&bits))),
            _ => panic!("{isa}: {stats:?} vs {want_stats:?}"),
        }
        let mut got32 = vec![f32::from_bits(0x7FA5_5A5A); src.len()];
        let stats = backend.unscale_into(src, &mut got32, inv);
        match (&stats, &want32_stats) {
            (Ok(g), Ok(w)) => {
                assert!(close(*g, *w), "{isa}: {g:?} vs {w:?}");
                assert!(
                    got32
                        .iter()
                        .map(|x| x.to_bits())
                        .eq(want32.iter().map(|x| x.to_bits()))
                );
            }
            (Err(_), Err(_)) => assert!(got32.iter().all(|x| x.to_bits() == 0x7FA5_5A5A)),
            _ => panic!("{isa}: {stats:?} vs {want32_stats:?}"),
        }
        assert_eq!(backend.count_nonfinite(src), want_count, "{isa}");
        assert_eq!(backend.all_finite(src), want_count == 0, "{isa}");
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let inv = f32::from_le_bytes([data[0], data[1], data[2], data[3]]);
    let ty = data[4] % 3;
    let body = &data[5..];
    match ty {
        0 => {
            let v: Vec<f32> = body
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            check(&v, inv, |x| x.to_bits());
        }
        1 => {
            let v: Vec<bf16> = body
                .chunks_exact(2)
                .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])))
                .collect();
            check(&v, inv, |x| x.to_bits() as u32);
        }
        _ => {
            let v: Vec<f16> = body
                .chunks_exact(2)
                .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])))
                .collect();
            check(&v, inv, |x| x.to_bits() as u32);
        }
    }
});
