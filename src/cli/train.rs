//! `wgnn train`.

use std::path::Path;
use std::sync::Arc;

use wgnn::data::is_csv;
use wgnn::data::prepare::Splits;
use wgnn::run::{self, Position, RunConfig};
use wgnn::rundir::{self, RunDir, Saved};
use wgnn::train::{FitOptions, fit};

use super::error::{CliError, Result};
use super::progress::Bar;
use super::resume_flags::{check_resume_flags, given_flags, resume_epochs};
use super::run_flags::{RUNS, new_run_with};
use super::{TrainArgs, dist, open_gpu_in};
use wgnn::Model;
use wgnn::data::FitLimits;
use wgnn::dist::{Comm, Communicator, DistError};
use wgnn::gpu::GpuContext;
use wgnn::run::Preprocessing;

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
            let mid_epoch = position.within.is_some();
            if !resume_epochs(path, args.epochs, &mut run.epochs, done, mid_epoch)? {
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
