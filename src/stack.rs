//! The training loop of a stack ([`Model::stack`]): epochs of batches, one per member in
//! each step — its own shuffle (the default) or the same batch for all — with each member's
//! learning-rate schedule, the test split evaluated by every member after each epoch, and a
//! member whose loss or update goes non-finite frozen and reported while the others train on.
//!
//! Member k of a stack trained here gives the figures and the bits of [`crate::train::fit`]
//! on a lone model with member k's settings, shuffle and schedule (`tests/stack_fit.rs`).

use std::time::Instant;

use crate::data::{BatchOrder, Dataset};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::ops::reduce::{RawTotals, Totals};
use crate::optim::LrSchedule;
use crate::train::EpochMetrics;

/// One member's part of the loop: its shuffle and its schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct MemberFit {
    /// The member's shuffle, each epoch's order drawn from (seed, epoch); `None`: the data's
    /// order. Default `Some(0)`.
    pub shuffle_seed: Option<u64>,
    /// The member's learning-rate schedule and the base rate it starts from. Default none.
    pub lr_schedule: Option<(LrSchedule, f32)>,
}

impl Default for MemberFit {
    fn default() -> Self {
        Self {
            shuffle_seed: Some(0),
            lr_schedule: None,
        }
    }
}

/// How to train a stack. The batch size is the model's. Defaults as [`crate::train::FitOptions`]'s.
#[derive(Clone, Debug, PartialEq)]
pub struct StackFitOptions {
    /// Train until this many epochs are complete (counting `start_epoch`). Default 10.
    pub epochs: usize,
    /// One entry per member: its shuffle and schedule. Default: one member, shuffled with
    /// seed 0.
    pub members: Vec<MemberFit>,
    /// Every member reads the same batch — member 0's order — instead of its own: for sweeps
    /// over hyper-parameters alone, where the members differ in nothing else. Default false.
    pub same_batches: bool,
    /// Drop a last, partial batch (`DataLoader(drop_last=…)`). Default false.
    pub drop_last: bool,
    /// Epochs already done (when resuming). Default 0.
    pub start_epoch: usize,
    /// Batches of the epoch after them already done, and every member's totals so far.
    /// Default none.
    pub start_within: Option<(usize, Vec<RawTotals>)>,
    /// Also ask for a checkpoint every this many steps within an epoch. Default none.
    pub checkpoint_every: Option<u64>,
    /// Stop once the stack has taken this many steps (its members', a frozen one's aside),
    /// within an epoch or not, asking for a checkpoint there, as [`crate::train::fit`] stops
    /// a lone model. Default none.
    pub max_steps: Option<u64>,
    /// Poll the totals every this many steps, for progress and to catch a diverging member
    /// early (0: at epoch ends only). Default 20.
    pub poll_every: usize,
    /// Freeze a member at its first NaN or infinite loss, or its first update that meets a
    /// non-finite gradient or leaves a non-finite parameter (`--check-finite`'s lone
    /// meaning: stop that model); false (`--keep-going`): report it and train it on.
    /// Default true.
    pub freeze_on_nonfinite: bool,
}

impl Default for StackFitOptions {
    fn default() -> Self {
        Self {
            epochs: 10,
            members: vec![MemberFit::default()],
            same_batches: false,
            drop_last: false,
            start_epoch: 0,
            start_within: None,
            checkpoint_every: None,
            max_steps: None,
            poll_every: 20,
            freeze_on_nonfinite: true,
        }
    }
}

/// Where and how a member went non-finite.
#[derive(Clone, Debug, PartialEq)]
pub struct Divergence {
    pub member: usize,
    /// 1-based epoch it happened in.
    pub epoch: usize,
    /// The step whose loss, or update, was first non-finite.
    pub step: u64,
    /// What: the loss, or the parameter an update left non-finite (or met a non-finite
    /// gradient in).
    pub what: String,
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "member {} diverged at step {} (epoch {}): {}",
            self.member, self.step, self.epoch, self.what
        )
    }
}

/// Where the loop stands when it asks for a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StackCheckpoint<'a> {
    /// An epoch ended; each member's figures (none for a member frozen before it).
    EpochEnd(&'a [Option<EpochMetrics>]),
    /// Within epoch `epoch` (0-based), `batches_done` of its batches done, with every
    /// member's totals so far.
    Within {
        epoch: usize,
        batches_done: usize,
        totals: &'a [RawTotals],
    },
}

/// What the loop reports as it goes.
pub trait StackProgress {
    fn epoch_start(&mut self, _epoch: usize, _epochs: usize, _batches: usize) {}
    /// After each step; `member_samples_per_second` counts every member's samples.
    fn batch(&mut self, _done: usize, _member_samples_per_second: f64) {}
    fn epoch_end(&mut self, _epoch: usize, _metrics: &[Option<EpochMetrics>]) {}
    fn diverged(&mut self, _divergence: &Divergence) {}
}

/// Reports nothing.
pub struct Quiet;
impl StackProgress for Quiet {}

/// Each member's figures, epoch by epoch, and how the ones that diverged did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StackHistory {
    /// `epochs[k]`: member k's figures of the epochs it finished.
    pub epochs: Vec<Vec<EpochMetrics>>,
    pub divergences: Vec<Divergence>,
}

/// Trains every member of `model` on `train`, evaluating `test` after each epoch;
/// `on_checkpoint` runs after each epoch and every `checkpoint_every` steps within one.
pub fn fit_stack(
    model: &mut Model,
    train: &Dataset,
    test: &Dataset,
    options: &StackFitOptions,
    progress: &mut dyn StackProgress,
    mut on_checkpoint: impl FnMut(&mut Model, StackCheckpoint<'_>) -> Result<()>,
) -> Result<StackHistory> {
    let members = model.members();
    if options.members.len() != members {
        return Err(crate::model::StackError::Count {
            given: options.members.len(),
            members,
        }
        .into());
    }
    if model.communicator().size() > 1 {
        return Err(
            crate::dist::DistError::Unsupported("a stack trains in one process".into()).into(),
        );
    }
    let batch_size = model.config().batch_size;
    let orders = options
        .members
        .iter()
        .map(|m| {
            let seed = if options.same_batches {
                options.members[0].shuffle_seed
            } else {
                m.shuffle_seed
            };
            BatchOrder::new(train.len(), batch_size, seed, options.drop_last)
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let mut history = StackHistory {
        epochs: vec![Vec::new(); members],
        divergences: Vec::new(),
    };
    let (mut x, mut y) = (Vec::new(), Vec::new());
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    let at_limit = |model: &Model| {
        options
            .max_steps
            .is_some_and(|max| stack_step(model) >= max)
    };
    for epoch in options.start_epoch..options.epochs {
        if at_limit(model) || all_frozen(model)? {
            break;
        }
        let batches: Vec<Vec<Vec<usize>>> = orders
            .iter()
            .map(|o| o.epoch_batches(epoch as u64))
            .collect();
        let steps = batches[0].len();
        progress.epoch_start(epoch + 1, options.epochs, steps);
        model.train();
        for (k, m) in options.members.iter().enumerate() {
            if let Some((schedule, base)) = m.lr_schedule {
                model.set_member_lr(k, schedule.lr(base, epoch))?;
            }
        }
        let (skip, totals) = match &options.start_within {
            Some((done, totals)) if epoch == options.start_epoch => (*done, Some(totals)),
            _ => (0, None),
        };
        match totals {
            Some(totals) => model.set_member_raw_totals(totals)?,
            None => model.reset_metrics(),
        }
        let start = Instant::now();
        let mut samples = 0usize;
        for i in skip..steps {
            xs.clear();
            ys.clear();
            for member_batches in &batches {
                train.gather(&member_batches[i], &mut x, &mut y)?;
                xs.extend_from_slice(&x);
                ys.extend_from_slice(&y);
            }
            if options.poll_every > 0 && i % options.poll_every == options.poll_every - 1 {
                model.request_metrics();
            }
            model.train_step_members(&xs, &ys)?;
            samples += ys.len();
            if let Some(totals) = model.poll_member_metrics()? {
                check_members(model, &totals, epoch, options, &mut history, progress)?;
                if all_frozen(model)? {
                    // Every member diverged: nothing is left to train.
                    return Ok(history);
                }
            }
            progress.batch(
                i + 1,
                samples as f64 / start.elapsed().as_secs_f64().max(1e-9),
            );
            let due = options
                .checkpoint_every
                .is_some_and(|every| every > 0 && stack_step(model).is_multiple_of(every));
            if i + 1 < steps && (due || at_limit(model)) {
                let totals = model.member_raw_totals()?;
                let read: Vec<Totals> = totals.iter().map(|t| Totals::from_raw(t)).collect();
                check_members(model, &read, epoch, options, &mut history, progress)?;
                let within = StackCheckpoint::Within {
                    epoch,
                    batches_done: i + 1,
                    totals: &totals,
                };
                on_checkpoint(model, within)?;
                if at_limit(model) {
                    return Ok(history);
                }
            }
        }
        let train_totals = model.read_member_metrics()?;
        let seconds = start.elapsed().as_secs_f64();
        check_members(model, &train_totals, epoch, options, &mut history, progress)?;
        let frozen: Vec<bool> = (0..members)
            .map(|k| model.is_frozen(k))
            .collect::<Result<_>>()?;
        let tests = evaluate_members(model, test, batch_size)?;
        let metrics: Vec<Option<EpochMetrics>> = (0..members)
            .map(|k| {
                // A frozen member's epoch ended at its divergence, as a lone model's fit
                // stops there: it has no figures.
                (!frozen[k]).then(|| EpochMetrics {
                    epoch: epoch + 1,
                    train_loss: train_totals[k].mean_loss(),
                    train_accuracy: train_totals[k].accuracy(),
                    test_loss: tests[k].0,
                    test_accuracy: tests[k].1,
                    seconds,
                    samples_per_second: samples as f64 / members as f64 / seconds.max(1e-9),
                    step: model.member_step(k).unwrap_or(0),
                })
            })
            .collect();
        model.train();
        progress.epoch_end(epoch + 1, &metrics);
        on_checkpoint(model, StackCheckpoint::EpochEnd(&metrics))?;
        for (k, m) in metrics.into_iter().enumerate() {
            history.epochs[k].extend(m);
        }
    }
    Ok(history)
}

/// Whether every member is frozen: a lone model's loop would have stopped for each.
fn all_frozen(model: &Model) -> Result<bool> {
    for k in 0..model.members() {
        if !model.is_frozen(k)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Notes and reports each member whose totals show a first non-finite loss or update, and
/// freezes it when the options say so.
fn check_members(
    model: &mut Model,
    totals: &[Totals],
    epoch: usize,
    options: &StackFitOptions,
    history: &mut StackHistory,
    progress: &mut dyn StackProgress,
) -> Result<()> {
    for (k, t) in totals.iter().enumerate() {
        if history.divergences.iter().any(|d| d.member == k) {
            continue;
        }
        let Some((step, what)) = nonfinite(model, t) else {
            continue;
        };
        let divergence = Divergence {
            member: k,
            epoch: epoch + 1,
            step,
            what,
        };
        progress.diverged(&divergence);
        history.divergences.push(divergence);
        if options.freeze_on_nonfinite {
            model.freeze(k)?;
        }
    }
    Ok(())
}

/// The first non-finite loss or update the totals note, whichever came first, and what it
/// was: as [`crate::train::fit`] reports it.
fn nonfinite(model: &Model, totals: &Totals) -> Option<(u64, String)> {
    let loss = totals.first_nonfinite_step;
    match (loss, totals.first_nonfinite_update) {
        (Some(step), update) if update.is_none_or(|u| step <= u.step) => {
            Some((u64::from(step), format!("the loss is {}", totals.last_loss)))
        }
        (_, Some(update)) => {
            let (parameter, index) = model
                .parameter_at(update.element as usize)
                .map_or(("a parameter".to_string(), 0), |(name, i)| {
                    (name.to_string(), i)
                });
            let what = if update.gradient {
                format!("the update of {parameter}[{index}] met a non-finite gradient")
            } else {
                format!("the update left {parameter}[{index}] non-finite")
            };
            Some((u64::from(update.step), what))
        }
        _ => None,
    }
}

/// Every member's mean loss and accuracy of `data` in eval mode (each evaluates the same
/// batches), accumulated on the GPU.
pub fn evaluate_members(
    model: &mut Model,
    data: &Dataset,
    batch_size: usize,
) -> Result<Vec<(f64, f64)>> {
    if batch_size == 0 {
        return Err(crate::data::DataError::BatchSize { batch_size }.into());
    }
    model.eval();
    model.reset_metrics();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    let all: Vec<usize> = (0..data.len()).collect();
    for indices in all.chunks(batch_size) {
        data.gather(indices, &mut x, &mut y)?;
        model.eval_step(&x, &y)?;
    }
    Ok(model
        .read_member_metrics()?
        .iter()
        .map(|t| (t.mean_loss(), t.accuracy()))
        .collect())
}

/// The steps the stack has taken: its members' (a frozen one's stopped at its freezing).
fn stack_step(model: &Model) -> u64 {
    (0..model.members())
        .filter_map(|k| model.member_step(k).ok())
        .max()
        .unwrap_or(0)
}

/// Member k's figures, epoch by epoch: what [`crate::train::fit`] gives its lone model.
pub fn member_history(history: &StackHistory, k: usize) -> Result<&[EpochMetrics]> {
    history.epochs.get(k).map(Vec::as_slice).ok_or_else(|| {
        Error::from(crate::model::StackError::NoMember {
            member: k,
            members: history.epochs.len(),
        })
    })
}
