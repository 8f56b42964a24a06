//! `halfkern_candle::matmul` against candle's own f32 matmul on the same
//! (already rounded) inputs, within halfkern's error bound: every type,
//! every layout candle produces on either side, several batch shapes,
//! sizes including 0, fresh inputs each run.

mod common;

use candle_core::{DType, Device, Result, Tensor};
use common::{ALL_HOWS, How, Rng, assert_close, make, reference, to_f32};
use halfkern_candle::{MatMul, broadcast_matmul, matmul};

const TYPES: [DType; 3] = [DType::BF16, DType::F16, DType::F32];

/// Batch dimensions, `(m, n, k)` and the two operands' layouts.
type Case<'a> = (&'a [usize], (usize, usize, usize), How, How);

/// One product of logical `[batch.., m, k] x [batch.., k, n]`, checked.
fn check(
    rng: &mut Rng,
    batch: &[usize],
    (m, n, k): (usize, usize, usize),
    (ha, hb): (How, How),
    dt: DType,
    out: Option<DType>,
) -> Result<()> {
    let a = make(rng, batch, (m, k), ha, dt)?;
    let b = make(rng, batch, (k, n), hb, dt)?;
    let op = out.map_or(MatMul::new(), |o| MatMul::new().out_dtype(o));
    let c = op.apply(&a, &b)?;
    let out = out.unwrap_or(dt);
    let what = format!("{dt:?}->{out:?} {batch:?} m={m} n={n} k={k} {ha:?} x {hb:?}");
    assert_eq!(c.dims(), [batch, &[m, n]].concat(), "{what}: shape");
    assert_eq!(c.dtype(), out, "{what}: dtype");
    assert!(c.is_contiguous(), "{what}: contiguous");
    let (r, abs) = reference(&a, &b)?;
    assert_close(&to_f32(&c)?, (&r, &abs), k, out, &what);
    Ok(())
}

#[test]
fn every_type_layout_and_batch() -> Result<()> {
    let mut rng = Rng::fresh("every_type_layout_and_batch");
    let batches: [&[usize]; 4] = [&[], &[1], &[3], &[2, 3]];
    for dt in TYPES {
        for batch in batches {
            for ha in ALL_HOWS {
                for hb in ALL_HOWS {
                    let mnk = (1 + rng.below(24), 1 + rng.below(24), 1 + rng.below(40));
                    check(&mut rng, batch, mnk, (ha, hb), dt, None)?;
                }
            }
        }
    }
    Ok(())
}

#[test]
fn zero_sized_dims() -> Result<()> {
    let mut rng = Rng::fresh("zero_sized_dims");
    let batches: [&[usize]; 4] = [&[], &[0], &[2, 0], &[2]];
    let shapes = [(0, 5, 7), (4, 0, 7), (4, 5, 0), (0, 0, 0), (1, 1, 0)];
    for dt in TYPES {
        for batch in batches {
            for mnk in shapes {
                for how in [How::Contiguous, How::Transposed, How::Narrowed] {
                    check(&mut rng, batch, mnk, (how, how), dt, None)?;
                }
            }
        }
    }
    Ok(())
}

#[test]
fn larger_shapes_take_every_path() -> Result<()> {
    // Decode (m = 1: the small-m path), a blocked GEMM big enough for
    // threads, a batch of small GEMMs run one per thread, a batch that
    // folds into one GEMM against a broadcast weight.
    let mut rng = Rng::fresh("larger_shapes_take_every_path");
    let cases: [Case<'_>; 6] = [
        (&[], (1, 300, 257), How::Contiguous, How::Transposed),
        (&[], (3, 130, 200), How::Contiguous, How::Contiguous),
        (&[], (150, 140, 130), How::Narrowed, How::Transposed),
        (&[8], (1, 33, 64), How::Permuted, How::Transposed),
        (
            &[4, 2],
            (17, 19, 64),
            How::Contiguous,
            How::NarrowedTransposed,
        ),
        (&[3, 2], (20, 96, 64), How::Contiguous, How::BatchBroadcast),
    ];
    for dt in TYPES {
        for (batch, mnk, ha, hb) in cases {
            check(&mut rng, batch, mnk, (ha, hb), dt, None)?;
        }
    }
    Ok(())
}

#[test]
fn output_type_may_differ() -> Result<()> {
    let mut rng = Rng::fresh("output_type_may_differ");
    for dt in TYPES {
        for out in TYPES {
            let mnk = (1 + rng.below(20), 1 + rng.below(20), 1 + rng.below(50));
            let hows = (How::Narrowed, How::Transposed);
            check(&mut rng, &[2], mnk, hows, dt, Some(out))?;
        }
    }
    Ok(())
}

#[test]
fn broadcast_matmul_reads_in_place() -> Result<()> {
    let mut rng = Rng::fresh("broadcast_matmul_reads_in_place");
    let cpu = &Device::Cpu;
    for dt in TYPES {
        // [b, m, k] x [k, n] (candle-nn's Linear) and [2, 1, m, k] x [3, k, n].
        let shapes: [(&[usize], &[usize]); 3] = [
            (&[4, 5, 6], &[6, 7]),
            (&[2, 1, 5, 6], &[3, 6, 7]),
            (&[5, 6], &[2, 6, 7]),
        ];
        for (ls, rs) in shapes {
            let a = Tensor::from_vec(rng.values(ls.iter().product()), ls, cpu)?.to_dtype(dt)?;
            let b = Tensor::from_vec(rng.values(rs.iter().product()), rs, cpu)?.to_dtype(dt)?;
            let c = broadcast_matmul(&a, &b)?;
            let a32 = a.to_dtype(DType::F32)?;
            let b32 = b.to_dtype(DType::F32)?;
            let r = a32.broadcast_matmul(&b32)?;
            let abs = a32.abs()?.broadcast_matmul(&b32.abs()?)?;
            assert_eq!(c.dims(), r.dims());
            let what = format!("{dt:?} {ls:?} x {rs:?}");
            assert_close(&to_f32(&c)?, (&to_f32(&r)?, &to_f32(&abs)?), 6, dt, &what);
        }
    }
    Ok(())
}

#[test]
fn agrees_with_candle_where_candle_is_exact() -> Result<()> {
    // Small integers: every product and sum is exact in f32, so halfkern
    // and candle's own bf16/f16 matmul must give the same bits.
    let cpu = &Device::Cpu;
    let mut rng = Rng::fresh("agrees_with_candle_where_candle_is_exact");
    for dt in [DType::BF16, DType::F16] {
        let ints = |rng: &mut Rng, n| (0..n).map(|_| rng.below(9) as f32 - 4.0).collect();
        let a = Tensor::from_vec(ints(&mut rng, 2 * 6 * 8), (2, 6, 8), cpu)?.to_dtype(dt)?;
        let b = Tensor::from_vec(ints(&mut rng, 2 * 8 * 5), (2, 8, 5), cpu)?.to_dtype(dt)?;
        assert_eq!(to_f32(&matmul(&a, &b)?)?, to_f32(&a.matmul(&b)?)?);
    }
    Ok(())
}
