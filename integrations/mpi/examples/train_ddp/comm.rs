//! The step's collectives: the reduce-scatter of the gradients (summed in
//! rank order by each slice's owner), the all-reduce of the check's
//! statistics, and the all-gather of the updated weights.

use std::ops::Range;

use halfkern::finite::GradStats;
use halfkern_mpi::{Bits, Layout, sum_in_rank_order};
use mpi::collective::SystemOperation;
use mpi::datatype::{Partition, PartitionMut};
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

/// The layout of the slices and the buffers the collectives reuse from
/// step to step.
pub struct Collectives<T: Bits> {
    layout: Layout,
    /// This rank's range of each tensor.
    mine: Vec<Range<usize>>,
    /// Every rank's share, as MPI counts and displacements: the gradients
    /// sent, and the weights gathered.
    counts: Vec<i32>,
    displs: Vec<i32>,
    /// This rank's share from each rank: the gradients received.
    recv_counts: Vec<i32>,
    recv_displs: Vec<i32>,
    send: Vec<f32>,
    recv: Vec<f32>,
    reduced: Vec<f32>,
    wire_mine: Vec<T::Wire>,
    wire_all: Vec<T::Wire>,
}

impl<T: Bits> Collectives<T> {
    /// The collectives of rank `me` over `layout`.
    pub fn new(layout: Layout, me: usize) -> Collectives<T> {
        let mine = layout.owned(me);
        let my_len = layout.owned_len(me);
        let total: usize = layout.lens().iter().sum();
        let (counts, displs) = layout.counts_displs(|r| layout.owned_len(r));
        let (recv_counts, recv_displs) = layout.counts_displs(|_| my_len);
        Collectives {
            recv: vec![0.0; layout.ranks() * my_len],
            reduced: vec![0.0; my_len],
            send: Vec::with_capacity(total),
            wire_mine: Vec::with_capacity(my_len),
            wire_all: vec![T::Wire::default(); total],
            layout,
            mine,
            counts,
            displs,
            recv_counts,
            recv_displs,
        }
    }

    /// The layout of the slices.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// This rank's range of each tensor.
    pub fn mine(&self) -> &[Range<usize>] {
        &self.mine
    }

    /// Sends every rank its slices of this rank's partial gradients
    /// (`MPI_Alltoallv`), and sums the partials of this rank's slices in
    /// rank order. Returns the sums, tensor by tensor.
    pub fn reduce_scatter<A: AsRef<[f32]>>(
        &mut self,
        world: &SimpleCommunicator,
        grads: &[A],
    ) -> Vec<&[f32]> {
        self.send.clear();
        self.layout.pack_by_owner(grads, &mut self.send);
        world.all_to_all_varcount_into(
            &Partition::new(&self.send[..], &self.counts[..], &self.displs[..]),
            &mut PartitionMut::new(
                &mut self.recv[..],
                &self.recv_counts[..],
                &self.recv_displs[..],
            ),
        );
        sum_in_rank_order(&self.recv, &mut self.reduced);
        let mut views = Vec::with_capacity(self.mine.len());
        let mut rest = &self.reduced[..];
        for r in &self.mine {
            let (v, tail) = rest.split_at(r.len());
            views.push(v);
            rest = tail;
        }
        views
    }

    /// Gives every rank every rank's slices of `params` (this rank's
    /// updated, the others' overwritten), as bits.
    pub fn all_gather(&mut self, world: &SimpleCommunicator, params: &mut [&mut [T]]) {
        self.wire_mine.clear();
        for (p, r) in params.iter().zip(&self.mine) {
            self.wire_mine
                .extend(p[r.clone()].iter().map(|x| x.to_wire()));
        }
        world.all_gather_varcount_into(
            &self.wire_mine[..],
            &mut PartitionMut::new(&mut self.wire_all[..], &self.counts[..], &self.displs[..]),
        );
        self.layout
            .unpack_by_owner(&self.wire_all, params, T::from_wire);
    }
}

/// The sum over all ranks of `[nonfinite, sum_sq]` (`MPI_SUM`): the count
/// is an integer well inside f64's exact range, so its sum is exact in any
/// order; the sum of squares only feeds the reported norm (and clipping,
/// which this example does not use).
///
/// # Errors
///
/// What [`GradStats::from_array`] says of a sum that no real stats give.
pub fn all_reduce_stats(
    world: &SimpleCommunicator,
    local: GradStats,
) -> Result<GradStats, halfkern::Error> {
    let mut global = [0.0f64; 2];
    world.all_reduce_into(
        &local.to_array()[..],
        &mut global[..],
        SystemOperation::sum(),
    );
    GradStats::from_array(global)
}
