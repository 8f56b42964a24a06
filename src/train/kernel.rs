//! The two passes of a step and their dispatch: a read-only gradient check
//! (non-finite count and sum of squares of the unscaled values) and the
//! fused update. Each is written once over `F32Simd` in
//! `arch::generic::train` and once as the scalar oracle in
//! `arch::scalar::train`.

use crate::element::{Slice, SliceMut};
use crate::finite::GradStats;
use crate::isa::Token;
use crate::isa::ops::{TrainApply, TrainStats};
use crate::train::optim::Rule;

/// What one fused update needs besides the tensors.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Update {
    pub(crate) rule: Rule,
    /// Multiplies every gradient first (`1 / loss scale`).
    pub(crate) inv_scale: f32,
    /// Multiplies every unscaled gradient (the clip coefficient, 1 if none).
    pub(crate) clip: f32,
    /// Stochastic rounding of the model copy with this seed, or nearest.
    pub(crate) sr_seed: Option<u64>,
}

/// One tensor's slices: all of length `grad.len()`, except `master`, `m`
/// and `v`, which may be empty (pure mode; no momentum; SGD has no `v`).
pub(crate) struct Tensor<'a> {
    pub(crate) grad: Slice<'a>,
    pub(crate) master: &'a mut [f32],
    pub(crate) m: &'a mut [f32],
    pub(crate) v: &'a mut [f32],
    pub(crate) model: SliceMut<'a>,
}

/// Non-finite count, and sum of squares of the finite values, of
/// `grad * inv_scale`; writes nothing.
pub(crate) fn stats(token: Token, grad: Slice<'_>, inv_scale: f32) -> GradStats {
    token.run(TrainStats { grad, inv_scale })
}

/// The fused update of one tensor, on the ISA `token` proves.
pub(crate) fn apply(token: Token, u: &Update, t: Tensor<'_>) {
    token.run(TrainApply {
        update: u,
        tensor: t,
    })
}

/// Splits `0..len` at multiples of 2^32 (where the stochastic-rounding key
/// changes) and calls `f(start, end, key)` per segment; `key` is
/// `sr_key(seed, start >> 32)` when `seed` is set.
#[inline(always)]
pub(crate) fn segments(
    len: usize,
    seed: Option<u64>,
    mut f: impl FnMut(usize, usize, Option<u32>),
) {
    let mut start = 0usize;
    loop {
        let end = ((start as u64 | 0xFFFF_FFFF).saturating_add(1)).min(len as u64) as usize;
        let key =
            seed.map(|s| crate::arch::scalar::convert::sr_key(s, (start as u64 >> 32) as u32));
        f(start, end, key);
        if end >= len {
            break;
        }
        start = end;
    }
}
