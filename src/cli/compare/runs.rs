//! The runs of an experiment: every variant checked before anything trains, then each run
//! (variant × seed) trained in its own run directory, or resumed there, or kept when it has
//! ended, and its outcome recorded.
//!
//! A run is one [`RunDir`], saved at every epoch's end (and every `--checkpoint-every` steps)
//! exactly as `wgnn train` saves one, so a kill at any instant loses at most the steps since
//! the last save and a rerun resumes from it bit for bit ([`RunDir::resume`]). When a run
//! ends — trained to its last epoch or stopped by a NaN or infinite loss — its rows of
//! results.csv are written to its `result.csv`: from then on it is kept as it is. The unit
//! handed to `Session::train_run` is one run; the rest (the list, the records, the outputs)
//! does not depend on how a run's epochs are computed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use wgnn::checkpoint::TRAINING_FILE;
use wgnn::data::prepare::Splits;
use wgnn::data::{DataError, FitLimits, Transform};
use wgnn::durable;
use wgnn::gpu::GpuContext;
use wgnn::nn::Layer;
use wgnn::run::{self, DataConfig, Position, Preprocessing, RunConfig};
use wgnn::rundir::RunDir;
use wgnn::train::{Checkpoint, FitOptions, Silent, fit};

use super::measure;
use super::outdir::CompareDir;
use super::results::{EpochRow, RUN_RESULT_FILE, RunRecord, parse, to_csv};
use super::schema::{Experiment, Variant, bad, train_args};
use crate::cli::error::{CliError, Result};
use crate::cli::train;

/// A variant ready to run: its run (with the first seed; each run sets its own) and its
/// preprocessing, fitted once on the training split: the seed changes neither.
pub struct Prepared {
    run: RunConfig,
    transform: Option<Transform>,
}

/// The last data loaded, kept while the next variant or run reads the same.
#[derive(Default)]
struct DataCache {
    loaded: Option<(DataConfig, Splits)>,
}

impl DataCache {
    fn get(&mut self, data: &DataConfig) -> wgnn::Result<&Splits> {
        // Other data is dropped before the next is loaded.
        let kept = self.loaded.take().filter(|(c, _)| c == data);
        let loaded = match kept {
            Some(kept) => kept,
            None => (data.clone(), data.load()?),
        };
        Ok(&self.loaded.insert(loaded).1)
    }
}

/// The setting an error from preparing a variant is about, where its kind says.
fn setting_of(error: &CliError) -> Option<&'static str> {
    use wgnn::Error as E;
    match error {
        CliError::ArchOutputs { .. } | CliError::ArchWithoutLogits { .. } => Some("arch"),
        CliError::BinaryLossClasses { .. } => Some("loss"),
        CliError::AmsgradWithSgd => Some("amsgrad"),
        CliError::Wgnn(e) => match e {
            E::Spec(_) | E::Build(_) | E::ParametersTooLarge { .. } => Some("arch"),
            E::Schedule(_) => Some("lr-schedule"),
            E::Data(DataError::Preprocess(_)) => Some("normalize"),
            E::Data(DataError::CsvLabelColumn { .. }) => Some("label-column"),
            E::Data(_) | E::Io { .. } => Some("data"),
            E::Batch(wgnn::model::BatchError::TooLarge { .. }) => Some("batch-size"),
            _ => None,
        },
        _ => None,
    }
}

/// `error` of `variant`, naming the variant and, where known, the setting.
fn in_variant(file: &Path, variant: &Variant, error: impl Into<CliError>) -> CliError {
    let error = error.into();
    let setting = setting_of(&error).map_or(String::new(), |s| format!(", `{s}`"));
    bad(
        file,
        format!("variant {:?}{setting}: {error}", variant.name),
    )
}

/// Checks every variant before anything trains, as its runs will meet it: its settings
/// through `wgnn train`'s parser, its data loaded, its preprocessing fitted (ranks and
/// sizes), its model built on the device (shapes, the plan's memory) and its batches
/// trainable; the first problem is refused, naming the variant and the setting.
pub fn prepare(
    ctx: &Arc<GpuContext>,
    file: &Path,
    experiment: &Experiment,
) -> Result<Vec<Prepared>> {
    let mut data = DataCache::default();
    let mut prepared = Vec::with_capacity(experiment.variants.len());
    for variant in &experiment.variants {
        let args = train_args(file, variant, experiment.seeds[0])?;
        let fail = |e: CliError| in_variant(file, variant, e);
        let config = train::data_config(&args).map_err(fail)?;
        let splits = data.get(&config).map_err(|e| fail(e.into()))?;
        let limits = FitLimits::of_machine().with_binding(ctx.max_binding_bytes());
        let (run, transform) = train::run_on(&args, config, splits, &limits).map_err(fail)?;
        let layers = run.sequential().map_err(|e| fail(e.into()))?;
        let batch_norm = layers
            .layers()
            .iter()
            .any(|l| matches!(l, Layer::BatchNorm1d(_)));
        if batch_norm && experiment.gradient_signs {
            return Err(bad(
                file,
                format!(
                    "variant {:?}, `arch`: `measure = [\"gradient-signs\"]` trains on a batch of \
                     one, which batch norm cannot: use an arch without bn",
                    variant.name
                ),
            ));
        }
        let last = splits.train.len() % run.batch_size;
        if batch_norm && (run.batch_size == 1 || (last == 1 && !run.drop_last)) {
            return Err(bad(
                file,
                format!(
                    "variant {:?}, `batch-size`: {} training samples in batches of {} leave a \
                     batch of 1 sample, which batch norm cannot train on: use another batch \
                     size, or drop-last = true",
                    variant.name,
                    splits.train.len(),
                    run.batch_size
                ),
            ));
        }
        // The plan on the device: shapes, buffer limits, memory.
        drop(
            run.build_with(ctx.clone(), None, transform.clone())
                .map_err(|e| fail(e.into()))?,
        );
        prepared.push(Prepared { run, transform });
    }
    Ok(prepared)
}

/// How the experiment's runs are trained.
pub struct Session<'a> {
    pub ctx: Arc<GpuContext>,
    pub experiment: &'a Experiment,
    pub dir: &'a CompareDir,
    pub prepared: Vec<Prepared>,
    pub checkpoint_every: Option<u64>,
}

/// One ended run read back from its `result.csv`.
fn read_kept(path: &Path, experiment: &Experiment, variant: &str, seed: u64) -> Result<RunRecord> {
    let file = path.join(RUN_RESULT_FILE);
    let bytes = std::fs::read(&file).map_err(|e| {
        CliError::Wgnn(wgnn::Error::Io {
            path: file.display().to_string(),
            source: e,
        })
    })?;
    let records = parse(&file, &bytes, experiment)?;
    match records.as_slice() {
        [r] if r.variant == variant && r.seed == seed => Ok(r.clone()),
        _ => Err(CliError::CompareDir {
            path: file,
            message: format!(
                "does not hold the rows of variant {variant:?} seed {seed} alone: edited? \
                 --overwrite starts the experiment over"
            ),
        }),
    }
}

/// One run of the experiment: a variant (its index), a seed, and its number in the file's
/// order (from 1), as the progress lines count.
#[derive(Clone, Copy, Debug)]
struct RunId {
    variant: usize,
    seed: u64,
    number: usize,
}

impl Session<'_> {
    /// Every run, in the file's order; returns their records. The runs that ended before are
    /// kept; the others are trained, or resumed, one at a time (`train_run`: the
    /// unit a group of runs trained together would replace), and after each `on_record` sees
    /// every record there is.
    pub fn run_all(
        &mut self,
        mut on_record: impl FnMut(&[RunRecord]) -> Result<()>,
    ) -> Result<Vec<RunRecord>> {
        let experiment = self.experiment;
        let total = experiment.runs();
        let runs = experiment
            .variants
            .iter()
            .enumerate()
            .flat_map(|(v, _)| experiment.seeds.iter().map(move |&seed| (v, seed)));
        // The runs that ended before are kept as they are; the others are pending.
        let mut kept = Vec::new();
        let mut pending = Vec::new();
        for (i, (variant, seed)) in runs.enumerate() {
            let id = RunId {
                variant,
                seed,
                number: i + 1,
            };
            let path = self.path(id);
            if path.join(RUN_RESULT_FILE).exists() {
                let name = &experiment.variants[variant].name;
                kept.push((id, read_kept(&path, experiment, name, seed)?));
            } else {
                pending.push(id);
            }
        }
        if !kept.is_empty() {
            println!(
                "resuming {}: {} of {total} runs ended before and are kept",
                self.dir.path().display(),
                kept.len()
            );
        }
        let mut records = Vec::with_capacity(total);
        for (id, record) in kept {
            println!("{} {} (ended before)", self.prefix(id), record.outcome());
            records.push(record);
        }
        let mut data = DataCache::default();
        let start = Instant::now();
        for (done, &id) in pending.iter().enumerate() {
            let began = Instant::now();
            let (record, resumed) =
                self.train_run(id, &mut data)
                    .map_err(|e| CliError::CompareDir {
                        path: self.path(id),
                        message: format!(
                            "variant {:?} seed {}: {e} (the runs that ended are kept in {}: the \
                         same command again resumes, --overwrite starts over)",
                            experiment.variants[id.variant].name,
                            id.seed,
                            self.dir.path().display()
                        ),
                    })?;
            let left = start.elapsed().as_secs_f64() / (done + 1) as f64
                * (pending.len() - done - 1) as f64;
            println!(
                "{}{resumed} ({:.1} s; about {left:.0} s left)",
                record.outcome(),
                began.elapsed().as_secs_f64(),
            );
            records.push(record);
            on_record(&records)?;
        }
        Ok(records)
    }

    fn path(&self, id: RunId) -> PathBuf {
        let variants = self.experiment.variants.len();
        self.dir.run_path(id.variant, variants, id.seed)
    }

    /// `[  3/24] lr=0.1 · seed 2:`, the start of a run's progress line.
    fn prefix(&self, id: RunId) -> String {
        format!(
            "[{:>3}/{}] {} · seed {}:",
            id.number,
            self.experiment.runs(),
            self.experiment.variants[id.variant].name,
            id.seed
        )
    }

    /// Trains one run to its end in its directory: resumed from its last save when there is
    /// one, else from the start; writes its `result.csv`. Returns its record and how it began.
    fn train_run(&self, id: RunId, data: &mut DataCache) -> Result<(RunRecord, String)> {
        let RunId { variant, seed, .. } = id;
        let path = &self.path(id);
        let experiment = self.experiment;
        let prepared = &self.prepared[variant];
        let mut run = prepared.run.clone();
        run.seed = seed;
        let measures = path.join(measure::MEASURES_FILE);
        let (mut dir, mut model, position, mut signs) = if path.join(TRAINING_FILE).exists() {
            let (dir, resumed) = RunDir::resume(self.ctx.clone(), path)?;
            if resumed.run != run {
                return Err(CliError::CompareDir {
                    path: path.to_path_buf(),
                    message: format!(
                        "holds a run with other settings ({}) than the experiment now gives it: \
                         its data changed? --overwrite starts the experiment over",
                        differences(&resumed.run, &run)
                    ),
                });
            }
            let signs = if experiment.gradient_signs {
                measure::read_measures(&measures, resumed.position.epochs_done)?
            } else {
                Vec::new()
            };
            (dir, resumed.model, resumed.position, signs)
        } else {
            // Nothing saved yet: whatever a start killed before its first save left goes.
            let mut dir = RunDir::create(path, true)?;
            let _ = dir.take_notes();
            if measures.exists() {
                durable::remove_file(&measures).map_err(|e| io(&measures, e))?;
            }
            if let Some(Preprocessing::Fitted(_)) = &run.normalization
                && let Some(t) = &prepared.transform
            {
                run::write_transform(&path.join(run::PREPROCESS_FILE), t)?;
            }
            let model = run.build_with(self.ctx.clone(), None, prepared.transform.clone())?;
            (dir, model, Position::default(), Vec::new())
        };
        let resumed = match dir.last_saved() {
            Some(saved) if position.epochs_done < run.epochs => format!(" (resumed from {saved})"),
            _ => String::new(),
        };
        print!("{} ", self.prefix(id));
        let _ = std::io::Write::flush(&mut std::io::stdout());
        let splits = data.get(&run.data)?;
        let options = FitOptions {
            epochs: run.epochs,
            shuffle_seed: run.shuffle.then_some(run.seed),
            drop_last: run.drop_last,
            start_epoch: position.epochs_done,
            start_within: position.within,
            checkpoint_every: self.checkpoint_every,
            lr_schedule: run.lr_schedule.map(|schedule| (schedule, run.lr)),
            stop_on_nonfinite: true,
            ..FitOptions::default()
        };
        let result = fit(
            &mut model,
            &splits.train,
            &splits.test,
            &options,
            &mut Silent,
            |model, at| {
                // The measure is written before the save that ends its epoch: never behind it.
                if let Checkpoint::EpochEnd(m) = at
                    && experiment.gradient_signs
                {
                    let share =
                        measure::single_signed_share(&self.ctx, model, &run, &splits.train)?;
                    signs.truncate(m.epoch - 1);
                    signs.push(share);
                    measure::write_measures(&measures, &signs)?;
                }
                let _ = dir.checkpoint(model, &run, at)?;
                Ok(())
            },
        );
        let diverged = match result {
            Ok(_) => None,
            Err(wgnn::Error::Diverged { .. } | wgnn::Error::NonFiniteUpdate { .. }) => {
                Some(dir.history().len() + 1)
            }
            Err(e) => return Err(e.into()),
        };
        let record = RunRecord {
            variant: experiment.variants[variant].name.clone(),
            seed,
            epochs: dir
                .history()
                .iter()
                .enumerate()
                .map(|(i, m)| EpochRow {
                    metrics: *m,
                    share: signs.get(i).copied(),
                })
                .collect(),
            diverged,
        };
        let file = path.join(RUN_RESULT_FILE);
        durable::write_atomic(&file, &to_csv(std::slice::from_ref(&record)))
            .map_err(|e| io(&file, e))?;
        Ok((record, resumed))
    }
}

fn io(path: &Path, source: std::io::Error) -> CliError {
    CliError::Wgnn(wgnn::Error::Io {
        path: path.display().to_string(),
        source,
    })
}

/// The settings in which two runs differ, by name.
fn differences(a: &RunConfig, b: &RunConfig) -> String {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
        (serde_json::to_value(a), serde_json::to_value(b))
    else {
        return "unknown".into();
    };
    let keys: Vec<&str> = a
        .iter()
        .filter(|(k, v)| b.get(*k) != Some(v))
        .map(|(k, _)| k.as_str())
        .collect();
    keys.join(", ")
}
