//! The training kernels over any [`F32Simd`], one pass each:
//!
//! - `stats`: reads a gradient tensor, multiplies by `inv_scale`, counts
//!   the non-finite lanes and sums the squares of the finite ones (f32 FMAs
//!   in blocks of 64 vectors, folded into f64), as a
//!   [`GradStats`](crate::kernel::stats::GradStats). `finite::unscale` writes its
//!   result; this pass cannot. It writes nothing: the skip decision is
//!   global over every tensor, so it must finish before any update starts,
//!   and f16 gradients unscaled in place would flush to zero.
//! - `apply`: the fused optimizer step. Per vector: widen the gradient,
//!   unscale, clip, load the master weight (or widen the model weight in
//!   pure mode) and the moments, update them (`Rule`, in the same order as
//!   the scalar oracle `Rule::scalar`, so every ISA gives the same bits),
//!   store master and moments, and narrow the model copy, to nearest-even or
//!   stochastically by element index.

use crate::element::{Slice, SliceMut};
use crate::kernel::simd::{Chunk, F32Simd, Io, SimdOp, for_each_chunk};
use crate::kernel::stats::GradStats;
use crate::kernel::train::Rule;
use crate::kernel::train::{Tensor, Update, segments};
use half::{bf16, f16};

/// Sums at most this many vectors of squares in f32 before widening: with
/// two accumulators, 8 squares per f32 lane, as in `finite` (relative error
/// below 11 * 2^-24). 64 let one large square drop the 31 squares after it
/// that were under half its ulp, 1.8e-6 relative.
const BLOCK: usize = 16;

/// Non-finite count and sum of squares of `grad * inv_scale`.
#[inline(always)]
pub(crate) fn stats<S: F32Simd>(s: S, grad: Slice<'_>, inv_scale: f32) -> GradStats {
    match grad {
        Slice::F32(g) => stats_of(s, g, inv_scale),
        Slice::Bf16(g) => stats_of(s, g, inv_scale),
        Slice::F16(g) => stats_of(s, g, inv_scale),
    }
}

#[inline(always)]
fn stats_of<S: F32Simd, G: Io>(s: S, g: &[G], inv_scale: f32) -> GradStats {
    let (bad, sum, amax) = sum_sq(s, g, inv_scale, 1.0);
    // Squares summed in f32 overflow for |x| >~ 2^63 and lose whole
    // elements below ~2^-75. When that can matter (the sum overflowed or is
    // tiny), sum again with the values scaled by a power
    // of two that brings the largest one to [1, 2), as LAPACK's nrm2 does:
    // smaller values then underflow only where they are negligible. The
    // all-zero tensor (amax == 0) is exact and takes no second pass.
    if !sum.is_finite() || (sum < TINY_SUM && amax > 0.0) {
        let e = (amax.to_bits() >> 23) as i32 - 127; // amax is finite
        let k = 2f32.powi((-e).min(127));
        let (_, scaled, _) = sum_sq(s, g, inv_scale, k);
        return GradStats::new(bad, scaled / (k as f64 * k as f64));
    }
    GradStats::new(bad, sum)
}

/// Below this, a sum of f32 squares may have lost elements to underflow.
const TINY_SUM: f64 = 8.673_617_379_884_035e-19; // 2^-60

/// Non-finite count, and sum of squares and largest magnitude of the
/// finite values of `g * inv_scale * k` (inf/NaN lanes count as 0).
#[inline(always)]
fn sum_sq<S: F32Simd, G: Io>(s: S, g: &[G], inv_scale: f32, k: f32) -> (usize, f64, f32) {
    let (inv, kv) = (s.splat(inv_scale), s.splat(k));
    let zero = s.splat(0.0);
    let (mut acc, mut a0, mut a1, mut amax) = (s.acc_zero(), zero, zero, zero);
    let (mut bad, mut n) = (0usize, 0usize);
    for_each_chunk!(S, g.len(), |c| {
        let x = s.mul(c.load(s, g), inv);
        let nonfinite = s.nonfinite(x);
        bad += s.count(nonfinite) as usize;
        let x = s.select(nonfinite, zero, x);
        amax = s.max(amax, s.abs(x));
        let x = s.mul(x, kv);
        // Two accumulators hide the FMA latency.
        if n % 2 == 0 {
            a0 = s.fma(x, x, a0);
        } else {
            a1 = s.fma(x, x, a1);
        }
        n += 1;
        if n % BLOCK == 0 {
            acc = s.acc_add(s.acc_add(acc, a0), a1);
            (a0, a1) = (zero, zero);
        }
    });
    acc = s.acc_add(s.acc_add(acc, a0), a1);
    let mut lanes = [0f32; 64];
    s.store(amax, &mut lanes[..S::LANES]);
    let amax = lanes[..S::LANES].iter().fold(0f32, |m, &x| m.max(x));
    (bad, s.acc_sum(acc), amax)
}

/// A model element the update can write: `f32` as is, `bf16`/`f16`
/// narrowed to nearest-even ([`Io`]) or stochastically.
pub(crate) trait Model: Io {
    /// Stores `v` rounded with random bits `r` into this chunk of `dst`.
    fn store_sr<S: F32Simd>(c: Chunk, s: S, v: S::F, r: S::U, dst: &mut [Self]);
}

impl Model for f32 {
    #[inline(always)]
    fn store_sr<S: F32Simd>(c: Chunk, s: S, v: S::F, _: S::U, dst: &mut [f32]) {
        c.store(s, v, dst)
    }
}

impl Model for bf16 {
    #[inline(always)]
    fn store_sr<S: F32Simd>(c: Chunk, s: S, v: S::F, r: S::U, dst: &mut [bf16]) {
        c.store_bits(s, s.narrow_bf16_sr(v, r), dst)
    }
}

impl Model for f16 {
    #[inline(always)]
    fn store_sr<S: F32Simd>(c: Chunk, s: S, v: S::F, r: S::U, dst: &mut [f16]) {
        c.store_bits(s, s.narrow_f16_sr(v, r), dst)
    }
}

/// The fused update of one tensor (see the module docs).
#[inline(always)]
pub(crate) fn apply<S: F32Simd>(s: S, u: &Update, t: Tensor<'_>) {
    let Tensor {
        grad,
        master,
        m,
        v,
        model,
    } = t;
    match (grad, model) {
        (Slice::F32(g), SliceMut::F32(w)) => by_rule(s, u, g, master, m, v, w),
        (Slice::F32(g), SliceMut::Bf16(w)) => by_rule(s, u, g, master, m, v, w),
        (Slice::F32(g), SliceMut::F16(w)) => by_rule(s, u, g, master, m, v, w),
        (Slice::Bf16(g), SliceMut::F32(w)) => by_rule(s, u, g, master, m, v, w),
        (Slice::Bf16(g), SliceMut::Bf16(w)) => by_rule(s, u, g, master, m, v, w),
        (Slice::Bf16(g), SliceMut::F16(w)) => by_rule(s, u, g, master, m, v, w),
        (Slice::F16(g), SliceMut::F32(w)) => by_rule(s, u, g, master, m, v, w),
        (Slice::F16(g), SliceMut::Bf16(w)) => by_rule(s, u, g, master, m, v, w),
        (Slice::F16(g), SliceMut::F16(w)) => by_rule(s, u, g, master, m, v, w),
    }
}

/// Picks the rule's lane function outside the loop.
#[inline(always)]
fn by_rule<S: F32Simd, G: Io, W: Model>(
    s: S,
    u: &Update,
    g: &[G],
    master: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    w: &mut [W],
) {
    match u.rule {
        Rule::Sgd {
            neg_lr,
            weight_decay,
            momentum,
            one_minus_dampening,
            nesterov,
            first,
        } => {
            let (nlr, wd, mom, omd) = (
                s.splat(neg_lr),
                s.splat(weight_decay),
                s.splat(momentum),
                s.splat(one_minus_dampening),
            );
            let (has_wd, has_mom) = (weight_decay != 0.0, momentum != 0.0);
            run(
                s,
                u,
                g,
                master,
                m,
                v,
                w,
                #[inline(always)]
                |g, p, mv, _| {
                    let mut d = g;
                    if has_wd {
                        d = s.fma(wd, p, d);
                    }
                    if has_mom {
                        let b = if first {
                            d
                        } else {
                            s.fma(mom, *mv, s.mul(omd, d))
                        };
                        *mv = b;
                        d = if nesterov { s.fma(mom, b, d) } else { b };
                    }
                    s.fma(nlr, d, p)
                },
            )
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
            let (dec, omb1, b2, omb2) = (
                s.splat(decay),
                s.splat(one_minus_beta1),
                s.splat(beta2),
                s.splat(one_minus_beta2),
            );
            let (ep, nss, ibc) = (s.splat(eps), s.splat(neg_step_size), s.splat(inv_bc2_sqrt));
            run(
                s,
                u,
                g,
                master,
                m,
                v,
                w,
                #[inline(always)]
                |g, p, mv, vv| {
                    let p = s.mul(p, dec);
                    *mv = s.fma(s.sub(g, *mv), omb1, *mv);
                    *vv = s.fma(*vv, b2, s.mul(s.mul(g, g), omb2));
                    let denom = s.fma(s.sqrt(*vv), ibc, ep);
                    s.fma(nss, s.div(*mv, denom), p)
                },
            )
        }
    }
}

/// The loop: loads, `lane` (gradient, weight, &mut m, &mut v) -> weight,
/// stores. Empty `master`/`m`/`v` are neither read nor written.
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "private; the slices of one tensor"
)]
fn run<S: F32Simd, G: Io, W: Model>(
    s: S,
    u: &Update,
    grad: &[G],
    master: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    model: &mut [W],
    lane: impl Fn(S::F, S::F, &mut S::F, &mut S::F) -> S::F,
) {
    let n = grad.len();
    let (has_master, has_m, has_v) = (!master.is_empty(), !m.is_empty(), !v.is_empty());
    let (inv, clip, zero) = (s.splat(u.inv_scale), s.splat(u.clip), s.splat(0.0));
    segments(
        n,
        u.sr_seed,
        #[inline(always)]
        |start, end, key| {
            let grad = &grad[start..end];
            let model = &mut model[start..end];
            let master = if has_master {
                &mut master[start..end]
            } else {
                &mut [][..]
            };
            let m = if has_m {
                &mut m[start..end]
            } else {
                &mut [][..]
            };
            let v = if has_v {
                &mut v[start..end]
            } else {
                &mut [][..]
            };
            for_each_chunk!(S, end - start, |c| {
                let g = s.mul(s.mul(c.load(s, grad), inv), clip);
                let p = if has_master {
                    c.load(s, &*master)
                } else {
                    c.load(s, &*model)
                };
                let mut mv = if has_m { c.load(s, &*m) } else { zero };
                let mut vv = if has_v { c.load(s, &*v) } else { zero };
                let p = lane(g, p, &mut mv, &mut vv);
                if has_m {
                    c.store(s, mv, m);
                }
                if has_v {
                    c.store(s, vv, v);
                }
                if has_master {
                    c.store(s, p, master);
                }
                match key {
                    Some(k) => W::store_sr(c, s, p, s.sr_bits(k, c.start as u32), model),
                    None => c.store(s, p, model),
                }
            });
        },
    );
}

/// The read-only gradient check of one tensor: non-finite count and sum of
/// squares of `grad * inv_scale`.
pub(crate) struct TrainStats<'a> {
    pub(crate) grad: Slice<'a>,
    pub(crate) inv_scale: f32,
}

impl SimdOp for TrainStats<'_> {
    type Output = GradStats;
    const IEEE: bool = true;
    fn scalar(self) -> GradStats {
        crate::arch::scalar::train::stats(self.grad, self.inv_scale)
    }
    #[inline(always)]
    fn simd<S: F32Simd>(self, s: S) -> GradStats {
        stats(s, self.grad, self.inv_scale)
    }
}

/// The fused update of one tensor.
pub(crate) struct TrainApply<'a, 'u> {
    pub(crate) update: &'u Update,
    pub(crate) tensor: Tensor<'a>,
}

impl SimdOp for TrainApply<'_, '_> {
    type Output = ();
    const IEEE: bool = true;
    fn scalar(self) {
        crate::arch::scalar::train::apply(self.update, self.tensor)
    }
    #[inline(always)]
    fn simd<S: F32Simd>(self, s: S) {
        apply(s, self.update, self.tensor)
    }
}
