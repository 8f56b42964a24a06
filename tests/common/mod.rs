//! Shared test machinery: every backend the machine has, fresh random
//! inputs (with the seed printed so a failure can be replayed), the special
//! values every kernel must get right, and output poisoning.
//!
//! - `HALFKERN_TEST_SEED=<u64>` replays a run.
//! - `HALFKERN_REQUIRE=<isa,..>` fails the run if a listed ISA is missing.
//! - `HALFKERN_TEST_STRIDE=<n>` samples exhaustive sweeps (every n-th input);
//!   CI sets it under qemu, where a 2^32 sweep would take hours.

#![allow(dead_code, reason = "each test binary uses a different part")]

use halfkern::{Backend, Isa};

/// Every backend this machine can run, scalar first.
///
/// `HALFKERN_REQUIRE=amx,avx512bf16` turns a missing ISA into a failure, so
/// a run on a machine that should have it cannot pass by skipping it.
pub fn backends() -> Vec<Backend> {
    if let Ok(required) = std::env::var("HALFKERN_REQUIRE") {
        for name in required.split(',').filter(|s| !s.trim().is_empty()) {
            let isa: Isa = name.parse().expect("HALFKERN_REQUIRE names a known ISA");
            assert!(
                isa.is_available(),
                "HALFKERN_REQUIRE: {isa} is not available here"
            );
        }
    }
    let all: Vec<Backend> = Isa::available()
        .into_iter()
        .map(|isa| Backend::new(isa).expect("available ISA has a backend"))
        .collect();
    assert_eq!(all[0].isa(), Isa::Scalar);
    all
}

/// Every backend except scalar (the ones tested against the oracle).
pub fn simd_backends() -> Vec<Backend> {
    backends().into_iter().skip(1).collect()
}

/// Step of exhaustive sweeps: 1 unless `HALFKERN_TEST_STRIDE` says otherwise.
pub fn stride() -> usize {
    std::env::var("HALFKERN_TEST_STRIDE")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&s| s >= 1)
        .unwrap_or(1)
}

/// SplitMix64: small, fast, and good enough to draw test inputs.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A fresh generator: seeded from `HALFKERN_TEST_SEED` or the clock, and
    /// the seed printed (cargo shows it when the test fails).
    pub fn fresh(test: &str) -> Rng {
        let seed = std::env::var("HALFKERN_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap();
                t.as_nanos() as u64 ^ (std::process::id() as u64) << 32
            });
        println!("{test}: HALFKERN_TEST_SEED={seed}");
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Uniform in [-1, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 * (2.0 / (1u32 << 24) as f32) - 1.0
    }

    /// A value of mixed kind: mostly normal numbers of varied magnitude, a
    /// good share of special values (see [`special_f32`]), any bit pattern.
    pub fn any_f32(&mut self) -> f32 {
        match self.below(8) {
            0 => f32::from_bits(self.next_u32()),
            1 => {
                let s = special_f32();
                s[self.below(s.len())]
            }
            _ => {
                let exp = self.below(60) as i32 - 30;
                self.unit() * 2f32.powi(exp)
            }
        }
    }

    pub fn vec_f32(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.any_f32()).collect()
    }
}

/// f32 values every kernel must get right: zeros, infinities, NaNs with
/// several payloads and both signs, subnormals, the largest values, ties
/// and near-ties for both bf16 (16 dropped bits) and f16 (13 dropped bits),
/// and f16's overflow and underflow edges.
pub fn special_f32() -> Vec<f32> {
    let bits: [u32; 38] = [
        0x0000_0000,
        0x8000_0000, // ±0
        0x7F80_0000,
        0xFF80_0000, // ±inf
        0x7FC0_0000,
        0xFFC0_0000,
        0x7F80_0001,
        0xFF80_0001, // quiet, signalling NaN
        0x7FBF_FFFF,
        0x7FFF_FFFF,
        0x7F81_2345,
        0xFFA5_A5A5, // NaN payloads
        0x0000_0001,
        0x8000_0001,
        0x007F_FFFF,
        0x0000_8000, // f32 subnormals
        0x0080_0000,
        0x7F7F_FFFF,
        0xFF7F_FFFF,
        0x7F7F_8000, // min normal, max, bf16 max tie
        0x3F80_8000,
        0x3F81_8000,
        0x3F80_8001,
        0x3F80_7FFF, // bf16 ties (to even), near-ties
        0x3F80_1000,
        0x3F80_3000,
        0x3F80_1001,
        0x3F80_0FFF, // f16 ties, near-ties
        0x477F_E000,
        0x477F_EFFF,
        0x477F_F000,
        0x4780_0000, // 65504, just below/at 65520, 65536
        0x3880_0000,
        0x3380_0000,
        0x3300_0000,
        0x3300_0001, // f16 min normal, min subnormal, half of it
        0x33C0_0000,
        0x387F_E000, // 1.5 f16 ulp, largest f16 subnormal
    ];
    bits.into_iter().map(f32::from_bits).collect()
}

/// Fills a slice with a recognisable value so a kernel that skips an
/// element, or writes one it should not, is caught.
pub fn poison<T: Copy>(dst: &mut [T], value: T) {
    dst.fill(value);
}

/// A command that re-runs this test binary, for tests that need a fresh
/// process (e.g. a different `HALFKERN_ISA`). Under emulation the binary
/// cannot be exec'd directly: CI names the runner in `HALFKERN_TEST_RUNNER`
/// (e.g. `qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu max`).
pub fn self_command() -> std::process::Command {
    let exe = std::env::current_exe().expect("test binary path");
    match std::env::var("HALFKERN_TEST_RUNNER") {
        Ok(runner) if !runner.trim().is_empty() => {
            let mut words = runner.split_whitespace();
            let mut cmd = std::process::Command::new(words.next().unwrap());
            cmd.args(words).arg(exe);
            cmd
        }
        _ => std::process::Command::new(exe),
    }
}
