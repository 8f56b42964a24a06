//! AMX detection: CPUID, the OS's XCR0 support for tile state, and Linux's
//! per-process permission (`arch_prctl(ARCH_REQ_XCOMP_PERM)`).
//!
//! Tile data is 8 KiB of extended state that Linux does not give a process
//! until it asks; using a tile instruction before that raises SIGILL. So
//! detection asks once, and a refused permission makes the ISA unavailable
//! instead of crashing later.

use core::arch::x86_64::{__cpuid_count, _xgetbv};
use std::sync::OnceLock;

use super::Avx512Bf16;

pub(crate) mod dot;
pub(crate) mod gemm;
pub(crate) mod tile;

/// Proof that AMX-BF16 tiles may be used by this process: the CPU has
/// AMX-TILE and AMX-BF16, the OS saves tile state, and Linux granted
/// permission. Also proves [`Avx512Bf16`].
#[derive(Clone, Copy, Debug)]
pub struct Amx {
    base: Avx512Bf16,
}

impl Amx {
    /// Detects AMX once per process; `None` when any step fails.
    pub(crate) fn try_new() -> Option<Self> {
        static GRANTED: OnceLock<bool> = OnceLock::new();
        let base = Avx512Bf16::try_new()?;
        GRANTED
            .get_or_init(detect_and_request)
            .then_some(Amx { base })
    }

    /// The AVX-512 BF16 base this token also proves.
    #[inline(always)]
    pub(crate) fn avx512bf16(self) -> Avx512Bf16 {
        self.base
    }
}

const XFEATURE_XTILECFG: u64 = 17;
const XFEATURE_XTILEDATA: u64 = 18;

fn detect_and_request() -> bool {
    // CPUID.(EAX=7,ECX=0):EDX bit 22 = AMX-BF16, bit 24 = AMX-TILE.
    let leaf7 = __cpuid_count(7, 0);
    let amx_bf16 = leaf7.edx & (1 << 22) != 0;
    let amx_tile = leaf7.edx & (1 << 24) != 0;
    // CPUID.1:ECX bit 27 = OSXSAVE: XGETBV is usable.
    let osxsave = __cpuid_count(1, 0).ecx & (1 << 27) != 0;
    if !(amx_bf16 && amx_tile && osxsave) {
        return false;
    }
    // SAFETY: OSXSAVE is set, so XGETBV with ECX=0 is defined.
    let xcr0 = unsafe { xgetbv0() };
    let tile_bits = (1 << XFEATURE_XTILECFG) | (1 << XFEATURE_XTILEDATA);
    if xcr0 & tile_bits != tile_bits {
        return false;
    }
    request_tile_permission()
}

/// Reads XCR0.
///
/// # Safety
///
/// The CPU must report OSXSAVE (CPUID.1:ECX bit 27).
#[target_feature(enable = "xsave")]
unsafe fn xgetbv0() -> u64 {
    // SAFETY: XGETBV(0) only reads a register; the caller checked OSXSAVE.
    unsafe { _xgetbv(0) }
}

#[cfg(target_os = "linux")]
fn request_tile_permission() -> bool {
    const SYS_ARCH_PRCTL: usize = 158;
    const ARCH_REQ_XCOMP_PERM: usize = 0x1023;
    let ret: isize;
    // The kernel clobbers rcx and r11 on `syscall`.
    // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA) only changes this
    // process's permitted extended state; it touches no memory of ours.
    unsafe {
        core::arch::asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL as isize => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA as usize,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

#[cfg(not(target_os = "linux"))]
fn request_tile_permission() -> bool {
    // Other OSes either enable tile state for every process or not at all;
    // we have no way to test them here, so we do not claim AMX there.
    false
}
