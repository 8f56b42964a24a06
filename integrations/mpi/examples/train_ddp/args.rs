//! The command line of `train_ddp`.

use halfkern_mpi::parse_rank_step;

use crate::mlp::Recipe;

/// What `--help` prints.
pub const HELP: &str = "\
Data-parallel training of the digits MLP over MPI, bit-identical to one
process.

USAGE:
    mpirun -np N target/release/examples/train_ddp [OPTIONS]

OPTIONS:
    --recipe R              f32, bf16, f16 or bf16-pure            [default: bf16]
    --batch-size B          global batch, split between the ranks  [default: 256]
    --steps S               optimizer steps (skipped ones count)   [default: 200]
    --lr X                  AdamW learning rate                    [default: 0.002]
    --seed N                initial weights and data order         [default: 42]
    --threads-per-rank T    threads of each rank's GEMMs           [default: 1]
    --warmup W              steps left out of the timings          [default: 5]
    --log-every K           print the loss every K steps           [default: 50]
    --inject-inf RANK:STEP  put an inf into RANK's gradients at STEP, then
                            check that every rank skipped that step and
                            (with a dynamic loss scale) halved its scale
    --check-single          rank 0 replays the run as one process and
                            compares every bit
    -h, --help              print this help

With T > 1 threads, give each rank T cores: mpirun --map-by slot:PE=T
(or --bind-to none); Open MPI otherwise pins each rank to one core.
";

/// The command line.
#[derive(Clone, Debug)]
pub struct Args {
    pub recipe: Recipe,
    pub batch: usize,
    pub steps: u64,
    pub lr: f32,
    pub seed: u64,
    pub threads: usize,
    pub warmup: u64,
    pub log_every: u64,
    pub inject: Option<(usize, u64)>,
    pub check_single: bool,
}

impl Default for Args {
    fn default() -> Args {
        Args {
            recipe: Recipe::Bf16,
            batch: 256,
            steps: 200,
            lr: 2e-3,
            seed: 42,
            threads: 1,
            warmup: 5,
            log_every: 50,
            inject: None,
            check_single: false,
        }
    }
}

/// Parses the options; `Ok(None)` for `--help`.
pub fn parse_args(mut argv: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    fn num<T: std::str::FromStr>(flag: &str, v: Option<String>) -> Result<T, String> {
        let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
        v.parse()
            .map_err(|_| format!("{flag}: {v:?} is not a valid number"))
    }
    let mut a = Args::default();
    while let Some(flag) = argv.next() {
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--recipe" => {
                let v = argv.next().ok_or("--recipe needs a value")?;
                a.recipe = Recipe::parse(&v).ok_or_else(|| {
                    format!("--recipe: {v:?} is none of f32, bf16, f16, bf16-pure")
                })?;
            }
            "--batch-size" => a.batch = num(&flag, argv.next())?,
            "--steps" => a.steps = num(&flag, argv.next())?,
            "--lr" => a.lr = num(&flag, argv.next())?,
            "--seed" => a.seed = num(&flag, argv.next())?,
            "--threads-per-rank" => a.threads = num(&flag, argv.next())?,
            "--warmup" => a.warmup = num(&flag, argv.next())?,
            "--log-every" => a.log_every = num(&flag, argv.next())?,
            "--inject-inf" => {
                let v = argv.next().ok_or("--inject-inf needs RANK:STEP")?;
                a.inject = Some(parse_rank_step(&v)?);
            }
            "--check-single" => a.check_single = true,
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    for (flag, v) in [("--batch-size", a.batch), ("--threads-per-rank", a.threads)] {
        if v == 0 {
            return Err(format!("{flag} must be at least 1"));
        }
    }
    if a.steps == 0 || a.log_every == 0 {
        return Err("--steps and --log-every must be at least 1".into());
    }
    if !(a.lr.is_finite() && a.lr >= 0.0) {
        return Err(format!("--lr must be finite and >= 0, got {}", a.lr));
    }
    if a.inject.is_some_and(|(_, s)| s > a.steps) {
        return Err("--inject-inf: STEP is past --steps".into());
    }
    Ok(Some(a))
}

/// The options' checks that need the rank count.
pub fn check_with_ranks(args: &Args, ranks: usize) -> Result<(), String> {
    if args.batch < ranks {
        return Err(format!(
            "--batch-size {} is smaller than the {ranks} ranks: every rank needs an image",
            args.batch
        ));
    }
    if let Some((r, _)) = args.inject
        && r >= ranks
    {
        return Err(format!(
            "--inject-inf: no rank {r} among {ranks} (ranks count from 0)"
        ));
    }
    if args.check_single && args.recipe == Recipe::Bf16Pure && ranks > 1 {
        return Err(
            "--check-single: bf16-pure's stochastic rounding is keyed by \
                    the index in each rank's slice, so one trainer over whole tensors \
                    draws other bits; use f32, bf16 or f16"
                .into(),
        );
    }
    Ok(())
}
