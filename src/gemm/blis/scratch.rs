//! Scratch buffers kept per thread between calls: a fresh multi-MiB `Vec`
//! per call costs a page fault per 4 KiB and a zero fill, a large part of
//! a multi-threaded AMX GEMM (see BENCHMARKS.md, AMX). Only buffers up to
//! [`SCRATCH_MAX`] are kept.

use std::cell::Cell;

use super::block::Workspace;

/// Largest buffer kept for reuse: 32 Mi f32 slots (128 MiB), B~ of the
/// largest bf16 B of a 7B-parameter transformer layer (11008 x 4096, 86
/// MiB); larger ones are allocated per call. A caller that multiplies by
/// the same weights again should pack them once ([`PackedB`]) instead.
///
/// [`PackedB`]: crate::PackedB
pub(super) const SCRATCH_MAX: usize = 32 << 20;

thread_local! {
    static PACKED_A: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    static PACKED_B: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    static WORKSPACE: Cell<Option<Workspace>> = const { Cell::new(None) };
}

/// This thread's B~ scratch (empty if none, or if a caller on this
/// thread holds it).
pub(super) fn take_b() -> Vec<f32> {
    PACKED_B.with(Cell::take)
}

/// Gives a B~ buffer back for the next call on this thread.
pub(super) fn give_b(buf: Vec<f32>) {
    if buf.capacity() <= SCRATCH_MAX {
        PACKED_B.with(|c| c.set(buf));
    }
}

/// This thread's shared-A~ scratch (see [`run_dynamic`](super::split)).
pub(super) fn take_a() -> Vec<f32> {
    PACKED_A.with(Cell::take)
}

/// Gives a shared-A~ buffer back for the next call on this thread.
pub(super) fn give_a(buf: Vec<f32>) {
    if buf.capacity() <= SCRATCH_MAX {
        PACKED_A.with(|c| c.set(buf));
    }
}

pub(super) fn take_workspace() -> Workspace {
    WORKSPACE.with(Cell::take).unwrap_or_default()
}

pub(super) fn give_workspace(ws: Workspace) {
    if ws.a.capacity() + ws.acc.capacity() + ws.tmp.capacity() <= SCRATCH_MAX {
        WORKSPACE.with(|c| c.set(Some(ws)));
    }
}
