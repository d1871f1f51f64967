//! The run directory through the command line: a kill at every disk operation of a save, a
//! mixed or stale directory, two writers, another run in --out, --out that
//! cannot be a run directory, corrupted and non-finite checkpoints, divergence.
//!
//! `WGNN_TEST_BINARY=path` runs these against another build of wgnn (an earlier one, to see
//! which of its defects they catch).

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::cli::*;
use wgnn::checkpoint::{StateDict, TensorData};

#[test]
fn a_kill_at_every_disk_operation_of_a_save_resumes_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    // Saves at steps 4, 8, 10 (epoch 1), 14, 18, 20 (epoch 2).
    let extra = ["--checkpoint-every", "4"];
    let whole = cwd.join("whole");
    assert_ok(&wgnn(
        cwd,
        &train_args(whole.to_str().unwrap(), "2", &extra),
    ));
    let want = outcome(&whole);
    // Creating --out is operation 1; each save is 18 (see wgnn::rundir). The third save
    // ends epoch 1 and adds its metrics row.
    for k in 1..=18 {
        let dir = cwd.join(format!("k{k}"));
        let at = 1 + 2 * 18 + k;
        let o = command(cwd, &train_args(dir.to_str().unwrap(), "2", &extra))
            .env(wgnn::durable::FAILPOINT_ENV, at.to_string())
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(
            !o.status.success() && stderr(&o).contains(&format!("disk operation {at}")),
            "k {k}: {:?} {}",
            o.status,
            stderr(&o)
        );
        let o = resume(cwd, &dir, &[]);
        assert_ok(&o);
        assert_eq!(
            outcome(&dir),
            want,
            "killed at operation {k} of the third save"
        );
        assert_eq!(
            names(&dir),
            [
                ".wgnn-lock",
                "checkpoint.safetensors",
                "curves.svg",
                "metrics.csv",
                "training_state.safetensors"
            ],
            "k {k}"
        );
    }
}

#[test]
fn a_checkpoint_ahead_of_its_training_state_is_not_mixed_with_it() {
    // What a kill between the two renames of a save leaves when the checkpoint goes first:
    // the checkpoint of step 8 beside the training state of step 4, of the same run.
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let whole = cwd.join("whole");
    assert_ok(&wgnn(cwd, &train_args(whole.to_str().unwrap(), "2", &[])));
    let split = cwd.join("split");
    let s = split.to_str().unwrap();
    assert_ok(&wgnn(cwd, &train_args(s, "2", &["--max-steps", "4"])));
    let behind = std::fs::read(split.join("training_state.safetensors")).unwrap();
    assert_ok(&resume(cwd, &split, &["--max-steps", "8"]));
    std::fs::write(split.join("training_state.safetensors"), behind).unwrap();
    let o = resume(cwd, &split, &[]);
    assert_ok(&o);
    assert!(stdout(&o).contains("at step 4"), "{}", stdout(&o));
    assert_eq!(outcome(&split), outcome(&whole));
}

#[test]
fn a_metrics_row_lost_in_a_kill_is_written_again_on_resume() {
    // A kill after the training state's rename and before metrics.csv's, at an epoch end.
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let whole = cwd.join("whole");
    assert_ok(&wgnn(cwd, &train_args(whole.to_str().unwrap(), "2", &[])));
    let split = cwd.join("split");
    assert_ok(&wgnn(cwd, &train_args(split.to_str().unwrap(), "1", &[])));
    let metrics = split.join("metrics.csv");
    let header = std::fs::read_to_string(&metrics).unwrap();
    std::fs::write(&metrics, header.lines().next().unwrap()).unwrap();
    assert_ok(&resume(cwd, &split, &["--epochs", "2"]));
    assert_eq!(outcome(&split), outcome(&whole));
}

#[test]
fn resume_removes_the_temp_files_of_a_killed_save() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let dir = cwd.join("run");
    assert_ok(&wgnn(cwd, &train_args(dir.to_str().unwrap(), "1", &[])));
    let stale = dir.join(".training_state.safetensors.tmp-99999");
    std::fs::write(&stale, b"half a file").unwrap();
    let o = resume(cwd, &dir, &["--epochs", "2"]);
    assert_ok(&o);
    assert!(!stale.exists(), "{:?}", names(&dir));
    assert!(stdout(&o).contains("removed 1 temp file"), "{}", stdout(&o));
}

#[test]
fn a_checkpoint_copied_in_from_another_run_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let (a, b) = (cwd.join("a"), cwd.join("b"));
    assert_ok(&wgnn(cwd, &train_args(a.to_str().unwrap(), "1", &[])));
    assert_ok(&wgnn(
        cwd,
        &train_args(b.to_str().unwrap(), "1", &["--seed", "3"]),
    ));
    std::fs::copy(
        b.join("checkpoint.safetensors"),
        a.join("checkpoint.safetensors"),
    )
    .unwrap();
    assert_fails_with(
        &resume(cwd, &a, &["--epochs", "2"]),
        &["belongs to another run"],
    );
}

/// The first byte at which two files differ, if any.
fn first_difference(a: &Path, b: &Path) -> Option<usize> {
    let (a, b) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    (a != b).then(|| {
        a.iter()
            .zip(&b)
            .position(|(x, y)| x != y)
            .unwrap_or(a.len().min(b.len()))
    })
}

fn run_id(dir: &Path) -> String {
    let sd = StateDict::read(&dir.join("training_state.safetensors")).unwrap();
    sd.metadata["wgnn.run_id"].clone()
}

#[test]
fn identical_runs_write_identical_files_in_any_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let [a, b, c, d] = ["a", "b", "c", "d"].map(|n| cwd.join(n));
    // The lecture MLP with dropout, saves within epochs as well as at their ends.
    let every = ["--checkpoint-every", "7"];
    for dir in [&a, &b] {
        assert_ok(&wgnn(cwd, &train_args(dir.to_str().unwrap(), "2", &every)));
    }
    let files = ["checkpoint.safetensors", "training_state.safetensors"];
    for file in files {
        let differ = first_difference(&a.join(file), &b.join(file));
        assert_eq!(
            differ, None,
            "{file} of two identical runs differs at that byte"
        );
    }
    // Stopped after one epoch and resumed for a second: the same run, the same files.
    assert_ok(&wgnn(cwd, &train_args(c.to_str().unwrap(), "1", &every)));
    assert_ok(&resume(
        cwd,
        &c,
        &["--epochs", "2", "--checkpoint-every", "7"],
    ));
    for file in files {
        let differ = first_difference(&a.join(file), &c.join(file));
        assert_eq!(differ, None, "{file} of a resumed run differs at that byte");
    }
    // The training state keeps no wall-clock figure; metrics.csv keeps them, also those of
    // the epoch done before the resume.
    let metrics = std::fs::read_to_string(c.join("metrics.csv")).unwrap();
    let seconds: Vec<f64> = metrics
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(5).unwrap().parse().unwrap())
        .collect();
    assert!(
        seconds.len() == 2 && seconds.iter().all(|&s| s > 0.0),
        "{metrics}"
    );
    // Another seed: another run, by settings and initial state, on the same data.
    assert_ok(&wgnn(
        cwd,
        &train_args(d.to_str().unwrap(), "2", &["--seed", "1"]),
    ));
    let (ours, theirs) = (run_id(&a), run_id(&d));
    let parts = |id: &str| id.split('-').map(str::to_string).collect::<Vec<_>>();
    let (ours, theirs) = (parts(&ours), parts(&theirs));
    assert_eq!(ours.len(), 3, "{ours:?}");
    assert_ne!(ours[0], theirs[0]);
    assert_eq!(ours[1], theirs[1]);
    assert_ne!(ours[2], theirs[2]);
}

#[test]
fn out_holding_another_run_is_refused_unless_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let dir = cwd.join("run");
    let d = dir.to_str().unwrap();
    assert_ok(&wgnn(cwd, &train_args(d, "1", &[])));
    let before = std::fs::read(dir.join("checkpoint.safetensors")).unwrap();
    // Another loss and another data set into the same directory.
    let o = wgnn(cwd, &["train", "--max-steps", "3", "--quiet", "--out", d]);
    assert_fails_with(&o, &["already holds a run", "--overwrite", "--resume"]);
    assert!(
        !stdout(&o).contains("plan:"),
        "refused before building anything"
    );
    assert_eq!(
        std::fs::read(dir.join("checkpoint.safetensors")).unwrap(),
        before
    );
    let o = wgnn(
        cwd,
        &[
            "train",
            "--max-steps",
            "3",
            "--quiet",
            "--out",
            d,
            "--overwrite",
        ],
    );
    assert_ok(&o);
    assert!(stdout(&o).contains("removed the run"), "{}", stdout(&o));
    assert!(stdout(&o).contains("8000 training samples"));
}

#[test]
fn without_out_each_run_gets_its_own_directory_and_latest_points_at_it() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    for n in ["1", "2"] {
        let o = wgnn(cwd, &["train", "--max-steps", "3", "--quiet"]);
        assert_ok(&o);
        assert!(
            stdout(&o).contains(&format!("run directory: runs/{n}")),
            "{}",
            stdout(&o)
        );
    }
    for n in ["1", "2"] {
        assert!(
            cwd.join("runs")
                .join(n)
                .join("checkpoint.safetensors")
                .is_file()
        );
    }
    assert_eq!(
        std::fs::read_link(cwd.join("runs/latest")).unwrap(),
        Path::new("2")
    );
    // --resume runs/latest continues the newest.
    let o = resume(cwd, Path::new("runs/latest"), &["--max-steps", "5"]);
    assert_ok(&o);
    assert!(stdout(&o).contains("at step 3"), "{}", stdout(&o));
}

#[test]
fn out_is_checked_before_the_first_step() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let file = cwd.join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let o = wgnn(cwd, &train_args(file.to_str().unwrap(), "1", &[]));
    assert_fails_with(&o, &["a-file", "not a directory"]);
    assert!(!stdout(&o).contains("epoch"), "{}", stdout(&o));
    // A place nobody can write, not even root.
    let o = wgnn(cwd, &train_args("/proc/wgnn-run", "1", &[]));
    assert_fails_with(&o, &["/proc/wgnn-run", "cannot write"]);
    assert!(!stdout(&o).contains("epoch"), "{}", stdout(&o));
}

#[test]
fn a_second_writer_of_one_directory_fails_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let dir = cwd.join("run");
    let d = dir.to_str().unwrap();
    // A run long enough to be running still: the embedded digits for 100 epochs.
    let mut first = command(
        cwd,
        &[
            "train",
            "--epochs",
            "100",
            "--checkpoint-every",
            "20",
            "--quiet",
            "--out",
            d,
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    // Wait until it holds the directory and has saved once.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !dir.join("training_state.safetensors").exists() {
        assert!(
            first.try_wait().unwrap().is_none(),
            "the first run ended early"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the first run started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let start = std::time::Instant::now();
    let o = wgnn(cwd, &["train", "--epochs", "1", "--quiet", "--out", d]);
    assert_fails_with(
        &o,
        &[
            "in use by another wgnn process",
            &format!("pid {}", first.id()),
        ],
    );
    assert!(start.elapsed().as_secs() < 20, "at once");
    let o = resume(cwd, &dir, &[]);
    assert_fails_with(&o, &["in use"]);
    // The first is still running, and a kill -9 of it leaves a run that resumes.
    assert!(first.try_wait().unwrap().is_none(), "still training");
    first.kill().unwrap();
    first.wait().unwrap();
    let o = resume(cwd, &dir, &["--epochs", "1"]);
    assert!(
        o.status.success() || stderr(&o).contains("--epochs 1 would train nothing"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn an_exploding_learning_rate_stops_training_at_its_step() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let dir = cwd.join("run");
    let d = dir.to_str().unwrap();
    let o = wgnn(
        cwd,
        &[
            "train",
            "--lr",
            "1e20",
            "--max-steps",
            "30",
            "--quiet",
            "--out",
            d,
        ],
    );
    assert_fails_with(&o, &["at step", "diverged"]);
}

#[test]
fn an_update_that_overflows_a_parameter_stops_training_naming_it() {
    // An infinite learning rate: the loss of step 0 is finite, its update is not.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let o = wgnn(
        tmp.path(),
        &[
            "train",
            "--lr",
            "1e39",
            "--max-steps",
            "5",
            "--quiet",
            "--out",
            dir.to_str().unwrap(),
        ],
    );
    assert_fails_with(&o, &["the update at step 0 left", ".weight[", "non-finite"]);
}

#[test]
fn a_checkpoint_kept_going_past_divergence_warns_and_is_refused_by_eval() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let dir = cwd.join("run");
    let d = dir.to_str().unwrap();
    let o = wgnn(
        cwd,
        &[
            "train",
            "--lr",
            "1e20",
            "--max-steps",
            "30",
            "--quiet",
            "--keep-going",
            "--out",
            d,
        ],
    );
    assert_ok(&o);
    assert!(
        stderr(&o).contains("warning:") && stderr(&o).contains("non-finite"),
        "{}",
        stderr(&o)
    );
    let mnist = repo("data/mnist");
    let o = wgnn(
        cwd,
        &["eval", "--checkpoint", d, "--data", mnist.to_str().unwrap()],
    );
    assert_fails_with(&o, &["non-finite", "checkpoint.safetensors"]);
}

/// A breast-cancer model, for eval and predict.
fn trained(cwd: &Path) -> PathBuf {
    let dir = cwd.join("model");
    assert_ok(&wgnn(cwd, &train_args(dir.to_str().unwrap(), "2", &[])));
    dir
}

#[test]
fn a_flipped_bit_in_a_tensor_is_refused_naming_file_and_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let dir = trained(cwd);
    let file = dir.join("checkpoint.safetensors");
    let good = std::fs::read(&file).unwrap();
    let data = repo("data/breast_cancer.csv");
    let eval = || {
        wgnn(
            cwd,
            &[
                "eval",
                "--checkpoint",
                dir.to_str().unwrap(),
                "--data",
                data.to_str().unwrap(),
            ],
        )
    };
    assert_ok(&eval());
    // A flipped bit in the middle of the tensors.
    let mut bad = good.clone();
    let header = u64::from_le_bytes(bad[..8].try_into().unwrap()) as usize;
    let at = 8 + header + (bad.len() - 8 - header) / 2;
    bad[at] ^= 0x04;
    std::fs::write(&file, &bad).unwrap();
    assert_fails_with(
        &eval(),
        &["checkpoint.safetensors", "tensor \"", "checksum"],
    );
}

#[test]
fn an_edited_normalization_mean_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let dir = trained(cwd);
    let file = dir.join("checkpoint.safetensors");
    let good = std::fs::read(&file).unwrap();
    let header = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let data = repo("data/breast_cancer.csv");
    let eval = || {
        wgnn(
            cwd,
            &[
                "eval",
                "--checkpoint",
                dir.to_str().unwrap(),
                "--data",
                data.to_str().unwrap(),
            ],
        )
    };
    // One digit of the normalization's first mean, in the header's JSON.
    let mut edited = good.clone();
    let text = String::from_utf8_lossy(&edited[8..8 + header]).into_owned();
    let mean = text.find("normalization").unwrap();
    let digit = mean
        + text[mean..]
            .find(|c: char| c.is_ascii_digit() && c != '0')
            .unwrap();
    edited[8 + digit] = if edited[8 + digit] == b'1' {
        b'2'
    } else {
        b'1'
    };
    std::fs::write(&file, &edited).unwrap();
    assert_fails_with(&eval(), &["checkpoint.safetensors", "metadata", "checksum"]);
}

#[test]
fn an_infinite_input_gives_nan_logits_as_pytorch() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let dir = trained(cwd);
    // An infinite feature: the fused Linear-ReLU and BatchNorm-ReLU pass NaN on, as
    // PyTorch's ReLU does, instead of a normal-looking logit.
    let data = wgnn::data::load(&repo("data/breast_cancer.csv"), wgnn::data::Split::Test).unwrap();
    let mut x = data.features[..4 * 30].to_vec();
    x[30 + 3] = f32::INFINITY;
    let input = cwd.join("x.npy");
    wgnn::data::npy::save(&input, &[4, 30], &x).unwrap();
    let output = cwd.join("logits.npy");
    let predict = |checkpoint: &Path| {
        wgnn(
            cwd,
            &[
                "predict",
                "--checkpoint",
                checkpoint.to_str().unwrap(),
                "--input",
                input.to_str().unwrap(),
                "--output",
                output.to_str().unwrap(),
            ],
        )
    };
    assert_ok(&predict(&dir));
    let logits = wgnn::data::npy::load(&output).unwrap().data;
    assert!(logits[1].is_nan(), "{logits:?}");
    assert!(
        [0, 2, 3].iter().all(|&i| logits[i].is_finite()),
        "{logits:?}"
    );
}

#[test]
fn a_checkpoint_with_a_nan_parameter_is_refused_by_eval_and_predict() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let dir = trained(cwd);
    // A NaN in 1.weight, in a file whose checksums say nothing is wrong.
    let file = dir.join("checkpoint.safetensors");
    let mut sd = StateDict::read(&file).unwrap();
    let TensorData::F32(w) = &mut sd.tensors.get_mut("1.weight").unwrap().data else {
        panic!("1.weight is f32")
    };
    w[7] = f32::NAN;
    sd.write(&file).unwrap();
    let data = repo("data/breast_cancer.csv");
    let output = cwd.join("p.npy");
    let d = dir.to_str().unwrap();
    let o = wgnn(
        cwd,
        &[
            "predict",
            "--checkpoint",
            d,
            "--input",
            data.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ],
    );
    assert_fails_with(&o, &["non-finite", "1.weight[7]"]);
    let o = wgnn(
        cwd,
        &["eval", "--checkpoint", d, "--data", data.to_str().unwrap()],
    );
    assert_fails_with(&o, &["non-finite", "1.weight[7]"]);
}
