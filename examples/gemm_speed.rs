//! Times `halfkern::gemm` for bf16 x bf16 -> f32 (or bf16 with `--out
//! bf16`, what `torch.matmul` returns for bf16 inputs), square `n`,
//! row-major, packing included: the median of `reps` calls after two
//! warm-up calls.
//!
//! ```text
//! cargo run --release --example gemm_speed -- --n 2048 --threads 1 --reps 10 --json
//! ```
//!
//! `--packed` packs B once beforehand ([`halfkern::PackedB`], as for
//! weights) and times `gemm_packed` instead.
//!
//! `--serve` times one call per line read from stdin and prints its
//! seconds, after two warm-up calls: `dev/host/amx_vs_torch.py` alternates
//! single calls of halfkern and torch that way, so a host whose speed
//! swings from one second to the next slows both sides alike.
//!
//! The ISA is the process-wide one (`HALFKERN_ISA` forces it); threads come
//! from rayon's global pool (`RAYON_NUM_THREADS`), capped by `--threads`.
//! With `--json` it prints one line
//! `{"isa":..,"kernel":..,"threads":..,"n":..,"packed":..,"out":..,"gflops":..}`
//! (what `dev/host/amx_vs_torch.py` reads); otherwise a sentence.

use std::time::Instant;

use halfkern::{Element, Gemm, GemmReport, MatMut, MatRef, PackedB, Threads, bf16};

/// What to time: one square GEMM of `n`.
struct Case<'a> {
    a: &'a [bf16],
    b: &'a [bf16],
    pb: &'a PackedB<bf16>,
    n: usize,
    packed: bool,
    params: &'a Gemm<'a>,
}

impl Case<'_> {
    fn run<C: Element>(&self, c: &mut [C]) -> Result<GemmReport, halfkern::Error> {
        let n = self.n;
        let (av, cv) = (
            MatRef::row_major(self.a, n, n)?,
            MatMut::row_major(c, n, n)?,
        );
        if self.packed {
            halfkern::gemm_packed(av, self.pb, cv, self.params)
        } else {
            halfkern::gemm(av, MatRef::row_major(self.b, n, n)?, cv, self.params)
        }
    }

    /// One timed call per line of stdin, its seconds on stdout, after two
    /// warm-up calls.
    fn serve<C: Element>(&self) -> Result<(), Box<dyn std::error::Error>> {
        use std::io::{BufRead, Write};
        let mut c = vec![C::from_f32(0.0); self.n * self.n];
        self.run(&mut c)?;
        self.run(&mut c)?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready")?;
        out.flush()?;
        for line in std::io::stdin().lock().lines() {
            line?;
            let t = Instant::now();
            self.run(&mut c)?;
            writeln!(out, "{}", t.elapsed().as_secs_f64())?;
            out.flush()?;
        }
        Ok(())
    }

    /// The report of the first call and the median seconds of `reps` after
    /// two warm-up calls.
    fn time<C: Element>(&self, reps: usize) -> Result<(GemmReport, f64), halfkern::Error> {
        let mut c = vec![C::from_f32(0.0); self.n * self.n];
        let report = self.run(&mut c)?;
        self.run(&mut c)?;
        let mut times = Vec::with_capacity(reps);
        for _ in 0..reps {
            let t = Instant::now();
            self.run(&mut c)?;
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        Ok((report, times[times.len() / 2]))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (mut n, mut threads, mut reps) = (1024usize, 1usize, 10usize);
    let (mut json, mut packed, mut out_bf16, mut serve) = (false, false, false, false);
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
            "--serve" => serve = true,
            "--out" => match args.next().as_deref() {
                Some("f32") => out_bf16 = false,
                Some("bf16") => out_bf16 = true,
                other => return Err(format!("--out takes f32 or bf16, not {other:?}").into()),
            },
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
    let params = Gemm::new().threads(if threads <= 1 {
        Threads::Single
    } else {
        Threads::Count(threads)
    });
    let pb = PackedB::new(MatRef::row_major(&b, n, n)?)?;
    let case = Case {
        a: &a,
        b: &b,
        pb: &pb,
        n,
        packed,
        params: &params,
    };
    if serve {
        return if out_bf16 {
            case.serve::<bf16>()
        } else {
            case.serve::<f32>()
        };
    }
    let (report, median) = if out_bf16 {
        case.time::<bf16>(reps)?
    } else {
        case.time::<f32>(reps)?
    };
    let out = if out_bf16 { "bf16" } else { "f32" };
    let gflops = 2.0 * (n as f64).powi(3) / median / 1e9;
    if json {
        println!(
            "{{\"isa\":\"{}\",\"kernel\":\"{}\",\"threads\":{},\"n\":{n},\"packed\":{packed},\"out\":\"{out}\",\"gflops\":{gflops:.1}}}",
            report.isa, report.kernel, report.threads
        );
    } else {
        println!(
            "{} ({}), {} threads, n = {n}, {out} out: {gflops:.1} GFLOP/s (median of {reps})",
            report.isa, report.kernel, report.threads
        );
    }
    Ok(())
}
