//! [`GradStats`]: what a gradient check returns, from every ISA's kernel.
//! Re-exported as `halfkern::finite::GradStats`; the checks of values that
//! come from outside (`from_array`, `validate`) are in `finite`, beside the
//! crate's error type.

/// What one unscale pass found: how many written values are inf/NaN, and the
/// sum of squares of the finite ones. Enough to skip a step, to clip by
/// global norm, and to combine results across tensors, threads and
/// processes.
///
/// # Across processes (data parallel)
///
/// Each rank unscales its own gradients (after the gradient all-reduce, or
/// its shard of them under ZeRO/FSDP), then all-reduces the two numbers with
/// a **sum**: `[nonfinite as f64, sum_sq]` from [`GradStats::to_array`] (an
/// f64 holds counts exactly up to 2^53), and rebuilds the global stats with
/// [`GradStats::from_array`]. The global norm is then `sqrt(sum_sq)`
/// ([`GradStats::norm`]) and every rank skips or clips alike. If the ranks
/// hold replicas of the same gradients rather than shards, do not sum:
/// every rank already has the global answer.
///
/// # Valid statistics
///
/// Values that come back from outside (an all-reduce, a hand-built
/// [`GradStats::new`]) are checked by [`GradStats::validate`] before a
/// training step uses them, and [`GradStats::from_array`] checks the raw
/// array the same way:
///
/// - `nonfinite` is a count: in the array, a finite, non-negative integer
///   no larger than `usize::MAX` (`-0.0` is zero). 0.5, -1 or NaN are not
///   counts; they come from a reduction that averaged, or from a rank that
///   sent garbage, and reading them as "0" would apply a step that some rank
///   found inf/NaN in.
/// - `sum_sq` is finite and `>= 0` (`-0.0` included), whatever `nonfinite`
///   is: it sums squares of finite f32 values only, so it is never negative
///   and cannot overflow an f64 (2^64 squares of `f32::MAX` are below
///   1e97). A negative, NaN or infinite `sum_sq` is an error, not a reason
///   to skip: it can only be a broken reduction, and a skip would hide it.
///
/// # Examples
///
/// ```
/// use halfkern::finite::GradStats;
///
/// let a = GradStats::new(0, 9.0);
/// let b = GradStats::new(0, 16.0);
/// let all = a.merge(b);
/// assert_eq!(all.norm(), 5.0);
/// assert_eq!(all.clip_coef(1.0), (1.0 / (5.0 + 1e-6)) as f32);
/// assert_eq!(all.clip_coef(10.0), 1.0); // clip only shrinks
///
/// // All-reduce across ranks: sum the arrays element-wise.
/// let (r0, r1) = (a.to_array(), b.to_array());
/// let summed = [r0[0] + r1[0], r0[1] + r1[1]];
/// assert_eq!(GradStats::from_array(summed)?, all);
///
/// // An average is not a count: rejected, not read as "no inf/NaN".
/// assert!(GradStats::from_array([0.5, 25.0]).is_err());
/// assert!(GradStats::new(0, -1.0).validate().is_err());
/// # Ok::<(), halfkern::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct GradStats {
    /// How many unscaled (written) values are ±inf or NaN.
    pub nonfinite: usize,
    /// The sum of squares of the finite unscaled (written) values, in f64.
    pub sum_sq: f64,
}

impl GradStats {
    /// No elements: nothing non-finite, sum 0.
    pub const ZERO: GradStats = GradStats {
        nonfinite: 0,
        sum_sq: 0.0,
    };

    /// Stats from their parts (e.g. after an all-reduce). Not checked here
    /// (a `const fn` cannot build an error); a training step checks them
    /// with [`GradStats::validate`].
    pub const fn new(nonfinite: usize, sum_sq: f64) -> GradStats {
        GradStats { nonfinite, sum_sq }
    }

    /// The stats of the union of two disjoint sets of gradients (counts and
    /// sums of squares add). The count saturates at `usize::MAX` rather
    /// than wrapping (which would read as "all finite"); no real set of
    /// gradients gets there.
    #[must_use]
    pub fn merge(mut self, other: GradStats) -> GradStats {
        self.nonfinite = self.nonfinite.saturating_add(other.nonfinite);
        self.sum_sq += other.sum_sq;
        self
    }

    /// Whether every value was finite: the step may be applied.
    pub const fn is_finite(&self) -> bool {
        self.nonfinite == 0
    }

    /// The global L2 norm, `sqrt(sum_sq)`; NaN when any value was inf/NaN
    /// (there is no norm then; check [`GradStats::is_finite`] first).
    pub fn norm(&self) -> f64 {
        if self.is_finite() {
            self.sum_sq.sqrt()
        } else {
            f64::NAN
        }
    }

    /// The factor `clip_grad_norm_` multiplies every gradient by:
    /// `max_norm / (norm + 1e-6)`, clamped to at most 1 (PyTorch's
    /// semantics: clipping only ever shrinks). NaN when the stats hold
    /// inf/NaN values, or when `max_norm` is NaN.
    pub fn clip_coef(&self, max_norm: f32) -> f32 {
        let coef = f64::from(max_norm) / (self.norm() + 1e-6);
        if coef.is_nan() {
            return f32::NAN;
        }
        coef.min(1.0) as f32
    }

    /// `[nonfinite, sum_sq]` as f64, the payload of a sum all-reduce.
    pub fn to_array(&self) -> [f64; 2] {
        [self.nonfinite as f64, self.sum_sq]
    }
}
