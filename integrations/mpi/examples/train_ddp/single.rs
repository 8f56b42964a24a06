//! `--check-single`: rank 0 replays the run as one process and compares
//! every bit with what the ranks hold.

use std::time::Instant;

use halfkern::train::Trainer;
use halfkern_mpi::{Bits, Layout, split, sum_in_rank_order};
use mpi::datatype::PartitionMut;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use crate::args::Args;
use crate::mlp::{Config, Dataset, Replica};
use crate::{Sampler, err};

/// What the run decided at each step, compared with the reference.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    pub applied: bool,
    pub scale_before: f32,
    pub scale_after: f32,
}

/// How many values differ, and by how much at most.
#[derive(Default)]
struct Diff {
    n: usize,
    max: f64,
}

impl Diff {
    fn add(&mut self, a: f32, b: f32) {
        self.n += 1;
        self.max = self.max.max((f64::from(a) - f64::from(b)).abs());
    }
}

/// Each rank's slices of its trainer's master weights and moments,
/// gathered on rank 0 (`Some` there, `None` elsewhere). Per rank, tensor
/// by tensor: master, first moment, second moment (each empty where the
/// recipe keeps none).
pub fn gather_state(
    world: &SimpleCommunicator,
    trainer: &Trainer,
    layout: &Layout,
) -> Result<Option<Vec<f32>>, String> {
    let me = world.rank() as usize;
    let mut mine = Vec::new();
    let mut kinds = 0;
    for i in 0..layout.lens().len() {
        let master = trainer.master(i).ok_or("no such tensor")?;
        let (m, v) = trainer.moments(i).ok_or("no such tensor")?;
        kinds = [master, m, v].iter().filter(|x| !x.is_empty()).count();
        mine.extend_from_slice(master);
        mine.extend_from_slice(m);
        mine.extend_from_slice(v);
    }
    let root = world.process_at_rank(0);
    if me != 0 {
        root.gather_varcount_into(&mine[..]);
        return Ok(None);
    }
    let (counts, displs) = layout.counts_displs(|r| kinds * layout.owned_len(r));
    let mut all = vec![0.0f32; kinds * layout.lens().iter().sum::<usize>()];
    root.gather_varcount_into_root(
        &mine[..],
        &mut PartitionMut::new(&mut all[..], &counts[..], &displs[..]),
    );
    Ok(Some(all))
}

/// The run replayed in one process: one model and one trainer over whole
/// tensors; each batch cut into `shards` shards run one after another,
/// their partials summed in shard order; the same inf injected into the
/// same shard (into the whole batch when `shards` is 1). `cfg` sizes the
/// buffers for the largest shard.
fn replay<'d, T: Bits>(
    args: &Args,
    data: &'d Dataset,
    cfg: &Config,
    shards: usize,
) -> Result<(Replica<'d, T>, Vec<Decision>), String> {
    let b = args.batch;
    let mut one = Replica::<T>::new(data, args.recipe, cfg).map_err(err)?;
    let total: usize = one.params().iter().map(|p| p.len()).sum();
    let mut parts = vec![0.0f32; shards * total];
    let mut sum = vec![0.0f32; total];
    let mut sampler = Sampler::new(data.train_len(), args.seed);
    let mut decisions = Vec::new();
    for step in 1..=args.steps {
        let batch = sampler.next(b);
        let scale = one.trainer().scale();
        let inv = one.trainer().scaler().inv_scale();
        for (s, part) in parts.chunks_exact_mut(total).enumerate() {
            one.backward(&batch[split(b, shards, s)], b, scale, inv)
                .map_err(err)?;
            if args
                .inject
                .is_some_and(|(r, t)| t == step && (r == s || shards == 1))
            {
                one.grads_mut()[0][0] = f32::INFINITY;
            }
            let mut at = 0;
            for g in one.grads() {
                part[at..at + g.len()].copy_from_slice(g);
                at += g.len();
            }
        }
        sum_in_rank_order(&parts, &mut sum);
        let mut at = 0;
        for g in one.grads_mut() {
            let n = g.len();
            g.copy_from_slice(&sum[at..at + n]);
            at += n;
        }
        let r = one.apply().map_err(err)?;
        decisions.push(Decision {
            applied: r.applied,
            scale_before: r.scale_before,
            scale_after: r.scale_after,
        });
    }
    Ok((one, decisions))
}

/// Rank 0 replays the run as one process summing the shards in rank
/// order ([`replay`]) and compares every bit: the model, the optimizer
/// state the ranks gathered, and each step's decision and loss scale.
/// Returns whether all matched, and lines saying so. With several ranks it
/// also replays whole batches (one GEMM over all `B` rows, another sum
/// order), for the size of the difference that order makes (not checked).
pub fn compare_with_single<T: Bits>(
    args: &Args,
    data: &Dataset,
    cfg: &Config,
    ddp: &Replica<'_, T>,
    layout: &Layout,
    gathered: &[f32],
    decisions: &[Decision],
) -> Result<(bool, String), String> {
    let start = Instant::now();
    let ranks = layout.ranks();
    let (one, one_decisions) = replay::<T>(args, data, cfg, ranks)?;
    let same_decisions = one_decisions == decisions;

    // The model, bit for bit.
    let mut model = Diff::default();
    for (x, y) in ddp.params().iter().zip(one.params()) {
        for (&x, &y) in x.iter().zip(y) {
            if x.to_wire().into() != y.to_wire().into() {
                model.add(x.to_f32(), y.to_f32());
            }
        }
    }
    // The optimizer state, slice by slice as the ranks hold it.
    let mut state = Diff::default();
    let tr = one.trainer();
    let mut at = 0;
    for r in 0..ranks {
        for (i, range) in layout.owned(r).into_iter().enumerate() {
            let master = tr.master(i).ok_or("no such tensor")?;
            let (m, v) = tr.moments(i).ok_or("no such tensor")?;
            for full in [master, m, v] {
                if full.is_empty() {
                    continue;
                }
                let got = gathered
                    .get(at..at + range.len())
                    .ok_or("gathered state shorter than the layout")?;
                for (&x, &y) in got.iter().zip(&full[range.clone()]) {
                    if x.to_bits() != y.to_bits() {
                        state.add(x, y);
                    }
                }
                at += range.len();
            }
        }
    }
    let (model_differ, state_differ) = (model.n, state.n);
    let max_diff = model.max.max(state.max);
    let ok = model_differ + state_differ == 0 && same_decisions && at == gathered.len();
    let mut line = if ok {
        format!(
            "bit-identical to one process summing {ranks} shard(s) in rank order \
             (model, master weights, moments, loss scale, {} skipped step(s)); replay {:.1} s",
            decisions.iter().filter(|d| !d.applied).count(),
            start.elapsed().as_secs_f64()
        )
    } else {
        format!(
            "MISMATCH: {model_differ} model and {state_differ} optimizer-state values differ \
             (largest difference {max_diff:.3e}); decisions and scales {}",
            if same_decisions { "match" } else { "DIFFER" }
        )
    };
    if ranks > 1 {
        let whole_cfg = Config {
            batch_size: args.batch,
            ..cfg.clone()
        };
        let (whole, _) = replay::<T>(args, data, &whole_cfg, 1)?;
        let mut d = Diff::default();
        for (x, y) in ddp.params().iter().zip(whole.params()) {
            for (&x, &y) in x.iter().zip(y) {
                if x.to_wire().into() != y.to_wire().into() {
                    d.add(x.to_f32(), y.to_f32());
                }
            }
        }
        let n: usize = ddp.params().iter().map(|p| p.len()).sum();
        line += &format!(
            "\ncheck-single: for scale, one process with whole batches (one GEMM over \
             {} rows, another sum order) differs in {} of {n} weights, by at most {:.3e}",
            args.batch, d.n, d.max
        );
    }
    Ok((ok, line))
}
