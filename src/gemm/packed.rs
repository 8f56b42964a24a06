//! [`PackedB`]: a B matrix packed once into the layout the microkernels
//! read, reused across calls.

use core::marker::PhantomData;

use super::view::MatRef;
use crate::element::Element;
use crate::error::Error;
use crate::isa::Backend;

/// B (`k x n`, usually weights) packed once for repeated GEMMs with
/// different A: [`gemm_packed`](crate::gemm_packed) skips B's packing, which
/// for small batches is most of the work besides streaming B itself.
///
/// The packed layout belongs to the backend that packed it; using it with
/// another backend whose kernels read a different layout is an error.
///
/// # Examples
///
/// See [`gemm_packed`](crate::gemm_packed).
#[derive(Clone, Debug)]
pub struct PackedB<T: Element> {
    pub(crate) k: usize,
    pub(crate) n: usize,
    pub(crate) data: Vec<T>,
    _t: PhantomData<T>,
}

impl<T: Element> PackedB<T> {
    /// Packs `b` for the process-wide backend (see [`Backend::global`]).
    ///
    /// # Errors
    ///
    /// The process-wide ISA error; [`Error::Overflow`] when the packed
    /// matrix would not fit the address space.
    pub fn new(b: MatRef<'_, T>) -> Result<Self, Error> {
        Backend::global()?.pack_b(b)
    }

    /// Rows of B (the `k` of the GEMM).
    pub fn rows(&self) -> usize {
        self.k
    }

    /// Columns of B (the `n` of the GEMM).
    pub fn cols(&self) -> usize {
        self.n
    }

    pub(crate) fn as_view(&self) -> MatRef<'_, T> {
        MatRef {
            data: &self.data,
            rows: self.k,
            cols: self.n,
            rs: self.n,
            cs: 1,
        }
    }
}

impl Backend {
    /// [`PackedB::new`] for this backend.
    ///
    /// # Errors
    ///
    /// As [`PackedB::new`] (without the process-wide ISA error).
    pub fn pack_b<T: Element>(&self, b: MatRef<'_, T>) -> Result<PackedB<T>, Error> {
        let mut data = Vec::with_capacity(b.rows * b.cols);
        for l in 0..b.rows {
            for j in 0..b.cols {
                data.push(b.at(l, j));
            }
        }
        Ok(PackedB {
            k: b.rows,
            n: b.cols,
            data,
            _t: PhantomData,
        })
    }
}
