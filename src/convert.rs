//! Slice conversions between `f32`, [`bf16`] and [`f16`], rounded to
//! nearest-even or stochastically.
//!
//! The public functions validate lengths, then hand the slices to the
//! backend's kernel. Large slices are split over rayon (chunk boundaries
//! do not change any result: every element is converted on its own, and
//! stochastic rounding draws its bits from the element's global index).
//! Tiny slices skip the SIMD kernels: below [`TINY`] elements the scalar
//! loop is faster than a kernel's set-up.

use crate::element::{Element, Slice, SliceMut};
use crate::error::Error;
use crate::isa::ops::{Convert, Stochastic};
use crate::isa::{Backend, Token};
use crate::pool::for_each_chunk_mut;

/// Below this many elements the top-level functions run the scalar loop.
const TINY: usize = 8;

/// Above this many elements a conversion is split over rayon's threads:
/// below it one core finishes in about the time a rayon fork-join costs.
const PARALLEL_MIN: usize = 1 << 20;

/// Outputs of at least this many bytes are written with streaming
/// (non-temporal) stores where the ISA has them (AVX-512): such an output
/// does not fit this core's share of the caches anyway, and skipping the
/// read-for-ownership saves a third to a half of the memory traffic, most
/// in the widening directions, which write twice what they read (see
/// BENCHMARKS.md, Conversions). Smaller outputs may still be in cache when
/// the caller reads them.
const STREAM_MIN_BYTES: usize = 4 << 20;

/// Each thread's share of a parallel conversion is a multiple of this
/// many elements (whole cache lines of any element type).
const SHARE_ALIGN: usize = 1 << 10;

/// Elements of each thread's share of a conversion of `len` elements: one
/// contiguous range per thread of rayon's pool (run through
/// [`for_each_chunk_mut`], whose calling thread takes a share instead of
/// sleeping until the pool is done; see `pool`).
fn share_len(len: usize) -> usize {
    len.div_ceil(rayon::current_num_threads().max(1))
        .next_multiple_of(SHARE_ALIGN)
}

/// Converts `src` into `dst`, element by element, on the process-wide
/// backend (see [`Backend::global`]).
///
/// Narrowing conversions round to nearest, ties to even, exactly as
/// `half::bf16::from_f32` / `half::f16::from_f32` do: overflow becomes inf,
/// subnormal results are kept, NaN stays a quiet NaN with its sign. Widening
/// is exact. `bf16 <-> f16` rounds once. Same-type "conversions" copy.
///
/// # Errors
///
/// [`Error::LengthMismatch`] when the lengths differ (`dst` is untouched),
/// or the process-wide ISA error (see [`Backend::global`]).
///
/// # Examples
///
/// ```
/// use halfkern::{bf16, f16};
///
/// let src = [1.0f32, 1.0 + 1.0 / 256.0, 65520.0];
/// let mut b = [bf16::ZERO; 3];
/// halfkern::convert(&src, &mut b)?;
/// assert_eq!(b[1], bf16::from_f32(1.0)); // a tie, rounded to even
///
/// let mut h = [f16::ZERO; 3];
/// halfkern::convert(&src, &mut h)?;
/// assert!(h[2].is_infinite()); // beyond f16's rounding range
/// # Ok::<(), halfkern::Error>(())
/// ```
pub fn convert<S: Element, D: Element>(src: &[S], dst: &mut [D]) -> Result<(), Error> {
    let backend = Backend::global()?;
    if src.len() < TINY && src.len() == dst.len() {
        run_convert(Token::Scalar, S::slice(src), D::slice_mut(dst), false);
        return Ok(());
    }
    backend.convert(src, dst)
}

/// Rounds `src` to `bf16` or `f16` stochastically: each element rounds away
/// from zero with probability equal to the fraction its nearest-lower
/// representation discards (to 2^-32), so the rounding is unbiased in
/// expectation, which is what pure-bf16 training needs to keep small
/// updates from vanishing.
///
/// Deterministic: element `i` depends only on `(seed, i, src[i])`, never on
/// the ISA, on chunking or on the number of threads. NaN is quieted as in
/// [`convert`]; inf stays inf; values just below the largest finite value
/// may round to inf. With `D = f32` this copies.
///
/// # Errors
///
/// [`Error::LengthMismatch`] when the lengths differ (`dst` is untouched),
/// or the process-wide ISA error.
///
/// # Examples
///
/// ```
/// use halfkern::bf16;
///
/// let src = vec![1.0f32 + 1.0 / 512.0; 10_000]; // a quarter of a bf16 ulp above 1
/// let mut dst = vec![bf16::ZERO; src.len()];
/// halfkern::convert_stochastic(&src, &mut dst, 7)?;
/// let mean = dst.iter().map(|x| x.to_f64()).sum::<f64>() / dst.len() as f64;
/// assert!((mean - (1.0 + 1.0 / 512.0)).abs() < 2e-4);
/// # Ok::<(), halfkern::Error>(())
/// ```
pub fn convert_stochastic<D: Element>(src: &[f32], dst: &mut [D], seed: u64) -> Result<(), Error> {
    Backend::global()?.convert_stochastic(src, dst, seed)
}

impl Backend {
    /// [`convert`] on this backend's ISA.
    ///
    /// # Errors
    ///
    /// [`Error::LengthMismatch`] when the lengths differ (`dst` is untouched).
    pub fn convert<S: Element, D: Element>(&self, src: &[S], dst: &mut [D]) -> Result<(), Error> {
        check_lengths("convert", src.len(), dst.len())?;
        let stream = core::mem::size_of_val(dst) >= STREAM_MIN_BYTES;
        if src.len() >= PARALLEL_MIN && rayon::current_num_threads() > 1 {
            let (token, per) = (self.token, share_len(src.len()));
            for_each_chunk_mut(dst, per, |i, d| {
                let s = &src[i * per..][..d.len()];
                run_convert(token, S::slice(s), D::slice_mut(d), stream);
            });
        } else {
            run_convert(self.token, S::slice(src), D::slice_mut(dst), stream);
        }
        Ok(())
    }

    /// [`convert_stochastic`] on this backend's ISA.
    ///
    /// # Errors
    ///
    /// [`Error::LengthMismatch`] when the lengths differ (`dst` is untouched).
    pub fn convert_stochastic<D: Element>(
        &self,
        src: &[f32],
        dst: &mut [D],
        seed: u64,
    ) -> Result<(), Error> {
        check_lengths("convert_stochastic", src.len(), dst.len())?;
        if src.len() >= PARALLEL_MIN && rayon::current_num_threads() > 1 {
            let (token, per) = (self.token, share_len(src.len()));
            for_each_chunk_mut(dst, per, |i, d| {
                let s = &src[i * per..][..d.len()];
                run_stochastic(token, s, D::slice_mut(d), seed, (i * per) as u64);
            });
        } else {
            run_stochastic(self.token, src, D::slice_mut(dst), seed, 0);
        }
        Ok(())
    }
}

fn check_lengths(op: &'static str, src: usize, dst: usize) -> Result<(), Error> {
    if src == dst {
        Ok(())
    } else {
        Err(Error::LengthMismatch { op, src, dst })
    }
}

/// One conversion on one thread, on the ISA `token` proves; `stream` asks
/// for streaming stores where the ISA has them.
fn run_convert(token: Token, src: Slice<'_>, dst: SliceMut<'_>, stream: bool) {
    token.run(Convert { src, dst, stream })
}

/// One stochastic conversion on one thread; `first` is `src[0]`'s global index.
fn run_stochastic(token: Token, src: &[f32], dst: SliceMut<'_>, seed: u64, first: u64) {
    token.run(Stochastic {
        src,
        dst,
        seed,
        first,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa::Isa;
    use half::{bf16, f16};

    /// The stochastic kernels agree with the scalar oracle when a slice's
    /// global indices cross a multiple of 2^32 (the key changes there), at
    /// every tail length, on every ISA.
    #[test]
    fn stochastic_kernels_cross_the_2_pow_32_index_boundary() {
        let n = if cfg!(miri) { 9 } else { 70 };
        let src: Vec<f32> = (0..n).map(|i| 1.0 + i as f32 / 7919.0).collect();
        for isa in Isa::available() {
            let token = Backend::new(isa).unwrap().token;
            for back in [1u64, 5, 16, 33] {
                let first = (1u64 << 32) - back;
                for len in [0, 1, n / 2, n] {
                    let s = &src[..len];
                    let mut want = vec![bf16::ZERO; len];
                    let mut got = vec![bf16::from_bits(0x5A5A); len];
                    run_stochastic(Token::Scalar, s, SliceMut::Bf16(&mut want), 9, first);
                    run_stochastic(token, s, SliceMut::Bf16(&mut got), 9, first);
                    assert_eq!(got, want, "{isa} bf16 first {first:#x} len {len}");
                    let mut want = vec![f16::ZERO; len];
                    let mut got = vec![f16::from_bits(0x5A5A); len];
                    run_stochastic(Token::Scalar, s, SliceMut::F16(&mut want), 9, first);
                    run_stochastic(token, s, SliceMut::F16(&mut got), 9, first);
                    assert_eq!(got, want, "{isa} f16 first {first:#x} len {len}");
                }
            }
        }
    }

    /// The scalar kernels at small sizes (also what Miri runs): every pair
    /// against the element-wise oracle.
    #[test]
    fn scalar_kernels_match_the_oracle_on_small_slices() {
        use crate::kernel::bits as o;
        let bits: [u32; 12] = [
            0,
            0x8000_0000,
            0x7F80_0000,
            0xFF80_0001,
            0x7FC0_1234,
            0x0000_0001,
            0x3F80_8000,
            0x3F80_1000,
            0x477F_F000,
            0x3300_0001,
            0x7F7F_FFFF,
            0xC2F6_E979,
        ];
        let src: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
        let backend = Backend::scalar();
        let mut b = vec![bf16::ZERO; src.len()];
        let mut h = vec![f16::ZERO; src.len()];
        backend.convert(&src, &mut b).unwrap();
        backend.convert(&src, &mut h).unwrap();
        for i in 0..src.len() {
            assert_eq!(b[i].to_bits(), o::f32_to_bf16(src[i]).to_bits());
            assert_eq!(h[i].to_bits(), o::f32_to_f16(src[i]).to_bits());
        }
        let mut f = vec![0f32; src.len()];
        backend.convert(&b, &mut f).unwrap();
        assert!(
            f.iter()
                .zip(&b)
                .all(|(x, y)| x.to_bits() == o::bf16_to_f32(*y).to_bits())
        );
        backend.convert(&h, &mut f).unwrap();
        assert!(
            f.iter()
                .zip(&h)
                .all(|(x, y)| x.to_bits() == o::f16_to_f32(*y).to_bits())
        );
        let mut h2 = vec![f16::ZERO; src.len()];
        backend.convert(&b, &mut h2).unwrap();
        assert!(
            h2.iter()
                .zip(&b)
                .all(|(x, y)| *x == o::bf16_to_f16(*y) || x.is_nan())
        );
        backend.convert_stochastic(&src, &mut b, 3).unwrap();
        for (i, x) in b.iter().enumerate() {
            let r = o::sr_bits(o::sr_key(3, 0), i as u32);
            assert_eq!(x.to_bits(), o::f32_to_bf16_sr_bits(bits[i], r));
        }
        backend.convert_stochastic(&src, &mut h, 3).unwrap();
        for (i, x) in h.iter().enumerate() {
            let r = o::sr_bits(o::sr_key(3, 0), i as u32);
            assert_eq!(x.to_bits(), o::f32_to_f16_sr_bits(bits[i], r));
        }
        assert!(backend.convert(&src, &mut h[..3]).is_err());
    }
}
