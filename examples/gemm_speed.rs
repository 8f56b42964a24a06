//! Times `halfkern::gemm` for bf16 x bf16 -> f32 (or bf16 with `--out
//! bf16`, what `torch.matmul` returns for bf16 inputs; `--dtype f16` or
//! `--dtype f32` for those inputs), `m x k` times
//! `k x n` (square `n` unless `--m`/`--k` say otherwise), packing included:
//! the median of `reps` calls after two warm-up calls.
//!
//! ```text
//! cargo run --release --example gemm_speed -- --n 2048 --threads 1 --reps 10 --json
//! cargo run --release --example gemm_speed -- --m 4 --n 4096 --k 4096 --b packed
//! ```
//!
//! `--b` picks B's form: `row` (row-major `k x n`, the default), `nk` (the
//! transpose of a row-major `n x k` matrix, the layout of `torch.nn.Linear`
//! weights that `F.linear` multiplies by) or `packed` (packed once
//! beforehand, [`halfkern::PackedB`], as for weights, timing `gemm_packed`;
//! `--packed` says the same).
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

use halfkern::{Element, Gemm, GemmReport, MatMut, MatRef, PackedB, Threads, bf16, f16};

/// What to time: one square GEMM of `n`.
struct Case<'a, T: Element> {
    a: &'a [T],
    b: &'a [T],
    pb: &'a PackedB<T>,
    m: usize,
    n: usize,
    k: usize,
    form: Form,
    params: &'a Gemm<'a>,
}

/// How B is handed to halfkern (see the module docs' `--b`).
#[derive(Clone, Copy, PartialEq)]
enum Form {
    Row,
    Nk,
    Packed,
}

impl<T: Element> Case<'_, T> {
    fn run<C: Element>(&self, c: &mut [C]) -> Result<GemmReport, halfkern::Error> {
        let (m, n, k) = (self.m, self.n, self.k);
        let (av, cv) = (
            MatRef::row_major(self.a, m, k)?,
            MatMut::row_major(c, m, n)?,
        );
        match self.form {
            Form::Packed => halfkern::gemm_packed(av, self.pb, cv, self.params),
            Form::Row => halfkern::gemm(av, MatRef::row_major(self.b, k, n)?, cv, self.params),
            Form::Nk => halfkern::gemm(av, MatRef::row_major(self.b, n, k)?.t(), cv, self.params),
        }
    }

    /// One timed call per line of stdin, its seconds on stdout, after two
    /// warm-up calls.
    fn serve<C: Element>(&self) -> Result<(), Box<dyn std::error::Error>> {
        use std::io::{BufRead, Write};
        let mut c = vec![C::from_f32(0.0); self.m * self.n];
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
        let mut c = vec![C::from_f32(0.0); self.m * self.n];
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
    let (mut m, mut k) = (None, None);
    let (mut json, mut out_bf16, mut serve) = (false, false, false);
    let mut form = Form::Row;
    let mut dtype = String::from("bf16");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || -> Result<usize, Box<dyn std::error::Error>> {
            Ok(args.next().ok_or(format!("{arg} needs a value"))?.parse()?)
        };
        match arg.as_str() {
            "--n" => n = value()?,
            "--m" => m = Some(value()?),
            "--k" => k = Some(value()?),
            "--threads" => threads = value()?,
            "--reps" => reps = value()?.max(1),
            "--json" => json = true,
            "--packed" => form = Form::Packed,
            "--b" => {
                form = match args.next().as_deref() {
                    Some("row") => Form::Row,
                    Some("nk") => Form::Nk,
                    Some("packed") => Form::Packed,
                    other => {
                        return Err(format!("--b takes row, nk or packed, not {other:?}").into());
                    }
                }
            }
            "--serve" => serve = true,
            "--dtype" => dtype = args.next().unwrap_or_default(),
            "--out" => match args.next().as_deref() {
                Some("f32") => out_bf16 = false,
                Some("bf16") => out_bf16 = true,
                other => return Err(format!("--out takes f32 or bf16, not {other:?}").into()),
            },
            _ => return Err(format!("unknown argument {arg}; see the file's docs").into()),
        }
    }
    let (m, k) = (m.unwrap_or(n), k.unwrap_or(n));
    let params = Gemm::new().threads(if threads <= 1 {
        Threads::Single
    } else {
        Threads::Count(threads)
    });
    let opts = Opts {
        m,
        n,
        k,
        form,
        json,
        out_bf16,
        serve,
        reps,
    };
    match dtype.as_str() {
        "bf16" => time_inputs::<bf16>(&opts, &params),
        "f16" => time_inputs::<f16>(&opts, &params),
        "f32" => time_inputs::<f32>(&opts, &params),
        other => Err(format!("--dtype takes bf16, f16 or f32, not {other:?}").into()),
    }
}

/// The command line, parsed.
struct Opts {
    m: usize,
    n: usize,
    k: usize,
    form: Form,
    json: bool,
    out_bf16: bool,
    serve: bool,
    reps: usize,
}

/// Builds the inputs as `T` and times (or serves) the call.
fn time_inputs<T: Element>(
    opts: &Opts,
    params: &Gemm<'_>,
) -> Result<(), Box<dyn std::error::Error>> {
    let Opts {
        m,
        n,
        k,
        form,
        json,
        out_bf16,
        serve,
        reps,
    } = *opts;
    // Inputs in [-1, 1) from a fixed LCG: the speed does not depend on them.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        T::from_f32((state >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
    };
    let a: Vec<T> = (0..m * k).map(|_| next()).collect();
    let b: Vec<T> = (0..k * n).map(|_| next()).collect();
    let pb = PackedB::new(MatRef::row_major(&b, k, n)?)?;
    let case = Case {
        a: &a,
        b: &b,
        pb: &pb,
        m,
        n,
        k,
        form,
        params,
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
    let gflops = 2.0 * (m * n * k) as f64 / median / 1e9;
    // Weight bytes per second: what bounds decode shapes.
    let gbps = (size_of::<T>() * n * k) as f64 / median / 1e9;
    let b = ["row", "nk", "packed"][form as usize];
    if json {
        println!(
            "{{\"isa\":\"{}\",\"kernel\":\"{}\",\"threads\":{},\"m\":{m},\"n\":{n},\"k\":{k},\"b\":\"{b}\",\"packed\":{},\"out\":\"{out}\",\"gflops\":{gflops:.1},\"weight_gbps\":{gbps:.2}}}",
            report.isa,
            report.kernel,
            report.threads,
            form == Form::Packed
        );
    } else {
        println!(
            "{} ({}), {} threads, m = {m}, n = {n}, k = {k}, B {b}, {out} out: {gflops:.1} GFLOP/s, {gbps:.2} GB/s of B (median of {reps})",
            report.isa, report.kernel, report.threads
        );
    }
    Ok(())
}
