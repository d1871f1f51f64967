//! Running the `wgnn` binary from tests: the command, its output, the run directory it
//! leaves.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use wgnn::checkpoint::{StateDict, TensorData};

/// The binary under test: `WGNN_TEST_BINARY=path` runs the tests against another build of
/// wgnn (an earlier one, to see which of its defects they catch).
pub fn binary() -> PathBuf {
    std::env::var_os("WGNN_TEST_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_wgnn")))
}

pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// wgnn in `cwd` at the default log level.
pub fn command<S: AsRef<OsStr>>(cwd: &Path, args: &[S]) -> Command {
    let mut c = Command::new(binary());
    c.args(args)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .env_remove(wgnn::durable::FAILPOINT_ENV);
    c
}

pub fn wgnn<S: AsRef<OsStr>>(cwd: &Path, args: &[S]) -> Output {
    command(cwd, args).output().expect("wgnn runs")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
pub fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        stdout(o),
        stderr(o)
    );
}

/// Fails with one line on stderr and exit code 1, holding every needle.
#[track_caller]
pub fn assert_fails_with(o: &Output, needles: &[&str]) {
    assert_eq!(
        o.status.code(),
        Some(1),
        "stdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
    let err = stderr(o);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in {err}");
    }
}

/// `wgnn train` on the breast-cancer CSV (BCE, Adam, batches of 50: 10 steps an epoch).
pub fn train_args(out: &str, epochs: &str, extra: &[&str]) -> Vec<String> {
    let data = repo("data/breast_cancer.csv").display().to_string();
    let mut args: Vec<String> = [
        "train",
        "--data",
        &data,
        "--loss",
        "bce",
        "--optimizer",
        "adam",
        "--epochs",
        epochs,
        "--batch-size",
        "50",
        "--quiet",
        "--out",
        out,
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

pub fn resume(cwd: &Path, dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["train", "--resume", dir.to_str().unwrap(), "--quiet"];
    args.extend_from_slice(extra);
    wgnn(cwd, &args)
}

/// Every tensor of both safetensors files and the figures but the wall-clock ones.
pub fn outcome(dir: &Path) -> (Vec<(String, TensorData)>, Vec<String>) {
    let mut tensors = Vec::new();
    for file in ["checkpoint.safetensors", "training_state.safetensors"] {
        let sd = StateDict::read(&dir.join(file)).unwrap();
        tensors.extend(
            sd.tensors
                .into_iter()
                .map(|(k, v)| (format!("{file}:{k}"), v.data)),
        );
    }
    let metrics = std::fs::read_to_string(dir.join("metrics.csv"))
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            [&f[..5], &f[7..]].concat().join(",")
        })
        .collect();
    (tensors, metrics)
}

pub fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The place a training state holds, as messages name it.
pub fn place_of(dir: &Path) -> (String, String) {
    let m = StateDict::read(&dir.join("training_state.safetensors"))
        .unwrap()
        .metadata;
    let epochs: usize = m["epoch"].parse().unwrap();
    let place = match m.get("batches_done") {
        Some(b) => format!("batch {b} of epoch {}", epochs + 1),
        None => format!("epoch {epochs}"),
    };
    (place, m["step"].clone())
}
