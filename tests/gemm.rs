//! GEMM on every backend against an f64 reference computed on the same
//! (already rounded) inputs, within DESIGN.md's bound:
//! `|C - C_exact| <= c * k * 2^-24 * sum|a||b|` plus the epilogue's f32
//! roundings and the final rounding to C's type.

mod common;

use common::{Rng, backends};
use halfkern::Isa;
use halfkern::{
    Activation, Backend, Bias, DType, Element, Error, Gemm, MatMut, MatRef, Threads, bf16, f16,
};

/// The bound's constant `c`.
const C_BOUND: f64 = 2.0;

/// A matrix's storage and how a view walks it.
#[derive(Clone, Copy, Debug)]
enum Layout {
    RowMajor,
    ColMajor,
    /// Row-major with a padded leading dimension.
    Padded(usize),
    /// Column-major with padding, seen through `.t()` of a row-major view.
    Transposed,
}

const LAYOUTS: [Layout; 4] = [
    Layout::RowMajor,
    Layout::ColMajor,
    Layout::Padded(3),
    Layout::Transposed,
];

/// `(row_stride, col_stride, storage length)` of a `rows x cols` matrix.
fn strides(layout: Layout, rows: usize, cols: usize) -> (usize, usize, usize) {
    match layout {
        Layout::RowMajor => (cols, 1, rows * cols),
        Layout::ColMajor => (1, rows, rows * cols),
        Layout::Padded(p) => (cols + p, 1, rows * (cols + p)),
        // Stored as the row-major transpose (`cols x rows`, ld rows + 2).
        Layout::Transposed => (1, rows + 2, cols * (rows + 2)),
    }
}

/// A matrix with its storage, generated from f32 values rounded to `T`.
struct Mat<T> {
    data: Vec<T>,
    rows: usize,
    cols: usize,
    layout: Layout,
}

impl<T: Element> Mat<T> {
    fn new(rng: &mut Rng, rows: usize, cols: usize, layout: Layout, scale: f32) -> Self {
        let (_, _, len) = strides(layout, rows, cols);
        // Unused padding gets NaN: a kernel that reads it poisons results.
        let mut data = vec![T::from_f32(f32::NAN); len];
        let (rs, cs, _) = strides(layout, rows, cols);
        for i in 0..rows {
            for j in 0..cols {
                data[i * rs + j * cs] = T::from_f32(rng.unit() * scale);
            }
        }
        Mat {
            data,
            rows,
            cols,
            layout,
        }
    }

    /// A random matrix in one of the first `layouts` layouts.
    fn new_any(rng: &mut Rng, rows: usize, cols: usize, layouts: usize, scale: f32) -> Self {
        let layout = LAYOUTS[rng.below(layouts)];
        Mat::new(rng, rows, cols, layout, scale)
    }

    /// The view; a `Transposed` one is built with `.t()` of its storage.
    fn view(&self) -> MatRef<'_, T> {
        match self.layout {
            Layout::Transposed => {
                MatRef::strided(&self.data, self.cols, self.rows, self.rows + 2, 1)
                    .unwrap()
                    .t()
            }
            _ => {
                let (rs, cs, _) = strides(self.layout, self.rows, self.cols);
                MatRef::strided(&self.data, self.rows, self.cols, rs, cs).unwrap()
            }
        }
    }

    fn view_mut(&mut self) -> MatMut<'_, T> {
        match self.layout {
            Layout::Transposed => {
                MatMut::strided(&mut self.data, self.cols, self.rows, self.rows + 2, 1)
                    .unwrap()
                    .t()
            }
            _ => {
                let (rs, cs, _) = strides(self.layout, self.rows, self.cols);
                MatMut::strided(&mut self.data, self.rows, self.cols, rs, cs).unwrap()
            }
        }
    }

    fn get(&self, i: usize, j: usize) -> f64 {
        let (rs, cs, _) = strides(self.layout, self.rows, self.cols);
        self.data[i * rs + j * cs].to_f32() as f64
    }

    fn set(&mut self, i: usize, j: usize, x: f32) {
        let (rs, cs, _) = strides(self.layout, self.rows, self.cols);
        self.data[i * rs + j * cs] = T::from_f32(x);
    }
}

/// The exact value of output `(i, j)` and the tolerance the contract allows.
struct Expect {
    exact: f64,
    tol: f64,
}

/// f64 reference of the whole epilogue (see `Gemm`'s docs).
#[allow(clippy::too_many_arguments)]
fn expect<T: Element>(
    a: &Mat<T>,
    b: &Mat<T>,
    old: f64,
    i: usize,
    j: usize,
    p: &Params,
    c_ulp: f64,
) -> Expect {
    let k = a.cols;
    let (mut acc, mut abs) = (0.0f64, 0.0f64);
    for l in 0..k {
        let x = a.get(i, l) * b.get(l, j);
        acc += x;
        abs += x.abs();
    }
    let eps = 2f64.powi(-24);
    let scale = p.alpha as f64 * p.inv_scale.unwrap_or(1.0) as f64;
    let mut t = acc * scale;
    let mut tol = C_BOUND * k as f64 * eps * abs * scale.abs();
    let mut mag = t.abs();
    if p.beta != 0.0 {
        t += p.beta as f64 * old;
        mag += (p.beta as f64 * old).abs();
    }
    t += match p.bias {
        BiasKind::None => 0.0,
        BiasKind::Row => p.bias_row[i] as f64,
        BiasKind::Col => p.bias_col[j] as f64,
    };
    mag += t.abs();
    // The epilogue's own f32 roundings (at most a few per output), and an
    // absolute term for subnormal inputs a dot instruction flushes.
    tol += 4.0 * eps * mag + 2f64.powi(-100);
    let (exact, tol) = match p.act {
        Activation::Relu => (t.max(0.0), tol),
        Activation::GeluTanh => {
            let u = (2.0 / std::f64::consts::PI).sqrt() * (t + 0.044715 * t * t * t);
            // GELU's slope is below 1.13; f32 tanh adds a few ulps.
            (
                0.5 * t * (1.0 + u.tanh()),
                1.13 * tol + 8.0 * eps * t.abs() + 1e-30,
            )
        }
        _ => (t, tol),
    };
    // The final rounding to C's type: half an ulp, plus the subnormal step.
    let tol = tol * (1.0 + c_ulp) + exact.abs() * c_ulp / 2.0 + 2f64.powi(-24);
    Expect { exact, tol }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum BiasKind {
    None,
    Row,
    Col,
}

#[derive(Clone, Debug)]
struct Params {
    alpha: f32,
    beta: f32,
    inv_scale: Option<f32>,
    bias: BiasKind,
    bias_row: Vec<f32>,
    bias_col: Vec<f32>,
    act: Activation,
    threads: Threads,
    /// The hidden kernel override (`vdpbf16ps` forced on or off).
    dot: Option<bool>,
}

impl Params {
    fn plain(m: usize, n: usize) -> Self {
        Params {
            alpha: 1.0,
            beta: 0.0,
            inv_scale: None,
            bias: BiasKind::None,
            bias_row: vec![0.0; m],
            bias_col: vec![0.0; n],
            act: Activation::None,
            threads: Threads::Single,
            dot: None,
        }
    }

    fn gemm(&self) -> Gemm<'_> {
        let mut g = Gemm::new()
            .alpha(self.alpha)
            .beta(self.beta)
            .activation(self.act)
            .threads(self.threads)
            .dot_kernel(self.dot)
            .bias(match self.bias {
                BiasKind::None => Bias::None,
                BiasKind::Row => Bias::PerRow(&self.bias_row),
                BiasKind::Col => Bias::PerCol(&self.bias_col),
            });
        if let Some(s) = self.inv_scale {
            g = g.unscale(s);
        }
        g
    }
}

fn ulp_of<C: Element>() -> f64 {
    match C::DTYPE {
        halfkern::DType::F32 => 2f64.powi(-23),
        halfkern::DType::Bf16 => 2f64.powi(-7),
        _ => 2f64.powi(-10),
    }
}

/// Runs one GEMM on `backend` and checks every output, and that the padding
/// of C was not touched. Returns the report.
#[allow(clippy::too_many_arguments)]
fn check_case<T: Element, C: Element>(
    backend: Backend,
    a: &Mat<T>,
    b: &Mat<T>,
    c_layout: Layout,
    p: &Params,
    rng: &mut Rng,
    packed: bool,
    what: &str,
) -> halfkern::GemmReport {
    let what = &format!("{what} dot={:?}", p.dot);
    let (m, n) = (a.rows, b.cols);
    let mut c: Mat<C> = Mat::new(rng, m, n, c_layout, 4.0);
    if p.beta == 0.0 {
        for i in 0..m {
            for j in 0..n {
                c.set(i, j, f32::NAN); // beta = 0 must never read C
            }
        }
    }
    let before = c.data.clone();
    let c_old: Vec<f64> = (0..m * n).map(|x| c.get(x / n, x % n)).collect();
    let g = p.gemm();
    let report = {
        let cv = c.view_mut();
        if packed {
            let pb = backend.pack_b_for(b.view(), &g).unwrap();
            backend.gemm_packed(a.view(), &pb, cv, &g)
        } else {
            backend.gemm(a.view(), b.view(), cv, &g)
        }
    }
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut nonfinite = 0;
    for i in 0..m {
        for j in 0..n {
            let e = expect(a, b, c_old[i * n + j], i, j, p, ulp_of::<C>());
            let got = c.get(i, j);
            nonfinite += usize::from(!got.is_finite());
            let ok = if e.exact.is_nan() {
                got.is_nan()
            } else if e.exact.is_infinite() {
                got == e.exact
            } else {
                (got - e.exact).abs() <= e.tol
            };
            assert!(
                ok,
                "{what} {}: C[{i},{j}] = {got:e}, want {:e} +- {:e} (m={m} n={n} k={}, {p:?})",
                backend.isa(),
                e.exact,
                e.tol,
                a.cols
            );
        }
    }
    assert_eq!(report.nonfinite, nonfinite, "{what}: report.nonfinite");
    // Elements outside the view (padding) are untouched.
    let (rs, cs, _) = strides(c.layout, m, n);
    let mut inside = vec![false; c.data.len()];
    for i in 0..m {
        for j in 0..n {
            inside[i * rs + j * cs] = true;
        }
    }
    for (idx, (x, y)) in before.iter().zip(&c.data).enumerate() {
        if !inside[idx] {
            assert_eq!(
                x.to_f32().to_bits(),
                y.to_f32().to_bits(),
                "{what}: padding"
            );
        }
    }
    report
}

/// Every backend, plus the two bf16 kernels of `avx512bf16`/`amx`/`neonbf16`
/// forced (`vdpbf16ps` or `BFMMLA`, and widening), so both are tested
/// whichever the CPU prefers.
fn variants() -> Vec<(Backend, Option<bool>)> {
    let mut v = Vec::new();
    for b in backends() {
        v.push((b, None));
        if matches!(b.isa(), Isa::Avx512Bf16 | Isa::Amx | Isa::NeonBf16) {
            v.push((b, Some(true)));
            v.push((b, Some(false)));
        }
    }
    v
}

/// Small shapes around the microkernel tile sizes, k across the KC
/// boundary, every layout and every type pair, on every backend.
fn shapes_sweep<T: Element, C: Element>(name: &str) {
    let mut rng = Rng::fresh(name);
    let ms: Vec<usize> = (0..=9).chain([15, 16, 17, 31, 33]).collect();
    // Every n % 12 and n % 16, and 2 * NR + 1 for NR = 12 (NEON) and 16.
    let ns: Vec<usize> = (0..=9)
        .chain([11, 12, 13, 15, 16, 17, 23, 24, 25, 31, 32, 33, 48, 65])
        .collect();
    let ks = [0usize, 1, 2, 3, 7, 16, 33, 255, 256, 257, 513, 520];
    for (backend, dot) in variants() {
        for (t, &k) in ks.iter().enumerate() {
            for &m in &ms {
                for &n in &ns {
                    // Thin the sweep for large k: a diagonal band suffices.
                    if k > 100 && (m + n + t) % 5 != 0 {
                        continue;
                    }
                    let la = LAYOUTS[rng.below(4)];
                    let lb = LAYOUTS[rng.below(4)];
                    let lc = LAYOUTS[rng.below(3)]; // transposed C below
                    let a: Mat<T> = Mat::new(&mut rng, m, k, la, 2.0);
                    let b: Mat<T> = Mat::new(&mut rng, k, n, lb, 2.0);
                    let mut p = Params::plain(m, n);
                    p.beta = [0.0, 1.0, -0.75][rng.below(3)];
                    p.dot = dot;
                    check_case::<T, C>(backend, &a, &b, lc, &p, &mut rng, false, name);
                }
            }
        }
    }
}

#[test]
fn shapes_bf16_f32() {
    shapes_sweep::<bf16, f32>("shapes_bf16_f32");
}
#[test]
fn shapes_f16_f32() {
    shapes_sweep::<f16, f32>("shapes_f16_f32");
}
#[test]
fn shapes_f32_f32() {
    shapes_sweep::<f32, f32>("shapes_f32_f32");
}
#[test]
fn shapes_bf16_bf16() {
    shapes_sweep::<bf16, bf16>("shapes_bf16_bf16");
}
#[test]
fn shapes_f16_f16() {
    shapes_sweep::<f16, f16>("shapes_f16_f16");
}

/// Every epilogue option on every backend, types mixed.
fn epilogues<T: Element, C: Element>(name: &str) {
    let mut rng = Rng::fresh(name);
    for (backend, dot) in variants() {
        for round in 0..60 {
            let (m, n, k) = (1 + rng.below(40), 1 + rng.below(70), rng.below(300));
            let a: Mat<T> = Mat::new_any(&mut rng, m, k, 4, 1.0);
            let b: Mat<T> = Mat::new_any(&mut rng, k, n, 4, 1.0);
            let mut p = Params::plain(m, n);
            p.alpha = [1.0, -2.5, 0.5][rng.below(3)];
            p.beta = [0.0, 1.0, 0.3][rng.below(3)];
            p.inv_scale = [None, Some(1.0 / 1024.0), Some(3.0)][rng.below(3)];
            p.bias = [BiasKind::None, BiasKind::Row, BiasKind::Col][rng.below(3)];
            p.bias_row = (0..m).map(|_| rng.unit() * 3.0).collect();
            p.bias_col = (0..n).map(|_| rng.unit() * 3.0).collect();
            p.act = [Activation::None, Activation::Relu, Activation::GeluTanh][rng.below(3)];
            p.dot = dot;
            let packed = round % 2 == 1;
            check_case::<T, C>(
                backend,
                &a,
                &b,
                LAYOUTS[rng.below(3)],
                &p,
                &mut rng,
                packed,
                name,
            );
        }
    }
}

#[test]
fn epilogues_bf16() {
    epilogues::<bf16, f32>("epilogues_bf16_f32");
    epilogues::<bf16, bf16>("epilogues_bf16_bf16");
}
#[test]
fn epilogues_f16() {
    epilogues::<f16, f16>("epilogues_f16_f16");
    epilogues::<f16, f32>("epilogues_f16_f32");
}
#[test]
fn epilogues_f32() {
    epilogues::<f32, f32>("epilogues_f32_f32");
    epilogues::<f32, bf16>("epilogues_f32_bf16");
}

/// Inf and NaN in A or B reach exactly the outputs they touch; the report
/// counts them; overflow by unscaling and by rounding to f16 is counted.
#[test]
fn nonfinite_inputs_propagate() {
    let mut rng = Rng::fresh("nonfinite_inputs_propagate");
    for (backend, dot) in variants() {
        for round in 0..40 {
            let (m, n, k) = (1 + rng.below(20), 1 + rng.below(40), 1 + rng.below(40));
            let mut a: Mat<bf16> = Mat::new_any(&mut rng, m, k, 4, 1.0);
            let mut b: Mat<bf16> = Mat::new_any(&mut rng, k, n, 4, 1.0);
            for _ in 0..2 {
                let x = [f32::INFINITY, f32::NEG_INFINITY, f32::NAN][rng.below(3)];
                if rng.below(2) == 0 {
                    a.set(rng.below(m), rng.below(k), x);
                } else {
                    b.set(rng.below(k), rng.below(n), x);
                }
            }
            let mut p = Params::plain(m, n);
            p.beta = [0.0, 1.0][round % 2];
            p.inv_scale = Some(0.5);
            p.dot = dot;
            // One check per C type: f32 and bf16 C row-major with B as
            // given, f16 C column-major through a `PackedB`.
            macro_rules! check_c {
                ($c:ty, $layout:expr, $packed:expr) => {
                    check_case::<bf16, $c>(backend, &a, &b, $layout, &p, &mut rng, $packed, "inf")
                };
            }
            check_c!(f32, Layout::RowMajor, false);
            check_c!(f16, Layout::ColMajor, true);
            check_c!(bf16, Layout::RowMajor, false);
        }
        // Finite inputs whose unscaled result overflows f16.
        let a: Mat<f32> = Mat {
            data: vec![60000.0; 4],
            rows: 2,
            cols: 2,
            layout: Layout::RowMajor,
        };
        let b: Mat<f32> = Mat {
            data: vec![1.0, 0.0, 0.0, 1.0],
            rows: 2,
            cols: 2,
            layout: Layout::RowMajor,
        };
        let mut c = vec![f16::ZERO; 4];
        let r = backend
            .gemm(
                a.view(),
                b.view(),
                MatMut::row_major(&mut c, 2, 2).unwrap(),
                &Gemm::new().unscale(2.0),
            )
            .unwrap();
        assert_eq!(r.nonfinite, 4, "{}", backend.isa());
        assert!(c.iter().all(|x| x.is_infinite()));
        // Finite f32 results that round to bf16 infinity (3.4e38 is past
        // the midpoint above bf16's largest finite value), m large enough
        // for the blocked path and its vector epilogue.
        let (m, n) = (24, 40);
        let a = vec![3.4e38f32; m * 2];
        let b: Vec<f32> = (0..2 * n).map(|x| if x < n { 1.0 } else { 0.0 }).collect();
        let mut c = vec![bf16::ZERO; m * n];
        let r = backend
            .gemm(
                MatRef::row_major(&a, m, 2).unwrap(),
                MatRef::row_major(&b, 2, n).unwrap(),
                MatMut::row_major(&mut c, m, n).unwrap(),
                &Gemm::new(),
            )
            .unwrap();
        assert_eq!(r.nonfinite, m * n, "{}", backend.isa());
        assert!(c.iter().all(|x| x.is_infinite()), "{}", backend.isa());
    }
}

/// Shapes of several row blocks (MC = 168 rows at most) and column blocks
/// (NC = 1024 at most) and KC blocks with a tail: a thread packs A~ once
/// per row block over all of k and reuses it for the row block's column
/// blocks, which these check against the reference with 1, 2 and 3
/// threads (a stale or misplaced A~ block gives wrong columns past 1024).
#[test]
fn blocks_reuse_packed_a() {
    let mut rng = Rng::fresh("blocks_reuse_packed_a");
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    for (backend, dot) in variants() {
        for (m, n, k) in [(170, 1100, 300), (40, 1030, 600), (350, 1030, 97)] {
            let (la, lb) = (LAYOUTS[rng.below(4)], LAYOUTS[rng.below(4)]);
            let a: Mat<bf16> = Mat::new(&mut rng, m, k, la, 1.0);
            let b: Mat<bf16> = Mat::new(&mut rng, k, n, lb, 1.0);
            for threads in [Threads::Single, Threads::Count(2), Threads::Count(3)] {
                let mut p = Params::plain(m, n);
                p.beta = [0.0, 1.0][rng.below(2)];
                p.threads = threads;
                p.dot = dot;
                let lc = LAYOUTS[rng.below(3)];
                pool.install(|| {
                    check_case::<bf16, bf16>(backend, &a, &b, lc, &p, &mut rng, false, "blocks")
                });
            }
        }
    }
}

/// Threads 1, 2 and 3 give bit-identical results (each output is summed in
/// the same order whatever the split).
#[test]
fn threads_agree() {
    let mut rng = Rng::fresh("threads_agree");
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    for backend in backends() {
        // Six random shapes, then the small-m path's column blocks dealt
        // out to the threads (row-major B, several blocks per thread).
        let small = [(1, 3000, 40), (16, 1100, 33), (5, 700, 20)];
        for i in 0..6 + small.len() {
            let ((m, n, k), layouts) = match small.get(i.wrapping_sub(6)) {
                Some(&shape) => (shape, 1),
                None => ((1 + rng.below(300), 1 + rng.below(300), rng.below(600)), 4),
            };
            let a: Mat<bf16> = Mat::new_any(&mut rng, m, k, layouts, 1.0);
            let b: Mat<bf16> = Mat::new_any(&mut rng, k, n, layouts, 1.0);
            let mut outs = Vec::new();
            for threads in [
                Threads::Single,
                Threads::Count(2),
                Threads::Count(3),
                Threads::Auto,
            ] {
                let mut c = vec![0.0f32; m * n];
                pool.install(|| {
                    backend
                        .gemm(
                            a.view(),
                            b.view(),
                            MatMut::row_major(&mut c, m, n).unwrap(),
                            &Gemm::new().threads(threads),
                        )
                        .unwrap()
                });
                outs.push(c.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
            }
            assert!(
                outs.windows(2).all(|w| w[0] == w[1]),
                "{} m={m} n={n} k={k}",
                backend.isa()
            );
        }
    }
}

/// PackedB gives bit-identical results to the unpacked call, reused across
/// several A: for m <= 16 the unpacked call streams B (the small-m path,
/// which widens B in registers) and must land on the packed kernels' bits.
/// bf16 runs with the widening kernel forced (a bf16 dot kernel rounds
/// pairs, the small-m path each product).
#[test]
fn packed_b_reuse_equals_unpacked() {
    packed_b_reuse_equals_unpacked_for::<f16>();
    packed_b_reuse_equals_unpacked_for::<bf16>();
    packed_b_reuse_equals_unpacked_for::<f32>();
}

/// gemm_packed gives the bits of gemm, except on the small-m path of a
/// column-major B (`gemv-dot`), whose different order stays in the bound.
fn packed_b_reuse_equals_unpacked_for<T: Element>() {
    let mut rng = Rng::fresh("packed_b_reuse_equals_unpacked");
    for backend in backends() {
        let (n, k) = (1 + rng.below(100), rng.below(300));
        let b: Mat<T> = Mat::new_any(&mut rng, k, n, 4, 1.0);
        let g = Gemm::new()
            .threads(Threads::Single)
            .dot_kernel((T::DTYPE == DType::Bf16).then_some(false));
        let packed = backend.pack_b_for(b.view(), &g).unwrap();
        assert_eq!((packed.rows(), packed.cols()), (k, n));
        for m in [1, 3, 16, 17, 50] {
            let a: Mat<T> = Mat::new_any(&mut rng, m, k, 4, 1.0);
            let mut c1 = vec![0.0f32; m * n];
            let mut c2 = vec![0.0f32; m * n];
            let unpacked = backend
                .gemm(
                    a.view(),
                    b.view(),
                    MatMut::row_major(&mut c1, m, n).unwrap(),
                    &g,
                )
                .unwrap();
            backend
                .gemm_packed(
                    a.view(),
                    &packed,
                    MatMut::row_major(&mut c2, m, n).unwrap(),
                    &g,
                )
                .unwrap();
            if unpacked.kernel == "gemv-dot" {
                // A column-major B with few rows of A: dot products in lanes,
                // another order than the packed path's. Both within the
                // bound of the exact value, so within twice it of each other.
                for i in 0..m {
                    for j in 0..n {
                        let abs: f64 = (0..k).map(|l| (a.get(i, l) * b.get(l, j)).abs()).sum();
                        let tol = 2.0 * C_BOUND * k as f64 * 2f64.powi(-24) * abs;
                        let (x, y) = (c1[i * n + j] as f64, c2[i * n + j] as f64);
                        assert!((x - y).abs() <= tol, "{} m={m} n={n} k={k}", backend.isa());
                    }
                }
                continue;
            }
            let bits = |c: &[f32]| c.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&c1),
                bits(&c2),
                "{} {:?} m={m} n={n} k={k}",
                backend.isa(),
                T::DTYPE
            );
        }
    }
}

/// A bf16 `PackedB` in the pair layout (packed for a `vdpbf16ps` or AMX
/// kernel) with few rows of A streams its panels (`gemv-pairs`, one or
/// two passes of up to 8 rows): on every backend whose kernel packs pairs,
/// for m = 1..=17 (one pass, two, and the tile kernel past them), n around
/// the 32-lane panels, odd and even k, one and three threads, NaN and inf
/// in A or B, C poisoned. Each output is within the bound of the f64
/// reference (NaN and infinities where it has them), and where the tile
/// kernel is `vdpbf16ps` too, the bits of that kernel's rows for the same
/// A rows inside a larger A.
#[test]
fn packed_pairs_for_few_rows() {
    let mut rng = Rng::fresh("packed_pairs_for_few_rows");
    let special = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY];
    for backend in backends() {
        for dot in [None, Some(true)] {
            for threads in [Threads::Single, Threads::Count(3)] {
                let g = Gemm::new().threads(threads).dot_kernel(dot);
                for m in 0..=17 {
                    let n = [1, 7, 31, 32, 33, 64, 65, 100][rng.below(8)];
                    let k = [0, 1, 2, 3, 17, 64, 255, 600][rng.below(8)];
                    let mut adata: Vec<bf16> = (0..m * k)
                        .map(|_| bf16::from_f32(rng.unit() * 2.0 - 1.0))
                        .collect();
                    let mut bdata: Vec<bf16> = (0..k * n)
                        .map(|_| bf16::from_f32(rng.unit() * 2.0 - 1.0))
                        .collect();
                    if rng.below(3) == 0 && k > 0 {
                        let x = special[rng.below(3)];
                        if m > 0 && rng.below(2) == 0 {
                            adata[rng.below(m * k)] = bf16::from_f32(x);
                        } else {
                            bdata[rng.below(k * n)] = bf16::from_f32(x);
                        }
                    }
                    let b = MatRef::row_major(&bdata, k, n).unwrap();
                    let packed = backend.pack_b_for(b, &g).unwrap();
                    // The same rows inside a 20-row A, which the tile kernel takes.
                    let big_m = 20;
                    let mut big: Vec<bf16> = adata.clone();
                    big.extend((m * k..big_m * k).map(|_| bf16::from_f32(rng.unit())));
                    let mut c_big = vec![f32::NAN; big_m * n];
                    let r_big = backend
                        .gemm_packed(
                            MatRef::row_major(&big, big_m, k).unwrap(),
                            &packed,
                            MatMut::row_major(&mut c_big, big_m, n).unwrap(),
                            &g,
                        )
                        .unwrap();
                    let mut c = vec![f32::NAN; m * n];
                    let r = backend
                        .gemm_packed(
                            MatRef::row_major(&adata, m, k).unwrap(),
                            &packed,
                            MatMut::row_major(&mut c, m, n).unwrap(),
                            &g,
                        )
                        .unwrap();
                    let what = format!("{} {dot:?} {threads:?} m={m} n={n} k={k}", backend.isa());
                    let pairs = r_big.kernel.contains("dpbf16");
                    if pairs && (1..=8).contains(&m) {
                        assert_eq!(r.kernel, "gemv-pairs", "{what}");
                    }
                    if r.kernel == "gemv-pairs" && r_big.kernel == "avx512bf16-dpbf16-14x32" {
                        let bits = |c: &[f32]| c.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(&c), bits(&c_big[..m * n]), "{what}");
                    }
                    for i in 0..m {
                        for j in 0..n {
                            let products = (0..k).map(|l| {
                                adata[i * k + l].to_f32() as f64 * bdata[l * n + j].to_f32() as f64
                            });
                            assert_dot(c[i * n + j], products, k, || format!("{what}: C[{i},{j}]"));
                        }
                    }
                }
            }
        }
    }
}

/// Every bad argument is an `Err` naming it, and C is untouched.
#[test]
fn errors_leave_c_untouched() {
    let a = vec![bf16::ONE; 6];
    let b = vec![bf16::ONE; 12];
    let bias = [1.0f32; 5];
    for backend in backends() {
        let mut c = vec![7.0f32; 8];
        let av = MatRef::row_major(&a, 2, 3).unwrap();
        let bv = MatRef::row_major(&b, 3, 4).unwrap();
        let bad_b = MatRef::row_major(&b, 4, 3).unwrap();
        type Case<'a> = (MatRef<'a, bf16>, (usize, usize), Gemm<'a>, &'a str);
        let cases: Vec<Case> = vec![
            (bad_b, (2, 4), Gemm::new(), "a.cols != b.rows"),
            (bv, (4, 2), Gemm::new(), "a.rows != c.rows"),
            (bv, (2, 3), Gemm::new(), "a.rows != c.rows|b.cols != c.cols"),
            (bv, (2, 4), Gemm::new().bias(Bias::PerRow(&bias)), "bias"),
            (bv, (2, 4), Gemm::new().bias(Bias::PerCol(&bias)), "bias"),
            (bv, (2, 4), Gemm::new().unscale(0.0), "inv_scale"),
            (bv, (2, 4), Gemm::new().unscale(-1.0), "inv_scale"),
            (bv, (2, 4), Gemm::new().unscale(f32::INFINITY), "inv_scale"),
            (bv, (2, 4), Gemm::new().unscale(f32::NAN), "inv_scale"),
            (
                bv,
                (2, 4),
                Gemm::new().threads(Threads::Count(0)),
                "threads",
            ),
        ];
        for (bb, (cm, cn), g, what) in cases {
            let cv = MatMut::col_major(&mut c, cm, cn).unwrap();
            let err = backend.gemm(av, bb, cv, &g).unwrap_err();
            let msg = err.to_string();
            assert!(
                what.split('|').any(|w| msg.contains(w)),
                "{}: {msg} should name {what}",
                backend.isa()
            );
            assert!(
                c.iter().all(|&x| x == 7.0),
                "{}: C changed on Err",
                backend.isa()
            );
            let packed = backend.pack_b(bb).unwrap();
            let cv = MatMut::col_major(&mut c, cm, cn).unwrap();
            assert!(backend.gemm_packed(av, &packed, cv, &g).is_err());
            assert!(c.iter().all(|&x| x == 7.0));
        }
    }
    // View construction.
    let d = [0.0f32; 6];
    let mut dm = [0.0f32; 6];
    assert_eq!(
        MatRef::row_major(&d, 2, 4).unwrap_err(),
        Error::SliceTooShort {
            arg: "matrix",
            needed: 8,
            len: 6
        }
    );
    assert!(matches!(
        MatRef::col_major(&d, 4, 2),
        Err(Error::SliceTooShort { needed: 8, .. })
    ));
    assert!(matches!(
        MatRef::strided(&d, 2, 2, 5, 1),
        Err(Error::SliceTooShort { needed: 7, .. })
    ));
    assert!(matches!(
        MatRef::strided(&d, 3, 2, usize::MAX / 2, 1),
        Err(Error::Overflow { .. })
    ));
    assert!(matches!(
        MatRef::row_major(&d, usize::MAX, 3),
        Err(Error::Overflow { .. })
    ));
    assert!(matches!(
        MatMut::strided(&mut dm, 2, 3, 2, 1),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        MatMut::strided(&mut dm, 2, 2, 0, 1),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        MatMut::row_major(&mut dm, 3, 3),
        Err(Error::SliceTooShort { .. })
    ));
    assert!(MatMut::strided(&mut dm, 1, 6, 0, 1).is_ok());
    assert!(MatMut::row_major(&mut dm, 0, 100).is_ok());
    assert!(dm.iter().all(|&x| x == 0.0));
}

/// Zero-sized shapes do nothing (k = 0 still applies the epilogue).
#[test]
fn zero_sizes() {
    for backend in backends() {
        let e: [f32; 0] = [];
        let mut c = [5.0f32; 4];
        let bias = [1.0f32, 2.0];
        let r = backend
            .gemm(
                MatRef::row_major(&e, 2, 0).unwrap(),
                MatRef::row_major(&e, 0, 2).unwrap(),
                MatMut::row_major(&mut c, 2, 2).unwrap(),
                &Gemm::new().beta(2.0).bias(Bias::PerRow(&bias)),
            )
            .unwrap();
        assert_eq!(c, [11.0, 11.0, 12.0, 12.0]);
        assert_eq!(r.nonfinite, 0);
        let mut none: [f32; 0] = [];
        backend
            .gemm(
                MatRef::row_major(&c, 0, 4).unwrap(),
                MatRef::row_major(&c, 4, 0).unwrap(),
                MatMut::row_major(&mut none, 0, 0).unwrap(),
                &Gemm::new(),
            )
            .unwrap();
    }
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(64))]
    #[test]
    fn proptest_shapes(m in 0usize..40, n in 0usize..70, k in 0usize..300,
                       la in 0usize..4, lb in 0usize..4, lc in 0usize..3, beta in 0usize..3) {
        let mut rng = Rng::fresh("proptest_shapes");
        let a: Mat<bf16> = Mat::new(&mut rng, m, k, LAYOUTS[la], 1.0);
        let b: Mat<bf16> = Mat::new(&mut rng, k, n, LAYOUTS[lb], 1.0);
        let mut p = Params::plain(m, n);
        p.beta = [0.0, 1.0, -2.0][beta];
        for (backend, dot) in variants() {
            p.dot = dot;
            check_case::<bf16, f32>(backend, &a, &b, LAYOUTS[lc], &p, &mut rng, dot.is_some(), "proptest");
        }
    }
}

/// Whether a kernel (by its report name) is a bf16 dot kernel, which
/// flushes subnormal inputs (`vdpbf16ps`, `BFMMLA`).
fn is_dot_kernel(name: &str) -> bool {
    name.contains("dpbf16") || name.contains("bfmmla")
}

/// bf16 subnormal inputs: exact on the widening kernels, flushed to zero by
/// `vdpbf16ps`, `BFMMLA` and AMX's `tdpbf16ps` (the `amx` default for bf16;
/// each documented on its kernel).
#[test]
fn bf16_subnormal_inputs() {
    let tiny = bf16::from_bits(0x0001); // 2^-133
    let a = [tiny; 40];
    let b = [bf16::ONE; 40];
    for (backend, dot) in variants() {
        // (Two columns: one column runs as `x^T A^T` on the streaming
        // path, which widens whatever the kernel choice.)
        for m in [1usize, 20] {
            let mut c = vec![f32::NAN; m * 2];
            let report = backend
                .gemm(
                    MatRef::row_major(&a[..m * 2], m, 2).unwrap(),
                    MatRef::row_major(&b[..4], 2, 2).unwrap(),
                    MatMut::row_major(&mut c, m, 2).unwrap(),
                    &Gemm::new().dot_kernel(dot),
                )
                .unwrap();
            let exact = 2.0 * tiny.to_f32();
            // Forced, or the backend's default for bf16.
            let flushes = dot == Some(true) || (dot.is_none() && is_dot_kernel(report.kernel));
            for &x in &c {
                if flushes {
                    assert_eq!(x, 0.0, "{} m={m}: the dot kernel flushes", backend.isa());
                } else {
                    assert_eq!(x, exact, "{} m={m} dot={dot:?}", backend.isa());
                }
            }
        }
    }
}

/// Each backend runs its own microkernel (a dispatch slip to another ISA's,
/// or to the portable one, would pass every accuracy test): the report
/// names it. On `neonbf16`, bf16 takes `BFMMLA` unless widening is forced,
/// f16 and f32 the NEON FMLA kernel.
#[test]
fn each_backend_runs_its_kernel() {
    let (m, n, k) = (20, 30, 40); // above the small-m path
    fn name<T: Element>(
        backend: Backend,
        dot: Option<bool>,
        m: usize,
        n: usize,
        k: usize,
    ) -> &'static str {
        let a = vec![T::from_f32(1.0); m * k];
        let b = vec![T::from_f32(1.0); k * n];
        let mut c = vec![0.0f32; m * n];
        let r = backend
            .gemm(
                MatRef::row_major(&a, m, k).unwrap(),
                MatRef::row_major(&b, k, n).unwrap(),
                MatMut::row_major(&mut c, m, n).unwrap(),
                &Gemm::new().dot_kernel(dot),
            )
            .unwrap();
        assert!(c.iter().all(|&x| x == k as f32), "{}", backend.isa());
        r.kernel
    }
    for (backend, dot) in variants() {
        let names = [
            name::<bf16>(backend, dot, m, n, k),
            name::<f16>(backend, dot, m, n, k),
            name::<f32>(backend, dot, m, n, k),
        ];
        let fmla = "neon-f32fmla-8x12";
        let want: Option<[&str; 3]> = match backend.isa() {
            Isa::Scalar => Some(["scalar-4x8"; 3]),
            Isa::Neon => Some([fmla; 3]),
            Isa::NeonBf16 if dot == Some(false) => Some([fmla; 3]),
            Isa::NeonBf16 => Some(["neonbf16-bfmmla-8x12", fmla, fmla]),
            _ => None,
        };
        match want {
            Some(w) => assert_eq!(names, w, "{} dot={dot:?}", backend.isa()),
            None => assert!(
                names.iter().all(|x| *x != "scalar-4x8"),
                "{}: {names:?}",
                backend.isa()
            ),
        }
    }
}

/// On `amx`, bf16 inputs run the tile kernel (so every sweep above tests
/// it there) and f32 inputs the AVX-512 ones; the forced `dot` choices run
/// the `avx512bf16` kernels, and m = 1 the streaming path.
#[test]
fn amx_runs_tiles_for_bf16_only() {
    let mut rng = Rng::fresh("amx_runs_tiles_for_bf16_only");
    for backend in backends().into_iter().filter(|b| b.isa() == Isa::Amx) {
        let (m, n, k) = (40, 40, 40);
        let a: Mat<bf16> = Mat::new(&mut rng, m, k, LAYOUTS[0], 1.0);
        let b: Mat<bf16> = Mat::new(&mut rng, k, n, LAYOUTS[0], 1.0);
        let mut p = Params::plain(m, n);
        let r = check_case::<bf16, f32>(backend, &a, &b, LAYOUTS[0], &p, &mut rng, false, "amx");
        assert!(r.kernel.starts_with("amx"), "bf16 on amx ran {}", r.kernel);
        p.dot = Some(false);
        let r = check_case::<bf16, f32>(backend, &a, &b, LAYOUTS[0], &p, &mut rng, false, "amx");
        assert!(
            !r.kernel.starts_with("amx"),
            "forced widening ran {}",
            r.kernel
        );
        let a: Mat<f32> = Mat::new(&mut rng, m, k, LAYOUTS[0], 1.0);
        let b: Mat<f32> = Mat::new(&mut rng, k, n, LAYOUTS[0], 1.0);
        let r = check_case::<f32, f32>(backend, &a, &b, LAYOUTS[0], &p, &mut rng, false, "amx");
        assert!(!r.kernel.starts_with("amx"), "f32 on amx ran {}", r.kernel);
        // Small m streams B (the gemv path) instead of padding a tile.
        let a: Mat<bf16> = Mat::new(&mut rng, 1, k, LAYOUTS[0], 1.0);
        let b: Mat<bf16> = Mat::new(&mut rng, k, n, LAYOUTS[0], 1.0);
        let p = Params::plain(1, n);
        let r = check_case::<bf16, f32>(backend, &a, &b, LAYOUTS[0], &p, &mut rng, false, "amx");
        assert_eq!(r.kernel, "gemv", "m = 1 on amx");
    }
}

/// Broadcast views (stride 0) are valid however many rows they name, but
/// the packed operands such a shape implies may not fit the address space
/// or memory: every such call is a clear `Err` with C untouched, on every
/// backend, one thread and several, for every input type. Empty outputs
/// return at once without packing anything, however large the operands.
#[test]
fn extreme_broadcast_shapes_are_errors_not_panics() {
    fn on<T: Element>(backend: &Backend) {
        let one = [T::from_f32(1.5)];
        let bcast = |rows, cols| MatRef::strided(&one, rows, cols, 0, 0).unwrap();
        let (huge, big) = ((1usize << 60) + 1, 1usize << 40);
        let isa = backend.isa();
        // B~ of 2^60 rows cannot be addressed.
        let packed = backend.pack_b(bcast(huge, 1));
        assert!(
            matches!(packed, Err(Error::Overflow { arg: "b" })),
            "{isa}: {:?}",
            packed.err()
        );
        for threads in [Threads::Single, Threads::Auto] {
            let params = Gemm::new().threads(threads).beta(1.0);
            // m = 1 and m = 2 through the small-m path, m = 200 blocked:
            // k = 2^55 and more overflow or cannot be allocated, nor can
            // k = 2^40 (4 TiB of widened A or A~).
            for (m, k) in [
                (1, huge),
                (2, 1 << 61),
                (200, 1 << 55),
                (1, big),
                (200, big),
            ] {
                let mut c = vec![7.0f32; m];
                let before = c.clone();
                let got = backend.gemm(
                    bcast(m, k),
                    bcast(k, 1),
                    MatMut::row_major(&mut c, m, 1).unwrap(),
                    &params,
                );
                assert!(
                    matches!(got, Err(Error::Overflow { .. } | Error::Allocation { .. })),
                    "{isa} m={m} k={k}: {got:?}"
                );
                assert_eq!(c, before, "{isa}: a failed call wrote C");
            }
            // Empty outputs: B~ of 2^20 x 2^20 (4 TiB) is never packed.
            let mut empty: [f32; 0] = [];
            let side = 1usize << 20;
            let got = backend.gemm(
                bcast(0, side),
                bcast(side, side),
                MatMut::row_major(&mut empty, 0, side).unwrap(),
                &params,
            );
            assert_eq!(got.map(|r| r.nonfinite), Ok(0), "{isa} m = 0");
            let got = backend.gemm(
                bcast(side, side),
                bcast(side, 0),
                MatMut::row_major(&mut empty, side, 0).unwrap(),
                &params,
            );
            assert_eq!(got.map(|r| r.nonfinite), Ok(0), "{isa} n = 0");
            let small = backend.pack_b(bcast(3, 3)).unwrap();
            let got = backend.gemm_packed(
                bcast(0, 3),
                &small,
                MatMut::row_major(&mut empty, 0, 3).unwrap(),
                &params,
            );
            assert_eq!(got.map(|r| r.nonfinite), Ok(0), "{isa} packed, m = 0");
        }
    }
    for backend in backends() {
        on::<f32>(&backend);
        on::<bf16>(&backend);
        on::<f16>(&backend);
    }
}

/// Decode shapes (m <= 16, row-major B) stream B through the small-m path
/// on every backend and for every input type, the bf16 dot kernels' ISAs
/// included (packing all of B for a few rows ran several times slower),
/// and agree with the blocked path on the same inputs within the bound.
#[test]
fn small_m_streams_b_for_every_type() {
    fn on<T: Element>(backend: &Backend, rng: &mut Rng) {
        let (k, n) = (70, 45);
        let b: Vec<T> = (0..k * n)
            .map(|_| T::from_f32(rng.unit() * 2.0 - 1.0))
            .collect();
        for m in [1, 2, 16] {
            let a: Vec<T> = (0..m * k)
                .map(|_| T::from_f32(rng.unit() * 2.0 - 1.0))
                .collect();
            let mut c = vec![f32::NAN; m * n];
            let report = backend
                .gemm(
                    MatRef::row_major(&a, m, k).unwrap(),
                    MatRef::row_major(&b, k, n).unwrap(),
                    MatMut::row_major(&mut c, m, n).unwrap(),
                    &Gemm::new(),
                )
                .unwrap();
            assert_eq!(
                report.kernel,
                "gemv",
                "{} {:?} m = {m}",
                backend.isa(),
                T::DTYPE
            );
            for i in 0..m {
                for j in 0..n {
                    let (mut exact, mut abs) = (0f64, 0f64);
                    for l in 0..k {
                        let p = a[i * k + l].to_f32() as f64 * b[l * n + j].to_f32() as f64;
                        exact += p;
                        abs += p.abs();
                    }
                    let tol = C_BOUND * k as f64 * 2f64.powi(-24) * abs;
                    assert!((c[i * n + j] as f64 - exact).abs() <= tol, "({i},{j})");
                }
            }
        }
    }
    let mut rng = Rng::fresh("small_m_streams_b_for_every_type");
    for backend in backends() {
        on::<f32>(&backend, &mut rng);
        on::<bf16>(&backend, &mut rng);
        on::<f16>(&backend, &mut rng);
    }
}

/// `x`, one output of a GEMM, against the f64 sum of its `products`: NaN
/// where that is NaN, the same infinity, else within the crate's bound.
fn assert_dot(x: f32, products: impl Iterator<Item = f64>, k: usize, what: impl Fn() -> String) {
    let (mut exact, mut abs) = (0f64, 0f64);
    for p in products {
        exact += p;
        abs += p.abs();
    }
    let ok = if exact.is_nan() {
        x.is_nan()
    } else if exact.is_infinite() {
        x as f64 == exact
    } else {
        let tol = C_BOUND * k as f64 * 2f64.powi(-24) * abs;
        (x as f64 - exact).abs() <= tol
    };
    assert!(ok, "{}: {x:e}, want {exact:e}", what());
}

/// The small-m kernels (every backend's `gemv_block`: register tiles on
/// AVX2 and AVX-512, the portable loop elsewhere) on every m of the path
/// and one past it, n around each vector width and strip (and past a
/// column block), k across their passes of B rows, B seen through a
/// misaligned sub-slice with a padded row stride (its padding NaN, so a
/// read past a row poisons the result), C poisoned, NaN and inf in A and
/// B: the same bits as the kernel's tiles over a `PackedB` (one FMA per
/// product in k order on both; NaN where it is NaN), and within the bound
/// of the f64 reference. A `PackedB` with these few rows streams its
/// panels through the same kernels: its bits are checked too.
#[test]
fn small_m_kernels_match_packed_bits() {
    fn on<T: Element>(backend: Backend, rng: &mut Rng) {
        let isa = backend.isa();
        // Widening forced for bf16: the dot kernels round pairs.
        let g = Gemm::new()
            .threads(Threads::Single)
            .dot_kernel((T::DTYPE == DType::Bf16).then_some(false));
        let ks = [1usize, 3, 8, 9, 16, 17, 40];
        let ns = (0..=33).chain([47, 48, 63, 64, 65, 127, 129, 255, 257, 300, 513, 1000]);
        let ns: Vec<usize> = ns.collect();
        let special = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY];
        let mut cases: Vec<(usize, usize, usize)> = Vec::new();
        for m in 0..=17 {
            for &n in &ns {
                cases.push((m, n, ks[rng.below(ks.len())]));
            }
            // Past a column block (8192 columns for one row on AVX).
            if [1, 2, 16].contains(&m) {
                cases.push((m, 8200, 3));
            }
        }
        // Several passes of 16 rows over a B of 4 Mi elements or more,
        // which x86's f32-format kernels stream for up to 48 rows (the
        // scalar and NEON ones stop at 16, so only x86 runs these).
        if cfg!(target_arch = "x86_64") && isa != Isa::Scalar {
            for m in [33, 48] {
                cases.push((m, 2048 + rng.below(40), 2048 + rng.below(3)));
            }
        }
        let streams = |m: usize, n: usize, k: usize| {
            let large = n * k >= 1 << 22 && cfg!(target_arch = "x86_64") && isa != Isa::Scalar;
            (1..=16).contains(&m) || (large && m <= 48)
        };
        for (m, n, k) in cases {
            let off = rng.below(4);
            let rs = n + rng.below(3);
            let mut bdata = vec![T::from_f32(f32::NAN); off + k * rs];
            let mut adata: Vec<T> = (0..m * k)
                .map(|_| T::from_f32(rng.unit() * 2.0 - 1.0))
                .collect();
            for l in 0..k {
                for j in 0..n {
                    bdata[off + l * rs + j] = T::from_f32(rng.unit() * 2.0 - 1.0);
                }
            }
            if rng.below(4) == 0 && n > 0 {
                for _ in 0..2 {
                    let x = special[rng.below(3)];
                    if rng.below(2) == 0 && m > 0 {
                        adata[rng.below(m * k)] = T::from_f32(x);
                    } else {
                        bdata[off + rng.below(k) * rs + rng.below(n)] = T::from_f32(x);
                    }
                }
            }
            let a = MatRef::row_major(&adata, m, k).unwrap();
            let b = MatRef::strided(&bdata[off..], k, n, rs, 1).unwrap();
            let what = format!("{isa} {:?} m={m} n={n} k={k} off={off} rs={rs}", T::DTYPE);
            let mut c1 = vec![f32::NAN; m * n];
            let r = backend
                .gemm(a, b, MatMut::row_major(&mut c1, m, n).unwrap(), &g)
                .unwrap();
            // One column of several rows runs as `x^T A^T`: dot products
            // with A's rows, in another order (inside the bound; at k = 1
            // A^T is row-major too, and takes the other path).
            let as_dots = n == 1 && m > 1 && k > 1;
            if as_dots {
                assert_eq!(r.kernel, "gemv-dot", "{what}");
            } else if streams(m, n, k) && n > 0 {
                assert_eq!(r.kernel, "gemv", "{what}");
            }
            // The packed side with at least 17 rows of A (these rows first),
            // so that it runs the kernel's tiles: a `PackedB` streams its
            // panels for 16 rows or fewer, through the same `gemv_block`.
            let packed = backend.pack_b_for(b, &g).unwrap();
            let pm = m.max(17);
            let mut apad = adata.clone();
            apad.extend((m * k..pm * k).map(|_| T::from_f32(rng.unit())));
            let apad = MatRef::row_major(&apad, pm, k).unwrap();
            let mut c2 = vec![f32::NAN; pm * n];
            let tiles = backend
                .gemm_packed(
                    apad,
                    &packed,
                    MatMut::row_major(&mut c2, pm, n).unwrap(),
                    &g,
                )
                .unwrap();
            assert_ne!(tiles.kernel, "gemv", "{what}");
            let mut c3 = vec![f32::NAN; m * n];
            let few = backend
                .gemm_packed(a, &packed, MatMut::row_major(&mut c3, m, n).unwrap(), &g)
                .unwrap();
            // (One or two rows always stream; up to 16 where the tiles
            // would pad them by a quarter or more.)
            if (1..=2).contains(&m) && n > 0 && !is_dot_kernel(tiles.kernel) {
                assert_eq!(few.kernel, "gemv", "{what}");
            }
            let same = |x: f32, y: f32| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan());
            for i in 0..m {
                for j in 0..n {
                    let (x, y, z) = (c1[i * n + j], c2[i * n + j], c3[i * n + j]);
                    assert!(
                        as_dots || same(x, y),
                        "{what}: C[{i},{j}] = {x:e}, packed {y:e}"
                    );
                    assert!(
                        same(y, z),
                        "{what}: C[{i},{j}] packed {y:e}, few rows {z:e}"
                    );
                    // (For a large B, the bits above and a sample of the
                    // reference: each row's every 7th column.)
                    if n * k >= 1 << 22 && (i + j) % 7 != 0 {
                        continue;
                    }
                    let products = (0..k).map(|l| {
                        adata[i * k + l].to_f32() as f64 * bdata[off + l * rs + j].to_f32() as f64
                    });
                    assert_dot(x, products, k, || format!("{what}: C[{i},{j}]"));
                }
            }
        }
    }
    let mut rng = Rng::fresh("small_m_kernels_match_packed_bits");
    for backend in backends() {
        on::<f32>(backend, &mut rng);
        on::<bf16>(backend, &mut rng);
        on::<f16>(backend, &mut rng);
    }
}

/// The small-m path of a column-major B (`x W^T` with W row-major `n x k`,
/// the layout of `Linear` weights): every m of the path and one past it, n
/// across the register tiles and the 64-column blocks, k across every
/// vector width's tail, W with a padded row stride whose padding is NaN
/// (a read past a row poisons the result) at a misaligned offset, A
/// row-major or column-major, one thread or three, C poisoned, NaN and
/// inf in A and W: within the bound of the f64 reference, NaN where it is
/// NaN, and the `gemv-dot` kernel for every m the path takes.
#[test]
fn small_m_column_major_b_streams_weight_rows() {
    fn on<T: Element>(backend: Backend, rng: &mut Rng) {
        let isa = backend.isa();
        // Past every k block the kernel cuts (256 to 4096 deep, by m and ISA).
        let ks = [
            1usize, 3, 4, 5, 8, 9, 15, 16, 17, 31, 33, 100, 257, 600, 1100, 4099,
        ];
        let ns = (0..=19).chain([23, 24, 25, 63, 64, 65, 127, 129, 200]);
        let special = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY];
        // Past 16 rows, x86's f32-format kernels keep streaming a W of
        // 4 Mi elements or more, up to 48 rows on AVX2 and 128 on AVX-512
        // (bf16 may take a dot kernel there instead).
        let large: &[(usize, usize, usize)] = if cfg!(target_arch = "x86_64") && isa != Isa::Scalar
        {
            &[(24, 2048, 2048), (40, 2100, 2000)]
        } else {
            &[]
        };
        let streams = |m: usize, n: usize, k: usize| {
            let large = n * k >= 1 << 22
                && cfg!(target_arch = "x86_64")
                && isa != Isa::Scalar
                && T::DTYPE != DType::Bf16;
            (1..=16).contains(&m) || (large && m <= 48)
        };
        let cases = (0..=17).flat_map(|m| {
            let ns = ns.clone();
            ns.map(move |n| (m, n, None))
        });
        let cases = cases.chain(large.iter().map(|&(m, n, k)| (m, n, Some(k))));
        for (m, n, k) in cases {
            let k = k.unwrap_or_else(|| ks[rng.below(ks.len())]);
            let off = rng.below(4);
            let ld = k + rng.below(3);
            let mut wdata = vec![T::from_f32(f32::NAN); off + n * ld];
            for j in 0..n {
                for l in 0..k {
                    wdata[off + j * ld + l] = T::from_f32(rng.unit() * 2.0 - 1.0);
                }
            }
            let mut adata: Vec<T> = (0..m * k)
                .map(|_| T::from_f32(rng.unit() * 2.0 - 1.0))
                .collect();
            if rng.below(4) == 0 && n > 0 && m > 0 {
                for _ in 0..2 {
                    let x = special[rng.below(3)];
                    if rng.below(2) == 0 {
                        adata[rng.below(m * k)] = T::from_f32(x);
                    } else {
                        wdata[off + rng.below(n) * ld + rng.below(k)] = T::from_f32(x);
                    }
                }
            }
            // A row-major (m x k), or the same values column-major.
            let a_cm = rng.below(2) == 0;
            let a_store: Vec<T> = if a_cm {
                (0..k * m).map(|i| adata[(i % m) * k + i / m]).collect()
            } else {
                adata.clone()
            };
            let a = if a_cm {
                MatRef::row_major(&a_store, k, m).unwrap().t()
            } else {
                MatRef::row_major(&a_store, m, k).unwrap()
            };
            let b = MatRef::strided(&wdata[off..], n, k, ld, 1).unwrap().t();
            let threads = [Threads::Single, Threads::Count(3)][rng.below(2)];
            let g = Gemm::new().threads(threads);
            let what = format!("{isa} {:?} m={m} n={n} k={k} off={off} ld={ld}", T::DTYPE);
            let mut c = vec![f32::NAN; m * n];
            let r = backend
                .gemm(a, b, MatMut::row_major(&mut c, m, n).unwrap(), &g)
                .unwrap();
            // (k = 1 with ld = 1 is row-major too: the other path's.)
            if streams(m, n, k) && n > 1 && ld > 1 {
                assert_eq!(r.kernel, "gemv-dot", "{what}");
            }
            for i in 0..m {
                for j in 0..n {
                    // (A large W: each row's every 5th column.)
                    if n * k >= 1 << 22 && (i + j) % 5 != 0 {
                        continue;
                    }
                    let x = c[i * n + j];
                    let products = (0..k).map(|l| {
                        adata[i * k + l].to_f32() as f64 * wdata[off + j * ld + l].to_f32() as f64
                    });
                    assert_dot(x, products, k, || format!("{what}: C[{i},{j}]"));
                }
            }
        }
    }
    let mut rng = Rng::fresh("small_m_column_major_b_streams_weight_rows");
    for backend in backends() {
        on::<f32>(backend, &mut rng);
        on::<bf16>(backend, &mut rng);
        on::<f16>(backend, &mut rng);
    }
}
