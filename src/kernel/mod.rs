//! Layer 4 (see ARCHITECTURE.md): the interfaces ISA code implements and
//! the plain types it exchanges with the layers above. Everything under
//! `arch/` imports from here (and from `element`), never from the public
//! modules or the drivers; those in turn reach `arch/` only through the
//! dispatch in `isa`.
//!
//! - [`bits`]: the bit-level conversions, the numerics contract's oracle.
//! - [`simd`]: the `F32Simd` vector vocabulary and the `SimdOp` operation
//!   trait every elementwise kernel is written against; [`chunk`]: how
//!   those kernels walk a slice (vectors, then a tail).
//! - [`gemm`]: the `Microkernel` and `RowOps` traits an ISA's GEMM
//!   kernel implements, the packing formats and blocking policy, and
//!   `KernelOp`, GEMM's operation trait.
//! - [`epilogue`] and [`store`]: what every kernel applies to a finished
//!   block of C and how it stores it (`StoreBlock`, `store_row`), and the
//!   public `Activation` and `Bias` they read.
//! - [`stats`]: `GradStats`, what a gradient check returns.
//! - [`train`]: what one fused optimizer update needs (`Update`, `Tensor`,
//!   `Rule`).

pub mod bits;
pub(crate) mod chunk;
pub(crate) mod epilogue;
pub(crate) mod gemm;
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(
        dead_code,
        reason = "no SIMD ISA on this target: only the scalar oracle runs"
    )
)]
pub(crate) mod simd;
pub(crate) mod stats;
pub(crate) mod store;
pub(crate) mod train;
