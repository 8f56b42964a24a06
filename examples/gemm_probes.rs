//! Timing probes of the GEMM's parts, for looking into where time goes
//! (numbers for BENCHMARKS.md come from `cargo bench`; these take the
//! GEMM apart instead). One probe per run:
//!
//! ```text
//! cargo run --release --example gemm_probes -- driver_overhead
//! cargo run --release --example gemm_probes -- amx_kernel_speed
//! cargo run --release --example gemm_probes -- amx_loop_parts
//! PROBE_THREADS=16 cargo run --release --example gemm_probes -- amx_block_speed
//! PROBE_THREADS=2,4,8,16 cargo run --release --example gemm_probes -- pool_latency
//! ```
//!
//! - `driver_overhead` (any x86-64 with AVX512_BF16): packing B, then the
//!   BLIS loops around a stand-in kernel that only stays busy about as
//!   long as the AMX kernel computes (A packing, epilogue, stores to C),
//!   bf16 -> f32 and bf16 -> bf16. `PROBE_THREADS` (default 1; the busy
//!   time is then divided among them), `PROBE_N` (comma-separated, default
//!   512,1024,2048,4096), `PROBE_BUSY` (multiplies per 256 slots, default
//!   745; 0 times the loops alone).
//! - `amx_kernel_speed`: the AMX microkernel alone over packed panels
//!   already in cache, in the BLIS loop order (A~ panels innermost).
//! - `amx_loop_parts`: one 256 x 1024 block over k = 2048 in
//!   `blis::block`'s order, then with one cost taken away at a time.
//! - `amx_block_speed`: one `MC x NC` block per thread (`PROBE_THREADS`)
//!   for KC = 256 and 512, two loop orders, with and without prefetch.
//!
//! - `pool_latency` (any machine): what a parallel call costs before any
//!   work, on rayon's global pool: calls of `PROBE_THREADS` items that do
//!   nothing, made back to back and with a pause between them (workers
//!   that found no work fall asleep), through `into_par_iter` (what the
//!   GEMM's splits use), `scope` with one spawn per item, and `broadcast`
//!   (where the items are the whole pool); the median call, and the median
//!   over calls of the latest start of an item.
//!
//! They reach the crate's internals through the hidden `internals`
//! feature (`halfkern::__internals`), which the crate's own examples get
//! through its self dev-dependency.

#[cfg(target_arch = "x86_64")]
use halfkern::__internals::{Ahead, AmxKernel, BusyDriver};
#[cfg(target_arch = "x86_64")]
use halfkern::{Element, MatMut, MatRef, bf16};

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    if name == "pool_latency" {
        return pool_latency();
    }
    #[cfg(target_arch = "x86_64")]
    match name.as_str() {
        "driver_overhead" => return driver_overhead(),
        "amx_kernel_speed" => return amx_kernel_speed(),
        "amx_loop_parts" => return amx_loop_parts(),
        "amx_block_speed" => return amx_block_speed(),
        _ => {}
    }
    eprintln!(
        "usage: gemm_probes pool_latency | driver_overhead | amx_kernel_speed | amx_loop_parts \
         | amx_block_speed (all but the first x86-64 only; got {name:?})"
    );
    std::process::exit(2);
}

/// An environment variable parsed, or `default` when it is not set.
#[cfg(target_arch = "x86_64")]
fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).map_or(default, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v} does not parse"))
    })
}

/// Packing B, then the best of three runs of the loops at `n`.
#[cfg(target_arch = "x86_64")]
fn time_loops<C: Element>(busy: BusyDriver, n: usize, threads: usize) -> (f64, f64) {
    let a = vec![bf16::from_f32(1.0); n * n];
    let b = vec![bf16::from_f32(1.0); n * n];
    let mut c = vec![C::from_f32(0.0); n * n];
    let av = MatRef::row_major(&a, n, n).unwrap();
    let bv = MatRef::row_major(&b, n, n).unwrap();
    let reps = (4096 / n).pow(2).max(1);
    let (mut pack, mut loops) = (f64::MAX, f64::MAX);
    for _ in 0..3 {
        let t0 = std::time::Instant::now();
        for _ in 0..reps {
            busy.recycle(busy.pack_b(bv, threads));
        }
        pack = pack.min(t0.elapsed().as_secs_f64() / reps as f64);
        let p = busy.pack_b(bv, threads);
        let t0 = std::time::Instant::now();
        for _ in 0..reps {
            let cv = MatMut::row_major(&mut c, n, n).unwrap();
            busy.run(av, &p, cv, threads);
        }
        loops = loops.min(t0.elapsed().as_secs_f64() / reps as f64);
        busy.recycle(p);
    }
    (pack, loops)
}

/// See the module docs.
#[cfg(target_arch = "x86_64")]
fn driver_overhead() {
    let per_256: usize = env_or("PROBE_BUSY", 745);
    let Some(busy) = BusyDriver::new(per_256) else {
        eprintln!("no AVX512_BF16 here");
        return;
    };
    let threads: usize = env_or("PROBE_THREADS", 1);
    let ns: Vec<usize> = std::env::var("PROBE_N").map_or(vec![512, 1024, 2048, 4096], |v| {
        v.split(',').map(|x| x.parse().unwrap()).collect()
    });
    for n in ns {
        let busy_s = 2.0 * (n as f64).powi(3) / 1370e9 / threads as f64;
        let busy_s = busy_s * per_256 as f64 / 745.0;
        for (out, (pack, loops)) in [
            ("f32", time_loops::<f32>(busy, n, threads)),
            ("bf16", time_loops::<bf16>(busy, n, threads)),
        ] {
            eprintln!(
                "n={n}, {threads} threads, {out} out: pack B {:.2} ms, loops {:.2} ms of which the busy kernel {:.2} ms",
                pack * 1e3,
                loops * 1e3,
                busy_s * 1e3
            );
        }
    }
}

/// `len` f32 slots, each `x`, starting on a cache line (as the driver's
/// packed panels and tile workspace do).
#[cfg(target_arch = "x86_64")]
struct Aligned {
    buf: Vec<f32>,
    off: usize,
    len: usize,
}

#[cfg(target_arch = "x86_64")]
impl Aligned {
    fn new(len: usize, x: f32) -> Self {
        let buf = vec![x; len + 16];
        let off = buf.as_ptr().align_offset(64).min(16);
        Aligned { buf, off, len }
    }
    fn get(&self) -> &[f32] {
        &self.buf[self.off..self.off + self.len]
    }
    fn get_mut(&mut self) -> &mut [f32] {
        &mut self.buf[self.off..self.off + self.len]
    }
}

/// A pair of bf16 ones, one packed slot.
#[cfg(target_arch = "x86_64")]
const ONES: f32 = f32::from_bits(0x3F80_3F80);

/// Slots of one packed group of A~ or B~ (32 k values).
#[cfg(target_arch = "x86_64")]
const GROUP_SLOTS: usize = AmxKernel::ROW_GROUP * AmxKernel::MR;

/// Kernel-only speed: the microkernel over packed panels already in
/// cache, `bp` B~ micro-panels (KC deep) times `ap` A~ panels, in the
/// BLIS loop order (A~ panels innermost).
#[cfg(target_arch = "x86_64")]
fn amx_kernel_speed() {
    let Some(kern) = AmxKernel::new() else {
        eprintln!("no AMX here");
        return;
    };
    let (mr, nr) = (AmxKernel::MR, AmxKernel::NR);
    // (KC, B~ panels, A~ panels): KC = 128 and 256 keep one A~ and
    // one B~ panel in L1 (16 and 32 KiB), 512 does not (64 KiB).
    let shapes = [
        (128, 1, 1),
        (256, 1, 1),
        (512, 1, 1),
        (512, 1, 4),
        (512, 16, 1),
        (512, 16, 4),
        (512, 16, 16),
    ];
    for (kc, bp, ap) in shapes {
        let slots = kc / 2;
        let groups = slots / AmxKernel::ROW_GROUP;
        let a = Aligned::new(ap * groups * GROUP_SLOTS, ONES);
        let b = Aligned::new(bp * groups * GROUP_SLOTS, ONES);
        let (a, b) = (a.get(), b.get());
        let mut tile = Aligned::new(mr * nr, 0.0);
        let tile = tile.get_mut();
        let calls = 4096 * 512 / kc / (bp * ap);
        let run = |tile: &mut [f32]| {
            for _ in 0..calls {
                for j in 0..bp {
                    for i in 0..ap {
                        let (a, b) = (&a[i * slots * mr..], &b[j * slots * nr..]);
                        kern.kernel(slots, a, b, tile, true);
                    }
                }
            }
        };
        run(tile);
        let t0 = std::time::Instant::now();
        run(tile);
        let secs = t0.elapsed().as_secs_f64();
        let flops = (calls * bp * ap) as f64 * 2.0 * (mr * nr * 2 * slots) as f64;
        eprintln!(
            "KC {kc}, B~ panels {bp:2}, A~ panels {ap:2}: {:.0} GFLOP/s",
            flops / secs / 1e9
        );
        assert!(tile.iter().all(|x| x.is_finite()));
    }
}

/// `amx_block_speed`'s variants: (KC, A~ panels inner, the next panel
/// prefetched).
#[cfg(target_arch = "x86_64")]
const VARIANTS: [(usize, bool, bool); 8] = [
    (256, true, false),
    (256, true, true),
    (256, false, false),
    (256, false, true),
    (512, true, false),
    (512, true, true),
    (512, false, false),
    (512, false, true),
];

/// One thread's part of [`amx_block_speed`]: the best of three seconds
/// per variant, each variant started on all threads at once.
#[cfg(target_arch = "x86_64")]
fn block_probe_thread(kern: AmxKernel, start: &std::sync::Barrier) -> Vec<f64> {
    let (mp, np, k) = (5usize, 32usize, 2048usize);
    let total_groups = k / 2 / AmxKernel::ROW_GROUP;
    let b_store = Aligned::new((np * total_groups + 1) * GROUP_SLOTS, ONES);
    let b_all = b_store.get();
    let a_store = Aligned::new((mp * 256 / AmxKernel::ROW_GROUP + 1) * GROUP_SLOTS, ONES);
    let a_all = a_store.get();
    let mut acc_store = Aligned::new(mp * np * 2 * GROUP_SLOTS, ONES);
    let acc_all = acc_store.get_mut();
    let mut secs = Vec::new();
    for (kc, a_inner, pf) in VARIANTS {
        let slots = kc / 2;
        let panel = slots * 32;
        let b_panel = total_groups * GROUP_SLOTS;
        let (outer, inner) = if a_inner { (np, mp) } else { (mp, np) };
        let mut best = f64::MAX;
        for _ in 0..3 {
            start.wait();
            let t0 = std::time::Instant::now();
            for pc in 0..k / kc {
                let b_off = pc * panel;
                for o in 0..outer {
                    for i in 0..inner {
                        let (ip, jp) = if a_inner { (i, o) } else { (o, i) };
                        let a = &a_all[ip * panel..];
                        let b = &b_all[jp * b_panel + b_off..];
                        // The next inner panel (or the next outer one
                        // after the last).
                        let next = match (a_inner, i + 1 < inner) {
                            (true, true) => &a_all[(ip + 1) * panel..],
                            (false, true) => &b_all[(jp + 1) * b_panel + b_off..],
                            (true, false) => &b_all[((jp + 1) % np) * b_panel + b_off..],
                            (false, false) => &a_all[((ip + 1) % mp) * panel..],
                        };
                        let acc = &mut acc_all[(jp * mp + ip) * 1024..][..1024];
                        let next = if pf {
                            Ahead::NextOperand(next)
                        } else {
                            Ahead::Nothing
                        };
                        kern.kernel_then(slots, a, b, acc, pc > 0, next);
                    }
                }
            }
            best = best.min(t0.elapsed().as_secs_f64());
        }
        secs.push(best);
    }
    assert!(acc_all.iter().all(|x| x.is_finite()));
    secs
}

/// Where the kernel's time goes in the one-thread GEMM's loops: one
/// 256 x 1024 block over k = 2048 in `blis::block`'s order (columns of
/// tiles outer, KC = 512 blocks in one run, A~ panels inner), then the
/// same with one cost taken away at a time: B~ from 2 columns only (hot
/// in L2), the accumulators of one column only (hot), one A~ panel only,
/// no prefetch. GFLOP/s, best of 5 rounds, variants alternated in each
/// round.
#[cfg(target_arch = "x86_64")]
fn amx_loop_parts() {
    let Some(kern) = AmxKernel::new() else {
        eprintln!("no AMX here");
        return;
    };
    let (mp, np, k, kc) = (8usize, 32usize, 2048usize, 512usize);
    let (slots, runs) = (kc / 2, k / kc);
    let panel = slots * 32; // f32 of one KC block of a panel
    let a = Aligned::new(mp * runs * panel, ONES);
    let b = Aligned::new(np * runs * panel, ONES);
    let mut acc = Aligned::new(np * mp * 1024, ONES);
    let (a, b) = (a.get(), b.get());
    let acc = acc.get_mut();
    // (name, B~ columns, accumulator columns, A~ panels, prefetch)
    let variants: [(&str, usize, usize, usize, bool); 5] = [
        ("as the GEMM", np, np, mp, true),
        ("no prefetch", np, np, mp, false),
        ("B~ hot", 2, np, mp, true),
        ("acc hot", np, 1, mp, true),
        ("one A~ panel", np, np, 1, true),
    ];
    let mut best = [f64::MAX; 5];
    for _ in 0..5 {
        for (v, &(_, bcols, acols, apanels, pf)) in variants.iter().enumerate() {
            let b_at = |jp: usize, q: usize| &b[((jp % bcols) * runs + q) * panel..];
            let t0 = std::time::Instant::now();
            for jp in 0..np {
                for q in 0..runs {
                    let next = if q + 1 < runs {
                        (jp, q + 1)
                    } else {
                        (jp + 1, 0)
                    };
                    let b_next = &b_at(next.0, next.1)[..panel];
                    for ip in 0..mp {
                        let a = &a[((ip % apanels) * runs + q) * panel..];
                        let tile = ((jp % acols) * mp + ip) * 1024;
                        // The next call's tile, as `blis::block` names it.
                        let (njp, nip) = if ip + 1 < mp {
                            (jp, ip + 1)
                        } else {
                            (next.0, 0)
                        };
                        let nt = ((njp % acols) * mp + nip) * 1024;
                        let ahead = if pf && jp + 1 < np {
                            Ahead::PanelAndTile {
                                b_share: &b_next[ip * 1024..(ip + 1) * 1024],
                                next_tile: acc.as_ptr().wrapping_add(nt),
                            }
                        } else {
                            Ahead::Nothing
                        };
                        let acc = &mut acc[tile..tile + 1024];
                        kern.kernel_then(slots, a, b_at(jp, q), acc, q > 0, ahead);
                    }
                }
            }
            best[v] = best[v].min(t0.elapsed().as_secs_f64());
        }
    }
    let flops = 2.0 * (mp * 32 * np * 32 * k) as f64;
    for ((name, ..), secs) in variants.iter().zip(best) {
        eprintln!("{name}: {:.0} GFLOP/s", flops / secs / 1e9);
    }
    assert!(acc.iter().all(|x| x.is_finite()));
}

/// The kernel in the GEMM's loops: on each of `PROBE_THREADS` threads
/// (default 1) one `MC x NC` block (MC = 160, NC = 1024) over k = 2048
/// with B~ of the whole depth (as the GEMM streams it) and an A~ block
/// reused for each KC, for KC = 256 and 512, two loop orders (B~
/// micro-panel outer and A~ panels inner, as the GEMM runs, or the
/// reverse), with and without the prefetch of the next panel; GFLOP/s per
/// core (the slowest thread's).
#[cfg(target_arch = "x86_64")]
fn amx_block_speed() {
    let Some(kern) = AmxKernel::new() else {
        eprintln!("no AMX here");
        return;
    };
    let threads: usize = env_or("PROBE_THREADS", 1);
    let start = std::sync::Barrier::new(threads);
    let per_thread: Vec<Vec<f64>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| s.spawn(|| block_probe_thread(kern, &start)))
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let flops = 2.0 * (160 * 1024 * 2048) as f64;
    for (v, (kc, a_inner, pf)) in VARIANTS.iter().enumerate() {
        let slowest = per_thread.iter().map(|s| s[v]).fold(0.0, f64::max);
        eprintln!(
            "{threads} threads, KC {kc}, {} inner, prefetch {pf}: {:.0} GFLOP/s per core",
            if *a_inner { "A~" } else { "B~" },
            flops / slowest / 1e9
        );
    }
}

/// One way to run a call's items on the pool: given the item's work.
type Way<'a> = &'a dyn Fn(&(dyn Fn() + Sync));

/// See the module docs. `caller+fanout` is what `halfkern`'s splits do
/// (its `pool` module, with a bounded spin): share 0 on the caller, the
/// others in one spawned job that rayon's workers split among themselves,
/// then the caller spins until they are done; `caller+spin` spawns one
/// job per share instead.
fn pool_latency() {
    use rayon::prelude::*;
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    use std::time::{Duration, Instant};

    let pool = rayon::current_num_threads();
    let counts: Vec<usize> = std::env::var("PROBE_THREADS").map_or(vec![2, 4, 8, 16], |v| {
        v.split(',').map(|x| x.parse().unwrap()).collect()
    });
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("rayon pool: {pool} threads");
    for pause_us in [0u64, 200] {
        for &t in counts.iter().filter(|&&t| t <= pool) {
            let ways: [(&str, Way); 5] = [
                ("into_par_iter", &|f| {
                    (0..t).into_par_iter().for_each(|_| f())
                }),
                ("scope+spawn", &|f| {
                    rayon::scope(|s| (0..t).for_each(|_| s.spawn(|_| f())))
                }),
                ("broadcast", &|f| {
                    rayon::broadcast(|_| f());
                }),
                ("caller+fanout", &|f| {
                    let done = std::sync::atomic::AtomicUsize::new(0);
                    rayon::in_place_scope(|s| {
                        s.spawn(|_| {
                            (1..t).into_par_iter().for_each(|_| {
                                f();
                                done.fetch_add(1, std::sync::atomic::Ordering::Release);
                            })
                        });
                        f();
                        while done.load(std::sync::atomic::Ordering::Acquire) < t - 1 {
                            std::hint::spin_loop();
                        }
                    })
                }),
                ("caller+spin", &|f| {
                    let done = std::sync::atomic::AtomicUsize::new(0);
                    rayon::in_place_scope(|s| {
                        for _ in 1..t {
                            s.spawn(|_| {
                                f();
                                done.fetch_add(1, std::sync::atomic::Ordering::Release);
                            });
                        }
                        f();
                        while done.load(std::sync::atomic::Ordering::Acquire) < t - 1 {
                            std::hint::spin_loop();
                        }
                    })
                }),
            ];
            for (name, way) in ways {
                if name == "broadcast" && t != pool {
                    continue;
                }
                let (mut calls, mut starts) = (Vec::new(), Vec::new());
                for _ in 0..2000 {
                    let pause = Instant::now();
                    while pause.elapsed() < Duration::from_micros(pause_us) {
                        std::hint::spin_loop();
                    }
                    let latest = AtomicU64::new(0);
                    let t0 = Instant::now();
                    way(&|| {
                        latest.fetch_max(t0.elapsed().as_nanos() as u64, Relaxed);
                    });
                    calls.push(t0.elapsed().as_secs_f64() * 1e6);
                    starts.push(latest.load(Relaxed) as f64 / 1e3);
                }
                println!(
                    "{t:>2} items, {pause_us:>3} us pause, {name:<13}: call {:6.1} us, latest start {:6.1} us",
                    median(&mut calls),
                    median(&mut starts)
                );
            }
        }
    }
}
