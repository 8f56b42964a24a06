//! `halfkern_candle::Linear` against candle-nn's `Linear` in f32 on the
//! same (already rounded) weights and inputs, then the activation, within
//! halfkern's bound; one packed layer reused across batch shapes and input
//! layouts.

mod common;

use candle_core::{DType, Device, Module, Result, Tensor};
use common::{How, Rng, make, reference, to_f32, tolerance};
use halfkern_candle::{Activation, Linear};

const TYPES: [DType; 3] = [DType::BF16, DType::F16, DType::F32];

/// The f32 reference of `act(x W^T + b)` for one output and its bound.
fn expect(t: f32, abs: f32, k: usize, out: DType, act: Activation) -> (f64, f64) {
    let t64 = f64::from(t);
    // The bound before the activation, without the final rounding.
    let pre = tolerance(t, abs, k, DType::F32);
    let (v, slope) = match act {
        Activation::Relu => (t64.max(0.0), 1.0),
        Activation::GeluTanh => {
            let c = (2.0 / std::f64::consts::PI).sqrt();
            let v = 0.5 * t64 * (1.0 + (c * (t64 + 0.044715 * t64.powi(3))).tanh());
            // |gelu'| <= 1.13; the f32 evaluation adds a few ulps.
            (v, 1.13)
        }
        _ => (t64, 1.0),
    };
    let tol = slope * pre + 8.0 * 2f64.powi(-24) * v.abs().max(t64.abs());
    let tol = tol + common::unit_roundoff(out) * (v.abs() + tol);
    let tol = tol + common::subnormal_half_spacing(out);
    (v, tol)
}

fn check(
    rng: &mut Rng,
    dt: DType,
    x_dims: (&[usize], usize),
    (k, n): (usize, usize),
    how: How,
    act: Activation,
) -> Result<()> {
    let cpu = &Device::Cpu;
    let w = Tensor::from_vec(rng.values(n * k), (n, k), cpu)?.to_dtype(dt)?;
    let b = Tensor::from_vec(rng.values(n), n, cpu)?;
    let layer = Linear::new(&w, Some(&b))?.with_activation(act);
    assert_eq!((layer.in_features(), layer.out_features()), (k, n));
    assert_eq!(layer.dtype(), dt);
    let (batch, rows) = x_dims;
    let x = make(rng, batch, (rows, k), how, dt)?;
    let y = layer.forward(&x)?;
    let what = format!("{dt:?} {act:?} x {batch:?}x{rows}x{k} {how:?}, n={n}");
    assert_eq!(y.dims(), [batch, &[rows, n]].concat(), "{what}");
    assert_eq!(y.dtype(), dt, "{what}");

    // candle-nn's Linear in f32 on the same values (it broadcasts W^T).
    let w32 = w.to_dtype(DType::F32)?;
    let x32 = x.to_dtype(DType::F32)?.contiguous()?;
    let t = candle_nn::Linear::new(w32.clone(), Some(b.clone())).forward(&x32)?;
    let (_, abs) = reference(
        &x32.abs()?,
        &w32.abs()?.t()?.broadcast_as([batch, &[k, n]].concat())?,
    )?;
    // sum |x||w| + |b|: the bias is one more term of the sum.
    let bias_abs = to_f32(&b.abs()?)?;
    for (i, ((g, t), s)) in to_f32(&y)?.iter().zip(to_f32(&t)?).zip(abs).enumerate() {
        let (v, tol) = expect(t, s + bias_abs[i % n], k + 1, dt, act);
        let err = (f64::from(*g) - v).abs();
        assert!(
            err <= tol,
            "{what}: element {i}: got {g}, expected {v}, error {err:e} > {tol:e}"
        );
    }
    Ok(())
}

#[test]
fn every_type_activation_and_input_layout() -> Result<()> {
    let mut rng = Rng::fresh("every_type_activation_and_input_layout");
    let acts = [Activation::None, Activation::Relu, Activation::GeluTanh];
    let hows = [
        How::Contiguous,
        How::Transposed,
        How::Narrowed,
        How::Permuted,
    ];
    let shapes: [(&[usize], usize); 4] = [(&[], 1), (&[], 7), (&[2], 5), (&[2, 3], 4)];
    for dt in TYPES {
        for act in acts {
            for how in hows {
                for x_dims in shapes {
                    let kn = (1 + rng.below(70), 1 + rng.below(40));
                    check(&mut rng, dt, x_dims, kn, how, act)?;
                }
            }
        }
    }
    Ok(())
}

#[test]
fn decode_and_prefill_sizes() -> Result<()> {
    let mut rng = Rng::fresh("decode_and_prefill_sizes");
    for dt in TYPES {
        check(
            &mut rng,
            dt,
            (&[1], 1),
            (256, 320),
            How::Contiguous,
            Activation::None,
        )?;
        check(
            &mut rng,
            dt,
            (&[1], 80),
            (192, 200),
            How::Contiguous,
            Activation::Relu,
        )?;
    }
    Ok(())
}

#[test]
fn one_packed_layer_many_inputs() -> Result<()> {
    let mut rng = Rng::fresh("one_packed_layer_many_inputs");
    let cpu = &Device::Cpu;
    let (k, n) = (48, 24);
    let w = Tensor::from_vec(rng.values(n * k), (n, k), cpu)?.to_dtype(DType::BF16)?;
    let layer = Linear::new(&w, None)?;
    for rows in [0, 1, 2, 9, 33] {
        let x = Tensor::from_vec(rng.values(rows * k), (rows, k), cpu)?.to_dtype(DType::BF16)?;
        let (r, abs) = reference(&x, &w.t()?)?;
        let what = format!("rows={rows}");
        common::assert_close(
            &to_f32(&layer.forward(&x)?)?,
            (&r, &abs),
            k,
            DType::BF16,
            &what,
        );
    }
    // A rank-1 input is one row.
    let x = Tensor::from_vec(rng.values(k), k, cpu)?.to_dtype(DType::BF16)?;
    assert_eq!(layer.forward(&x)?.dims(), [n]);
    Ok(())
}

#[test]
fn weights_may_be_strided_and_k_zero() -> Result<()> {
    let mut rng = Rng::fresh("weights_may_be_strided_and_k_zero");
    let cpu = &Device::Cpu;
    for dt in TYPES {
        // A transposed, narrowed weight is packed from where it lies.
        let full = Tensor::from_vec(rng.values(40 * 30), (40, 30), cpu)?.to_dtype(dt)?;
        let w = full.narrow(0, 3, 20)?.narrow(1, 1, 25)?.t()?; // [25, 20]: out 25, in 20
        let layer = Linear::new(&w, None)?;
        let x = Tensor::from_vec(rng.values(3 * 20), (3, 20), cpu)?.to_dtype(dt)?;
        let (r, abs) = reference(&x, &w.t()?)?;
        common::assert_close(
            &to_f32(&layer.forward(&x)?)?,
            (&r, &abs),
            20,
            dt,
            "strided w",
        );

        // in_features = 0: the output is act(bias).
        let w0 = Tensor::zeros((3, 0), dt, cpu)?;
        let b = Tensor::new(&[1f32, -2.0, 3.0], cpu)?;
        let layer = Linear::new(&w0, Some(&b))?.with_activation(Activation::Relu);
        let y = layer.forward(&Tensor::zeros((2, 0), dt, cpu)?)?;
        assert_eq!(to_f32(&y)?, [1.0, 0.0, 3.0, 1.0, 0.0, 3.0]);
    }
    Ok(())
}
