//! GEMM: `C <- act(inv_scale * (alpha * A B) + beta * C + bias)` with A and B
//! in `f32`, [`bf16`](crate::bf16) or [`f16`](crate::f16) (both the same
//! type, enforced by the signature), C in any of the three, and the
//! products always summed in f32.
//!
//! This module owns the public surface ([`MatRef`], [`MatMut`], [`Gemm`],
//! [`GemmReport`], [`PackedB`]), argument validation, and the blocked
//! algorithm; the ISA-specific microkernels live under `crate::arch`.
//! Validation happens before anything is written: an `Err` leaves C as it
//! was.

mod epilogue;
mod packed;
mod params;
mod view;

pub use packed::PackedB;
pub use params::{Activation, Bias, Gemm, GemmReport, Threads};
pub use view::{MatMut, MatRef};

use crate::element::Element;
use crate::error::Error;
use crate::isa::Backend;

/// `C <- act(inv_scale * (alpha * A B) + beta * C + bias)` on the
/// process-wide backend (see [`Backend::global`]); see [`Gemm`] for the
/// exact epilogue.
///
/// A is `m x k`, B is `k x n`, C is `m x n`; any of them may be a transposed
/// or strided view. Products are summed in f32; for each output
/// `|C - C_exact| <= c * k * 2^-24 * sum_l |a_il| |b_lj|` plus the final
/// rounding to C's type, `C_exact` computed in exact arithmetic on the same
/// (already rounded) inputs. Inf and NaN in A or B reach every output they
/// touch. Zero-sized shapes are valid (`k = 0` gives `act(beta C + bias)`).
///
/// # Errors
///
/// Before anything is written (C is untouched on every `Err`):
/// [`Error::ShapeMismatch`] when `a.cols != b.rows`, `a.rows != c.rows`,
/// `b.cols != c.cols` or a bias has the wrong length;
/// [`Error::InvalidScale`] for an `unscale` that is not finite and positive;
/// [`Error::InvalidArgument`] for `Threads::Count(0)`; the process-wide ISA
/// error (see [`Backend::global`]).
///
/// # Examples
///
/// ```
/// use halfkern::{bf16, Gemm, MatMut, MatRef};
///
/// let a: Vec<bf16> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0].map(bf16::from_f32).to_vec();
/// let b: Vec<bf16> = [1.0f32, 1.0, 1.0].map(bf16::from_f32).to_vec();
/// let mut c = [0.0f32; 2];
/// let report = halfkern::gemm(
///     MatRef::row_major(&a, 2, 3)?,
///     MatRef::row_major(&b, 3, 1)?,
///     MatMut::row_major(&mut c, 2, 1)?,
///     &Gemm::new(),
/// )?;
/// assert_eq!(c, [6.0, 15.0]);
/// assert!(!report.any_nonfinite());
/// # Ok::<(), halfkern::Error>(())
/// ```
pub fn gemm<T: Element, C: Element>(
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    c: MatMut<'_, C>,
    params: &Gemm<'_>,
) -> Result<GemmReport, Error> {
    Backend::global()?.gemm(a, b, c, params)
}

/// [`gemm`] with B already packed ([`PackedB::new`]): what an inference
/// engine does with its weights.
///
/// # Errors
///
/// As [`gemm`], with `b` standing for the packed matrix's shape.
///
/// # Examples
///
/// ```
/// use halfkern::{Gemm, MatMut, MatRef, PackedB};
///
/// let w = [1.0f32, 2.0, 3.0, 4.0]; // 2 x 2 weights
/// let packed = PackedB::new(MatRef::row_major(&w, 2, 2)?)?;
/// let x = [1.0f32, 1.0];
/// let mut y = [0.0f32; 2];
/// halfkern::gemm_packed(
///     MatRef::row_major(&x, 1, 2)?,
///     &packed,
///     MatMut::row_major(&mut y, 1, 2)?,
///     &Gemm::new(),
/// )?;
/// assert_eq!(y, [4.0, 6.0]);
/// # Ok::<(), halfkern::Error>(())
/// ```
pub fn gemm_packed<T: Element, C: Element>(
    a: MatRef<'_, T>,
    b: &PackedB<T>,
    c: MatMut<'_, C>,
    params: &Gemm<'_>,
) -> Result<GemmReport, Error> {
    Backend::global()?.gemm_packed(a, b, c, params)
}

/// Checks the shapes of `A (m x k) * B (k x n) -> C (m x n)` and the
/// parameters; returns `(m, n, k)`.
fn check(
    a: (usize, usize),
    b: (usize, usize),
    c: (usize, usize),
    params: &Gemm<'_>,
) -> Result<(usize, usize, usize), Error> {
    let mismatch = |what, left, right| Error::ShapeMismatch {
        op: "gemm",
        what,
        left,
        right,
    };
    if a.1 != b.0 {
        return Err(mismatch("a.cols != b.rows", a.1, b.0));
    }
    if a.0 != c.0 {
        return Err(mismatch("a.rows != c.rows", a.0, c.0));
    }
    if b.1 != c.1 {
        return Err(mismatch("b.cols != c.cols", b.1, c.1));
    }
    params.validate(c.0, c.1)?;
    Ok((a.0, b.1, a.1))
}

impl Backend {
    /// [`gemm`] on this backend's ISA.
    ///
    /// # Errors
    ///
    /// As [`gemm`] (without the process-wide ISA error).
    pub fn gemm<T: Element, C: Element>(
        &self,
        a: MatRef<'_, T>,
        b: MatRef<'_, T>,
        c: MatMut<'_, C>,
        params: &Gemm<'_>,
    ) -> Result<GemmReport, Error> {
        check((a.rows, a.cols), (b.rows, b.cols), (c.rows, c.cols), params)?;
        Ok(reference(self, a, b, c, params))
    }

    /// [`gemm_packed`] on this backend's ISA.
    ///
    /// # Errors
    ///
    /// As [`gemm_packed`] (without the process-wide ISA error).
    pub fn gemm_packed<T: Element, C: Element>(
        &self,
        a: MatRef<'_, T>,
        b: &PackedB<T>,
        c: MatMut<'_, C>,
        params: &Gemm<'_>,
    ) -> Result<GemmReport, Error> {
        check((a.rows, a.cols), (b.k, b.n), (c.rows, c.cols), params)?;
        let bv = b.as_view();
        Ok(reference(self, a, bv, c, params))
    }
}

/// The scalar algorithm: one f32 dot product per output, in `k` order.
fn reference<T: Element, C: Element>(
    backend: &Backend,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    c: MatMut<'_, C>,
    params: &Gemm<'_>,
) -> GemmReport {
    let ep = epilogue::Epilogue::new(params);
    let mut nonfinite = 0;
    for i in 0..c.rows {
        for j in 0..c.cols {
            let mut acc = 0.0f32;
            for l in 0..a.cols {
                acc += a.at(i, l).to_f32() * b.at(l, j).to_f32();
            }
            let idx = i * c.rs + j * c.cs;
            let old = || c.data[idx].to_f32();
            let y = C::from_f32(ep.apply(acc, old, i, j));
            nonfinite += usize::from(!y.to_f32().is_finite());
            c.data[idx] = y;
        }
    }
    GemmReport {
        nonfinite,
        isa: backend.isa(),
        kernel: "scalar-reference",
        threads: 1,
    }
}
