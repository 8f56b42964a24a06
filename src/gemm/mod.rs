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

mod blis;
mod epilogue;
mod gemv;
pub(crate) mod kernel;
mod packed;
mod params;
#[cfg(all(feature = "internals", target_arch = "x86_64"))]
pub(crate) mod probes;
mod view;

pub use packed::PackedB;
pub use params::{Activation, Bias, Gemm, GemmReport, Threads};
pub use view::{MatMut, MatRef};

use crate::element::{DType, Element};
use crate::error::Error;
use crate::isa::{Backend, Token};
use epilogue::Epilogue;
use kernel::{Microkernel, RowOps};

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
        with_kernel(
            self.token,
            T::DTYPE,
            params.dot,
            Unpacked {
                a,
                b,
                c,
                ep: Epilogue::new(params),
                threads,
                isa: self.isa(),
            },
        )
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
        with_kernel(
            self.token,
            T::DTYPE,
            params.dot,
            Prepacked {
                a,
                b,
                c,
                ep: Epilogue::new(params),
                threads,
                isa: self.isa(),
            },
        )
    }
}

/// Above this many bytes of scratch a call first asks the allocator
/// (`try_reserve`) whether it can have them, so that a shape whose packed
/// operands cannot fit in memory is an [`Error::Allocation`] before
/// anything is written, not an abort inside a worker thread. Below it the
/// question costs more than it could save.
const PREFLIGHT_BYTES: usize = 256 << 20;

/// Checks that `bytes` of scratch (`None`: the size overflowed) can be had;
/// `arg` names the operand whose shape implies them.
fn preflight(bytes: Option<usize>, arg: &'static str) -> Result<(), Error> {
    let bytes = bytes.ok_or(Error::Overflow { arg })?;
    if bytes > PREFLIGHT_BYTES {
        Vec::<u8>::new()
            .try_reserve_exact(bytes)
            .map_err(|_| Error::Allocation {
                what: "gemm scratch",
                bytes,
            })?;
    }
    Ok(())
}

/// Something to run with the microkernel chosen for an ISA and input type.
pub(crate) trait KernelOp {
    type Output;
    fn run<K: Microkernel + RowOps>(self, kern: K) -> Self::Output;
    /// Whether this op takes the small-m path (see `gemv`) on an
    /// [`kernel::Format::F32`] kernel: where an ISA would pick a kernel that
    /// cannot (AMX), it picks one that can.
    #[cfg_attr(
        not(target_arch = "x86_64"),
        expect(
            dead_code,
            reason = "only x86-64 has a kernel without the small-m path"
        )
    )]
    fn small_m(&self) -> bool {
        false
    }
}

/// Calls `op` with the microkernel this ISA runs for `dtype` inputs.
/// `dot` overrides the choice between the bf16 dot kernel (`vdpbf16ps` on
/// `avx512bf16`/`amx`, `BFMMLA` on `neonbf16`) and widening for bf16
/// (`None`: the per-CPU default, and on `amx` the tile kernel; `Some` on
/// `amx` runs the `avx512bf16` choice).
pub(crate) fn with_kernel<O: KernelOp>(
    token: Token,
    dtype: DType,
    dot: Option<bool>,
    op: O,
) -> O::Output {
    let _ = (dtype, dot);
    match token {
        #[cfg(target_arch = "x86_64")]
        Token::Avx2(t) => op.run(crate::arch::x86_64::avx2::gemm::Avx2F32(t)),
        #[cfg(target_arch = "x86_64")]
        Token::Avx512(t) => op.run(crate::arch::x86_64::avx512::gemm::Avx512F32(t)),
        #[cfg(target_arch = "x86_64")]
        Token::Avx512Bf16(t) => bf16_choice(t, dtype, dot, op),
        #[cfg(target_arch = "x86_64")]
        Token::Amx(t) => {
            // Tiles for bf16, except where streaming B beats packing it
            // (small m: a 32-row tile would be mostly padding).
            if dtype == DType::Bf16 && dot.is_none() && !op.small_m() {
                op.run(crate::arch::x86_64::amx::gemm::AmxBf16(t))
            } else {
                bf16_choice(t.avx512bf16(), dtype, dot, op)
            }
        }
        #[cfg(target_arch = "aarch64")]
        Token::Neon(t) => op.run(crate::arch::aarch64::neon::gemm::NeonF32(t)),
        #[cfg(target_arch = "aarch64")]
        Token::NeonBf16(t) => neon_bf16_choice(t, dtype, dot, op),
        #[allow(unreachable_patterns, reason = "scalar, and ISAs without a kernel")]
        _ => op.run(kernel::ScalarKernel),
    }
}

#[cfg(target_arch = "x86_64")]
fn bf16_choice<O: KernelOp>(
    t: crate::arch::x86_64::Avx512Bf16,
    dtype: DType,
    dot: Option<bool>,
    op: O,
) -> O::Output {
    use crate::arch::x86_64::avx512bf16::gemm::{Avx512Dot, dot_is_faster};
    use std::sync::OnceLock;
    static DOT: OnceLock<bool> = OnceLock::new();
    let dot = dot.unwrap_or_else(|| *DOT.get_or_init(dot_is_faster));
    if dtype == DType::Bf16 && dot {
        op.run(Avx512Dot(t))
    } else {
        op.run(crate::arch::x86_64::avx512::gemm::Avx512F32(t.avx512()))
    }
}

/// `neonbf16`: `BFMMLA` for bf16 inputs unless `dot == Some(false)`
/// (see `arch::aarch64::neonbf16::gemm` for its numerics), NEON FMLA
/// otherwise.
#[cfg(target_arch = "aarch64")]
fn neon_bf16_choice<O: KernelOp>(
    t: crate::arch::aarch64::NeonBf16,
    dtype: DType,
    dot: Option<bool>,
    op: O,
) -> O::Output {
    if dtype == DType::Bf16 && dot != Some(false) {
        op.run(crate::arch::aarch64::neonbf16::gemm::NeonBfmmla(t))
    } else {
        op.run(crate::arch::aarch64::neon::gemm::NeonF32(t.neon()))
    }
}

struct Unpacked<'a, 'p, T: Element, C: Element> {
    a: MatRef<'a, T>,
    b: MatRef<'a, T>,
    c: MatMut<'a, C>,
    ep: Epilogue<'p>,
    threads: usize,
    isa: crate::Isa,
}

impl<T: Element, C: Element> KernelOp for Unpacked<'_, '_, T, C> {
    type Output = Result<GemmReport, Error>;
    fn small_m(&self) -> bool {
        gemv::applies(&self.a, &self.b)
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
        let small_m = gemv::applies(&self.a, &self.b) && K::FORMAT == kernel::Format::F32;
        if small_m {
            preflight(gemv::scratch_bytes(m, k, threads), "a")?;
            let bad = gemv::run(kern, self.a, self.b, self.c, &self.ep, threads);
            return Ok(report(bad, "gemv"));
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
        let nonfinite = if m == 0 || n == 0 {
            0
        } else {
            preflight(blis::scratch_bytes::<K>(m, n, k, threads, true), "a")?;
            blis::run(kern, self.a, &self.b.panels, self.c, &self.ep, threads)
        };
        Ok(GemmReport {
            nonfinite,
            isa: self.isa,
            kernel: K::NAME,
            threads,
        })
    }
}
