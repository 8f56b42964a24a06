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

pub(crate) mod blis;
pub(crate) mod gemv;
mod packed;
mod params;
mod view;

pub use packed::PackedB;
pub use params::{Activation, Bias, Gemm, GemmReport, Threads};
pub use view::{MatMut, MatRef};

use crate::element::Element;
use crate::error::Error;
use crate::isa::Backend;
use crate::kernel::epilogue::Epilogue;
use crate::kernel::gemm::{Format, KernelOp, Microkernel, RowOps};

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
/// bf16 inputs on a bf16 dot kernel (`vdpbf16ps` where it is the faster
/// choice, `BFMMLA` on `neonbf16`) have subnormal inputs and partial sums
/// below 2^-126 flushed to zero. `BFMMLA` also rounds each pair sum and
/// each accumulation to odd (one ulp, not half), which keeps it within the
/// bound above with `c = 2` but not bit-identical to the f32-FMA kernels,
/// and gives the default NaN for every NaN.
///
/// Memory: B is packed per call into a buffer the calling thread keeps
/// for its next call (and each worker thread its A~ and tile workspace),
/// up to 128 MiB per buffer; larger ones are freed at the end of the call.
/// Weights multiplied again and again belong in a [`PackedB`], which is
/// packed once.
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
        let (m, n, k) = check((a.rows, a.cols), (b.rows, b.cols), (c.rows, c.cols), params)?;
        let threads = params.thread_count(m as f64 * n as f64 * k as f64);
        let _mode = crate::fp_env::Ieee::enter();
        let op = Unpacked {
            a,
            b,
            c,
            ep: params.epilogue(),
            threads,
            isa: self.isa(),
            token: self.token,
        };
        // A matrix times one column, with A's rows or columns contiguous:
        // as `x^T A^T` A is streamed once at full vector width (one row of
        // dot products with A's rows, or one pass over its columns), not
        // one lane per tile as the small-m path would take B's one column.
        let op = if n == 1 && m > 1 && (a.cs == 1 || a.rs == 1) {
            op.transposed()
        } else {
            op
        };
        self.token.with_microkernel(T::DTYPE, params.dot, op)
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
        let (m, n, k) = check((a.rows, a.cols), (b.k, b.n), (c.rows, c.cols), params)?;
        let threads = params.thread_count(m as f64 * n as f64 * k as f64);
        let _mode = crate::fp_env::Ieee::enter();
        self.token.with_microkernel(
            T::DTYPE,
            params.dot,
            Prepacked {
                a,
                b,
                c,
                ep: params.epilogue(),
                threads,
                isa: self.isa(),
            },
        )
    }
}

/// Above this many bytes of scratch a call first checks that it can have
/// them, so that a shape whose packed operands cannot fit in memory is an
/// [`Error::Allocation`] before anything is written, not an abort (or an
/// out-of-memory kill) inside a worker thread. Below it the question costs
/// more than it could save.
const PREFLIGHT_BYTES: usize = 256 << 20;

/// Checks that `bytes` of scratch (`None`: the size overflowed) can be had;
/// `arg` names the operand whose shape implies them. Scratch beyond the
/// machine's memory and swap is refused outright: where the kernel
/// overcommits memory (Linux's `vm.overcommit_memory = 1`) the allocator
/// would grant it, and touching it would end the process. Everything else
/// is asked of the allocator with `try_reserve`.
fn preflight(bytes: Option<usize>, arg: &'static str) -> Result<(), Error> {
    let bytes = bytes.ok_or(Error::Overflow { arg })?;
    if bytes > PREFLIGHT_BYTES {
        let refused = Error::Allocation {
            what: "gemm scratch",
            bytes,
        };
        if memory_bytes().is_some_and(|memory| bytes > memory) {
            return Err(refused);
        }
        Vec::<u8>::new()
            .try_reserve_exact(bytes)
            .map_err(|_| refused)?;
    }
    Ok(())
}

/// The machine's memory plus swap in bytes (Linux: `/proc/meminfo`), read
/// once; `None` where it cannot be read.
fn memory_bytes() -> Option<usize> {
    static MEMORY: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *MEMORY.get_or_init(|| {
        let info = std::fs::read_to_string("/proc/meminfo").ok()?;
        let kib = |key: &str| -> Option<usize> {
            let line = info.lines().find(|l| l.starts_with(key))?;
            line.split_whitespace().nth(1)?.parse().ok()
        };
        let total = kib("MemTotal:")?.checked_add(kib("SwapTotal:").unwrap_or(0))?;
        total.checked_mul(1024)
    })
}

struct Unpacked<'a, 'p, T: Element, C: Element> {
    a: MatRef<'a, T>,
    b: MatRef<'a, T>,
    c: MatMut<'a, C>,
    ep: Epilogue<'p>,
    threads: usize,
    isa: crate::Isa,
    /// For the small-m path of a column-major B, which dispatches its
    /// blocks as elementwise operations (`gemv::run_dot`).
    token: crate::isa::Token,
}

impl<T: Element, C: Element> Unpacked<'_, '_, T, C> {
    /// `C^T <- B^T A^T` with the epilogue of `C^T`: the same outputs.
    fn transposed(self) -> Self {
        Unpacked {
            a: self.b.t(),
            b: self.a.t(),
            c: self.c.t(),
            ep: self.ep.transposed(),
            ..self
        }
    }
}

impl<T: Element, C: Element> KernelOp for Unpacked<'_, '_, T, C> {
    type Output = Result<GemmReport, Error>;
    fn small_m(&self) -> bool {
        let max = gemv::GEMV_MAX_M;
        gemv::applies(&self.a, &self.b, max) || gemv::dot_applies(&self.a, &self.b, max)
    }
    fn run<K: Microkernel + RowOps>(self, kern: K) -> Result<GemmReport, Error> {
        let (m, k, n, threads) = (self.a.rows, self.b.rows, self.b.cols, self.threads);
        let report = |nonfinite, kernel| GemmReport {
            nonfinite,
            isa: self.isa,
            kernel,
            threads,
        };
        if m == 0 || n == 0 {
            // Nothing to write: B is not even packed.
            return Ok(report(0, K::NAME));
        }
        let row_max = match T::DTYPE {
            crate::element::DType::F32 => K::SMALL_M_ROW_F32,
            _ => K::SMALL_M_ROW,
        };
        let small_m = gemv::applies(&self.a, &self.b, row_max) && K::FORMAT == Format::F32;
        if small_m {
            preflight(gemv::scratch_bytes(m, k, threads), "a")?;
            let bad = gemv::run(kern, self.a, self.b, self.c, &self.ep, threads);
            return Ok(report(bad, "gemv"));
        }
        if gemv::dot_applies(&self.a, &self.b, K::SMALL_M_DOT.max(gemv::GEMV_MAX_M)) {
            preflight(gemv::dot_scratch_bytes(m, n, k), "a")?;
            let bad = gemv::run_dot(self.token, kern, self.a, self.b, self.c, &self.ep, threads);
            return Ok(report(bad, "gemv-dot"));
        }
        preflight(blis::scratch_bytes::<K>(m, n, k, threads, false), "b")?;
        let bad = if threads > 1 && blis::local_b_pays::<K>(m, n, k, threads) {
            blis::run_local_b(kern, self.a, self.b, self.c, &self.ep, threads)
        } else {
            let packed = blis::pack_b_scratch(kern, self.b, threads);
            let bad = blis::run(kern, self.a, &packed, self.c, &self.ep, threads);
            blis::recycle(packed);
            bad
        };
        Ok(report(bad, K::NAME))
    }
}

struct Prepacked<'a, 'p, T: Element, C: Element> {
    a: MatRef<'a, T>,
    b: &'a PackedB<T>,
    c: MatMut<'a, C>,
    ep: Epilogue<'p>,
    threads: usize,
    isa: crate::Isa,
}

impl<T: Element, C: Element> KernelOp for Prepacked<'_, '_, T, C> {
    type Output = Result<GemmReport, Error>;
    fn run<K: Microkernel + RowOps>(self, kern: K) -> Result<GemmReport, Error> {
        if self.b.kernel != K::NAME {
            return Err(Error::InvalidArgument {
                arg: "b",
                reason: format!(
                    "PackedB was packed for kernel {}, this backend and type run {}",
                    self.b.kernel,
                    K::NAME
                ),
            });
        }
        let (m, k, n, threads) = (self.a.rows, self.b.k, self.b.n, self.threads);
        let isa = self.isa;
        let report = |nonfinite, kernel| GemmReport {
            nonfinite,
            isa,
            kernel,
            threads,
        };
        if m == 0 || n == 0 {
            return Ok(report(0, K::NAME));
        }
        let (a, panels, c, ep) = (self.a, &self.b.panels, self.c, &self.ep);
        if gemv::pairs_apply::<K>(m) {
            preflight(gemv::pairs_scratch_bytes(m, k, threads), "a")?;
            let bad = gemv::run_pairs(kern, a, panels, c, ep, threads);
            return Ok(report(bad, "gemv-pairs"));
        }
        if gemv::panels_apply::<K>(m) {
            preflight(gemv::panels_scratch_bytes(m, k, K::NR, threads), "a")?;
            let bad = gemv::run_panels(kern, a, panels, c, ep, threads);
            return Ok(report(bad, "gemv"));
        }
        preflight(blis::scratch_bytes::<K>(m, n, k, threads, true), "a")?;
        Ok(report(blis::run(kern, a, panels, c, ep, threads), K::NAME))
    }
}
