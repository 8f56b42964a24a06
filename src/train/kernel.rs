//! The two passes of a step and their dispatch: a read-only gradient check
//! (non-finite count and sum of squares of the unscaled values) and the
//! fused update. Each is written once over `F32Simd` in
//! `arch::generic::train` and once as the scalar oracle in
//! `arch::scalar::train`.

use crate::element::Slice;
use crate::finite::GradStats;
use crate::isa::Token;
use crate::isa::ops::{TrainApply, TrainStats};
pub(crate) use crate::kernel::train::{Tensor, Update};

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
