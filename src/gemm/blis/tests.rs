//! The drivers' own tests: the thread splits, the KC runs and the A~
//! layout of AMX against their definitions, for every kernel the machine
//! has (the ISA-level tests against the f64 reference are in tests/gemm.rs).

use super::pack::*;
use super::split::*;
use crate::element::Element;
use crate::gemm::Gemm;
use crate::gemm::view::{MatMut, MatRef};
use crate::isa::ScalarKernel;
use crate::isa::{EachKernel, each_microkernel};
use crate::kernel::gemm::{Blocking, Format, Microkernel, ROW_GROUP, RowOps};
use half::bf16;

/// 64 random bits per call (splitmix64) from a clock seed, printed so a
/// failure can be replayed.
pub(crate) fn fresh_rng() -> impl FnMut() -> u64 {
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("seed {seed}");
    move || {
        seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let z = (seed ^ (seed >> 31)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z ^ (z >> 29)
    }
}

/// The grid covers at most `threads` cells, never more cells than
/// panels along a side, and no split of the same threads has a smaller
/// largest cell (brute force).
#[test]
fn grid_is_the_best_split() {
    for threads in 1..=17 {
        for (pm, pn) in [
            (1, 1),
            (1, 64),
            (64, 1),
            (64, 64),
            (5, 7),
            (147, 64),
            (3, 100),
        ] {
            let (mt, nt) = grid(pm, pn, threads);
            assert!(
                mt * nt <= threads && mt <= pm && nt <= pn,
                "{pm}x{pn} on {threads}"
            );
            let largest = |mt: usize, nt: usize| pm.div_ceil(mt) * pn.div_ceil(nt);
            for a in 1..=threads.min(pm) {
                for b in 1..=(threads / a).min(pn) {
                    assert!(
                        largest(mt, nt) <= largest(a, b),
                        "{pm}x{pn} on {threads}: {mt}x{nt} vs {a}x{b}"
                    );
                }
            }
        }
    }
}

/// `run_local_b` (each thread packs its own B~) and `run_dynamic` (A~
/// and B~ shared, blocks handed out) give the bits of `run` (one
/// thread), on 2 to 4 threads, with every epilogue step, for
/// shapes with edge tiles, several row and column blocks and a KC tail;
/// fresh random inputs, C poisoned before each call.
fn splits_match_one_thread<K: Microkernel + RowOps>(kern: K) {
    let mut bits = fresh_rng();
    let mut next = move || (bits() >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(4)
        .build()
        .unwrap();
    for (m, n, k) in [
        (1, 1, 1),
        (5, 40, 0),
        (37, 45, 300),
        (200, 1100, 70),
        (9, 2100, 530),
    ] {
        let a: Vec<bf16> = (0..m * k).map(|_| bf16::from_f32(next())).collect();
        let b: Vec<bf16> = (0..k * n).map(|_| bf16::from_f32(next())).collect();
        let bias: Vec<f32> = (0..n).map(|_| next()).collect();
        let c0: Vec<f32> = (0..m * n).map(|_| next()).collect();
        let params = Gemm::new()
            .alpha(1.5)
            .beta(0.5)
            .unscale(4.0)
            .bias(crate::gemm::params::Bias::PerCol(&bias));
        let ep = params.epilogue();
        let av = MatRef::row_major(&a, m, k).unwrap();
        let bv = MatRef::row_major(&b, k, n).unwrap();
        let mut want = c0.clone();
        let packed = pack_b(kern, bv, 1);
        let bad_want = run(
            kern,
            av,
            &packed,
            MatMut::row_major(&mut want, m, n).unwrap(),
            &ep,
            1,
        );
        for threads in 2..=4 {
            let mut got = c0.clone();
            let bad = pool.install(|| {
                run_local_b(
                    kern,
                    av,
                    bv,
                    MatMut::row_major(&mut got, m, n).unwrap(),
                    &ep,
                    threads,
                )
            });
            assert_eq!(bad, bad_want);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    g.to_bits(),
                    w.to_bits(),
                    "{m}x{n}x{k}, {threads} threads, output {i}"
                );
            }
            let mut got = c0.clone();
            let bad = pool.install(|| {
                run_dynamic(
                    kern,
                    av,
                    &packed,
                    MatMut::row_major(&mut got, m, n).unwrap(),
                    &ep,
                    threads,
                )
            });
            assert_eq!(bad, bad_want);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    g.to_bits(),
                    w.to_bits(),
                    "{m}x{n}x{k}, {threads} threads, dynamic, output {i}"
                );
            }
        }
    }
}

/// `item_shape` gives whole tiles, at most `mc_max` rows (rounded up to
/// whole tiles), and enough blocks per thread unless both sides are at
/// their floor.
#[test]
fn item_shape_gives_enough_whole_blocks() {
    for (m, n) in [
        (1, 1),
        (31, 2000),
        (512, 512),
        (1024, 1024),
        (2048, 2048),
        (100, 9000),
    ] {
        for threads in 1..=16 {
            let (mr, nr, mc_max) = (32, 32, 256);
            let (mc, nc) = item_shape(m, n, threads, mr, nr, mc_max);
            let items = m.div_ceil(mc) * n.div_ceil(nc);
            assert!(
                mc % mr == 0 && nc % nr == 0 && mc > 0 && nc > 0,
                "{m}x{n}: {mc}x{nc}"
            );
            assert!(mc <= mc_max && nc <= 512, "{m}x{n}: {mc}x{nc}");
            assert!(
                items >= ITEMS_PER_THREAD * threads || (mc <= 2 * mr && nc <= 4 * nr),
                "{m}x{n} on {threads} threads: {mc}x{nc} gives {items} blocks"
            );
        }
    }
}

#[test]
fn threaded_splits_match_one_thread() {
    struct Check;
    impl EachKernel for Check {
        fn kernel<K: Microkernel + RowOps>(&mut self, kern: K) {
            splits_match_one_thread(kern);
        }
    }
    each_microkernel(&mut Check);
}

/// `K` with KC = 64 and runs of `R` KC blocks per column of tiles
/// ([`Blocking::kc_run`]); the rest of the blocking is the BLIS default,
/// everything else `K`'s.
#[derive(Clone, Copy)]
struct InRuns<K, const R: usize>(K);

impl<K: Microkernel, const R: usize> Microkernel for InRuns<K, R> {
    const MR: usize = K::MR;
    const NR: usize = K::NR;
    const FORMAT: Format = K::FORMAT;
    const FORMAT_A: Format = K::FORMAT_A;
    const BLOCKING: Blocking = Blocking {
        kc: 64,
        kc_run: R,
        ..Blocking::BLIS
    };
    const NAME: &'static str = "in-runs";

    fn kernel(self, slots: usize, a: &[f32], b: &[f32], tile: &mut [f32], acc: bool) {
        self.0.kernel(slots, a, b, tile, acc);
    }
}

impl<K: RowOps, const R: usize> RowOps for InRuns<K, R> {
    fn widen<T: Element>(self, src: &[T], dst: &mut [f32]) {
        self.0.widen(src, dst);
    }

    fn narrow_f16(self, src: &[f32], dst: &mut [half::f16]) {
        self.0.narrow_f16(src, dst);
    }

    fn axpy_rows(self, x: &[f32], b: &[f32], y: &mut [&mut [f32]]) {
        self.0.axpy_rows(x, b, y);
    }

    fn axpy_rows4(self, x: &[f32], b: [&[f32]; 4], y: &mut [&mut [f32]]) {
        self.0.axpy_rows4(x, b, y);
    }
}

/// Columns of tiles run through 3 KC blocks at a time: the bits of the
/// BLIS order (one KC block for every column), for k with whole runs,
/// a short last run and a KC tail; then the threaded splits in runs.
fn runs_match_blis_order<K: Microkernel + RowOps>(kern: K) {
    let mut bits = fresh_rng();
    let mut next = move || (bits() >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
    for (m, n, k) in [(37, 45, 300), (70, 90, 384), (9, 130, 64), (3, 5, 0)] {
        let a: Vec<bf16> = (0..m * k).map(|_| bf16::from_f32(next())).collect();
        let b: Vec<bf16> = (0..k * n).map(|_| bf16::from_f32(next())).collect();
        let c0: Vec<f32> = (0..m * n).map(|_| next()).collect();
        let ep = Gemm::new().beta(0.5).epilogue();
        let av = MatRef::row_major(&a, m, k).unwrap();
        let bv = MatRef::row_major(&b, k, n).unwrap();
        let one_by_one = |c: &mut Vec<f32>| {
            let kern = InRuns::<K, 1>(kern);
            let packed = pack_b(kern, bv, 1);
            let cv = MatMut::row_major(c, m, n).unwrap();
            run(kern, av, &packed, cv, &ep, 1)
        };
        let in_runs = |c: &mut Vec<f32>| {
            let kern = InRuns::<K, 3>(kern);
            let packed = pack_b(kern, bv, 1);
            let cv = MatMut::row_major(c, m, n).unwrap();
            run(kern, av, &packed, cv, &ep, 1)
        };
        let (mut want, mut got) = (c0.clone(), c0.clone());
        assert_eq!(in_runs(&mut got), one_by_one(&mut want));
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "{m}x{n}x{k}, output {i}");
        }
    }
    splits_match_one_thread(InRuns::<K, 3>(kern));
}

#[test]
fn kc_runs_match_blis_order() {
    struct Check;
    impl EachKernel for Check {
        fn kernel<K: Microkernel + RowOps>(&mut self, kern: K) {
            runs_match_blis_order(kern);
        }
    }
    each_microkernel(&mut Check);
}

/// [`Format::Bf16Rows`] (the AMX A~ layout, otherwise only packed on
/// AMX hosts) against its definition: row-major and strided A, whole
/// and short groups (the 64-byte copy and the element path), edge
/// lanes, odd depths; fresh random bits, a poisoned destination.
#[test]
fn bf16_rows_packing_matches_its_definition() {
    let mut next = fresh_rng();
    let w = 32;
    for (rows, cols, rs_pad) in [(40, 100, 0), (33, 512, 0), (32, 64, 7), (7, 33, 3)] {
        let rs = cols + rs_pad;
        let data: Vec<bf16> = (0..rows * rs)
            .map(|_| bf16::from_bits(next() as u16))
            .collect();
        let v = MatRef::strided(&data, rows, cols, rs, 1).unwrap();
        for (l0, d0, depth) in [(0, 0, cols), (rows / 2, 1, cols - 1), (1, 32, cols - 32)] {
            let lanes = w.min(rows - l0);
            let nslots = Format::Bf16Rows.slots(depth);
            let mut dst = vec![f32::from_bits(0x7FC0_DEAD); nslots * w];
            let fmt = Format::Bf16Rows;
            let mut tmp = Vec::new();
            pack_panel(
                ScalarKernel,
                v,
                l0,
                lanes,
                d0,
                depth,
                w,
                fmt,
                &mut dst,
                &mut tmp,
            );
            let bits = |lane: usize, d: usize| -> u32 {
                if lane < lanes && d < depth {
                    u32::from(data[(l0 + lane) * rs + d0 + d].to_bits())
                } else {
                    0
                }
            };
            for s in 0..nslots {
                let (g, t) = (s / ROW_GROUP, s % ROW_GROUP);
                let gs = ROW_GROUP.min(nslots - g * ROW_GROUP);
                for lane in 0..w {
                    let got = dst[g * ROW_GROUP * w + lane * gs + t].to_bits();
                    let want = bits(lane, 2 * s) | bits(lane, 2 * s + 1) << 16;
                    assert_eq!(
                        got, want,
                        "{rows}x{cols} rs {rs}, lanes {l0}+{lanes}, depth {d0}+{depth}: slot {s} lane {lane}"
                    );
                }
            }
        }
    }
}

/// [`Format::Bf16Pairs`] from a B with contiguous columns (`Linear`
/// weights: lanes are W's rows, depth runs along them) against its
/// definition, for every kernel the machine has (the AVX-512 transpose of
/// `RowOps::pack_pairs` on `avx512bf16`/`amx`) and the scalar one (the
/// pair-by-pair loop): widths of 32 and 16, 14 (A~'s `MR` on AVX-512,
/// masked stores) and 24 (which no transpose takes), edge lanes,
/// misaligned starts, depths with and without a tail of slots and odd
/// ones; fresh random bits, a poisoned destination.
#[test]
fn bf16_pairs_packing_of_contiguous_lanes_matches_its_definition() {
    struct Check<'a>(&'a mut dyn FnMut() -> u64);
    impl EachKernel for Check<'_> {
        fn kernel<K: Microkernel + RowOps>(&mut self, kern: K) {
            pairs_match_definition(kern, self.0);
        }
    }
    let mut next = fresh_rng();
    pairs_match_definition(ScalarKernel, &mut next);
    each_microkernel(&mut Check(&mut next));
}

fn pairs_match_definition<K: RowOps>(kern: K, next: &mut dyn FnMut() -> u64) {
    for (rows, cols, rs_pad) in [(40, 100, 0), (33, 512, 3), (32, 65, 1), (7, 31, 2)] {
        let rs = cols + rs_pad;
        let data: Vec<bf16> = (0..rows * rs)
            .map(|_| bf16::from_bits(next() as u16))
            .collect();
        let shape = (rows, cols, rs);
        each_packed_window(
            kern,
            &data,
            shape,
            &[32, 16, 14, 24],
            Format::Bf16Pairs,
            |p, dst| {
                let bits = |lane: usize, d: usize| -> u32 {
                    if lane < p.lanes && d < p.depth {
                        u32::from(data[(p.l0 + lane) * rs + p.d0 + d].to_bits())
                    } else {
                        0
                    }
                };
                for s in 0..Format::Bf16Pairs.slots(p.depth) {
                    for lane in 0..p.w {
                        let want = bits(lane, 2 * s) | bits(lane, 2 * s + 1) << 16;
                        assert_eq!(
                            dst[s * p.w + lane].to_bits(),
                            want,
                            "{rows}x{cols} rs {rs}, {p:?}: slot {s} lane {lane}"
                        );
                    }
                }
            },
        );
    }
}

/// One window of a packing test: lanes `l0..l0 + lanes` of a panel `w`
/// wide, depth `d0..d0 + depth`.
#[derive(Debug)]
struct Window {
    l0: usize,
    lanes: usize,
    d0: usize,
    depth: usize,
    w: usize,
}

/// Packs, at each width, the windows the packing tests check of the
/// `rows x cols` matrix in `data` (row stride `rs`, depth along rows):
/// from lane 0, half-way down and lane 1; from depth 0, 1 and a third in,
/// to the end. Each lands in a poisoned destination handed to `check`.
fn each_packed_window<K: RowOps, T: Element>(
    kern: K,
    data: &[T],
    (rows, cols, rs): (usize, usize, usize),
    widths: &[usize],
    fmt: Format,
    mut check: impl FnMut(&Window, &[f32]),
) {
    let v = MatRef::strided(data, rows, cols, rs, 1).unwrap();
    for &w in widths {
        for (l0, d0) in [(0, 0), (rows / 2, 1), (1, cols / 3)] {
            let depth = cols - d0;
            let lanes = w.min(rows - l0);
            let mut dst = vec![f32::from_bits(0x7FC0_DEAD); fmt.slots(depth) * w];
            let mut tmp = Vec::new();
            pack_panel(kern, v, l0, lanes, d0, depth, w, fmt, &mut dst, &mut tmp);
            let window = Window {
                l0,
                lanes,
                d0,
                depth,
                w,
            };
            check(&window, &dst);
        }
    }
}

/// The f32-format packing of lanes whose depth is contiguous (A~ of a
/// row-major A, B~ of a column-major B such as `Linear` weights) against
/// its definition, `dst[s * w + lane] = v[l0 + lane][d0 + s]` widened, for
/// every kernel the machine has (AVX2's 8 x 8 transposes at `MR` and
/// `NR`, AVX-512's 16 x 16 at multiples of 16) and the scalar one, for
/// f32, bf16 and f16: widths 6, 14, 16, 32 and 24, edge lanes, misaligned
/// starts, depths with and without a tail; fresh random bits (NaN and inf
/// among them), a poisoned destination.
#[test]
fn f32_packing_of_contiguous_lanes_matches_widening() {
    struct Check<'a>(&'a mut dyn FnMut() -> u64);
    impl EachKernel for Check<'_> {
        fn kernel<K: Microkernel + RowOps>(&mut self, kern: K) {
            widening_matches_definition::<K, f32>(kern, self.0);
            widening_matches_definition::<K, bf16>(kern, self.0);
            widening_matches_definition::<K, half::f16>(kern, self.0);
        }
    }
    let mut next = fresh_rng();
    Check(&mut next).kernel(ScalarKernel);
    each_microkernel(&mut Check(&mut next));
}

fn widening_matches_definition<K: RowOps, T: Element>(kern: K, next: &mut dyn FnMut() -> u64) {
    let from_bits = |b: u64| match size_of::<T>() {
        4 => T::from_f32(f32::from_bits(b as u32)),
        _ => T::from_f32(bf16::from_bits(b as u16).to_f32()),
    };
    for (rows, cols, rs_pad) in [(40, 100, 0), (33, 300, 3), (32, 65, 1), (7, 31, 2)] {
        let rs = cols + rs_pad;
        let data: Vec<T> = (0..rows * rs).map(|_| from_bits(next())).collect();
        let shape = (rows, cols, rs);
        each_packed_window(
            kern,
            &data,
            shape,
            &[6, 14, 16, 32, 24],
            Format::F32,
            |p, dst| {
                for s in 0..p.depth {
                    for lane in 0..p.w {
                        let want = if lane < p.lanes {
                            data[(p.l0 + lane) * rs + p.d0 + s].to_f32()
                        } else {
                            0.0
                        };
                        let got = dst[s * p.w + lane];
                        assert!(
                            got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                            "{:?} {rows}x{cols} rs {rs}, {p:?}: slot {s} lane {lane}: {got:e} want {want:e}",
                            T::DTYPE
                        );
                    }
                }
            },
        );
    }
}
