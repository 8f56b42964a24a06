//! Scaled-gradient checks: unscale, detect inf/NaN and sum the squares, in
//! one pass over memory.
//!
//! After the backward pass of a loss-scaled step, a trainer must (1)
//! multiply every gradient by `1/scale`, (2) find out whether any gradient is
//! inf or NaN (then the step is skipped and the scale lowered), and, when it
//! clips by global norm, (3) compute the sum of squares of all gradients.
//! Peers read the gradients two or three times for that; [`unscale`] reads
//! and writes them once and returns a [`GradStats`] with all three answers.
//!
//! # Numerics
//!
//! - Each element becomes `round(x * inv_scale)`: the product is computed in
//!   f32 (bf16/f16 widened exactly first) and rounded to the element type to
//!   nearest, ties to even, bit-identical on every ISA to
//!   `oracle::f32_to_bf16(x.to_f32() * inv_scale)` (resp. `f32_to_f16`).
//! - Non-finite is decided on the **unscaled value as written**. Inf/NaN
//!   inputs stay inf/NaN and count; a finite input that overflows only once
//!   unscaled (`1e34 * 2^16` in f32, or any product that rounds to inf in
//!   bf16/f16) counts too, because that is what the optimizer would read.
//! - [`GradStats::sum_sq`] is the sum of the squares of the **finite**
//!   written values, with relative error at most 1e-6 against an f64 sum of
//!   the same values on every ISA. When `nonfinite > 0` it still excludes the
//!   inf/NaN values (so it stays a number and [`GradStats::merge`] stays
//!   meaningful), but it is not a gradient norm: [`GradStats::norm`] is NaN
//!   then. A training step only uses it on clean steps.
//! - The counts and the written values do not depend on the ISA or on the
//!   number of threads. `sum_sq` depends on the ISA only through the order
//!   of its additions (within the bound above), and not on the thread count
//!   or the timing: each tensor is summed in units of 256 Ki elements from
//!   its start, and the units' sums are added in order, tensors in the
//!   order given. So a gradient norm that decides a clip gives the same
//!   bits on every run of one machine.
//!
//! # Bad input
//!
//! An `inv_scale` that is 0, negative, NaN or infinite is
//! [`Error::InvalidScale`]; lengths that differ in [`unscale_into`] are
//! [`Error::LengthMismatch`]. Either way nothing is written.

use crate::element::{Element, Slice, SliceMut};
use crate::error::Error;
use crate::isa::ops::{CountNonfinite, Unscale, UnscaleInto};
use crate::isa::{Backend, Token};
pub use crate::kernel::stats::GradStats;
use crate::pool;

/// From this many elements in all, the work is split over rayon's threads.
const PARALLEL_MIN: usize = 1 << 20;

/// Checking statistics that come back from outside (see
/// [Valid statistics](GradStats#valid-statistics)): here, beside the
/// crate's `Error`, while the type itself lives with the kernels that
/// produce it.
impl GradStats {
    /// The inverse of [`GradStats::to_array`] after a sum all-reduce,
    /// checked (see [Valid statistics](GradStats#valid-statistics)).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] naming `nonfinite` when `a[0]` is not a
    /// finite, non-negative integer that fits a `usize` (0.5, -1, NaN, inf,
    /// 2^64), or naming `sum_sq` when `a[1]` is negative, NaN or infinite.
    pub fn from_array(a: [f64; 2]) -> Result<GradStats, Error> {
        let [count, sum_sq] = a;
        // `usize::MAX as f64 + 1.0` is 2^64 (2^32 on 32-bit targets): the
        // first integer a usize cannot hold, exact in f64.
        let is_count = count.is_finite()
            && count >= 0.0
            && count.fract() == 0.0
            && count < usize::MAX as f64 + 1.0;
        if !is_count {
            return Err(Error::InvalidArgument {
                arg: "nonfinite",
                reason: format!(
                    "GradStats count must be a finite, non-negative integer that fits a usize \
                     (a sum all-reduce of counts, not an average), got {count:e}"
                ),
            });
        }
        let stats = GradStats {
            nonfinite: count as usize,
            sum_sq,
        };
        stats.validate()?;
        Ok(stats)
    }

    /// Checks that these stats can be real ones (see
    /// [Valid statistics](GradStats#valid-statistics)): `sum_sq` finite and
    /// `>= 0`. Every count is valid once it is a `usize`. This is the one
    /// check [`GradStats::from_array`],
    /// [`Step::all_reduced`](crate::train::Step::all_reduced) and
    /// [`Step::apply`](crate::train::Step::apply) share.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] naming `sum_sq` and its value.
    pub fn validate(&self) -> Result<(), Error> {
        let s = self.sum_sq;
        if s.is_finite() && s >= 0.0 {
            Ok(())
        } else {
            Err(Error::InvalidArgument {
                arg: "sum_sq",
                reason: format!(
                    "GradStats sum of squares must be finite and >= 0 (it sums squares of \
                     finite values only), got {s:e} with nonfinite = {}",
                    self.nonfinite
                ),
            })
        }
    }
}

/// Whether every element of `src` is finite (not ±inf, not NaN), on the
/// process-wide backend. bf16/f16 are tested on their exponent bits; the
/// scan stops early at the first block holding a non-finite value.
///
/// # Errors
///
/// The process-wide ISA error (see [`Backend::global`]), as every other
/// top-level call: a `HALFKERN_ISA` this machine cannot run is never a
/// silent fallback. [`Backend::all_finite`] cannot fail (a [`Backend`]
/// already proves its ISA).
///
/// # Examples
///
/// ```
/// use halfkern::bf16;
///
/// assert!(halfkern::finite::all_finite(&[1.0f32, -2.0, 0.0])?);
/// assert!(!halfkern::finite::all_finite(&[bf16::ONE, bf16::NAN])?);
/// # Ok::<(), halfkern::Error>(())
/// ```
pub fn all_finite<T: Element>(src: &[T]) -> Result<bool, Error> {
    Ok(Backend::global()?.all_finite(src))
}

/// How many elements of `src` are ±inf or NaN, on the process-wide backend
/// (the count is the same on every ISA).
///
/// # Errors
///
/// The process-wide ISA error, as [`all_finite`];
/// [`Backend::count_nonfinite`] cannot fail.
///
/// # Examples
///
/// ```
/// use halfkern::f16;
///
/// let g = [f16::ONE, f16::INFINITY, f16::NEG_INFINITY, f16::NAN];
/// assert_eq!(halfkern::finite::count_nonfinite(&g)?, 3);
/// # Ok::<(), halfkern::Error>(())
/// ```
pub fn count_nonfinite<T: Element>(src: &[T]) -> Result<usize, Error> {
    Ok(Backend::global()?.count_nonfinite(src))
}

/// Unscales gradients in place, `x <- round(x * inv_scale)`, and returns
/// the [`GradStats`] of the written values, in one pass (see the module docs
/// for the numerics). Large slices are split over rayon's threads.
///
/// bf16 with an `inv_scale` of `2^-d` (`0 <= d <= 126`: the inverse of any
/// dynamic loss scale, e.g. [`Step::inv_loss_scale`]) is fastest on AVX2
/// and AVX-512: exact exponent arithmetic on the bits, about three times
/// the speed of any other `inv_scale`, with the same results.
///
/// [`Step::inv_loss_scale`]: crate::train::Step::inv_loss_scale
///
/// # Errors
///
/// [`Error::InvalidScale`] when `inv_scale` is not finite and > 0 (nothing
/// is written), or the process-wide ISA error (see [`Backend::global`]).
///
/// # Examples
///
/// ```
/// use halfkern::bf16;
///
/// let mut grads = [bf16::from_f32(1024.0), bf16::from_f32(-512.0)];
/// let stats = halfkern::finite::unscale(&mut grads, 1.0 / 1024.0)?;
/// assert_eq!(grads, [bf16::ONE, bf16::from_f32(-0.5)]);
/// assert!(stats.is_finite());
/// assert_eq!(stats.sum_sq, 1.25);
///
/// let mut bad = [1e34f32, 1.0];
/// let stats = halfkern::finite::unscale(&mut bad, 65536.0)?; // overflows
/// assert_eq!(stats.nonfinite, 1);
/// # Ok::<(), halfkern::Error>(())
/// ```
pub fn unscale<T: Element>(grads: &mut [T], inv_scale: f32) -> Result<GradStats, Error> {
    Backend::global()?.unscale(grads, inv_scale)
}

/// Unscales half-precision gradients into f32 master gradients,
/// `dst[i] = src[i] * inv_scale` in f32, and returns the [`GradStats`] of
/// `dst`, in one pass. `src` is not modified. (With an f32 `src` this is an
/// unscaling copy.)
///
/// # Errors
///
/// [`Error::InvalidScale`] for an `inv_scale` that is not finite and > 0,
/// [`Error::LengthMismatch`] when the lengths differ (nothing is written
/// either way), or the process-wide ISA error.
///
/// # Examples
///
/// ```
/// use halfkern::f16;
///
/// let half_grads = [f16::from_f32(256.0), f16::from_f32(-64.0)];
/// let mut master = [0.0f32; 2];
/// let stats = halfkern::finite::unscale_into(&half_grads, &mut master, 1.0 / 128.0)?;
/// assert_eq!(master, [2.0, -0.5]);
/// assert_eq!(stats.norm(), (4.25f64).sqrt());
/// # Ok::<(), halfkern::Error>(())
/// ```
pub fn unscale_into<T: Element>(
    src: &[T],
    dst: &mut [f32],
    inv_scale: f32,
) -> Result<GradStats, Error> {
    Backend::global()?.unscale_into(src, dst, inv_scale)
}

/// [`unscale`] over many tensors in one call, with their stats combined.
/// Tensors are spread over rayon's threads (large ones split in chunks) when
/// the total is large.
///
/// # Errors
///
/// [`Error::InvalidScale`] for an `inv_scale` that is not finite and > 0
/// (no tensor is touched), or the process-wide ISA error.
///
/// # Examples
///
/// ```
/// let mut w = vec![4.0f32; 1000];
/// let mut b = vec![4.0f32; 10];
/// let stats = halfkern::finite::unscale_many(&mut [&mut w[..], &mut b[..]], 0.5)?;
/// assert_eq!(stats.sum_sq, 4.0 * 1010.0);
/// assert_eq!(w[999], 2.0);
/// # Ok::<(), halfkern::Error>(())
/// ```
pub fn unscale_many<T: Element>(
    tensors: &mut [&mut [T]],
    inv_scale: f32,
) -> Result<GradStats, Error> {
    Backend::global()?.unscale_many(tensors, inv_scale)
}

impl Backend {
    /// [`all_finite`] on this backend's ISA.
    pub fn all_finite<T: Element>(&self, src: &[T]) -> bool {
        run_count(self.token, T::slice(src), true) == 0
    }

    /// [`count_nonfinite`] on this backend's ISA.
    pub fn count_nonfinite<T: Element>(&self, src: &[T]) -> usize {
        run_count(self.token, T::slice(src), false)
    }

    /// [`unscale`] on this backend's ISA.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidScale`] when `inv_scale` is not finite and > 0.
    pub fn unscale<T: Element>(&self, grads: &mut [T], inv_scale: f32) -> Result<GradStats, Error> {
        check_scale("unscale", inv_scale)?;
        if grads.len() <= CHUNK {
            // One unit: its own statistics, without the units' list.
            return Ok(run_unscale(self.token, T::slice_mut(grads), inv_scale));
        }
        Ok(self.unscale_checked(&mut [grads], inv_scale))
    }

    /// [`unscale_into`] on this backend's ISA.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidScale`] or [`Error::LengthMismatch`]; nothing is
    /// written then.
    pub fn unscale_into<T: Element>(
        &self,
        src: &[T],
        dst: &mut [f32],
        inv_scale: f32,
    ) -> Result<GradStats, Error> {
        check_scale("unscale_into", inv_scale)?;
        if src.len() != dst.len() {
            return Err(Error::LengthMismatch {
                op: "unscale_into",
                src: src.len(),
                dst: dst.len(),
            });
        }
        let token = self.token;
        if src.len() <= CHUNK {
            return Ok(run_unscale_into(token, T::slice(src), dst, inv_scale));
        }
        let mut units: Vec<Unit<(&[T], &mut [f32])>> = src
            .chunks(CHUNK)
            .zip(dst.chunks_mut(CHUNK))
            .map(Unit::new)
            .collect();
        Ok(run_units(&mut units, |(s, d)| {
            run_unscale_into(token, T::slice(s), d, inv_scale)
        }))
    }

    /// [`unscale_many`] on this backend's ISA.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidScale`] when `inv_scale` is not finite and > 0.
    pub fn unscale_many<T: Element>(
        &self,
        tensors: &mut [&mut [T]],
        inv_scale: f32,
    ) -> Result<GradStats, Error> {
        check_scale("unscale_many", inv_scale)?;
        Ok(self.unscale_checked(tensors, inv_scale))
    }

    /// [`Backend::unscale_many`] after the scale was validated.
    fn unscale_checked<T: Element>(&self, tensors: &mut [&mut [T]], inv_scale: f32) -> GradStats {
        let token = self.token;
        let mut units: Vec<Unit<&mut [T]>> = tensors
            .iter_mut()
            .flat_map(|t| t.chunks_mut(CHUNK))
            .map(Unit::new)
            .collect();
        run_units(&mut units, |data| {
            run_unscale(token, T::slice_mut(data), inv_scale)
        })
    }
}

/// The statistics' unit of work: at most this many elements of one
/// tensor, from its start. [`GradStats::sum_sq`] is the sum of the units'
/// own sums, added in order (tensors in order, each from its start), so
/// its bits depend on neither the thread count nor the timing.
const CHUNK: usize = 1 << 18;

/// One unit's operands and, once run, its statistics.
struct Unit<D> {
    data: D,
    stats: GradStats,
}

impl<D> Unit<D> {
    fn new(data: D) -> Self {
        Unit {
            data,
            stats: GradStats::ZERO,
        }
    }
}

/// The elements of one unit's operands.
trait Elements {
    fn elements(&self) -> usize;
}

impl<T> Elements for &mut [T] {
    fn elements(&self) -> usize {
        self.len()
    }
}

impl<T, U> Elements for (&[T], &mut [U]) {
    fn elements(&self) -> usize {
        self.0.len()
    }
}

/// Runs `run` on every unit and merges their statistics in order. From
/// [`PARALLEL_MIN`] elements in all, over rayon's threads through the pool
/// (the caller takes a share): each thread one contiguous run of units of
/// about equal elements.
fn run_units<D: Elements + Send>(
    units: &mut [Unit<D>],
    run: impl Fn(&mut D) -> GradStats + Sync + Send,
) -> GradStats {
    let total: usize = units.iter().map(|u| u.data.elements()).sum();
    // Small work never asks for the pool (asking starts it).
    let threads = if total < PARALLEL_MIN {
        1
    } else {
        rayon::current_num_threads().min(units.len())
    };
    if threads <= 1 {
        for u in units.iter_mut() {
            u.stats = run(&mut u.data);
        }
    } else {
        // Cut where the running count of elements passes each thread's
        // share.
        let mut runs = Vec::with_capacity(threads);
        let (mut rest, mut seen) = (&mut units[..], 0);
        for t in 1..threads {
            let goal = total / threads * t;
            let mut take = 0;
            while take < rest.len() && seen < goal {
                seen += rest[take].data.elements();
                take += 1;
            }
            let (head, tail) = rest.split_at_mut(take);
            runs.push(head);
            rest = tail;
        }
        runs.push(rest);
        pool::for_each_part_mut(runs, |_, run_of| {
            for u in run_of {
                u.stats = run(&mut u.data);
            }
        });
    }
    units
        .iter()
        .fold(GradStats::ZERO, |acc, u| acc.merge(u.stats))
}

/// `Ok` when `inv_scale` is finite and > 0.
fn check_scale(op: &'static str, inv_scale: f32) -> Result<(), Error> {
    if inv_scale > 0.0 && inv_scale.is_finite() {
        Ok(())
    } else {
        Err(Error::InvalidScale {
            op,
            arg: "inv_scale",
            value: inv_scale,
        })
    }
}

/// One in-place unscale on one thread, on the ISA `token` proves.
fn run_unscale(token: Token, data: SliceMut<'_>, inv_scale: f32) -> GradStats {
    token.run(Unscale { data, inv_scale })
}

/// One widening unscale on one thread (equal lengths).
fn run_unscale_into(token: Token, src: Slice<'_>, dst: &mut [f32], inv_scale: f32) -> GradStats {
    token.run(UnscaleInto {
        src,
        dst,
        inv_scale,
    })
}

/// Counts inf/NaN on one thread; `stop_at_first` allows an early exit.
fn run_count(token: Token, src: Slice<'_>, stop_at_first: bool) -> usize {
    token.run(CountNonfinite { src, stop_at_first })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{bf16, f16};

    /// Small cases on the scalar path (CI runs this under Miri).
    #[test]
    fn scalar_unscale_small_cases() {
        let b = Backend::scalar();
        let mut g = [2.0f32, -4.0, f32::INFINITY, 1e34, f32::NAN, 0.0];
        let s = b.unscale(&mut g, 65536.0).unwrap();
        assert_eq!(s.nonfinite, 3); // inf, NaN, and 1e34 * 2^16
        assert_eq!(s.sum_sq, 131_072.0f64 * 131_072.0 + 262_144.0 * 262_144.0);
        assert_eq!(g[0], 131_072.0);
        assert!(g[3].is_infinite());

        let mut h = [bf16::from_f32(3.0), bf16::from_f32(1.0 + 1.0 / 128.0)];
        let s = b.unscale(&mut h, 1.0 / 3.0).unwrap();
        assert_eq!(h[0], bf16::ONE);
        assert_eq!(h[1], crate::oracle::f32_to_bf16((1.0 + 1.0 / 128.0) / 3.0));
        assert!(s.is_finite());

        let src = [f16::from_f32(65504.0), f16::from_f32(-2.0)];
        let mut dst = [f32::NAN; 2];
        let s = b.unscale_into(&src, &mut dst, 2.0).unwrap();
        assert_eq!(dst, [131_008.0, -4.0]);
        assert_eq!(s.nonfinite, 0);

        // f16 written in place overflows on rounding, and counts.
        let mut h = [f16::from_f32(65504.0)];
        assert_eq!(b.unscale(&mut h, 2.0).unwrap().nonfinite, 1);

        for bad in [0.0f32, -1.0, f32::NAN, f32::INFINITY, -0.0] {
            let mut g = [1.0f32];
            assert!(matches!(
                b.unscale(&mut g, bad),
                Err(Error::InvalidScale { .. })
            ));
            assert_eq!(g, [1.0]);
        }
        let mut dst = [7.0f32; 1];
        assert!(matches!(
            b.unscale_into(&[bf16::ONE; 2], &mut dst, 1.0),
            Err(Error::LengthMismatch { src: 2, dst: 1, .. })
        ));
        assert_eq!(dst, [7.0]);

        assert!(b.all_finite::<bf16>(&[]));
        assert!(!b.all_finite(&[bf16::ONE, bf16::INFINITY]));
        assert_eq!(
            b.count_nonfinite(&[f16::NAN, f16::ONE, f16::NEG_INFINITY]),
            2
        );
        let mut a = [1.0f32; 5];
        let mut d = [3.0f32; 2];
        let s = b.unscale_many(&mut [&mut a[..], &mut d[..]], 2.0).unwrap();
        assert_eq!(s.sum_sq, 5.0 * 4.0 + 2.0 * 36.0);
    }

    #[test]
    fn scalar_grad_stats_norm_and_clip() {
        let s = GradStats::new(0, 4.0);
        assert_eq!(s.norm(), 2.0);
        assert_eq!(s.clip_coef(1.0), (1.0 / (2.0 + 1e-6)) as f32);
        assert_eq!(s.clip_coef(100.0), 1.0);
        assert_eq!(GradStats::ZERO.clip_coef(1.0), 1.0);
        let bad = s.merge(GradStats::new(2, 1.0));
        assert_eq!(bad.nonfinite, 2);
        assert!(bad.norm().is_nan());
        assert!(bad.clip_coef(1.0).is_nan());
        assert_eq!(GradStats::from_array(bad.to_array()), Ok(bad));
        assert_eq!(
            GradStats::new(usize::MAX, 0.0).merge(GradStats::new(1, 0.0)),
            GradStats::new(usize::MAX, 0.0)
        );
    }
}
