//! The library as a program meets it: a model built and trained with `wgnn::prelude::*`
//! alone, saved with `Model::save` and loaded with `Model::load` in a fresh process, which
//! predicts the same bits; the saved file read by `wgnn eval` and holding PyTorch's
//! state_dict names and shapes with wgnn's metadata; a model's every setting through a save;
//! what a save refuses; a plain state_dict loaded into a model.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use wgnn::prelude::*;

/// Set in the child process of the fresh-process test: the checkpoint it loads.
const LOAD_IN_CHILD: &str = "WGNN_LIBRARY_TEST_CHECKPOINT";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The breast-cancer CSV, its last 20 % held out.
fn splits() -> Splits {
    let source = Source::Path(repo("data/breast_cancer.csv"));
    load_splits(&source, None, 0.2, &LoadOptions::default()).unwrap()
}

/// examples/tabular.rs's model, standardized inside, trained for a few epochs.
fn trained(splits: &Splits) -> Model {
    let train = &splits.train;
    let standardize = Transform::per_channel(&Normalization::fit(train).unwrap(), &[30]);
    let layers = Sequential::new()
        .append(Linear::new(30, 32))
        .append(GELU::new())
        .append(Dropout::new(0.1))
        .append(Linear::new(32, 16))
        .append(Tanh)
        .append(Linear::new(16, 1));
    let config = ModelConfig {
        sample_shape: vec![30],
        batch_size: 32,
        seed: 3,
    };
    let adamw = Optimizer::Adam(Adam::adamw());
    let loss = BCEWithLogitsLoss::new();
    let ctx = GpuContext::new().unwrap();
    let mut model = Model::with_preprocess(ctx, standardize, layers, loss, adamw, config).unwrap();
    let options = FitOptions {
        epochs: 4,
        ..FitOptions::default()
    };
    let history = model.fit(train, &splits.test, &options).unwrap();
    assert!(history[3].test_accuracy > 0.9, "{history:?}");
    model
}

fn bits(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|v| v.to_bits().to_le_bytes())
        .collect()
}

/// Runs this test binary again, as a fresh process, on the one test `name`.
fn rerun(name: &str, env: (&str, &Path)) -> Output {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--test-threads", "1"])
        .env(env.0, env.1)
        .output()
        .unwrap()
}

fn wgnn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wgnn"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

#[test]
fn a_saved_model_predicts_the_same_bits_in_a_fresh_process_and_wgnn_eval_reads_it() {
    let splits = splits();
    let test = &splits.test;
    if let Some(path) = std::env::var_os(LOAD_IN_CHILD) {
        // The fresh process: the file alone rebuilds the model.
        let path = PathBuf::from(path);
        let mut model = Model::load(GpuContext::new().unwrap(), &path).unwrap();
        model.eval();
        let logits = model.predict(&test.features).unwrap();
        std::fs::write(path.with_extension("child"), bits(&logits)).unwrap();
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let mut model = trained(&splits);
    model.save(&path).unwrap();
    model.eval();
    let logits = model.predict(&test.features).unwrap();
    assert_eq!(logits.len(), test.len());

    let child = rerun(
        "a_saved_model_predicts_the_same_bits_in_a_fresh_process_and_wgnn_eval_reads_it",
        (LOAD_IN_CHILD, &path),
    );
    let says = String::from_utf8_lossy(&child.stdout);
    assert!(child.status.success(), "{says}");
    assert!(says.contains("1 passed"), "the child ran the test: {says}");
    let loaded = std::fs::read(path.with_extension("child")).unwrap();
    assert!(
        loaded == bits(&logits),
        "the fresh process predicts other bits"
    );

    // wgnn eval takes the file as it takes a run's checkpoint, raw rows in, and finds the
    // figures the library finds on the whole file at its batch size.
    let o = wgnn(&[
        "eval",
        "--checkpoint",
        path.to_str().unwrap(),
        "--data",
        "data/breast_cancer.csv",
    ]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let all = wgnn::data::load(&repo("data/breast_cancer.csv"), Split::Test).unwrap();
    let e = evaluate(&mut model, &all, 256).unwrap();
    for line in [
        "samples: 569".to_string(),
        format!("loss: {:.6}", e.loss),
        format!("accuracy: {:.2}%", 100.0 * e.accuracy),
    ] {
        assert!(text.contains(&line), "{line:?} not in {text}");
    }
    assert!(e.accuracy > 0.9);
}

#[test]
fn the_saved_file_is_pytorchs_state_dict_with_wgnns_metadata() {
    use wgnn::checkpoint::{StateDict, TensorData};
    use wgnn::run::{LossKind, OptimizerKind, Preprocessing, RunConfig};

    let splits = splits();
    let mut model = trained(&splits);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tabular.safetensors");
    model.save(&path).unwrap();
    let sd = StateDict::read(&path).unwrap();
    // nn.Sequential(Linear(30, 32), GELU(), Dropout(0.1), Linear(32, 16), Tanh(), Linear(16, 1))
    // .state_dict(), which load_state_dict(strict=True) takes (scripts/check_checkpoint.py).
    let shapes: Vec<(&str, &[usize])> = sd
        .tensors
        .iter()
        .map(|(k, t)| (k.as_str(), t.shape.as_slice()))
        .collect();
    let expected: [(&str, &[usize]); 6] = [
        ("0.bias", &[32]),
        ("0.weight", &[32, 30]),
        ("3.bias", &[16]),
        ("3.weight", &[16, 32]),
        ("5.bias", &[1]),
        ("5.weight", &[1, 16]),
    ];
    assert_eq!(shapes, expected);
    assert!(sd.checksummed);
    assert!(
        sd.tensors
            .values()
            .all(|t| t.dtype == "F32" && matches!(t.data, TensorData::F32(_)))
    );
    let state = model.state().unwrap();
    assert_eq!(
        sd.tensors["3.weight"].data,
        TensorData::F32(state.params[2].clone())
    );
    assert_eq!(sd.metadata["format"], "pt");
    assert_eq!(sd.metadata["step"], model.step().to_string());
    let run: RunConfig = serde_json::from_str(&sd.metadata["wgnn.run"]).unwrap();
    assert_eq!(
        run.arch,
        "linear:32,gelu,dropout:0.1,linear:16,tanh,linear:1"
    );
    assert_eq!(run.sample_shape, [30]);
    assert_eq!(
        (run.loss, run.optimizer),
        (LossKind::Bce, OptimizerKind::Adamw)
    );
    assert_eq!(
        (run.lr, run.weight_decay, run.batch_size, run.seed),
        (1e-3, 1e-2, 32, 3)
    );
    let Some(Preprocessing::PerChannel(mean, std)) = &run.normalization else {
        panic!("{:?}", run.normalization);
    };
    let norm = Normalization::fit(&splits.train).unwrap();
    assert_eq!((mean.as_slice(), std.as_slice()), (norm.mean(), norm.std()));
    // Nothing but the checkpoint: the statistics travel in its metadata.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn every_setting_of_a_model_survives_a_save() {
    let layers = Sequential::new()
        .append(Flatten)
        .append(Linear::new(12, 8).without_bias())
        .append(BatchNorm1d::new(8).eps(1e-3).momentum(None))
        .append(LeakyReLU::new(0.2))
        .append(Dropout::new(0.25))
        .append(Linear::new(8, 8))
        .append(BatchNorm1d::new(8).momentum(Some(0.01)))
        .append(GELU::tanh())
        .append(Sigmoid)
        .append(Linear::new(8, 3));
    let loss = CrossEntropyLoss::new()
        .weight(vec![1.0, 2.5, 0.5])
        .ignore_index(2)
        .label_smoothing(0.1);
    let sgd = Optimizer::Sgd(Sgd {
        lr: 0.05,
        momentum: 0.8,
        dampening: 0.0,
        weight_decay: 1e-4,
        nesterov: true,
        maximize: false,
    });
    let config = ModelConfig {
        sample_shape: vec![3, 2, 2],
        batch_size: 6,
        seed: 11,
    };
    let ctx = GpuContext::new().unwrap();
    let mut model = Model::new(ctx, layers, loss, sgd, config).unwrap();
    let x: Vec<f32> = (0..72).map(|i| ((i * 7) % 11) as f32 / 5.0 - 1.0).collect();
    let y = [0, 1, 2, 1, 0, 1];
    for _ in 0..3 {
        model.train_step(&x, &y).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    model.save(dir.path()).unwrap();
    // A directory holds its checkpoint.safetensors, as a run directory does.
    assert!(dir.path().join("checkpoint.safetensors").is_file());
    let mut loaded = Model::load(model.context().clone(), dir.path()).unwrap();
    assert_eq!(loaded.sequential(), model.sequential());
    assert_eq!(loaded.loss(), model.loss());
    assert_eq!(loaded.optimizer(), model.optimizer());
    assert_eq!(loaded.config(), model.config());
    let (before, after) = (model.state().unwrap(), loaded.state().unwrap());
    assert_eq!(
        (&after.params, &after.buffers),
        (&before.params, &before.buffers)
    );
    // The optimizer starts afresh: its state is not in a checkpoint.
    assert_eq!(after.step, 0);
    model.eval();
    loaded.eval();
    assert!(bits(&loaded.predict(&x).unwrap()) == bits(&model.predict(&x).unwrap()));

    // Adam's own options too.
    let adam = Optimizer::Adam(Adam {
        betas: (0.8, 0.95),
        eps: 1e-6,
        amsgrad: true,
        maximize: true,
        ..Adam::default()
    });
    let bce = BCEWithLogitsLoss::new().pos_weight(3.0);
    let layers = Sequential::new().append(Linear::new(4, 1));
    let config = ModelConfig {
        sample_shape: vec![4],
        batch_size: 2,
        seed: 0,
    };
    let mut model = Model::new(model.context().clone(), layers, bce, adam, config).unwrap();
    let path = dir.path().join("adam.safetensors");
    model.save(&path).unwrap();
    let loaded = Model::load(model.context().clone(), &path).unwrap();
    assert_eq!(
        (loaded.loss(), loaded.optimizer()),
        (model.loss(), model.optimizer())
    );
}

#[test]
fn a_save_refuses_a_run_directory_and_another_models_preprocessing() {
    let splits = splits();
    let ctx = std::sync::Arc::new(GpuContext::new().unwrap());
    let pca = |rows: usize| {
        let mut train = splits.train.clone();
        let _ = train.split_off(rows).unwrap();
        let transform = Transform::fit(Preprocess::Pca(5), &train).unwrap().unwrap();
        let layers = Sequential::new().append(Linear::new(5, 1));
        let config = ModelConfig {
            sample_shape: vec![30],
            batch_size: 8,
            seed: 0,
        };
        let sgd = Optimizer::Sgd(Sgd::default());
        let bce = BCEWithLogitsLoss::new();
        Model::with_preprocess(ctx.clone(), transform, layers, bce, sgd, config).unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (
        dir.path().join("a.safetensors"),
        dir.path().join("b.safetensors"),
    );
    let mut a = pca(400);
    a.save(&first).unwrap();
    // The PCA's matrix is no state_dict entry: it goes beside, where wgnn train puts it.
    assert!(dir.path().join("preprocess.safetensors").is_file());
    a.save(&first).unwrap();
    let err = pca(300).save(&second).unwrap_err().to_string();
    assert!(
        err.contains("preprocess.safetensors") && err.contains("another model"),
        "{err}"
    );
    assert!(!second.exists());
    let mut loaded = Model::load(ctx.clone(), &first).unwrap();
    assert_eq!(loaded.preprocess(), a.preprocess());
    a.eval();
    loaded.eval();
    let x = &splits.test.features[..30 * 4];
    assert!(bits(&loaded.predict(x).unwrap()) == bits(&a.predict(x).unwrap()));

    // A run directory's checkpoint goes with its training state.
    let run = tempfile::tempdir().unwrap();
    std::fs::write(run.path().join("training_state.safetensors"), b"a run").unwrap();
    let err = a.save(run.path()).unwrap_err().to_string();
    assert!(err.contains("holds a run of `wgnn train`"), "{err}");
    assert!(!run.path().join("checkpoint.safetensors").exists());
}

#[test]
fn a_plain_state_dict_loads_into_a_model_and_a_wrong_one_is_named() {
    use wgnn::checkpoint::{StateDict, StateTensor};

    let layers = || {
        Sequential::new()
            .append(Linear::new(3, 2))
            .append(ReLU)
            .append(Linear::new(2, 2))
    };
    let config = ModelConfig {
        sample_shape: vec![3],
        batch_size: 2,
        seed: 0,
    };
    let ctx = std::sync::Arc::new(GpuContext::new().unwrap());
    let sgd = Optimizer::Sgd(Sgd::default());
    let mut model = Model::new(
        ctx.clone(),
        layers(),
        CrossEntropyLoss::new(),
        sgd,
        config.clone(),
    )
    .unwrap();
    // As PyTorch's safetensors.torch.save_file(model.state_dict()) writes it: no metadata.
    let mut sd = StateDict::default();
    let values = |n: usize, k: f32| (0..n).map(|i| i as f32 * k).collect::<Vec<_>>();
    sd.tensors.insert(
        "0.weight".into(),
        StateTensor::f32(vec![2, 3], values(6, 0.5)),
    );
    sd.tensors
        .insert("0.bias".into(), StateTensor::f32(vec![2], values(2, -1.0)));
    sd.tensors.insert(
        "2.weight".into(),
        StateTensor::f32(vec![2, 2], values(4, 0.25)),
    );
    sd.tensors
        .insert("2.bias".into(), StateTensor::f32(vec![2], values(2, 2.0)));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("torch.safetensors");
    sd.write(&path).unwrap();
    model.load_state_dict(&path).unwrap();
    let state = model.state().unwrap();
    assert_eq!(state.params[0], values(6, 0.5));
    assert_eq!(state.params[3], values(2, 2.0));
    // It holds no architecture: Model::load says what to do instead.
    let Err(err) = Model::load(ctx.clone(), &path) else {
        panic!("a state_dict without an architecture loaded as a model");
    };
    let err = err.to_string();
    assert!(err.contains("Model::load_state_dict"), "{err}");

    sd.tensors.insert(
        "2.weight".into(),
        StateTensor::f32(vec![3, 2], values(6, 1.0)),
    );
    sd.tensors.remove("0.bias");
    sd.write(&path).unwrap();
    let err = model.load_state_dict(&path).unwrap_err().to_string();
    for needle in [
        path.to_str().unwrap(),
        "missing key(s): \"0.bias\"",
        "size mismatch for 2.weight",
        "[3, 2]",
        "[2, 2]",
    ] {
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }
    // Nothing was loaded.
    assert_eq!(model.state().unwrap().params, state.params);
}
