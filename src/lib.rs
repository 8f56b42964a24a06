//! # halfkern
//!
//! SIMD kernels for half-precision numerics on CPUs, chosen at run time, and
//! a safe mixed-precision training step on top of them.
//!
//! - [`convert`] / [`convert_stochastic`]: `f32`, [`bf16`] and [`f16`](struct@f16) slices
//!   into each other, bit-identical on every ISA.
//! - [`gemm()`] / [`gemm_packed`]: `C <- act(inv_scale * (alpha * A B) + beta * C + bias)`
//!   over [`MatRef`]/[`MatMut`] views, products summed in f32 (see [`mod@gemm`]).
//! - [`train`]: dynamic loss scaling, f32 master weights, fused SGD/AdamW
//!   updates and downcasts, skipped steps that change nothing.
//! - [`finite`]: fused gradient checks: unscale by `1/scale`, count inf/NaN
//!   and sum the squares for clipping, in one pass over memory.
//!
//! ## ISAs
//!
//! One portable binary runs the best kernels the CPU has: detection happens
//! once per process and is cached. `HALFKERN_ISA=<name>` forces one for the
//! whole process (an ISA the machine lacks is an [`Error`], never a silent
//! fallback), and [`Backend::new`] runs any available ISA next to the others
//! in one process, which is how the tests and benchmarks compare them.
//!
//! | [`Isa`] | needs | used for |
//! |---|---|---|
//! | `scalar` | nothing | fallback; the oracle every other ISA is tested against |
//! | `avx2` | AVX2 + FMA + F16C | f16 via `vcvtph2ps`/`vcvtps2ph`, bf16 via integer ops, f32 FMA GEMM |
//! | `avx512` | AVX-512 F/BW/VL/DQ | 16-lane versions of the above |
//! | `avx512bf16` | `avx512` + AVX512_BF16 | `vdpbf16ps` GEMM where it is faster than widening |
//! | `amx` | `avx512bf16` + AMX-BF16 + Linux permission | tile GEMM for bf16 |
//! | `neon` | aarch64 | f16 and bf16 via exact integer ops (`FCVTL` intrinsics need Rust 1.94), f32 FMLA GEMM |
//! | `neonbf16` | `neon` + FEAT_BF16 | `BFMMLA` GEMM for bf16 (round to odd, subnormals flushed) |
//!
//! ## Numerics contract
//!
//! - f32 -> bf16 and f32 -> f16 round to nearest, ties to even; overflow
//!   goes to ±inf; subnormal results are kept; NaN stays a quiet NaN with its
//!   sign. Every ISA is bit-identical to `half::bf16::from_f32` /
//!   `half::f16::from_f32` for all 2^32 inputs (tested exhaustively).
//! - bf16/f16 -> f32 is exact; bf16 <-> f16 rounds once.
//! - Stochastic rounding rounds away from zero with probability equal to the
//!   discarded fraction and depends only on `(seed, element index, value)`.
//!
//! ## Environment
//!
//! | variable | effect |
//! |---|---|
//! | `HALFKERN_ISA` | force an ISA by name (`scalar`, `avx2`, `avx512`, `avx512bf16`, `amx`, `neon`, `neonbf16`) |
//!
//! Threads come from rayon's global pool (`RAYON_NUM_THREADS`).

#![deny(unsafe_op_in_unsafe_fn)]

mod arch;
mod convert;
mod element;
mod error;
pub mod finite;
mod fp_env;
pub mod gemm;
mod isa;
mod kernel;
mod pool;
#[cfg(all(feature = "internals", target_arch = "x86_64"))]
mod probes;
pub mod train;

// Root re-exports: the entry functions of the one-call capabilities (convert, gemm) and every type
// users build or get back from any capability; other functions and `Step`'s state markers go by path.
pub use convert::{convert, convert_stochastic};
pub use element::{DType, Element};
pub use error::Error;
pub use finite::GradStats;
pub use gemm::{
    Activation, Bias, Gemm, GemmReport, MatMut, MatRef, PackedB, Threads, gemm, gemm_packed,
};
pub use half::{bf16, f16};
pub use isa::{Backend, Isa};
pub use train::{
    AdamW, LossScaler, Optimizer, Precision, Rounding, ScalerMode, ScalerOptions, Sgd, Step,
    StepReport, Trainer, TrainerBuilder,
};

/// The scalar bit-level conversions that define the numerics contract,
/// exported so tests, fuzzers and users can check results against them.
pub mod oracle {
    pub use crate::kernel::bits::{
        bf16_to_f16, bf16_to_f32, bf16_to_f32_bits, f16_to_bf16, f16_to_f32, f16_to_f32_bits,
        f32_to_bf16, f32_to_bf16_bits, f32_to_bf16_sr_bits, f32_to_f16, f32_to_f16_bits,
        f32_to_f16_sr_bits, sr_bits, sr_key,
    };
}

/// Hooks for the crate's own timing probes (`examples/gemm_probes.rs`):
/// feature `internals`, no stability promise.
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod __internals {
    #[cfg(target_arch = "x86_64")]
    pub use crate::probes::{Ahead, AmxKernel, BusyDriver, BusyPackedB};
}

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
