//! Bad shapes and types are candle errors with a clear message, never
//! panics. (Tensors on another device cannot be made in this build: candle
//! is built without CUDA and Metal, so the CPU check has nothing to reject
//! here; its message names the device.)

use candle_core::{DType, Device, Error, Module, Result, Tensor};
use halfkern_candle::{Linear, MatMul, broadcast_matmul, matmul};

fn t(dims: &[usize], dt: DType) -> Result<Tensor> {
    Tensor::zeros(dims, dt, &Device::Cpu)
}

/// The error's message.
fn message(e: &Error) -> String {
    e.to_string()
}

/// The error under candle's backtrace and context wrappers.
fn inner(e: &Error) -> &Error {
    match e {
        Error::WithBacktrace { inner: i, .. } | Error::Context { inner: i, .. } => inner(i),
        _ => e,
    }
}

#[test]
fn mismatched_shapes() -> Result<()> {
    let bf = DType::BF16;
    let cases = [
        (t(&[2, 3], bf)?, t(&[4, 5], bf)?, "k"),
        (t(&[2, 2, 3], bf)?, t(&[3, 3, 5], bf)?, "batch"),
        (t(&[2, 3], bf)?, t(&[1, 3, 5], bf)?, "rank"),
        (t(&[3], bf)?, t(&[3, 5], bf)?, "rank 1"),
    ];
    for (a, b, what) in cases {
        let e = matmul(&a, &b).expect_err(what);
        assert!(
            matches!(inner(&e), Error::ShapeMismatchBinaryOp { .. }),
            "{what}: {e}"
        );
        assert!(message(&e).contains("halfkern-matmul"), "{what}: {e}");
    }
    // Batch dimensions that do not broadcast, and k that differs.
    assert!(broadcast_matmul(&t(&[2, 4, 3], bf)?, &t(&[3, 3, 5], bf)?).is_err());
    assert!(broadcast_matmul(&t(&[4, 3], bf)?, &t(&[4, 5], bf)?).is_err());
    Ok(())
}

#[test]
fn wrong_and_mixed_types() -> Result<()> {
    for dt in [DType::F64, DType::U32, DType::U8, DType::I64] {
        let e = matmul(&t(&[2, 3], dt)?, &t(&[3, 4], dt)?).expect_err("unsupported type");
        assert!(
            matches!(inner(&e), Error::UnsupportedDTypeForOp(d, _) if *d == dt),
            "{dt:?}: {e}"
        );
    }
    let e = matmul(&t(&[2, 3], DType::BF16)?, &t(&[3, 4], DType::F16)?).expect_err("mixed");
    assert!(
        matches!(inner(&e), Error::DTypeMismatchBinaryOp { .. }),
        "{e}"
    );
    let e = matmul(&t(&[2, 3], DType::F32)?, &t(&[3, 4], DType::BF16)?).expect_err("mixed");
    assert!(
        matches!(inner(&e), Error::DTypeMismatchBinaryOp { .. }),
        "{e}"
    );
    let op = MatMul::new().out_dtype(DType::F64);
    let e = op
        .apply(&t(&[2, 3], DType::F32)?, &t(&[3, 4], DType::F32)?)
        .expect_err("out");
    assert!(
        matches!(inner(&e), Error::UnsupportedDTypeForOp(DType::F64, _)),
        "{e}"
    );
    Ok(())
}

#[test]
fn linear_rejects_bad_layers_and_inputs() -> Result<()> {
    let bf = DType::BF16;
    // Weights: not rank 2, not a supported type; a bias of the wrong length.
    assert!(Linear::new(&t(&[2, 3, 4], bf)?, None).is_err());
    assert!(Linear::new(&t(&[4], bf)?, None).is_err());
    let e = Linear::new(&t(&[4, 3], DType::F64)?, None).expect_err("f64 weight");
    assert!(
        matches!(inner(&e), Error::UnsupportedDTypeForOp(DType::F64, _)),
        "{e}"
    );
    let e = Linear::new(&t(&[4, 3], bf)?, Some(&t(&[3], DType::F32)?)).expect_err("bias");
    assert!(message(&e).contains("bias"), "{e}");
    assert!(Linear::new(&t(&[4, 3], bf)?, Some(&t(&[4, 1], DType::F32)?)).is_err());

    let layer = Linear::new(&t(&[4, 3], bf)?, Some(&t(&[4], bf)?))?;
    // Inputs: the wrong last dimension, the wrong type, a scalar.
    let e = layer.forward(&t(&[2, 5], bf)?).expect_err("in_features");
    assert!(
        matches!(inner(&e), Error::ShapeMismatchBinaryOp { .. }),
        "{e}"
    );
    assert!(message(&e).contains("in_features"), "{e}");
    let e = layer.forward(&t(&[2, 3], DType::F16)?).expect_err("type");
    assert!(
        matches!(inner(&e), Error::DTypeMismatchBinaryOp { .. }),
        "{e}"
    );
    assert!(layer.forward(&t(&[2, 3], DType::F64)?).is_err());
    assert!(
        layer
            .forward(&Tensor::new(1f32, &Device::Cpu)?.to_dtype(bf)?)
            .is_err()
    );
    Ok(())
}
