//! Layer 4 (see ARCHITECTURE.md): the interfaces ISA code implements and
//! the plain types it exchanges with the layers above. Everything under
//! `arch/` imports from here (and from `element`), never from the public
//! modules or the drivers; those in turn reach `arch/` only through the
//! dispatch in `isa`.
//!
//! - [`bits`]: the bit-level conversions, the numerics contract's oracle.
//! - [`simd`]: the `F32Simd` vector vocabulary and the `SimdOp` operation
//!   trait every elementwise kernel is written against.
//! - [`stats`]: `GradStats`, what a gradient check returns.
//! - [`train`]: what one fused optimizer update needs (`Update`, `Tensor`,
//!   `Rule`).

pub mod bits;
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(
        dead_code,
        reason = "no SIMD ISA on this target: only the scalar oracle runs"
    )
)]
pub(crate) mod simd;
pub(crate) mod stats;
pub(crate) mod train;
