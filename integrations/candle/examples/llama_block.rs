//! One Llama-style decoder block (RMSNorm, q/k/v/o projections with RoPE
//! and causal attention, RMSNorm, SwiGLU MLP), randomly initialised with a
//! fixed seed, run five ways: candle in f32, candle's own bf16 and f16, and
//! bf16 and f16 with every matrix product through halfkern. Each runs a
//! prefill (a few hundred tokens at once) and then a decode (one token at
//! a time against the KV cache), and prints tokens per second and the
//! largest absolute difference of its outputs from the f32 run.
//!
//! Only the matrix products differ between the runs: the projections are
//! `candle_nn::Linear` or `halfkern_candle::Linear` (weights packed once),
//! the attention products `Tensor::matmul` or `halfkern_candle::matmul`.
//! Norms, RoPE, softmax and SiLU are candle-nn's in every run.
//!
//! ```text
//! cargo run --release -p halfkern-candle --example llama_block
//! cargo run --release -p halfkern-candle --example llama_block -- \
//!     --hidden 4096 --heads 32 --intermediate 11008 --prefill 512 --decode 64
//! ```

use std::time::Instant;

use candle_core::{D, DType, Device, Module, Result, Tensor};
use candle_nn::{RmsNorm, ops, rotary_emb};

/// The block's sizes and the run's lengths (flags of the same names).
#[derive(Clone, Copy, Debug)]
struct Config {
    hidden: usize,
    heads: usize,
    intermediate: usize,
    prefill: usize,
    decode: usize,
    reps: usize,
}

impl Config {
    fn from_args() -> std::result::Result<Config, String> {
        let mut c = Config {
            hidden: 2048,
            heads: 16,
            intermediate: 5632,
            prefill: 256,
            decode: 32,
            reps: 2,
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let value = args.next().ok_or(format!("{flag} needs a value"))?;
            let v: usize = value
                .parse()
                .map_err(|_| format!("{flag} {value}: not a count"))?;
            match flag.as_str() {
                "--hidden" => c.hidden = v,
                "--heads" => c.heads = v,
                "--intermediate" => c.intermediate = v,
                "--prefill" => c.prefill = v,
                "--decode" => c.decode = v,
                "--reps" => c.reps = v.max(1),
                _ => return Err(format!("unknown flag {flag}; see the example's docs")),
            }
        }
        if c.heads == 0
            || !c.hidden.is_multiple_of(c.heads)
            || !(c.hidden / c.heads).is_multiple_of(2)
        {
            return Err("--hidden must be --heads times an even head size".into());
        }
        Ok(c)
    }

    fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }
}

/// Who multiplies the matrices.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Engine {
    Candle,
    Halfkern,
}

/// A run: an engine and the block's type.
#[derive(Clone, Copy, Debug)]
struct Run {
    engine: Engine,
    dtype: DType,
}

impl Run {
    fn name(&self) -> String {
        let engine = match self.engine {
            Engine::Candle => "candle",
            Engine::Halfkern => "halfkern",
        };
        format!("{engine} {}", format!("{:?}", self.dtype).to_lowercase())
    }
}

/// Fixed-seed values in [-scale, scale) (SplitMix64).
struct Init(u64);

impl Init {
    fn tensor(&mut self, dims: &[usize], scale: f32, offset: f32) -> Result<Tensor> {
        let n = dims.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| {
                self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = self.0;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                let u = ((z ^ (z >> 31)) >> 40) as f32 / (1u32 << 23) as f32 - 1.0;
                offset + scale * u
            })
            .collect();
        Tensor::from_vec(v, dims, &Device::Cpu)
    }
}

/// The block's weights in f32, candle's `[out, in]` convention.
struct Weights {
    attn_norm: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    mlp_norm: Tensor,
    gate: Tensor,
    up: Tensor,
    down: Tensor,
}

impl Weights {
    fn random(c: &Config) -> Result<Weights> {
        let mut init = Init(0x11a3a);
        let (h, i) = (c.hidden, c.intermediate);
        let mut w = |out: usize, inp: usize| init.tensor(&[out, inp], (inp as f32).powf(-0.5), 0.0);
        let (q, k, v, o) = (w(h, h)?, w(h, h)?, w(h, h)?, w(h, h)?);
        let (gate, up, down) = (w(i, h)?, w(i, h)?, w(h, i)?);
        let mut norm = || init.tensor(&[h], 0.1, 1.0);
        Ok(Weights {
            attn_norm: norm()?,
            q,
            k,
            v,
            o,
            mlp_norm: norm()?,
            gate,
            up,
            down,
        })
    }
}

/// A projection: candle-nn's layer or halfkern's prepacked one.
enum Proj {
    Candle(candle_nn::Linear),
    Halfkern(halfkern_candle::Linear),
}

impl Proj {
    fn new(w: &Tensor, run: Run) -> Result<Proj> {
        let w = w.to_dtype(run.dtype)?;
        Ok(match run.engine {
            Engine::Candle => Proj::Candle(candle_nn::Linear::new(w, None)),
            Engine::Halfkern => Proj::Halfkern(halfkern_candle::Linear::new(&w, None)?),
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Proj::Candle(l) => l.forward(x),
            Proj::Halfkern(l) => l.forward(x),
        }
    }
}

struct Block {
    run: Run,
    heads: usize,
    head_dim: usize,
    attn_norm: RmsNorm,
    q: Proj,
    k: Proj,
    v: Proj,
    o: Proj,
    mlp_norm: RmsNorm,
    gate: Proj,
    up: Proj,
    down: Proj,
    cos: Tensor,
    sin: Tensor,
}

/// Keys and values so far, `[1, seq, heads, head_dim]`.
#[derive(Default)]
struct Cache(Option<(Tensor, Tensor)>);

impl Block {
    fn new(w: &Weights, c: &Config, run: Run) -> Result<Block> {
        let norm =
            |t: &Tensor| -> Result<RmsNorm> { Ok(RmsNorm::new(t.to_dtype(run.dtype)?, 1e-5)) };
        let p = |t: &Tensor| Proj::new(t, run);
        // RoPE tables for every position the run reaches.
        let (d, max) = (c.head_dim(), c.prefill + c.decode);
        let inv: Vec<f32> = (0..d / 2)
            .map(|i| 10000f32.powf(-2.0 * i as f32 / d as f32))
            .collect();
        let inv = Tensor::from_vec(inv, (1, d / 2), &Device::Cpu)?;
        let pos = Tensor::arange(0u32, max as u32, &Device::Cpu)?
            .to_dtype(DType::F32)?
            .reshape((max, 1))?;
        let freqs = pos.broadcast_mul(&inv)?;
        Ok(Block {
            run,
            heads: c.heads,
            head_dim: d,
            attn_norm: norm(&w.attn_norm)?,
            q: p(&w.q)?,
            k: p(&w.k)?,
            v: p(&w.v)?,
            o: p(&w.o)?,
            mlp_norm: norm(&w.mlp_norm)?,
            gate: p(&w.gate)?,
            up: p(&w.up)?,
            down: p(&w.down)?,
            cos: freqs.cos()?.to_dtype(run.dtype)?,
            sin: freqs.sin()?.to_dtype(run.dtype)?,
        })
    }

    /// `a x b` by this run's engine. candle's matmul needs its operands'
    /// batch dimensions contiguous; halfkern reads the views in place.
    fn matmul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        match self.run.engine {
            Engine::Candle => a.contiguous()?.matmul(&b.contiguous()?),
            Engine::Halfkern => halfkern_candle::matmul(a, b),
        }
    }

    /// `x` (`[1, t, hidden]`) at position `pos`, the cache extended by `t`.
    fn forward(&self, x: &Tensor, pos: usize, cache: &mut Cache) -> Result<Tensor> {
        let (_, t, hidden) = x.dims3()?;
        let (nh, hd) = (self.heads, self.head_dim);
        let h = self.attn_norm.forward(x)?;
        let cos = self.cos.narrow(0, pos, t)?;
        let sin = self.sin.narrow(0, pos, t)?;
        let split = |y: Tensor| y.reshape((1, t, nh, hd));
        let q = rotary_emb::rope_thd(&split(self.q.forward(&h)?)?, &cos, &sin)?;
        let k = rotary_emb::rope_thd(&split(self.k.forward(&h)?)?, &cos, &sin)?;
        let v = split(self.v.forward(&h)?)?;
        let (k, v) = match cache.0.take() {
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 1)?, Tensor::cat(&[&pv, &v], 1)?),
            None => (k, v),
        };
        cache.0 = Some((k.clone(), v.clone()));
        let s = k.dim(1)?;
        // [1, heads, t, hd] x [1, heads, hd, s]: transposed views.
        let (q, k, v) = (q.transpose(1, 2)?, k.transpose(1, 2)?, v.transpose(1, 2)?);
        let scores = (self.matmul(&q, &k.t()?)? / (hd as f64).sqrt())?;
        let scores = if t > 1 {
            // Causal: query i (at pos + i) sees keys 0..=pos + i.
            let mask: Vec<f32> = (0..t)
                .flat_map(|i| {
                    (0..s).map(move |j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 })
                })
                .collect();
            let mask = Tensor::from_vec(mask, (t, s), x.device())?.to_dtype(x.dtype())?;
            scores.broadcast_add(&mask)?
        } else {
            scores
        };
        let att = ops::softmax_last_dim(&scores)?;
        let y = self
            .matmul(&att, &v)?
            .transpose(1, 2)?
            .reshape((1, t, hidden))?;
        let x = (x + self.o.forward(&y)?)?;
        let h = self.mlp_norm.forward(&x)?;
        let mlp = (ops::silu(&self.gate.forward(&h)?)? * self.up.forward(&h)?)?;
        x + self.down.forward(&mlp)?
    }
}

/// One run's outputs (f32) and its best times over the repetitions.
struct Outcome {
    prefill_out: Tensor,
    decode_out: Tensor,
    prefill_s: f64,
    decode_s: f64,
}

fn measure(block: &Block, c: &Config, xs: &(Tensor, Vec<Tensor>)) -> Result<Outcome> {
    let dt = block.run.dtype;
    let prompt = xs.0.to_dtype(dt)?;
    let steps: Vec<Tensor> = xs.1.iter().map(|x| x.to_dtype(dt)).collect::<Result<_>>()?;
    let (mut prefill_s, mut decode_s) = (f64::INFINITY, f64::INFINITY);
    let mut outs = None;
    for _ in 0..c.reps {
        let mut cache = Cache::default();
        let t0 = Instant::now();
        let p = block.forward(&prompt, 0, &mut cache)?;
        let t1 = Instant::now();
        let mut d = Vec::with_capacity(steps.len());
        for (i, x) in steps.iter().enumerate() {
            d.push(block.forward(x, c.prefill + i, &mut cache)?);
        }
        let t2 = Instant::now();
        prefill_s = prefill_s.min((t1 - t0).as_secs_f64());
        decode_s = decode_s.min((t2 - t1).as_secs_f64());
        outs = Some((p, d));
    }
    let Some((p, d)) = outs else {
        candle_core::bail!("no repetition ran");
    };
    let decode_out = if d.is_empty() {
        Tensor::zeros((1, 0, c.hidden), DType::F32, &Device::Cpu)?
    } else {
        Tensor::cat(&d, 1)?.to_dtype(DType::F32)?
    };
    Ok(Outcome {
        prefill_out: p.to_dtype(DType::F32)?,
        decode_out,
        prefill_s,
        decode_s,
    })
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    if a.elem_count() == 0 {
        return Ok(0.0);
    }
    (a - b)?
        .abs()?
        .flatten_all()?
        .max(D::Minus1)?
        .to_scalar::<f32>()
}

fn main() -> Result<()> {
    let c = Config::from_args().map_err(candle_core::Error::Msg)?;
    println!(
        "Llama-style block: hidden {}, {} heads of {}, SwiGLU {}, prefill {} tokens, decode {} tokens; best of {} runs",
        c.hidden,
        c.heads,
        c.head_dim(),
        c.intermediate,
        c.prefill,
        c.decode,
        c.reps
    );
    println!(
        "{} threads (halfkern: rayon's pool), halfkern ISA {:?}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        halfkern::Isa::best()
    );
    let w = Weights::random(&c)?;
    let mut init = Init(0xdec0de);
    let prompt = init.tensor(&[1, c.prefill, c.hidden], 1.0, 0.0)?;
    let steps = (0..c.decode)
        .map(|_| init.tensor(&[1, 1, c.hidden], 1.0, 0.0))
        .collect::<Result<Vec<_>>>()?;
    let xs = (prompt, steps);

    let runs = [
        Run {
            engine: Engine::Candle,
            dtype: DType::F32,
        },
        Run {
            engine: Engine::Candle,
            dtype: DType::BF16,
        },
        Run {
            engine: Engine::Halfkern,
            dtype: DType::BF16,
        },
        Run {
            engine: Engine::Candle,
            dtype: DType::F16,
        },
        Run {
            engine: Engine::Halfkern,
            dtype: DType::F16,
        },
    ];
    println!();
    println!("| run | prefill tok/s | decode tok/s | prefill max abs diff | decode max abs diff |");
    println!("|---|---|---|---|---|");
    let mut reference: Option<Outcome> = None;
    for run in runs {
        let block = Block::new(&w, &c, run)?;
        let out = measure(&block, &c, &xs)?;
        let (dp, dd) = match &reference {
            Some(r) => (
                max_abs_diff(&out.prefill_out, &r.prefill_out)?,
                max_abs_diff(&out.decode_out, &r.decode_out)?,
            ),
            None => (0.0, 0.0),
        };
        println!(
            "| {} | {:.1} | {:.1} | {dp:.2e} | {dd:.2e} |",
            run.name(),
            c.prefill as f64 / out.prefill_s,
            c.decode as f64 / out.decode_s,
        );
        reference.get_or_insert(out);
    }
    Ok(())
}
