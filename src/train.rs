//! The training loop: epochs of seeded, shuffled batches on a [`Model`], with the test split
//! evaluated after each epoch. Loss and accuracy accumulate on the GPU; the loop polls them
//! asynchronously for progress and reads them once per epoch. It asks for checkpoints at
//! every epoch's end and, optionally, every so many steps within one; it starts where such
//! a checkpoint left off.
//!
//! The batch size is the model's ([`crate::ModelConfig::batch_size`]): the one its plans were
//! built for, and the only one.
//!
//! [`Model::fit`] is the common case (no progress report, no checkpoints); [`fit`] takes a
//! [`Progress`] and a hook called at every checkpoint, as the command line uses it.
//!
//! In a data-parallel job ([`Model::distribute`]) every rank runs this loop: each takes its
//! share of every epoch as PyTorch's `DistributedSampler` gives it, the batch size is per
//! rank, the test split is divided among the ranks, and the figures are those of all ranks.

use std::time::Instant;

use crate::data::{BatchOrder, Dataset};
use crate::error::{Error, Result};
pub use crate::metrics::EpochMetrics;
use crate::model::Model;
use crate::ops::reduce::{RawTotals, Totals};
use crate::optim::LrSchedule;

/// How to train: the loop's settings. The batch size is the model's
/// ([`crate::ModelConfig::batch_size`]). Every field has a default
/// (`FitOptions { epochs: 3, ..FitOptions::default() }`), given with it below.
#[derive(Clone, Debug, PartialEq)]
pub struct FitOptions {
    /// Train until this many epochs are complete (counting `start_epoch`). Default 10.
    pub epochs: usize,
    /// Shuffle with this seed, each epoch its own order drawn from (seed, epoch), as a
    /// `DataLoader(shuffle=True)` with a seeded generator; `None`: the data's order. Default
    /// `Some(0)`.
    pub shuffle_seed: Option<u64>,
    /// Drop a last, partial batch instead of training on it (`DataLoader(drop_last=…)`).
    /// Default false.
    pub drop_last: bool,
    /// Epochs already done (when resuming). Default 0.
    pub start_epoch: usize,
    /// Batches of the epoch after them already done, and that epoch's totals so far (when
    /// resuming from a checkpoint taken within an epoch). Default none.
    pub start_within: Option<(usize, RawTotals)>,
    /// Also ask for a checkpoint every this many steps within an epoch. Default none (at
    /// epoch ends only).
    pub checkpoint_every: Option<u64>,
    /// Stop once the model has taken this many optimizer steps, within an epoch or not
    /// (asking for a checkpoint there). Default none.
    pub max_steps: Option<u64>,
    /// Ask for the running totals every this many steps, for progress reports (0: never).
    /// Default 20.
    pub poll_every: usize,
    /// Stop on a NaN or infinite loss, or an update that meets a non-finite gradient
    /// (reported with its step). Default true.
    pub stop_on_nonfinite: bool,
    /// A learning-rate schedule and the base rate it starts from: each epoch trains at the
    /// schedule's rate for it (PyTorch's `scheduler.step()` once per epoch). Default none:
    /// the optimizer's rate throughout.
    pub lr_schedule: Option<(LrSchedule, f32)>,
}

impl Default for FitOptions {
    fn default() -> Self {
        Self {
            epochs: 10,
            shuffle_seed: Some(0),
            drop_last: false,
            start_epoch: 0,
            start_within: None,
            checkpoint_every: None,
            max_steps: None,
            poll_every: 20,
            stop_on_nonfinite: true,
            lr_schedule: None,
        }
    }
}

/// Where the loop stands when it asks for a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Checkpoint<'a> {
    /// An epoch ended, with its figures.
    EpochEnd(&'a EpochMetrics),
    /// Within epoch `epoch` (0-based), `batches_done` of its batches done, with the epoch's
    /// totals so far.
    Within {
        epoch: usize,
        batches_done: usize,
        totals: RawTotals,
    },
}

/// What the loop reports as it goes (the CLI draws a progress bar).
pub trait Progress {
    fn epoch_start(&mut self, _epoch: usize, _epochs: usize, _batches: usize) {}
    /// After each batch; `totals` when a poll returned.
    fn batch(&mut self, _done: usize, _samples_per_second: f64, _totals: Option<&Totals>) {}
    fn epoch_end(&mut self, _metrics: &EpochMetrics) {}
}

/// Reports nothing.
pub struct Silent;
impl Progress for Silent {}

impl Model {
    /// `model.fit(&train, &test, &options)`: trains on `train` in batches of the model's
    /// batch size, evaluating `test` after each epoch, with no progress report and no
    /// checkpoints ([`fit`] takes both). Returns each epoch's figures.
    pub fn fit(
        &mut self,
        train: &Dataset,
        test: &Dataset,
        options: &FitOptions,
    ) -> Result<Vec<EpochMetrics>> {
        fit(self, train, test, options, &mut Silent, |_, _| Ok(()))
    }
}

/// Trains `model` on `train` in batches of its batch size, evaluating `test` after each
/// epoch. `progress` hears of every epoch and batch ([`Silent`]: nothing). `on_checkpoint`
/// runs after each epoch, every `checkpoint_every` steps within one and at `max_steps`, with
/// the model in train mode (the CLI writes checkpoints there; `|_, _| Ok(())` when none is
/// wanted). Returns the figures of the epochs it ended. [`Model::fit`] is this without a
/// progress report or checkpoints.
pub fn fit(
    model: &mut Model,
    train: &Dataset,
    test: &Dataset,
    options: &FitOptions,
    progress: &mut dyn Progress,
    mut on_checkpoint: impl FnMut(&mut Model, Checkpoint<'_>) -> Result<()>,
) -> Result<Vec<EpochMetrics>> {
    let comm = model.communicator();
    // Throughput counts every rank's samples.
    let ranks = comm.size();
    let batch_size = model.config().batch_size;
    // Every rank must take the same steps, or one would wait for the others forever.
    let agreed = [
        ("training samples", train.len().to_string()),
        ("test samples", test.len().to_string()),
        ("batch size", batch_size.to_string()),
        ("options", format!("{options:?}")),
    ];
    crate::dist::agree(comm, &agreed.map(|(k, v)| (k.to_string(), v)).to_vec())?;
    let order = BatchOrder::new(
        train.len(),
        batch_size,
        options.shuffle_seed,
        options.drop_last,
    )?
    .shard(comm.rank(), comm.size())?;
    let mut history = Vec::new();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    let at_limit = |model: &Model| options.max_steps.is_some_and(|max| model.step() >= max);
    for epoch in options.start_epoch..options.epochs {
        if at_limit(model) {
            break;
        }
        let batches = order.epoch_batches(epoch as u64);
        progress.epoch_start(epoch + 1, options.epochs, batches.len());
        model.train();
        if let Some((schedule, base)) = options.lr_schedule {
            model.set_lr(schedule.lr(base, epoch));
        }
        // Resuming within this epoch: its first batches are done and counted.
        let (skip, totals) = match options.start_within {
            Some((done, totals)) if epoch == options.start_epoch => (done, Some(totals)),
            _ => (0, None),
        };
        match totals {
            Some(totals) => model.set_raw_totals(&totals),
            None => model.reset_metrics(),
        }
        let start = Instant::now();
        let mut samples = 0usize;
        for (i, indices) in batches.iter().enumerate().skip(skip) {
            train.gather(indices, &mut x, &mut y)?;
            if options.poll_every > 0 && i % options.poll_every == options.poll_every - 1 {
                model.request_metrics();
            }
            model.train_step(&x, &y)?;
            samples += indices.len() * ranks;
            let polled = model.poll_metrics()?;
            if let Some(t) = &polled {
                check_finite(model, t, options)?;
            }
            let rate = samples as f64 / start.elapsed().as_secs_f64().max(1e-9);
            progress.batch(i + 1, rate, polled.as_ref());
            let due = options
                .checkpoint_every
                .is_some_and(|every| every > 0 && model.step().is_multiple_of(every));
            let last = i + 1 == batches.len();
            if !last && (due || at_limit(model)) {
                let totals = model.raw_totals()?;
                check_finite(model, &Totals::from_raw(&totals), options)?;
                let within = Checkpoint::Within {
                    epoch,
                    batches_done: i + 1,
                    totals,
                };
                on_checkpoint(model, within)?;
                if at_limit(model) {
                    return Ok(history);
                }
            }
        }
        let totals = model.read_metrics()?;
        let seconds = start.elapsed().as_secs_f64();
        check_finite(model, &totals, options)?;
        let (test_loss, test_accuracy) = evaluate_totals(model, test, batch_size)?;
        let metrics = EpochMetrics {
            epoch: epoch + 1,
            train_loss: totals.mean_loss(),
            train_accuracy: totals.accuracy(),
            test_loss,
            test_accuracy,
            seconds,
            samples_per_second: samples as f64 / seconds.max(1e-9),
            step: model.step(),
        };
        model.train();
        progress.epoch_end(&metrics);
        on_checkpoint(model, Checkpoint::EpochEnd(&metrics))?;
        history.push(metrics);
    }
    Ok(history)
}

/// Stops at the first non-finite loss or update, whichever came first (the loss when both
/// are of one step: its gradients are then non-finite too).
fn check_finite(model: &Model, totals: &Totals, options: &FitOptions) -> Result<()> {
    if !options.stop_on_nonfinite {
        return Ok(());
    }
    let loss = totals.first_nonfinite_step;
    match (loss, totals.first_nonfinite_update) {
        (Some(step), update) if update.is_none_or(|u| step <= u.step) => Err(Error::Diverged {
            step: u64::from(step),
            value: totals.last_loss,
        }),
        (_, Some(update)) => {
            let (parameter, index) = model
                .parameter_at(update.element as usize)
                .map_or(("a parameter".to_string(), 0), |(name, i)| {
                    (name.to_string(), i)
                });
            Err(Error::NonFiniteUpdate {
                step: u64::from(update.step),
                parameter,
                index,
                gradient: update.gradient,
            })
        }
        _ => Ok(()),
    }
}

/// Mean loss and accuracy of `data` in eval mode, accumulated on the GPU. In a
/// data-parallel job every rank evaluates samples rank, rank + ranks, … (each once, no
/// padding) with rank 0's running statistics, and the figures are the whole split's.
pub fn evaluate_totals(model: &mut Model, data: &Dataset, batch_size: usize) -> Result<(f64, f64)> {
    if batch_size == 0 {
        return Err(crate::data::DataError::BatchSize { batch_size }.into());
    }
    model.broadcast_buffers()?;
    model.eval();
    model.reset_metrics();
    let comm = model.communicator();
    let mine: Vec<usize> = (comm.rank()..data.len()).step_by(comm.size()).collect();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for indices in mine.chunks(batch_size) {
        data.gather(indices, &mut x, &mut y)?;
        model.eval_step(&x, &y)?;
    }
    let totals = model.read_metrics()?;
    Ok((totals.mean_loss(), totals.accuracy()))
}

/// Loss, accuracy and confusion matrix of a labelled dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    pub samples: usize,
    pub loss: f64,
    pub accuracy: f64,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<u64>>,
}

/// Evaluates `data` in eval mode, with the confusion matrix (reads the logits back).
pub fn evaluate(model: &mut Model, data: &Dataset, batch_size: usize) -> Result<Evaluation> {
    let (loss, accuracy) = evaluate_totals(model, data, batch_size)?;
    let classes = model.graph().classes();
    let binary = classes == 1;
    let k = if binary { 2 } else { classes };
    let mut confusion = vec![vec![0u64; k]; k];
    let order = BatchOrder::new(data.len(), batch_size, None, false)?;
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for indices in order.epoch_batches(0) {
        data.gather(&indices, &mut x, &mut y)?;
        let logits = model.predict(&x)?;
        for (row, &label) in logits.chunks(classes).zip(&y) {
            let predicted = if binary {
                usize::from(row[0] > 0.0)
            } else {
                argmax(row)
            };
            if let Some(cell) = confusion
                .get_mut(label as usize)
                .and_then(|r| r.get_mut(predicted))
            {
                *cell += 1;
            }
        }
    }
    Ok(Evaluation {
        samples: data.len(),
        loss,
        accuracy,
        confusion,
    })
}

/// Index of the first maximum, as torch.argmax.
pub fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (j, &v)| {
            if v > best.1 { (j, v) } else { best }
        })
        .0
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::gpu::GpuContext;
    use crate::nn::{CrossEntropyLoss, Sequential};
    use crate::optim::{Optimizer, Sgd};
    use crate::{Model, ModelConfig};

    #[test]
    fn each_epoch_trains_at_its_scheduled_rate_and_resumes_on_it() {
        let ctx = Arc::new(GpuContext::new().unwrap());
        let config = ModelConfig {
            sample_shape: vec![6],
            batch_size: 4,
            seed: 3,
        };
        let sgd = Optimizer::Sgd(Sgd {
            lr: 0.2,
            ..Sgd::default()
        });
        let layers = Sequential::lecture_mlp(6, 3, 0.0);
        let mut model = Model::new(ctx, layers, CrossEntropyLoss::new(), sgd, config).unwrap();
        let x: Vec<f32> = (0..60).map(|i| (i % 7) as f32 / 7.0).collect();
        let data = Dataset::new(x, vec![6], (0..10).map(|i| i % 3).collect(), "memory").unwrap();
        let schedule = LrSchedule::Step {
            step_size: 1,
            gamma: 0.5,
        };
        let mut options = FitOptions {
            epochs: 3,
            lr_schedule: Some((schedule, 0.2)),
            ..FitOptions::default()
        };
        let mut rates = Vec::new();
        let mut record = |model: &mut Model, checkpoint: Checkpoint<'_>| {
            if let Checkpoint::EpochEnd(_) = checkpoint {
                rates.push(model.lr());
            }
            Ok(())
        };
        fit(&mut model, &data, &data, &options, &mut Silent, &mut record).unwrap();
        // Resumed at epoch 3 of 5: the schedule picks up from the epoch, not from the rate
        // the model was left with.
        options.start_epoch = 3;
        options.epochs = 5;
        fit(&mut model, &data, &data, &options, &mut Silent, &mut record).unwrap();
        assert_eq!(rates, [0.2, 0.1, 0.05, 0.025, 0.0125]);
    }
}
