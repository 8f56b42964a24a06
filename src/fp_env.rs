//! The floating-point environment the kernels compute in.
//!
//! The numerics contract (subnormals kept, bit-identical on every ISA) holds
//! only with IEEE subnormals. A host process may have turned on
//! flush-to-zero and denormals-are-zero for its threads (PyTorch's
//! `set_flush_denormal(True)` does, so do many C++ engines), and rayon's
//! workers inherit the mode of the thread that started them. So every
//! call whose kernels do float arithmetic (GEMM, the gradient checks, the
//! optimizer step) enters [`Ieee`] on the calling thread and in each of
//! its parallel tasks: where the flush bits are clear it only reads the
//! control register; where they are set it clears them and puts them back
//! when the task ends, panics included. The conversions need no guard:
//! they are integer code or conversion instructions that keep subnormals
//! whatever the mode (tested in `tests/fp_env.rs`).

/// Clears the flush-to-zero modes of this thread until dropped, then
/// restores what the caller had.
#[must_use = "the IEEE mode lasts as long as the guard"]
pub(crate) struct Ieee {
    saved: Option<u64>,
}

impl Ieee {
    /// Enters IEEE subnormal mode on this thread.
    #[inline]
    pub(crate) fn enter() -> Ieee {
        let mode = control::get();
        if !control::flushes(mode) {
            return Ieee { saved: None };
        }
        control::set(mode & !control::FLUSH);
        Ieee { saved: Some(mode) }
    }
}

impl Drop for Ieee {
    #[inline]
    fn drop(&mut self) {
        if let Some(mode) = self.saved {
            control::set(mode);
        }
    }
}

#[cfg(all(target_arch = "x86_64", not(miri)))]
mod control {
    /// MXCSR's flush-to-zero (bit 15) and denormals-are-zero (bit 6).
    pub(super) const FLUSH: u64 = (1 << 15) | (1 << 6);

    pub(super) fn flushes(mode: u64) -> bool {
        mode & FLUSH != 0
    }

    pub(super) fn get() -> u64 {
        let mut mode = 0u32;
        // SAFETY: STMXCSR stores the 4 bytes of `mode`; SSE is baseline on
        // x86-64.
        unsafe {
            core::arch::asm!("stmxcsr [{}]", in(reg) &mut mode, options(nostack, preserves_flags));
        }
        u64::from(mode)
    }

    pub(super) fn set(mode: u64) {
        let mode = mode as u32;
        // SAFETY: LDMXCSR loads the 4 bytes of `mode`, a value read by
        // `get` with at most the flush bits cleared: valid MXCSR contents.
        unsafe {
            core::arch::asm!("ldmxcsr [{}]", in(reg) &mode, options(nostack, readonly, preserves_flags));
        }
    }
}

#[cfg(all(target_arch = "aarch64", not(miri)))]
mod control {
    /// FPCR's FZ (bit 24: f32/f64 flush), FZ16 (bit 19: f16 flush) and,
    /// where FEAT_AFP exists, FIZ (bit 0: flush inputs) and AH (bit 1).
    pub(super) const FLUSH: u64 = (1 << 24) | (1 << 19) | (1 << 1) | 1;

    pub(super) fn flushes(mode: u64) -> bool {
        mode & FLUSH != 0
    }

    pub(super) fn get() -> u64 {
        let mode: u64;
        // SAFETY: reading FPCR has no side effects.
        unsafe {
            core::arch::asm!("mrs {}, fpcr", out(reg) mode, options(nomem, nostack, preserves_flags));
        }
        mode
    }

    pub(super) fn set(mode: u64) {
        // SAFETY: writes back a value read by `get` with at most mode bits
        // cleared (bits that are RES0 without FEAT_AFP are only cleared).
        unsafe {
            core::arch::asm!("msr fpcr, {}", in(reg) mode, options(nomem, nostack, preserves_flags));
        }
    }
}

/// Targets without a mode register we know, and Miri (which runs no inline
/// assembly): the mode is taken to be IEEE.
#[cfg(any(miri, not(any(target_arch = "x86_64", target_arch = "aarch64"))))]
mod control {
    pub(super) const FLUSH: u64 = 0;
    pub(super) fn get() -> u64 {
        0
    }
    pub(super) fn flushes(_: u64) -> bool {
        false
    }
    pub(super) fn set(_: u64) {}
}
