//! Data-parallel training of the digits MLP (`examples/train/mlp.rs`, the
//! main job's model, included rather than copied) over MPI, bit-identical
//! to one process.
//!
//! ```sh
//! cargo build --release -p halfkern-mpi --example train_ddp
//! mpirun -np 4 target/release/examples/train_ddp --check-single
//! ```
//!
//! # One step
//!
//! Every rank holds the whole bf16/f16 model and a `1/N` slice of every
//! parameter tensor's optimizer state (its f32 master weights and AdamW
//! moments: ZeRO stage 1). Per step, over a global batch of `B` images
//! that every rank draws in the same order:
//!
//! 1. Each rank runs forward and backward on its contiguous shard of the
//!    batch with halfkern's GEMMs in the model's precision; the
//!    weight-gradient GEMMs write f32 partials, unscaled in their epilogue,
//!    for the loss averaged over all `B` images (so the shards' partials
//!    sum to the batch's gradient).
//! 2. Reduce-scatter: `MPI_Alltoallv` sends each rank the partials of the
//!    slice it owns, and it sums them in rank order, in f32
//!    (`halfkern_mpi::sum_in_rank_order`).
//! 3. Each rank checks its reduced slice (`Step::check_unscaled`: inf/NaN
//!    count and sum of squares), all-reduces the `[nonfinite, sum_sq]` pair
//!    with `MPI_SUM`, and hands the global result to `Step::all_reduced`:
//!    an inf on any one rank, wherever it lands, makes every rank skip the
//!    step and back the loss scale off alike.
//! 4. Each rank applies the update to its slice, then `MPI_Allgatherv`
//!    hands everyone the updated weights (as bits, in the model's dtype).
//!
//! Steps 2 and 4 are the two halves of a ring all-reduce of the gradients,
//! with the update moved in between: no more bytes on the wire (fewer:
//! the gathered weights are 2-byte bf16/f16 where the gradients are f32),
//! `1/N` of the optimizer's work and state per rank, and the statistics'
//! all-reduce is what makes the ranks' decisions one decision.
//!
//! # Why f32, and why this order
//!
//! The gradients are summed in f32, not in the model's dtype: the GEMMs
//! produce them in f32 (their accumulator, already unscaled), and rounding
//! each rank's partial to bf16 (8 significant bits) before the sum would add
//! one rounding per rank, so the result would depend on the rank count.
//! The price is 4 bytes per gradient on the wire instead of 2.
//!
//! MPI never adds a float here: `MPI_SUM` over three or more ranks may
//! associate in any order the library picks. Each owner sums the partials
//! `((p0 + p1) + p2) + ...`, and `--check-single` makes rank 0 replay the
//! run as one process (one model, one trainer over whole tensors, the
//! shards' partials computed one after another and summed in that order),
//! then compares bits: model, master weights, moments, loss scale and the
//! skipped steps. The result is bit-identical for every N, not only N = 2.
//! Only the reported gradient norm may differ in its last bits (its sum of
//! squares is summed per slice, then across ranks, in f64); it would reach
//! the weights only through clipping, which the main job does not use.
//! bf16-pure (stochastic rounding keyed by each element's index within
//! the tensor its trainer holds) draws different, equally good, bits once
//! the state is sharded, so `--check-single` refuses it for N > 1.
//!
//! The example prints each rank's figures and the global ones, and exits
//! non-zero unless every rank ends with the same bits (a fingerprint of the
//! model, the loss scale and the step count, all-gathered) and every check
//! asked for passed.

#[path = "../../../../examples/train/mlp.rs"]
#[allow(
    dead_code,
    reason = "the train example's table and plot use parts of mlp.rs that this one does not"
)]
mod mlp;

mod args;
mod comm;
mod single;

use std::process::ExitCode;
use std::time::Instant;

use halfkern::train::ScalerMode;
use halfkern::{bf16, f16};
use halfkern_mpi::{Bits, Fingerprint, Layout, split};
use mlp::{Config, Dataset, Recipe, Replica, Rng};
use mpi::collective::SystemOperation;
use mpi::environment::Threading;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use args::{Args, HELP, check_with_ranks, parse_args};
use comm::{Collectives, all_reduce_stats};
use single::{Decision, compare_with_single, gather_state};

/// Seeds the order of the training images (apart from the weights' seed,
/// as in the train example).
const ORDER_SEED: u64 = 0x0DD9_0000_0000_0003;

fn main() -> ExitCode {
    let parsed = parse_args(std::env::args().skip(1));
    let Some((universe, _)) = mpi::initialize_with_threading(Threading::Funneled) else {
        eprintln!("train_ddp: MPI could not be initialised (already initialised?)");
        return ExitCode::from(2);
    };
    let world = universe.world();
    let rank0 = world.rank() == 0;
    let args = match parsed {
        Ok(Some(a)) => a,
        Ok(None) => {
            if rank0 {
                print!("{HELP}");
            }
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            if rank0 {
                eprintln!("train_ddp: {e} (--help for usage)");
            }
            return ExitCode::from(2);
        }
    };
    let ranks = world.size() as usize;
    // The same on every rank: rank 0 says it, all exit alike.
    if let Err(e) = check_with_ranks(&args, ranks) {
        if rank0 {
            eprintln!("train_ddp: {e}");
        }
        return ExitCode::from(2);
    }
    match run(&world, &args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        // An error on one rank would leave the others waiting in a
        // collective: end the whole job.
        Err(e) => {
            eprintln!("train_ddp (rank {}): {e}", world.rank());
            world.abort(1)
        }
    }
}

/// Sets up the threads and trains in the recipe's element type.
/// `Ok(false)` when a check failed (on every rank alike).
fn run(world: &SimpleCommunicator, args: &Args) -> Result<bool, String> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build_global()
        .map_err(|e| format!("--threads-per-rank: {e}"))?;
    let data = mlp::load_digits()?;
    match args.recipe {
        Recipe::F32 => train::<f32>(world, args, &data),
        Recipe::Bf16 | Recipe::Bf16Pure => train::<bf16>(world, args, &data),
        Recipe::F16 => train::<f16>(world, args, &data),
    }
}

/// The training images of every batch, in the same order on every rank: an
/// endless sequence of shuffled passes over the training set, cut into
/// batches of exactly `B` (a batch may span two passes), so every step has
/// the same shape whatever `B` is.
pub(crate) struct Sampler {
    order: Vec<usize>,
    at: usize,
    rng: Rng,
}

impl Sampler {
    pub(crate) fn new(n: usize, seed: u64) -> Sampler {
        Sampler {
            order: (0..n).collect(),
            at: n,
            rng: Rng::new(seed ^ ORDER_SEED),
        }
    }

    pub(crate) fn next(&mut self, b: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(b);
        while out.len() < b {
            if self.at == self.order.len() {
                self.rng.shuffle(&mut self.order);
                self.at = 0;
            }
            let take = (b - out.len()).min(self.order.len() - self.at);
            out.extend_from_slice(&self.order[self.at..self.at + take]);
            self.at += take;
        }
        out
    }
}

/// Wall time of each phase of a step, summed over the timed steps.
#[derive(Clone, Copy, Debug, Default)]
struct Phases {
    compute: f64,
    reduce_scatter: f64,
    check: f64,
    stats_all_reduce: f64,
    apply: f64,
    all_gather: f64,
    step: f64,
}

impl Phases {
    /// Communication: the reduce-scatter (its packing and rank-order sum
    /// included), the statistics' all-reduce and the all-gather, waiting
    /// for slower ranks included.
    fn comm(&self) -> f64 {
        self.reduce_scatter + self.stats_all_reduce + self.all_gather
    }

    fn to_array(self) -> [f64; 7] {
        [
            self.compute,
            self.reduce_scatter,
            self.check,
            self.stats_all_reduce,
            self.apply,
            self.all_gather,
            self.step,
        ]
    }

    fn from_array(a: &[f64]) -> Phases {
        Phases {
            compute: a[0],
            reduce_scatter: a[1],
            check: a[2],
            stats_all_reduce: a[3],
            apply: a[4],
            all_gather: a[5],
            step: a[6],
        }
    }
}

/// A halfkern error as this example's error message.
pub(crate) fn err(e: halfkern::Error) -> String {
    e.to_string()
}

/// The data-parallel run in element type `T`; `Ok(false)` when a check
/// failed (every rank returns the same).
fn train<T: Bits>(world: &SimpleCommunicator, args: &Args, data: &Dataset) -> Result<bool, String> {
    let ranks = world.size() as usize;
    let me = world.rank() as usize;
    let rank0 = me == 0;
    let b = args.batch;
    // Buffers for the largest shard (shard 0 is never smaller).
    let cfg = Config {
        batch_size: split(b, ranks, 0).len(),
        lr: args.lr,
        seed: args.seed,
        ..Config::default()
    };
    let mut replica = Replica::<T>::new(data, args.recipe, &cfg).map_err(err)?;
    // The replica's own trainer holds state for every parameter; this rank
    // keeps only its slices' (below).
    replica.release_trainer().map_err(err)?;
    let lens: Vec<usize> = replica.params().iter().map(|p| p.len()).collect();
    let total: usize = lens.iter().sum();
    let mut comm = Collectives::<T>::new(Layout::new(&lens, ranks)?, me);
    let mine = comm.mine().to_vec();
    // This rank's trainer: master weights and moments of its slices only.
    let mut trainer = {
        let params = replica.params();
        let parts: Vec<&[T]> = params
            .iter()
            .zip(&mine)
            .map(|(p, r)| &p[r.clone()])
            .collect();
        mlp::trainer_builder(args.recipe, &cfg)
            .build(&parts)
            .map_err(err)?
    };
    if rank0 {
        println!(
            "train_ddp: {ranks} rank(s) x {} thread(s), {} ({}), {} parameters, \
             global batch {b} (shards of {}..{}), {} steps, isa {}",
            args.threads,
            args.recipe.name(),
            args.recipe.describe(),
            total,
            split(b, ranks, ranks - 1).len(),
            cfg.batch_size,
            args.steps,
            trainer.backend().isa(),
        );
    }

    let mut sampler = Sampler::new(data.train_len(), args.seed);
    let mut phases = Phases::default();
    let mut timed_steps = 0u64;
    let mut decisions = Vec::new();
    let mut skipped = 0u64;
    // How many non-finite values this rank's own check found at the
    // injected step (before the statistics' all-reduce).
    let mut seen_locally = 0u64;
    let (mut loss_sum, mut loss_rows) = (0.0f64, 0.0f64);
    let mut last_loss = f64::NAN;
    for step in 1..=args.steps {
        let t0 = Instant::now();
        let batch = sampler.next(b);
        let rows = &batch[split(b, ranks, me)];
        let st = trainer.begin();
        loss_sum += replica
            .backward(rows, b, st.loss_scale(), st.inv_loss_scale())
            .map_err(err)?;
        loss_rows += rows.len() as f64;
        if args.inject == Some((me, step)) {
            replica.grads_mut()[0][0] = f32::INFINITY;
        }

        // Reduce-scatter: each owner sums its slice's partials in rank
        // order. Then check the slice and all-reduce [nonfinite, sum_sq].
        let t1 = Instant::now();
        let reduced = comm.reduce_scatter(world, replica.grads());
        let t2 = Instant::now();
        let checked = st.check_unscaled(&reduced).map_err(err)?;
        if args.inject.is_some_and(|(_, t)| t == step) {
            seen_locally = checked.nonfinite() as u64;
        }
        let t3 = Instant::now();
        let global = all_reduce_stats(world, checked.stats()).map_err(err)?;

        // Update this rank's slices, then all-gather the model's bits.
        let t4 = Instant::now();
        let report = {
            let mut parts: Vec<&mut [T]> = replica
                .params_mut()
                .into_iter()
                .zip(&mine)
                .map(|(p, r)| &mut p[r.clone()])
                .collect();
            checked
                .all_reduced(global)
                .map_err(err)?
                .apply(&mut parts)
                .map_err(err)?
        };
        let t5 = Instant::now();
        // A skip is global (the decision came from the all-reduced stats):
        // no rank changed a weight, so no rank sends any.
        if report.applied {
            comm.all_gather(world, &mut replica.params_mut());
        } else {
            skipped += 1;
        }
        let t6 = Instant::now();
        decisions.push(Decision {
            applied: report.applied,
            scale_before: report.scale_before,
            scale_after: report.scale_after,
        });
        if step > args.warmup {
            timed_steps += 1;
            let s = |a: Instant, z: Instant| (z - a).as_secs_f64();
            phases.compute += s(t0, t1);
            phases.reduce_scatter += s(t1, t2);
            phases.check += s(t2, t3);
            phases.stats_all_reduce += s(t3, t4);
            phases.apply += s(t4, t5);
            phases.all_gather += s(t5, t6);
            phases.step += s(t0, t6);
        }
        if step % args.log_every == 0 || step == args.steps {
            let mut g = [0.0f64; 2];
            world.all_reduce_into(
                &[loss_sum, loss_rows][..],
                &mut g[..],
                SystemOperation::sum(),
            );
            last_loss = g[0] / g[1];
            (loss_sum, loss_rows) = (0.0, 0.0);
            if rank0 {
                println!(
                    "  step {step:>6}  loss {last_loss:.4}  |g| {:.3e}  scale {}  {}",
                    report.grad_norm,
                    report.scale_after,
                    if report.applied { "applied" } else { "skipped" }
                );
            }
        }
    }

    // Every rank's state, as one fingerprint and the injected step's
    // outcome; all-gathered so that every rank reaches the same verdict.
    let mut fp = Fingerprint::default();
    for p in replica.params() {
        fp.elements(p);
    }
    fp.word(trainer.scale().to_bits().into());
    fp.word(trainer.steps());
    // (`parse_args` checked that the step is within the run.)
    let injected = args
        .inject
        .and_then(|(_, s)| decisions.get(usize::try_from(s - 1).ok()?).copied());
    let mine_summary: [u64; 5] = [
        fp.value(),
        injected.map_or(2, |d| u64::from(d.applied)),
        injected.map_or(0, |d| d.scale_after.to_bits().into()),
        injected.map_or(0, |d| d.scale_before.to_bits().into()),
        seen_locally,
    ];
    let mut all = vec![0u64; 5 * ranks];
    world.all_gather_into(&mine_summary[..], &mut all[..]);
    let identical = all.chunks(5).all(|c| c[0] == all[0]);
    let mut ok = identical;

    let timed = timed_steps.max(1) as f64;
    let mut mine_fig = vec![
        split(b, ranks, me).len() as f64,
        comm.layout().owned_len(me) as f64,
    ];
    mine_fig.extend(phases.to_array().map(|x| x / timed * 1e3));
    let width = mine_fig.len();
    let mut figs = vec![0.0f64; width * ranks];
    world.all_gather_into(&mine_fig[..], &mut figs[..]);

    if rank0 {
        println!(
            "  rank  rows  owns    compute  reduce-scatter  check  stats-allreduce  apply  all-gather  step (ms/step)"
        );
        for (r, f) in figs.chunks(width).enumerate() {
            println!(
                "  {r:>4}  {:>4}  {:>6}  {:>7.3}  {:>14.3}  {:>5.3}  {:>15.3}  {:>5.3}  {:>10.3}  {:>6.3}",
                f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8]
            );
        }
    }
    let per_rank: Vec<Phases> = figs
        .chunks(width)
        .map(|f| Phases::from_array(&f[2..]))
        .collect();
    let mean = |g: fn(&Phases) -> f64| per_rank.iter().map(g).sum::<f64>() / ranks as f64;
    let step_ms = mean(|p| p.step);
    let comm_ms = mean(Phases::comm);
    let share = if step_ms > 0.0 {
        comm_ms / step_ms
    } else {
        0.0
    };

    if let Some((r, s)) = args.inject {
        let dynamic = trainer.scaler().mode() == ScalerMode::Dynamic;
        let every_skipped = all.chunks(5).all(|c| c[1] == 0);
        let same_scale = all.chunks(5).all(|c| c[2] == all[2]);
        let before = f32::from_bits(all[3] as u32);
        let after = f32::from_bits(all[2] as u32);
        let backed_off = !dynamic || after < before;
        ok &= every_skipped && same_scale && backed_off;
        if rank0 {
            // The inf goes into w1[0], which rank 0's slice holds: the
            // other ranks skip only because of the statistics' all-reduce.
            let seen: Vec<String> = all
                .chunks(5)
                .enumerate()
                .filter(|(_, c)| c[4] > 0)
                .map(|(q, _)| q.to_string())
                .collect();
            println!(
                "inject-inf: inf in rank {r}'s gradients at step {s}; found by the check of rank(s) {} \
                 only; skipped on {} of {ranks} ranks; scale {before} -> {after} on every rank: {}{}",
                seen.join(","),
                all.chunks(5).filter(|c| c[1] == 0).count(),
                if same_scale { "yes" } else { "NO" },
                if dynamic {
                    ""
                } else {
                    " (this recipe does not scale)"
                }
            );
        }
    }

    if args.check_single {
        let gathered = gather_state(world, &trainer, comm.layout())?;
        if let Some(gathered) = gathered {
            let (model_same, detail) = compare_with_single::<T>(
                args,
                data,
                &cfg,
                &replica,
                comm.layout(),
                &gathered,
                &decisions,
            )?;
            println!("check-single: {detail}");
            ok &= model_same;
        }
    }

    if rank0 {
        let mut eval = replica;
        let acc = eval.test_accuracy().map_err(err)?;
        println!(
            "global: loss {last_loss:.4}, test accuracy {:.2}%, {skipped} skipped step(s), scale {}, \
             weights on all {ranks} ranks: {}",
            100.0 * acc,
            trainer.scale(),
            if identical {
                "bit-identical"
            } else {
                "DIFFERENT"
            }
        );
        println!(
            "SUMMARY {{\"ranks\":{ranks},\"threads_per_rank\":{},\"recipe\":\"{}\",\"batch\":{b},\
             \"steps\":{},\"timed_steps\":{timed_steps},\"step_ms\":{step_ms:.4},\
             \"compute_ms\":{:.4},\"allreduce_ms\":{comm_ms:.4},\"allreduce_share\":{:.4},\
             \"loss\":{last_loss:.5},\"test_accuracy\":{acc:.4},\"skipped\":{skipped},\
             \"identical\":{identical},\"ok\":{ok},\"fingerprint\":\"{:016x}\"}}",
            args.threads,
            args.recipe.name(),
            args.steps,
            mean(|p| p.compute),
            share,
            all[0],
        );
    }
    Ok(ok)
}
