//! The activations against PyTorch (tests/fixtures/activations*.safetensors, written by
//! scripts/torch_activation_fixtures.py): each op's forward and backward on 424 inputs
//! including ±0, ±1e4, ±3e38, NaN and ±∞, on the GPU and in the CPU reference; and a model
//! using every one of them, its initial logits, loss and gradients, and 5 SGD steps.

mod common;

use std::path::Path;

use common::ctx;
use wgnn::check::{Tolerance, assert_close};
use wgnn::checkpoint::{StateDict, TensorData, apply_state_dict, model_state_dict};
use wgnn::exec::cpu::CpuExecutor;
use wgnn::exec::state::HostState;
use wgnn::gpu::GpuTensor;
use wgnn::graph::Mode;
use wgnn::nn::{
    CrossEntropyLoss, Flatten, GELU, LeakyReLU, Linear, Loss, ReLU, Sequential, Sigmoid, Tanh,
};
use wgnn::ops::activation::{self, Activation, AnyActivation, DerivativeFrom};
use wgnn::optim::{Optimizer, Sgd};
use wgnn::{Model, ModelConfig};

/// Finite values: PyTorch's float32 kernels are within this of a float64 evaluation, and so
/// are wgnn's. NaN and ±∞ must match exactly.
const TOL: Tolerance = Tolerance::new(2e-6, 1e-5);

fn fixture(name: &str) -> StateDict {
    StateDict::read(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .unwrap()
}

fn floats(sd: &StateDict, key: &str) -> Vec<f32> {
    match &sd.tensors[key].data {
        TensorData::F32(v) => v.clone(),
        TensorData::I64(v) => v.iter().map(|&x| x as f32).collect(),
    }
}

/// A fixture case: its key, the activation, and the inputs where PyTorch's result is not
/// the formula's.
type Case = (&'static str, AnyActivation, fn(f32) -> bool);

fn cases() -> Vec<Case> {
    fn none(_: f32) -> bool {
        false
    }
    // Exact GELU: PyTorch's vectorised CPU path gives NaN at +∞ and ∞ at 3e38 (its own
    // scalar path gives the formula's +∞ and 3e38, as wgnn does).
    fn huge_positive(x: f32) -> bool {
        x > 1e30
    }
    vec![
        ("relu", AnyActivation::new(ReLU), none),
        ("sigmoid", AnyActivation::new(Sigmoid), none),
        ("tanh", AnyActivation::new(Tanh), none),
        ("gelu", AnyActivation::new(GELU::new()), huge_positive),
        ("gelu_tanh", AnyActivation::new(GELU::tanh()), none),
        ("leaky_relu", AnyActivation::new(LeakyReLU::default()), none),
        (
            "leaky_relu_0.2",
            AnyActivation::new(LeakyReLU::new(0.2)),
            none,
        ),
    ]
}

fn keep<T: Copy>(values: &[T], x: &[f32], skip: fn(f32) -> bool) -> Vec<T> {
    values
        .iter()
        .zip(x)
        .filter(|(_, x)| !skip(**x))
        .map(|(&v, _)| v)
        .collect()
}

#[test]
fn each_activation_matches_pytorch_forward_and_backward_on_gpu_and_cpu() {
    let sd = fixture("activations.safetensors");
    let ctx = ctx();
    let (x, dy) = (floats(&sd, "x"), floats(&sd, "dy"));
    assert!(x.iter().any(|v| v.is_nan()) && x.contains(&f32::NEG_INFINITY));
    let n = x.len();
    for (case, act, skip) in cases() {
        let (want_y, want_dx) = (
            floats(&sd, &format!("{case}.y")),
            floats(&sd, &format!("{case}.dx")),
        );
        let gx = GpuTensor::from_slice(&ctx, &x, &[n], "x").unwrap();
        let gpu_y: Vec<f32> = activation::forward(&ctx, &*act, &gx)
            .unwrap()
            .read(&ctx)
            .unwrap();
        let cpu_y = activation::reference_forward(&*act, &x);
        // The backward from PyTorch's own input or output, so each direction is checked alone.
        let v = match act.derivative_from() {
            DerivativeFrom::Input => &x,
            DerivativeFrom::Output => &want_y,
        };
        let gv = GpuTensor::from_slice(&ctx, v, &[n], "v").unwrap();
        let gdy = GpuTensor::from_slice(&ctx, &dy, &[n], "dy").unwrap();
        let gpu_dx: Vec<f32> = activation::backward(&ctx, &*act, &gv, &gdy)
            .unwrap()
            .read(&ctx)
            .unwrap();
        let cpu_dx = activation::reference_backward(&*act, v, &dy);

        let kept = |values: &[f32]| keep(values, &x, skip);
        let (want_y, want_dx) = (kept(&want_y), kept(&want_dx));
        assert_close(&format!("{case} GPU forward"), &kept(&gpu_y), &want_y, TOL);
        assert_close(&format!("{case} CPU forward"), &kept(&cpu_y), &want_y, TOL);
        assert_close(
            &format!("{case} GPU backward"),
            &kept(&gpu_dx),
            &want_dx,
            TOL,
        );
        assert_close(
            &format!("{case} CPU backward"),
            &kept(&cpu_dx),
            &want_dx,
            TOL,
        );
    }
}

/// The fixture model: every activation between Linears (indices as in its state_dict).
fn mlp() -> Sequential {
    Sequential::new()
        .append(Flatten)
        .append(Linear::new(12, 16))
        .append(GELU::new())
        .append(Linear::new(16, 16))
        .append(Tanh)
        .append(Linear::new(16, 8))
        .append(Sigmoid)
        .append(Linear::new(8, 8))
        .append(LeakyReLU::new(0.1))
        .append(Linear::new(8, 8))
        .append(GELU::tanh())
        .append(Linear::new(8, 3))
}

fn labels(sd: &StateDict) -> Vec<u32> {
    match &sd.tensors["y"].data {
        TensorData::I64(v) => v.iter().map(|&l| l as u32).collect(),
        TensorData::F32(_) => panic!("labels are int64"),
    }
}

/// The entries under `prefix`, as a state_dict of their own.
fn sub(sd: &StateDict, prefix: &str) -> StateDict {
    let mut out = StateDict {
        source: format!("{}[{prefix}]", sd.source),
        ..StateDict::default()
    };
    for (k, v) in &sd.tensors {
        if let Some(rest) = k.strip_prefix(prefix) {
            out.tensors.insert(rest.to_string(), v.clone());
        }
    }
    out
}

const MODEL_TOL: Tolerance = Tolerance::new(1e-5, 1e-4);

#[test]
fn a_model_with_every_activation_trains_as_in_pytorch() {
    let sd = fixture("activations_mlp.safetensors");
    let (x, y) = (floats(&sd, "x"), labels(&sd));
    let sequential = mlp();
    let sgd = Optimizer::Sgd(Sgd {
        lr: 0.1,
        momentum: 0.9,
        ..Sgd::default()
    });
    let config = ModelConfig {
        sample_shape: vec![12],
        batch_size: 10,
        seed: 0,
    };
    let mut model = Model::new(
        ctx(),
        sequential.clone(),
        CrossEntropyLoss::new(),
        sgd,
        config,
    )
    .unwrap();
    let current = model.state().unwrap();
    let init = apply_state_dict(&sub(&sd, "init."), &sequential, model.graph(), &current).unwrap();
    model.load_state(&init).unwrap();

    model.eval();
    let logits = model.predict(&x).unwrap();
    assert_close(
        "eval logits",
        &logits,
        &floats(&sd, "eval_logits"),
        MODEL_TOL,
    );

    // The CPU reference executor's gradients of the initial loss against PyTorch's .grad.
    let mut cpu = reference(&sequential, sgd, init.clone());
    let out = cpu.run(Mode::Train, &x, &y).unwrap();
    assert_close(
        "train loss",
        &[out.loss],
        &floats(&sd, "train_loss"),
        MODEL_TOL,
    );
    for (p, grad) in cpu.graph.params.iter().zip(&cpu.grads) {
        assert_close(
            &format!("grad of {}", p.name),
            grad,
            &floats(&sd, &format!("grad.{}", p.name)),
            MODEL_TOL,
        );
    }

    // Five SGD-momentum steps on the GPU: the losses and the final parameters.
    model.train();
    let losses: Vec<f32> = (0..5)
        .map(|_| {
            model.train_step(&x, &y).unwrap();
            model.read_metrics().unwrap().last_loss
        })
        .collect();
    assert_close("losses", &losses, &floats(&sd, "losses"), MODEL_TOL);
    let state: HostState = model.state().unwrap();
    let mine = model_state_dict(model.graph(), &state, "");
    for key in sequential.state_dict_keys() {
        assert_close(
            &key,
            &floats(&mine, &key),
            &floats(&sd, &format!("final.{key}")),
            MODEL_TOL,
        );
    }
}

#[test]
fn the_spec_names_every_activation() {
    let model = wgnn::nn::spec::parse(
        "flatten,linear:16,gelu,linear:16,tanh,linear:8,sigmoid,linear:8,leaky_relu:0.1,\
         linear:8,gelu:tanh,linear:3",
        &[12],
    )
    .unwrap();
    assert_eq!(model, mlp());
    assert_eq!(
        wgnn::nn::spec::to_spec(&model),
        "flatten,linear:16,gelu,linear:16,tanh,linear:8,sigmoid,linear:8,leaky_relu:0.1,\
         linear:8,gelu:tanh,linear:3"
    );
    let err = wgnn::nn::spec::parse("flatten,swish,linear:2", &[4]).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("token 2") && msg.contains("gelu[:tanh]") && msg.contains("leaky_relu"),
        "{msg}"
    );
    // The layer types are the activations themselves.
    let layer: wgnn::nn::Layer = GELU::tanh().into();
    assert_eq!(layer.kind(), "GELU");
    assert!(layer.state_names().is_empty());
    let _: &dyn Activation = &LeakyReLU::default();
}

/// `Model::gradients()` after one step from PyTorch's initial parameters: PyTorch's `.grad`
/// of every parameter, and the CPU reference executor's, under state_dict names.
#[test]
fn model_gradients_are_pytorchs_grad() {
    let sd = fixture("activations_mlp.safetensors");
    let (x, y) = (floats(&sd, "x"), labels(&sd));
    let sequential = mlp();
    let sgd = Optimizer::Sgd(Sgd {
        lr: 0.1,
        momentum: 0.9,
        ..Sgd::default()
    });
    let config = ModelConfig {
        sample_shape: vec![12],
        batch_size: 10,
        seed: 0,
    };
    let mut model = Model::new(
        ctx(),
        sequential.clone(),
        CrossEntropyLoss::new(),
        sgd,
        config,
    )
    .unwrap();
    let zeros = model.gradients().unwrap();
    assert!(zeros.iter().all(|(_, g)| g.iter().all(|&v| v == 0.0)));
    let current = model.state().unwrap();
    let init = apply_state_dict(&sub(&sd, "init."), &sequential, model.graph(), &current).unwrap();
    model.load_state(&init).unwrap();
    model.train();
    model.train_step(&x, &y).unwrap();
    let grads = model.gradients().unwrap();
    let names: Vec<&str> = grads.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names[..2], ["1.weight", "1.bias"]);
    let mut cpu = reference(&sequential, sgd, init);
    cpu.run(Mode::Train, &x, &y).unwrap();
    for ((name, g), cpu_grad) in grads.iter().zip(&cpu.grads) {
        let want = floats(&sd, &format!("grad.{name}"));
        assert_close(&format!("GPU grad of {name}"), g, &want, MODEL_TOL);
        assert_close(&format!("CPU grad of {name}"), cpu_grad, &want, MODEL_TOL);
    }
}

/// The CPU reference executor of `sequential` on 12 features, from `state`, at seed 0.
fn reference(sequential: &Sequential, sgd: Optimizer, state: HostState) -> CpuExecutor {
    let build = {
        let sequential = sequential.clone();
        move |rows| wgnn::nn::build(&sequential, &Loss::default(), &sgd, &[12], rows)
    };
    let graph = build(10).unwrap();
    CpuExecutor::new(Box::new(build), graph, state, 0)
}
