//! The `wgnn` command line end to end: train, eval, predict, info, and its errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use wgnn::checkpoint::{StateDict, TensorData};
use wgnn::data::{Split, embedded, npy};

/// The binary under test: this build's, or `WGNN_TEST_BINARY` (another build, such as an
/// earlier one, to see which of its defects the tests catch).
fn binary() -> std::ffi::OsString {
    std::env::var_os("WGNN_TEST_BINARY").unwrap_or_else(|| env!("CARGO_BIN_EXE_wgnn").into())
}

/// Runs wgnn at the default log level, whatever `RUST_LOG` the tests run under.
fn wgnn(args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_LOG")
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
fn predict_reads_uint8_images_as_the_equivalent_floats() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let o = wgnn(&[
        "train",
        "--max-steps",
        "20",
        "--quiet",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The digits NumPy saved as uint8, and the same digits as the IDX loader reads them.
    let bytes = repo("tests/fixtures/npy/mnist_test_u1.npy");
    let floats = dir.path().join("digits_f4.npy");
    let test = embedded::mnist(Split::Test).unwrap();
    npy::save(&floats, &[8, 1, 28, 28], &test.features[..8 * 784]).unwrap();
    let predict = |input: &Path, name: &str| {
        let out = dir.path().join(name);
        let o = wgnn(&[
            "predict",
            "--checkpoint",
            run.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(stderr(&o), "", "nothing on stderr at the default log level");
        npy::load(&out).unwrap()
    };
    let from_bytes = predict(&bytes, "logits_u1.npy");
    let from_floats = predict(&floats, "logits_f4.npy");
    assert_eq!(from_bytes.shape, vec![8, 10]);
    assert_eq!(from_bytes, from_floats, "the same logits, bit for bit");
}

#[test]
fn the_log_is_quiet_by_default_and_rust_log_opens_it() {
    let o = wgnn(&["info"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stderr(&o), "");
    let o = Command::new(binary())
        .arg("info")
        .env("RUST_LOG", "wgnn=info")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).starts_with("[INFO  wgnn::gpu::context] opened "),
        "{}",
        stderr(&o)
    );
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
        &wgnn(&["train", "--amsgrad", "--out", out]),
        &["--amsgrad", "not sgd"],
    );
    assert_fails_with(
        &wgnn(&["train", "--lr-schedule", "step:0:0.5", "--out", out]),
        &["step_size must be at least 1"],
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

#[test]
fn bench_profile_json_breaks_each_step_down_by_dispatch() {
    let o = wgnn(&["bench", "--profile", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let json: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("one JSON object");
    assert!(json["adapter"].as_str().is_some_and(|a| !a.is_empty()));
    let steps = json["steps"].as_array().unwrap();
    // Train and eval of 784 inputs at batch 128 and 1024, of 3072 inputs at 128, and of 784
    // inputs at batch 32 alone and as stacks of 16 and 64 members.
    assert_eq!(steps.len(), 12);
    let members: Vec<u64> = steps
        .iter()
        .map(|s| s["members"].as_u64().unwrap())
        .collect();
    assert_eq!(members, [1, 1, 1, 1, 1, 1, 1, 1, 16, 16, 64, 64]);
    for step in steps {
        let profile = &step["profile"];
        let dispatches = profile["dispatches"].as_array().unwrap();
        let expected = if step["mode"] == "train" { 10 } else { 5 };
        assert!(dispatches.len() >= expected, "{step}");
        let sum: f64 = dispatches
            .iter()
            .map(|d| d["seconds"].as_f64().unwrap())
            .sum();
        assert!(sum > 0.0 && sum < 10.0, "{step}");
        for key in [
            "encode_seconds",
            "submit_seconds",
            "complete_seconds",
            "gpu_seconds",
        ] {
            let v = profile[key].as_f64().unwrap();
            assert!(v > 0.0 && v < 10.0, "{key} in {step}");
        }
    }
}

/// Metrics rows without the wall-clock columns (seconds, samples/s).
fn metrics_without_timing(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("metrics.csv"))
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            [&f[..5], &f[7..]].concat().join(",")
        })
        .collect()
}

#[test]
fn a_resumed_run_matches_an_uninterrupted_one_bit_for_bit() {
    // SGD with momentum (the default), and AdamW with AMSGrad's third state tensor and a
    // learning rate halved every epoch (the resumed epochs must pick it up from the run).
    resumed_run_matches(&[]);
    resumed_run_matches(&[
        "--optimizer",
        "adamw",
        "--amsgrad",
        "--lr-schedule",
        "step:1:0.5",
    ]);
}

/// `wgnn train` on the breast-cancer CSV (BCE, batches of 50: 10 an epoch) into `out`.
fn train_breast_cancer(out: &Path, epochs: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "train",
        "--data",
        "data/breast_cancer.csv",
        "--loss",
        "bce",
        "--epochs",
        epochs,
        "--batch-size",
        "50",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    wgnn(&args)
}

fn resumed_run_matches(optimizer: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let (whole, split) = (dir.path().join("whole"), dir.path().join("split"));
    let args = |out: &Path, epochs: &str| train_breast_cancer(out, epochs, optimizer);
    assert!(args(&whole, "4").status.success());
    assert!(args(&split, "2").status.success());
    let o = wgnn(&[
        "train",
        "--resume",
        split.to_str().unwrap(),
        "--epochs",
        "4",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("resuming"), "{}", stdout(&o));
    for file in ["checkpoint.safetensors", "training_state.safetensors"] {
        let a = StateDict::read(&whole.join(file)).unwrap();
        let b = StateDict::read(&split.join(file)).unwrap();
        assert_eq!(a.tensors, b.tensors, "{file}: every tensor bit for bit");
        if file == "training_state.safetensors" && optimizer.contains(&"--amsgrad") {
            assert!(
                a.tensors.keys().any(|k| k.contains("max_exp_avg_sq")),
                "{:?}",
                a.tensors.keys().collect::<Vec<_>>()
            );
        }
    }
    assert_eq!(
        metrics_without_timing(&whole),
        metrics_without_timing(&split)
    );
    // Resuming a finished run trains nothing more.
    let o = wgnn(&["train", "--resume", split.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(metrics_without_timing(&split).len(), 5);
}

#[test]
fn a_run_stopped_within_an_epoch_resumes_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let (whole, split) = (dir.path().join("whole"), dir.path().join("split"));
    // 10 batches an epoch: checkpoints within epochs at steps 4, 8, 12 and the stop at 13.
    let train = |out: &Path, extra: &[&str]| train_breast_cancer(out, "3", extra);
    assert!(train(&whole, &[]).status.success());
    let o = train(&split, &["--checkpoint-every", "4", "--max-steps", "13"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("stopped at step 13") && stdout(&o).contains("batch 3 of epoch 2"),
        "{}",
        stdout(&o)
    );
    assert_eq!(metrics_without_timing(&split).len(), 2, "one epoch done");
    let o = wgnn(&["train", "--resume", split.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("batch 3 of epoch 2"), "{}", stdout(&o));
    for file in ["checkpoint.safetensors", "training_state.safetensors"] {
        let a = StateDict::read(&whole.join(file)).unwrap();
        let b = StateDict::read(&split.join(file)).unwrap();
        assert_eq!(a.tensors, b.tensors, "{file}: every tensor bit for bit");
    }
    assert_eq!(
        metrics_without_timing(&whole),
        metrics_without_timing(&split),
        "the interrupted epoch's figures too"
    );
}

#[test]
fn broken_data_files_are_one_line_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p.to_str().unwrap().to_string()
    };
    // An IDX images file with a wrong magic number, and one cut short.
    let bad_magic = write(
        "bad-images-idx3-ubyte",
        &[0, 0, 9, 3, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 2, 1, 2, 3, 4],
    );
    write("bad-labels-idx1-ubyte", &[0, 0, 8, 1, 0, 0, 0, 1, 5]);
    assert_fails_with(
        &wgnn(&["train", "--data", &bad_magic, "--out", out]),
        &["bad-images-idx3-ubyte"],
    );
    let short = write(
        "short-images-idx3-ubyte",
        &[0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2, 1, 2, 3],
    );
    write("short-labels-idx1-ubyte", &[0, 0, 8, 1, 0, 0, 0, 2, 5, 6]);
    assert_fails_with(
        &wgnn(&["train", "--data", &short, "--out", out]),
        &["short-images-idx3-ubyte", "expected 8 bytes, found 3"],
    );
    // A CIFAR-10 batch whose length is not a whole number of records.
    let cifar = write("data_batch_1.bin", &vec![1u8; 3073 + 100]);
    assert_fails_with(
        &wgnn(&["train", "--data", &cifar, "--out", out]),
        &["data_batch_1.bin", "3073"],
    );
    // A CSV row with a missing column, and a label that is not an integer.
    let csv = write("rows.csv", b"a,b,label\n1,2,0\n3,1\n");
    assert_fails_with(
        &wgnn(&["train", "--data", &csv, "--out", out]),
        &["rows.csv line 3", "expected 3 columns, found 2"],
    );
    let csv = write("labels.csv", b"a,b,label\n1,2,0\n3,1,1.5\n");
    assert_fails_with(
        &wgnn(&["train", "--data", &csv, "--out", out]),
        &["labels.csv", "1.5"],
    );
    // A safetensors file with a corrupt header.
    let st = write(
        "data.safetensors",
        b"\x08\x00\x00\x00\x00\x00\x00\x00{bad json",
    );
    assert_fails_with(
        &wgnn(&["train", "--data", &st, "--out", out]),
        &["data.safetensors"],
    );
}

#[test]
fn check_finite_rejects_nan_inputs_naming_sample_and_feature() {
    let dir = tempfile::tempdir().unwrap();
    let mut features = vec![0.5f32; 20 * 3];
    features[7 * 3 + 2] = f32::NAN;
    let labels: Vec<u32> = (0..20).map(|i| i % 2).collect();
    let data = wgnn::data::Dataset::new(features, vec![3], labels, "nan").unwrap();
    let path = dir.path().join("nan.safetensors");
    std::fs::write(&path, wgnn::data::safetensors::encode(&data).unwrap()).unwrap();
    let out = dir.path().join("out");
    let o = wgnn(&[
        "train",
        "--data",
        path.to_str().unwrap(),
        "--check-finite",
        "--normalize",
        "none",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_fails_with(&o, &["sample 7", "feature 2", "not finite"]);
}

#[test]
fn no_matching_adapter_is_a_clear_error() {
    let o = Command::new(binary())
        .args(["train", "--epochs", "1"])
        .env_remove("RUST_LOG")
        .env("WGNN_ADAPTER", "no-such-adapter")
        .output()
        .unwrap();
    assert_fails_with(&o, &["no adapter matches", "no-such-adapter", "available:"]);
    let o = Command::new(binary())
        .args(["info"])
        .env_remove("RUST_LOG")
        .env("WGNN_BACKEND", "glide")
        .output()
        .unwrap();
    assert_fails_with(&o, &["unknown backend", "glide"]);
}

/// A CSV of `rows` rows of three features and a 0/1 label, after `header`, with `sep`
/// between cells and `end` after each line.
fn csv_text(header: &str, rows: usize, sep: &str, end: &str) -> String {
    let mut text = format!("{header}{end}");
    for i in 0..rows {
        let label = i % 2;
        let f = |k: usize| format!("{:.2}", ((i * 7 + k * 3) % 10) as f32 / 10.0 + label as f32);
        text.push_str(&[f(0), f(1), f(2), label.to_string()].join(sep));
        text.push_str(end);
    }
    text
}

/// Trains one epoch on a CSV file of `text` in a fresh directory.
fn train_csv(name: &str, text: &str, extra: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    let out = dir.path().join("run");
    let mut args = vec![
        "train",
        "--data",
        path.to_str().unwrap(),
        "--epochs",
        "1",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    wgnn(&args)
}

#[test]
fn a_header_of_column_indices_as_pandas_writes_it_is_a_header() {
    // pandas' header for an unnamed frame: the column indices. 30 rows, binary labels.
    let o = train_csv("pandas.csv", &csv_text("0,1,2,3", 30, ",", "\n"), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("24 training samples"), "{text}");
    assert!(text.contains("linear:2 (Ce"), "a binary classifier: {text}");
    assert!(
        text.contains("csv: header row (guessed: its numbers are the column indices)")
            && text.contains("--header or --no-header decides"),
        "{text}"
    );
    // Read as data when asked: one more row, and its label 3 makes a fourth class.
    let o = train_csv(
        "pandas.csv",
        &csv_text("0,1,2,3", 30, ",", "\n"),
        &["--no-header"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("25 training samples") && stdout(&o).contains("linear:4 (Ce"));
}

#[test]
fn quoted_fields_as_r_writes_them_are_read() {
    let r = csv_text("\"x, one\",\"x two\",\"x3\",\"label\"", 30, ",", "\n")
        .replace(",0\n", ",\"0\"\n");
    let o = train_csv("r.csv", &r, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("labels in column 3 (\"label\")"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn semicolons_are_read_with_delimiter() {
    let o = train_csv(
        "semi.csv",
        &csv_text("a;b;c;label", 30, ";", "\n"),
        &["--delimiter", ";"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("24 training samples"), "{}", stdout(&o));
}

#[test]
fn a_lone_cr_at_line_ends_ends_lines() {
    let o = train_csv("mac.csv", &csv_text("a,b,c,label", 30, ",", "\r"), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("24 training samples"), "{}", stdout(&o));
}

#[test]
fn an_outlier_label_is_named_instead_of_building_its_classes() {
    let dir = tempfile::tempdir().unwrap();
    for (label, sample) in [("100000", "sample 27"), ("1000000000", "sample 27")] {
        let mut text = csv_text("a,b,c,label", 30, ",", "\n");
        let mut lines: Vec<String> = text.lines().map(String::from).collect();
        let row = &mut lines[28];
        let cut = row.rfind(',').unwrap();
        row.replace_range(cut + 1.., label);
        text = lines.join("\n");
        let path = dir.path().join("outlier.csv");
        std::fs::write(&path, text).unwrap();
        let out = dir.path().join(format!("run-{label}"));
        let o = wgnn(&[
            "train",
            "--data",
            path.to_str().unwrap(),
            "--epochs",
            "1",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_fails_with(&o, &[&format!("label {label}"), sample, "distinct labels"]);
    }
}

#[test]
fn check_finite_names_the_files_own_sample_in_a_held_out_split() {
    let dir = tempfile::tempdir().unwrap();
    let mut features = vec![0.5f32; 20 * 3];
    features[18 * 3 + 1] = f32::INFINITY;
    let labels: Vec<u32> = (0..20).map(|i| i % 2).collect();
    let data = wgnn::data::Dataset::new(features, vec![3], labels, "inf").unwrap();
    let path = dir.path().join("inf.safetensors");
    std::fs::write(&path, wgnn::data::safetensors::encode(&data).unwrap()).unwrap();
    let out = dir.path().join("out");
    let o = wgnn(&[
        "train",
        "--data",
        path.to_str().unwrap(),
        "--check-finite",
        "--normalize",
        "none",
        "--out",
        out.to_str().unwrap(),
    ]);
    // Row 18 of the file, the third of the held-out 20 %.
    assert_fails_with(&o, &["sample 18,", "feature 1", "not finite"]);
}

/// A breast-cancer run of two epochs in `dir/run`.
fn two_epochs(dir: &Path) -> PathBuf {
    let run = dir.join("run");
    let o = wgnn(&[
        "train",
        "--data",
        "data/breast_cancer.csv",
        "--loss",
        "bce",
        "--epochs",
        "2",
        "--quiet",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    run
}

#[test]
fn epochs_zero_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    assert_fails_with(
        &wgnn(&["train", "--epochs", "0", "--out", out.to_str().unwrap()]),
        &["--epochs 0 trains nothing"],
    );
}

#[test]
fn resuming_to_fewer_epochs_than_done_is_refused_and_a_finished_run_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let run = two_epochs(dir.path());
    let r = run.to_str().unwrap();
    let before = std::fs::read(run.join("training_state.safetensors")).unwrap();
    assert_fails_with(
        &wgnn(&["train", "--resume", r, "--epochs", "1"]),
        &["has done 2 epoch(s)", "--epochs 1 would train nothing"],
    );
    let o = wgnn(&["train", "--resume", r]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("nothing to train"), "{}", stdout(&o));
    assert!(!stdout(&o).contains("wrote"), "{}", stdout(&o));
    assert_eq!(
        std::fs::read(run.join("training_state.safetensors")).unwrap(),
        before
    );
}

#[test]
fn predict_refuses_a_batch_size_of_zero_as_eval_does() {
    let dir = tempfile::tempdir().unwrap();
    let run = two_epochs(dir.path());
    let out = dir.path().join("p.npy");
    for command in ["predict", "eval"] {
        let mut args = vec![
            command,
            "--checkpoint",
            run.to_str().unwrap(),
            "--batch-size",
            "0",
        ];
        if command == "predict" {
            args.extend(["--input", "data/breast_cancer.csv", "--output"]);
            args.push(out.to_str().unwrap());
        } else {
            args.extend(["--data", "data/breast_cancer.csv"]);
        }
        assert_fails_with(&wgnn(&args), &["batch size must be at least 1, got 0"]);
    }
}

#[test]
fn a_corrupt_checkpoint_is_named_once() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.safetensors");
    std::fs::write(&bad, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json").unwrap();
    let o = wgnn(&[
        "eval",
        "--checkpoint",
        bad.to_str().unwrap(),
        "--data",
        "data/breast_cancer.csv",
    ]);
    assert_fails_with(&o, &["bad.safetensors"]);
    assert_eq!(
        stderr(&o).matches("bad.safetensors").count(),
        1,
        "{}",
        stderr(&o)
    );
}
