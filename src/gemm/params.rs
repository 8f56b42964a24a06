//! The GEMM's parameters ([`Gemm`]) and its result ([`GemmReport`]): plain
//! data, built with chained setters so a call never has more than a handful
//! of arguments.

use crate::error::Error;
use crate::isa::Isa;

pub use crate::kernel::epilogue::{Activation, Bias};

/// How many threads a GEMM may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Threads {
    /// Every thread of the current rayon pool (the global pool, or the pool
    /// the caller runs in: a call from inside a pool never oversubscribes),
    /// fewer when the problem is too small to pay for them.
    #[default]
    Auto,
    /// The calling thread only.
    Single,
    /// At most this many threads of the current rayon pool (`>= 1`).
    Count(usize),
}

/// The parameters of a GEMM: `C <- act(inv_scale * (alpha * A B) + beta * C + bias)`.
///
/// The epilogue runs in f32 on each output before its single store, in this
/// order:
///
/// 1. `t = alpha * acc`, where `acc` is the f32 sum of the products of row
///    `i` of A and column `j` of B;
/// 2. `t = t * inv_scale` when [`Gemm::unscale`] is set;
/// 3. `t = t + beta * c` with `c` the old output widened to f32, only when
///    `beta != 0`: **`beta == 0` never reads C**, so C may hold NaN or
///    garbage;
/// 4. `t = t + bias` ([`Bias::PerRow`] or [`Bias::PerCol`]);
/// 5. `y = act(t)` ([`Activation`]);
/// 6. `y` rounded to C's type, to nearest, ties to even.
///
/// SIMD kernels may fuse a multiply and the following add (one rounding
/// instead of two), so results may differ from this order by an f32 ulp of
/// the intermediate. The [`GemmReport`] counts outputs that are inf or NaN
/// after step 6: under loss scaling, `unscale(1 / scale)` plus
/// `report.nonfinite > 0` replaces a separate pass over the gradient.
///
/// # Examples
///
/// ```
/// use halfkern::{Activation, Bias, Gemm, MatMut, MatRef};
///
/// let a = [1.0f32, 2.0, 3.0, 4.0]; // 2 x 2
/// let b = [1.0f32, 0.0, 0.0, 1.0]; // identity
/// let bias = [10.0f32, -10.0];
/// let mut c = [f32::NAN; 4]; // beta = 0: never read
/// let params = Gemm::new()
///     .bias(Bias::PerCol(&bias))
///     .activation(Activation::Relu);
/// halfkern::gemm(
///     MatRef::row_major(&a, 2, 2)?,
///     MatRef::row_major(&b, 2, 2)?,
///     MatMut::row_major(&mut c, 2, 2)?,
///     &params,
/// )?;
/// assert_eq!(c, [11.0, 0.0, 13.0, 0.0]);
/// # Ok::<(), halfkern::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gemm<'a> {
    pub(crate) alpha: f32,
    pub(crate) beta: f32,
    pub(crate) inv_scale: Option<f32>,
    pub(crate) bias: Bias<'a>,
    pub(crate) activation: Activation,
    pub(crate) threads: Threads,
    pub(crate) dot: Option<bool>,
}

impl Default for Gemm<'_> {
    fn default() -> Self {
        Gemm::new()
    }
}

impl<'a> Gemm<'a> {
    /// `C <- A B`: alpha 1, beta 0, no bias, no activation, no unscale,
    /// [`Threads::Auto`].
    pub const fn new() -> Self {
        Gemm {
            alpha: 1.0,
            beta: 0.0,
            inv_scale: None,
            bias: Bias::None,
            activation: Activation::None,
            threads: Threads::Auto,
            dot: None,
        }
    }

    /// Multiplies `A B` by `alpha` (default 1).
    pub const fn alpha(mut self, alpha: f32) -> Self {
        self.alpha = alpha;
        self
    }

    /// Adds `beta` times the old C (default 0: C is not read at all).
    pub const fn beta(mut self, beta: f32) -> Self {
        self.beta = beta;
        self
    }

    /// Multiplies `alpha A B` by `inv_scale` (loss-scaling's `1 / scale`),
    /// before beta C is added. Checked at the call: it must be finite and
    /// positive.
    pub const fn unscale(mut self, inv_scale: f32) -> Self {
        self.inv_scale = Some(inv_scale);
        self
    }

    /// Adds a bias per row or per column (length checked at the call).
    pub const fn bias(mut self, bias: Bias<'a>) -> Self {
        self.bias = bias;
        self
    }

    /// Applies an activation last, before rounding.
    pub const fn activation(mut self, activation: Activation) -> Self {
        self.activation = activation;
        self
    }

    /// Limits the threads used (default [`Threads::Auto`]).
    pub const fn threads(mut self, threads: Threads) -> Self {
        self.threads = threads;
        self
    }

    /// Forces (`Some(true)`) or forbids (`Some(false)`) the bf16 dot
    /// microkernel for bf16 inputs (`vdpbf16ps` on `avx512bf16`/`amx`,
    /// `BFMMLA` on `neonbf16`); `None` (default) takes the per-CPU choice (on
    /// `amx`: the tile kernel; `Some` there runs the `avx512bf16` kernels
    /// instead). A test and benchmark hook: only with the `internals`
    /// feature, no stability promise.
    #[cfg(feature = "internals")]
    #[doc(hidden)]
    pub const fn dot_kernel(mut self, dot: Option<bool>) -> Self {
        self.dot = dot;
        self
    }

    /// Checks what does not depend on the shapes.
    pub(crate) fn validate(&self, m: usize, n: usize) -> Result<(), Error> {
        if let Some(s) = self.inv_scale
            && !(s.is_finite() && s > 0.0)
        {
            return Err(Error::InvalidScale {
                op: "gemm",
                arg: "inv_scale",
                value: s,
            });
        }
        match self.bias {
            Bias::PerRow(b) if b.len() != m => Err(Error::ShapeMismatch {
                op: "gemm",
                what: "bias (per row) length != c.rows",
                left: b.len(),
                right: m,
            }),
            Bias::PerCol(b) if b.len() != n => Err(Error::ShapeMismatch {
                op: "gemm",
                what: "bias (per column) length != c.cols",
                left: b.len(),
                right: n,
            }),
            _ => match self.threads {
                Threads::Count(0) => Err(Error::InvalidArgument {
                    arg: "threads",
                    reason: "Threads::Count(0): need at least one thread".into(),
                }),
                _ => Ok(()),
            },
        }
    }

    /// The number of threads to use for `work` multiply-adds.
    /// The epilogue's parameters, resolved once per call.
    pub(crate) fn epilogue(&self) -> crate::kernel::epilogue::Epilogue<'a> {
        crate::kernel::epilogue::Epilogue {
            alpha: self.alpha,
            inv_scale: self.inv_scale,
            beta: self.beta,
            bias: self.bias,
            activation: self.activation,
        }
    }

    pub(crate) fn thread_count(&self, work: f64) -> usize {
        let pool = rayon::current_num_threads().max(1);
        let wanted = match self.threads {
            Threads::Single => 1,
            Threads::Count(n) => n.min(pool),
            Threads::Auto => pool,
        };
        // Below ~2^21 multiply-adds (a few tens of microseconds on one
        // core) a fork-join costs more than it saves.
        let useful = ((work / (1u64 << 21) as f64) as usize).max(1);
        match self.threads {
            Threads::Auto => wanted.min(useful),
            _ => wanted,
        }
        .max(1)
    }
}

/// What a GEMM call did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct GemmReport {
    /// Outputs that are inf or NaN after the epilogue and the rounding to
    /// C's type (0 for an empty C).
    pub nonfinite: usize,
    /// The ISA whose kernels ran.
    pub isa: Isa,
    /// The microkernel or path that ran, e.g. `"avx512-f32fma"`, `"gemv"`.
    pub kernel: &'static str,
    /// Threads used.
    pub threads: usize,
}

impl GemmReport {
    /// Whether any output is inf or NaN.
    pub fn any_nonfinite(&self) -> bool {
        self.nonfinite > 0
    }
}
