//! Single ops against PyTorch's own results (tests/fixtures/ops.safetensors, written by
//! scripts/torch_fixtures.py): cross-entropy with weights, ignore_index and smoothing, BCE with
//! logits, BatchNorm1d train/eval/backward and the cumulative average, softmax at ±1e4.

mod common;

use std::path::Path;

use common::ctx;
use wgnn::check::{Tolerance, assert_close};
use wgnn::checkpoint::{StateDict, TensorData};
use wgnn::gpu::GpuTensor;
use wgnn::ops::batchnorm::{BatchNormConfig, ForwardTensors, GpuBatchNorm, RunningStats};
use wgnn::ops::bce::{BceConfig, bce_with_logits};
use wgnn::ops::softmax_xent::{CrossEntropyConfig, Reduction, cross_entropy, softmax};

const TOL: Tolerance = Tolerance::new(1e-5, 1e-5);

fn ops() -> StateDict {
    StateDict::read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ops.safetensors"))
        .unwrap()
}

fn f(sd: &StateDict, key: &str) -> Vec<f32> {
    match &sd.tensors[key].data {
        TensorData::F32(v) => v.clone(),
        TensorData::I64(v) => v.iter().map(|&x| x as f32).collect(),
    }
}

fn shape(sd: &StateDict, key: &str) -> Vec<usize> {
    sd.tensors[key].shape.clone()
}

#[test]
fn cross_entropy_matches_pytorch() {
    let sd = ops();
    let ctx = ctx();
    let logits = GpuTensor::from_slice(
        &ctx,
        &f(&sd, "xent.logits"),
        &shape(&sd, "xent.logits"),
        "logits",
    )
    .unwrap();
    let targets: Vec<i64> = match &sd.tensors["xent.targets"].data {
        TensorData::I64(v) => v.clone(),
        TensorData::F32(_) => panic!("targets are int64"),
    };
    assert!(targets.contains(&-100));
    let weighted = |reduction| CrossEntropyConfig {
        weight: Some(f(&sd, "xent.weight")),
        label_smoothing: 0.1,
        reduction,
        ..CrossEntropyConfig::default()
    };
    for (reduction, key) in [
        (Reduction::Mean, "xent.loss_mean"),
        (Reduction::Sum, "xent.loss_sum"),
        (Reduction::None, "xent.loss_none"),
    ] {
        let (loss, grad) = cross_entropy(&ctx, &logits, &targets, &weighted(reduction)).unwrap();
        assert_close(key, &loss, &f(&sd, key), TOL);
        if reduction == Reduction::Mean {
            assert_close(
                "xent.grad_mean",
                &grad.read(&ctx).unwrap(),
                &f(&sd, "xent.grad_mean"),
                TOL,
            );
        }
    }
    let (loss, grad) =
        cross_entropy(&ctx, &logits, &targets, &CrossEntropyConfig::default()).unwrap();
    assert_close(
        "xent_plain.loss_mean",
        &loss,
        &f(&sd, "xent_plain.loss_mean"),
        TOL,
    );
    assert_close(
        "xent_plain.grad_mean",
        &grad.read(&ctx).unwrap(),
        &f(&sd, "xent_plain.grad_mean"),
        TOL,
    );
}

#[test]
fn bce_with_logits_matches_pytorch() {
    let sd = ops();
    let ctx = ctx();
    let x = f(&sd, "bce.logits");
    let logits = GpuTensor::from_slice(&ctx, &x, &[x.len()], "logits").unwrap();
    let targets = f(&sd, "bce.targets");
    for (prefix, pos_weight) in [("bce", f(&sd, "bce.pos_weight")[0]), ("bce_plain", 1.0)] {
        let (loss, grad) = bce_with_logits(
            &ctx,
            &logits,
            &targets,
            BceConfig {
                pos_weight,
                reduction: Reduction::Mean,
            },
        )
        .unwrap();
        assert_close(
            &format!("{prefix}.loss_mean"),
            &loss,
            &f(&sd, &format!("{prefix}.loss_mean")),
            TOL,
        );
        assert_close(
            &format!("{prefix}.grad_mean"),
            &grad.read(&ctx).unwrap(),
            &f(&sd, &format!("{prefix}.grad_mean")),
            TOL,
        );
        let (none, _) = bce_with_logits(
            &ctx,
            &logits,
            &targets,
            BceConfig {
                pos_weight,
                reduction: Reduction::None,
            },
        )
        .unwrap();
        assert_close(
            &format!("{prefix}.loss_none"),
            &none,
            &f(&sd, &format!("{prefix}.loss_none")),
            TOL,
        );
    }
}

#[test]
fn batch_norm_matches_pytorch_in_train_eval_and_backward() {
    let sd = ops();
    let ctx = ctx();
    let [n, d] = shape(&sd, "bn.x")[..] else {
        panic!()
    };
    let bn = GpuBatchNorm::new(
        &ctx,
        &f(&sd, "bn.weight"),
        &f(&sd, "bn.bias"),
        &RunningStats::new(d),
        BatchNormConfig::default(),
    )
    .unwrap();
    let x = GpuTensor::from_slice(&ctx, &f(&sd, "bn.x"), &[n, d], "x").unwrap();
    let (y, saved) = bn.forward_train(&ctx, &x, false, None, 0).unwrap();
    assert_close("bn.y", &y.read(&ctx).unwrap(), &f(&sd, "bn.y"), TOL);
    let running = bn.running_stats(&ctx).unwrap();
    assert_close(
        "bn.running_mean",
        &running.mean,
        &f(&sd, "bn.running_mean"),
        TOL,
    );
    assert_close(
        "bn.running_var",
        &running.var,
        &f(&sd, "bn.running_var"),
        TOL,
    );
    let dy = GpuTensor::from_slice(&ctx, &f(&sd, "bn.dy"), &[n, d], "dy").unwrap();
    let (dx, dgamma, dbeta) = bn
        .backward(
            &ctx,
            ForwardTensors {
                x: &x,
                y: &y,
                saved: &saved,
            },
            &dy,
            false,
            None,
        )
        .unwrap();
    assert_close(
        "bn.dx",
        &dx.read(&ctx).unwrap(),
        &f(&sd, "bn.dx"),
        Tolerance::new(1e-5, 1e-4),
    );
    assert_close(
        "bn.dweight",
        &dgamma.read(&ctx).unwrap(),
        &f(&sd, "bn.dweight"),
        Tolerance::new(1e-5, 1e-4),
    );
    assert_close(
        "bn.dbias",
        &dbeta.read(&ctx).unwrap(),
        &f(&sd, "bn.dbias"),
        TOL,
    );
    let y_eval = bn.forward_eval(&ctx, &x, false).unwrap();
    assert_close(
        "bn.y_eval",
        &y_eval.read(&ctx).unwrap(),
        &f(&sd, "bn.y_eval"),
        TOL,
    );

    let cma = GpuBatchNorm::new(
        &ctx,
        &[1.0; 6],
        &[0.0; 6],
        &RunningStats::new(6),
        BatchNormConfig {
            momentum: None,
            ..BatchNormConfig::default()
        },
    )
    .unwrap();
    for i in 0..3 {
        let xi =
            GpuTensor::from_slice(&ctx, &f(&sd, &format!("bn_cma.x{i}")), &[13, 6], "x").unwrap();
        cma.forward_train(&ctx, &xi, false, None, 0).unwrap();
    }
    let running = cma.running_stats(&ctx).unwrap();
    assert_eq!(running.num_batches_tracked, 3);
    assert_close(
        "bn_cma.running_mean",
        &running.mean,
        &f(&sd, "bn_cma.running_mean"),
        TOL,
    );
    assert_close(
        "bn_cma.running_var",
        &running.var,
        &f(&sd, "bn_cma.running_var"),
        TOL,
    );
}

#[test]
fn softmax_matches_pytorch_at_plus_minus_1e4() {
    let sd = ops();
    let ctx = ctx();
    let logits = GpuTensor::from_slice(
        &ctx,
        &f(&sd, "softmax.logits"),
        &shape(&sd, "softmax.logits"),
        "logits",
    )
    .unwrap();
    let probs: Vec<f32> = softmax(&ctx, &logits).unwrap().read(&ctx).unwrap();
    assert!(probs.iter().all(|p| p.is_finite()));
    assert_close(
        "softmax.probs",
        &probs,
        &f(&sd, "softmax.probs"),
        Tolerance::new(1e-6, 1e-5),
    );
}
