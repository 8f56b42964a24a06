//! Conversions at the sizes where the top-level driver changes strategy:
//! around the rayon split (2^20 elements, chunks of 2^18) and the
//! streaming-store size (4 MiB of output), at arbitrary start offsets, on a
//! pool of several threads. The input's bytes pick the pair, the length,
//! the offsets and a seed; the elements come from a generator seeded by it
//! (with special values spliced in), since the fuzzer's inputs are small.
//! Oracle: every element equals the scalar bit-level conversion
//! (`halfkern::oracle`), on every available ISA and through the top-level
//! function, and nothing outside `dst` is written.

#![no_main]

use halfkern::{Backend, Isa, bf16, f16, oracle};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn pool() -> &'static rayon::ThreadPool {
    static POOL: OnceLock<rayon::ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap()
    })
}

/// SplitMix64.
fn words(seed: u64, n: usize) -> impl Iterator<Item = u32> {
    let mut s = seed;
    (0..n).map(move |i| {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let z = (s ^ (s >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB) ^ (z >> 31);
        // Specials now and then: NaNs, infinities, subnormals, ties.
        match z % 97 {
            0 => 0x7F80_0001 | (z >> 40) as u32 & 0x807F_FFFF, // NaN (or inf)
            1 => (z >> 32) as u32 & 0x807F_FFFF,               // subnormal
            2 => 0x3F80_8000 | ((i as u32) << 16),             // bf16 tie
            3 => 0x3F80_1000,                                  // f16 tie
            _ => (z >> 32) as u32,
        }
    })
}

/// Lengths around the split and the streaming size (in elements: 4 MiB
/// is 2^20 f32 or 2^21 halves).
const LENS: [usize; 8] = [
    (1 << 18) + 3,
    (1 << 20) - 1,
    1 << 20,
    (1 << 20) + 7,
    (1 << 20) + (1 << 18) + 1,
    (1 << 21) - 5,
    (1 << 21) + 1,
    (1 << 21) + 33,
];

fn compare<D: Copy + Send>(
    len: usize,
    off: usize,
    poison: D,
    bits: fn(D) -> u32,
    want: &dyn Fn(usize) -> u32,
    run: &(dyn Fn(Option<&Backend>, &mut [D]) + Sync),
) {
    let mut buf = vec![poison; off + len + 8];
    let mut targets: Vec<Option<Backend>> = Isa::available()
        .into_iter()
        .map(|isa| Backend::new(isa))
        .collect();
    targets.push(None); // the top-level function
    for backend in targets {
        buf.fill(poison);
        pool().install(|| run(backend.as_ref(), &mut buf[off..off + len]));
        let name = backend.map_or("top-level".into(), |b| b.isa().to_string());
        assert!(
            buf[..off]
                .iter()
                .chain(&buf[off + len..])
                .all(|&x| bits(x) == bits(poison)),
            "{name}: wrote outside dst"
        );
        for (i, &x) in buf[off..off + len].iter().enumerate() {
            assert_eq!(bits(x), want(i), "{name}: element {i} of {len}");
        }
    }
}

/// The random bits stochastic rounding draws for element `i`.
fn random(seed: u64, i: usize) -> u32 {
    let i = i as u64;
    oracle::sr_bits(oracle::sr_key(seed, (i >> 32) as u32), i as u32)
}

fuzz_target!(|data: &[u8]| {
    let byte = |i: usize| data.get(i).copied().unwrap_or(0) as usize;
    let len = LENS[byte(1) % LENS.len()];
    let (src_off, dst_off) = (byte(2) % 16, byte(3) % 16);
    let mut seed = [0u8; 8];
    for (i, s) in seed.iter_mut().enumerate() {
        *s = byte(4 + i) as u8;
    }
    let seed = u64::from_le_bytes(seed);
    let raw: Vec<u32> = words(seed, src_off + len).collect();
    let f: Vec<f32> = raw.iter().map(|&w| f32::from_bits(w)).collect();
    let b: Vec<bf16> = raw
        .iter()
        .map(|&w| bf16::from_bits((w >> 16) as u16))
        .collect();
    let h: Vec<f16> = raw.iter().map(|&w| f16::from_bits(w as u16)).collect();
    let (f, b, h) = (&f[src_off..], &b[src_off..], &h[src_off..]);
    let bf = |x: bf16| u32::from(x.to_bits());
    let hf = |x: f16| u32::from(x.to_bits());
    let ff = |x: f32| x.to_bits();
    let (pb, ph, pf) = (
        bf16::from_bits(0x5A5A),
        f16::from_bits(0x5A5A),
        f32::from_bits(0x7FA5_A5A5),
    );
    macro_rules! convert {
        ($src:expr) => {
            &|backend: Option<&Backend>, dst: &mut [_]| match backend {
                Some(be) => be.convert($src, dst).unwrap(),
                None => halfkern::convert($src, dst).unwrap(),
            }
        };
    }
    match byte(0) % 8 {
        0 => compare(
            len,
            dst_off,
            pb,
            bf,
            &|i| bf(oracle::f32_to_bf16(f[i])),
            convert!(f),
        ),
        1 => compare(
            len,
            dst_off,
            ph,
            hf,
            &|i| hf(oracle::f32_to_f16(f[i])),
            convert!(f),
        ),
        2 => compare(
            len,
            dst_off,
            pf,
            ff,
            &|i| ff(oracle::bf16_to_f32(b[i])),
            convert!(b),
        ),
        3 => compare(
            len,
            dst_off,
            pf,
            ff,
            &|i| ff(oracle::f16_to_f32(h[i])),
            convert!(h),
        ),
        4 => compare(
            len,
            dst_off,
            ph,
            hf,
            &|i| hf(oracle::bf16_to_f16(b[i])),
            convert!(b),
        ),
        5 => compare(
            len,
            dst_off,
            pb,
            bf,
            &|i| bf(oracle::f16_to_bf16(h[i])),
            convert!(h),
        ),
        6 => {
            let want =
                |i: usize| u32::from(oracle::f32_to_bf16_sr_bits(f[i].to_bits(), random(seed, i)));
            compare(len, dst_off, pb, bf, &want, &|backend, dst| match backend {
                Some(be) => be.convert_stochastic(f, dst, seed).unwrap(),
                None => halfkern::convert_stochastic(f, dst, seed).unwrap(),
            })
        }
        _ => {
            let want =
                |i: usize| u32::from(oracle::f32_to_f16_sr_bits(f[i].to_bits(), random(seed, i)));
            compare(len, dst_off, ph, hf, &want, &|backend, dst| match backend {
                Some(be) => be.convert_stochastic(f, dst, seed).unwrap(),
                None => halfkern::convert_stochastic(f, dst, seed).unwrap(),
            })
        }
    }
});
