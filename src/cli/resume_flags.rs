//! The flags `--resume` applies, and the refusal of the others: a resumed run, lone or an
//! ensemble, keeps every setting it started with.

use std::path::Path;

use super::error::{CliError, Result};

/// The flags `--resume` applies; every other setting is the run's, fixed when it started.
const RESUME_FLAGS: [&str; 6] = [
    "resume",
    "epochs",
    "max_steps",
    "checkpoint_every",
    "keep_going",
    "quiet",
];

/// Refuses flags given with `--resume` that the run fixed when it started (its data, model,
/// optimizer, loss, seed, preprocessing, …): they would otherwise be ignored without a word.
/// `given` holds the flags' ids, as [`given_flags`] returns them.
pub(super) fn check_resume_flags(dir: &Path, given: &[String]) -> Result<()> {
    let command = <super::TrainDefaults as clap::CommandFactory>::command();
    // Only arguments: clap also reports the groups its derive makes (`CsvArgs`).
    let fixed: Vec<String> = given
        .iter()
        .filter(|id| !RESUME_FLAGS.contains(&id.as_str()))
        .filter_map(|id| {
            command
                .get_arguments()
                .find(|a| a.get_id().as_str() == id.as_str())
                .and_then(clap::Arg::get_long)
                .map(|long| format!("--{long}"))
        })
        .collect();
    if fixed.is_empty() {
        return Ok(());
    }
    Err(CliError::ResumeFixes {
        dir: dir.to_path_buf(),
        flags: fixed.join(", "),
    })
}

/// The ids of the flags given on this process's command line to `wgnn train`: its arguments
/// parsed again, as `main` parsed them, asking clap which values came from the command line
/// rather than from defaults. None for another command.
pub(super) fn given_flags() -> Vec<String> {
    let command = <super::Cli as clap::CommandFactory>::command();
    let Ok(matches) = command.try_get_matches_from(std::env::args_os()) else {
        return Vec::new();
    };
    let Some(("train", train)) = matches.subcommand() else {
        return Vec::new();
    };
    train
        .ids()
        .filter(|id| {
            train.value_source(id.as_str()) == Some(clap::parser::ValueSource::CommandLine)
        })
        .map(|id| id.as_str().to_string())
        .collect()
}

/// Applies `--epochs` to a resumed run that has done `done` epochs (`mid_epoch`: and part of
/// the next): an extension is taken, fewer epochs than are done refused. Returns whether any
/// epoch is left to train, having said so when none is.
pub(super) fn resume_epochs(
    dir: &Path,
    asked: Option<usize>,
    run_epochs: &mut usize,
    done: usize,
    mid_epoch: bool,
) -> Result<bool> {
    if let Some(epochs) = asked {
        if epochs < done || (epochs == done && mid_epoch) {
            return Err(CliError::ResumeEpochs {
                dir: dir.to_path_buf(),
                epochs,
                done,
                within: mid_epoch,
            });
        }
        *run_epochs = epochs;
    }
    if done >= *run_epochs {
        println!(
            "{} has done all {done} epochs of its run: nothing to train (--epochs N extends it)",
            dir.display()
        );
        return Ok(false);
    }
    Ok(true)
}
