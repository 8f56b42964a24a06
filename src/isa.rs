//! Which instruction set runs: detection, the process-wide choice, and the
//! [`Backend`] handle that runs any available ISA on demand.
//!
//! Detection happens once per ISA (the tokens in `arch::*` cache it) and the
//! process-wide choice is made once and cached in a [`OnceLock`], so a
//! kernel call costs one atomic load and a `match` to dispatch; nothing is
//! re-checked inside a loop.
//!
//! `HALFKERN_ISA=<name>` forces the process-wide choice. Naming an ISA this
//! machine lacks, or a name we do not know, makes every top-level call return
//! that [`Error`] instead of silently running something else: a forced test
//! run that quietly fell back would hide the kernel it meant to test.

use core::fmt;
use core::str::FromStr;
use std::sync::OnceLock;

#[cfg(target_arch = "aarch64")]
use crate::arch::aarch64 as arm;
#[cfg(target_arch = "x86_64")]
use crate::arch::x86_64 as x86;
use crate::element::DType;
use crate::error::Error;
use crate::kernel::gemm::KernelOp;
use crate::kernel::simd::SimdOp;

/// An instruction set halfkern has kernels for.
///
/// Each ISA includes the ones before it on the same architecture: `amx`
/// runs the `avx512bf16` kernels wherever it has no tile kernel of its own,
/// `avx512bf16` runs the `avx512` ones, and so on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Isa {
    /// Portable Rust; the oracle every other ISA is tested against.
    Scalar,
    /// AVX2 + FMA + F16C (x86-64).
    Avx2,
    /// AVX-512 F/BW/VL/DQ (x86-64).
    Avx512,
    /// AVX-512 plus AVX512_BF16 (x86-64).
    Avx512Bf16,
    /// AVX512_BF16 plus AMX-BF16 tiles, with Linux's permission (x86-64).
    Amx,
    /// Advanced SIMD (aarch64).
    Neon,
    /// NEON plus FEAT_BF16 (aarch64).
    NeonBf16,
}

impl Isa {
    /// Every ISA this crate knows, on any architecture (within one, worst
    /// first). A slice, so that adding an ISA is not a breaking change.
    pub const ALL: &'static [Isa] = &[
        Isa::Scalar,
        Isa::Avx2,
        Isa::Avx512,
        Isa::Avx512Bf16,
        Isa::Amx,
        Isa::Neon,
        Isa::NeonBf16,
    ];

    /// The name used by `HALFKERN_ISA` and in reports.
    pub const fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Avx512Bf16 => "avx512bf16",
            Isa::Amx => "amx",
            Isa::Neon => "neon",
            Isa::NeonBf16 => "neonbf16",
        }
    }

    /// Whether this machine can run the ISA (detected once, then cached).
    pub fn is_available(self) -> bool {
        Backend::new(self).is_some()
    }

    /// The ISAs this machine can run, worst first, so `last()` is the best.
    ///
    /// # Examples
    ///
    /// ```
    /// let isas = halfkern::Isa::available();
    /// assert_eq!(isas[0], halfkern::Isa::Scalar);
    /// ```
    pub fn available() -> Vec<Isa> {
        Isa::ALL
            .iter()
            .copied()
            .filter(|isa| isa.is_available())
            .collect()
    }

    /// The best ISA this machine has (what runs when `HALFKERN_ISA` is unset).
    pub fn best() -> Isa {
        Backend::best().isa()
    }

    /// The ISA the top-level functions use: `HALFKERN_ISA` if set, else
    /// [`Isa::best`].
    ///
    /// # Errors
    ///
    /// [`Error::UnknownIsa`] or [`Error::IsaUnavailable`] when
    /// `HALFKERN_ISA` names something this machine cannot run.
    pub fn selected() -> Result<Isa, Error> {
        Backend::global().map(|backend| backend.isa())
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Isa {
    type Err = Error;

    /// Parses a name as `HALFKERN_ISA` takes it (case-insensitive, `-`/`_`
    /// ignored, so `AVX512_BF16` works too).
    fn from_str(s: &str) -> Result<Isa, Error> {
        let norm: String = s
            .trim()
            .chars()
            .filter(|c| *c != '_' && *c != '-')
            .map(|c| c.to_ascii_lowercase())
            .collect();
        Isa::ALL
            .iter()
            .copied()
            .find(|isa| isa.name() == norm)
            .ok_or_else(|| Error::UnknownIsa { name: s.to_owned() })
    }
}

/// The proof that an ISA is present, carried inside [`Backend`]. Matching on
/// it hands each kernel the token it needs without any unsafe code.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Token {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2(x86::Avx2),
    #[cfg(target_arch = "x86_64")]
    Avx512(x86::Avx512),
    #[cfg(target_arch = "x86_64")]
    Avx512Bf16(x86::Avx512Bf16),
    #[cfg(target_arch = "x86_64")]
    Amx(x86::amx::Amx),
    #[cfg(target_arch = "aarch64")]
    Neon(arm::Neon),
    #[cfg(target_arch = "aarch64")]
    NeonBf16(arm::NeonBf16),
}

/// The elementwise operations, each a [`SimdOp`] defined beside its
/// kernel in `arch::generic`: what the public modules hand to
/// [`Token::run`].
pub(crate) mod ops {
    pub(crate) use crate::arch::generic::convert::{Convert, Stochastic};
    pub(crate) use crate::arch::generic::dot::DotBlock;
    pub(crate) use crate::arch::generic::finite::{CountNonfinite, Unscale, UnscaleInto};
    pub(crate) use crate::arch::generic::train::{TrainApply, TrainStats};
}

impl Token {
    /// Calls `op` with the microkernel this ISA runs for `dtype` inputs: the
    /// one `match` on the ISA for GEMM.
    /// `dot` overrides the choice between the bf16 dot kernel (`vdpbf16ps` on
    /// `avx512bf16`/`amx`, `BFMMLA` on `neonbf16`) and widening for bf16
    /// (`None`: the per-CPU default, and on `amx` the tile kernel; `Some` on
    /// `amx` runs the `avx512bf16` choice).
    pub(crate) fn with_microkernel<O: KernelOp>(
        self,
        dtype: DType,
        dot: Option<bool>,
        op: O,
    ) -> O::Output {
        let _ = (dtype, dot);
        match self {
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
            _ => op.run(crate::arch::scalar::gemm::ScalarKernel),
        }
    }

    /// Runs an elementwise operation on the ISA this token proves: the one
    /// `match` on the ISA for every elementwise kernel. ISAs that add
    /// nothing to these operations run the ISA below them (`avx512bf16`
    /// and `amx` the `avx512` entry, `neonbf16` the `neon` one). Operations
    /// that compute in floating point run with IEEE subnormals whatever
    /// mode the calling thread has (see `fp_env`).
    #[inline]
    pub(crate) fn run<O: SimdOp>(self, op: O) -> O::Output {
        let _mode = O::IEEE.then(crate::fp_env::Ieee::enter);
        match self {
            Token::Scalar => op.scalar(),
            #[cfg(target_arch = "x86_64")]
            Token::Avx2(t) => x86::avx2::run(t, op),
            #[cfg(target_arch = "x86_64")]
            Token::Avx512(t) => x86::avx512::run(t, op),
            #[cfg(target_arch = "x86_64")]
            Token::Avx512Bf16(t) => x86::avx512::run(t.avx512(), op),
            #[cfg(target_arch = "x86_64")]
            Token::Amx(t) => x86::avx512::run(t.avx512bf16().avx512(), op),
            #[cfg(target_arch = "aarch64")]
            Token::Neon(t) => arm::neon::run(t, op),
            #[cfg(target_arch = "aarch64")]
            Token::NeonBf16(t) => arm::neon::run(t.neon(), op),
        }
    }
}

impl Token {
    /// One block of the small-m path for a column-major B
    /// ([`ops::DotBlock`]): on tiles where AMX takes it (bf16, 4 to 16 rows
    /// of A), else the elementwise dispatch of [`Token::run`].
    pub(crate) fn dot<T: crate::element::Element>(self, op: ops::DotBlock<'_, T>) {
        match self {
            #[cfg(target_arch = "x86_64")]
            Token::Amx(t) if crate::arch::x86_64::amx::dot::takes(&op) => {
                let _mode = crate::fp_env::Ieee::enter();
                crate::arch::x86_64::amx::dot::run(t, op)
            }
            _ => self.run(op),
        }
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
    // Small m streams B through the f32 small-m path (`gemm::gemv`), which
    // only f32-format kernels take: there the dot kernel would pack all of
    // B for a few rows.
    let dot = dot.unwrap_or_else(|| !op.small_m() && *DOT.get_or_init(dot_is_faster));
    if dtype == DType::Bf16 && dot {
        op.run(Avx512Dot(t))
    } else {
        op.run(crate::arch::x86_64::avx512::gemm::Avx512F32(t.avx512()))
    }
}

/// `neonbf16`: `BFMMLA` for bf16 inputs unless `dot == Some(false)`, or
/// unless `dot` is unset and the operation takes the small-m path (which
/// only f32-format kernels take; see `arch::aarch64::neonbf16::gemm` for
/// BFMMLA's numerics), NEON FMLA otherwise.
#[cfg(target_arch = "aarch64")]
fn neon_bf16_choice<O: KernelOp>(
    t: crate::arch::aarch64::NeonBf16,
    dtype: DType,
    dot: Option<bool>,
    op: O,
) -> O::Output {
    let dot = dot.unwrap_or(!op.small_m());
    if dtype == DType::Bf16 && dot {
        op.run(crate::arch::aarch64::neonbf16::gemm::NeonBfmmla(t))
    } else {
        op.run(crate::arch::aarch64::neon::gemm::NeonF32(t.neon()))
    }
}

/// The portable microkernel, the reference the drivers' tests compare with.
#[cfg(test)]
pub(crate) use crate::arch::scalar::gemm::ScalarKernel;

/// A test that runs once per GEMM microkernel (see [`each_microkernel`]).
#[cfg(test)]
pub(crate) trait EachKernel {
    /// The test, on one kernel.
    fn kernel<K: crate::kernel::gemm::Microkernel + crate::kernel::gemm::RowOps>(
        &mut self,
        kern: K,
    );
}

/// Calls `each` with every GEMM microkernel this machine can run (the
/// scalar one everywhere): how the drivers' tests reach every kernel
/// without naming one.
#[cfg(test)]
pub(crate) fn each_microkernel(each: &mut impl EachKernel) {
    each.kernel(crate::arch::scalar::gemm::ScalarKernel);
    #[cfg(target_arch = "x86_64")]
    {
        if let Some(t) = x86::Avx2::try_new() {
            each.kernel(x86::avx2::gemm::Avx2F32(t));
        }
        if let Some(t) = x86::Avx512::try_new() {
            each.kernel(x86::avx512::gemm::Avx512F32(t));
        }
        if let Some(t) = x86::Avx512Bf16::try_new() {
            each.kernel(x86::avx512bf16::gemm::Avx512Dot(t));
        }
        if let Some(t) = x86::amx::Amx::try_new() {
            each.kernel(x86::amx::gemm::AmxBf16(t));
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if let Some(t) = arm::Neon::try_new() {
            each.kernel(arm::neon::gemm::NeonF32(t));
        }
        if let Some(t) = arm::NeonBf16::try_new() {
            each.kernel(arm::neonbf16::gemm::NeonBfmmla(t));
        }
    }
}

/// A handle that runs every kernel on one ISA.
///
/// Holding a `Backend` proves its ISA is available: [`Backend::new`] is the
/// only way to make one for a given ISA, and it detects first. The
/// top-level functions (`halfkern::convert`, `halfkern::gemm`, ...) use
/// [`Backend::global`]; tests and benchmarks make one per ISA to compare
/// them in one process.
///
/// # Examples
///
/// ```
/// use halfkern::{Backend, Isa, bf16};
///
/// let src = [1.0f32, 2.5, -0.0];
/// for isa in Isa::available() {
///     let backend = Backend::new(isa).unwrap();
///     let mut dst = [bf16::ZERO; 3];
///     backend.convert(&src, &mut dst)?;
///     assert_eq!(dst[1].to_f32(), 2.5);
/// }
/// # Ok::<(), halfkern::Error>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Backend {
    pub(crate) token: Token,
}

impl Backend {
    /// A backend for `isa`, or `None` when this machine cannot run it.
    pub fn new(isa: Isa) -> Option<Backend> {
        let token = match isa {
            Isa::Scalar => Some(Token::Scalar),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => x86::Avx2::try_new().map(Token::Avx2),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => x86::Avx512::try_new().map(Token::Avx512),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Bf16 => x86::Avx512Bf16::try_new().map(Token::Avx512Bf16),
            #[cfg(target_arch = "x86_64")]
            Isa::Amx => x86::amx::Amx::try_new().map(Token::Amx),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => arm::Neon::try_new().map(Token::Neon),
            #[cfg(target_arch = "aarch64")]
            Isa::NeonBf16 => arm::NeonBf16::try_new().map(Token::NeonBf16),
            #[allow(unreachable_patterns, reason = "the other arch's ISAs")]
            _ => None,
        };
        token.map(|token| Backend { token })
    }

    /// The portable backend; always available.
    pub const fn scalar() -> Backend {
        Backend {
            token: Token::Scalar,
        }
    }

    /// The best backend this machine has.
    pub fn best() -> Backend {
        static BEST: OnceLock<Backend> = OnceLock::new();
        *BEST.get_or_init(|| {
            Isa::ALL
                .iter()
                .copied()
                .rev()
                .find_map(Backend::new)
                .unwrap_or(Backend::scalar())
        })
    }

    /// The process-wide backend: `HALFKERN_ISA` if set, else [`Backend::best`].
    /// Decided on first use and cached for the life of the process.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownIsa`] or [`Error::IsaUnavailable`] when
    /// `HALFKERN_ISA` names something this machine cannot run; every
    /// top-level call then returns the same error.
    pub fn global() -> Result<Backend, Error> {
        static GLOBAL: OnceLock<Result<Backend, Error>> = OnceLock::new();
        GLOBAL
            .get_or_init(|| Backend::from_env(std::env::var_os("HALFKERN_ISA")))
            .clone()
    }

    /// The backend `HALFKERN_ISA` asks for, given its value: unset or blank
    /// is [`Backend::best`]; a value that is not UTF-8 names no ISA, so it
    /// is [`Error::UnknownIsa`] like any other unknown name.
    fn from_env(value: Option<std::ffi::OsString>) -> Result<Backend, Error> {
        let Some(value) = value else {
            return Ok(Backend::best());
        };
        let name = value.into_string().map_err(|raw| Error::UnknownIsa {
            name: raw.to_string_lossy().into_owned(),
        })?;
        if name.trim().is_empty() {
            return Ok(Backend::best());
        }
        let isa: Isa = name.parse()?;
        Backend::new(isa).ok_or(Error::IsaUnavailable { isa })
    }

    /// The ISA this backend runs.
    pub fn isa(&self) -> Isa {
        match self.token {
            Token::Scalar => Isa::Scalar,
            #[cfg(target_arch = "x86_64")]
            Token::Avx2(_) => Isa::Avx2,
            #[cfg(target_arch = "x86_64")]
            Token::Avx512(_) => Isa::Avx512,
            #[cfg(target_arch = "x86_64")]
            Token::Avx512Bf16(_) => Isa::Avx512Bf16,
            #[cfg(target_arch = "x86_64")]
            Token::Amx(_) => Isa::Amx,
            #[cfg(target_arch = "aarch64")]
            Token::Neon(_) => Isa::Neon,
            #[cfg(target_arch = "aarch64")]
            Token::NeonBf16(_) => Isa::NeonBf16,
        }
    }
}

impl PartialEq for Backend {
    fn eq(&self, other: &Backend) -> bool {
        self.isa() == other.isa()
    }
}

impl Eq for Backend {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for &isa in Isa::ALL {
            assert_eq!(isa.name().parse::<Isa>(), Ok(isa));
            assert_eq!(isa.to_string(), isa.name());
        }
        assert_eq!("AVX512_BF16".parse::<Isa>(), Ok(Isa::Avx512Bf16));
        assert!(matches!(
            "avx9000".parse::<Isa>(),
            Err(Error::UnknownIsa { .. })
        ));
    }

    #[test]
    fn available_is_ordered_and_backends_report_their_isa() {
        let isas = Isa::available();
        assert_eq!(isas.first(), Some(&Isa::Scalar));
        assert!(isas.windows(2).all(|w| w[0] < w[1]));
        for isa in isas {
            assert_eq!(Backend::new(isa).map(|b| b.isa()), Some(isa));
        }
        assert_eq!(Some(&Backend::best().isa()), Isa::available().last());
    }

    #[test]
    fn env_values_that_name_no_isa_are_errors() {
        use std::ffi::OsString;
        assert_eq!(Backend::from_env(None), Ok(Backend::best()));
        assert_eq!(Backend::from_env(Some(" ".into())), Ok(Backend::best()));
        assert_eq!(
            Backend::from_env(Some("scalar".into())),
            Ok(Backend::scalar())
        );
        assert!(matches!(
            Backend::from_env(Some("avx9000".into())),
            Err(Error::UnknownIsa { .. })
        ));
        // Not UTF-8: an error, never a silent fall back to the best ISA.
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStringExt;
            let raw = OsString::from_vec(vec![b's', 0xff, b'x']);
            assert!(matches!(
                Backend::from_env(Some(raw)),
                Err(Error::UnknownIsa { name }) if name.starts_with('s')
            ));
        }
    }

    #[test]
    fn other_architecture_isas_are_unavailable() {
        #[cfg(target_arch = "x86_64")]
        let foreign = [Isa::Neon, Isa::NeonBf16];
        #[cfg(target_arch = "aarch64")]
        let foreign = [Isa::Avx2, Isa::Avx512, Isa::Avx512Bf16, Isa::Amx];
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        let foreign = [Isa::Avx2, Isa::Neon];
        for isa in foreign {
            assert!(Backend::new(isa).is_none(), "{isa}");
        }
    }
}
