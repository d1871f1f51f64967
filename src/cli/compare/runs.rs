//! The runs of an experiment: every variant checked before anything trains, then the runs
//! (variant × seed) that have not ended trained — by default in groups that share one stack
//! ([`super::grouping`], [`super::stacked`]), with `--sequential` one at a time — or resumed,
//! and the ended ones kept; each run's outcome recorded.
//!
//! A run trained alone is one [`RunDir`], saved at every epoch's end (and every
//! `--checkpoint-every` steps) exactly as `wgnn train` saves one, so a kill at any instant
//! loses at most the steps since the last save and a rerun resumes from it bit for bit
//! ([`RunDir::resume`]). A group saves at the same points, all its members in one file
//! ([`super::group_save`]). When a run ends — trained to its last epoch or stopped by a NaN
//! or infinite loss — its rows of results.csv are written to its `result.csv`: from then on
//! it is kept as it is.
//!
//! Either path resumes what the other left: `--sequential` hands a group save over to its
//! runs' own directories, and the stacked path finishes a run that `--sequential` left
//! mid-way alone, from its own save. Since a member of a stack computes its lone run's bits,
//! both paths end with the same files.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use wgnn::checkpoint::TRAINING_FILE;
use wgnn::data::{DataError, FitLimits};
use wgnn::durable;
use wgnn::gpu::GpuContext;
use wgnn::nn::Layer;
use wgnn::run::{self, Position, Preprocessing};
use wgnn::rundir::RunDir;
use wgnn::train::{Checkpoint, FitOptions, Silent, fit};

use super::group_save::{self, GROUP_SUFFIX, GROUPS_DIR};
use super::grouping;
use super::measure;
use super::results::{EpochRow, RUN_RESULT_FILE, RunRecord, parse, to_csv};
use super::schema::{Experiment, Variant, bad, train_args};
use super::session::{Clock, DataCache, Prepared, RunId, Session, differences, io};
use super::stacked::{Group, remove_group_save};
use crate::cli::error::{CliError, Result};
use crate::cli::run_flags;

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
        let config = run_flags::data_config(&args).map_err(fail)?;
        let splits = data.get(&config).map_err(|e| fail(e.into()))?;
        let limits = FitLimits::of_machine().with_binding(ctx.max_binding_bytes());
        let (run, transform) = run_flags::run_on(&args, config, splits, &limits).map_err(fail)?;
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
        let capacity = run
            .build_with(ctx.clone(), None, transform.clone())
            .map_err(|e| fail(e.into()))?
            .stack_capacity();
        prepared.push(Prepared {
            run,
            transform,
            capacity,
        });
    }
    Ok(prepared)
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

/// One piece of the work: a run trained alone, or a group trained as one stack.
enum Unit {
    Alone(RunId),
    Group(Group),
}

impl Unit {
    fn first(&self) -> usize {
        match self {
            Unit::Alone(id) => id.number,
            Unit::Group(g) => g.ids[0].number,
        }
    }
}

impl Session<'_> {
    /// Every run, in the file's order; returns their records. The runs that ended before
    /// are kept; the others are trained, or resumed: in groups that share one stack, or
    /// (`--sequential`, and a run that one left mid-way) one at a time. After each run or
    /// group `on_record` sees every record there is.
    pub fn run_all(
        &mut self,
        mut on_record: impl FnMut(&[RunRecord]) -> Result<()>,
    ) -> Result<Vec<RunRecord>> {
        let experiment = self.experiment;
        let total = experiment.runs();
        let mut groups = self.group_saves()?;
        if self.sequential {
            for group in std::mem::take(&mut groups) {
                let saved = group.saved.unwrap_or_default();
                self.hand_over(&group.file, &group.ids, saved)?;
            }
        }
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
        for (id, record) in &kept {
            println!("{} {} (ended before)", self.prefix(*id), record.outcome());
            records.push(record.clone());
        }
        let units = self.units(groups, pending)?;
        let epochs = |id: RunId| self.experiment.variants[id.variant].epochs();
        let work = units
            .iter()
            .map(|u| match u {
                Unit::Alone(id) => epochs(*id),
                Unit::Group(g) => g.work(epochs(g.ids[0])),
            })
            .sum();
        let mut clock = Clock::new(work);
        let stacks = units.iter().filter(|u| matches!(u, Unit::Group(_))).count();
        let mut data = DataCache::default();
        let mut stack = 0;
        for unit in units {
            match unit {
                Unit::Alone(id) => {
                    clock.begin(epochs(id));
                    let began = Instant::now();
                    let (record, resumed) = self
                        .train_run(id, &mut data)
                        .map_err(|e| self.failed(id, e))?;
                    clock.finish();
                    println!(
                        "{}{resumed} ({:.1} s; {})",
                        record.outcome(),
                        began.elapsed().as_secs_f64(),
                        clock.left()
                    );
                    records.push(record);
                }
                Unit::Group(group) => {
                    stack += 1;
                    let label = format!("stack {stack}/{stacks}");
                    let (file, first) = (group.file.clone(), group.ids[0]);
                    let count = group.ids.len();
                    let ended = self
                        .train_group(group, &label, &mut data, &mut clock)
                        .map_err(|e| self.group_failed(&file, first, count, e))?;
                    records.extend(ended.into_iter().map(|(_, r)| r));
                }
            }
            on_record(&records)?;
        }
        // Every group has ended: their directory goes with its last save.
        let groups = self.dir.path().join(GROUPS_DIR);
        let empty = std::fs::read_dir(&groups).is_ok_and(|mut entries| entries.next().is_none());
        if empty {
            durable::remove_dir(&groups).map_err(|e| io(&groups, e))?;
            durable::sync_dir(self.dir.path()).map_err(|e| io(self.dir.path(), e))?;
        }
        Ok(records)
    }

    /// Every group save in the directory, read and checked: each run it holds is one of the
    /// experiment's and in no other save. A save whose runs have all ended goes.
    fn group_saves(&self) -> Result<Vec<Group>> {
        let dir = self.dir.path().join(GROUPS_DIR);
        if !dir.is_dir() {
            return Ok(Vec::new());
        }
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| io(&dir, e))? {
            let entry = entry.map_err(|e| io(&dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if durable::is_temp_file(&name) {
                // An interrupted write's: the directory is locked, so no live writer owns it.
                durable::remove_file(&entry.path()).map_err(|e| io(&entry.path(), e))?;
            } else if name.ends_with(GROUP_SUFFIX) {
                files.push(entry.path());
            }
        }
        files.sort();
        let mut saves: Vec<Group> = Vec::new();
        for file in files {
            let saved = group_save::read(&file)?;
            let mut ids = Vec::with_capacity(saved.len());
            for member in &saved {
                let id = self.run_id(&member.variant, member.seed).ok_or_else(|| {
                    CliError::CompareDir {
                        path: file.clone(),
                        message: format!(
                            "holds variant {:?} seed {}, which the experiment does not have; \
                             --overwrite starts the experiment over",
                            member.variant, member.seed
                        ),
                    }
                })?;
                if ids.contains(&id) || saves.iter().any(|g| g.ids.contains(&id)) {
                    return Err(CliError::CompareDir {
                        path: file.clone(),
                        message: format!(
                            "holds variant {:?} seed {} that another group save holds too; \
                             --overwrite starts the experiment over",
                            member.variant, member.seed
                        ),
                    });
                }
                ids.push(id);
            }
            if ids
                .iter()
                .all(|&id| self.path(id).join(RUN_RESULT_FILE).exists())
            {
                remove_group_save(&file)?;
                continue;
            }
            saves.push(Group {
                file,
                ids,
                saved: Some(saved),
            });
        }
        Ok(saves)
    }

    /// The work, in the order of each unit's first run: the groups that resume, each
    /// pending run that resumes alone (`--sequential`'s, or one it left mid-way), and the
    /// other pending runs in groups that share a stack.
    fn units(&self, groups: Vec<Group>, pending: Vec<RunId>) -> Result<Vec<Unit>> {
        let mut units = Vec::new();
        let mut fresh = Vec::new();
        for id in pending {
            if groups.iter().any(|g| g.ids.contains(&id)) {
                continue;
            }
            if self.sequential || self.path(id).join(TRAINING_FILE).exists() {
                units.push(Unit::Alone(id));
            } else {
                fresh.push(id);
            }
        }
        units.extend(groups.into_iter().map(Unit::Group));
        let mut keys = Vec::with_capacity(fresh.len());
        for &id in &fresh {
            let key = grouping::key(&self.run_of(id))?;
            keys.push((id, key));
        }
        let groups_dir = self.dir.path().join(GROUPS_DIR);
        for chunk in grouping::partition(
            keys,
            |(_, key)| key.clone(),
            |(id, _)| self.prepared[id.variant].capacity,
        ) {
            let ids: Vec<RunId> = chunk.into_iter().map(|(id, _)| id).collect();
            let name = self
                .path(ids[0])
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            units.push(Unit::Group(Group {
                file: groups_dir.join(format!("{name}{GROUP_SUFFIX}")),
                ids,
                saved: None,
            }));
        }
        units.sort_by_key(Unit::first);
        if units
            .iter()
            .any(|u| matches!(u, Unit::Group(g) if g.saved.is_none()))
        {
            durable::create_dir_all(&groups_dir).map_err(|e| io(&groups_dir, e))?;
            durable::sync_dir(self.dir.path()).map_err(|e| io(self.dir.path(), e))?;
        }
        Ok(units)
    }

    /// The run of `variant` (by name) with `seed`, if the experiment has it.
    fn run_id(&self, variant: &str, seed: u64) -> Option<RunId> {
        let experiment = self.experiment;
        let v = experiment.variants.iter().position(|v| v.name == variant)?;
        let s = experiment.seeds.iter().position(|&s| s == seed)?;
        Some(RunId {
            variant: v,
            seed,
            number: v * experiment.seeds.len() + s + 1,
        })
    }

    fn failed(&self, id: RunId, e: CliError) -> CliError {
        CliError::CompareDir {
            path: self.path(id),
            message: format!(
                "variant {:?} seed {}: {e} (the runs that ended are kept in {}: the same \
                 command again resumes, --overwrite starts over)",
                self.experiment.variants[id.variant].name,
                id.seed,
                self.dir.path().display()
            ),
        }
    }

    fn group_failed(&self, file: &Path, first: RunId, count: usize, e: CliError) -> CliError {
        // What is wrong with the save itself already names it.
        let e = match e {
            CliError::CompareDir { path, message } if path == file => message,
            e => e.to_string(),
        };
        CliError::CompareDir {
            path: file.to_path_buf(),
            message: format!(
                "the stack of {count} run(s) from variant {:?} seed {}: {e} (the runs that \
                 ended are kept in {}: the same command again resumes, --overwrite starts over)",
                self.experiment.variants[first.variant].name,
                first.seed,
                self.dir.path().display()
            ),
        }
    }

    /// Trains one run to its end in its directory: resumed from its last save when there is
    /// one, else from the start; writes its `result.csv`. Returns its record and how it began.
    fn train_run(&self, id: RunId, data: &mut DataCache) -> Result<(RunRecord, String)> {
        let RunId { variant, seed, .. } = id;
        let path = &self.path(id);
        let experiment = self.experiment;
        let prepared = &self.prepared[variant];
        let run = self.run_of(id);
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
