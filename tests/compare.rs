//! `wgnn compare` end to end on tiny experiments: every (variant, seed, epoch) row in the
//! CSV, the SVG written, a diverged variant reported (not hidden), a bad file's one-line error
//! naming the key; one writer per directory; another experiment's results, a changed
//! experiment and a `wgnn train` run refused unless --overwrite; every variant checked before
//! the first step; `--replot` saying what is missing and refusing what is no results file.
//! (A kill at every disk operation of a compare: tests/faults.rs.)
//!
//! `WGNN_TEST_BINARY=path` runs these against another build of wgnn (an earlier one, to see
//! which of its defects they catch).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn binary() -> PathBuf {
    std::env::var_os("WGNN_TEST_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_wgnn")))
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// wgnn in `cwd`, killed (and the test failed) if it runs past `limit`.
fn wgnn_in<S: AsRef<OsStr>>(cwd: &Path, args: &[S], limit: Duration) -> Output {
    let mut child = Command::new(binary())
        .args(args)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .env_remove(wgnn::durable::FAILPOINT_ENV)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wgnn runs");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "wgnn {:?} ran past {limit:?}",
                args.iter()
                    .map(|a| a.as_ref().to_owned())
                    .collect::<Vec<_>>()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn wgnn<S: AsRef<OsStr>>(args: &[S]) -> Output {
    wgnn_in(
        Path::new(env!("CARGO_MANIFEST_DIR")),
        args,
        Duration::from_secs(300),
    )
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[track_caller]
fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "{}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
}

/// Fails with one line on stderr and exit code 1, holding every needle.
#[track_caller]
fn assert_fails_with(o: &Output, needles: &[&str]) {
    let err = text(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(1),
        "stdout: {}\nstderr: {err}",
        text(&o.stdout)
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in {err}");
    }
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// An experiment on the breast-cancer CSV (BCE, 455 training rows in batches of 256: two
/// steps an epoch), `name` and `seeds` as given, then `body`.
fn tiny(dir: &Path, file: &str, name: &str, seeds: &str, body: &str) -> PathBuf {
    let path = dir.join(file);
    let data = repo("data/breast_cancer.csv");
    std::fs::write(
        &path,
        format!(
            "name = \"{name}\"\nseeds = {seeds}\n[base]\ndata = {:?}\nloss = \"bce\"\nepochs = 2\n\
             batch-size = 256\narch = \"linear:8,relu,linear:1\"\n{body}",
            s(&data)
        ),
    )
    .unwrap();
    path
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn a_tiny_experiment_writes_every_row_the_curves_and_the_divergence() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tiny.toml");
    std::fs::write(
        &file,
        r#"
name = "tiny"
seeds = [3, 4]
target_accuracy = 0.9
measure = ["gradient-signs"]
[base]
epochs = 2
arch = "flatten,linear:16,relu,linear:10"
[grid]
normalize = ["none", "mean-image"]
lr = { ok = 0.02, huge = 1e6 }
"#,
    )
    .unwrap();
    let out = dir.path().join("out");
    let o = wgnn(&["compare", s(&file), "--out", s(&out)]);
    assert_ok(&o);
    let stdout = text(&o.stdout);
    assert!(stdout.contains("[  8/8]"), "{stdout}");
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "variant,seed,epoch,train_loss,train_accuracy,test_loss,test_accuracy,diverged,single_signed_share"
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    // The working variants: 2 × 2 seeds × 2 epochs rows, with the measure filled in.
    for normalize in ["none", "mean-image"] {
        let name = format!("normalize={normalize} lr=ok");
        let ok: Vec<_> = rows.iter().filter(|r| r[0] == name).collect();
        assert_eq!(ok.len(), 4, "{name}: {csv}");
        for r in &ok {
            assert_eq!(r[7], "0");
            let acc: f64 = r[6].parse().unwrap();
            assert!(acc > 0.5 && acc <= 1.0, "{r:?}");
            let share: f64 = r[8].parse().unwrap();
            // Raw pixels are all ≥ 0: every neuron's per-sample gradient is single-signed;
            // centred inputs have both signs, so almost none is.
            if normalize == "none" {
                assert_eq!(share, 1.0, "{r:?}");
            } else {
                assert!(share < 0.05, "{r:?}");
            }
        }
    }
    // The diverging variant is reported, one row per seed, flagged.
    let huge: Vec<_> = rows.iter().filter(|r| r[0].ends_with("lr=huge")).collect();
    assert!(huge.iter().any(|r| r[7] == "1"), "{csv}");
    assert!(stdout.contains("diverged in epoch"), "{stdout}");
    assert!(stdout.contains("| normalize=none lr=huge |"), "{stdout}");
    let svg = std::fs::read_to_string(out.join("curves.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("normalize=mean-image lr=ok"));
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(summary.contains("| variant |"), "{summary}");
    assert!(!summary.contains("incomplete"), "{summary}");
    // Each run keeps its own run directory, whose checkpoint `wgnn eval` reads.
    let run = out.join("runs/1-seed3");
    assert!(run.join("checkpoint.safetensors").exists() && run.join("result.csv").exists());
}

#[test]
fn a_bad_experiment_file_fails_with_one_line_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    // 8 keys × 10 values: 10^8 variants, refused from their count, in well under a second
    // of work (expanding them took 4 GB and ended in SIGABRT).
    let mut huge = "name = \"x\"\nseeds = [0]\n[grid]\n".to_string();
    for key in [
        "epochs",
        "batch-size",
        "lr",
        "momentum",
        "weight-decay",
        "label-smoothing",
        "pos-weight",
        "label-column",
    ] {
        huge.push_str(&format!("{key} = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n"));
    }
    for (body, says) in [
        (
            "name = \"x\"\nseeds = [0]\n[base]\nlearning_rate = 0.1\n".to_string(),
            "`learning_rate`",
        ),
        (
            "name = \"x\"\nseeds = [0]\n[base]\nepochs = \"many\"\n".into(),
            "many",
        ),
        ("name = \"x\"\n[base]\nepochs = 1\n".into(), "`seeds`"),
        (
            "name = \"x\"\nseeds = [0]\nmeasure = [\"gradient-signs\"]\n[base]\nepochs = 1\n"
                .into(),
            "batch norm",
        ),
        (
            "name = \"x\"\nseeds = [0]\n[base]\nepochs = 0\n".into(),
            "`epochs` = 0 must be a whole number of at least 1",
        ),
        (
            "name = \"x\"\nseeds = [1, 2, 1]\n".into(),
            "`seeds` lists 1 twice",
        ),
        (
            "name = \"x\"\nseeds = [0]\n[base]\nname = \"y\"\n".into(),
            "[base]: `name` is not a setting",
        ),
        (
            "name = \"..\"\nseeds = [0]\n".into(),
            "`name` = \"..\" holds `..`",
        ),
        ("name = \"../x\"\nseeds = [0]\n".into(), "path separator"),
        (
            "name = \"x\"\nseeds = [0]\n[[variant]]\nname = \"a\\nb\"\n".into(),
            "holds a line break",
        ),
        (
            "name = \"x\"\nseeds = [0]\n[base]\nlr = -0.1\n".into(),
            "`lr` = -0.1 must be a finite number of at least 0",
        ),
        (
            huge,
            "100000000 variant(s) × 1 seed(s) = 100000000 runs, over the limit of 10000",
        ),
    ] {
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, &body).unwrap();
        let o = wgnn_in(dir.path(), &["compare", s(&file)], Duration::from_secs(60));
        assert_fails_with(&o, &[says, "bad.toml"]);
        // Nothing was trained or written (at most the directory was locked).
        let out = dir.path().join("runs/compare/x");
        assert!(
            !out.join("runs").exists() && !out.join("results.csv").exists(),
            "{body}"
        );
    }
}

#[test]
fn leading_dashes_in_values_are_values() {
    let dir = tempfile::tempdir().unwrap();
    for (setting, says) in [
        ("arch = \"--help\"", "`arch`"),
        ("label-column = \"-1\"", "`label-column`"),
    ] {
        let file = tiny(
            dir.path(),
            "dash.toml",
            "dash",
            "[0]",
            &format!("[[variant]]\nname = \"v\"\n{setting}\n"),
        );
        let o = wgnn(&["compare", s(&file), "--out", s(&dir.path().join("out"))]);
        assert_fails_with(&o, &["variant \"v\"", says]);
        let err = text(&o.stderr);
        assert!(
            !err.contains("unexpected argument") && !err.contains("Usage"),
            "{err}"
        );
    }
}

#[test]
fn a_grid_value_replaces_the_base_value_as_format_md_says() {
    let dir = tempfile::tempdir().unwrap();
    // [base] lr and [grid] lr, as in FORMAT.md's example: the grid's value is the variant's.
    let file = tiny(
        dir.path(),
        "e.toml",
        "e",
        "[0]",
        "lr = 0.02\n[grid]\nlr = [0.1, 0.5]\n[[variant]]\nname = \"adam\"\noptimizer = \"adam\"\nlr = 0.001\n",
    );
    let out = dir.path().join("out");
    let o = wgnn(&["compare", s(&file), "--out", s(&out)]);
    assert_ok(&o);
    for (run, lr) in [("1-seed0", "0.1"), ("2-seed0", "0.5"), ("3-seed0", "0.001")] {
        let sd = wgnn::checkpoint::StateDict::read(
            &out.join("runs").join(run).join("checkpoint.safetensors"),
        )
        .unwrap();
        let config: serde_json::Value = serde_json::from_str(&sd.metadata["wgnn.run"]).unwrap();
        assert_eq!(config["lr"].to_string(), lr, "{run}");
        assert_eq!(config["epochs"], 2, "{run}");
    }
}

#[test]
fn every_variant_is_checked_before_the_first_step() {
    let dir = tempfile::tempdir().unwrap();
    for (setting, says) in [
        ("lr = nan", "`lr` = nan must be a finite number"),
        ("arch = \"linear:8,relu,bogus,linear:1\"", "`arch`"),
        ("normalize = \"pca:100\"", "`normalize`"),
        ("data = \"data/breast_cancr.csv\"", "`data`"),
        (
            "arch = \"linear:8,bn,relu,linear:1\"\nbatch-size = 454",
            "`batch-size`",
        ),
        ("lr-schedule = \"step:0\"", "`lr-schedule`"),
    ] {
        // The first variant is fine; the last one's mistake stops everything before it trains.
        let file = tiny(
            dir.path(),
            "e.toml",
            "e",
            "[0]",
            &format!("[[variant]]\nname = \"good\"\n[[variant]]\nname = \"bad one\"\n{setting}\n"),
        );
        let out = dir.path().join("out");
        let o = wgnn(&["compare", s(&file), "--out", s(&out)]);
        assert_fails_with(&o, &["e.toml", "\"bad one\"", says]);
        assert!(!text(&o.stdout).contains("[  1/"), "{}", text(&o.stdout));
        assert!(!out.join("runs").exists() && !out.join("results.csv").exists());
    }
    // The batch-norm measure is refused for the variant that has batch norm, naming it.
    let file = tiny(
        dir.path(),
        "m.toml",
        "m",
        "[0]",
        "[[variant]]\nname = \"plain\"\n[[variant]]\nname = \"with bn\"\narch = \"linear:8,bn,relu,linear:1\"\n",
    );
    let text_now = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, format!("measure = [\"gradient-signs\"]\n{text_now}")).unwrap();
    let o = wgnn(&["compare", s(&file), "--out", s(&dir.path().join("m"))]);
    assert_fails_with(&o, &["variant \"with bn\"", "batch norm"]);
    assert!(!text(&o.stdout).contains("[  1/"));
}

#[test]
fn a_second_writer_is_refused_at_once_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let file = tiny(dir.path(), "e.toml", "e", "[0]", "");
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    // This process holds the directory, as a running compare does.
    let held = wgnn::rundir::DirLock::acquire(&out).unwrap();
    let pid = format!("pid {}", std::process::id());
    for extra in [&[][..], &["--replot"][..]] {
        let mut args = vec!["compare", s(&file), "--out", s(&out)];
        args.extend_from_slice(extra);
        let o = wgnn(&args);
        assert_fails_with(&o, &["in use by another wgnn process", &pid]);
    }
    assert!(!out.join("results.csv").exists() && !out.join("experiment.toml").exists());
    drop(held);
    assert_ok(&wgnn(&["compare", s(&file), "--out", s(&out)]));
}

#[test]
fn what_out_holds_is_refused_unless_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let a = tiny(dir.path(), "a.toml", "a", "[0]", "");
    let b = tiny(dir.path(), "b.toml", "b", "[0]", "");
    let compare = |file: &Path, out: &Path, extra: &[&str]| {
        let mut args = vec!["compare", s(file), "--out", s(out)];
        args.extend_from_slice(extra);
        wgnn(&args)
    };
    // Another experiment's results.
    let out = dir.path().join("ab");
    assert_ok(&compare(&a, &out, &[]));
    let before = read(&out.join("results.csv"));
    assert_fails_with(
        &compare(&b, &out, &[]),
        &[
            "holds the results of another experiment, \"a\"",
            "--overwrite",
        ],
    );
    assert!(read(&out.join("results.csv")) == before);
    assert_ok(&compare(&b, &out, &["--overwrite"]));
    let marker = std::fs::read_to_string(out.join("experiment.toml")).unwrap();
    assert!(marker.contains("name = \"b\""), "{marker}");

    // A `wgnn train` run: its curves and checkpoint stay.
    let run = dir.path().join("trained");
    let data = repo("data/breast_cancer.csv");
    assert_ok(&wgnn(&[
        "train",
        "--data",
        s(&data),
        "--loss",
        "bce",
        "--epochs",
        "1",
        "--quiet",
        "--out",
        s(&run),
    ]));
    let curves = read(&run.join("curves.svg"));
    for extra in [&[][..], &["--replot"][..]] {
        let o = compare(&a, &run, extra);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
        assert!(read(&run.join("curves.svg")) == curves);
    }
    assert_fails_with(&compare(&a, &run, &[]), &["holds a `wgnn train` run"]);
    assert_ok(&compare(&a, &run, &["--overwrite"]));
    assert!(!run.join("checkpoint.safetensors").exists() && !run.join("metrics.csv").exists());

    // Results an earlier wgnn wrote, without the experiment beside them.
    let old = dir.path().join("old");
    std::fs::create_dir(&old).unwrap();
    std::fs::write(old.join("summary.md"), "the old table").unwrap();
    assert_fails_with(&compare(&a, &old, &[]), &["without the experiment.toml"]);
    assert_eq!(read(&old.join("summary.md")), b"the old table");

    // A runs/ directory that no experiment marked is not compare's to replace.
    let foreign = dir.path().join("foreign");
    std::fs::create_dir_all(foreign.join("runs/1")).unwrap();
    for extra in [&[][..], &["--overwrite"][..]] {
        assert_fails_with(&compare(&a, &foreign, extra), &["holds a runs/ directory"]);
    }
    assert!(foreign.join("runs/1").exists());
}

#[test]
fn a_changed_experiment_is_refused_saying_what_changed_and_the_same_one_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let body = "[grid]\nlr = [0.1, 0.2]\n";
    let file = tiny(dir.path(), "e.toml", "e", "[0]", body);
    assert_ok(&wgnn(&["compare", s(&file), "--out", s(&out)]));
    let files = ["results.csv", "summary.md", "curves.svg"];
    let first: Vec<Vec<u8>> = files.iter().map(|f| read(&out.join(f))).collect();
    let checkpoint = read(&out.join("runs/1-seed0/checkpoint.safetensors"));

    // The same file again: every run kept, nothing trained, the same bytes.
    let o = wgnn(&["compare", s(&file), "--out", s(&out)]);
    assert_ok(&o);
    let stdout = text(&o.stdout);
    assert_eq!(stdout.matches("(ended before)").count(), 2, "{stdout}");
    let again: Vec<Vec<u8>> = files.iter().map(|f| read(&out.join(f))).collect();
    assert_eq!(again, first);
    assert_eq!(
        read(&out.join("runs/1-seed0/checkpoint.safetensors")),
        checkpoint
    );

    // Changed: refused, saying what changed; the results stay.
    tiny(
        dir.path(),
        "e.toml",
        "e",
        "[0, 1]",
        &format!("momentum = 0.5\n{body}"),
    );
    let o = wgnn(&["compare", s(&file), "--out", s(&out)]);
    assert_fails_with(
        &o,
        &[
            "under an earlier version of its file",
            "`seeds` [0] → [0, 1]",
            "variant \"lr=0.1\": `momentum` = 0.5 added",
            "--overwrite",
        ],
    );
    let now: Vec<Vec<u8>> = files.iter().map(|f| read(&out.join(f))).collect();
    assert!(now == first, "the results stay");
    // With --overwrite it starts over.
    let o = wgnn(&["compare", s(&file), "--out", s(&out), "--overwrite"]);
    assert_ok(&o);
    assert!(!text(&o.stdout).contains("ended before"));
    assert!(out.join("runs/2-seed1/result.csv").exists());
}

#[test]
fn name_confines_the_default_directory() {
    let dir = tempfile::tempdir().unwrap();
    let file = tiny(dir.path(), "e.toml", "ok-name", "[0]", "");
    let o = wgnn_in(dir.path(), &["compare", s(&file)], Duration::from_secs(300));
    assert_ok(&o);
    assert!(dir.path().join("runs/compare/ok-name/results.csv").exists());
    for name in ["..", "../up", "a/b"] {
        let file = tiny(dir.path(), "bad.toml", name, "[0]", "");
        let o = wgnn_in(dir.path(), &["compare", s(&file)], Duration::from_secs(60));
        assert_fails_with(&o, &["`name`"]);
    }
    let mut entries: Vec<String> = std::fs::read_dir(dir.path().join("runs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(entries, ["compare"]);
    assert!(!dir.path().join("up").exists());
}

const HEADER: &str = "variant,seed,epoch,train_loss,train_accuracy,test_loss,test_accuracy,diverged,single_signed_share";

#[test]
fn replot_redraws_from_the_csv_without_training() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("e.toml");
    std::fs::write(
        &file,
        "name = \"e\"\nseeds = [0]\n[base]\nepochs = 2\n[grid]\nlr = [0.1, 0.2]\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("results.csv"),
        format!(
            "{HEADER}\n\
             lr=0.1,0,1,0.5,0.8,0.4,0.85,0,\n\
             lr=0.1,0,2,0.3,0.9,0.3,0.9,0,\n\
             lr=0.2,0,1,nan,,,,1,\n"
        ),
    )
    .unwrap();
    let o = wgnn(&["compare", s(&file), "--out", s(&out), "--replot"]);
    assert_ok(&o);
    let table = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(table.contains("| lr=0.1 | 90.00 % ± 0.00 | 2 |"), "{table}");
    assert!(
        table.contains("| lr=0.2 | — |") && table.contains("1/1 |"),
        "{table}"
    );
    assert!(!text(&o.stdout).contains("adapter"), "trained nothing");
}

#[test]
fn replot_of_the_checked_in_results_gives_their_summaries_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["batch_norm", "binary", "dropout", "preprocessing", "zigzag"] {
        let out = dir.path().join(name);
        std::fs::create_dir(&out).unwrap();
        let results = repo(&format!("experiments/results/{name}"));
        std::fs::copy(results.join("results.csv"), out.join("results.csv")).unwrap();
        let file = repo(&format!("experiments/{name}.toml"));
        assert_ok(&wgnn(&["compare", s(&file), "--out", s(&out), "--replot"]));
        for f in ["summary.md", "curves.svg"] {
            assert!(
                read(&out.join(f)) == read(&results.join(f)),
                "{name}/{f} differs"
            );
        }
    }
}

#[test]
fn replot_says_which_runs_are_missing_and_refuses_what_is_no_results_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("e.toml");
    std::fs::write(
        &file,
        "name = \"e\"\nseeds = [0, 1, 2]\n[base]\nepochs = 2\n[grid]\nlr = [0.1, 0.2]\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let replot = |csv: &str| {
        std::fs::write(out.join("results.csv"), csv).unwrap();
        wgnn_in(
            dir.path(),
            &["compare", s(&file), "--out", s(&out), "--replot"],
            Duration::from_secs(60),
        )
    };
    // One of three seeds, and that one cut short after 1 of 2 epochs.
    let o = replot(&format!(
        "{HEADER}\nlr=0.1,0,1,0.5,0.8,0.4,0.931,0,\nlr=0.1,0,2,0.3,0.9,0.3,0.931,0,\nlr=0.1,1,1,0.5,0.8,0.4,0.5,0,\n"
    ));
    assert_ok(&o);
    let stdout = text(&o.stdout);
    assert!(
        stdout.contains("| lr=0.1 | 93.10 % ± 0.00 (1 of 3 seeds finished) |")
            && stdout.contains("incomplete: 1 of 6 runs have all their results")
            && stdout.contains("lr=0.1 · seed 1 (epoch 1 of 2)")
            && stdout.contains("from 1 of 6 runs"),
        "{stdout}"
    );
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(summary.contains("incomplete"), "{summary}");
    for (csv, says) in [
        (String::new(), "results.csv: empty"),
        (
            "lr=0.1,0,1,0.5,0.8,0.4,0.85,0,\nlr=0.1,0,2,0.3,0.9,0.3,0.9,0,\n".into(),
            "line 1 is not the header",
        ),
        (
            format!(
                "{HEADER}\nlr=0.1,0,1,0.5,0.8,0.4,1e308,0,\nlr=0.2,0,1,0.5,0.8,0.4,-1e308,0,\n"
            ),
            "line 2: test_accuracy 1e308 is not a fraction in [0, 1]",
        ),
        (
            format!("{HEADER}\nlr=0.1,0,1,0.5,0.8,0.4,0.85,0,\nlr=0.1,0,1,0.5,0.8,0.4,0.85,0,\n"),
            "line 3: epoch 1 of variant \"lr=0.1\" seed 0",
        ),
        (
            format!("{HEADER}\nlr=0.1,0,1,0.5,0.8,inf,0.85,0,\n"),
            "test_loss inf is not a finite loss",
        ),
    ] {
        let o = replot(&csv);
        assert_fails_with(&o, &[says]);
    }
    // A directory without results.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let o = wgnn(&["compare", s(&file), "--out", s(&empty), "--replot"]);
    assert_fails_with(&o, &["holds no results.csv"]);
}

/// Every file of `out` that does not hold a time: the experiment's outputs, and each run's
/// rows, measures, training state and checkpoint.
fn timeless_files(out: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for name in ["results.csv", "summary.md", "curves.svg"] {
        files.push((name.to_string(), read(&out.join(name))));
    }
    let mut runs: Vec<PathBuf> = std::fs::read_dir(out.join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    runs.sort();
    for run in runs {
        for name in [
            "result.csv",
            "measures.csv",
            "training_state.safetensors",
            "checkpoint.safetensors",
        ] {
            if let Ok(bytes) = std::fs::read(run.join(name)) {
                let run = run.file_name().unwrap().to_string_lossy();
                files.push((format!("{run}/{name}"), bytes));
            }
        }
    }
    files
}

/// 6 variants that share one stack (learning rates, dropout probabilities; one rate
/// diverges) and an Adam variant with a schedule and weight decay (a stack of its own),
/// each with 3 seeds, 3 epochs of 455 samples in batches of 64 (a last batch of 7).
fn mixed(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let data = repo("data/breast_cancer.csv");
    std::fs::write(
        &path,
        format!(
            "name = \"{name}\"\nseeds = [0, 1, 2]\n[base]\ndata = {:?}\nloss = \"bce\"\n\
             epochs = 3\nbatch-size = 64\n\
             [grid]\nlr = {{ slow = 0.01, fast = 0.1, huge = 1e30 }}\n\
             arch = {{ p2 = \"linear:16,relu,dropout:0.2,linear:1\", \
             p5 = \"linear:16,relu,dropout:0.5,linear:1\" }}\n\
             [[variant]]\nname = \"adamw\"\narch = \"linear:16,relu,dropout:0.2,linear:1\"\n\
             optimizer = \"adamw\"\nlr = 0.01\nweight-decay = 0.1\nlr-schedule = \"step:1:0.5\"\n",
            s(&data)
        ),
    )
    .unwrap();
    path
}

#[test]
fn stacked_and_sequential_write_the_same_files_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let file = mixed(dir.path(), "mixed");
    // Measured too: the gradient-signs measure per member of a stack.
    let text_now = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, format!("measure = [\"gradient-signs\"]\n{text_now}")).unwrap();
    let (stacked, sequential) = (dir.path().join("stacked"), dir.path().join("sequential"));
    let o = wgnn(&["compare", s(&file), "--out", s(&stacked)]);
    assert_ok(&o);
    let stdout = text(&o.stdout);
    // Two stacks, each named with its members, each epoch with the time left; the
    // diverging members reported and frozen while the others train on.
    assert!(
        stdout.contains(
            "stack 1/2: 18 run(s) in one stack — lr=slow arch=p2 · seed 0, lr=slow arch=p2 · \
             seed 1, lr=slow arch=p2 · seed 2, lr=slow arch=p5 · seed 0"
        ) && stdout.contains("and 6 more")
            && stdout.contains(
                "stack 2/2: 3 run(s) in one stack — adamw · seed 0, adamw · seed 1, adamw · seed 2"
            ),
        "{stdout}"
    );
    assert!(
        stdout.contains("stack 1/2: epoch 3/3, 12 training, 6 diverged (")
            && stdout.contains("s left)"),
        "{stdout}"
    );
    assert_eq!(
        stdout
            .matches("diverged at step 1 (epoch 1): the loss is NaN; frozen, the others train on")
            .count(),
        6,
        "{stdout}"
    );
    assert!(
        stdout.contains("[ 21/21] adamw · seed 2: test accuracy"),
        "{stdout}"
    );
    assert!(!stacked.join("groups").exists(), "the group saves go");

    let o = wgnn(&["compare", s(&file), "--out", s(&sequential), "--sequential"]);
    assert_ok(&o);
    assert!(!text(&o.stdout).contains("stack"), "{}", text(&o.stdout));

    let (a, b) = (timeless_files(&stacked), timeless_files(&sequential));
    let names: Vec<&String> = a.iter().map(|(n, _)| n).collect();
    assert_eq!(names, b.iter().map(|(n, _)| n).collect::<Vec<_>>());
    // 21 runs: 15 trained (rows, measures, training state, checkpoint), 6 diverged at once
    // (their rows alone).
    assert_eq!(a.len(), 3 + 15 * 4 + 6, "{names:?}");
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(
            x == y,
            "{name} differs between the stacked and the sequential compare"
        );
    }
    let csv = String::from_utf8_lossy(&a[0].1).into_owned();
    assert_eq!(csv.matches(",nan,,,,1,").count(), 6, "{csv}");
}

/// `wgnn compare` stopped after its disk operation `k`, as `kill -9` stops it.
fn killed_after(file: &Path, out: &Path, k: u64) -> Output {
    Command::new(binary())
        .args([
            "compare",
            s(file),
            "--out",
            s(out),
            "--checkpoint-every",
            "2",
        ])
        .env_remove("RUST_LOG")
        .env(wgnn::durable::FAILPOINT_ENV, k.to_string())
        .output()
        .unwrap()
}

#[test]
fn a_stacked_compare_killed_mid_stack_refuses_another_experiment_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let file = mixed(dir.path(), "mixed");
    let whole = dir.path().join("whole");
    assert_ok(&wgnn(&[
        "compare",
        s(&file),
        "--out",
        s(&whole),
        "--checkpoint-every",
        "2",
    ]));
    // Killed once the first stack has saved twice.
    let out = dir.path().join("out");
    let save = out.join("groups/1-seed0.safetensors");
    let mut k = 1;
    loop {
        let _ = std::fs::remove_dir_all(&out);
        let o = killed_after(&file, &out, k);
        assert!(!o.status.success(), "ran to its end before operation {k}");
        if saves_in(&save) >= 2 {
            break;
        }
        k += 1;
    }
    let before = read(&save);
    // Another experiment, and this one edited, are refused in one line; nothing is lost.
    let other = mixed(dir.path(), "other");
    let o = wgnn(&["compare", s(&other), "--out", s(&out)]);
    assert_fails_with(&o, &["holds the results of another experiment, \"mixed\""]);
    let edited = dir.path().join("edited.toml");
    let text_now = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&edited, text_now.replace("slow = 0.01", "slow = 0.02")).unwrap();
    let o = wgnn(&["compare", s(&edited), "--out", s(&out)]);
    assert_fails_with(
        &o,
        &[
            "under an earlier version of its file",
            "variant \"lr=slow arch=p2\": `lr` 0.01 → 0.02",
        ],
    );
    assert!(read(&save) == before, "the stack's save stays");
    // A bit flipped in the save's last tensor: refused in one line, naming the file.
    let mut flipped = before.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    std::fs::write(&save, &flipped).unwrap();
    let o = wgnn(&["compare", s(&file), "--out", s(&out)]);
    assert_fails_with(&o, &["1-seed0.safetensors", "does not match its checksum"]);
    std::fs::write(&save, &before).unwrap();
    // The same experiment resumes the stack from its save, to the uninterrupted files.
    let o = wgnn(&[
        "compare",
        s(&file),
        "--out",
        s(&out),
        "--checkpoint-every",
        "2",
    ]);
    assert_ok(&o);
    let stdout = text(&o.stdout);
    assert!(
        stdout.contains("stack 1/2: 18 run(s) in one stack")
            && stdout.contains("(resumed from batch"),
        "{stdout}"
    );
    let (a, b) = (timeless_files(&out), timeless_files(&whole));
    assert_eq!(a.len(), b.len());
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(x == y, "{name} differs from the uninterrupted compare's");
    }
}

/// The saves the first member of a group save has made, 0 when there is none.
fn saves_in(path: &Path) -> u64 {
    wgnn::checkpoint::StateDict::read(path)
        .ok()
        .and_then(|sd| {
            let member: serde_json::Value =
                serde_json::from_str(sd.metadata.get("wgnn.member.0")?).ok()?;
            member["saves"].as_u64()
        })
        .unwrap_or(0)
}
