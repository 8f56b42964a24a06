//! [`PackedB`]: a B matrix packed once into the layout the microkernels
//! read, reused across calls.

use core::marker::PhantomData;

use super::blis::{PackedPanels, pack_b, packed_b_slots};
use super::view::MatRef;
use crate::element::Element;
use crate::error::Error;
use crate::isa::Backend;
use crate::kernel::gemm::{KernelOp, Microkernel, RowOps};

/// B (`k x n`, usually weights) packed once for repeated GEMMs with
/// different A: [`gemm_packed`](crate::gemm_packed) skips B's packing, which
/// for small batches is most of the work besides streaming B itself.
///
/// The packed layout belongs to the backend that packed it; using it with
/// another backend whose kernels read a different layout is an error.
///
/// With a few rows of A (decode) each packed panel is read once for all of
/// them. The packed form takes 2 bytes per element for bf16 on the kernels
/// that multiply bf16 pairs (`amx`, `neonbf16`, and `avx512bf16` where it
/// runs `vdpbf16ps`), 4 bytes (f32) on every other kernel: there, f16 or
/// bf16 weights passed unpacked (row-major, or `Linear`-layout `W` as
/// `x W^T`) stream half the bytes for those few rows, and are the faster
/// form once reading B is the limit.
///
/// # Examples
///
/// See [`gemm_packed`](crate::gemm_packed).
#[derive(Clone, Debug)]
pub struct PackedB<T: Element> {
    pub(crate) k: usize,
    pub(crate) n: usize,
    pub(crate) kernel: &'static str,
    pub(crate) panels: PackedPanels,
    _t: PhantomData<T>,
}

impl<T: Element> PackedB<T> {
    /// Packs `b` for the process-wide backend (see [`Backend::global`]).
    ///
    /// # Errors
    ///
    /// As [`Backend::pack_b`], and the process-wide ISA error.
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
}

impl Backend {
    /// [`PackedB::new`] for this backend, packed by the current rayon pool's
    /// threads.
    ///
    /// # Errors
    ///
    /// [`Error::Overflow`] when the packed form of `b`'s shape cannot be
    /// addressed (a broadcast view, stride 0, of 2^60 rows, say), and
    /// [`Error::Allocation`] when its memory cannot be had.
    pub fn pack_b<T: Element>(&self, b: MatRef<'_, T>) -> Result<PackedB<T>, Error> {
        self.pack_b_with(b, None)
    }

    /// [`Backend::pack_b`] for the kernel `params` selects (its hidden
    /// `dot_kernel` choice). A test and benchmark hook: only with the
    /// `internals` feature, no stability promise.
    ///
    /// # Errors
    ///
    /// As [`Backend::pack_b`].
    #[cfg(feature = "internals")]
    #[doc(hidden)]
    pub fn pack_b_for<T: Element>(
        &self,
        b: MatRef<'_, T>,
        params: &super::Gemm<'_>,
    ) -> Result<PackedB<T>, Error> {
        self.pack_b_with(b, params.dot)
    }

    /// [`Backend::pack_b`] for the bf16 dot kernel choice `dot` (see
    /// `Gemm::dot`).
    fn pack_b_with<T: Element>(
        &self,
        b: MatRef<'_, T>,
        dot: Option<bool>,
    ) -> Result<PackedB<T>, Error> {
        self.token.with_microkernel(
            T::DTYPE,
            dot,
            Pack {
                b,
                threads: rayon::current_num_threads(),
            },
        )
    }
}

struct Pack<'a, T: Element> {
    b: MatRef<'a, T>,
    threads: usize,
}

impl<T: Element> KernelOp for Pack<'_, T> {
    type Output = Result<PackedB<T>, Error>;
    fn run<K: Microkernel + RowOps>(self, kern: K) -> Result<PackedB<T>, Error> {
        let slots = packed_b_slots::<K>(self.b.rows, self.b.cols);
        let bytes = slots.and_then(|s| s.checked_mul(size_of::<f32>()));
        let bytes = bytes.filter(|&b| b <= isize::MAX as usize);
        super::preflight(bytes, "b")?;
        Ok(PackedB {
            k: self.b.rows,
            n: self.b.cols,
            kernel: K::NAME,
            panels: pack_b(kern, self.b, self.threads),
            _t: PhantomData,
        })
    }
}
