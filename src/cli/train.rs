//! `wgnn train`.

use std::path::Path;
use std::sync::Arc;

use wgnn::data::prepare::Splits;
use wgnn::data::{Dataset, is_csv};
use wgnn::nn::{Layer, Sequential, spec};
use wgnn::optim::LrSchedule;
use wgnn::run::{self, DataConfig, LossKind, OptimizerKind, Position, RunConfig};
use wgnn::rundir::{self, RunDir, Saved};
use wgnn::train::{FitOptions, fit};

use super::error::{CliError, Result};
use super::progress::Bar;
use super::{TrainArgs, dist, open_gpu_in};
use wgnn::Model;
use wgnn::data::{FitLimits, Preprocess, Transform};
use wgnn::dist::{Comm, Communicator, DistError};
use wgnn::gpu::GpuContext;
use wgnn::run::Preprocessing;

/// Epochs of a new run unless --epochs says otherwise.
pub(super) const DEFAULT_EPOCHS: usize = 12;
/// Dropout of the default architecture, the lecture's MLP.
const LECTURE_DROPOUT: f32 = 0.2;
/// Where new runs go without --out: a numbered directory each.
pub(super) const RUNS: &str = "runs";

/// Prints a line on rank 0 only (every line, on one process).
macro_rules! say {
    ($primary:expr, $($arg:tt)*) => {
        if $primary {
            println!($($arg)*);
        }
    };
}

pub fn run(args: TrainArgs, comm: &Comm) -> Result<()> {
    if args.epochs == Some(0) {
        return Err(CliError::NoEpochs);
    }
    // An ensemble, new or resumed, trains as one stack in this process.
    // (--resume refuses --ensemble with the other flags a run fixes.)
    let ensemble = match (&args.resume, args.ensemble) {
        (_, Some(0)) => return Err(CliError::NoMembers),
        (Some(path), _) => wgnn::rundir::ensemble::read_manifest(path)?.map(|_| None),
        (None, Some(members)) => Some(Some(members)),
        (None, None) => None,
    };
    if let Some(members) = ensemble {
        if comm.size() > 1 {
            return Err(CliError::EnsembleUnderMpi { size: comm.size() });
        }
        return match members {
            Some(members) => super::ensemble::train(&args, members),
            None => super::ensemble::resume(&args),
        };
    }
    // Rank 0 owns the run directory, prints, and decides the run; the others build the same
    // model from what it hands them.
    let primary = comm.rank() == 0;
    // --out is created, locked and checked before any data is read or any step is taken.
    let out = match &args.out {
        Some(out) if primary => Some(RunDir::create(out, args.overwrite)?),
        _ => None,
    };
    let ctx = open_gpu_in(comm.as_ref())?;
    let decided = if primary {
        Some(decide(&args, ctx.clone(), out, comm.size())?)
    } else {
        None
    };
    let Some(mut decided) = share(comm.as_ref(), decided, &ctx)? else {
        return Ok(());
    };
    let (run, position) = (&decided.run, decided.position);
    let (model, dir) = (&mut decided.model, &mut decided.dir);
    if comm.size() > 1 {
        model.distribute(comm.clone(), run.data_parallel.sync_bn)?;
    }

    // A new run's data, loaded once; a resumed run's, again as it says. Raw samples: the
    // model applies the run's preprocessing as its first stage.
    let splits = match decided.prepared.take() {
        Some(splits) => splits,
        None => run.data.load()?,
    };
    dist::check_data(comm.as_ref(), &splits.train, &splits.test)?;
    say!(
        primary,
        "data: {} training samples of shape {:?}; test: {} samples ({})",
        splits.train.len(),
        splits.train.sample_shape,
        splits.test.len(),
        splits.test_origin
    );
    if let Some(path) = run.data.path.as_deref().filter(|p| is_csv(p)) {
        let layout = wgnn::data::csv::layout(path, &run.data.load_options().csv())?;
        say!(
            primary,
            "csv: {layout}{}",
            if args.resume.is_none() && args.csv.header().is_none() {
                "; --header or --no-header decides"
            } else {
                ""
            }
        );
    }
    say!(
        primary,
        "model: {} ({:?}, {:?})",
        run.arch,
        run.loss,
        run.optimizer
    );
    say!(primary, "plan: {}", model.report(wgnn::Mode::Train));
    if comm.size() > 1 {
        say!(
            primary,
            "data-parallel: {} processes × batch {} = {} samples per step; batch norm {}",
            comm.size(),
            run.batch_size,
            comm.size() * run.batch_size,
            if run.data_parallel.sync_bn {
                "over the global batch (--sync-bn)"
            } else {
                "per process, rank 0's running statistics kept"
            }
        );
    }

    let options = FitOptions {
        epochs: run.epochs,
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
    // Only rank 0 reports progress.
    let mut bar = Bar::new(args.quiet);
    let progress: &mut dyn wgnn::train::Progress = if primary {
        &mut bar
    } else {
        &mut wgnn::train::Silent
    };
    let before = dir.as_ref().and_then(RunDir::last_saved);
    let result = fit(
        model,
        &splits.train,
        &splits.test,
        &options,
        progress,
        |model, checkpoint| {
            // Only rank 0 writes; every rank's state is the same.
            let Some(dir) = dir.as_mut() else {
                return Ok(());
            };
            let report = dir.checkpoint(model, run, checkpoint)?;
            if let Some((tensor, index, count)) = report.nonfinite {
                eprintln!(
                    "warning: {} holds {count} non-finite value(s), the first {tensor}[{index}] (--keep-going); eval and predict refuse it",
                    dir.path().join(wgnn::checkpoint::MODEL_FILE).display()
                );
            }
            Ok(())
        },
    );
    let Some(dir) = dir else {
        return Ok(result.map(|_| ())?);
    };
    let out = dir.path().to_path_buf();
    if let Err(source) = result {
        return Err(match dir.last_saved() {
            Some(place) => CliError::AfterCheckpoint {
                source: Box::new(source),
                place,
                dir: out,
            },
            None => source.into(),
        });
    }
    let saved = dir.last_saved().filter(|s| Some(*s) != before);
    match saved {
        // Only --max-steps ends a run within an epoch.
        Some(
            place @ Saved {
                batches_done: Some(_),
                ..
            },
        ) => println!(
            "stopped at step {} (--max-steps); wrote the checkpoint of {place} to {}; `wgnn train --resume {}` continues",
            place.step,
            out.display(),
            out.display()
        ),
        Some(_) => {
            if let Some(last) = dir.history().last() {
                println!(
                    "final test accuracy {:.2}% (loss {:.4}) after {} epochs; wrote {}/{{checkpoint.safetensors, training_state.safetensors, metrics.csv, curves.svg}}",
                    100.0 * last.test_accuracy,
                    last.test_loss,
                    last.epoch,
                    out.display()
                );
            }
        }
        None => println!(
            "step {} already reaches --max-steps: nothing trained, nothing written",
            model.step()
        ),
    }
    Ok(())
}

/// What rank 0 decides before training: the run, its model, where it stands, its directory
/// (rank 0's only) and its data when already loaded.
struct Decided {
    run: RunConfig,
    model: Model,
    position: Position,
    dir: Option<RunDir>,
    prepared: Option<Splits>,
}

/// A new run from the flags, or the resumed one; `None` when there is nothing to train.
fn decide(
    args: &TrainArgs,
    ctx: Arc<GpuContext>,
    out: Option<RunDir>,
    processes: usize,
) -> Result<Option<Decided>> {
    match &args.resume {
        Some(path) => {
            check_resume_flags(path, &given_flags())?;
            let (dir, resumed) = RunDir::resume(ctx, path)?;
            for note in &resumed.notes {
                println!("{}: {note}", path.display());
            }
            let (model, mut run, position) = (resumed.model, resumed.run, resumed.position);
            let trained = run.data_parallel.processes;
            if trained != processes {
                return Err(wgnn::Error::from(DistError::WorldSize {
                    dir: path.display().to_string(),
                    trained,
                    now: processes,
                })
                .into());
            }
            let done = position.epochs_done;
            if let Some(epochs) = args.epochs {
                if epochs < done || (epochs == done && position.within.is_some()) {
                    return Err(CliError::ResumeEpochs {
                        dir: path.clone(),
                        epochs,
                        done,
                        within: position.within.is_some(),
                    });
                }
                run.epochs = epochs;
            }
            if done >= run.epochs {
                println!(
                    "{} has done all {done} epochs of its run: nothing to train (--epochs N extends it)",
                    path.display()
                );
                return Ok(None);
            }
            match position.within {
                Some((batches, _)) => println!(
                    "resuming {} at step {}: batch {batches} of epoch {} of {}",
                    path.display(),
                    model.step(),
                    done + 1,
                    run.epochs
                ),
                None => println!(
                    "resuming {} after epoch {done} of {}",
                    path.display(),
                    run.epochs
                ),
            }
            Ok(Some(Decided {
                run,
                model,
                position,
                dir: Some(dir),
                prepared: None,
            }))
        }
        None => {
            // A PCA or ZCA fit is checked against the device and the machine before it starts.
            let limits = FitLimits::of_machine().with_binding(ctx.max_binding_bytes());
            let (mut run, transform, splits) = new_run_with(args, &limits)?;
            run.data_parallel.processes = processes;
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
                model.load_state_dict(init)?;
                println!("initialized from {}", init.display());
            }
            let mut dir = match out {
                Some(dir) => dir,
                None => RunDir::create_numbered(Path::new(RUNS))?,
            };
            // Named by what defines it: identical runs write identical files.
            let data = [&splits.train, &splits.test];
            dir.identify(rundir::run_id(&run, &data, &model.state()?));
            for note in dir.take_notes() {
                println!("{}: {note}", dir.path().display());
            }
            println!("run directory: {}", dir.path().display());
            // The fitted preprocessing is the run's for good: written once, before the first
            // save commits, and read back by every resume, eval and predict.
            if let Some(Preprocessing::Fitted(_)) = &run.normalization
                && let Some(t) = model.preprocess()
            {
                run::write_transform(&dir.path().join(run::PREPROCESS_FILE), t)?;
            }
            Ok(Some(Decided {
                run,
                model,
                position: run::Position::default(),
                dir: Some(dir),
                prepared: Some(splits),
            }))
        }
    }
}

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

/// Rank 0's decision on every rank: the others build the same model (its state comes with
/// [`wgnn::Model::distribute`]).
fn share(
    comm: &dyn Communicator,
    decided: Option<Option<Decided>>,
    ctx: &Arc<GpuContext>,
) -> Result<Option<Decided>> {
    if comm.size() == 1 {
        return Ok(decided.flatten());
    }
    let mine = decided
        .as_ref()
        .and_then(Option::as_ref)
        .map(|d| (&d.run, d.position, d.model.preprocess()));
    let handed = dist::hand_run(comm, mine)?;
    if let Some(decided) = decided {
        return Ok(decided);
    }
    let Some((run, position, transform)) = handed else {
        return Ok(None);
    };
    let model = run.build_with(ctx.clone(), None, transform)?;
    Ok(Some(Decided {
        run,
        model,
        position,
        dir: None,
        prepared: None,
    }))
}

/// The run the flags describe, its data (loaded once, to learn its shape and classes, and
/// raw: the model preprocesses), and its preprocessing fitted on the training split, its
/// size checked against `limits` (the machine's memory, the device's binding) first.
pub(super) fn new_run_with(
    args: &TrainArgs,
    limits: &FitLimits,
) -> Result<(RunConfig, Option<Transform>, Splits)> {
    let data = data_config(args)?;
    let splits = data.load()?;
    let (run, transform) = run_on(args, data, &splits, limits)?;
    Ok((run, transform, splits))
}

/// Where the flags' data comes from and how it is read.
pub(super) fn data_config(args: &TrainArgs) -> Result<DataConfig> {
    let normalize: Preprocess = args
        .normalize
        .parse()
        .map_err(wgnn::data::DataError::from)?;
    Ok(DataConfig {
        path: args.data.clone(),
        test_path: args.test_data.clone(),
        holdout: args.holdout,
        label_column: args.label_column.clone(),
        header: args.csv.header(),
        delimiter: args.csv.delimiter,
        normalize: normalize != Preprocess::None,
        check_finite: args.check_finite,
    })
}

/// The run the flags describe on `splits` (loaded from `data`), with its preprocessing
/// fitted on the training split (its size checked against `limits` first).
pub(super) fn run_on(
    args: &TrainArgs,
    data: DataConfig,
    splits: &Splits,
    limits: &FitLimits,
) -> Result<(RunConfig, Option<Transform>)> {
    let normalize: Preprocess = args
        .normalize
        .parse()
        .map_err(wgnn::data::DataError::from)?;
    let classes = match args.classes {
        Some(classes) => {
            splits.train.check_labels(classes)?;
            splits.test.check_labels(classes)?;
            classes
        }
        None => Dataset::infer_classes(&[&splits.train, &splits.test])?,
    };
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
    let transform = Transform::fit_within(normalize, &splits.train, limits)?;
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
        data_parallel: wgnn::run::DataParallel {
            processes: 1,
            sync_bn: args.sync_bn,
        },
        extra: wgnn::run::ExtraOptions::default(),
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
