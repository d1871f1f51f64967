//! An ensemble's run directory (`wgnn train --ensemble N`): N members trained as one stack,
//! each saved as its own lone run would save itself, under one training state that commits
//! them all at once.
//!
//! | file | what it holds |
//! |---|---|
//! | `training_state.safetensors` | the commit of every save: each member's state_dict and optimizer state under `members.K.`, the run's settings (its seed member 0's), the ensemble's id, the save's number, the position in the data, and `wgnn.ensemble`: per member its seed, its own run id, its step, the save its checkpoint holds, how it diverged and whether it is frozen, its epochs' figures but the wall-clock ones, and its running totals within an epoch |
//! | `members/K/checkpoint.safetensors` | member K's state_dict with its run (seed `seed + K`) and its run id: byte for byte the checkpoint `wgnn train --seed seed+K` writes with the same flags |
//! | `members/K/preprocess.safetensors` | a fitted preprocessing's tensors, beside each member as beside any checkpoint (and in the run directory, for a resume) |
//! | `metrics.csv` | a row per member and epoch: `member,epoch,…` |
//! | `curves.svg` | test accuracy and training loss per epoch: the members' mean and their min–max band |
//! | `.wgnn-lock` | locked by the process writing the directory |
//!
//! **One save is still one rename.** A save writes every live member's checkpoint under a
//! temp name in its directory and the training state under one in the run directory, each
//! fsynced; renames the training state over the old one (the commit) and fsyncs the run
//! directory; renames each member's checkpoint and fsyncs its directory; then rewrites the
//! figures: 5N + 14 disk operations for N live members (5N + 10 without the `plot` feature).
//! A crash before the commit leaves the previous save whole; from it on, the new one, with at
//! worst some members' checkpoints one save behind, which a resume rewrites from the training
//! state (and which an evaluation of the whole ensemble refuses to mix, saying so).
//!
//! **A diverged member is frozen, not saved.** From the save after its divergence on, a
//! frozen member's checkpoint is left as it was — the last one from before it diverged, as
//! its lone run, which stops there, leaves it — and the ensemble's average leaves it out.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{
    RUN_ID_KEY, RunDir, RunDirError, SAVE_KEY, Saved, open_locked, remove_stale_temp_files,
    run_id_of_settings, same_bits, split_training_state, unwritable,
};
use crate::checkpoint::{
    self, CheckpointError, MODEL_FILE, StateDict, TRAINING_FILE, apply_optimizer_state,
    apply_state_dict,
};
use crate::data::{Dataset, Transform};
use crate::durable;
use crate::ensemble::{EnsembleError, member_configs, member_run};
use crate::error::{Error, Result};
use crate::exec::state::HostState;
use crate::gpu::GpuContext;
use crate::metrics::EpochMetrics;
use crate::model::{Model, StackError};
use crate::ops::reduce::RawTotals;
use crate::run::{
    BATCH_KEY, EPOCH_KEY, PREPROCESS_FILE, Preprocessing, RUN_KEY, RunConfig, format_totals,
    parse_totals,
};
use crate::stack::{Divergence, StackCheckpoint};

/// Metadata key of the members' records ([`MemberRecord`], a JSON array) in an ensemble's
/// training state: its presence makes a run directory an ensemble's.
pub const ENSEMBLE_KEY: &str = "wgnn.ensemble";
/// The directory of the members, `members/0`, `members/1`, …
pub const MEMBERS_DIR: &str = "members";
/// The columns of an ensemble's `metrics.csv`.
pub const ENSEMBLE_METRICS_HEADER: &str = "member,epoch,train_loss,train_accuracy,test_loss,test_accuracy,seconds,samples_per_second,step";

/// What the training state records of one member.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// Its seed: the run's plus its index.
    pub seed: u64,
    /// Its own run's id ([`super::run_id`] of its run, the data and its initial state), which
    /// its checkpoint carries as its lone run's would.
    pub run_id: String,
    /// Optimizer steps it has taken.
    pub step: u64,
    /// The save its checkpoint holds; none before its first (a member that diverged before
    /// it has none).
    pub checkpoint_save: Option<u64>,
    /// How it diverged, if it did.
    pub diverged: Option<DivergenceRecord>,
    /// It no longer trains (it diverged without `--keep-going`).
    pub frozen: bool,
    /// Its finished epochs' figures (the wall-clock ones live in `metrics.csv` only).
    pub history: Vec<EpochMetrics>,
    /// Within an epoch: its running totals, as [`crate::run::TOTALS_KEY`] writes a lone run's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch_totals: Option<String>,
}

/// Where and how a member went non-finite.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DivergenceRecord {
    /// 1-based.
    pub epoch: usize,
    pub step: u64,
    pub what: String,
}

impl std::fmt::Display for DivergenceRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "diverged at step {} (epoch {}): {}",
            self.step, self.epoch, self.what
        )
    }
}

/// Where an ensemble stands in its data: epochs done and, within the next one, the batches
/// done with every member's running totals.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EnsemblePosition {
    pub epochs_done: usize,
    pub within: Option<(usize, Vec<RawTotals>)>,
}

/// What a save found worth telling.
#[derive(Clone, Debug, Default, PartialEq)]
#[must_use]
pub struct EnsembleSaveReport {
    /// Members whose saved parameters or running statistics held NaN or ±∞ (with
    /// `--keep-going`): `(member, first tensor, index, count)`.
    pub nonfinite: Vec<(usize, String, usize, usize)>,
}

/// An ensemble resumed from its directory.
pub struct ResumedEnsemble {
    /// The stack, every member in its saved state, the frozen ones frozen.
    pub model: Model,
    pub run: RunConfig,
    pub position: EnsemblePosition,
    /// What the resume found and repaired.
    pub notes: Vec<String>,
}

/// An ensemble's run directory, locked for as long as this value lives.
#[derive(Debug)]
pub struct EnsembleDir {
    /// The directory's lock, path, id, save count and last save (its history unused: each
    /// member has its own).
    dir: RunDir,
    members: Vec<MemberRecord>,
}

impl EnsembleDir {
    /// Makes `dir` (new, from [`RunDir::create`] or [`RunDir::create_numbered`]) the
    /// directory of the ensemble `model` holds, before its first step: names every member's
    /// run and the ensemble by what defines them ([`super::run_id`]) and creates the members'
    /// directories.
    pub fn start(
        mut dir: RunDir,
        model: &mut Model,
        run: &RunConfig,
        data: &[&Dataset],
    ) -> Result<Self> {
        let states = model.member_states()?;
        let members = states
            .iter()
            .enumerate()
            .map(|(k, state)| {
                let mine = member_run(run, k)?;
                Ok(MemberRecord {
                    seed: mine.seed,
                    run_id: super::run_id(&mine, data, state),
                    step: state.step,
                    checkpoint_save: None,
                    diverged: None,
                    frozen: false,
                    history: Vec::new(),
                    epoch_totals: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        dir.identify(ensemble_id(run, &members));
        let ensemble = Self { dir, members };
        for k in 0..ensemble.members.len() {
            let path = ensemble.member_dir(k);
            durable::create_dir_all(&path).map_err(|e| unwritable(&path, e))?;
        }
        let members_dir = ensemble.path().join(MEMBERS_DIR);
        durable::sync_dir(&members_dir)
            .and_then(|()| durable::sync_dir(ensemble.path()))
            .map_err(|e| unwritable(&members_dir, e))?;
        Ok(ensemble)
    }

    /// Writes a fitted preprocessing's tensors ([`PREPROCESS_FILE`]) into the run directory
    /// and beside every member's checkpoint, once, before the first save.
    pub fn write_preprocess(&self, transform: &Transform) -> Result<()> {
        crate::run::write_transform(&self.path().join(PREPROCESS_FILE), transform)?;
        for k in 0..self.members.len() {
            crate::run::write_transform(&self.member_dir(k).join(PREPROCESS_FILE), transform)?;
        }
        Ok(())
    }

    /// Locks the ensemble in `path` and reads it back as its last save left it, verified:
    /// the training state whole, each member's checkpoint of the same run. Removes the temp
    /// files of an interrupted save, rewrites a live member's checkpoint that is missing or
    /// one save behind, and rewrites the figures.
    pub fn resume(ctx: Arc<GpuContext>, path: &Path) -> Result<(Self, ResumedEnsemble)> {
        let nothing = |found: &str| RunDirError::NothingToResume {
            path: path.to_path_buf(),
            found: found.into(),
        };
        if !path.is_dir() {
            return Err(nothing(if path.exists() {
                "a file, not a run directory"
            } else {
                "no such directory"
            })
            .into());
        }
        let lock = open_locked(path)?;
        let mut notes = remove_stale_temp_files(path)?;
        let training_path = path.join(TRAINING_FILE);
        if !training_path.exists() {
            return Err(nothing("no checkpoint").into());
        }
        let training = StateDict::read(&training_path)?;
        let bad = |key: &'static str| RunDirError::BadMetadata {
            path: training_path.clone(),
            key,
        };
        let meta = |key: &'static str| training.metadata.get(key).ok_or_else(|| bad(key));
        let number = |key: &'static str| -> Result<u64> {
            Ok(meta(key)?.parse::<u64>().map_err(|_| bad(key))?)
        };
        let mut members: Vec<MemberRecord> =
            serde_json::from_str(meta(ENSEMBLE_KEY)?).map_err(|_| bad(ENSEMBLE_KEY))?;
        let run: RunConfig =
            serde_json::from_str(meta(RUN_KEY)?).map_err(|e| CheckpointError::Format {
                path: training_path.display().to_string(),
                message: format!("bad {RUN_KEY:?} metadata: {e}"),
            })?;
        let run_id = meta(RUN_ID_KEY)?.clone();
        let saves = number(SAVE_KEY)?;
        let epochs_done = number(EPOCH_KEY)? as usize;
        let within = match training.metadata.get(BATCH_KEY) {
            None => None,
            Some(_) => {
                let totals = members
                    .iter()
                    .map(|m| m.epoch_totals.as_deref().and_then(parse_totals))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| bad(ENSEMBLE_KEY))?;
                Some((number(BATCH_KEY)? as usize, totals))
            }
        };
        let configs = member_configs(&run, members.len())?;
        if members.is_empty() || configs.iter().zip(&members).any(|(c, m)| c.seed != m.seed) {
            return Err(bad(ENSEMBLE_KEY).into());
        }
        for k in 0..members.len() {
            let dir = path.join(MEMBERS_DIR).join(k.to_string());
            if dir.is_dir() {
                notes.extend(remove_stale_temp_files(&dir)?);
            }
        }
        restore_timings(&path.join(super::METRICS_FILE), &mut members);

        run.check_sizes(&training_path, ctx.max_binding_bytes(), run.batch_size)?;
        let transform = run.transform(path)?;
        let mut model = run.build_stack(ctx, transform.map(Arc::new), configs)?;
        let keys = model.sequential().state_dict_keys();
        let mut parts = Vec::with_capacity(members.len());
        let mut states = Vec::with_capacity(members.len());
        let mut claimed = 0;
        for (k, record) in members.iter().enumerate() {
            let mine = member_part(&training, k, record.step);
            claimed += mine.tensors.len();
            let (model_part, optimizer_part) = split_training_state(&mine, &keys);
            let base = model.member_state(k)?;
            let state = apply_state_dict(&model_part, model.sequential(), model.graph(), &base)?;
            let state = apply_optimizer_state(&optimizer_part, model.graph(), &state)?;
            model.load_member_state(k, &state)?;
            if record.frozen {
                model.freeze(k)?;
            }
            parts.push(model_part);
            states.push(state);
        }
        if claimed != training.tensors.len() {
            return Err(CheckpointError::Format {
                path: training_path.display().to_string(),
                message: format!(
                    "{} tensors belong to no member of the {}",
                    training.tensors.len() - claimed,
                    members.len()
                ),
            }
            .into());
        }
        let step = members.iter().map(|m| m.step).max().unwrap_or(0);
        let dir = RunDir {
            path: path.to_path_buf(),
            _lock: lock,
            run_id: Some(run_id),
            saves,
            history: Vec::new(),
            last_saved: Some(Saved {
                step,
                epochs_done,
                batches_done: within.as_ref().map(|(b, _)| *b),
            }),
            notes: Vec::new(),
        };
        let ensemble = Self { dir, members };
        for k in 0..ensemble.members.len() {
            let fixed = ensemble.repair_member(k, &model, &run, &states[k], &parts[k])?;
            notes.extend(fixed);
        }
        ensemble.write_figures()?;
        let resumed = ResumedEnsemble {
            model,
            run,
            position: EnsemblePosition {
                epochs_done,
                within,
            },
            notes,
        };
        Ok((ensemble, resumed))
    }

    /// Member `k`'s directory and checkpoint as a resume finds them: created or rewritten
    /// where a save left them behind; what it did, if anything.
    fn repair_member(
        &self,
        k: usize,
        model: &Model,
        run: &RunConfig,
        state: &HostState,
        model_part: &StateDict,
    ) -> Result<Vec<String>> {
        let mut notes = Vec::new();
        let record = &self.members[k];
        let dir = self.member_dir(k);
        if !dir.is_dir() {
            durable::create_dir_all(&dir)
                .and_then(|()| durable::sync_dir(durable::parent(&dir)))
                .map_err(|e| unwritable(&dir, e))?;
            notes.push(format!("{} was missing: created it", dir.display()));
        }
        if let (Some(Preprocessing::Fitted(_)), Some(t)) = (&run.normalization, model.preprocess())
            && !dir.join(PREPROCESS_FILE).exists()
        {
            crate::run::write_transform(&dir.join(PREPROCESS_FILE), t)?;
            notes.push(format!(
                "wrote the missing {}",
                dir.join(PREPROCESS_FILE).display()
            ));
        }
        let Some(save) = record.checkpoint_save else {
            return Ok(notes);
        };
        let path = dir.join(MODEL_FILE);
        let why = match StateDict::read(&path) {
            Err(CheckpointError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Some(format!("{} was missing", path.display()))
            }
            Err(e @ (CheckpointError::Checksum { .. } | CheckpointError::Format { .. })) => {
                Some(format!("{} was unreadable ({e})", path.display()))
            }
            Err(e) => return Err(e.into()),
            Ok(found) => {
                let id = found.metadata.get(RUN_ID_KEY);
                if id != Some(&record.run_id) {
                    return Err(EnsembleError::ForeignMember {
                        path: path.display().to_string(),
                        dir: self.path().display().to_string(),
                        member: k,
                        why: format!(
                            "its run id is {}, member {k}'s {}; copied in? Move it away to resume",
                            id.map_or("none", String::as_str),
                            record.run_id
                        ),
                    }
                    .into());
                }
                let found_save = found.metadata.get(SAVE_KEY).and_then(|s| s.parse().ok());
                if found_save != Some(save) {
                    Some(format!(
                        "{} was of {}, the training state records save {save} (a save was interrupted)",
                        path.display(),
                        found_save
                            .map_or("no known save".to_string(), |s: u64| format!("save {s}"))
                    ))
                } else if !record.frozen
                    && let Some(tensor) = differing_tensor(&found, model_part)
                {
                    return Err(RunDirError::Edited {
                        path: dir.clone(),
                        save,
                        tensor,
                    }
                    .into());
                } else {
                    None
                }
            }
        };
        if let Some(why) = why {
            if record.frozen {
                // Its state has moved past its divergence: its last good checkpoint is gone.
                notes.push(format!(
                    "{why}; member {k} is frozen since it diverged, so it cannot be rewritten"
                ));
            } else {
                let sd = self.member_checkpoint_dict(k, model, run, state, save)?;
                sd.write(&path)?;
                notes.push(format!(
                    "{why}; rewrote it from the training state of save {save} (step {})",
                    state.step
                ));
            }
        }
        Ok(notes)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The ensemble's id, stamped into its training state.
    pub fn run_id(&self) -> &str {
        self.dir.run_id()
    }

    /// Member `k`'s directory, `members/K`.
    pub fn member_dir(&self, k: usize) -> PathBuf {
        self.path().join(MEMBERS_DIR).join(k.to_string())
    }

    /// What the directory records of each member.
    pub fn members(&self) -> &[MemberRecord] {
        &self.members
    }

    /// The last save that is whole on disk.
    pub fn last_saved(&self) -> Option<Saved> {
        self.dir.last_saved()
    }

    /// What opening the directory found worth telling, once.
    pub fn take_notes(&mut self) -> Vec<String> {
        self.dir.take_notes()
    }

    /// Saves where [`crate::stack::fit_stack`] asks for a checkpoint, adding an ended epoch's
    /// figures to each member's history and `divergences` (the loop's so far) to the records.
    pub fn checkpoint(
        &mut self,
        model: &mut Model,
        run: &RunConfig,
        at: StackCheckpoint<'_>,
        divergences: &[Divergence],
    ) -> Result<EnsembleSaveReport> {
        for d in divergences {
            if let Some(record) = self.members.get_mut(d.member) {
                record.diverged.get_or_insert_with(|| DivergenceRecord {
                    epoch: d.epoch,
                    step: d.step,
                    what: d.what.clone(),
                });
            }
        }
        let done = self.dir.last_saved.map_or(0, |s| s.epochs_done);
        let position = match at {
            StackCheckpoint::EpochEnd(metrics) => {
                let epoch = metrics
                    .iter()
                    .flatten()
                    .map(|m| m.epoch)
                    .next()
                    .unwrap_or(done + 1);
                for (record, m) in self.members.iter_mut().zip(metrics) {
                    if let Some(m) = m {
                        record.history.retain(|h| h.epoch < m.epoch);
                        record.history.push(*m);
                    }
                }
                EnsemblePosition {
                    epochs_done: epoch,
                    within: None,
                }
            }
            StackCheckpoint::Within {
                epoch,
                batches_done,
                totals,
            } => EnsemblePosition {
                epochs_done: epoch,
                within: Some((batches_done, totals.to_vec())),
            },
        };
        self.save(model, run, &position)
    }

    /// Saves every member where the ensemble stands: the live members' checkpoints and the
    /// training state (the commit), then the figures. On an error before the commit the
    /// previous save stays whole and [`EnsembleDir::last_saved`] still names it.
    pub fn save(
        &mut self,
        model: &mut Model,
        run: &RunConfig,
        position: &EnsemblePosition,
    ) -> Result<EnsembleSaveReport> {
        let n = self.members.len();
        if model.members() != n {
            return Err(StackError::Count {
                given: model.members(),
                members: n,
            }
            .into());
        }
        let states = model.member_states()?;
        let save = self.dir.saves + 1;
        let mut records = self.members.clone();
        let mut report = EnsembleSaveReport::default();
        let mut checkpoints = Vec::new();
        for (k, record) in records.iter_mut().enumerate() {
            record.step = states[k].step;
            record.frozen = model.is_frozen(k)?;
            record.epoch_totals = match &position.within {
                Some((_, totals)) => {
                    Some(format_totals(totals.get(k).ok_or(StackError::Count {
                        given: totals.len(),
                        members: n,
                    })?))
                }
                None => None,
            };
            if record.frozen {
                continue;
            }
            record.checkpoint_save = Some(save);
            let sd = self.member_checkpoint_dict(k, model, run, &states[k], save)?;
            if let Some((tensor, index, _, count)) = sd.first_nonfinite() {
                report.nonfinite.push((k, tensor.to_string(), index, count));
            }
            checkpoints.push((k, sd.to_bytes()?));
        }
        let training = self.training_dict(model, &states, run, position, save, &records)?;
        let training_bytes = training.to_bytes()?;

        let training_path = self.path().join(TRAINING_FILE);
        let training_tmp = durable::temp_path(&training_path);
        let files: Vec<(PathBuf, PathBuf)> = checkpoints
            .iter()
            .map(|(k, _)| {
                let path = self.member_dir(*k).join(MODEL_FILE);
                (durable::temp_path(&path), path)
            })
            .collect();
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| Error::from(CheckpointError::Io { path, source })
        };
        let remove_temps = |from: usize| {
            for (tmp, _) in &files[from..] {
                let _ = durable::remove_file(tmp);
            }
        };
        let written = checkpoints
            .iter()
            .zip(&files)
            .try_for_each(|((_, bytes), (tmp, path))| {
                durable::write_synced(tmp, bytes).map_err(io(path))
            })
            .and_then(|()| {
                durable::write_synced(&training_tmp, &training_bytes).map_err(io(&training_path))
            })
            .and_then(|()| {
                durable::rename(&training_tmp, &training_path).map_err(io(&training_path))
            });
        if let Err(e) = written {
            // Nothing is committed: the previous save stands.
            remove_temps(0);
            let _ = durable::remove_file(&training_tmp);
            return Err(e);
        }
        self.dir.saves = save;
        self.members = records;
        if let Err(e) = durable::sync_dir(self.path()) {
            remove_temps(0);
            return Err(io(self.path())(e));
        }
        for (i, (tmp, path)) in files.iter().enumerate() {
            let renamed = durable::rename(tmp, path)
                .and_then(|()| durable::sync_dir(durable::parent(path)))
                .map_err(io(path));
            if let Err(e) = renamed {
                remove_temps(i);
                return Err(e);
            }
        }
        self.dir.last_saved = Some(Saved {
            step: states.iter().map(|s| s.step).max().unwrap_or(0),
            epochs_done: position.epochs_done,
            batches_done: position.within.as_ref().map(|(b, _)| *b),
        });
        self.write_figures()?;
        Ok(report)
    }

    /// Member `k`'s checkpoint at save `save`: its lone run's, stamped with its run's id.
    fn member_checkpoint_dict(
        &self,
        k: usize,
        model: &Model,
        run: &RunConfig,
        state: &HostState,
        save: u64,
    ) -> Result<StateDict> {
        let mut sd = crate::run::checkpoint_dict(model, state, &member_run(run, k)?);
        sd.source = self.member_dir(k).join(MODEL_FILE).display().to_string();
        sd.metadata
            .insert(RUN_ID_KEY.into(), self.members[k].run_id.clone());
        sd.metadata.insert(SAVE_KEY.into(), save.to_string());
        Ok(sd)
    }

    /// Everything a resume needs, in one file: every member's tensors under `members.K.`.
    fn training_dict(
        &self,
        model: &Model,
        states: &[HostState],
        run: &RunConfig,
        position: &EnsemblePosition,
        save: u64,
        records: &[MemberRecord],
    ) -> Result<StateDict> {
        let mut sd = StateDict {
            source: self.path().join(TRAINING_FILE).display().to_string(),
            ..StateDict::default()
        };
        for (k, state) in states.iter().enumerate() {
            let prefix = format!("{MEMBERS_DIR}.{k}.");
            let params = checkpoint::model_state_dict(model.graph(), state, &prefix);
            sd.tensors.extend(params.tensors);
            let optimizer = checkpoint::optimizer_state_dict(model.graph(), state);
            sd.tensors.extend(
                optimizer
                    .tensors
                    .into_iter()
                    .map(|(name, t)| (format!("{prefix}{name}"), t)),
            );
        }
        // The wall-clock figures differ between identical runs: metrics.csv keeps them.
        let records: Vec<MemberRecord> = records
            .iter()
            .map(|r| MemberRecord {
                history: r
                    .history
                    .iter()
                    .map(|m| EpochMetrics {
                        seconds: 0.0,
                        samples_per_second: 0.0,
                        ..*m
                    })
                    .collect(),
                ..r.clone()
            })
            .collect();
        let members = to_json(&records, &sd.source)?;
        let settings = to_json(run, &sd.source)?;
        let step = states.iter().map(|s| s.step).max().unwrap_or(0);
        let metadata = [
            (RUN_KEY, settings),
            (RUN_ID_KEY, self.run_id().to_string()),
            (SAVE_KEY, save.to_string()),
            (EPOCH_KEY, position.epochs_done.to_string()),
            ("step", step.to_string()),
            (ENSEMBLE_KEY, members),
        ];
        sd.metadata
            .extend(metadata.into_iter().map(|(k, v)| (k.to_string(), v)));
        if let Some((batches, _)) = &position.within {
            sd.metadata.insert(BATCH_KEY.into(), batches.to_string());
        }
        Ok(sd)
    }

    /// `metrics.csv` (a row per member and epoch) and `curves.svg` (the members' band), each
    /// atomically, then the directory fsynced.
    fn write_figures(&self) -> Result<()> {
        let path = self.path();
        let failed = |file: &Path| {
            let file = file.display().to_string();
            move |source| Error::Io { path: file, source }
        };
        let metrics = path.join(super::METRICS_FILE);
        durable::write_atomic_unsynced(&metrics, metrics_csv(&self.members).as_bytes())
            .map_err(failed(&metrics))?;
        #[cfg(feature = "plot")]
        {
            let curves = path.join(super::CURVES_FILE);
            let band = crate::plot::VariantRuns {
                name: format!("{} members (mean, min–max)", self.members.len()),
                runs: self.members.iter().map(|m| m.history.clone()).collect(),
                diverged: self
                    .members
                    .iter()
                    .map(|m| m.diverged.as_ref().map(|d| d.epoch))
                    .collect(),
            };
            let svg = crate::plot::comparison_svg(&[band])?;
            durable::write_atomic_unsynced(&curves, svg.as_bytes()).map_err(failed(&curves))?;
        }
        durable::sync_dir(path).map_err(failed(path))
    }
}

/// A value of the training state's metadata, as JSON.
fn to_json<T: Serialize>(value: &T, path: &str) -> Result<String, CheckpointError> {
    serde_json::to_string(value).map_err(|e| CheckpointError::Format {
        path: path.to_string(),
        message: e.to_string(),
    })
}

/// The ensemble's id: the CRC-32s of its settings with its member count, and of its
/// members' run ids (each of which covers the data and the member's initial state).
fn ensemble_id(run: &RunConfig, members: &[MemberRecord]) -> String {
    let ids: Vec<&str> = members.iter().map(|m| m.run_id.as_str()).collect();
    format!(
        "{}-{:08x}-{:08x}",
        run_id_of_settings(run),
        members.len(),
        crc32fast::hash(ids.join(",").as_bytes())
    )
}

/// Member `k`'s tensors of an ensemble's training state, without their `members.K.` prefix,
/// with its step as the optimizer's state records it.
fn member_part(training: &StateDict, k: usize, step: u64) -> StateDict {
    let prefix = format!("{MEMBERS_DIR}.{k}.");
    let mut sd = StateDict {
        source: format!("{} (member {k})", training.source),
        checksummed: training.checksummed,
        ..StateDict::default()
    };
    sd.tensors = training
        .tensors
        .iter()
        .filter_map(|(name, t)| Some((name.strip_prefix(&prefix)?.to_string(), t.clone())))
        .collect();
    sd.metadata.insert("step".into(), step.to_string());
    sd
}

/// The first tensor of `expected` that `found` lacks or holds other bits of, or that `found`
/// has beyond it.
fn differing_tensor(found: &StateDict, expected: &StateDict) -> Option<String> {
    expected
        .tensors
        .iter()
        .find(|(name, t)| !found.tensors.get(*name).is_some_and(|c| same_bits(c, t)))
        .map(|(name, _)| name.clone())
        .or_else(|| {
            found
                .tensors
                .keys()
                .find(|k| !expected.tensors.contains_key(*k))
                .cloned()
        })
}

/// `metrics.csv`'s text: the header and a row per member and epoch.
pub fn metrics_csv(members: &[MemberRecord]) -> String {
    let mut csv = String::from(ENSEMBLE_METRICS_HEADER);
    csv.push('\n');
    for (k, member) in members.iter().enumerate() {
        for row in super::metrics_csv(&member.history).lines().skip(1) {
            csv.push_str(&format!("{k},{row}\n"));
        }
    }
    csv
}

/// Puts back each member's wall-clock figures from `metrics.csv` (its rows of the same epoch
/// and step), as [`super::restore_timings`] does for one model.
fn restore_timings(metrics: &Path, members: &mut [MemberRecord]) {
    let Ok(text) = std::fs::read_to_string(metrics) else {
        return;
    };
    let mut per_member = vec![String::new(); members.len()];
    for line in text.lines().skip(1) {
        let Some((member, row)) = line.split_once(',') else {
            continue;
        };
        if let Some(rows) = member
            .parse::<usize>()
            .ok()
            .and_then(|k| per_member.get_mut(k))
        {
            rows.push_str(row);
            rows.push('\n');
        }
    }
    for (member, rows) in members.iter_mut().zip(per_member) {
        let file = format!("{}\n{rows}", super::METRICS_HEADER);
        super::restore_timings_from(file.as_bytes(), &mut member.history);
    }
}

/// What an ensemble's training state says of it: its run (seed member 0's) and its members;
/// `None` where `path` holds no ensemble (no training state, or a single model's). Reads the
/// training state's header only, its checksum verified.
pub fn read_manifest(path: &Path) -> Result<Option<(RunConfig, Vec<MemberRecord>)>> {
    let training = path.join(TRAINING_FILE);
    if !path.is_dir() || !training.is_file() {
        return Ok(None);
    }
    let metadata = StateDict::read_metadata(&training)?;
    let Some(members) = metadata.get(ENSEMBLE_KEY) else {
        return Ok(None);
    };
    let bad = |key: &'static str| RunDirError::BadMetadata {
        path: training.clone(),
        key,
    };
    let members: Vec<MemberRecord> =
        serde_json::from_str(members).map_err(|_| bad(ENSEMBLE_KEY))?;
    let run: RunConfig = metadata
        .get(RUN_KEY)
        .and_then(|json| serde_json::from_str(json).ok())
        .ok_or_else(|| bad(RUN_KEY))?;
    if members.is_empty() {
        return Err(bad(ENSEMBLE_KEY).into());
    }
    Ok(Some((run, members)))
}

/// An ensemble's members loaded from their checkpoints as one stack, for eval and predict.
pub struct RestoredEnsemble {
    /// The stack of the members that did not diverge, in eval mode's hands.
    pub model: Model,
    /// The ensemble's run at the evaluation's batch (its seed the first included member's).
    pub run: RunConfig,
    /// Which member each of the stack's slots holds.
    pub members: Vec<usize>,
    /// Every member's record (the diverged ones left out of the stack).
    pub records: Vec<MemberRecord>,
}

/// The members of the ensemble in `path` that did not diverge, each from its checkpoint
/// (`members/K/checkpoint.safetensors`), as one stack planned at the evaluation's batch
/// ([`RunConfig::eval_batch_size`] of `batch_size`). Each checkpoint must be the member the
/// training state records — its run, its run id, its save — and finite; the sizes are checked
/// before anything is built, as [`crate::run::restore_at`] checks one model's.
pub fn restore(
    ctx: Arc<GpuContext>,
    path: &Path,
    batch_size: Option<usize>,
) -> Result<RestoredEnsemble> {
    let shown = path.display().to_string();
    let Some((run, records)) = read_manifest(path)? else {
        return Err(EnsembleError::NotAnEnsemble { path: shown }.into());
    };
    let members: Vec<usize> = (0..records.len())
        .filter(|&k| records[k].diverged.is_none())
        .collect();
    let Some(&first) = members.first() else {
        return Err(EnsembleError::AllDiverged { path: shown }.into());
    };
    let expected_save = records[first].checkpoint_save;
    let mut dicts = Vec::with_capacity(members.len());
    for &k in &members {
        let file = path.join(MEMBERS_DIR).join(k.to_string()).join(MODEL_FILE);
        let foreign = |why: String| EnsembleError::ForeignMember {
            path: file.display().to_string(),
            dir: shown.clone(),
            member: k,
            why,
        };
        let (found, sd) = crate::run::load(&file)?;
        let id = sd.metadata.get(RUN_ID_KEY);
        if id != Some(&records[k].run_id) {
            return Err(foreign(format!(
                "its run id is {}, member {k}'s {}",
                id.map_or("none", String::as_str),
                records[k].run_id
            ))
            .into());
        }
        if found != member_run(&run, k)? {
            return Err(foreign("its run's settings differ from the ensemble's".into()).into());
        }
        let save = sd
            .metadata
            .get(SAVE_KEY)
            .and_then(|s| s.parse::<u64>().ok());
        let recorded = records[k].checkpoint_save;
        if save.is_none() || save != recorded || recorded != expected_save {
            return Err(EnsembleError::MixedSaves {
                dir: shown,
                member: k,
                found: save.map_or("none".into(), |s| s.to_string()),
                expected: expected_save.unwrap_or(0),
            }
            .into());
        }
        sd.check_finite()?;
        dicts.push(sd);
    }
    let mut run = member_run(&run, first)?;
    let first_dir = path.join(MEMBERS_DIR).join(first.to_string());
    let limit = ctx.max_binding_bytes();
    run.check_sizes(&first_dir.join(MODEL_FILE), limit, 1)?;
    run.batch_size = run.eval_batch_size(limit, batch_size)?;
    let transform = run.transform(&first_dir)?;
    let configs = member_configs(&run, records.len())?;
    let configs = members.iter().map(|&k| configs[k].clone()).collect();
    let mut model = run.build_stack(ctx, transform.map(Arc::new), configs)?;
    for (slot, sd) in dicts.iter().enumerate() {
        let base = model.member_state(slot)?;
        let state = apply_state_dict(sd, model.sequential(), model.graph(), &base)?;
        model.load_member_state(slot, &state)?;
    }
    Ok(RestoredEnsemble {
        model,
        run,
        members,
        records,
    })
}

/// Whether `path/members` holds only what an ensemble's run writes there (members'
/// directories of checkpoints, preprocessing and temp files); a run replaced with
/// `--overwrite` removes exactly that. `Err` names the first thing wgnn did not write.
pub(super) fn check_members_dir(path: &Path) -> std::result::Result<Vec<PathBuf>, RunDirError> {
    let members = path.join(MEMBERS_DIR);
    let foreign = |found: &Path| RunDirError::HoldsForeign {
        path: path.to_path_buf(),
        found: found.display().to_string(),
    };
    let mut files = Vec::new();
    let entries = std::fs::read_dir(&members).map_err(|e| unwritable(&members, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| unwritable(&members, e))?;
        let dir = entry.path();
        let numbered = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.parse::<usize>().is_ok());
        if !numbered || !dir.is_dir() {
            return Err(foreign(&dir));
        }
        for file in std::fs::read_dir(&dir).map_err(|e| unwritable(&dir, e))? {
            let file = file.map_err(|e| unwritable(&dir, e))?;
            let name = file.file_name().to_string_lossy().into_owned();
            let ours = [MODEL_FILE, PREPROCESS_FILE].contains(&name.as_str())
                || durable::is_temp_file(&name);
            if !ours || !file.path().is_file() {
                return Err(foreign(&file.path()));
            }
            files.push(file.path());
        }
    }
    Ok(files)
}

/// Removes an ensemble's `members/` from `path` (checked first by [`check_members_dir`]).
pub(super) fn remove_members_dir(path: &Path) -> std::result::Result<(), RunDirError> {
    let members = path.join(MEMBERS_DIR);
    for file in check_members_dir(path)? {
        durable::remove_file(&file).map_err(|e| unwritable(&members, e))?;
    }
    let dirs = std::fs::read_dir(&members).map_err(|e| unwritable(&members, e))?;
    for dir in dirs.flatten() {
        durable::remove_dir(&dir.path()).map_err(|e| unwritable(&members, e))?;
    }
    durable::remove_dir(&members).map_err(|e| unwritable(&members, e))
}
