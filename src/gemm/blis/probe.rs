//! A timing probe of the driver around a stand-in kernel (see
//! [`driver_overhead`]).

use super::*;
use crate::arch::x86_64::Avx512Bf16;
use crate::arch::x86_64::avx512bf16::gemm::Avx512Dot;
use crate::element::Element;
use crate::gemm::Gemm;
use crate::gemm::epilogue::Epilogue;
use crate::gemm::kernel::Format;
use crate::gemm::view::{MatMut, MatRef};
use half::bf16;
use std::sync::OnceLock;

/// Multiplies per 256 slots of the busy kernel: `PROBE_BUSY`, or 745,
/// about as long as the AMX kernel takes for 256 slots on one core of
/// the lent host; 0 leaves the loops alone.
fn busy_per_256() -> usize {
    static BUSY: OnceLock<usize> = OnceLock::new();
    *BUSY.get_or_init(|| std::env::var("PROBE_BUSY").map_or(745, |v| v.parse().unwrap()))
}

/// A kernel with the AMX kernel's shape and formats that touches no
/// memory and stays busy about as long as the AMX kernel computes, its
/// packing and epilogue those of the AMX kernel: what the driver costs
/// around it, on any x86-64 with AVX512_BF16.
#[derive(Clone, Copy)]
struct Busy(Avx512Dot);

impl Microkernel for Busy {
    const MR: usize = 32;
    const NR: usize = 32;
    const FORMAT: Format = Format::Bf16Pairs;
    const FORMAT_A: Format = Format::Bf16Rows;
    const KC: usize = 512;
    const NAME: &'static str = "busy";

    fn kernel(self, slots: usize, a: &[f32], b: &[f32], tile: &mut [f32], _: bool) {
        let mut x = 3u64;
        // SAFETY: register arithmetic only: a chain of 3-cycle
        // multiplies (about 2.9 GHz here).
        unsafe {
            core::arch::asm!(
                "2:", "imul {x}, {x}", "dec {n}", "jnz 2b",
                x = inout(reg) x,
                n = inout(reg) (slots * busy_per_256() / 256).max(1) => _,
                options(nomem, nostack),
            );
        }
        tile[0] = a[0] + b[0] + x as f32;
    }

    fn widen<T: Element>(self, src: &[T], dst: &mut [f32]) {
        self.0.widen(src, dst);
    }

    fn narrow_f16(self, src: &[f32], dst: &mut [half::f16]) {
        self.0.narrow_f16(src, dst);
    }

    fn store_block<C: Element>(self, job: &StoreBlock<'_, C>) -> usize {
        // SAFETY: `self.0`'s token proves every feature it enables.
        unsafe { crate::arch::x86_64::avx512::gemm::store_block(self, job) }
    }

    fn axpy_rows(self, _: &[f32], _: &[f32], _: &mut [&mut [f32]]) {}

    fn axpy_rows4(self, _: &[f32], _: [&[f32]; 4], _: &mut [&mut [f32]]) {}
}

/// Packing B, then the best of three runs of the loops at `n`.
fn time_loops<C: Element>(busy: Busy, n: usize, threads: usize) -> (f64, f64) {
    let a = vec![bf16::from_f32(1.0); n * n];
    let b = vec![bf16::from_f32(1.0); n * n];
    let mut c = vec![C::from_f32(0.0); n * n];
    let av = MatRef::row_major(&a, n, n).unwrap();
    let bv = MatRef::row_major(&b, n, n).unwrap();
    let ep = Epilogue::new(&Gemm::new());
    let reps = (4096 / n).pow(2).max(1);
    let (mut pack, mut loops) = (f64::MAX, f64::MAX);
    for _ in 0..3 {
        let t0 = std::time::Instant::now();
        for _ in 0..reps {
            recycle(pack_b_scratch(busy, bv, threads));
        }
        pack = pack.min(t0.elapsed().as_secs_f64() / reps as f64);
        let p = pack_b_scratch(busy, bv, threads);
        let t0 = std::time::Instant::now();
        for _ in 0..reps {
            let cv = MatMut::row_major(&mut c, n, n).unwrap();
            run(busy, av, &p, n, n, cv, &ep, threads);
        }
        loops = loops.min(t0.elapsed().as_secs_f64() / reps as f64);
        recycle(p);
    }
    (pack, loops)
}

/// `cargo test --release --lib driver_overhead -- --ignored --nocapture`:
/// packing B, then the BLIS loops around the busy kernel (A packing,
/// epilogue, stores to C), bf16 -> f32 and bf16 -> bf16; one thread,
/// or `PROBE_THREADS` (the busy time is then divided among them).
/// `PROBE_BUSY=0` times the loops alone.
#[test]
#[ignore = "timing probe"]
fn driver_overhead() {
    let Some(t) = Avx512Bf16::try_new() else {
        eprintln!("no AVX512_BF16 here");
        return;
    };
    let busy = Busy(Avx512Dot(t));
    let threads: usize = std::env::var("PROBE_THREADS").map_or(1, |t| t.parse().unwrap());
    let ns: Vec<usize> = std::env::var("PROBE_N").map_or(vec![512, 1024, 2048, 4096], |v| {
        v.split(',').map(|x| x.parse().unwrap()).collect()
    });
    for n in ns {
        let busy_s = 2.0 * (n as f64).powi(3) / 1370e9 / threads as f64;
        let busy_s = busy_s * busy_per_256() as f64 / 745.0;
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
