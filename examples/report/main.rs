//! Prints this machine's report as markdown, for BENCHMARKS.md: the CPU,
//! the ISAs halfkern sees, the machine's own ceilings (ceilings.rs), and
//! halfkern's conversions, square GEMM and decode GEMM beside their
//! ceiling and their peer, all measured in this one run (DESIGN.md
//! section 6).
//!
//! ```sh
//! cargo run --release --example report            # about 15 s on 2 cores
//! cargo run --release --example report -- --quick # fewer timings
//! cargo run --release --example report -- --decode 1,4,16 # decode rows only
//! cargo run --release --example report -- --decode 1,16 --threads 2 # on 2 threads
//! ```
//!
//! Every timing is the median of `--runs` samples (default 21, `--quick`
//! 7) after a warm-up; a sample repeats a call until it takes 2 ms. The
//! closures of one row group (each ISA and the peer) take their samples in
//! turns, so a busy moment of the machine slows them alike. halfkern runs
//! on one thread (a one-thread rayon pool, `Threads::Single`), the peers
//! too; `--threads N` runs the decode rows on N (an N-thread pool, both
//! sides), against the all-cores DRAM read and N times the FMA peak.
//! Buffers start on 64-byte boundaries.
//!
//! - Conversions: 64K elements, in L2; bytes read plus written against
//!   the L2 copy bound of the ISA's vector width (scalar: the widest), and
//!   `half`'s slice conversion as the peer.
//! - Square GEMM, n = 512, f32 C, packing included: against the FMA peak
//!   of the kernel's width (`vdpbf16ps` for the bf16 dot kernel), and the
//!   `gemm` crate 0.19 (f32; for f16 it writes f16 C, its native form; it
//!   has no bf16). With the feature `openblas-peer`, OpenBLAS's
//!   `cblas_sgemm` is a second peer of f32 (one thread;
//!   `OPENBLAS_CORETYPE=Haswell` for its AVX2 kernels on an AVX-512
//!   machine): `cargo run --release --features openblas-peer --example
//!   report`.
//! - Decode, n = k = 4096, m = 1 and 16: the weights rotate through
//!   matrices that together hold more than twice the L3, so no call finds
//!   its weights in cache. m = 1 against the one-core DRAM read bound
//!   (weight bytes per second), timed again in turns with the group's
//!   calls (a shared host's DRAM speed drifts by 20-40% within minutes);
//!   m = 16 against the FMA peak.

mod ceilings;
#[cfg(feature = "openblas-peer")]
#[path = "../../benches/common/openblas.rs"]
mod openblas;

use std::cell::Cell;
use std::hint::black_box;
use std::time::Instant;

use ceilings::{Aligned, Kind, Probe, Unit, Width};
use half::slice::HalfFloatSliceExt;
use halfkern::{Backend, Element, Gemm, Isa, MatMut, MatRef, Threads, bf16, f16};

/// How long one sample runs at least, in seconds.
const SAMPLE_S: f64 = 2e-3;

fn main() {
    let mut runs = 21;
    // `--decode 1,4,16`: only the decode rows, for these m.
    let mut decode_only: Option<Vec<usize>> = None;
    // `--nk`: decode weights in `Linear` layout (B = W^T, W row-major n x k).
    let mut nk = false;
    // `--threads N`: decode rows on N threads (halfkern and its peer).
    let mut threads = 1;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => runs = 7,
            "--nk" => nk = true,
            "--threads" => {
                threads = args
                    .next()
                    .and_then(|t| t.parse().ok())
                    .filter(|&t| t > 0)
                    .expect("--threads N");
            }
            "--runs" => {
                runs = args.next().and_then(|r| r.parse().ok()).expect("--runs N");
            }
            "--decode" => {
                let ms = args.next().expect("--decode M,M,..");
                let ms = ms.split(',').map(|m| m.parse().expect("--decode M,M,.."));
                decode_only = Some(ms.collect());
            }
            _ => {
                eprintln!(
                    "usage: report [--quick] [--runs N] [--decode M,M,..] [--nk] [--threads N]"
                );
                std::process::exit(2);
            }
        }
    }
    let before = CpuTicks::read();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (start, at_start) = (Instant::now(), CpuTicks::read());
    header(runs, CpuTicks::others_share(before, at_start));

    let (ceilings, mut dram) = measure_ceilings(runs);
    println!("| ceiling | loop | value | spread |");
    println!("|---|---|---|---|");
    for c in &ceilings {
        println!(
            "| {} | {} | {:.1} {} | ±{:.0}% |",
            c.id,
            c.how,
            c.value,
            unit_name(c.unit),
            c.spread * 100.0
        );
    }
    println!();

    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let mut rows = Vec::new();
    one.install(|| {
        let r = &mut rows;
        if let Some(ms) = &decode_only {
            for &m in ms {
                decode_group(r, &ceilings, &mut dram, runs, m, nk, threads);
            }
            return;
        }
        conversion::<f32, bf16>(r, &ceilings, runs, "f32->bf16", |s, d| {
            d.convert_from_f32_slice(s)
        });
        conversion::<f32, f16>(r, &ceilings, runs, "f32->f16", |s, d| {
            d.convert_from_f32_slice(s)
        });
        conversion::<bf16, f32>(r, &ceilings, runs, "bf16->f32", |s, d| {
            s.convert_to_f32_slice(d)
        });
        conversion::<f16, f32>(r, &ceilings, runs, "f16->f32", |s, d| {
            s.convert_to_f32_slice(d)
        });
        let gemm_f32 = peer_f32(512, 512, 512, false, 1);
        #[cfg(feature = "openblas-peer")]
        let blas = peer_openblas(512);
        let f32_peers: Vec<(String, &Peer<f32>)> = vec![
            ("gemm 0.19".into(), &gemm_f32),
            #[cfg(feature = "openblas-peer")]
            (openblas::label(), &blas),
        ];
        square::<f32>(r, &ceilings, runs, &f32_peers);
        square::<bf16>(r, &ceilings, runs, &[]);
        square::<f16>(
            r,
            &ceilings,
            runs,
            &[("gemm 0.19".into(), &peer_f16(512, 512, 512, false, 1))],
        );
        for m in [1, 16] {
            decode_group(r, &ceilings, &mut dram, runs, m, nk, threads);
        }
    });
    println!("| kernel | ISA (path) | halfkern | ceiling | of ceiling | peer | vs peer |");
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        let (ceiling, of) = match &r.ceiling {
            Some((c, x)) => (c.as_str(), format!("{:.0}%", x * 100.0)),
            None => ("", String::new()),
        };
        let peer: Vec<&str> = r.peers.iter().map(|(p, _)| p.as_str()).collect();
        let vs: Vec<String> = r.peers.iter().map(|(_, x)| format!("{x:.2}x")).collect();
        let (peer, vs) = (peer.join("; "), vs.join("; "));
        println!(
            "| {} | {} | {} | {ceiling} | {of} | {peer} | {vs} |",
            r.kernel, r.isa, r.value
        );
    }
    println!();
    let others = CpuTicks::others_share(at_start, CpuTicks::read());
    let others = others.map_or(String::new(), |o| {
        format!(
            "; other processes used {:.0}% of the CPUs meanwhile",
            o * 100.0
        )
    });
    println!(
        "Whole report: {:.0} s{others}.",
        start.elapsed().as_secs_f64()
    );
}

/// The decode rows of one m, each type in turn. m = 1 is bound by DRAM,
/// whose speed on a shared host drifts: its rows take turns with the DRAM
/// probe itself. `nk`: the weights in `Linear` layout (see [`decode`]).
fn decode_group(
    r: &mut Vec<Row>,
    ceilings: &[Ceiling],
    dram: &mut Option<Probe>,
    runs: usize,
    m: usize,
    nk: bool,
    threads: usize,
) {
    // The same-turns probe reads DRAM on one core: the ceiling of one
    // thread only (more take the table's all-cores DRAM read).
    let c = Ceilings {
        all: ceilings,
        dram: dram.as_mut().filter(|_| m == 1 && threads == 1),
    };
    let shape = Decode { m, nk, threads };
    let peer = peer_f32(m, 4096, 4096, nk, threads);
    decode::<f32>(r, c, runs, shape, Some(&peer as &Peer<f32>));
    let c = Ceilings {
        all: ceilings,
        dram: dram.as_mut().filter(|_| m == 1 && threads == 1),
    };
    decode::<bf16>(r, c, runs, shape, None);
    let c = Ceilings {
        all: ceilings,
        dram: dram.as_mut().filter(|_| m == 1 && threads == 1),
    };
    let peer = peer_f16(m, 4096, 4096, nk, threads);
    decode::<f16>(r, c, runs, shape, Some(&peer as &Peer<f16>));
}

/// One decode shape: `m` rows, weights in `Linear` layout (`nk`), on
/// `threads` threads.
#[derive(Clone, Copy)]
struct Decode {
    m: usize,
    nk: bool,
    threads: usize,
}

/// The machine, the version, the date, the command.
fn header(runs: usize, others: Option<f64>) {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo
            .lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let mut cpu = field("model name")
        .or_else(lscpu_model)
        .unwrap_or("unknown CPU".into());
    if let (Some(f), Some(m)) = (field("cpu family"), field("model")) {
        cpu = format!("{cpu} (family {f} model {m})");
    }
    let isas: Vec<&str> = Isa::available().into_iter().map(Isa::name).collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mib = |b: Option<usize>| b.map_or("?".into(), |b| format!("{} KiB", b >> 10));
    let others = others.map_or("?".into(), |o| format!("{:.0}%", o * 100.0));
    println!("### {cpu}, {}", today());
    println!();
    println!(
        "halfkern {}; ISAs {}; {cores} cores; L2 {}, L3 {}; other processes used {others} of the CPUs in the half second before.",
        env!("CARGO_PKG_VERSION"),
        isas.join(", "),
        mib(ceilings::cache_bytes(2)),
        mib(ceilings::cache_bytes(3)),
    );
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args = if args.is_empty() {
        String::new()
    } else {
        format!(" -- {}", args.join(" "))
    };
    println!("`cargo run --release --example report{args}`: medians of {runs} timings.");
    println!();
}

/// Clock ticks from Linux's `/proc`: all CPUs' total and idle, and this
/// process's own, to tell how busy the machine was besides this run.
#[derive(Clone, Copy)]
struct CpuTicks {
    total: u64,
    idle: u64,
    own: u64,
}

impl CpuTicks {
    fn read() -> Option<CpuTicks> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let cpu: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().ok())
            .collect::<Option<_>>()?;
        let own = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields 14 and 15 (utime, stime) count from the last ')'.
        let after: Vec<&str> = own.rsplit_once(')')?.1.split_whitespace().collect();
        Some(CpuTicks {
            total: cpu.iter().take(8).sum(),
            idle: cpu.get(3)? + cpu.get(4)?,
            own: after.get(11)?.parse::<u64>().ok()? + after.get(12)?.parse::<u64>().ok()?,
        })
    }

    /// The share of all CPUs' time between `a` and `b` that other
    /// processes kept busy.
    fn others_share(a: Option<CpuTicks>, b: Option<CpuTicks>) -> Option<f64> {
        let (a, b) = (a?, b?);
        let total = b.total.checked_sub(a.total).filter(|&t| t > 0)?;
        let busy = total.saturating_sub(b.idle.saturating_sub(a.idle));
        let others = busy.saturating_sub(b.own.saturating_sub(a.own));
        Some(others as f64 / total as f64)
    }
}

/// `Model name` from `lscpu` (aarch64 kernels leave it out of cpuinfo).
fn lscpu_model() -> Option<String> {
    let out = std::process::Command::new("lscpu").output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let line = text.lines().find(|l| l.starts_with("Model name"))?;
    Some(line.split_once(':')?.1.trim().to_string())
}

/// Today's UTC date, `YYYY-MM-DD` (days to civil date, Hinnant's method).
fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year}-{month:02}-{day:02}")
}

fn unit_name(u: Unit) -> &'static str {
    match u {
        Unit::Flop => "GFLOP/s",
        Unit::Byte => "GB/s",
    }
}

/// One measured ceiling, in GFLOP/s or GB/s.
struct Ceiling {
    kind: Kind,
    id: String,
    how: String,
    unit: Unit,
    value: f64,
    /// Half the interquartile range over the median.
    spread: f64,
}

/// Every ceiling, and the one-core DRAM probe kept for the decode rows.
fn measure_ceilings(runs: usize) -> (Vec<Ceiling>, Option<Probe>) {
    let mut out = Vec::new();
    let mut dram = None;
    for mut p in ceilings::probes() {
        let samples = sample(runs, &mut [&mut p.run]).remove(0);
        let q = |f: f64| quantile(&samples, f);
        out.push(Ceiling {
            kind: p.kind,
            id: p.id.clone(),
            how: p.how.clone(),
            unit: p.unit,
            value: p.work / q(0.5) / 1e9,
            spread: (q(0.75) - q(0.25)) / 2.0 / q(0.5),
        });
        if p.kind == Kind::DramOne {
            dram = Some(p);
        }
    }
    (out, dram)
}

/// The ceilings a decode group compares with; `dram`, where given, is
/// timed again in turns with the group.
struct Ceilings<'a> {
    all: &'a [Ceiling],
    dram: Option<&'a mut Probe>,
}

fn find(ceilings: &[Ceiling], kind: Kind) -> Option<&Ceiling> {
    ceilings.iter().find(|c| c.kind == kind)
}

/// Seconds per call of each closure: `runs` samples each, taken in turns
/// after one warm-up call; a sample repeats the call until it lasts
/// [`SAMPLE_S`].
fn sample(runs: usize, fs: &mut [&mut dyn FnMut()]) -> Vec<Vec<f64>> {
    let reps: Vec<usize> = fs
        .iter_mut()
        .map(|f| {
            f();
            let t = Instant::now();
            f();
            (SAMPLE_S / t.elapsed().as_secs_f64())
                .ceil()
                .clamp(1.0, 1e5) as usize
        })
        .collect();
    let mut out = vec![Vec::with_capacity(runs); fs.len()];
    for _ in 0..runs {
        for ((f, &r), o) in fs.iter_mut().zip(&reps).zip(&mut out) {
            let t = Instant::now();
            for _ in 0..r {
                f();
            }
            o.push(t.elapsed().as_secs_f64() / r as f64);
        }
    }
    out
}

fn quantile(samples: &[f64], q: f64) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() - 1) as f64 * q).round() as usize]
}

/// Median seconds per call of each closure (see [`sample`]).
fn medians(runs: usize, fs: &mut [&mut dyn FnMut()]) -> Vec<f64> {
    sample(runs, fs).iter().map(|s| quantile(s, 0.5)).collect()
}

/// One line of the halfkern table.
struct Row {
    kernel: String,
    isa: String,
    value: String,
    /// The ceiling's name and value, and the fraction of it reached.
    ceiling: Option<(String, f64)>,
    /// Each peer's name and figure, and halfkern's speed-up over it.
    peers: Vec<(String, f64)>,
}

fn ceiling_text(c: &Ceiling) -> String {
    format!("{} {:.1}", c.id, c.value)
}

/// The vector width of an ISA's conversions and copies (scalar: the widest
/// this CPU has, the machine's bound).
fn width_of(isa: Isa) -> Option<Width> {
    let widths = Width::available();
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Some(Width::Ymm),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx512Bf16 | Isa::Amx => Some(Width::Zmm),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon | Isa::NeonBf16 => Some(Width::Neon),
        _ => widths.last().copied(),
    }
}

/// The peak a GEMM path runs against: the dot peak for the `vdpbf16ps`
/// kernel, none for AMX tiles and BFMMLA (not measured here), else the FMA
/// peak of the ISA's width.
fn gemm_peak(isa: Isa, kernel: &str) -> Option<Kind> {
    if kernel.contains("tdpbf16") || kernel.contains("bfmmla") || isa == Isa::Scalar {
        None
    } else if kernel.contains("dpbf16") {
        Some(Kind::DotBf16)
    } else {
        width_of(isa).map(Kind::Fma)
    }
}

/// `n` values of every magnitude a training run sees.
fn inputs<T: Element>(n: usize, seed: u64) -> Vec<T> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ seed;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let unit = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            T::from_f32(unit * 2f32.powi((state % 24) as i32 - 12))
        })
        .collect()
}

fn conversion<S: Element, D: Element>(
    rows: &mut Vec<Row>,
    ceilings: &[Ceiling],
    runs: usize,
    name: &str,
    peer: fn(&[S], &mut [D]),
) {
    let n = 64 << 10;
    let src = Aligned::from_slice(&inputs::<S>(n, 1));
    let isas = Isa::available();
    let mut dsts: Vec<Aligned<D>> = (0..=isas.len())
        .map(|_| Aligned::new(D::default(), n))
        .collect();
    let (peer_dst, isa_dsts) = dsts.split_last_mut().unwrap();
    let mut fs: Vec<Box<dyn FnMut() + '_>> = isas
        .iter()
        .zip(isa_dsts)
        .map(|(&isa, dst)| {
            let backend = Backend::new(isa).unwrap();
            let src = &src;
            Box::new(move || {
                backend
                    .convert(black_box(src.as_slice()), dst.as_mut_slice())
                    .unwrap();
            }) as Box<dyn FnMut()>
        })
        .collect();
    fs.push(Box::new(|| {
        peer(black_box(src.as_slice()), peer_dst.as_mut_slice())
    }));
    let mut refs: Vec<&mut dyn FnMut()> = fs.iter_mut().map(|f| &mut **f as _).collect();
    let t = medians(runs, &mut refs);
    let t_peer = *t.last().unwrap();
    let bytes = (n * (size_of::<S>() + size_of::<D>())) as f64;
    for (&isa, &t) in isas.iter().zip(&t) {
        let gbs = bytes / t / 1e9;
        let copy = width_of(isa).and_then(|w| find(ceilings, Kind::CopyL2(w)));
        rows.push(Row {
            kernel: format!("{name}, 64K"),
            isa: isa.name().into(),
            value: format!("{:.2} Gelem/s, {gbs:.1} GB/s", n as f64 / t / 1e9),
            ceiling: copy.map(|c| (ceiling_text(c), gbs / c.value)),
            peers: vec![(
                format!("half 2.7: {:.2} Gelem/s", n as f64 / t_peer / 1e9),
                t_peer / t,
            )],
        });
    }
}

/// A peer library's GEMM: `(a, b)`, its own C.
type Peer<T> = dyn Fn(&[T], &[T]);

fn isa_path(isa: Isa, kernel: &str) -> String {
    let short = kernel
        .strip_prefix(isa.name())
        .and_then(|k| k.strip_prefix('-'))
        .unwrap_or(kernel);
    format!("{} ({short})", isa.name())
}

/// Square GEMM, n = 512, one thread, every SIMD ISA and the peers
/// (named).
fn square<T: Element>(
    rows: &mut Vec<Row>,
    ceilings: &[Ceiling],
    runs: usize,
    peers: &[(String, &Peer<T>)],
) {
    let n = 512;
    let (a, b) = (
        Aligned::from_slice(&inputs::<T>(n * n, 2)),
        Aligned::from_slice(&inputs::<T>(n * n, 3)),
    );
    let isas: Vec<Isa> = Isa::available()
        .into_iter()
        .filter(|&i| i != Isa::Scalar)
        .collect();
    let mut outs: Vec<Aligned<f32>> = isas.iter().map(|_| Aligned::new(0.0, n * n)).collect();
    let mut kernels = Vec::new();
    let mut fs: Vec<Box<dyn FnMut() + '_>> = Vec::new();
    for (&isa, out) in isas.iter().zip(&mut outs) {
        let backend = Backend::new(isa).unwrap();
        let (a, b) = (&a, &b);
        let mut call = move || {
            backend
                .gemm(
                    MatRef::row_major(black_box(a.as_slice()), n, n).unwrap(),
                    MatRef::row_major(black_box(b.as_slice()), n, n).unwrap(),
                    MatMut::row_major(out.as_mut_slice(), n, n).unwrap(),
                    &Gemm::new().threads(Threads::Single),
                )
                .unwrap()
        };
        kernels.push(call().kernel);
        fs.push(Box::new(move || {
            call();
        }));
    }
    for (_, peer) in peers {
        fs.push(Box::new(|| {
            peer(black_box(a.as_slice()), black_box(b.as_slice()))
        }));
    }
    let mut refs: Vec<&mut dyn FnMut()> = fs.iter_mut().map(|f| &mut **f as _).collect();
    let t = medians(runs, &mut refs);
    let flops = 2.0 * (n * n * n) as f64;
    let t_peers = &t[isas.len()..];
    for ((&isa, kernel), &t) in isas.iter().zip(&kernels).zip(&t) {
        let gf = flops / t / 1e9;
        let peak = gemm_peak(isa, kernel).and_then(|k| find(ceilings, k));
        rows.push(Row {
            kernel: format!("gemm {} n=512, 1T", T::DTYPE.name()),
            isa: isa_path(isa, kernel),
            value: format!("{gf:.1} GFLOP/s"),
            ceiling: peak.map(|c| (ceiling_text(c), gf / c.value)),
            peers: peers
                .iter()
                .zip(t_peers)
                .map(|((name, _), &tp)| {
                    (format!("{name}: {:.1} GFLOP/s", flops / tp / 1e9), tp / t)
                })
                .collect(),
        });
    }
}

/// Decode GEMM, n = k = 4096, `m` rows, one thread, weights out of cache:
/// B row-major `k x n`, or with `nk` the transpose of row-major weights
/// `W (n x k)` (what `x W^T` with `Linear` weights passes), on both sides.
fn decode<T: Element>(
    rows: &mut Vec<Row>,
    ceilings: Ceilings<'_>,
    runs: usize,
    shape: Decode,
    peer: Option<&Peer<T>>,
) {
    let Decode { m, nk, threads } = shape;
    let (n, k) = (4096, 4096);
    let bytes = k * n * size_of::<T>();
    let l3 = ceilings::cache_bytes(3).unwrap_or(64 << 20);
    let count = ((2 * l3).div_ceil(bytes) + 1).max(2);
    let first = Aligned::from_slice(&inputs::<T>(k * n, 4));
    let weights: Vec<Aligned<T>> = (0..count).map(|_| first.clone()).collect();
    drop(first);
    let x = Aligned::from_slice(&inputs::<T>(m * k, 5));
    // One counter for every closure: the matrix a call reads was last read
    // `count - 1` calls ago, more than twice the L3 of other weights ago.
    let next = Cell::new(0usize);
    let take = || {
        let i = next.get();
        next.set((i + 1) % count);
        weights[i].as_slice()
    };
    let isas: Vec<Isa> = Isa::available()
        .into_iter()
        .filter(|&i| i != Isa::Scalar)
        .collect();
    let mut outs: Vec<Aligned<f32>> = isas.iter().map(|_| Aligned::new(0.0, m * n)).collect();
    let mut kernels = Vec::new();
    let mut fs: Vec<Box<dyn FnMut() + '_>> = Vec::new();
    for (&isa, out) in isas.iter().zip(&mut outs) {
        let backend = Backend::new(isa).unwrap();
        let (x, take) = (&x, &take);
        let mut call = move || {
            backend
                .gemm(
                    MatRef::row_major(black_box(x.as_slice()), m, k).unwrap(),
                    if nk {
                        MatRef::row_major(black_box(take()), n, k).unwrap().t()
                    } else {
                        MatRef::row_major(black_box(take()), k, n).unwrap()
                    },
                    MatMut::row_major(out.as_mut_slice(), m, n).unwrap(),
                    &Gemm::new().threads(if threads == 1 {
                        Threads::Single
                    } else {
                        Threads::Count(threads)
                    }),
                )
                .unwrap()
        };
        kernels.push(call().kernel);
        fs.push(Box::new(move || {
            call();
        }));
    }
    if let Some(peer) = peer {
        fs.push(Box::new(|| {
            peer(black_box(x.as_slice()), black_box(take()))
        }));
    }
    let mut refs: Vec<&mut dyn FnMut()> = fs.iter_mut().map(|f| &mut **f as _).collect();
    let Ceilings { all, dram } = ceilings;
    let dram_work = dram.as_ref().map(|p| p.work);
    if let Some(p) = dram {
        refs.push(&mut p.run);
    }
    let mut t = medians(runs, &mut refs);
    // DRAM read in these turns, as the ceiling of m = 1.
    let dram_here = dram_work.map(|w| (w / t.pop().unwrap() / 1e9, "same turns"));
    let dram_kind = if threads == 1 {
        Kind::DramOne
    } else {
        Kind::DramAll
    };
    let dram_one = dram_here.or_else(|| find(all, dram_kind).map(|c| (c.value, "")));
    let flops = 2.0 * (m * n * k) as f64;
    let t_peer = peer.map(|_| *t.last().unwrap());
    for ((&isa, kernel), &t) in isas.iter().zip(&kernels).zip(&t) {
        let (gbs, gf) = (bytes as f64 / t / 1e9, flops / t / 1e9);
        let ceiling = if m == 1 {
            dram_one.map(|(v, note)| {
                let note = if note.is_empty() {
                    String::new()
                } else {
                    format!(" ({note})")
                };
                let which = if threads == 1 { "1core" } else { "all-cores" };
                (format!("dram-read-{which}{note} {v:.1}"), gbs / v)
            })
        } else {
            // One core's peak times the threads.
            let peak = gemm_peak(isa, kernel).and_then(|k| find(all, k));
            peak.map(|c| {
                let times = if threads == 1 {
                    String::new()
                } else {
                    format!("{threads} x ")
                };
                (
                    format!("{times}{}", ceiling_text(c)),
                    gf / c.value / threads as f64,
                )
            })
        };
        rows.push(Row {
            kernel: format!(
                "decode {} m={m} n=k=4096{}, {threads}T",
                T::DTYPE.name(),
                if nk { ", W^T" } else { "" }
            ),
            isa: isa_path(isa, kernel),
            value: format!("{gbs:.1} GB/s, {gf:.1} GFLOP/s"),
            ceiling,
            peers: Vec::from_iter(t_peer.map(|tp| {
                let p = if m == 1 {
                    format!("gemm 0.19: {:.1} GB/s", bytes as f64 / tp / 1e9)
                } else {
                    format!("gemm 0.19: {:.1} GFLOP/s", flops / tp / 1e9)
                };
                (p, tp / t)
            })),
        });
    }
}

/// The `gemm` crate's parallelism for `threads` threads.
fn parallelism(threads: usize) -> gemm::Parallelism {
    if threads == 1 {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(threads)
    }
}

/// B's column and row strides for the `gemm` crate: row-major `k x n`, or
/// with `nk` the transpose of a row-major `n x k`.
fn b_strides(n: usize, k: usize, nk: bool) -> (isize, isize) {
    if nk { (k as isize, 1) } else { (1, n as isize) }
}

/// The `gemm` crate, f32 C from f32 inputs, on `threads` threads (of the
/// current rayon pool); its own C.
fn peer_f32(m: usize, n: usize, k: usize, nk: bool, threads: usize) -> impl Fn(&[f32], &[f32]) {
    let (b_cs, b_rs) = b_strides(n, k, nk);
    let c = std::sync::Mutex::new(vec![0.0f32; m * n]);
    move |a, b| {
        assert!(a.len() == m * k && b.len() == k * n);
        let mut c = c.lock().unwrap();
        // SAFETY: row-major m x k, k x n and m x n buffers of exactly those
        // sizes (asserted above); the strides stay inside them.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                k as isize,
                b.as_ptr(),
                b_cs,
                b_rs,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism(threads),
            )
        }
    }
}

/// OpenBLAS's `cblas_sgemm`, square n, one thread; its own C.
#[cfg(feature = "openblas-peer")]
fn peer_openblas(n: usize) -> impl Fn(&[f32], &[f32]) {
    let c = std::sync::Mutex::new(vec![0.0f32; n * n]);
    move |a, b| openblas::sgemm(n, n, n, a, b, &mut c.lock().unwrap(), 1)
}

/// The `gemm` crate, f16 x f16 -> f16 C (its native form), one thread.
fn peer_f16(m: usize, n: usize, k: usize, nk: bool, threads: usize) -> impl Fn(&[f16], &[f16]) {
    let (b_cs, b_rs) = b_strides(n, k, nk);
    let c = std::sync::Mutex::new(vec![f16::ZERO; m * n]);
    move |a, b| {
        assert!(a.len() == m * k && b.len() == k * n);
        let mut c = c.lock().unwrap();
        // SAFETY: as in `peer_f32`.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                k as isize,
                b.as_ptr(),
                b_cs,
                b_rs,
                f16::ZERO,
                f16::ONE,
                false,
                false,
                false,
                parallelism(threads),
            )
        }
    }
}
