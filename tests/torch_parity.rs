//! Whole models against PyTorch: fixtures written by `scripts/torch_fixtures.py` (see
//! tests/fixtures/README.md), loaded through the same checkpoint path users use.

mod common;

use std::path::Path;

use common::ctx;
use wgnn::check::{Tolerance, assert_close};
use wgnn::checkpoint::{StateDict, TensorData, apply_state_dict};
use wgnn::exec::state::HostState;
use wgnn::nn::{CrossEntropyLoss, Flatten, Linear, ReLU, Sequential};
use wgnn::optim::{Adam, Optimizer, Sgd};
use wgnn::{Model, ModelConfig};

/// PyTorch and wgnn agree to this after 50 steps (the bound).
const TOL: Tolerance = Tolerance::new(1e-4, 1e-4);

fn fixture(name: &str) -> StateDict {
    StateDict::read(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .unwrap()
}

/// The entries under `prefix`, as a state_dict file of their own would hold them.
fn sub(sd: &StateDict, prefix: &str) -> StateDict {
    let mut out = StateDict {
        source: format!("{}[{prefix}]", sd.source),
        ..StateDict::default()
    };
    for (k, v) in &sd.tensors {
        if let Some(rest) = k.strip_prefix(prefix)
            && rest.starts_with(|c: char| c.is_ascii_digit())
        {
            out.tensors.insert(rest.to_string(), v.clone());
        }
    }
    out
}

fn floats(sd: &StateDict, key: &str) -> Vec<f32> {
    match &sd.tensors[key].data {
        TensorData::F32(v) => v.clone(),
        TensorData::I64(v) => v.iter().map(|&x| x as f32).collect(),
    }
}

fn batches(sd: &StateDict) -> Vec<(Vec<f32>, Vec<u32>)> {
    (0..4)
        .map(|i| {
            let y = match &sd.tensors[&format!("batch{i}.y")].data {
                TensorData::I64(v) => v.iter().map(|&l| l as u32).collect(),
                TensorData::F32(_) => panic!("labels are int64"),
            };
            (floats(sd, &format!("batch{i}.x")), y)
        })
        .collect()
}

/// A model whose state is the fixture's state_dict under `prefix`, loaded strictly.
fn model_from(sequential: Sequential, optimizer: Optimizer, sd: &StateDict, prefix: &str) -> Model {
    let config = ModelConfig {
        sample_shape: vec![3, 32, 32],
        batch_size: 24,
        seed: 0,
    };
    let mut model = Model::new(
        ctx(),
        sequential.clone(),
        CrossEntropyLoss::new(),
        optimizer,
        config,
    )
    .unwrap();
    // Through a file, as a user's `torch.save`d state_dict would come.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state_dict.safetensors");
    sub(sd, prefix).write(&path).unwrap();
    let current = model.state().unwrap();
    let loaded: HostState = apply_state_dict(
        &StateDict::read(&path).unwrap(),
        &sequential,
        model.graph(),
        &current,
    )
    .unwrap();
    model.load_state(&loaded).unwrap();
    model
}

fn train(model: &mut Model, data: &[(Vec<f32>, Vec<u32>)], steps: usize) -> Vec<f32> {
    model.train();
    (0..steps)
        .map(|k| {
            let (x, y) = &data[k % data.len()];
            model.train_step(x, y).unwrap();
            model.read_metrics().unwrap().last_loss
        })
        .collect()
}

fn compare_state(model: &mut Model, sequential: &Sequential, sd: &StateDict, prefix: &str) {
    let state = model.state().unwrap();
    let mine = wgnn::checkpoint::model_state_dict(model.graph(), &state, "");
    for key in sequential.state_dict_keys() {
        assert_close(
            &key,
            &floats(&mine, &key),
            &floats(sd, &format!("{prefix}{key}")),
            TOL,
        );
    }
}

#[test]
fn lecture_mlp_initial_eval_logits_and_train_loss_match_pytorch() {
    let sd = fixture("lecture_mlp.safetensors");
    let data = batches(&sd);
    let sequential = Sequential::lecture_mlp(3072, 10, 0.0);
    let mut model = model_from(sequential, Optimizer::Sgd(Sgd::default()), &sd, "init.");
    model.eval();
    assert_close(
        "init eval logits",
        &model.predict(&data[0].0).unwrap(),
        &floats(&sd, "init.eval_logits"),
        TOL,
    );
    model.train();
    // A train-mode loss without a step: lr 0 leaves the parameters; the loss is batch 0's.
    model.set_lr(0.0);
    model.reset_metrics();
    model.train_step(&data[0].0, &data[0].1).unwrap();
    let loss = model.read_metrics().unwrap().last_loss;
    assert_close(
        "init train loss",
        &[loss],
        &floats(&sd, "init.train_loss"),
        TOL,
    );
}

#[test]
fn fifty_sgd_momentum_steps_match_pytorch() {
    let sd = fixture("lecture_mlp.safetensors");
    let data = batches(&sd);
    let sequential = Sequential::lecture_mlp(3072, 10, 0.0);
    let sgd = Optimizer::Sgd(Sgd {
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 1e-4,
        ..Sgd::default()
    });
    let mut model = model_from(sequential.clone(), sgd, &sd, "init.");
    let losses = train(&mut model, &data, 50);
    assert_close("sgd losses", &losses, &floats(&sd, "sgd.losses"), TOL);
    compare_state(&mut model, &sequential, &sd, "sgd.");
    let state = model.state().unwrap();
    for (i, p) in model.graph().params.iter().enumerate() {
        assert_close(
            &format!("momentum {}", p.name),
            &state.optimizer[0][i],
            &floats(&sd, &format!("sgd.momentum.{}", p.name)),
            TOL,
        );
    }
    model.eval();
    assert_close(
        "sgd eval logits",
        &model.predict(&data[0].0).unwrap(),
        &floats(&sd, "sgd.eval_logits"),
        TOL,
    );
}

fn adam_model() -> Sequential {
    Sequential::new()
        .append(Flatten)
        .append(Linear::new(3072, 64))
        .append(ReLU)
        .append(Linear::new(64, 32))
        .append(ReLU)
        .append(Linear::new(32, 10))
}

#[test]
fn fifty_adam_adamw_and_amsgrad_steps_match_pytorch() {
    let sd = fixture("adam_mlp.safetensors");
    let data = batches(&fixture("lecture_mlp.safetensors"));
    let sequential = adam_model();
    for (name, optimizer) in [
        (
            "adam",
            Optimizer::Adam(Adam {
                lr: 1e-3,
                ..Adam::default()
            }),
        ),
        (
            "adamw",
            Optimizer::Adam(Adam {
                lr: 1e-3,
                ..Adam::adamw()
            }),
        ),
        (
            "amsgrad",
            Optimizer::Adam(Adam {
                lr: 1e-3,
                betas: (0.9, 0.9),
                amsgrad: true,
                ..Adam::default()
            }),
        ),
    ] {
        let mut model = model_from(sequential.clone(), optimizer, &sd, "init.");
        let losses = train(&mut model, &data, 50);
        assert_close(
            &format!("{name} losses"),
            &losses,
            &floats(&sd, &format!("{name}.losses")),
            TOL,
        );
        compare_state(&mut model, &sequential, &sd, &format!("{name}."));
        // The state PyTorch's fixture holds: Adam's moments, AMSGrad's running maximum.
        let moments: &[(usize, &str)] = match name {
            "adam" => &[(0, "exp_avg"), (1, "exp_avg_sq")],
            "amsgrad" => &[(2, "max_exp_avg_sq")],
            _ => &[],
        };
        let state = model.state().unwrap();
        for (i, p) in model.graph().params.iter().enumerate() {
            for &(k, moment) in moments {
                let want = floats(&sd, &format!("{name}.{moment}.{}", p.name));
                assert_close(
                    &format!("{name} {moment} {}", p.name),
                    &state.optimizer[k][i],
                    &want,
                    TOL,
                );
            }
        }
    }
}
