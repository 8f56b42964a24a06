//! Hooks for the timing probes of `examples/gemm_probes.rs` (feature
//! `internals`, hidden from the docs, no stability promise): the BLIS
//! driver around a stand-in kernel, and the AMX microkernel on its own.
//! The timing loops live in the example; this module only opens what
//! they reach, each behind a safe API (a token proves the ISA, slices
//! are bounds-checked).

use crate::arch::x86_64::Avx512Bf16;
use crate::arch::x86_64::amx::Amx;
use crate::arch::x86_64::amx::gemm::AmxBf16;
use crate::arch::x86_64::avx512bf16::gemm::Avx512Dot;
use crate::element::Element;
use crate::gemm::blis::{self, PackedPanels};
use crate::gemm::{Gemm, MatMut, MatRef};
use crate::kernel::gemm::{self as kernel, Blocking, Format, Microkernel, RowOps, StoreBlock};
use half::bf16;

/// A kernel with the AMX kernel's shape and formats that touches no
/// memory and stays busy about as long as the AMX kernel computes (a
/// chain of `per_256` multiplies per 256 slots), its packing and epilogue
/// those of the AMX kernel: what the driver costs around it, on any
/// x86-64 with AVX512_BF16.
#[derive(Clone, Copy, Debug)]
struct Busy {
    dot: Avx512Dot,
    per_256: usize,
}

impl Microkernel for Busy {
    const MR: usize = 32;
    const NR: usize = 32;
    const FORMAT: Format = Format::Bf16Pairs;
    const FORMAT_A: Format = Format::Bf16Rows;
    const BLOCKING: Blocking = Blocking {
        kc: 512,
        ..Blocking::BLIS
    };
    const NAME: &'static str = "busy";

    fn kernel(self, slots: usize, a: &[f32], b: &[f32], tile: &mut [f32], _: bool) {
        let mut x = 3u64;
        // SAFETY: register arithmetic only: a chain of 3-cycle
        // multiplies (about 2.9 GHz here).
        unsafe {
            core::arch::asm!(
                "2:", "imul {x}, {x}", "dec {n}", "jnz 2b",
                x = inout(reg) x,
                n = inout(reg) (slots * self.per_256 / 256).max(1) => _,
                options(nomem, nostack),
            );
        }
        tile[0] = a[0] + b[0] + x as f32;
    }

    fn store_block<C: Element>(self, job: &StoreBlock<'_, C>) -> usize
    where
        Self: RowOps,
    {
        // SAFETY: `self.dot`'s token proves every feature it enables.
        unsafe { crate::arch::x86_64::avx512::gemm::store_block(self, job) }
    }
}

impl RowOps for Busy {
    fn widen<T: Element>(self, src: &[T], dst: &mut [f32]) {
        self.dot.widen(src, dst);
    }

    fn narrow_f16(self, src: &[f32], dst: &mut [half::f16]) {
        self.dot.narrow_f16(src, dst);
    }

    fn axpy_rows(self, _: &[f32], _: &[f32], _: &mut [&mut [f32]]) {}

    fn axpy_rows4(self, _: &[f32], _: [&[f32]; 4], _: &mut [&mut [f32]]) {}
}

/// The BLIS driver (packing, the loops, the epilogue and the stores to C)
/// around a stand-in kernel that only stays busy (see `Busy`).
#[derive(Clone, Copy, Debug)]
pub struct BusyDriver(Busy);

/// B packed by [`BusyDriver::pack_b`], into this thread's scratch.
#[derive(Debug)]
pub struct BusyPackedB(PackedPanels);

impl BusyDriver {
    /// The driver with a kernel that runs `per_256` multiplies per 256
    /// slots (745: about as long as the AMX kernel on one core of the lent
    /// host; 0 leaves the loops alone). `None` without AVX512_BF16.
    pub fn new(per_256: usize) -> Option<Self> {
        let dot = Avx512Dot(Avx512Bf16::try_new()?);
        Some(BusyDriver(Busy { dot, per_256 }))
    }

    /// Packs `b` over up to `threads` threads, as a GEMM call does.
    pub fn pack_b(self, b: MatRef<'_, bf16>, threads: usize) -> BusyPackedB {
        BusyPackedB(blis::pack_b_scratch(self.0, b, threads))
    }

    /// Gives a [`BusyDriver::pack_b`] buffer back to this thread's scratch.
    pub fn recycle(self, packed: BusyPackedB) {
        blis::recycle(packed.0);
    }

    /// The BLIS loops of `C = A B` (the default epilogue) over `packed`,
    /// on `threads` threads; returns the count of non-finite outputs.
    ///
    /// # Panics
    ///
    /// If the shapes of `a`, `packed` and `c` don't match.
    pub fn run<C: Element>(
        self,
        a: MatRef<'_, bf16>,
        packed: &BusyPackedB,
        c: MatMut<'_, C>,
        threads: usize,
    ) -> usize {
        let ep = Gemm::new().epilogue();
        blis::run(self.0, a, &packed.0, c, &ep, threads)
    }
}

/// The AMX-BF16 microkernel on its own (`tdpbf16ps` on a 32 x 32 tile of
/// C), for the AMX probes: panels in its packed formats (see `Format`),
/// A~ in `Bf16Rows` groups of [`AmxKernel::ROW_GROUP`] slots, B~ in
/// `Bf16Pairs`.
#[derive(Clone, Copy, Debug)]
pub struct AmxKernel(AmxBf16);

/// What the calls after an [`AmxKernel::kernel_then`] call read, for it to
/// prefetch (the driver's `Ahead`).
#[derive(Clone, Copy, Debug)]
pub enum Ahead<'a> {
    /// Nothing to prefetch.
    Nothing,
    /// The operand the next call reads first, wanted in L1.
    NextOperand(&'a [f32]),
    /// This call's share of a B~ micro-panel read a few calls later
    /// (wanted in L2), and the accumulator tile the next call loads (wanted
    /// in L1; an address only, never dereferenced).
    PanelAndTile {
        /// The share of B~.
        b_share: &'a [f32],
        /// The next call's tile.
        next_tile: *const f32,
    },
}

impl AmxKernel {
    /// Rows of the tile of C.
    pub const MR: usize = AmxBf16::MR;
    /// Columns of the tile of C.
    pub const NR: usize = AmxBf16::NR;
    /// Slots per lane in one group of packed A~ (32 k values).
    pub const ROW_GROUP: usize = kernel::ROW_GROUP;

    /// The kernel, where the CPU has AMX-BF16 (and Linux grants the tile
    /// state); `None` elsewhere.
    pub fn new() -> Option<Self> {
        Amx::try_new().map(|t| AmxKernel(AmxBf16(t)))
    }

    /// `tile = (accumulate ? tile : 0) + A~ B~` over `slots` packed slots.
    ///
    /// # Panics
    ///
    /// If `a` holds fewer than `slots * MR` slots, `b` fewer than
    /// `slots * NR`, or `tile` fewer than `MR * NR`.
    pub fn kernel(self, slots: usize, a: &[f32], b: &[f32], tile: &mut [f32], accumulate: bool) {
        self.0.kernel(slots, a, b, tile, accumulate);
    }

    /// [`AmxKernel::kernel`], prefetching what `ahead` names as it goes.
    ///
    /// # Panics
    ///
    /// As [`AmxKernel::kernel`].
    pub fn kernel_then(
        self,
        slots: usize,
        a: &[f32],
        b: &[f32],
        tile: &mut [f32],
        accumulate: bool,
        ahead: Ahead<'_>,
    ) {
        let ahead = match ahead {
            Ahead::Nothing => kernel::Ahead::Nothing,
            Ahead::NextOperand(x) => kernel::Ahead::NextOperand(x),
            Ahead::PanelAndTile { b_share, next_tile } => {
                kernel::Ahead::PanelAndTile { b_share, next_tile }
            }
        };
        self.0.kernel_then(slots, a, b, tile, accumulate, ahead);
    }
}
