//! `wgnn eval`.

use std::path::{Path, PathBuf};

use wgnn::data::{Dataset, LabelColumn, Split, load_with};
use wgnn::ensemble::{self, EnsembleError, mean_std};
use wgnn::run::{self, DataConfig, RunConfig};
use wgnn::rundir::ensemble::{MEMBERS_DIR, read_manifest};
use wgnn::stack::evaluate_members;
use wgnn::train::{Evaluation, evaluate};

use super::error::{CliError, Result};
use super::{EvalArgs, SplitArg, open_gpu};

pub fn run(args: EvalArgs) -> Result<()> {
    if args
        .label_column
        .as_deref()
        .is_some_and(|c| LabelColumn::from_arg(c) == LabelColumn::None)
    {
        return Err(CliError::EvalWithoutLabels);
    }
    let checkpoint = match args.member {
        Some(k) => member_checkpoint(&args.checkpoint, k)?,
        None if read_manifest(&args.checkpoint)?.is_some() => return run_ensemble(&args),
        None => args.checkpoint.clone(),
    };
    let ctx = open_gpu()?;
    // Planned at the evaluation's batch, whatever the training's was.
    let (mut model, run) = run::restore_at(ctx, &checkpoint, args.batch_size)?;
    let data = load_data(&args, &run)?;
    model.eval();
    let e = evaluate(&mut model, &data, run.batch_size)?;
    print_evaluation(&e);
    Ok(())
}

/// The whole ensemble: each member's figures, their spread, and the ensemble's, its
/// members' probabilities averaged.
fn run_ensemble(args: &EvalArgs) -> Result<()> {
    let ctx = open_gpu()?;
    let mut restored = wgnn::rundir::ensemble::restore(ctx, &args.checkpoint, args.batch_size)?;
    let data = load_data(args, &restored.run)?;
    let model = &mut restored.model;
    let batch = restored.run.batch_size;
    let records = &restored.records;
    println!(
        "ensemble: {} of {} of {} in one plan, their {} probabilities averaged",
        restored.members.len(),
        super::ensemble::count(records.len()),
        args.checkpoint.display(),
        if model.graph().classes() == 1 {
            "sigmoid"
        } else {
            "softmax"
        }
    );
    let figures = evaluate_members(model, &data, batch)?;
    let mut accuracies = Vec::new();
    for (k, record) in records.iter().enumerate() {
        match restored.members.iter().position(|&m| m == k) {
            Some(slot) => {
                let (loss, accuracy) = figures[slot];
                accuracies.push(accuracy);
                println!(
                    "member {k} (seed {}): loss {loss:.6} accuracy {:.2}%",
                    record.seed,
                    100.0 * accuracy
                );
            }
            None => println!(
                "member {k} (seed {}): {}; left out",
                record.seed,
                record
                    .diverged
                    .as_ref()
                    .map_or("diverged".to_string(), ToString::to_string)
            ),
        }
    }
    let (mean, std) = mean_std(&accuracies);
    println!(
        "members: accuracy {:.2}% ± {:.2}% (mean ± std of {})",
        100.0 * mean,
        100.0 * std,
        accuracies.len()
    );
    let slots: Vec<usize> = (0..restored.members.len()).collect();
    let e = ensemble::evaluate(model, &slots, &data, batch)?;
    println!(
        "ensemble (its loss: the mean of -log of its averaged probability of the true class):"
    );
    print_evaluation(&e);
    Ok(())
}

/// Member `k`'s checkpoint directory of the ensemble's run in `path`.
pub(super) fn member_checkpoint(path: &Path, k: usize) -> Result<PathBuf> {
    let shown = path.display().to_string();
    let Some((_, records)) = read_manifest(path)? else {
        return Err(wgnn::Error::from(EnsembleError::NotAnEnsemble { path: shown }).into());
    };
    let Some(record) = records.get(k) else {
        return Err(wgnn::Error::from(EnsembleError::NoMember {
            path: shown,
            member: k,
            members: records.len(),
        })
        .into());
    };
    if record.checkpoint_save.is_none() {
        return Err(wgnn::Error::from(EnsembleError::NoCheckpoint {
            path: shown,
            member: k,
            why: record
                .diverged
                .as_ref()
                .map_or("none written yet".to_string(), ToString::to_string),
        })
        .into());
    }
    Ok(path.join(MEMBERS_DIR).join(k.to_string()))
}

/// The labelled data to evaluate, read as the run read its own (CSV options unless given),
/// shaped as its samples.
fn load_data(args: &EvalArgs, run: &RunConfig) -> Result<Dataset> {
    let split = match args.split {
        SplitArg::Train => Split::Train,
        SplitArg::Test => Split::Test,
    };
    let options = DataConfig {
        label_column: args.label_column.clone(),
        header: args.csv.header().or(run.data.header),
        delimiter: args.csv.delimiter.or(run.data.delimiter),
        ..run.data.clone()
    }
    .load_options();
    let data = load_with(&args.data, split, &options)?;
    if data.sample_shape != run.sample_shape {
        let mut found = vec![data.len()];
        found.extend(&data.sample_shape);
        return Err(CliError::SampleShape {
            path: args.data.clone(),
            found,
            expected: run.sample_shape.clone(),
        });
    }
    Ok(data)
}

/// Samples, loss, accuracy and the confusion matrix.
fn print_evaluation(e: &Evaluation) {
    println!("samples: {}", e.samples);
    println!("loss: {:.6}", e.loss);
    println!("accuracy: {:.2}%", 100.0 * e.accuracy);
    println!("confusion matrix (rows: true class, columns: predicted):");
    let width = e
        .confusion
        .iter()
        .flatten()
        .map(|v| v.to_string().len())
        .max()
        .unwrap_or(1)
        .max(3);
    print!("{:>5}", "");
    for j in 0..e.confusion.len() {
        print!(" {j:>width$}");
    }
    println!();
    for (i, row) in e.confusion.iter().enumerate() {
        print!("{i:>5}");
        for v in row {
            print!(" {v:>width$}");
        }
        println!();
    }
}
