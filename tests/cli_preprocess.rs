//! `--normalize` end to end on the embedded MNIST digits: each option trains, its checkpoint
//! evaluates and predicts on raw inputs exactly as the run's last epoch saw them, resumes bit
//! for bit, and the options that cannot work fail with one line naming the value.

use std::path::Path;
use std::process::{Command, Output};

use wgnn::checkpoint::{StateDict, TensorData};

fn wgnn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wgnn"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_LOG")
        .output()
        .expect("wgnn runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "stdout: {}\nstderr: {}",
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stdout)
}

/// The final test accuracy a `wgnn train` printed, e.g. "95.65".
fn final_accuracy(stdout: &str) -> String {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("final test accuracy"))
        .unwrap_or_else(|| panic!("no final line in {stdout}"));
    line.split_whitespace()
        .nth(3)
        .unwrap()
        .trim_end_matches('%')
        .to_string()
}

fn train(out: &Path, normalize: &str, epochs: &str) -> String {
    ok(&wgnn(&[
        "train",
        "--normalize",
        normalize,
        "--epochs",
        epochs,
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]))
}

#[test]
fn every_option_trains_and_its_checkpoint_evaluates_raw_inputs() {
    for (option, file) in [
        ("mean-image", true),
        ("channel-mean", true),
        ("pca:40", true),
        ("pca-whiten:40", true),
        ("zca:0.1", true),
        ("none", false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let stdout = train(dir.path(), option, "1");
        let accuracy = final_accuracy(&stdout);
        assert_eq!(
            dir.path().join("preprocess.safetensors").exists(),
            file,
            "{option}: preprocess.safetensors"
        );
        // checkpoint.safetensors stays PyTorch's state_dict: no preprocessing keys.
        let sd = StateDict::read(&dir.path().join("checkpoint.safetensors")).unwrap();
        assert!(
            sd.tensors
                .keys()
                .all(|k| k.starts_with(|c: char| c.is_ascii_digit()))
        );
        // eval applies the stored transform to the raw test digits: the same accuracy.
        let eval = ok(&wgnn(&[
            "eval",
            "--checkpoint",
            dir.path().to_str().unwrap(),
            "--data",
            "data/mnist",
        ]));
        assert!(
            eval.contains(&format!("accuracy: {accuracy}%")),
            "{option}: trained to {accuracy}%, eval says {eval}"
        );
    }
}

#[test]
fn pca_whitening_trains_the_lecture_mlp_and_predicts_from_raw_pixels() {
    let dir = tempfile::tempdir().unwrap();
    let stdout = train(dir.path(), "pca-whiten:50", "1");
    assert!(
        stdout
            .contains("preprocess: pca-whiten:50 fitted on the training split (784 → 50 features)"),
        "{stdout}"
    );
    // The first Linear takes the 50 components.
    let sd = StateDict::read(&dir.path().join("checkpoint.safetensors")).unwrap();
    assert_eq!(sd.tensors["1.weight"].shape, vec![64, 50]);
    let pre = StateDict::read(&dir.path().join("preprocess.safetensors")).unwrap();
    assert_eq!(pre.tensors["matrix"].shape, vec![50, 784]);
    assert_eq!(pre.tensors["shift"].shape, vec![784]);
    assert!(
        final_accuracy(&stdout).parse::<f32>().unwrap() > 85.0,
        "{stdout}"
    );

    // predict on raw idx digits twice gives the same logits (round trip of the transform).
    let logits = |name: &str| {
        let path = dir.path().join(name);
        ok(&wgnn(&[
            "predict",
            "--checkpoint",
            dir.path().to_str().unwrap(),
            "--input",
            "data/mnist/t10k-images-idx3-ubyte.gz",
            "--output",
            path.to_str().unwrap(),
        ]));
        match &StateDict::read(&path).unwrap().tensors["logits"].data {
            TensorData::F32(v) => v.clone(),
            TensorData::I64(_) => panic!("logits are f32"),
        }
    };
    let first = logits("a.safetensors");
    assert_eq!(first.len(), 2000 * 10);
    assert_eq!(first, logits("b.safetensors"));
}

#[test]
fn a_preprocessed_run_resumes_bit_for_bit() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let whole = train(a.path(), "pca:30", "2");
    train(b.path(), "pca:30", "1");
    let resumed = ok(&wgnn(&[
        "train",
        "--resume",
        b.path().to_str().unwrap(),
        "--epochs",
        "2",
        "--quiet",
    ]));
    assert_eq!(final_accuracy(&whole), final_accuracy(&resumed));
    let weights = |dir: &Path| match &StateDict::read(&dir.join("checkpoint.safetensors"))
        .unwrap()
        .tensors["1.weight"]
        .data
    {
        TensorData::F32(v) => v.clone(),
        TensorData::I64(_) => panic!("weights are f32"),
    };
    assert_eq!(weights(a.path()), weights(b.path()));
}

#[test]
fn impossible_options_fail_with_one_line_naming_the_value() {
    let dir = tempfile::tempdir().unwrap();
    for (option, needles) in [
        // MNIST's border pixels never change: the covariance is singular.
        ("pca-whiten:784", vec!["rank", "pca-whiten:7"]),
        ("pca:785", vec!["785 components", "at most 784"]),
        ("pca:0", vec!["at least 1"]),
        ("zca:-1", vec!["positive"]),
        ("whiten", vec!["expected none, mean-image"]),
    ] {
        let o = wgnn(&[
            "train",
            "--normalize",
            option,
            "--epochs",
            "1",
            "--quiet",
            "--out",
            dir.path().to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(1), "{option}: {}", text(&o.stdout));
        let err = text(&o.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{option}: {err}");
        for n in needles {
            assert!(err.contains(n), "{option}: {n:?} not in {err}");
        }
    }
}
