//! A full disk in the middle of a save: the error names the checkpoint that is really
//! intact, nothing half-written is left, and with room again the run resumes and ends as an
//! uninterrupted one. It needs a tmpfs of its own (`unshare -m`, then `mount -t tmpfs`: root,
//! or user namespaces); where none can be mounted the test is reported ignored, with the
//! reason on stderr, rather than passing without having run.

mod common;

use std::process::Command;

use common::cli::*;
use libtest_mimic::{Arguments, Trial};
use wgnn::checkpoint::StateDict;

fn main() {
    let args = Arguments::from_args();
    let name = "a_full_disk_names_the_checkpoint_that_is_really_intact";
    let trial = match tmpfs_unavailable() {
        None => Trial::test(name, || {
            a_full_disk_names_the_checkpoint_that_is_really_intact();
            Ok(())
        }),
        Some(why) => {
            eprintln!("{name}: ignored: {why}");
            Trial::test(name, || Ok(())).with_ignored_flag(true)
        }
    };
    libtest_mimic::run(&args, vec![trial]).exit();
}

/// Why no tmpfs can be mounted in a mount namespace of this process's own, if it cannot.
fn tmpfs_unavailable() -> Option<String> {
    let dir = tempfile::tempdir().ok()?;
    let script = format!("mount -t tmpfs -o size=1m tmpfs '{}'", dir.path().display());
    match Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .output()
    {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "no tmpfs could be mounted here (unshare -m, mount -t tmpfs): {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("unshare could not run: {e}")),
    }
}

fn a_full_disk_names_the_checkpoint_that_is_really_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let extra = ["--checkpoint-every", "4"];
    let whole = cwd.join("whole");
    assert_ok(&wgnn(
        cwd,
        &train_args(whole.to_str().unwrap(), "3", &extra),
    ));
    // Room for one save and a half: the second fails, at whichever of its writes.
    let save: u64 = [
        "checkpoint.safetensors",
        "training_state.safetensors",
        "metrics.csv",
        "curves.svg",
    ]
    .iter()
    .map(|f| {
        std::fs::metadata(whole.join(f))
            .unwrap()
            .len()
            .div_ceil(4096)
            * 4096
    })
    .sum();
    let size = (save * 3 / 2).div_ceil(4096) * 4096;
    let disk = cwd.join("disk");
    std::fs::create_dir(&disk).unwrap();
    let out = cwd.join("copied");
    let run = disk.join("run");
    let train = train_args(run.to_str().unwrap(), "3", &extra)
        .iter()
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let bin = binary().display().to_string();
    // A small tmpfs in a mount namespace of its own: a full disk, then room again.
    let script = format!(
        "set -u
         mount -t tmpfs -o size={size} tmpfs '{disk}' || exit 77
         '{bin}' {train} >/dev/null 2>'{cwd}/err'; echo $? > '{cwd}/rc'
         cp -a '{run}' '{out}'
         mount -o remount,size=16m '{disk}'
         '{bin}' train --resume '{run}' --quiet >/dev/null 2>'{cwd}/err2'; echo $? > '{cwd}/rc2'
         cp -a '{run}' '{out}-after'",
        disk = disk.display(),
        cwd = cwd.display(),
        run = run.display(),
        out = out.display(),
    );
    let o = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .output();
    // The probe in main found a tmpfs mountable: failing to mount one now is a failure.
    let o = o.expect("unshare runs");
    assert!(
        o.status.code() != Some(77) && cwd.join("rc").exists(),
        "no tmpfs could be mounted: {}",
        stderr(&o)
    );
    let read = |f: &str| std::fs::read_to_string(cwd.join(f)).unwrap();
    let err = read("err");
    assert_eq!(read("rc").trim(), "1", "{err}");
    assert!(
        err.contains("No space left") || err.contains("space"),
        "{err}"
    );
    // The message names what is on disk: the training state's place, and the checkpoint
    // beside it is of the same step.
    let (place, step) = place_of(&out);
    assert!(
        err.contains(&format!("the checkpoint of {place} in")) && err.contains("is intact"),
        "{place}: {err}"
    );
    let checkpoint = StateDict::read(&out.join("checkpoint.safetensors")).unwrap();
    assert_eq!(checkpoint.metadata["step"], step);
    assert!(
        names(&out).iter().all(|n| !n.contains(".tmp-")),
        "{:?}",
        names(&out)
    );
    // With room again the run resumes and ends as the uninterrupted one.
    assert_eq!(read("rc2").trim(), "0", "{}", read("err2"));
    assert_eq!(outcome(&cwd.join("copied-after")), outcome(&whole));
}
