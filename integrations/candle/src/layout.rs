//! From candle's [`Layout`] (shape, strides in elements, start offset) to
//! halfkern's [`MatRef`] views, without copying.
//!
//! A candle tensor of rank `r >= 2` is a batch of matrices: its last two
//! dimensions are each matrix's rows and columns, the others the batch.
//! halfkern's views take any non-negative strides, including 0 (candle's
//! `broadcast_as`) and strides that are not unit in either dimension
//! (a `narrow` of the last dimension followed by a transpose, say), and
//! candle's strides are non-negative too. So every layout candle produces
//! maps onto one view per batch element over the storage as it is: this
//! module never copies. (candle's own CPU matmul rejects some of these
//! layouts with `MatMulUnexpectedStriding` and makes the caller copy.)

use candle_core::{Error, Layout, Result};
use halfkern::{Element, MatRef};

/// One operand of a batched product: where each batch element's matrix
/// starts in the storage, and the shape and strides they all share.
#[derive(Clone, Debug)]
pub(crate) struct Batched {
    /// Storage offset of each matrix, in candle's row-major batch order.
    pub(crate) offsets: Vec<usize>,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    /// Row and column strides in elements.
    pub(crate) rs: usize,
    pub(crate) cs: usize,
    /// The batch dimensions and their strides.
    batch_dims: Vec<usize>,
    batch_strides: Vec<usize>,
    start: usize,
}

impl Batched {
    /// The last two dimensions of `layout` as the matrices, the rest as the
    /// batch. A rank-1 layout is one row (`1 x len`): a linear layer's
    /// single input vector.
    ///
    /// # Errors
    ///
    /// A rank-0 layout, or offsets that overflow `usize` (candle's own
    /// layouts never do; a hand-made one might).
    pub(crate) fn new(layout: &Layout, op: &'static str, arg: &str) -> Result<Self> {
        let dims = layout.dims();
        let strides = layout.stride();
        let r = dims.len();
        let (rows, cols, rs, cs, nb) = match r {
            0 => {
                return Err(Error::Msg(format!(
                    "{op}: {arg} is a scalar, a matrix product needs rank >= 1"
                ))
                .bt());
            }
            1 => (1, dims[0], 0, strides[0], 0),
            _ => (
                dims[r - 2],
                dims[r - 1],
                strides[r - 2],
                strides[r - 1],
                r - 2,
            ),
        };
        let mut batched = Batched {
            offsets: Vec::new(),
            rows,
            cols,
            rs,
            cs,
            batch_dims: dims[..nb].to_vec(),
            batch_strides: strides[..nb].to_vec(),
            start: layout.start_offset(),
        };
        batched.offsets = batch_offsets(&batched.batch_dims, &batched.batch_strides, batched.start)
            .ok_or_else(|| overflow(op, arg))?;
        Ok(batched)
    }

    /// Number of matrices.
    pub(crate) fn count(&self) -> usize {
        self.offsets.len()
    }

    /// Whether every batch element is the same matrix (no batch dimension
    /// steps, as after `broadcast_as` of one matrix).
    pub(crate) fn is_one_matrix(&self) -> bool {
        self.batch_dims
            .iter()
            .zip(&self.batch_strides)
            .all(|(&d, &s)| d <= 1 || s == 0)
    }

    /// The batch and the rows folded into one dimension: `(rows, row
    /// stride)` of a single matrix holding every batch element's rows,
    /// where the strides allow it (each dimension of extent > 1 steps by
    /// the extent times the stride of the next). This turns a batch of
    /// inputs times one weight matrix into one GEMM.
    pub(crate) fn folded_rows(&self) -> Option<(usize, usize)> {
        let mut live = self
            .batch_dims
            .iter()
            .zip(&self.batch_strides)
            .map(|(&d, &s)| (d, s))
            .chain([(self.rows, self.rs)])
            .filter(|&(d, _)| d != 1);
        let Some((mut rows, mut rs)) = live.next() else {
            return Some((1, self.rs));
        };
        for (d, s) in live {
            if rs != d.checked_mul(s)? {
                return None;
            }
            rows = rows.checked_mul(d)?;
            rs = s;
        }
        Some((rows, rs))
    }

    /// Storage offset of the first element (the folded matrix starts here).
    pub(crate) fn start(&self) -> usize {
        self.start
    }

    /// The matrix of batch element `i` over `data`, the whole storage.
    ///
    /// # Errors
    ///
    /// halfkern's view errors, when the layout reaches beyond `data`.
    pub(crate) fn view<'a, T: Element>(
        &self,
        data: &'a [T],
        i: usize,
        op: &'static str,
    ) -> Result<MatRef<'a, T>> {
        view_at(
            data,
            self.offsets[i],
            (self.rows, self.cols),
            (self.rs, self.cs),
            op,
        )
    }
}

/// A `shape` view with `strides` starting at `offset` of `data`.
///
/// # Errors
///
/// halfkern's view errors, mapped to candle's.
pub(crate) fn view_at<'a, T: Element>(
    data: &'a [T],
    offset: usize,
    (rows, cols): (usize, usize),
    (rs, cs): (usize, usize),
    op: &'static str,
) -> Result<MatRef<'a, T>> {
    // An offset past the end is fine for an empty view; for any other,
    // halfkern reports the view as too long for the (empty) slice.
    let tail = data.get(offset..).unwrap_or(&[]);
    MatRef::strided(tail, rows, cols, rs, cs).map_err(|e| crate::to_candle(op, e))
}

/// The offset of each batch element, in row-major order of `dims`.
fn batch_offsets(dims: &[usize], strides: &[usize], start: usize) -> Option<Vec<usize>> {
    let count = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d))?;
    let mut offsets = Vec::new();
    offsets.try_reserve_exact(count).ok()?;
    let mut index = vec![0usize; dims.len()];
    let mut offset = start;
    for _ in 0..count {
        offsets.push(offset);
        // Odometer step: the last dimension fastest.
        for d in (0..dims.len()).rev() {
            index[d] += 1;
            if index[d] < dims[d] {
                offset = offset.checked_add(strides[d])?;
                break;
            }
            offset = offset.checked_sub(strides[d].checked_mul(dims[d] - 1)?)?;
            index[d] = 0;
        }
    }
    Some(offsets)
}

fn overflow(op: &'static str, arg: &str) -> Error {
    Error::Msg(format!("{op}: the layout of {arg} overflows usize")).bt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_follow_candle_order() {
        assert_eq!(
            batch_offsets(&[2, 3], &[30, 10], 5).unwrap(),
            [5, 15, 25, 35, 45, 55]
        );
        assert_eq!(batch_offsets(&[2, 2], &[0, 7], 1).unwrap(), [1, 8, 1, 8]);
        assert_eq!(batch_offsets(&[], &[], 4).unwrap(), [4]);
        assert!(batch_offsets(&[3, 0], &[1, 1], 0).unwrap().is_empty());
    }

    #[test]
    fn rows_fold_when_contiguous() {
        let l = Layout::contiguous((2, 3, 4, 5));
        let b = Batched::new(&l, "t", "x").unwrap();
        assert_eq!(b.folded_rows(), Some((24, 5)));
        // A transposed matrix does not fold with its batch.
        let t = l.transpose(2, 3).unwrap();
        assert_eq!(Batched::new(&t, "t", "x").unwrap().folded_rows(), None);
        // A unit dimension never blocks a fold.
        let u = Layout::contiguous((1, 4, 1, 5));
        assert_eq!(
            Batched::new(&u, "t", "x").unwrap().folded_rows(),
            Some((4, 5))
        );
    }
}
