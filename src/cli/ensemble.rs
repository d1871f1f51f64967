//! `wgnn train --ensemble N`: N members of one run but their seeds, trained side by side as
//! one stack, each written as its own checkpoint; and their resume.

use std::cell::RefCell;
use std::path::Path;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use wgnn::Model;
use wgnn::data::FitLimits;
use wgnn::data::prepare::Splits;
use wgnn::ensemble::{self, EnsembleError, mean_std};
use wgnn::metrics::EpochMetrics;
use wgnn::run::{Preprocessing, RunConfig};
use wgnn::rundir::RunDir;
use wgnn::rundir::ensemble::{EnsembleDir, EnsemblePosition, MemberRecord};
use wgnn::stack::{Divergence, StackFitOptions, StackProgress, fit_stack};

use super::error::{CliError, Result};
use super::resume_flags::{check_resume_flags, given_flags, resume_epochs};
use super::run_flags::{RUNS, new_run_with};
use super::{TrainArgs, open_gpu};

/// A new ensemble of `members` runs of the flags' settings.
pub fn train(args: &TrainArgs, members: usize) -> Result<()> {
    // --out is created, locked and checked before any data is read or any step is taken.
    let out = args
        .out
        .as_ref()
        .map(|out| RunDir::create(out, args.overwrite))
        .transpose()?;
    let ctx = open_gpu()?;
    // A PCA or ZCA fit is checked against the device and the machine before it starts.
    let limits = FitLimits::of_machine().with_binding(ctx.max_binding_bytes());
    let (mut run, transform, splits) = new_run_with(args, &limits)?;
    run.data_parallel.processes = 1;
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
    let configs = ensemble::member_configs(&run, members)?;
    let mut model = run.build_stack(ctx, transform.map(Arc::new), configs)?;
    if let Some(init) = &args.init {
        // Every member starts from these weights, as `--seed S --init FILE` would alone.
        let sd = wgnn::checkpoint::StateDict::read(&wgnn::run::model_file(init))?;
        sd.check_finite()?;
        for k in 0..members {
            let base = model.member_state(k)?;
            let state =
                wgnn::checkpoint::apply_state_dict(&sd, model.sequential(), model.graph(), &base)?;
            model.load_member_state(k, &state)?;
        }
        println!("initialized every member from {}", init.display());
    }
    let dir = match out {
        Some(dir) => dir,
        None => RunDir::create_numbered(Path::new(RUNS))?,
    };
    // Each member named by what defines its run, as its lone run would be.
    let data = [&splits.train, &splits.test];
    let mut dir = EnsembleDir::start(dir, &mut model, &run, &data)?;
    for note in dir.take_notes() {
        println!("{}: {note}", dir.path().display());
    }
    println!("run directory: {}", dir.path().display());
    if let Some(Preprocessing::Fitted(_)) = &run.normalization
        && let Some(t) = model.preprocess()
    {
        dir.write_preprocess(t)?;
    }
    let start = Start {
        run,
        position: EnsemblePosition::default(),
        splits,
    };
    train_from(args, model, dir, start)
}

/// `--resume` of an ensemble's run directory.
pub fn resume(args: &TrainArgs) -> Result<()> {
    let Some(path) = args.resume.as_deref() else {
        return Ok(());
    };
    check_resume_flags(path, &given_flags())?;
    let ctx = open_gpu()?;
    let (dir, resumed) = EnsembleDir::resume(ctx, path)?;
    for note in &resumed.notes {
        println!("{}: {note}", path.display());
    }
    let (model, mut run, position) = (resumed.model, resumed.run, resumed.position);
    let done = position.epochs_done;
    let mid_epoch = position.within.is_some();
    if !resume_epochs(path, args.epochs, &mut run.epochs, done, mid_epoch)? {
        return Ok(());
    }
    let step = dir.last_saved().map_or(0, |s| s.step);
    match &position.within {
        Some((batches, _)) => println!(
            "resuming {} at step {step}: batch {batches} of epoch {} of {}",
            path.display(),
            done + 1,
            run.epochs
        ),
        None => println!(
            "resuming {} after epoch {done} of {}",
            path.display(),
            run.epochs
        ),
    }
    let splits = run.data.load()?;
    let start = Start {
        run,
        position,
        splits,
    };
    train_from(args, model, dir, start)
}

/// Where a run starts training: its settings, its place in the data, and the data.
struct Start {
    run: RunConfig,
    position: EnsemblePosition,
    splits: Splits,
}

/// Trains the stack from where `start` says, saving into `dir`, and reports each member,
/// their spread and the ensemble.
fn train_from(
    args: &TrainArgs,
    mut model: Model,
    mut dir: EnsembleDir,
    start: Start,
) -> Result<()> {
    let Start {
        run,
        position,
        splits,
    } = start;
    let members = model.members();
    let seeds: Vec<u64> = dir.members().iter().map(|m| m.seed).collect();
    println!(
        "data: {} training samples of shape {:?}; test: {} samples ({})",
        splits.train.len(),
        splits.train.sample_shape,
        splits.test.len(),
        splits.test_origin
    );
    if let Some(path) = run.data.path.as_deref().filter(|p| wgnn::data::is_csv(p)) {
        let layout = wgnn::data::csv::layout(path, &run.data.load_options().csv())?;
        println!("csv: {layout}");
    }
    println!("model: {} ({:?}, {:?})", run.arch, run.loss, run.optimizer);
    println!(
        "ensemble: {}, seeds {}, side by side in one plan",
        count(members),
        seed_range(&seeds)
    );
    println!("plan: {}", model.report(wgnn::Mode::Train));

    let configs: Vec<_> = (0..members)
        .map(|k| model.member_config(k).cloned())
        .collect::<wgnn::Result<_>>()?;
    let options = StackFitOptions {
        epochs: run.epochs,
        members: ensemble::member_fits(&run, &configs),
        same_batches: false,
        drop_last: run.drop_last,
        start_epoch: position.epochs_done,
        start_within: position.within.clone(),
        checkpoint_every: args.checkpoint_every,
        max_steps: args.max_steps,
        freeze_on_nonfinite: !args.keep_going,
        ..StackFitOptions::default()
    };
    let divergences = RefCell::new(Vec::new());
    let known: Vec<bool> = dir.members().iter().map(|m| m.diverged.is_some()).collect();
    let mut progress = Report {
        bar: None,
        quiet: args.quiet,
        epochs: run.epochs,
        members,
        keep_going: args.keep_going,
        known,
        divergences: &divergences,
    };
    let before = dir.last_saved();
    let result = fit_stack(
        &mut model,
        &splits.train,
        &splits.test,
        &options,
        &mut progress,
        |model, at| {
            if !args.keep_going && (0..model.members()).all(|k| model.is_frozen(k).unwrap_or(false))
            {
                return Err(EnsembleError::EveryMemberDiverged {
                    members: model.members(),
                }
                .into());
            }
            let report = dir.checkpoint(model, &run, at, &divergences.borrow())?;
            for (k, tensor, index, count) in report.nonfinite {
                eprintln!(
                    "warning: {} holds {count} non-finite value(s), the first {tensor}[{index}] (--keep-going); it is left out of the ensemble, and eval and predict refuse it",
                    dir.member_dir(k)
                        .join(wgnn::checkpoint::MODEL_FILE)
                        .display()
                );
            }
            Ok(())
        },
    );
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
        Some(place) if place.batches_done.is_some() => println!(
            "stopped at step {} (--max-steps); wrote every member's checkpoint of {place} to {}; `wgnn train --resume {}` continues",
            place.step,
            out.display(),
            out.display()
        ),
        Some(_) => summarize(&mut model, dir.members(), &splits, run.batch_size, &out)?,
        None => println!(
            "step {} already reaches --max-steps: nothing trained, nothing written",
            before.map_or(0, |s| s.step)
        ),
    }
    Ok(())
}

/// Each member's final test accuracy, their mean ± std, and the ensemble's.
fn summarize(
    model: &mut Model,
    records: &[MemberRecord],
    splits: &Splits,
    batch_size: usize,
    out: &Path,
) -> Result<()> {
    let mut finals = Vec::new();
    for (k, record) in records.iter().enumerate() {
        let last = record.history.last();
        match (&record.diverged, last) {
            (Some(d), _) => println!(
                "member {k} (seed {}): {d}; left out of the ensemble",
                record.seed
            ),
            (None, Some(m)) => {
                finals.push(m.test_accuracy);
                println!(
                    "member {k} (seed {}): test accuracy {:.2}% (loss {:.4}) after {} epochs",
                    record.seed,
                    100.0 * m.test_accuracy,
                    m.test_loss,
                    m.epoch
                );
            }
            (None, None) => println!("member {k} (seed {}): no epoch finished", record.seed),
        }
    }
    let included: Vec<usize> = (0..records.len())
        .filter(|&k| records[k].diverged.is_none())
        .collect();
    if finals.len() > 1 {
        let (mean, std) = mean_std(&finals);
        println!(
            "members: test accuracy {:.2}% ± {:.2}% (mean ± std of {})",
            100.0 * mean,
            100.0 * std,
            finals.len()
        );
    }
    if !included.is_empty() {
        let e = ensemble::evaluate(model, &included, &splits.test, batch_size)?;
        println!(
            "ensemble: test accuracy {:.2}% (loss {:.4}), the mean of {} {} probabilities",
            100.0 * e.accuracy,
            e.loss,
            match included.len() {
                1 => "1 member's".to_string(),
                n => format!("{n} members'"),
            },
            if model.graph().classes() == 1 {
                "sigmoid"
            } else {
                "softmax"
            }
        );
    }
    println!(
        "wrote {}/{{training_state.safetensors, metrics.csv, curves.svg, members/{}/checkpoint.safetensors}}",
        out.display(),
        match records.len() {
            1 => "0".to_string(),
            n => format!("{{0..{}}}", n - 1),
        }
    );
    Ok(())
}

/// `1 member`, `5 members`.
pub(super) fn count(members: usize) -> String {
    match members {
        1 => "1 member".into(),
        n => format!("{n} members"),
    }
}

/// `0 to 4`, or `7` for one.
fn seed_range(seeds: &[u64]) -> String {
    match (seeds.first(), seeds.last()) {
        (Some(a), Some(b)) if a != b => format!("{a} to {b}"),
        (Some(a), _) => a.to_string(),
        _ => String::new(),
    }
}

/// The progress bar of a step, a line per epoch over the members, and a line per member
/// that diverges.
struct Report<'a> {
    bar: Option<ProgressBar>,
    quiet: bool,
    epochs: usize,
    members: usize,
    keep_going: bool,
    /// Members whose divergence the run directory already records (said when resumed).
    known: Vec<bool>,
    /// Every divergence so far, for the checkpoints to record.
    divergences: &'a RefCell<Vec<Divergence>>,
}

impl StackProgress for Report<'_> {
    fn epoch_start(&mut self, epoch: usize, _epochs: usize, batches: usize) {
        if self.quiet {
            return;
        }
        let bar = ProgressBar::with_draw_target(Some(batches as u64), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(format!("{epoch}/{}", self.epochs));
        self.bar = Some(bar);
    }

    fn batch(&mut self, done: usize, member_samples_per_second: f64) {
        let Some(bar) = &self.bar else { return };
        bar.set_position(done as u64);
        if done == 1 || done.is_multiple_of(20) {
            bar.set_message(format!(
                "{member_samples_per_second:.0} member-samples/s ({})",
                count(self.members)
            ));
        }
    }

    fn epoch_end(&mut self, epoch: usize, metrics: &[Option<EpochMetrics>]) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        println!("{}", epoch_line(epoch, self.epochs, metrics));
    }

    fn diverged(&mut self, d: &Divergence) {
        if self.known.get(d.member).copied().unwrap_or(false) {
            return;
        }
        let line = format!(
            "{d}; {}",
            if self.keep_going {
                "it trains on (--keep-going) but is left out of the ensemble"
            } else {
                "frozen, left out of the ensemble; the others train on"
            }
        );
        match &self.bar {
            Some(bar) => bar.suspend(|| println!("{line}")),
            None => println!("{line}"),
        }
        self.divergences.borrow_mut().push(d.clone());
    }
}

/// `epoch   2/12: 5 members: train loss 0.4012 acc 88.10% | test loss 0.2011 acc 94.02% ± 0.31% (93.65–94.40%) | 1.2s, 104000 member-samples/s`:
/// the members' means, and the spread of their test accuracy.
fn epoch_line(epoch: usize, epochs: usize, metrics: &[Option<EpochMetrics>]) -> String {
    let live: Vec<&EpochMetrics> = metrics.iter().flatten().collect();
    let who = if live.len() == metrics.len() {
        count(metrics.len())
    } else {
        format!("{} of {}", live.len(), count(metrics.len()))
    };
    if live.is_empty() {
        return format!("epoch {epoch:>3}/{epochs}: {who}: every member diverged");
    }
    let mean =
        |f: fn(&EpochMetrics) -> f64| live.iter().map(|m| f(m)).sum::<f64>() / live.len() as f64;
    let accuracies: Vec<f64> = live.iter().map(|m| m.test_accuracy).collect();
    let (acc, std) = mean_std(&accuracies);
    let lo = accuracies.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = accuracies.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let seconds = live[0].seconds;
    let spread = if live.len() > 1 {
        format!(
            " ± {:.2}% ({:.2}–{:.2}%)",
            100.0 * std,
            100.0 * lo,
            100.0 * hi
        )
    } else {
        String::new()
    };
    format!(
        "epoch {epoch:>3}/{epochs}: {who}: train loss {:.4} acc {:6.2}% | test loss {:.4} acc {:6.2}%{spread} | {:.1}s, {:.0} member-samples/s",
        mean(|m| m.train_loss),
        100.0 * mean(|m| m.train_accuracy),
        mean(|m| m.test_loss),
        100.0 * acc,
        seconds,
        live.iter().map(|m| m.samples_per_second).sum::<f64>()
    )
}
