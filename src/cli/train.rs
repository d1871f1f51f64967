//! `wgnn train`.

use std::path::Path;

use wgnn::checkpoint::{StateDict, apply_state_dict, write_atomic};
use wgnn::nn::{Layer, Sequential, spec};
use wgnn::optim::LrSchedule;
use wgnn::run::{self, DataConfig, LossKind, OptimizerKind, RunConfig};
use wgnn::train::{Checkpoint, EpochMetrics, FitOptions, fit};

use super::error::{CliError, Result};
use super::progress::Bar;
use super::{TrainArgs, open_gpu};
use wgnn::data::{Preprocess, Transform};

/// Epochs of a new run unless --epochs says otherwise.
const DEFAULT_EPOCHS: usize = 12;
/// Dropout of the default architecture, the lecture's MLP.
const LECTURE_DROPOUT: f32 = 0.2;

pub fn run(args: TrainArgs) -> Result<()> {
    let ctx = open_gpu()?;
    let (mut model, run, position, mut history) = match &args.resume {
        Some(dir) => {
            let (model, mut run, position) = run::resume(ctx, dir)?;
            if let Some(epochs) = args.epochs {
                run.epochs = epochs;
            }
            let done = position.epochs_done;
            let history = read_history(&dir.join("metrics.csv"), done)?;
            match position.within {
                Some((batches, _)) => println!(
                    "resuming {} at step {}: batch {batches} of epoch {} of {}",
                    dir.display(),
                    model.step(),
                    done + 1,
                    run.epochs
                ),
                None => println!(
                    "resuming {} after epoch {done} of {}",
                    dir.display(),
                    run.epochs
                ),
            }
            (model, run, position, history)
        }
        None => {
            let (run, transform) = new_run(&args)?;
            if let Some(t) = &transform
                && t.kind != wgnn::data::Preprocess::PerChannel
            {
                println!(
                    "preprocess: {} fitted on the training split ({} → {} features)",
                    t.kind,
                    t.input_features(),
                    t.output_features()
                );
            }
            let mut model = run.build_with(ctx, None, transform)?;
            if let Some(init) = &args.init {
                let sd = StateDict::read(&run::model_file(init))?;
                let base = model.state()?;
                let state = apply_state_dict(&sd, model.sequential(), model.graph(), &base)?;
                model.load_state(&state)?;
                println!("initialized from {}", init.display());
            }
            (model, run, run::Position::default(), Vec::new())
        }
    };
    let out = args.resume.clone().unwrap_or_else(|| args.out.clone());

    // Raw samples: the model applies the run's preprocessing as its first stage.
    let splits = run.data.load()?;
    println!(
        "data: {} training samples of shape {:?}; test: {} samples ({})",
        splits.train.len(),
        splits.train.sample_shape,
        splits.test.len(),
        splits.test_origin
    );
    println!("model: {} ({:?}, {:?})", run.arch, run.loss, run.optimizer);
    println!("plan: {}", model.report(wgnn::Mode::Train));

    let options = FitOptions {
        epochs: run.epochs,
        batch_size: run.batch_size,
        shuffle_seed: run.shuffle.then_some(run.seed),
        drop_last: run.drop_last,
        start_epoch: position.epochs_done,
        start_within: position.within,
        checkpoint_every: args.checkpoint_every,
        max_steps: args.max_steps,
        lr_schedule: run.lr_schedule.map(|schedule| (schedule, run.lr)),
        stop_on_nonfinite: !args.keep_going,
        ..FitOptions::default()
    };
    let mut bar = Bar::new(args.quiet);
    // The last checkpoint written, for messages: (step, where, within an epoch).
    let mut saved: Option<(u64, String, bool)> = None;
    let result = fit(
        &mut model,
        &splits.train,
        &splits.test,
        &options,
        &mut bar,
        |model, checkpoint| {
            let (position, place) = match checkpoint {
                Checkpoint::EpochEnd(m) => {
                    history.push(*m);
                    let position = run::Position {
                        epochs_done: m.epoch,
                        within: None,
                    };
                    (position, format!("epoch {}", m.epoch))
                }
                Checkpoint::Within {
                    epoch,
                    batches_done,
                    totals,
                } => {
                    let position = run::Position {
                        epochs_done: epoch,
                        within: Some((batches_done, totals)),
                    };
                    (
                        position,
                        format!("batch {batches_done} of epoch {}", epoch + 1),
                    )
                }
            };
            let within = position.within.is_some();
            run::save(&out, model, &run, position)?;
            write_history(&out.join("metrics.csv"), &history)?;
            wgnn::plot::write_curves(&out.join("curves.svg"), &history)?;
            saved = Some((model.step(), place, within));
            Ok(())
        },
    );
    if let Err(source) = result {
        return Err(match saved {
            Some((_, place, _)) => CliError::AfterCheckpoint {
                source: Box::new(source),
                place,
                dir: out,
            },
            None => source.into(),
        });
    }
    // Only --max-steps ends a run within an epoch.
    if let Some((step, place, true)) = &saved {
        println!(
            "stopped at step {step} (--max-steps); wrote the checkpoint of {place} to {}; `wgnn train --resume {}` continues",
            out.display(),
            out.display()
        );
    } else if let Some(last) = history.last() {
        println!(
            "final test accuracy {:.2}% (loss {:.4}) after {} epochs; wrote {}/{{checkpoint.safetensors, training_state.safetensors, metrics.csv, curves.svg}}",
            100.0 * last.test_accuracy,
            last.test_loss,
            last.epoch,
            out.display()
        );
    }
    Ok(())
}

/// The run the flags describe, with the data loaded to learn its shape and classes, and its
/// preprocessing fitted on the training split.
pub(super) fn new_run(args: &TrainArgs) -> Result<(RunConfig, Option<Transform>)> {
    let normalize: Preprocess = args
        .normalize
        .parse()
        .map_err(wgnn::data::DataError::from)?;
    let data = DataConfig {
        path: args.data.clone(),
        test_path: args.test_data.clone(),
        holdout: args.holdout,
        label_column: args.label_column.clone(),
        normalize: normalize != Preprocess::None,
        check_finite: args.check_finite,
    };
    let splits = data.load()?;
    let classes = splits.train.num_classes().max(splits.test.num_classes());
    let loss: LossKind = args.loss.into();
    let outputs = match loss {
        LossKind::Ce => classes,
        LossKind::Bce => {
            if classes > 2 {
                return Err(CliError::BinaryLossClasses { classes });
            }
            1
        }
    };
    let sample_shape = splits.train.sample_shape.clone();
    let transform = Transform::fit(normalize, &splits.train)?;
    // What the first layer sees: the preprocessing's output (K features for pca:K).
    let model_shape = transform
        .as_ref()
        .map_or(&sample_shape, |t| &t.output_shape)
        .clone();
    let (arch, sequential) = match &args.arch {
        Some(arch) => (arch.clone(), spec::parse(arch, &model_shape)?),
        None => {
            let features = model_shape.iter().product();
            let sequential = Sequential::lecture_mlp(features, outputs, LECTURE_DROPOUT);
            (spec::to_spec(&sequential), sequential)
        }
    };
    check_outputs(&sequential, outputs, loss, &arch)?;
    let normalization = RunConfig::record(transform.as_ref());
    let optimizer: OptimizerKind = args.optimizer.into();
    let lr = args.lr.unwrap_or(match optimizer {
        OptimizerKind::Sgd => 0.02,
        OptimizerKind::Adam | OptimizerKind::Adamw => 1e-3,
    });
    let weight_decay = args.weight_decay.unwrap_or(match optimizer {
        OptimizerKind::Adamw => 1e-2,
        _ => 0.0,
    });
    let lr_schedule = args
        .lr_schedule
        .as_deref()
        .map(LrSchedule::parse)
        .transpose()?;
    if args.amsgrad && optimizer == OptimizerKind::Sgd {
        return Err(CliError::AmsgradWithSgd);
    }
    let run = RunConfig {
        arch,
        sample_shape,
        classes,
        loss,
        label_smoothing: args.label_smoothing,
        pos_weight: args.pos_weight,
        optimizer,
        lr,
        momentum: args.momentum,
        weight_decay,
        amsgrad: args.amsgrad,
        lr_schedule,
        batch_size: args.batch_size,
        epochs: args.epochs.unwrap_or(DEFAULT_EPOCHS),
        seed: args.seed,
        shuffle: !args.no_shuffle,
        drop_last: args.drop_last,
        normalization,
        data,
    };
    Ok((run, transform))
}

/// The model's last Linear must give one logit per class (one for BCE).
fn check_outputs(model: &Sequential, outputs: usize, loss: LossKind, arch: &str) -> Result<()> {
    let last = model.layers().iter().rev().find_map(|l| match l {
        Layer::Linear(l) => Some(l.out_features),
        _ => None,
    });
    match last {
        Some(n) if n == outputs || (loss == LossKind::Ce && n > outputs) => Ok(()),
        Some(found) => Err(CliError::ArchOutputs {
            arch: arch.into(),
            found,
            needed: outputs,
            loss,
        }),
        None => Err(CliError::ArchWithoutLogits { arch: arch.into() }),
    }
}

const HEADER: &str =
    "epoch,train_loss,train_accuracy,test_loss,test_accuracy,seconds,samples_per_second,step";

fn write_history(path: &Path, history: &[EpochMetrics]) -> wgnn::Result<()> {
    let mut csv = String::from(HEADER);
    csv.push('\n');
    for m in history {
        csv.push_str(&format!(
            "{},{:.6},{:.6},{:.6},{:.6},{:.3},{:.1},{}\n",
            m.epoch,
            m.train_loss,
            m.train_accuracy,
            m.test_loss,
            m.test_accuracy,
            m.seconds,
            m.samples_per_second,
            m.step
        ));
    }
    Ok(write_atomic(path, csv.as_bytes())?)
}

/// Rows of an earlier run's metrics.csv up to epoch `done` (for --resume).
fn read_history(path: &Path, done: usize) -> Result<Vec<EpochMetrics>> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(Vec::new());
    };
    let mut history = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let fields: Vec<&str> = line.split(',').collect();
        let bad = || CliError::MetricsRow {
            path: path.to_path_buf(),
            line: i + 1,
            text: line.to_string(),
        };
        let [epoch, tl, ta, vl, va, s, sps, step] = fields[..] else {
            return Err(bad());
        };
        let f = |v: &str| v.parse::<f64>().map_err(|_| bad());
        let m = EpochMetrics {
            epoch: epoch.parse().map_err(|_| bad())?,
            train_loss: f(tl)?,
            train_accuracy: f(ta)?,
            test_loss: f(vl)?,
            test_accuracy: f(va)?,
            seconds: f(s)?,
            samples_per_second: f(sps)?,
            step: step.parse().map_err(|_| bad())?,
        };
        if m.epoch <= done {
            history.push(m);
        }
    }
    Ok(history)
}
