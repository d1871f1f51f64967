//! The `wgnn` command line end to end: train, eval, predict, info, and its errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use wgnn::checkpoint::{StateDict, TensorData};

fn wgnn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wgnn"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("wgnn runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Fails with a one-line message and exit code 1.
fn assert_fails_with(o: &Output, needles: &[&str]) {
    assert_eq!(
        o.status.code(),
        Some(1),
        "stdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
    let err = stderr(o);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in {err}");
    }
}

#[test]
fn binary_training_then_eval_and_predict_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let o = wgnn(&[
        "train",
        "--data",
        "data/breast_cancer.csv",
        "--loss",
        "bce",
        "--epochs",
        "3",
        "--quiet",
        "--out",
        out,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("adapter: "), "{text}");
    assert!(
        text.contains("455 training samples") && text.contains("114 samples"),
        "{text}"
    );
    for f in [
        "checkpoint.safetensors",
        "training_state.safetensors",
        "metrics.csv",
        "curves.svg",
    ] {
        assert!(dir.path().join(f).is_file(), "{f} written");
    }
    let csv = std::fs::read_to_string(dir.path().join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4);
    assert!(csv.starts_with("epoch,train_loss,train_accuracy,test_loss,test_accuracy"));
    let last_acc: f64 = csv
        .lines()
        .last()
        .unwrap()
        .split(',')
        .nth(4)
        .unwrap()
        .parse()
        .unwrap();
    assert!(last_acc > 0.85, "test accuracy after 3 epochs: {last_acc}");
    assert!(
        std::fs::read_to_string(dir.path().join("curves.svg"))
            .unwrap()
            .contains("<svg")
    );

    let o = wgnn(&[
        "eval",
        "--checkpoint",
        out,
        "--data",
        "data/breast_cancer.csv",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("samples: 569")
            && text.contains("accuracy: ")
            && text.contains("confusion matrix"),
        "{text}"
    );
    // The confusion matrix's cells add up to the samples.
    let cells: u64 = text
        .lines()
        .skip_while(|l| !l.starts_with("confusion"))
        .skip(2)
        .flat_map(|l| {
            l.split_whitespace()
                .skip(1)
                .map(|v| v.parse::<u64>().unwrap())
                .collect::<Vec<_>>()
        })
        .sum();
    assert_eq!(cells, 569);

    let npy = dir.path().join("p.npy");
    let o = wgnn(&[
        "predict",
        "--checkpoint",
        out,
        "--input",
        "data/breast_cancer.csv",
        "--output",
        npy.to_str().unwrap(),
        "--probs",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let probs = wgnn::data::npy::load(&npy).unwrap();
    assert_eq!(probs.shape, vec![569, 1]);
    assert!(probs.data.iter().all(|p| (0.0..=1.0).contains(p)));

    let st = dir.path().join("p.safetensors");
    let o = wgnn(&[
        "predict",
        "--checkpoint",
        &format!("{out}/checkpoint.safetensors"),
        "--input",
        "data/breast_cancer.csv",
        "--output",
        st.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let sd = StateDict::read(&st).unwrap();
    assert_eq!(sd.tensors["logits"].shape, vec![569, 1]);
    let (TensorData::F32(logits), TensorData::I64(pred)) =
        (&sd.tensors["logits"].data, &sd.tensors["predictions"].data)
    else {
        panic!()
    };
    for (l, p) in logits.iter().zip(pred) {
        assert_eq!(*p, i64::from(*l > 0.0));
    }
}

#[test]
fn mnist_training_from_a_pytorch_state_dict_with_init() {
    // A checkpoint's state_dict is what PyTorch's model.state_dict() holds: start from it.
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first");
    let o = wgnn(&[
        "train",
        "--epochs",
        "1",
        "--quiet",
        "--out",
        first.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("8000 training samples of shape [1, 28, 28]; test: 2000 samples"));
    let second = dir.path().join("second");
    let o = wgnn(&[
        "train",
        "--epochs",
        "1",
        "--quiet",
        "--init",
        first.to_str().unwrap(),
        "--out",
        second.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("initialized from"));
    let o = wgnn(&[
        "eval",
        "--checkpoint",
        second.to_str().unwrap(),
        "--data",
        repo("data/mnist").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let acc: f64 = stdout(&o)
        .lines()
        .find_map(|l| l.strip_prefix("accuracy: "))
        .unwrap()
        .trim_end_matches('%')
        .parse()
        .unwrap();
    assert!(acc > 90.0, "two epochs reach 90%: {acc}");
}

#[test]
fn user_errors_exit_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    assert_fails_with(
        &wgnn(&["train", "--arch", "flatten,lineer:3", "--out", out]),
        &["token 2", "lineer"],
    );
    assert_fails_with(
        &wgnn(&["train", "--data", "no/such/file.csv", "--out", out]),
        &["no/such/file.csv"],
    );
    assert_fails_with(
        &wgnn(&[
            "train",
            "--arch",
            "flatten,linear:64,relu,linear:3",
            "--epochs",
            "1",
            "--out",
            out,
        ]),
        &["3 outputs", "needs 10"],
    );
    assert_fails_with(
        &wgnn(&["train", "--loss", "bce", "--out", out]),
        &["bce", "10 classes"],
    );
    assert_fails_with(
        &wgnn(&[
            "eval",
            "--checkpoint",
            "tests/fixtures/ops.safetensors",
            "--data",
            "data/mnist",
        ]),
        &["not a wgnn checkpoint"],
    );
    assert_fails_with(
        &wgnn(&[
            "train",
            "--init",
            "tests/fixtures/ops.safetensors",
            "--epochs",
            "1",
            "--out",
            out,
        ]),
        &["missing key(s)", "unexpected key(s)"],
    );
}

#[test]
fn info_lists_the_adapter_and_its_limits() {
    let o = wgnn(&["info"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("max_storage_buffer_binding_size") && text.contains("wgnn uses: "),
        "{text}"
    );
}
