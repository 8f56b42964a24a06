//! The one error type of the crate.
//!
//! Every fallible call returns [`Error`] before it writes anything the caller
//! owns: arguments are validated up front, so an `Err` means "nothing
//! happened". Messages name the argument that was wrong and, for sizes, both
//! numbers, so a log line is enough to find the bug.

use core::fmt;

use crate::Isa;

/// What went wrong. Marked `#[non_exhaustive]`: match with a `_` arm.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// Two slices that must have the same length do not.
    LengthMismatch {
        /// The call, e.g. `"convert"`.
        op: &'static str,
        /// Length of the input (`src`).
        src: usize,
        /// Length of the output (`dst`).
        dst: usize,
    },
    /// A scale factor that must be finite and positive is not.
    InvalidScale {
        /// The call, e.g. `"unscale"`.
        op: &'static str,
        /// The argument's name, e.g. `"inv_scale"`.
        arg: &'static str,
        /// The value passed.
        value: f32,
    },
    /// A matrix view's slice is too short for its shape and strides.
    SliceTooShort {
        /// The argument, e.g. `"a"`.
        arg: &'static str,
        /// Elements the shape and strides reach (largest index + 1).
        needed: usize,
        /// Elements the slice has.
        len: usize,
    },
    /// Shapes that must agree do not (e.g. `A` is m x k but `B` is k' x n).
    ShapeMismatch {
        /// The call, e.g. `"gemm"`.
        op: &'static str,
        /// What disagrees, e.g. `"a.cols != b.rows"`.
        what: &'static str,
        /// The first size.
        left: usize,
        /// The size it should have matched.
        right: usize,
    },
    /// A shape or stride computation overflows `usize`/`isize`.
    Overflow {
        /// The argument, e.g. `"a"`.
        arg: &'static str,
    },
    /// The scratch memory a call needs cannot be allocated (the request was
    /// refused by the allocator through `try_reserve`; nothing was written).
    Allocation {
        /// What the memory was for, e.g. `"gemm scratch"`.
        what: &'static str,
        /// Bytes requested.
        bytes: usize,
    },
    /// Any other argument outside its documented range.
    InvalidArgument {
        /// The argument's name.
        arg: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// `HALFKERN_ISA` (or a request) names no ISA this crate knows.
    UnknownIsa {
        /// The name given.
        name: String,
    },
    /// An ISA was requested that this CPU (or OS) cannot run.
    IsaUnavailable {
        /// The ISA asked for.
        isa: Isa,
    },
    /// A checkpoint could not be restored: corrupt, truncated or for another model.
    Checkpoint {
        /// What did not match.
        reason: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::LengthMismatch { op, src, dst } => write!(
                f,
                "{op}: length mismatch: src has {src} elements, dst has {dst}"
            ),
            Error::InvalidScale { op, arg, value } => {
                write!(f, "{op}: {arg} must be finite and > 0, got {value:e}")
            }
            Error::SliceTooShort { arg, needed, len } => write!(
                f,
                "{arg}: slice too short for its shape and strides: needs {needed} elements, has {len}"
            ),
            Error::ShapeMismatch {
                op,
                what,
                left,
                right,
            } => write!(f, "{op}: shape mismatch: {what} ({left} != {right})"),
            Error::Overflow { arg } => {
                write!(f, "{arg}: shape and strides overflow the address space")
            }
            Error::Allocation { what, bytes } => {
                write!(f, "{what}: cannot allocate {bytes} bytes")
            }
            Error::InvalidArgument { arg, reason } => write!(f, "{arg}: {reason}"),
            Error::UnknownIsa { name } => write!(
                f,
                "unknown ISA {name:?}; known: {}",
                Isa::ALL
                    .iter()
                    .map(|isa| isa.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Error::IsaUnavailable { isa } => write!(
                f,
                "ISA {isa} is not available on this machine (available: {})",
                Isa::available()
                    .iter()
                    .map(|i| i.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Error::Checkpoint { reason } => write!(f, "checkpoint rejected: {reason}"),
        }
    }
}

impl std::error::Error for Error {}
