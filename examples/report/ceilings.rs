//! The machine's own ceilings (DESIGN.md section 6), measured by the run
//! that compares against them: the FMA peak of one core for each vector
//! width halfkern uses (and `vdpbf16ps`), L1 and L2 copy bounds with that
//! width's loads and stores, and the DRAM read bound on one core and on all
//! of them.
//!
//! Shared by `benches/ceilings.rs` (criterion rows) and the `report`
//! example (a markdown table of halfkern's ratios to these). Each loop is a
//! `#[target_feature]` fn entered after run-time detection, so the binary
//! needs no `-C target-cpu=native`.
//!
//! Why each loop reaches its ceiling:
//! - FMA: independent accumulator chains, more than latency x ports (4-5
//!   cycles x 2 ports on current x86 and ARM cores: 8-10 in flight), with
//!   no loads or stores; the operands stay in registers.
//! - Copy: four full-width loads then four stores per step on 64-byte
//!   aligned buffers, the same few hundred KiB over and over, so every
//!   access hits the level being measured; bytes read plus bytes written.
//! - DRAM: a sum over a buffer at least four times the L3, written before
//!   timing (a zero-filled buffer would read the kernel's shared zero
//!   page), with eight add chains. Each core reads its part as eight
//!   streams in step, 256 bytes of each at a time: one stream leaves the
//!   core's prefetchers short of requests in flight (on a Zen 4 VM one
//!   stream read 19 GB/s, eight 27 GB/s, where a gemv over many rows of B
//!   reached 20). Threads take equal contiguous parts.

use std::hint::black_box;
use std::sync::Arc;

/// Independent accumulators of a 16-register ISA (ymm): 12 chains plus the
/// two operands.
#[cfg(target_arch = "x86_64")]
pub const CHAINS_16: usize = 12;
/// Independent accumulators of a 32-register ISA (zmm, NEON).
pub const CHAINS_32: usize = 24;

/// What a probe's work counts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Unit {
    /// Floating-point operations (an FMA is two).
    Flop,
    /// Bytes read plus bytes written.
    Byte,
}

/// The vector registers of a probe; a value exists only for widths this
/// target can name, and [`Width::available`] says which the CPU has.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Width {
    /// AVX2 + FMA, 8 f32 lanes.
    #[cfg(target_arch = "x86_64")]
    Ymm,
    /// AVX-512 F, 16 f32 lanes.
    #[cfg(target_arch = "x86_64")]
    Zmm,
    /// NEON q registers, 4 f32 lanes.
    #[cfg(target_arch = "aarch64")]
    Neon,
}

impl Width {
    /// Lower-case name, as in the rows' ids.
    pub fn name(self) -> &'static str {
        match self {
            #[cfg(target_arch = "x86_64")]
            Width::Ymm => "ymm",
            #[cfg(target_arch = "x86_64")]
            Width::Zmm => "zmm",
            #[cfg(target_arch = "aarch64")]
            Width::Neon => "neon",
        }
    }

    fn lanes(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Width::Ymm => 8,
            #[cfg(target_arch = "x86_64")]
            Width::Zmm => 16,
            #[cfg(target_arch = "aarch64")]
            Width::Neon => 4,
        }
    }

    fn chains(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Width::Ymm => CHAINS_16,
            #[cfg(target_arch = "x86_64")]
            Width::Zmm => CHAINS_32,
            #[cfg(target_arch = "aarch64")]
            Width::Neon => CHAINS_32,
        }
    }

    fn fma_instruction(self) -> &'static str {
        match self {
            #[cfg(target_arch = "x86_64")]
            Width::Ymm => "vfmadd231ps ymm",
            #[cfg(target_arch = "x86_64")]
            Width::Zmm => "vfmadd231ps zmm",
            #[cfg(target_arch = "aarch64")]
            Width::Neon => "fmla v.4s",
        }
    }

    /// Whether halfkern offers the ISA and the CPU has its features.
    fn detected(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Width::Ymm => {
                halfkern::Isa::Avx2.is_available()
                    && std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Width::Zmm => {
                halfkern::Isa::Avx512.is_available()
                    && std::arch::is_x86_feature_detected!("avx512f")
            }
            #[cfg(target_arch = "aarch64")]
            Width::Neon => {
                halfkern::Isa::Neon.is_available()
                    && std::arch::is_aarch64_feature_detected!("neon")
            }
        }
    }

    /// The widths this CPU has, narrowest first.
    pub fn available() -> Vec<Width> {
        let all = [
            #[cfg(target_arch = "x86_64")]
            Width::Ymm,
            #[cfg(target_arch = "x86_64")]
            Width::Zmm,
            #[cfg(target_arch = "aarch64")]
            Width::Neon,
        ];
        all.into_iter().filter(|w| w.detected()).collect()
    }
}

/// Whether the CPU has `vdpbf16ps` (and halfkern offers avx512bf16).
pub fn dot_bf16_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        halfkern::Isa::Avx512Bf16.is_available()
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Which ceiling a probe measures.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// f32 FMA peak of one core at this width.
    Fma(Width),
    /// `vdpbf16ps` zmm peak of one core.
    DotBf16,
    /// Copy within L1 at this width.
    CopyL1(Width),
    /// Copy within L2 at this width.
    CopyL2(Width),
    /// Sum-reduce from DRAM, one core.
    DramOne,
    /// Sum-reduce from DRAM, every core.
    DramAll,
}

/// One ceiling loop: `work` flops or bytes per call of `run`.
pub struct Probe {
    /// Which ceiling.
    pub kind: Kind,
    /// Short id: the criterion row and the report's name for it.
    pub id: String,
    /// What the loop does, for the report.
    pub how: String,
    /// What `work` counts.
    pub unit: Unit,
    /// Flops or bytes per call.
    pub work: f64,
    /// One call.
    pub run: Box<dyn FnMut() + Send>,
}

/// A slice of `T` that starts on a 64-byte boundary (a cache line, and a
/// zmm), inside an over-allocated `Vec`.
#[derive(Clone)]
pub struct Aligned<T> {
    buf: Vec<T>,
    start: usize,
    len: usize,
}

impl<T: Copy> Aligned<T> {
    /// `len` copies of `value`: every page is written, so every page is
    /// backed by memory of its own.
    pub fn new(value: T, len: usize) -> Self {
        let size = size_of::<T>().max(1);
        let pad = 64 / size + 1;
        let buf = vec![value; len + pad];
        let misalign = buf.as_ptr().align_offset(64);
        let start = if misalign <= pad { misalign } else { 0 };
        Aligned { buf, start, len }
    }

    /// From the values of `src`.
    pub fn from_slice(src: &[T]) -> Self {
        let mut a = Aligned::new(src[0], src.len());
        a.as_mut_slice().copy_from_slice(src);
        a
    }

    /// The aligned values.
    pub fn as_slice(&self) -> &[T] {
        &self.buf[self.start..self.start + self.len]
    }

    /// The aligned values, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

/// The size in bytes of this CPU's unified or data cache of `level`
/// (sysfs, cpu0), if Linux says.
pub fn cache_bytes(level: u32) -> Option<usize> {
    let dir = std::fs::read_dir("/sys/devices/system/cpu/cpu0/cache").ok()?;
    for entry in dir.flatten() {
        let read = |f: &str| std::fs::read_to_string(entry.path().join(f)).ok();
        let (Some(l), Some(t), Some(s)) = (read("level"), read("type"), read("size")) else {
            continue;
        };
        if l.trim() != level.to_string() || t.trim() == "Instruction" {
            continue;
        }
        let s = s.trim();
        let (digits, scale) = match s.as_bytes().last() {
            Some(b'K') => (&s[..s.len() - 1], 1 << 10),
            Some(b'M') => (&s[..s.len() - 1], 1 << 20),
            _ => (s, 1),
        };
        return digits.parse::<usize>().ok().map(|v| v * scale);
    }
    None
}

/// Bytes both buffers of the L1 copy take together.
pub const L1_FOOTPRINT: usize = 16 << 10;

/// Bytes both buffers of the L2 copy take together: 512 KiB, or half the
/// L2 where that is smaller.
pub fn l2_footprint() -> usize {
    let l2 = cache_bytes(2).unwrap_or(1 << 20);
    (512 << 10).min(l2 / 2)
}

/// Bytes of the DRAM probes' buffer: 512 MiB, or four times the L3.
pub fn dram_bytes() -> usize {
    let l3 = cache_bytes(3).unwrap_or(0);
    (512usize << 20).max(4 * l3)
}

/// Iterations of the FMA loops per call (2-4 ms on a 3-4 GHz core).
const FMA_ITERS: u64 = 1_000_000;
/// Streams a DRAM probe reads at once on each core.
const STREAMS: usize = 8;
/// f32 a DRAM probe reads from each stream per step (256 bytes).
const SUM_STEP: usize = 64;

/// Every ceiling probe this machine has, with its buffers allocated and
/// written (the DRAM buffer takes [`dram_bytes`] of memory until the
/// probes are dropped).
pub fn probes() -> Vec<Probe> {
    let widths = Width::available();
    let mut out = Vec::new();
    for &w in &widths {
        let flops = FMA_ITERS as f64 * (w.chains() * w.lanes() * 2) as f64;
        out.push(Probe {
            kind: Kind::Fma(w),
            id: format!("fma-{}", w.name()),
            how: format!(
                "{} chains of `{}`, no memory, 1 core",
                w.chains(),
                w.fma_instruction()
            ),
            unit: Unit::Flop,
            work: flops,
            run: Box::new(move || {
                black_box(fma(w, black_box(FMA_ITERS)));
            }),
        });
    }
    if dot_bf16_available() {
        // Each of the 16 lanes sums two bf16 products into f32: 4 flops.
        let flops = FMA_ITERS as f64 * (CHAINS_32 * 16 * 4) as f64;
        out.push(Probe {
            kind: Kind::DotBf16,
            id: "vdpbf16ps-zmm".into(),
            how: format!("{CHAINS_32} chains of `vdpbf16ps zmm`, no memory, 1 core"),
            unit: Unit::Flop,
            work: flops,
            run: Box::new(|| {
                black_box(dot_bf16(black_box(FMA_ITERS)));
            }),
        });
    }
    for &w in &widths {
        for (level, footprint, moved) in [(1, L1_FOOTPRINT, 8 << 20), (2, l2_footprint(), 32 << 20)]
        {
            let half = footprint / 2 / 4;
            let src = Aligned::new(1.0f32, half);
            let mut dst = Aligned::new(0.0f32, half);
            let reps = (moved / footprint).max(1);
            out.push(Probe {
                kind: if level == 1 {
                    Kind::CopyL1(w)
                } else {
                    Kind::CopyL2(w)
                },
                id: format!("copy-l{level}-{}", w.name()),
                how: format!(
                    "{} KiB -> {} KiB, {} loads and stores, 1 core",
                    footprint >> 11,
                    footprint >> 11,
                    w.name()
                ),
                unit: Unit::Byte,
                work: (reps * footprint) as f64,
                run: Box::new(move || {
                    for _ in 0..reps {
                        copy(w, black_box(src.as_slice()), dst.as_mut_slice());
                        black_box(dst.as_mut_slice());
                    }
                }),
            });
        }
    }
    let Some(&widest) = widths.last() else {
        return out;
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let unit = STREAMS * SUM_STEP * cores;
    let len = dram_bytes() / 4 / unit * unit;
    let buf = Arc::new(Aligned::new(1.0f32, len));
    let one = Arc::clone(&buf);
    out.push(Probe {
        kind: Kind::DramOne,
        id: "dram-read-1core".into(),
        how: format!(
            "sum of {} MiB, {STREAMS} streams, {} loads, 1 core",
            len >> 18,
            widest.name()
        ),
        unit: Unit::Byte,
        work: (len * 4) as f64,
        run: Box::new(move || {
            black_box(sum(widest, black_box(one.as_slice())));
        }),
    });
    out.push(Probe {
        kind: Kind::DramAll,
        id: format!("dram-read-{cores}cores"),
        how: format!("the same, split over {cores} threads (std::thread::scope)"),
        unit: Unit::Byte,
        work: (len * 4) as f64,
        run: Box::new(move || {
            let slices = buf.as_slice().chunks(len / cores);
            std::thread::scope(|s| {
                let parts: Vec<_> = slices
                    .map(|part| s.spawn(move || sum(widest, black_box(part))))
                    .collect();
                black_box(parts.into_iter().map(|p| p.join().unwrap()).sum::<f32>());
            });
        }),
    });
    out
}

/// `iters` rounds of the FMA chains at `w`.
fn fma(w: Width, iters: u64) -> f32 {
    assert!(w.detected(), "{} is not available", w.name());
    match w {
        // SAFETY: AVX2 and FMA are detected (asserted above).
        #[cfg(target_arch = "x86_64")]
        Width::Ymm => unsafe { x86::fma_ymm(iters) },
        // SAFETY: AVX-512 F is detected (asserted above).
        #[cfg(target_arch = "x86_64")]
        Width::Zmm => unsafe { x86::fma_zmm(iters) },
        // SAFETY: NEON is detected (asserted above).
        #[cfg(target_arch = "aarch64")]
        Width::Neon => unsafe { arm::fma_q(iters) },
    }
}

/// `iters` rounds of the `vdpbf16ps` chains.
fn dot_bf16(iters: u64) -> f32 {
    assert!(dot_bf16_available(), "avx512bf16 is not available");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX-512 F and AVX512_BF16 are detected (asserted above).
    return unsafe { x86::dot_zmm(iters) };
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("{iters}")
}

/// Copies `src` into `dst` (equal lengths, a multiple of 64 f32) at `w`.
fn copy(w: Width, src: &[f32], dst: &mut [f32]) {
    assert!(w.detected(), "{} is not available", w.name());
    assert!(src.len() == dst.len() && src.len().is_multiple_of(64));
    match w {
        // SAFETY: AVX2 is detected (asserted above).
        #[cfg(target_arch = "x86_64")]
        Width::Ymm => unsafe { x86::copy_ymm(src, dst) },
        // SAFETY: AVX-512 F is detected (asserted above).
        #[cfg(target_arch = "x86_64")]
        Width::Zmm => unsafe { x86::copy_zmm(src, dst) },
        // SAFETY: NEON is detected (asserted above).
        #[cfg(target_arch = "aarch64")]
        Width::Neon => unsafe { arm::copy_q(src, dst) },
    }
}

/// The sum of `buf` (a multiple of `STREAMS * SUM_STEP` f32) at `w`, read
/// as [`STREAMS`] equal streams in step.
fn sum(w: Width, buf: &[f32]) -> f32 {
    assert!(w.detected(), "{} is not available", w.name());
    assert!(buf.len().is_multiple_of(STREAMS * SUM_STEP));
    match w {
        // SAFETY: AVX2 is detected (asserted above).
        #[cfg(target_arch = "x86_64")]
        Width::Ymm => unsafe { x86::sum_ymm(buf) },
        // SAFETY: AVX-512 F is detected (asserted above).
        #[cfg(target_arch = "x86_64")]
        Width::Zmm => unsafe { x86::sum_zmm(buf) },
        // SAFETY: NEON is detected (asserted above).
        #[cfg(target_arch = "aarch64")]
        Width::Neon => unsafe { arm::sum_q(buf) },
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The x86-64 loops: safe `#[target_feature]` bodies; the only unsafe
    //! is each raw load and store, inside a chunk that holds it.

    use core::arch::x86_64::*;
    use std::hint::black_box;

    use super::{CHAINS_16, CHAINS_32, STREAMS, SUM_STEP};

    #[target_feature(enable = "avx2,fma")]
    pub fn fma_ymm(iters: u64) -> f32 {
        let (x, y) = (
            _mm256_set1_ps(black_box(1e-3)),
            _mm256_set1_ps(black_box(1e-3)),
        );
        let mut acc = [_mm256_set1_ps(black_box(1.0)); CHAINS_16];
        for _ in 0..iters {
            for a in acc.iter_mut() {
                // acc += x * y: `vfmadd231ps`, the accumulator is the
                // destination, so each chain is one register.
                *a = _mm256_fmadd_ps(x, y, *a);
            }
        }
        let s = acc
            .iter()
            .fold(_mm256_setzero_ps(), |s, a| _mm256_add_ps(s, *a));
        _mm256_cvtss_f32(s)
    }

    #[target_feature(enable = "avx512f")]
    pub fn fma_zmm(iters: u64) -> f32 {
        let (x, y) = (
            _mm512_set1_ps(black_box(1e-3)),
            _mm512_set1_ps(black_box(1e-3)),
        );
        let mut acc = [_mm512_set1_ps(black_box(1.0)); CHAINS_32];
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = _mm512_fmadd_ps(x, y, *a);
            }
        }
        let s = acc
            .iter()
            .fold(_mm512_setzero_ps(), |s, a| _mm512_add_ps(s, *a));
        _mm512_reduce_add_ps(s)
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    pub fn dot_zmm(iters: u64) -> f32 {
        let x = _mm512_set1_ps(black_box(1e-3));
        let x = _mm512_cvtne2ps_pbh(x, x);
        let mut acc = [_mm512_set1_ps(black_box(1.0)); CHAINS_32];
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = _mm512_dpbf16_ps(*a, x, x);
            }
        }
        let s = acc
            .iter()
            .fold(_mm512_setzero_ps(), |s, a| _mm512_add_ps(s, *a));
        _mm512_reduce_add_ps(s)
    }

    #[target_feature(enable = "avx2")]
    pub fn copy_ymm(src: &[f32], dst: &mut [f32]) {
        for (s, d) in src.chunks_exact(32).zip(dst.chunks_exact_mut(32)) {
            let (p, q) = (s.as_ptr(), d.as_mut_ptr());
            // SAFETY: `s` and `d` hold 32 f32 each: the four 8-lane loads
            // and stores at offsets 0, 8, 16, 24 stay inside them.
            unsafe {
                let v = [
                    _mm256_loadu_ps(p),
                    _mm256_loadu_ps(p.add(8)),
                    _mm256_loadu_ps(p.add(16)),
                    _mm256_loadu_ps(p.add(24)),
                ];
                for (i, v) in v.into_iter().enumerate() {
                    _mm256_storeu_ps(q.add(8 * i), v);
                }
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    pub fn copy_zmm(src: &[f32], dst: &mut [f32]) {
        for (s, d) in src.chunks_exact(64).zip(dst.chunks_exact_mut(64)) {
            let (p, q) = (s.as_ptr(), d.as_mut_ptr());
            // SAFETY: `s` and `d` hold 64 f32 each: the four 16-lane loads
            // and stores at offsets 0, 16, 32, 48 stay inside them.
            unsafe {
                let v = [
                    _mm512_loadu_ps(p),
                    _mm512_loadu_ps(p.add(16)),
                    _mm512_loadu_ps(p.add(32)),
                    _mm512_loadu_ps(p.add(48)),
                ];
                for (i, v) in v.into_iter().enumerate() {
                    _mm512_storeu_ps(q.add(16 * i), v);
                }
            }
        }
    }

    #[target_feature(enable = "avx2")]
    pub fn sum_ymm(buf: &[f32]) -> f32 {
        let mut acc = [_mm256_setzero_ps(); 8];
        let seg = buf.len() / STREAMS;
        for off in (0..seg).step_by(SUM_STEP) {
            for s in 0..STREAMS {
                let ch = &buf[s * seg + off..][..SUM_STEP];
                for j in 0..SUM_STEP / 8 {
                    let a = &mut acc[(s * SUM_STEP / 8 + j) % 8];
                    // SAFETY: `ch` holds SUM_STEP f32; lanes 8 j .. 8 j + 8
                    // are inside.
                    *a = _mm256_add_ps(*a, unsafe { _mm256_loadu_ps(ch.as_ptr().add(8 * j)) });
                }
            }
        }
        let s = acc
            .iter()
            .fold(_mm256_setzero_ps(), |s, a| _mm256_add_ps(s, *a));
        _mm256_cvtss_f32(s)
    }

    #[target_feature(enable = "avx512f")]
    pub fn sum_zmm(buf: &[f32]) -> f32 {
        let mut acc = [_mm512_setzero_ps(); 8];
        let seg = buf.len() / STREAMS;
        for off in (0..seg).step_by(SUM_STEP) {
            for s in 0..STREAMS {
                let ch = &buf[s * seg + off..][..SUM_STEP];
                for j in 0..SUM_STEP / 16 {
                    let a = &mut acc[(s * SUM_STEP / 16 + j) % 8];
                    // SAFETY: `ch` holds SUM_STEP f32; lanes 16 j .. 16 j + 16
                    // are inside.
                    *a = _mm512_add_ps(*a, unsafe { _mm512_loadu_ps(ch.as_ptr().add(16 * j)) });
                }
            }
        }
        let s = acc
            .iter()
            .fold(_mm512_setzero_ps(), |s, a| _mm512_add_ps(s, *a));
        _mm512_reduce_add_ps(s)
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    //! The aarch64 loops: safe `#[target_feature]` bodies; the only unsafe
    //! is each raw load and store, inside a chunk that holds it.

    use core::arch::aarch64::*;
    use std::hint::black_box;

    use super::{CHAINS_32, STREAMS, SUM_STEP};

    #[target_feature(enable = "neon")]
    pub fn fma_q(iters: u64) -> f32 {
        let (x, y) = (vdupq_n_f32(black_box(1e-3)), vdupq_n_f32(black_box(1e-3)));
        let mut acc = [vdupq_n_f32(black_box(1.0)); CHAINS_32];
        for _ in 0..iters {
            for a in acc.iter_mut() {
                // acc += x * y: `fmla`.
                *a = vfmaq_f32(*a, x, y);
            }
        }
        let s = acc.iter().fold(vdupq_n_f32(0.0), |s, a| vaddq_f32(s, *a));
        vaddvq_f32(s)
    }

    #[target_feature(enable = "neon")]
    pub fn copy_q(src: &[f32], dst: &mut [f32]) {
        for (s, d) in src.chunks_exact(16).zip(dst.chunks_exact_mut(16)) {
            let (p, q) = (s.as_ptr(), d.as_mut_ptr());
            // SAFETY: `s` and `d` hold 16 f32 each: the four 4-lane loads
            // and stores at offsets 0, 4, 8, 12 stay inside them.
            unsafe {
                let v = [
                    vld1q_f32(p),
                    vld1q_f32(p.add(4)),
                    vld1q_f32(p.add(8)),
                    vld1q_f32(p.add(12)),
                ];
                for (i, v) in v.into_iter().enumerate() {
                    vst1q_f32(q.add(4 * i), v);
                }
            }
        }
    }

    #[target_feature(enable = "neon")]
    pub fn sum_q(buf: &[f32]) -> f32 {
        let mut acc = [vdupq_n_f32(0.0); 8];
        let seg = buf.len() / STREAMS;
        for off in (0..seg).step_by(SUM_STEP) {
            for s in 0..STREAMS {
                let ch = &buf[s * seg + off..][..SUM_STEP];
                for j in 0..SUM_STEP / 4 {
                    let a = &mut acc[(s * SUM_STEP / 4 + j) % 8];
                    // SAFETY: `ch` holds SUM_STEP f32; lanes 4 j .. 4 j + 4
                    // are inside.
                    *a = vaddq_f32(*a, unsafe { vld1q_f32(ch.as_ptr().add(4 * j)) });
                }
            }
        }
        let s = acc.iter().fold(vdupq_n_f32(0.0), |s, a| vaddq_f32(s, *a));
        vaddvq_f32(s)
    }
}
