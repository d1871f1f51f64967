//! `wgnn train --ensemble N` through the binary: each member is the lone run of its seed byte
//! for byte; eval and predict average the members (or take one); a resume, within an epoch or
//! after one, and a kill at every disk operation of a save end as the uninterrupted run; a
//! diverging member is frozen and reported while the others go on as alone; bad input is one
//! line.
//!
//! `WGNN_TEST_BINARY=path` runs these against another build of wgnn.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::cli::*;
use wgnn::checkpoint::{StateDict, TensorData};
use wgnn::data::{LoadOptions, Split, load_with, npy};

/// The breast-cancer CSV (455 training rows, the last 114 held out), as `train_args` reads it.
fn data() -> PathBuf {
    repo("data/breast_cancer.csv")
}

/// `wgnn train` of `train_args` with more flags.
fn train<S: AsRef<str>>(cwd: &Path, out: &str, epochs: &str, extra: &[S]) -> String {
    let extra: Vec<&str> = extra.iter().map(AsRef::as_ref).collect();
    let o = wgnn(cwd, &train_args(out, epochs, &extra));
    assert_ok(&o);
    stdout(&o)
}

/// The number after `prefix` on the line that starts with it, up to the first `%`, space or
/// end.
fn figure(text: &str, prefix: &str) -> String {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in {text}"));
    line.split(['%', ' ', ')']).next().unwrap().to_string()
}

/// A `.npy` file's values.
fn read_npy(path: &Path) -> Vec<f32> {
    npy::load(path).unwrap().data
}

/// Every tensor of an ensemble's training state and members' checkpoints, with its bits, and
/// the figures but the wall-clock ones.
fn ensemble_outcome(dir: &Path, members: usize) -> (Vec<(String, TensorData)>, Vec<String>) {
    let mut files = vec![PathBuf::from("training_state.safetensors")];
    files.extend((0..members).map(|k| {
        Path::new("members")
            .join(k.to_string())
            .join("checkpoint.safetensors")
    }));
    let mut tensors = Vec::new();
    for file in files {
        let sd = StateDict::read(&dir.join(&file)).unwrap();
        tensors.extend(sd.tensors.into_iter().map(|(k, v)| {
            let bits = match v.data {
                TensorData::F32(v) => {
                    TensorData::I64(v.iter().map(|x| i64::from(x.to_bits())).collect())
                }
                other => other,
            };
            (format!("{}:{k}", file.display()), bits)
        }));
    }
    (tensors, metrics_rows(&dir.join("metrics.csv"), 1))
}

/// `metrics.csv`'s rows without the wall-clock columns (`seconds`, `samples_per_second`),
/// whose position depends on the `lead` columns before `epoch`.
fn metrics_rows(path: &Path, lead: usize) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            [&f[..lead + 5], &f[lead + 7..]].concat().join(",")
        })
        .collect()
}

#[test]
fn each_member_is_its_lone_run_byte_for_byte_and_eval_and_predict_average_them() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let every = ["--checkpoint-every", "4"];
    let text = train(
        cwd,
        "ens",
        "2",
        &["--seed", "5", "--ensemble", "3", every[0], every[1]],
    );
    assert!(text.contains("ensemble: 3 members, seeds 5 to 7"), "{text}");
    let ens = cwd.join("ens");
    let ensemble_metrics = metrics_rows(&ens.join("metrics.csv"), 1);
    let mut finals = Vec::new();
    for (k, seed) in (5..8).enumerate() {
        let lone = format!("lone{k}");
        let alone = train(
            cwd,
            &lone,
            "2",
            &["--seed", &seed.to_string(), every[0], every[1]],
        );
        // The file the lone run writes, byte for byte: the same tensors, run, id and save.
        assert_eq!(
            std::fs::read(ens.join(format!("members/{k}/checkpoint.safetensors"))).unwrap(),
            std::fs::read(cwd.join(&lone).join("checkpoint.safetensors")).unwrap(),
            "member {k} against --seed {seed}"
        );
        // Its figures are the lone run's.
        let rows: Vec<String> = ensemble_metrics
            .iter()
            .skip(1)
            .filter_map(|r| r.strip_prefix(&format!("{k},")).map(str::to_string))
            .collect();
        assert_eq!(
            rows,
            metrics_rows(&cwd.join(&lone).join("metrics.csv"), 0)[1..],
            "member {k}"
        );
        let accuracy = figure(&alone, "final test accuracy ");
        assert_eq!(
            figure(&text, &format!("member {k} (seed {seed}): test accuracy ")),
            accuracy
        );
        finals.push(accuracy.parse::<f64>().unwrap());
    }
    // Their mean ± sample std, from the printed figures (two decimals each).
    let mean = finals.iter().sum::<f64>() / 3.0;
    let std = (finals.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / 2.0).sqrt();
    let line = text
        .lines()
        .find(|l| l.starts_with("members: test accuracy "))
        .unwrap();
    let numbers: Vec<f64> = line
        .split(['%', ' ', '±'])
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(
        (numbers[0] - mean).abs() < 0.01 && (numbers[1] - std).abs() < 0.01,
        "{line} vs {mean} ± {std}"
    );
    let trained = figure(&text, "ensemble: test accuracy ");
    assert!(
        text.contains("the mean of 3 members' sigmoid probabilities"),
        "{text}"
    );

    // Evaluated on the held-out rows at the training's batch, the ensemble gives the figure
    // training printed; each member, the figures of its own checkpoint evaluated alone.
    let rows = std::fs::read_to_string(data()).unwrap();
    let mut lines = rows.lines();
    let header = lines.next().unwrap();
    let held: Vec<&str> = lines.collect();
    let test_csv = cwd.join("test.csv");
    std::fs::write(&test_csv, format!("{header}\n{}\n", held[455..].join("\n"))).unwrap();
    let test = test_csv.to_str().unwrap();
    let o = wgnn(
        cwd,
        &[
            "eval",
            "--checkpoint",
            "ens",
            "--data",
            test,
            "--batch-size",
            "50",
        ],
    );
    assert_ok(&o);
    let evaluated = stdout(&o);
    assert_eq!(figure(&evaluated, "accuracy: "), trained, "{evaluated}");
    for k in 0..3 {
        let member = format!("ens/members/{k}");
        let o = wgnn(cwd, &["eval", "--checkpoint", &member, "--data", test]);
        assert_ok(&o);
        let alone = stdout(&o);
        let line = format!(
            "member {k} (seed {}): loss {} accuracy {}%",
            5 + k,
            figure(&alone, "loss: "),
            figure(&alone, "accuracy: ")
        );
        assert!(evaluated.contains(&line), "{line} not in {evaluated}");
        // --member K is that member alone.
        let o = wgnn(
            cwd,
            &[
                "eval",
                "--checkpoint",
                "ens",
                "--member",
                &k.to_string(),
                "--data",
                test,
            ],
        );
        assert_eq!(
            stdout(&o).lines().skip(1).collect::<Vec<_>>(),
            alone.lines().skip(1).collect::<Vec<_>>()
        );
    }

    // predict: --member K writes what the member's checkpoint alone writes, byte for byte;
    // the ensemble's probabilities are the mean of the members', its logits their logit, its
    // classes p̄ > 0.5; and eval's figures of all 569 rows are those of these probabilities.
    let input = data();
    let input = input.to_str().unwrap();
    let mut members = Vec::new();
    for k in 0..3 {
        let (a, b) = (format!("m{k}.npy"), format!("alone{k}.npy"));
        let (k_text, member) = (k.to_string(), format!("ens/members/{k}"));
        let predict = |checkpoint: &str, member: &[&str], output: &str| {
            let mut args = vec!["predict", "--checkpoint", checkpoint, "--input", input];
            args.extend(member);
            args.extend(["--probs", "--output", output]);
            assert_ok(&wgnn(cwd, &args));
        };
        predict("ens", &["--member", &k_text], &a);
        predict(&member, &[], &b);
        assert_eq!(
            std::fs::read(cwd.join(&a)).unwrap(),
            std::fs::read(cwd.join(&b)).unwrap(),
            "member {k}"
        );
        members.push(read_npy(&cwd.join(&a)));
    }
    for (output, probs) in [("p.npy", true), ("z.npy", false)] {
        let mut args = vec![
            "predict",
            "--checkpoint",
            "ens",
            "--input",
            input,
            "--output",
            output,
        ];
        if probs {
            args.push("--probs");
        }
        let o = wgnn(cwd, &args);
        assert_ok(&o);
        assert!(
            stdout(&o).contains("the ensemble of 3 members"),
            "{}",
            stdout(&o)
        );
    }
    let (p, z) = (read_npy(&cwd.join("p.npy")), read_npy(&cwd.join("z.npy")));
    assert_eq!(p.len(), 569);
    let labels = load_with(&data(), Split::Test, &LoadOptions::default())
        .unwrap()
        .labels;
    let (mut correct, mut nll) = (0usize, 0.0f64);
    for i in 0..569 {
        let mean = members.iter().map(|m| f64::from(m[i])).sum::<f64>() / 3.0;
        assert!(
            (f64::from(p[i]) - mean).abs() < 1e-6,
            "row {i}: {} vs {mean}",
            p[i]
        );
        let sigmoid = 1.0 / (1.0 + (-f64::from(z[i])).exp());
        assert!(
            (sigmoid - mean).abs() < 1e-5,
            "row {i}: σ({}) vs {mean}",
            z[i]
        );
        correct += usize::from((mean > 0.5) == (labels[i] == 1));
        nll -= if labels[i] == 1 {
            mean.ln()
        } else {
            (1.0 - mean).ln()
        };
    }
    let o = wgnn(cwd, &["eval", "--checkpoint", "ens", "--data", input]);
    assert_ok(&o);
    let text = stdout(&o);
    assert_eq!(
        figure(&text, "accuracy: "),
        format!("{:.2}", 100.0 * correct as f64 / 569.0),
        "{text}"
    );
    let loss: f64 = figure(&text, "loss: ").parse().unwrap();
    assert!(
        (loss - nll / 569.0).abs() < 1e-5,
        "{loss} vs {}",
        nll / 569.0
    );
}

#[test]
fn an_ensemble_resumes_bit_for_bit_within_an_epoch_and_after_one() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let flags = ["--ensemble", "2", "--checkpoint-every", "4"];
    train(cwd, "whole", "2", &flags);
    let want = ensemble_outcome(&cwd.join("whole"), 2);
    // Stopped at step 13, batch 3 of epoch 2 (a save the whole run does not make).
    let mut stopped = flags.to_vec();
    stopped.extend(["--max-steps", "13"]);
    let text = train(cwd, "within", "2", &stopped);
    assert!(text.contains("stopped at step 13 (--max-steps)"), "{text}");
    let o = resume(cwd, &cwd.join("within"), &["--checkpoint-every", "4"]);
    assert_ok(&o);
    assert!(
        stdout(&o).contains("at step 13: batch 3 of epoch 2 of 2"),
        "{}",
        stdout(&o)
    );
    assert_eq!(ensemble_outcome(&cwd.join("within"), 2), want);
    // One epoch, then a second.
    train(cwd, "after", "1", &flags);
    let o = resume(
        cwd,
        &cwd.join("after"),
        &["--epochs", "2", "--checkpoint-every", "4"],
    );
    assert_ok(&o);
    assert!(stdout(&o).contains("after epoch 1 of 2"), "{}", stdout(&o));
    assert_eq!(ensemble_outcome(&cwd.join("after"), 2), want);
    // A finished run has nothing to train; a fixed flag is refused, naming it.
    let o = resume(cwd, &cwd.join("after"), &[]);
    assert!(stdout(&o).contains("nothing to train"), "{}", stdout(&o));
    for (flag, value) in [("--ensemble", "3"), ("--seed", "1")] {
        let o = resume(cwd, &cwd.join("after"), &["--epochs", "3", flag, value]);
        assert_fails_with(&o, &[flag, "settings it started with"]);
    }
}

#[test]
fn a_kill_at_every_disk_operation_of_an_ensemble_save_resumes_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    // Saves at steps 4, 8, 10 (epoch 1), 14, 18, 20 (epoch 2).
    let flags = ["--ensemble", "2", "--checkpoint-every", "4"];
    train(cwd, "whole", "2", &flags);
    let want = ensemble_outcome(&cwd.join("whole"), 2);
    // Creating --out is operation 1, the members' directories and their fsyncs 2 to 5;
    // each save of 2 members is 5·2 + 14 = 24 (see wgnn::rundir::ensemble), its tenth the
    // commit. The third ends epoch 1 and adds its metrics rows.
    const SAVE: usize = 24;
    for k in 1..=SAVE {
        let dir = cwd.join(format!("k{k}"));
        let at = 5 + 2 * SAVE + k;
        let o = command(cwd, &train_args(dir.to_str().unwrap(), "2", &flags))
            .env(wgnn::durable::FAILPOINT_ENV, at.to_string())
            .stdout(Stdio::null())
            .output()
            .unwrap();
        let said = stderr(&o);
        assert!(
            !o.status.success() && said.contains(&format!("disk operation {at}")),
            "k {k}: {said}"
        );
        if k == 1 {
            assert!(
                said.contains("create") && said.contains(".checkpoint.safetensors.tmp-"),
                "{said}"
            );
        }
        if k == 10 {
            assert!(
                said.contains("rename") && said.contains("training_state.safetensors"),
                "{said}"
            );
        }
        // Between the commit (10) and the last member's rename (14) the members' checkpoints
        // are of two saves, which eval refuses to average; before and after, one save.
        let eval = wgnn(
            cwd,
            &[
                "eval",
                "--checkpoint",
                dir.to_str().unwrap(),
                "--data",
                data().to_str().unwrap(),
            ],
        );
        if (10..14).contains(&k) {
            assert_fails_with(&eval, &["a save was interrupted", "--resume"]);
        } else {
            assert_ok(&eval);
        }
        let o = resume(cwd, &dir, &["--checkpoint-every", "4"]);
        assert_ok(&o);
        assert_eq!(
            ensemble_outcome(&dir, 2),
            want,
            "killed at operation {k} of the third save"
        );
        assert_eq!(
            names(&dir),
            [
                ".wgnn-lock",
                "curves.svg",
                "members",
                "metrics.csv",
                "training_state.safetensors"
            ],
            "k {k}"
        );
        for m in ["0", "1"] {
            assert_eq!(
                names(&dir.join("members").join(m)),
                ["checkpoint.safetensors"],
                "k {k}"
            );
        }
    }
}

#[test]
fn a_diverging_member_is_frozen_and_reported_and_the_others_are_their_lone_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    // One training row holding the largest f32 (training data must be finite), which
    // overflows its batch's variance: a member diverges at the step its shuffle brings that
    // row, if that comes within the run's first 3 steps (batches of 50 of 455 rows).
    let seeds = 0u64..6;
    let first_batches = |seed: u64| -> Vec<usize> {
        let order = wgnn::data::BatchOrder::new(455, 50, Some(seed), false).unwrap();
        order.epoch_batches(0)[..3].concat()
    };
    let row = (0..455)
        .find(|r| {
            let hits = seeds
                .clone()
                .filter(|&s| first_batches(s).contains(r))
                .count();
            (2..=4).contains(&hits)
        })
        .expect("a row some members meet within 3 steps and others do not");
    let mut rows = load_with(&data(), Split::Test, &LoadOptions::default()).unwrap();
    rows.features[row * 30] = f32::MAX;
    let mut sd = StateDict::default();
    sd.tensors.insert(
        "x".into(),
        wgnn::checkpoint::StateTensor::f32(vec![569, 30], rows.features),
    );
    let labels = rows.labels.iter().map(|&l| i64::from(l)).collect();
    sd.tensors.insert(
        "y".into(),
        wgnn::checkpoint::StateTensor::i64(vec![569], labels),
    );
    sd.write(&cwd.join("nan.safetensors")).unwrap();
    let args = |out: &str, extra: &[&str]| {
        let mut a: Vec<String> = [
            "train",
            "--data",
            "nan.safetensors",
            "--loss",
            "bce",
            "--optimizer",
            "adam",
            "--batch-size",
            "50",
            "--normalize",
            "none",
            "--epochs",
            "1",
            "--max-steps",
            "3",
            "--quiet",
            "--out",
            out,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let o = wgnn(cwd, &args("ens", &["--ensemble", "6"]));
    assert_ok(&o);
    let text = stdout(&o);
    for seed in seeds.clone() {
        let k = seed as usize;
        let lone = format!("lone{k}");
        let alone = wgnn(cwd, &args(&lone, &["--seed", &seed.to_string()]));
        let member = cwd.join(format!("ens/members/{k}/checkpoint.safetensors"));
        if first_batches(seed).contains(&row) {
            // The lone run stops at the step the member was frozen at, with no checkpoint.
            let err = stderr(&alone);
            let step = err
                .split("at step ")
                .nth(1)
                .and_then(|s| s.split([' ', ':', ',']).next())
                .unwrap_or_else(|| panic!("{err}"));
            assert!(
                text.contains(&format!("member {k} diverged at step {step} (epoch 1)"))
                    && text.contains("frozen"),
                "{text}\n{err}"
            );
            assert!(!member.exists() && !cwd.join(&lone).join("checkpoint.safetensors").exists());
            let o = wgnn(
                cwd,
                &[
                    "eval",
                    "--checkpoint",
                    "ens",
                    "--member",
                    &k.to_string(),
                    "--data",
                    "nan.safetensors",
                ],
            );
            assert_fails_with(
                &o,
                &[&format!("member {k} diverged before its first checkpoint")],
            );
        } else {
            assert_ok(&alone);
            assert_eq!(
                std::fs::read(&member).unwrap(),
                std::fs::read(cwd.join(&lone).join("checkpoint.safetensors")).unwrap(),
                "member {k}"
            );
        }
    }
    // The ensemble of the others: eval says who is left out.
    let o = wgnn(
        cwd,
        &[
            "eval",
            "--checkpoint",
            "ens",
            "--data",
            data().to_str().unwrap(),
        ],
    );
    assert_ok(&o);
    let text = stdout(&o);
    let left_out = seeds.filter(|&s| first_batches(s).contains(&row)).count();
    assert!(
        text.contains(&format!("ensemble: {} of 6 members", 6 - left_out)),
        "{text}"
    );
    assert_eq!(text.matches("; left out").count(), left_out, "{text}");
}

#[test]
fn init_gives_every_member_the_same_start_as_its_lone_run() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    train(cwd, "base", "1", &[] as &[&str]);
    let init = ["--init", "base"];
    train(
        cwd,
        "ens",
        "1",
        &["--ensemble", "2", "--seed", "3", init[0], init[1]],
    );
    train(cwd, "lone", "1", &["--seed", "4", init[0], init[1]]);
    assert_eq!(
        std::fs::read(cwd.join("ens/members/1/checkpoint.safetensors")).unwrap(),
        std::fs::read(cwd.join("lone/checkpoint.safetensors")).unwrap()
    );
}

#[test]
fn bad_ensembles_and_their_directories_are_one_line_errors_and_lose_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let fails = |out: &str, extra: &[&str], needles: &[&str]| {
        assert_fails_with(&wgnn(cwd, &train_args(out, "1", extra)), needles);
    };
    fails("a", &["--ensemble", "0"], &["--ensemble 0 trains no model"]);
    fails("b", &["--ensemble", "1025"], &["1025 members", "(1024)"]);
    fails(
        "c",
        &["--ensemble", "2", "--seed", "18446744073709551615"],
        &["2^64"],
    );
    let o = wgnn(cwd, &["train", "--ensemble", "abc"]);
    assert!(!o.status.success());

    // An ensemble's directory: refused to a new run, replaced with --overwrite, never with
    // what wgnn did not write in it.
    train(cwd, "ens", "1", &["--ensemble", "2"]);
    let before = std::fs::read(cwd.join("ens/members/1/checkpoint.safetensors")).unwrap();
    fails("ens", &[], &["already holds a run", "members"]);
    let note = cwd.join("ens/members/1/notes.txt");
    std::fs::write(&note, "mine").unwrap();
    fails(
        "ens",
        &["--overwrite"],
        &["notes.txt", "no wgnn run writes"],
    );
    assert_eq!(
        std::fs::read(cwd.join("ens/members/1/checkpoint.safetensors")).unwrap(),
        before
    );
    assert!(cwd.join("ens/training_state.safetensors").exists());
    std::fs::remove_file(&note).unwrap();
    train(cwd, "ens", "1", &["--overwrite"]);
    assert!(!cwd.join("ens/members").exists());
    assert!(cwd.join("ens/checkpoint.safetensors").exists());

    // --member of a single model's run, a member past the ensemble's, predict writing over a
    // member's checkpoint.
    train(cwd, "two", "1", &["--ensemble", "2"]);
    let data = data();
    let data = data.to_str().unwrap();
    let eval = |checkpoint: &str, member: &str| {
        wgnn(
            cwd,
            &[
                "eval",
                "--checkpoint",
                checkpoint,
                "--member",
                member,
                "--data",
                data,
            ],
        )
    };
    assert_fails_with(&eval("ens", "0"), &["single model's run", "--member"]);
    assert_fails_with(
        &eval("two", "2"),
        &["member 2 does not exist", "has 2 (0 to 1)"],
    );
    let o = wgnn(
        cwd,
        &[
            "predict",
            "--checkpoint",
            "two",
            "--input",
            data,
            "--output",
            "two/members/0/checkpoint.safetensors",
        ],
    );
    assert_fails_with(&o, &["which predict reads"]);
    // A member's checkpoint copied in from another run: named, not averaged.
    std::fs::copy(
        cwd.join("ens/checkpoint.safetensors"),
        cwd.join("two/members/1/checkpoint.safetensors"),
    )
    .unwrap();
    assert_fails_with(
        &wgnn(cwd, &["eval", "--checkpoint", "two", "--data", data]),
        &["not member 1 of the ensemble", "run id"],
    );
    assert_fails_with(
        &resume(cwd, &cwd.join("two"), &["--epochs", "2"]),
        &["not member 1", "Move it away"],
    );
}

#[cfg(feature = "mpi")]
#[test]
fn an_ensemble_under_mpirun_with_more_than_one_rank_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let o = std::process::Command::new("mpirun")
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
        .args(["--bind-to", "none", "-np", "2", "-wdir"])
        .arg(tmp.path())
        .arg(binary())
        .args(train_args("ens", "1", &["--ensemble", "2"]))
        .output()
        .expect("mpirun (apt-get install openmpi-bin)");
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains(
            "an ensemble trains its members side by side in one process, but this job has 2"
        ),
        "{err}"
    );
    assert!(!tmp.path().join("ens").exists());
}
