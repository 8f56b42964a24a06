//! Times `halfkern::gemm` for bf16 x bf16 -> f32, square `n`, row-major,
//! packing included: the median of `reps` calls after two warm-up calls.
//!
//! ```text
//! cargo run --release --example gemm_speed -- --n 2048 --threads 1 --reps 10 --json
//! ```
//!
//! `--packed` packs B once beforehand ([`halfkern::PackedB`], as for
//! weights) and times `gemm_packed` instead.
//!
//! The ISA is the process-wide one (`HALFKERN_ISA` forces it); threads come
//! from rayon's global pool (`RAYON_NUM_THREADS`), capped by `--threads`.
//! With `--json` it prints one line
//! `{"isa":..,"kernel":..,"threads":..,"n":..,"gflops":..}`
//! (what `scripts/amx_vs_torch.py` reads); otherwise a sentence.

use std::time::Instant;

use halfkern::{Gemm, MatMut, MatRef, PackedB, Threads, bf16};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (mut n, mut threads, mut reps) = (1024usize, 1usize, 10usize);
    let (mut json, mut packed) = (false, false);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || -> Result<usize, Box<dyn std::error::Error>> {
            Ok(args.next().ok_or(format!("{arg} needs a value"))?.parse()?)
        };
        match arg.as_str() {
            "--n" => n = value()?,
            "--threads" => threads = value()?,
            "--reps" => reps = value()?.max(1),
            "--json" => json = true,
            "--packed" => packed = true,
            _ => return Err(format!("unknown argument {arg}; see the file's docs").into()),
        }
    }
    // Inputs in [-1, 1) from a fixed LCG: the speed does not depend on them.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        bf16::from_f32((state >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
    };
    let a: Vec<bf16> = (0..n * n).map(|_| next()).collect();
    let b: Vec<bf16> = (0..n * n).map(|_| next()).collect();
    let mut c = vec![0.0f32; n * n];
    let params = Gemm::new().threads(if threads <= 1 {
        Threads::Single
    } else {
        Threads::Count(threads)
    });
    let pb = PackedB::new(MatRef::row_major(&b, n, n)?)?;
    let mut run = || {
        let (av, cv) = (
            MatRef::row_major(&a, n, n)?,
            MatMut::row_major(&mut c, n, n)?,
        );
        if packed {
            halfkern::gemm_packed(av, &pb, cv, &params)
        } else {
            halfkern::gemm(av, MatRef::row_major(&b, n, n)?, cv, &params)
        }
    };
    let report = run()?;
    run()?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        run()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let gflops = 2.0 * (n as f64).powi(3) / median / 1e9;
    if json {
        println!(
            "{{\"isa\":\"{}\",\"kernel\":\"{}\",\"threads\":{},\"n\":{n},\"packed\":{packed},\"gflops\":{gflops:.1}}}",
            report.isa, report.kernel, report.threads
        );
    } else {
        println!(
            "{} ({}), {} threads, n = {n}: {gflops:.1} GFLOP/s (median of {reps})",
            report.isa, report.kernel, report.threads
        );
    }
    Ok(())
}
