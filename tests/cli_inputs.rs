//! Files from outside are checked inputs, end to end through the binary: crafted checkpoint
//! metadata, a preprocessing file of another run, non-finite transforms, data too wide to
//! whiten, a pipeline cache that is no file; `eval` and `predict` at their own batch,
//! unlabelled CSV, `--output` checked first; `--resume` refusing what the run fixed; and the
//! messages of degenerate data.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use wgnn::checkpoint::{MODEL_FILE, StateDict, TRAINING_FILE, TensorData};
use wgnn::run::{PREPROCESS_FILE, RUN_KEY};

/// The binary under test: this build's, or `WGNN_TEST_BINARY` (another build, such as an
/// earlier one, to see which of its defects the tests catch).
fn binary() -> std::ffi::OsString {
    std::env::var_os("WGNN_TEST_BINARY").unwrap_or_else(|| env!("CARGO_BIN_EXE_wgnn").into())
}

fn command(args: &[&str]) -> Command {
    let mut c = Command::new(binary());
    c.args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_LOG");
    c
}

fn wgnn(args: &[&str]) -> Output {
    command(args).output().expect("wgnn runs")
}

/// Runs wgnn, killing it after `limit`: a hang fails the test instead of stopping the suite.
fn wgnn_within(mut c: Command, limit: Duration) -> Output {
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wgnn runs");
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > limit {
            child.kill().ok();
            let out = child.wait_with_output().expect("output");
            panic!(
                "wgnn still running after {limit:?}; stderr: {}",
                text(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
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

/// Fails with one line and exit code 1, naming every needle.
fn fails_with(o: &Output, needles: &[&str]) -> String {
    let err = text(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(1),
        "stdout: {}\nstderr: {err}",
        text(&o.stdout)
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in {err}");
    }
    err
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// One epoch of the lecture MLP with BCE on the breast-cancer CSV into `out`.
fn train(out: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "train",
        "--data",
        "data/breast_cancer.csv",
        "--loss",
        "bce",
        "--epochs",
        "1",
        "--quiet",
        "--out",
        s(out),
    ];
    args.extend(extra);
    ok(&wgnn(&args))
}

/// Rewrites the run description in `file` (checksums follow, as a careful forger's would).
fn edit_run(file: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut sd = StateDict::read(file).unwrap();
    let mut run: serde_json::Value = serde_json::from_str(&sd.metadata[RUN_KEY]).unwrap();
    edit(&mut run);
    sd.metadata.insert(RUN_KEY.into(), run.to_string());
    sd.write(file).unwrap();
}

fn eval(dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "eval",
        "--checkpoint",
        s(dir),
        "--data",
        "data/breast_cancer.csv",
    ];
    args.extend(extra);
    wgnn(&args)
}

fn predict(dir: &Path, input: &str, output: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "predict",
        "--checkpoint",
        s(dir),
        "--input",
        input,
        "--output",
        s(output),
    ];
    args.extend(extra);
    wgnn(&args)
}

/// The logits a predict wrote to a .safetensors file.
fn logits(path: &Path) -> Vec<f32> {
    match &StateDict::read(path).unwrap().tensors["logits"].data {
        TensorData::F32(v) => v.clone(),
        other => panic!("logits are {other:?}"),
    }
}

#[test]
fn crafted_checkpoint_sizes_are_refused_before_anything_is_allocated() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    train(&dir, &[]);
    let file = dir.join(MODEL_FILE);
    let original = std::fs::read(&file).unwrap();
    // [2^32, 2^32] overflows the sample's size: eval allocated 2^34 bytes and aborted.
    edit_run(&file, |run| {
        run["sample_shape"] = serde_json::json!([1u64 << 32, 1u64 << 32])
    });
    fails_with(
        &eval(&dir, &[]),
        &[s(&file), "sample_shape [4294967296, 4294967296]", "2^32"],
    );
    for shape in [serde_json::json!([]), serde_json::json!([30, 0])] {
        std::fs::write(&file, &original).unwrap();
        edit_run(&file, |run| run["sample_shape"] = shape.clone());
        fails_with(&eval(&dir, &[]), &[s(&file), "holds no values"]);
    }
    // 50,000 layers: refused by count, not handed to the driver.
    std::fs::write(&file, &original).unwrap();
    edit_run(&file, |run| {
        run["arch"] = format!("flatten{}", ",relu".repeat(50_000)).into()
    });
    fails_with(
        &eval(&dir, &[]),
        &[s(&file), "50001 layers; a model has at most 1024"],
    );
    // Per-channel statistics of another shape than the samples'.
    std::fs::write(&file, &original).unwrap();
    edit_run(&file, |run| {
        run["normalization"][0] = serde_json::json!([0.0, 1.0])
    });
    fails_with(&eval(&dir, &[]), &["2 means and 30 stds for 30 channels"]);
    // A class count past u32.
    std::fs::write(&file, &original).unwrap();
    edit_run(&file, |run| run["classes"] = serde_json::json!(1u64 << 40));
    fails_with(&eval(&dir, &[]), &["classes: 1099511627776"]);

    // A training batch of 2^62 in the run a resume reads: refused naming the largest batch.
    let training = dir.join(TRAINING_FILE);
    edit_run(&training, |run| {
        run["batch_size"] = serde_json::json!(1u64 << 62)
    });
    fails_with(
        &wgnn(&["train", "--resume", s(&dir), "--epochs", "2", "--quiet"]),
        &[
            s(&training),
            "batch_size: 4611686018427387904 samples",
            "largest batch that fits",
        ],
    );
}

#[test]
fn eval_and_predict_choose_their_own_batch_whatever_the_training_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    train(&dir, &[]);
    let reference = tmp.path().join("reference.safetensors");
    ok(&predict(&dir, "data/breast_cancer.csv", &reference, &[]));
    let before = logits(&reference);
    // A training batch of 2^62 planned eval's shaders at it ("failed to compile").
    edit_run(&dir.join(MODEL_FILE), |run| {
        run["batch_size"] = serde_json::json!(1u64 << 62)
    });
    let out = ok(&eval(&dir, &[]));
    assert!(out.contains("samples: 569"), "{out}");
    let again = tmp.path().join("again.safetensors");
    ok(&predict(&dir, "data/breast_cancer.csv", &again, &[]));
    assert_eq!(logits(&again), before);
    // Any batch: 7 rows at a time gives the same logits, within rounding of the batch's
    // matmul order (the same kernels, other tiles).
    let small = tmp.path().join("small.safetensors");
    ok(&predict(
        &dir,
        "data/breast_cancer.csv",
        &small,
        &["--batch-size", "7"],
    ));
    for (i, (a, b)) in logits(&small).iter().zip(&before).enumerate() {
        assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "[{i}] {a} vs {b}");
    }
    // A batch past the device's binding is refused naming the largest that fits.
    let huge = (1u64 << 62).to_string();
    fails_with(
        &eval(&dir, &["--batch-size", &huge]),
        &[
            "a batch of 4611686018427387904 samples",
            "largest batch that fits is",
        ],
    );
    fails_with(&eval(&dir, &["--batch-size", "0"]), &["batch size"]);
}

#[test]
fn a_preprocessing_file_of_another_run_or_an_edited_one_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    train(&a, &["--normalize", "pca:5"]);
    // Same option and shape, fitted on another split.
    train(&b, &["--normalize", "pca:5", "--holdout", "0.3"]);
    ok(&eval(&a, &[]));
    let a_file = a.join(PREPROCESS_FILE);
    let original = std::fs::read(&a_file).unwrap();
    std::fs::copy(b.join(PREPROCESS_FILE), &a_file).unwrap();
    let needles = [s(&a_file), s(&a), "another run's preprocessing"];
    fails_with(&eval(&a, &[]), &needles);
    fails_with(
        &wgnn(&["train", "--resume", s(&a), "--epochs", "2", "--quiet"]),
        &[s(&a_file), "another run's preprocessing"],
    );

    // Re-saved by another program without wgnn's checksums, its matrix zeroed.
    let sd = StateDict::from_bytes(&original, &a_file).unwrap();
    let tensor = |name: &str| match &sd.tensors[name].data {
        TensorData::F32(v) => (
            sd.tensors[name].shape.clone(),
            bytemuck::cast_slice::<f32, u8>(v).to_vec(),
        ),
        other => panic!("{other:?}"),
    };
    let (shift_shape, shift) = tensor("shift");
    let (matrix_shape, matrix) = tensor("matrix");
    let zeros = vec![0u8; matrix.len()];
    let resave = |matrix: &[u8]| {
        let views = [
            (
                "shift",
                safetensors::tensor::TensorView::new(
                    safetensors::Dtype::F32,
                    shift_shape.clone(),
                    &shift,
                )
                .unwrap(),
            ),
            (
                "matrix",
                safetensors::tensor::TensorView::new(
                    safetensors::Dtype::F32,
                    matrix_shape.clone(),
                    matrix,
                )
                .unwrap(),
            ),
        ];
        let metadata = std::collections::HashMap::from([("option".to_string(), "pca:5".into())]);
        std::fs::write(
            &a_file,
            safetensors::serialize(views, Some(metadata)).unwrap(),
        )
        .unwrap();
    };
    resave(&zeros);
    fails_with(&eval(&a, &[]), &needles);
    // The same values re-saved are the run's own: its identity, not the checksums, decides.
    resave(&matrix);
    ok(&eval(&a, &[]));

    // A run that recorded no identity (saved before it did) cannot vouch for a file without
    // checksums.
    let checkpoint = a.join(MODEL_FILE);
    edit_run(&checkpoint, |run| {
        run["normalization"]
            .as_object_mut()
            .unwrap()
            .remove("identity");
    });
    fails_with(
        &eval(&a, &[]),
        &[s(&a_file), "carries no checksums", s(&checkpoint)],
    );
    std::fs::write(&a_file, &original).unwrap();
    ok(&eval(&a, &[]));
}

#[test]
fn a_normalization_that_makes_inputs_non_finite_is_refused_at_load() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    train(&dir, &[]);
    // A std of 1e-45 divided every input into ±∞ and predict wrote NaN with exit 0.
    edit_run(&dir.join(MODEL_FILE), |run| {
        run["normalization"][1][3] = serde_json::json!(1e-45)
    });
    let output = tmp.path().join("out.npy");
    fails_with(
        &predict(&dir, "data/breast_cancer.csv", &output, &[]),
        &["normalization", "feature 3 is divided by 1e-45"],
    );
    assert!(!output.exists());
}

#[test]
fn predict_reads_unlabelled_csv_and_eval_and_train_say_they_need_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    train(&dir, &[]);
    // The breast-cancer rows without their "target" column (the last).
    let labelled = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/breast_cancer.csv"),
    )
    .unwrap();
    let features: String = labelled
        .lines()
        .map(|l| format!("{}\n", &l[..l.rfind(',').unwrap()]))
        .collect();
    let unlabelled = tmp.path().join("features.csv");
    std::fs::write(&unlabelled, features).unwrap();
    let reference = tmp.path().join("reference.safetensors");
    ok(&predict(&dir, "data/breast_cancer.csv", &reference, &[]));
    let out = tmp.path().join("out.safetensors");
    // Without `none` the last feature was taken for a label ("bad label").
    ok(&predict(
        &dir,
        s(&unlabelled),
        &out,
        &["--label-column", "none"],
    ));
    assert_eq!(logits(&out), logits(&reference));
    fails_with(
        &wgnn(&[
            "eval",
            "--checkpoint",
            s(&dir),
            "--data",
            s(&unlabelled),
            "--label-column",
            "none",
        ]),
        &["--label-column none reads no labels", "wgnn predict"],
    );
    fails_with(
        &wgnn(&[
            "train",
            "--data",
            "data/breast_cancer.csv",
            "--label-column",
            "none",
            "--quiet",
            "--out",
            s(&tmp.path().join("never")),
        ]),
        &["training needs them"],
    );
}

#[test]
fn predict_checks_its_output_first_and_never_writes_over_what_it_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    train(&dir, &[]);
    let checkpoint = dir.join(MODEL_FILE);
    let bytes = std::fs::read(&checkpoint).unwrap();
    // The checkpoint it reads, named as its file or through a link: refused, untouched.
    fails_with(
        &predict(&dir, "data/breast_cancer.csv", &checkpoint, &[]),
        &["which predict reads", s(&checkpoint)],
    );
    let link = tmp.path().join("link.safetensors");
    std::os::unix::fs::symlink(&checkpoint, &link).unwrap();
    fails_with(
        &predict(&dir, "data/breast_cancer.csv", &link, &[]),
        &["which predict reads"],
    );
    fails_with(
        &predict(
            &dir,
            "data/breast_cancer.csv",
            &dir.join(TRAINING_FILE),
            &[],
        ),
        &["which predict reads"],
    );
    assert_eq!(std::fs::read(&checkpoint).unwrap(), bytes);
    // The input itself.
    let input = tmp.path().join("x.npy");
    std::fs::write(
        &input,
        wgnn::data::npy::encode(&[1, 30], &[0.5; 30], &input).unwrap(),
    )
    .unwrap();
    let input_bytes = std::fs::read(&input).unwrap();
    fails_with(
        &predict(&dir, s(&input), &input, &[]),
        &["which predict reads"],
    );
    assert_eq!(std::fs::read(&input).unwrap(), input_bytes);
    // A directory that is not there, or an output that is one: said before any work (the
    // adapter line is printed only once the output is known to be writable).
    for (output, says) in [
        (
            tmp.path().join("missing/out.npy"),
            "is not a directory to write it in",
        ),
        (tmp.path().join("dir.npy"), "is a directory"),
    ] {
        if says == "is a directory" {
            std::fs::create_dir(&output).unwrap();
        }
        let o = predict(&dir, "data/breast_cancer.csv", &output, &[]);
        fails_with(&o, &[says]);
        assert!(!text(&o.stdout).contains("adapter"), "{}", text(&o.stdout));
    }
    let o = predict(
        &dir,
        "data/breast_cancer.csv",
        &tmp.path().join("out.csv"),
        &[],
    );
    fails_with(&o, &["use a .safetensors or .npy file name"]);
    assert!(!text(&o.stdout).contains("adapter"));
}

#[test]
fn predict_on_no_rows_says_so_and_safetensors_inputs_name_what_they_read() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    train(&dir, &[]);
    let empty = tmp.path().join("empty.npy");
    std::fs::write(
        &empty,
        wgnn::data::npy::encode(&[0, 30], &[], &empty).unwrap(),
    )
    .unwrap();
    let out = tmp.path().join("out.npy");
    fails_with(
        &predict(&dir, s(&empty), &out, &[]),
        &["no rows: there are no samples to predict"],
    );
    // F16 and I32 samples: one message, which offers only what predict reads.
    for (dtype, width) in [(safetensors::Dtype::F16, 2), (safetensors::Dtype::I32, 4)] {
        let input = tmp.path().join(format!("{dtype}.safetensors"));
        let bytes = vec![0u8; 60 * width];
        let view = safetensors::tensor::TensorView::new(dtype, vec![2, 30], &bytes).unwrap();
        std::fs::write(&input, safetensors::serialize([("x", view)], None).unwrap()).unwrap();
        let err = fails_with(
            &predict(&dir, s(&input), &out, &[]),
            &[&format!("{dtype} for tensor \"x\""), "must be F32 or F64"],
        );
        assert!(!err.contains("I32 and U8"), "{err}");
    }
}

#[test]
fn resume_refuses_the_flags_its_run_fixed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    train(&dir, &[]);
    let before = std::fs::read(dir.join(TRAINING_FILE)).unwrap();
    fails_with(
        &wgnn(&[
            "train",
            "--resume",
            s(&dir),
            "--epochs",
            "2",
            "--lr",
            "0.5",
            "--sync-bn",
            "--quiet",
        ]),
        &[s(&dir), "--lr, --sync-bn would change", "--init"],
    );
    // A flag given at its default value is still a flag given.
    fails_with(
        &wgnn(&["train", "--resume", s(&dir), "--batch-size", "32"]),
        &["--batch-size would change"],
    );
    assert_eq!(std::fs::read(dir.join(TRAINING_FILE)).unwrap(), before);
    // What a resume applies goes through.
    let out = ok(&wgnn(&[
        "train",
        "--resume",
        s(&dir),
        "--epochs",
        "2",
        "--quiet",
        "--checkpoint-every",
        "5",
    ]));
    assert!(out.contains("after 2 epochs"), "{out}");
}

#[test]
fn layer_counts_past_the_limit_are_refused_up_front() {
    let tmp = tempfile::tempdir().unwrap();
    // 26,000 ReLUs crashed inside the driver's descriptor allocation.
    let arch = format!("flatten{},linear:2", ",relu".repeat(26_000));
    fails_with(
        &wgnn(&[
            "train",
            "--data",
            "data/breast_cancer.csv",
            "--arch",
            &arch,
            "--quiet",
            "--out",
            s(&tmp.path().join("run")),
        ]),
        &["26002 layers; a model has at most 1024", "characters)"],
    );
}

/// `rows` samples of `features` equal values (labels 0 and 1 alternating) as a CSV.
fn constant_csv(path: &Path, rows: usize, features: usize) {
    let mut text = String::new();
    for r in 0..rows {
        text.push_str(&"0.5,".repeat(features));
        text.push_str(&format!("{}\n", r % 2));
    }
    std::fs::write(path, text).unwrap();
}

fn train_csv(data: &Path, normalize: &str, out: &Path) -> Output {
    wgnn(&[
        "train",
        "--data",
        s(data),
        "--normalize",
        normalize,
        "--epochs",
        "1",
        "--quiet",
        "--out",
        s(out),
    ])
}

#[test]
fn degenerate_data_gets_a_message_that_leads_somewhere() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("constant.csv");
    constant_csv(&data, 12, 4);
    let out = |name: &str| tmp.path().join(name);
    // It suggested pca-whiten:0, which the parser refuses.
    let err = fails_with(
        &train_csv(&data, "pca-whiten:2", &out("a")),
        &["every feature of the training split is constant", "pca:K"],
    );
    assert!(!err.contains("pca-whiten:0"), "{err}");
    // It said "stored preprocessing values: not all finite" at fit time.
    fails_with(
        &train_csv(&data, "zca:1e-300", &out("b")),
        &[
            "zca:",
            "ε = 1e-300 is too small",
            "variance 0e0",
            "larger ε",
        ],
    );
    ok(&train_csv(&data, "zca", &out("c")));
}

/// The chosen adapter's largest storage binding, as `wgnn info` prints it.
fn max_binding_bytes() -> u64 {
    let out = ok(&wgnn(&["info"]));
    let used = out
        .lines()
        .find_map(|l| l.strip_prefix("wgnn uses: "))
        .unwrap();
    let mut lines = out.lines();
    lines.find(|l| used.starts_with(*l)).unwrap();
    lines
        .find_map(|l| l.trim().strip_prefix("max_storage_buffer_binding_size: "))
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn whitening_wider_than_the_device_is_refused_before_fitting() {
    // zca on 40 × 6,000 fitted for 30 s and 1.5 GB on lavapipe, then was refused.
    let limit = max_binding_bytes();
    let features = ((limit / 4) as f64).sqrt() as usize + 1;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("wide.csv");
    let mut text = String::new();
    for r in 0..40 {
        for f in 0..features {
            text.push_str(&format!("{},", (r * 7 + f) % 13));
        }
        text.push_str(&format!("{}\n", r % 2));
    }
    std::fs::write(&data, text).unwrap();
    let matrix = format!("its {features} × {features} f32 matrix");
    fails_with(
        &train_csv(&data, "zca", &tmp.path().join("run")),
        &[
            &format!("zca on 32 samples of {features} features"),
            &matrix,
            &format!("max_storage_buffer_binding_size of {limit} bytes"),
        ],
    );
}

/// The pipeline cache's file that `wgnn info` names under `WGNN_PIPELINE_CACHE=dir`.
/// `None` where wgpu keeps no pipeline cache (every backend but Vulkan).
fn cache_file(dir: &Path) -> Option<PathBuf> {
    let mut c = command(&["info"]);
    c.env("WGNN_PIPELINE_CACHE", dir);
    let out = ok(&c.output().unwrap());
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("pipeline cache: "))
        .unwrap();
    (!line.starts_with("none")).then(|| PathBuf::from(line.split(" (").next().unwrap()))
}

#[test]
fn a_pipeline_cache_that_is_no_regular_file_is_passed_over_without_blocking() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(file) = cache_file(tmp.path()) else {
        eprintln!("skipped: this adapter's backend keeps no pipeline cache (Vulkan only)");
        return;
    };
    fn fifo(p: &Path) {
        assert!(Command::new("mkfifo").arg(p).status().unwrap().success());
    }
    fn dev_zero(p: &Path) {
        std::os::unix::fs::symlink("/dev/zero", p).unwrap();
    }
    type Make = fn(&Path);
    let cases: [(&str, Make); 2] = [("a FIFO", fifo), ("a link to /dev/zero", dev_zero)];
    for (what, make) in cases {
        std::fs::remove_file(&file).ok();
        make(&file);
        let mut c = command(&["info"]);
        c.env("WGNN_PIPELINE_CACHE", tmp.path());
        let o = wgnn_within(c, Duration::from_secs(60));
        let out = ok(&o);
        assert!(out.contains("(0 bytes found"), "{what}: {out}");
        let err = text(&o.stderr);
        assert!(err.contains("not a regular file"), "{what}: {err}");
    }
}
