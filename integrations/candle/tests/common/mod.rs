//! What the tests share: a seeded generator (seed printed, replayable with
//! `HALFKERN_TEST_SEED`), tensors of a given logical shape laid out every
//! way candle lays tensors out, and the comparison against candle's f32
//! matmul within halfkern's error bound.

#![allow(dead_code, reason = "each test binary uses a part")]

use candle_core::{DType, Device, Result, Tensor};

/// The constant `c` of halfkern's bound `c k 2^-24 sum|a||b|`.
pub const C_BOUND: f64 = 2.0;

/// SplitMix64, seeded from `HALFKERN_TEST_SEED` or the clock.
pub struct Rng(u64);

impl Rng {
    pub fn fresh(test: &str) -> Rng {
        let seed = std::env::var("HALFKERN_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
                t.map_or(0, |t| t.as_nanos() as u64) ^ (u64::from(std::process::id()) << 32)
            });
        println!("{test}: HALFKERN_TEST_SEED={seed}");
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next()) * n as u128) >> 64) as usize
    }

    /// Uniform in [-1, 1) times a power of two in [2^-4, 2^4]: varied
    /// magnitudes, no subnormals (which the bf16 dot kernels flush).
    pub fn value(&mut self) -> f32 {
        let u = (self.next() >> 40) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0;
        u * 2f32.powi(self.below(9) as i32 - 4)
    }

    pub fn values(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.value()).collect()
    }
}

/// How a tensor of logical shape `[batch.., rows, cols]` is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum How {
    /// Row-major.
    Contiguous,
    /// A contiguous `[batch.., cols, rows]` transposed (`.t()`).
    Transposed,
    /// A window of a larger tensor (`narrow` on both matrix dims): a start
    /// offset and a padded row stride.
    Narrowed,
    /// A `narrow`ed, transposed tensor: offset, unit row stride, padded
    /// column stride.
    NarrowedTransposed,
    /// One matrix broadcast over the batch (`broadcast_as`: stride 0).
    BatchBroadcast,
    /// One row broadcast over the rows (row stride 0).
    RowBroadcast,
    /// A `[rows, batch.., cols]` tensor with the rows moved after the
    /// batch: batch strides that do not fold into the rows.
    Permuted,
}

pub const ALL_HOWS: [How; 7] = [
    How::Contiguous,
    How::Transposed,
    How::Narrowed,
    How::NarrowedTransposed,
    How::BatchBroadcast,
    How::RowBroadcast,
    How::Permuted,
];

fn dims(batch: &[usize], a: usize, b: usize) -> Vec<usize> {
    [batch, &[a, b]].concat()
}

/// Random values in a tensor of logical shape `[batch.., rows, cols]` and
/// type `dt`, laid out as `how` says. The type is converted before the
/// layout is made, so the layout is what the operation sees.
pub fn make(
    rng: &mut Rng,
    batch: &[usize],
    (rows, cols): (usize, usize),
    how: How,
    dt: DType,
) -> Result<Tensor> {
    let cpu = &Device::Cpu;
    let nb = batch.len();
    let count = |d: &[usize]| d.iter().product::<usize>();
    let fresh = |rng: &mut Rng, d: Vec<usize>| -> Result<Tensor> {
        Tensor::from_vec(rng.values(count(&d)), d, cpu)?.to_dtype(dt)
    };
    let logical = dims(batch, rows, cols);
    match how {
        How::Contiguous => fresh(rng, logical),
        How::Transposed => fresh(rng, dims(batch, cols, rows))?.t(),
        How::Narrowed => fresh(rng, dims(batch, rows + 3, cols + 5))?
            .narrow(nb, 2, rows)?
            .narrow(nb + 1, 1, cols),
        How::NarrowedTransposed => fresh(rng, dims(batch, cols, rows + 4))?
            .narrow(nb + 1, 3, rows)?
            .t(),
        How::BatchBroadcast => fresh(rng, vec![rows, cols])?.broadcast_as(logical),
        How::RowBroadcast => fresh(rng, dims(batch, 1, cols))?.broadcast_as(logical),
        How::Permuted => {
            let t = fresh(rng, [&[rows], batch, &[cols]].concat())?;
            let order: Vec<usize> = (1..=nb).chain([0, nb + 1]).collect();
            t.permute(order)
        }
    }
}

/// The values of `t` as f32, in logical order.
pub fn to_f32(t: &Tensor) -> Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

/// Unit roundoff of a type's final rounding.
pub fn unit_roundoff(dt: DType) -> f64 {
    match dt {
        DType::BF16 => 2f64.powi(-8),
        DType::F16 => 2f64.powi(-11),
        _ => 2f64.powi(-24),
    }
}

/// candle's f32 `a x b` and `|a| x |b|` on the same (already rounded)
/// inputs, both widened to f32 and made contiguous.
pub fn reference(a: &Tensor, b: &Tensor) -> Result<(Vec<f32>, Vec<f32>)> {
    let a = a.to_dtype(DType::F32)?.contiguous()?;
    let b = b.to_dtype(DType::F32)?.contiguous()?;
    let c = a.matmul(&b)?;
    let abs = a.abs()?.matmul(&b.abs()?)?;
    Ok((to_f32(&c)?, to_f32(&abs)?))
}

/// Half the spacing of a type's subnormals: the final rounding's absolute
/// error below its smallest normal number.
pub fn subnormal_half_spacing(dt: DType) -> f64 {
    match dt {
        DType::BF16 => 2f64.powi(-134),
        DType::F16 => 2f64.powi(-25),
        _ => 2f64.powi(-150),
    }
}

/// The bound for one output: halfkern's sum error and candle's f32
/// reference's (both `c k 2^-24 sum|a||b|`), plus the final rounding to
/// `out` of a value at most `|reference| + error` in magnitude (relative,
/// or absolute where the result is subnormal in `out`).
pub fn tolerance(reference: f32, abs: f32, k: usize, out: DType) -> f64 {
    let sum_err = C_BOUND * k as f64 * 2f64.powi(-24) * f64::from(abs);
    let rounding = unit_roundoff(out) * (f64::from(reference.abs()) + sum_err);
    2.0 * sum_err + rounding + subnormal_half_spacing(out)
}

/// Asserts `got` equals `reference` within [`tolerance`], elementwise.
pub fn assert_close(
    got: &[f32],
    (reference, abs): (&[f32], &[f32]),
    k: usize,
    out: DType,
    what: &str,
) {
    assert_eq!(got.len(), reference.len(), "{what}: element count");
    for (i, ((&g, &r), &s)) in got.iter().zip(reference).zip(abs).enumerate() {
        let tol = tolerance(r, s, k, out);
        let err = (f64::from(g) - f64::from(r)).abs();
        assert!(
            err <= tol,
            "{what}: element {i}: got {g}, candle f32 {r}, error {err:e} > bound {tol:e}"
        );
    }
}
