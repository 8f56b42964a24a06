//! The numerics contract holds whatever floating-point environment the
//! caller left: a host process that turned on flush-to-zero and
//! denormals-are-zero (PyTorch's `set_flush_denormal(True)`, many C++
//! engines), on the calling thread and on rayon's worker threads, gets
//! the same bits from every kernel as with IEEE subnormals, on every ISA.

mod common;

use common::{Rng, backends};
use halfkern::{Backend, Element, Gemm, MatMut, MatRef, Threads, bf16, f16};

#[cfg(target_arch = "x86_64")]
mod env {
    /// MXCSR's flush-to-zero and denormals-are-zero bits.
    pub const FLUSH: u64 = (1 << 15) | (1 << 6);
    pub fn get() -> u64 {
        let mut x = 0u32;
        // SAFETY: STMXCSR writes the 4 bytes of `x`.
        unsafe { core::arch::asm!("stmxcsr [{}]", in(reg) &mut x, options(nostack)) };
        u64::from(x)
    }
    pub fn set(v: u64) {
        let x = v as u32;
        // SAFETY: LDMXCSR reads the 4 bytes of `x`; only mode bits change.
        unsafe { core::arch::asm!("ldmxcsr [{}]", in(reg) &x, options(nostack, readonly)) };
    }
}

#[cfg(target_arch = "aarch64")]
mod env {
    /// FPCR's FZ (f32/f64) and FZ16 (f16) flush-to-zero bits.
    pub const FLUSH: u64 = (1 << 24) | (1 << 19);
    pub fn get() -> u64 {
        let x: u64;
        // SAFETY: reads FPCR.
        unsafe { core::arch::asm!("mrs {}, fpcr", out(reg) x, options(nomem, nostack)) };
        x
    }
    pub fn set(v: u64) {
        // SAFETY: writes FPCR's mode bits.
        unsafe { core::arch::asm!("msr fpcr, {}", in(reg) v, options(nomem, nostack)) };
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
mod env {
    pub const FLUSH: u64 = 0;
    pub fn get() -> u64 {
        0
    }
    pub fn set(_: u64) {}
}

/// Turns flushing on for this thread, and checks that it took.
fn flush_on() {
    env::set(env::get() | env::FLUSH);
    let tiny = std::hint::black_box(f32::MIN_POSITIVE);
    assert_eq!(tiny * std::hint::black_box(0.5f32), 0.0, "FTZ did not take");
}

/// Runs `f` twice: in this process's IEEE environment, and on a rayon pool
/// whose threads (the calling one included) flush subnormals; returns both.
fn both<R: Send>(f: impl Fn() -> R + Sync) -> (R, R) {
    let ieee = f();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .start_handler(|_| flush_on())
        .build()
        .unwrap();
    let flushed = pool.install(|| {
        let saved = env::get();
        flush_on();
        // What took: a CPU without FP16 (cortex-a72) keeps FZ16 at 0.
        let flushing = env::get();
        let r = f();
        assert_eq!(env::get(), flushing, "the caller's mode was not restored");
        env::set(saved);
        r
    });
    (ieee, flushed)
}

/// Values with many f32 and f16/bf16 subnormals and values that round
/// into them.
fn tiny_values(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let e = rng.below(60) as i32;
            let x = rng.unit() * 2f32.powi(-100 - e);
            match rng.below(4) {
                0 => x,
                1 => rng.unit() * 2f32.powi(-14 - rng.below(12) as i32), // f16 subnormal range
                2 => f32::from_bits(rng.next_u32() & 0x807F_FFFF),       // f32 subnormal
                _ => rng.unit() * 4.0 - 2.0,
            }
        })
        .collect()
}

fn bits<T: Element>(v: &[T]) -> Vec<u32> {
    v.iter().map(|x| x.to_f32().to_bits()).collect()
}

#[test]
fn conversions_ignore_ftz_daz() {
    let mut rng = Rng::fresh("conversions_ignore_ftz_daz");
    // Past the rayon split and the streaming-store size.
    let n = (1 << 21) + 13;
    let src = tiny_values(&mut rng, n);
    let src_bf: Vec<bf16> = src.iter().map(|&x| bf16::from_f32(x)).collect();
    let src_h: Vec<f16> = src.iter().map(|&x| f16::from_f32(x)).collect();
    for b in backends() {
        let isa = b.isa();
        let (x, y) = both(|| {
            let mut o = (vec![bf16::ZERO; n], vec![f16::ZERO; n], vec![0f32; n]);
            let mut p = (vec![0f32; n], vec![f16::ZERO; n], vec![bf16::ZERO; n]);
            b.convert(&src, &mut o.0).unwrap();
            b.convert(&src, &mut o.1).unwrap();
            b.convert(&src_h, &mut o.2).unwrap();
            b.convert(&src_bf, &mut p.0).unwrap();
            b.convert(&src_bf, &mut p.1).unwrap();
            b.convert(&src_h, &mut p.2).unwrap();
            let mut s = vec![f16::ZERO; n];
            b.convert_stochastic(&src, &mut s, 9).unwrap();
            [
                bits(&o.0),
                bits(&o.1),
                bits(&o.2),
                bits(&p.0),
                bits(&p.1),
                bits(&p.2),
                bits(&s),
            ]
        });
        for (i, (x, y)) in x.iter().zip(&y).enumerate() {
            assert!(x == y, "{isa}: conversion {i} differs under FTZ/DAZ");
        }
    }
}

#[test]
fn unscale_ignores_ftz_daz() {
    let mut rng = Rng::fresh("unscale_ignores_ftz_daz");
    let n = (1 << 21) + 5;
    let g = tiny_values(&mut rng, n);
    for b in backends() {
        let isa = b.isa();
        let (x, y) = both(|| {
            let mut f = g.clone();
            let mut h: Vec<f16> = g.iter().map(|&v| f16::from_f32(v * 1024.0)).collect();
            let mut w: Vec<bf16> = g.iter().map(|&v| bf16::from_f32(v)).collect();
            let sf = b.unscale(&mut f, 0.75).unwrap();
            let sh = b.unscale(&mut h, 1.0 / 1024.0).unwrap();
            let sw = b.unscale(&mut w, 0.5).unwrap();
            (
                [bits(&f), bits(&h), bits(&w)],
                [sf.nonfinite, sh.nonfinite, sw.nonfinite],
            )
        });
        assert!(x.0 == y.0, "{isa}: unscaled values differ under FTZ/DAZ");
        assert_eq!(x.1, y.1, "{isa}");
    }
}

#[test]
fn gemm_ignores_ftz_daz() {
    let mut rng = Rng::fresh("gemm_ignores_ftz_daz");
    /// Inputs are rounded outside `both`: only the GEMM runs flushed.
    fn run<T: Element>(
        b: &Backend,
        a: &[f32],
        w: &[f32],
        m: usize,
        k: usize,
        n: usize,
    ) -> Vec<u32> {
        let a: Vec<T> = a.iter().map(|&x| T::from_f32(x)).collect();
        let w: Vec<T> = w.iter().map(|&x| T::from_f32(x)).collect();
        let bias: Vec<f32> = (0..n).map(|j| f32::from_bits(j as u32 * 1001)).collect();
        let (x, y) = both(|| {
            let mut c = vec![f32::NAN; m * n];
            b.gemm(
                MatRef::row_major(&a, m, k).unwrap(),
                MatRef::row_major(&w, k, n).unwrap(),
                MatMut::row_major(&mut c, m, n).unwrap(),
                &Gemm::new()
                    .threads(Threads::Count(3))
                    .bias(halfkern::Bias::PerCol(&bias))
                    .unscale(0.5),
            )
            .unwrap();
            bits(&c)
        });
        assert!(
            x == y,
            "{} {:?} {m}x{k}x{n}: differs under FTZ/DAZ",
            b.isa(),
            T::DTYPE
        );
        x
    }
    for (m, k, n) in [(1, 300, 70), (40, 300, 100)] {
        // Products of about 2^-70 * 2^-70: f32 subnormals, summed.
        let a: Vec<f32> = (0..m * k).map(|_| rng.unit() * 2f32.powi(-70)).collect();
        let w: Vec<f32> = (0..k * n).map(|_| rng.unit() * 2f32.powi(-70)).collect();
        for b in backends() {
            run::<f32>(&b, &a, &w, m, k, n);
            run::<bf16>(&b, &a, &w, m, k, n);
            // f16: subnormal f16 inputs and products.
            let a16: Vec<f32> = a.iter().map(|&x| x * 2f32.powi(50)).collect();
            let w16: Vec<f32> = w.iter().map(|&x| x * 2f32.powi(50)).collect();
            run::<f16>(&b, &a16, &w16, m, k, n);
        }
    }
}

#[test]
fn training_steps_ignore_ftz_daz() {
    use halfkern::train::{AdamW, LossScaler, Trainer};
    let mut rng = Rng::fresh("training_steps_ignore_ftz_daz");
    let n = 4099;
    let init: Vec<Vec<f32>> = vec![tiny_values(&mut rng, n)];
    let grads: Vec<Vec<f16>> = (0..3)
        .map(|_| {
            let g = tiny_values(&mut rng, n);
            g.iter().map(|&x| f16::from_f32(x * 1024.0)).collect()
        })
        .collect();
    for b in backends() {
        let isa = b.isa();
        let (x, y) = both(|| {
            let mut t = Trainer::builder(AdamW::new(1e-3))
                .backend(b)
                .scaler(LossScaler::fixed(1024.0).unwrap())
                .build(&init)
                .unwrap();
            let mut w = init.clone();
            for g in &grads {
                let gref: Vec<&[f16]> = vec![&g[..]];
                let mut views: Vec<&mut [f32]> = w.iter_mut().map(|v| &mut v[..]).collect();
                t.step(&gref, &mut views).unwrap();
            }
            (bits(&w[0]), bits(t.master(0).unwrap()))
        });
        assert!(x == y, "{isa}: training step differs under FTZ/DAZ");
    }
}
