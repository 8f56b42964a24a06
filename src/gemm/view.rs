//! Matrix views: a slice plus a shape and two strides, validated once when
//! the view is made so the GEMM code can index without further checks.
//!
//! Strides are counted in elements and are non-negative (`usize`). Negative
//! strides (a matrix read backwards) are not supported: they would need an
//! offset into the slice and signed arithmetic in every index, and no caller
//! we know needs them; flip the data or use [`MatRef::t`] instead.

use crate::element::Element;
use crate::error::Error;

/// The largest index a `rows x cols` view with these strides touches, plus
/// one (`0` for an empty view), or `None` on overflow.
fn extent(rows: usize, cols: usize, rs: usize, cs: usize) -> Option<usize> {
    if rows == 0 || cols == 0 {
        return Some(0);
    }
    let last = (rows - 1)
        .checked_mul(rs)?
        .checked_add((cols - 1).checked_mul(cs)?)?;
    // Offsets must also fit `isize` (the kernels form pointers from them).
    let end = last.checked_add(1)?;
    (end <= isize::MAX as usize).then_some(end)
}

fn validate(
    arg: &'static str,
    len: usize,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
) -> Result<(), Error> {
    // The element count itself must be representable too (the packing code
    // sizes buffers from it).
    rows.checked_mul(cols).ok_or(Error::Overflow { arg })?;
    let needed = extent(rows, cols, rs, cs).ok_or(Error::Overflow { arg })?;
    if needed > len {
        return Err(Error::SliceTooShort { arg, needed, len });
    }
    Ok(())
}

/// Whether two different logical elements of a `rows x cols` view could share
/// one memory location. Exact for the layouts we accept: the view is accepted
/// when its strides nest (the smaller stride times its extent does not reach
/// the larger stride), which covers row-major, column-major, padded leading
/// dimensions and their transposes. Interleaved layouts whose elements happen
/// not to collide (e.g. strides 2 and 3 on a 2 x 2 view) are rejected too:
/// proving those safe needs a lattice argument the caller gains nothing from.
fn aliases(rows: usize, cols: usize, rs: usize, cs: usize) -> bool {
    if rows == 0 || cols == 0 {
        return false;
    }
    // A dimension of extent 1 never steps, so its stride is irrelevant.
    let dims = [(rows, rs), (cols, cs)];
    let mut live: Vec<(usize, usize)> = dims.into_iter().filter(|&(n, _)| n > 1).collect();
    live.sort_by_key(|&(_, s)| s);
    match live.as_slice() {
        [] => false,
        [(_, s)] => *s == 0,
        [(n0, s0), (_, s1)] => *s0 == 0 || n0.checked_mul(*s0).is_none_or(|reach| reach > *s1),
        _ => unreachable!("two dimensions"),
    }
}

/// A read-only `rows x cols` matrix view over a slice of `f32`, [`bf16`](crate::bf16)
/// or [`f16`](crate::f16).
///
/// Element `(i, j)` is `data[i * row_stride + j * col_stride]`. Views are
/// `Copy`; [`MatRef::t`] is free (it swaps the shape and the strides).
///
/// # Examples
///
/// ```
/// use halfkern::MatRef;
///
/// let data = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
/// let a = MatRef::row_major(&data, 2, 3)?; // [[1, 2, 3], [4, 5, 6]]
/// assert_eq!(a.get(1, 0), Some(4.0));
/// assert_eq!(a.t().get(0, 1), Some(4.0)); // the 3 x 2 transpose
/// assert_eq!(MatRef::col_major(&data, 2, 3)?.get(0, 1), Some(3.0));
/// # Ok::<(), halfkern::Error>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a, T: Element> {
    pub(crate) data: &'a [T],
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) rs: usize,
    pub(crate) cs: usize,
}

impl<'a, T: Element> MatRef<'a, T> {
    /// A row-major view: element `(i, j)` at `i * cols + j`.
    ///
    /// # Errors
    ///
    /// [`Error::SliceTooShort`] when `data` has fewer than `rows * cols`
    /// elements, [`Error::Overflow`] when `rows * cols` overflows.
    pub fn row_major(data: &'a [T], rows: usize, cols: usize) -> Result<Self, Error> {
        Self::strided(data, rows, cols, cols, 1)
    }

    /// A column-major view: element `(i, j)` at `i + j * rows`.
    ///
    /// # Errors
    ///
    /// As [`MatRef::row_major`].
    pub fn col_major(data: &'a [T], rows: usize, cols: usize) -> Result<Self, Error> {
        Self::strided(data, rows, cols, 1, rows)
    }

    /// A view with any non-negative strides: element `(i, j)` at
    /// `i * row_stride + j * col_stride`. Strides may be zero (a broadcast
    /// row or column) and may overlap: a read-only view may alias itself.
    ///
    /// # Errors
    ///
    /// [`Error::SliceTooShort`] when the last element lies beyond `data`,
    /// [`Error::Overflow`] when an offset overflows `isize`.
    ///
    /// # Examples
    ///
    /// ```
    /// // The left 2 x 2 block of a 2 x 3 row-major matrix.
    /// let data = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
    /// let a = halfkern::MatRef::strided(&data, 2, 2, 3, 1)?;
    /// assert_eq!(a.get(1, 1), Some(5.0));
    /// # Ok::<(), halfkern::Error>(())
    /// ```
    pub fn strided(
        data: &'a [T],
        rows: usize,
        cols: usize,
        row_stride: usize,
        col_stride: usize,
    ) -> Result<Self, Error> {
        validate("matrix", data.len(), rows, cols, row_stride, col_stride)?;
        Ok(MatRef {
            data,
            rows,
            cols,
            rs: row_stride,
            cs: col_stride,
        })
    }

    /// The transpose, without moving any data.
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// `(row_stride, col_stride)` in elements.
    pub fn strides(&self) -> (usize, usize) {
        (self.rs, self.cs)
    }

    /// Element `(i, j)` widened to `f32`, or `None` outside the shape.
    pub fn get(&self, i: usize, j: usize) -> Option<f32> {
        (i < self.rows && j < self.cols).then(|| self.at(i, j).to_f32())
    }

    /// Element `(i, j)`; in bounds by construction when `i < rows`, `j < cols`.
    #[inline(always)]
    pub(crate) fn at(&self, i: usize, j: usize) -> T {
        self.data[i * self.rs + j * self.cs]
    }
}

/// A mutable `rows x cols` matrix view over a slice of `f32`,
/// [`bf16`](crate::bf16) or [`f16`](crate::f16): the output of a GEMM.
///
/// Like [`MatRef`], but its strides may not alias: two different elements
/// never share memory (see [`MatMut::strided`]).
///
/// # Examples
///
/// ```
/// let mut data = [0.0f32; 6];
/// let c = halfkern::MatMut::col_major(&mut data, 2, 3)?;
/// assert_eq!((c.rows(), c.cols()), (2, 3));
/// # Ok::<(), halfkern::Error>(())
/// ```
#[derive(Debug)]
pub struct MatMut<'a, T: Element> {
    pub(crate) data: &'a mut [T],
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) rs: usize,
    pub(crate) cs: usize,
}

impl<'a, T: Element> MatMut<'a, T> {
    /// A row-major view: element `(i, j)` at `i * cols + j`.
    ///
    /// # Errors
    ///
    /// As [`MatRef::row_major`].
    pub fn row_major(data: &'a mut [T], rows: usize, cols: usize) -> Result<Self, Error> {
        Self::strided(data, rows, cols, cols, 1)
    }

    /// A column-major view: element `(i, j)` at `i + j * rows`.
    ///
    /// # Errors
    ///
    /// As [`MatRef::row_major`].
    pub fn col_major(data: &'a mut [T], rows: usize, cols: usize) -> Result<Self, Error> {
        Self::strided(data, rows, cols, 1, rows)
    }

    /// A view with any non-negative, non-aliasing strides: element `(i, j)` at
    /// `i * row_stride + j * col_stride`.
    ///
    /// The strides must nest: the smaller stride is non-zero and, times its
    /// extent, does not exceed the larger (row-major, column-major, padded
    /// leading dimensions). A dimension of extent 0 or 1 may have any stride.
    ///
    /// # Errors
    ///
    /// [`Error::SliceTooShort`], [`Error::Overflow`] as for
    /// [`MatRef::strided`]; [`Error::InvalidArgument`] when two elements could
    /// share memory.
    pub fn strided(
        data: &'a mut [T],
        rows: usize,
        cols: usize,
        row_stride: usize,
        col_stride: usize,
    ) -> Result<Self, Error> {
        validate("matrix", data.len(), rows, cols, row_stride, col_stride)?;
        if aliases(rows, cols, row_stride, col_stride) {
            return Err(Error::InvalidArgument {
                arg: "matrix",
                reason: format!(
                    "strides ({row_stride}, {col_stride}) alias elements of a {rows} x {cols} output"
                ),
            });
        }
        Ok(MatMut {
            data,
            rows,
            cols,
            rs: row_stride,
            cs: col_stride,
        })
    }

    /// The transpose, without moving any data.
    pub fn t(self) -> Self {
        MatMut {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// A read-only view of the same elements.
    pub fn as_ref(&self) -> MatRef<'_, T> {
        MatRef {
            data: self.data,
            rows: self.rows,
            cols: self.cols,
            rs: self.rs,
            cs: self.cs,
        }
    }

    /// A shorter-lived mutable view of the same elements.
    pub fn rb_mut(&mut self) -> MatMut<'_, T> {
        MatMut {
            data: self.data,
            rows: self.rows,
            cols: self.cols,
            rs: self.rs,
            cs: self.cs,
        }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// `(row_stride, col_stride)` in elements.
    pub fn strides(&self) -> (usize, usize) {
        (self.rs, self.cs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalar_views_validate() {
        let d = [0.0f32; 6];
        assert!(MatRef::row_major(&d, 2, 3).is_ok());
        assert!(MatRef::row_major(&d, 0, usize::MAX).is_ok());
        assert_eq!(
            MatRef::row_major(&d, 3, 3).unwrap_err(),
            Error::SliceTooShort {
                arg: "matrix",
                needed: 9,
                len: 6
            }
        );
        assert!(matches!(
            MatRef::strided(&d, 2, 2, usize::MAX, 1),
            Err(Error::Overflow { .. })
        ));
        assert!(matches!(
            MatRef::row_major(&d, usize::MAX, 2),
            Err(Error::Overflow { .. })
        ));
        assert!(MatRef::strided(&d, 6, 6, 0, 1).is_ok()); // broadcast rows
    }

    #[test]
    fn scalar_aliasing() {
        assert!(!aliases(2, 3, 3, 1));
        assert!(!aliases(2, 3, 1, 2));
        assert!(!aliases(2, 3, 4, 1)); // padded
        assert!(aliases(2, 3, 2, 1));
        assert!(aliases(2, 3, 0, 1));
        assert!(!aliases(1, 3, 0, 1));
        assert!(aliases(2, 2, 2, 3)); // conservative
        assert!(!aliases(1, 1, 0, 0));
        assert!(aliases(3, 1, 0, 0));
    }
}
