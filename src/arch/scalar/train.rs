//! The scalar oracle of the training kernels: one element at a time, the
//! same operations in the same order as `arch::generic::train`.

use crate::arch::scalar::convert::{
    bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_bf16_sr_bits, f32_to_f16, f32_to_f16_sr_bits,
    sr_bits,
};
use crate::element::{Slice, SliceMut};
use crate::kernel::stats::GradStats;
use crate::kernel::train::{Tensor, Update, segments};
use half::{bf16, f16};

/// Non-finite count, and sum of squares of the finite values, of
/// `grad * inv_scale`.
pub(crate) fn stats(grad: Slice<'_>, inv_scale: f32) -> GradStats {
    fn go<T: Copy>(g: &[T], inv: f32, widen: impl Fn(T) -> f32) -> GradStats {
        let (mut bad, mut sum) = (0usize, 0f64);
        for &x in g {
            let x = widen(x) * inv;
            if x.is_finite() {
                sum += (x as f64) * (x as f64);
            } else {
                bad += 1;
            }
        }
        GradStats::new(bad, sum)
    }
    match grad {
        Slice::F32(g) => go(g, inv_scale, |x| x),
        Slice::Bf16(g) => go(g, inv_scale, bf16_to_f32),
        Slice::F16(g) => go(g, inv_scale, f16_to_f32),
    }
}

/// A model element: widened for pure mode, narrowed nearest or stochastic.
trait Model: Copy {
    fn widen(self) -> f32;
    fn nearest(x: f32) -> Self;
    fn stochastic(x: f32, r: u32) -> Self;
}

impl Model for f32 {
    fn widen(self) -> f32 {
        self
    }
    fn nearest(x: f32) -> f32 {
        x
    }
    fn stochastic(x: f32, _: u32) -> f32 {
        x
    }
}

impl Model for bf16 {
    fn widen(self) -> f32 {
        bf16_to_f32(self)
    }
    fn nearest(x: f32) -> bf16 {
        f32_to_bf16(x)
    }
    fn stochastic(x: f32, r: u32) -> bf16 {
        bf16::from_bits(f32_to_bf16_sr_bits(x.to_bits(), r))
    }
}

impl Model for f16 {
    fn widen(self) -> f32 {
        f16_to_f32(self)
    }
    fn nearest(x: f32) -> f16 {
        f32_to_f16(x)
    }
    fn stochastic(x: f32, r: u32) -> f16 {
        f16::from_bits(f32_to_f16_sr_bits(x.to_bits(), r))
    }
}

/// The fused update of one tensor.
pub(crate) fn apply(u: &Update, t: Tensor<'_>) {
    let Tensor {
        grad,
        master,
        m,
        v,
        model,
    } = t;
    match (grad, model) {
        (Slice::F32(g), SliceMut::F32(w)) => run(u, g, |x| x, master, m, v, w),
        (Slice::F32(g), SliceMut::Bf16(w)) => run(u, g, |x| x, master, m, v, w),
        (Slice::F32(g), SliceMut::F16(w)) => run(u, g, |x| x, master, m, v, w),
        (Slice::Bf16(g), SliceMut::F32(w)) => run(u, g, bf16_to_f32, master, m, v, w),
        (Slice::Bf16(g), SliceMut::Bf16(w)) => run(u, g, bf16_to_f32, master, m, v, w),
        (Slice::Bf16(g), SliceMut::F16(w)) => run(u, g, bf16_to_f32, master, m, v, w),
        (Slice::F16(g), SliceMut::F32(w)) => run(u, g, f16_to_f32, master, m, v, w),
        (Slice::F16(g), SliceMut::Bf16(w)) => run(u, g, f16_to_f32, master, m, v, w),
        (Slice::F16(g), SliceMut::F16(w)) => run(u, g, f16_to_f32, master, m, v, w),
    }
}

fn run<G: Copy, W: Model>(
    u: &Update,
    grad: &[G],
    widen: impl Fn(G) -> f32,
    master: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    model: &mut [W],
) {
    let n = grad.len();
    let (has_master, has_m, has_v) = (!master.is_empty(), !m.is_empty(), !v.is_empty());
    segments(n, u.sr_seed, |start, end, key| {
        for i in start..end {
            let g = widen(grad[i]) * u.inv_scale * u.clip;
            let p = if has_master {
                master[i]
            } else {
                model[i].widen()
            };
            let (mut mi, mut vi) = (
                if has_m { m[i] } else { 0.0 },
                if has_v { v[i] } else { 0.0 },
            );
            let p = u.rule.scalar(g, p, &mut mi, &mut vi);
            if has_m {
                m[i] = mi;
            }
            if has_v {
                v[i] = vi;
            }
            if has_master {
                master[i] = p;
            }
            model[i] = match key {
                Some(k) => W::stochastic(p, sr_bits(k, i as u32)),
                None => W::nearest(p),
            };
        }
    });
}
