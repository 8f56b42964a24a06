//! Arbitrary bytes as f32/bf16/f16 slices at arbitrary offsets: every
//! available ISA must equal the scalar oracle bit for bit, for every
//! conversion pair and for stochastic rounding, and must not write outside
//! `dst`.

#![no_main]

use half::{bf16, f16};
use halfkern::{Backend, Element, Isa};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 10 {
        return;
    }
    // Header: which pair, start offsets (elements), the seed.
    let pair = data[0] % 8;
    let src_off = (data[1] % 16) as usize;
    let dst_off = (data[2] % 16) as usize;
    let seed = u64::from_le_bytes(data[2..10].try_into().unwrap());
    let body = &data[10..];
    let words32: Vec<u32> = body
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let words16: Vec<u16> = body
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let f: Vec<f32> = words32.iter().map(|&x| f32::from_bits(x)).collect();
    let b: Vec<bf16> = words16.iter().map(|&x| bf16::from_bits(x)).collect();
    let h: Vec<f16> = words16.iter().map(|&x| f16::from_bits(x)).collect();
    let f = &f[src_off.min(f.len())..];
    let b = &b[src_off.min(b.len())..];
    let h = &h[src_off.min(h.len())..];
    match pair {
        0 => check::<f32, bf16>(f, dst_off),
        1 => check::<f32, f16>(f, dst_off),
        2 => check::<bf16, f32>(b, dst_off),
        3 => check::<f16, f32>(h, dst_off),
        4 => check::<bf16, f16>(b, dst_off),
        5 => check::<f16, bf16>(h, dst_off),
        6 => check_stochastic::<bf16>(f, dst_off, seed),
        _ => check_stochastic::<f16>(f, dst_off, seed),
    }
});

trait Bits: Element {
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
        self.to_bits().into()
    }
    fn poison() -> bf16 {
        bf16::from_bits(0x5A5A)
    }
}
impl Bits for f16 {
    fn bits(self) -> u32 {
        self.to_bits().into()
    }
    fn poison() -> f16 {
        f16::from_bits(0x5A5A)
    }
}

fn backends() -> impl Iterator<Item = Backend> {
    Isa::available().into_iter().filter_map(Backend::new)
}

/// Runs `run` on every backend into a poisoned buffer and compares with
/// scalar (the first backend).
fn compare<D: Bits>(len: usize, dst_off: usize, run: impl Fn(&Backend, &mut [D])) {
    let mut want: Option<Vec<u32>> = None;
    for backend in backends() {
        let mut buf = vec![D::poison(); dst_off + len + 16];
        run(&backend, &mut buf[dst_off..dst_off + len]);
        assert!(
            buf[..dst_off]
                .iter()
                .all(|x| x.bits() == D::poison().bits())
        );
        assert!(
            buf[dst_off + len..]
                .iter()
                .all(|x| x.bits() == D::poison().bits())
        );
        let got: Vec<u32> = buf[dst_off..dst_off + len]
            .iter()
            .map(|x| x.bits())
            .collect();
        match &want {
            None => want = Some(got),
            Some(w) => assert!(&got == w, "{} differs from scalar", backend.isa()),
        }
    }
}

fn check<S: Element, D: Bits>(src: &[S], dst_off: usize) {
    compare::<D>(src.len(), dst_off, |backend, dst| {
        backend.convert(src, dst).unwrap()
    });
}

fn check_stochastic<D: Bits>(src: &[f32], dst_off: usize, seed: u64) {
    compare::<D>(src.len(), dst_off, |backend, dst| {
        backend.convert_stochastic(src, dst, seed).unwrap()
    });
}
