//! `wgnn compare` end to end on a tiny experiment: every (variant, seed, epoch) row in the
//! CSV, the SVG written, a diverged variant reported (not hidden), and a bad file's one-line
//! error naming the key.

use std::process::{Command, Output};

fn wgnn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wgnn"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_LOG")
        .output()
        .expect("wgnn runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
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
    let o = wgnn(&[
        "compare",
        file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        o.status.success(),
        "{}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
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
    assert!(
        std::fs::read_to_string(out.join("summary.md"))
            .unwrap()
            .contains("| variant |")
    );
}

#[test]
fn a_bad_experiment_file_fails_with_one_line_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (body, says) in [
        (
            "name = \"x\"\nseeds = [0]\n[base]\nlearning_rate = 0.1\n",
            "`learning_rate`",
        ),
        (
            "name = \"x\"\nseeds = [0]\n[base]\nepochs = \"many\"\n",
            "many",
        ),
        ("name = \"x\"\n[base]\nepochs = 1\n", "`seeds`"),
        (
            "name = \"x\"\nseeds = [0]\nmeasure = [\"gradient-signs\"]\n[base]\nepochs = 1\n",
            "batch norm",
        ),
    ] {
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, body).unwrap();
        let o = wgnn(&[
            "compare",
            file.to_str().unwrap(),
            "--out",
            dir.path().to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(1), "{body}");
        let err = text(&o.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(
            err.contains(says) && err.contains("bad.toml"),
            "{body}: {err}"
        );
    }
}

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
        "variant,seed,epoch,train_loss,train_accuracy,test_loss,test_accuracy,diverged,single_signed_share\n\
         lr=0.1,0,1,0.5,0.8,0.4,0.85,0,\n\
         lr=0.1,0,2,0.3,0.9,0.3,0.9,0,\n\
         lr=0.2,0,1,nan,,,,1,\n",
    )
    .unwrap();
    let o = wgnn(&[
        "compare",
        file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--replot",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let table = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(table.contains("| lr=0.1 | 90.00 % ± 0.00 | 2 |"), "{table}");
    assert!(
        table.contains("| lr=0.2 | — |") && table.contains("1/1 |"),
        "{table}"
    );
    assert!(!text(&o.stdout).contains("adapter"), "trained nothing");
}
