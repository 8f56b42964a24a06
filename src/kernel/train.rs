//! What one fused optimizer update needs, shared by the training step
//! (which builds it) and every ISA's kernel (which runs it): the per-step
//! constants ([`Rule`], with the scalar oracle of one element's update),
//! the scalars of the update ([`Update`]), one tensor's slices
//! ([`Tensor`]), and the split of a tensor where the stochastic-rounding
//! key changes ([`segments`]).

use crate::element::{Slice, SliceMut};

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

/// The per-step constants of a fused update, shared by every ISA's kernel.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Rule {
    Sgd {
        neg_lr: f32,
        weight_decay: f32,
        momentum: f32,
        one_minus_dampening: f32,
        nesterov: bool,
        first: bool,
    },
    AdamW {
        decay: f32,
        one_minus_beta1: f32,
        beta2: f32,
        one_minus_beta2: f32,
        eps: f32,
        neg_step_size: f32,
        inv_bc2_sqrt: f32,
    },
}

impl Rule {
    /// One element's update: `g` the unscaled, clipped gradient, `p` the
    /// weight, `m`/`v` the buffers (ignored when the rule has none).
    /// Returns the new weight. This is the scalar oracle; the SIMD kernels
    /// perform the same operations in the same order (each `mul_add` is an
    /// FMA there), so every ISA gives the same bits.
    #[inline(always)]
    pub(crate) fn scalar(&self, g: f32, p: f32, m: &mut f32, v: &mut f32) -> f32 {
        match *self {
            Rule::Sgd {
                neg_lr,
                weight_decay,
                momentum,
                one_minus_dampening,
                nesterov,
                first,
            } => {
                let mut d = g;
                if weight_decay != 0.0 {
                    d = weight_decay.mul_add(p, d);
                }
                if momentum != 0.0 {
                    let b = if first {
                        d
                    } else {
                        momentum.mul_add(*m, one_minus_dampening * d)
                    };
                    *m = b;
                    d = if nesterov { momentum.mul_add(b, d) } else { b };
                }
                neg_lr.mul_add(d, p)
            }
            Rule::AdamW {
                decay,
                one_minus_beta1,
                beta2,
                one_minus_beta2,
                eps,
                neg_step_size,
                inv_bc2_sqrt,
            } => {
                let p = p * decay;
                *m = (g - *m).mul_add(one_minus_beta1, *m);
                *v = v.mul_add(beta2, g * g * one_minus_beta2);
                let denom = v.sqrt().mul_add(inv_bc2_sqrt, eps);
                neg_step_size.mul_add(*m / denom, p)
            }
        }
    }
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
        let key = seed.map(|s| crate::kernel::bits::sr_key(s, (start as u64 >> 32) as u32));
        f(start, end, key);
        if end >= len {
            break;
        }
        start = end;
    }
}
