//! A run directory: where `wgnn train` keeps one run, written by one process at a time, with
//! checkpoints that a crash at any instant leaves consistent.
//!
//! | file | what it holds |
//! |---|---|
//! | `training_state.safetensors` | what a resume reads, all of it: the model's state_dict, the optimizer state, the step, the position in the data, the run's settings, the run's id, the save's number, every epoch's figures but the wall-clock ones |
//! | `checkpoint.safetensors` | the model's state_dict (for eval, predict and PyTorch), stamped with the same run id and save number |
//! | `metrics.csv`, `curves.svg` | the epochs' figures, written from the training state's |
//! | `preprocess.safetensors` | a fitted preprocessing's tensors (PCA, ZCA, …): written once, before the first save, never changed |
//! | `.wgnn-lock` | locked by the process writing the directory |
//!
//! An ensemble's run (`wgnn train --ensemble N`) keeps its members' checkpoints in
//! `members/K/` under one training state: [`ensemble`] describes it.
//!
//! **One save is one rename.** Two files can never be renamed atomically together, so the
//! training state holds everything a resume needs and its rename is the commit. A save
//! writes both safetensors files under temp names and fsyncs them, renames the training state
//! over the old one (the commit), fsyncs the directory, renames the checkpoint, rewrites the
//! figures and fsyncs the directory again: 18 disk operations (14 without the `plot`
//! feature). A crash before the commit leaves the previous save whole; from it on, the new
//! one, with at worst a checkpoint one save behind. A resume removes the temp files of an
//! interrupted save, rewrites such a checkpoint from the training state, refuses a checkpoint
//! that belongs to another run, and rewrites the figures from the training state.
//!
//! **Identical runs write identical files.** A run's id is derived from what defines it
//! ([`run_id`]: its settings, its data, its initial state), not drawn at random, and the
//! training state keeps no wall-clock figure (an epoch's seconds and samples per second live
//! in `metrics.csv` only, which a resume reads them back from), so two runs of the same
//! settings on the same data and adapter write byte-identical safetensors files, in any
//! directory.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::checkpoint::{
    self, CheckpointError, MODEL_FILE, StateDict, StateTensor, TRAINING_FILE, TensorData,
    apply_optimizer_state, apply_state_dict,
};
use crate::data::Dataset;
use crate::durable;
use crate::error::{Error, Result};
use crate::exec::state::HostState;
use crate::gpu::GpuContext;
use crate::graph::BufferValues;
use crate::metrics::EpochMetrics;
use crate::model::Model;
use crate::run::{
    BATCH_KEY, EPOCH_KEY, Position, RUN_KEY, RunConfig, TOTALS_KEY, format_totals, parse_totals,
};
use crate::train::Checkpoint;

pub mod ensemble;

/// The lock file every writer of a run directory holds locked.
pub const LOCK_FILE: &str = ".wgnn-lock";
/// The epochs' figures, one row each.
pub const METRICS_FILE: &str = "metrics.csv";
/// The loss and accuracy curves.
pub const CURVES_FILE: &str = "curves.svg";
/// The files a run directory's run consists of.
pub const RUN_FILES: [&str; 5] = [
    TRAINING_FILE,
    MODEL_FILE,
    METRICS_FILE,
    CURVES_FILE,
    crate::run::PREPROCESS_FILE,
];
/// Metadata key of the run's id, in both safetensors files.
pub const RUN_ID_KEY: &str = "wgnn.run_id";
/// Metadata key of the save's number within the run (1, 2, …), in both files.
pub const SAVE_KEY: &str = "wgnn.save";
/// Metadata key of every finished epoch's figures (JSON), in the training state.
pub const HISTORY_KEY: &str = "wgnn.history";
/// The link to the newest numbered run directory that [`RunDir::create_numbered`] keeps.
pub const LATEST_LINK: &str = "latest";

/// The columns of `metrics.csv`.
pub const METRICS_HEADER: &str =
    "epoch,train_loss,train_accuracy,test_loss,test_accuracy,seconds,samples_per_second,step";

/// What keeps a directory from being used as a run directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunDirError {
    #[error("{}: a file, not a directory: give a directory for the run", path.display())]
    NotADirectory { path: PathBuf },
    #[error("{}: cannot write the run there: {source}", path.display())]
    Unwritable {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Another process holds the directory's lock.
    #[error(
        "{} is in use by another wgnn process{}: a run directory has one writer at a time",
        path.display(),
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Busy { path: PathBuf, pid: Option<u32> },
    /// The directory already holds a run, which a new one would overwrite.
    #[error(
        "{} already holds a run ({found}): continue it with --resume, give another --out, or pass --overwrite to replace it",
        path.display()
    )]
    HoldsRun { path: PathBuf, found: String },
    #[error("{}: no run to resume ({found})", path.display())]
    NothingToResume { path: PathBuf, found: String },
    /// The checkpoint and the training state come from two different runs.
    #[error(
        "{}: {MODEL_FILE} belongs to another run (id {checkpoint}, step {checkpoint_step}) than {TRAINING_FILE} (id {training}, step {training_step}); copied in? Move one of them away to resume",
        path.display()
    )]
    ForeignCheckpoint {
        path: PathBuf,
        checkpoint: String,
        checkpoint_step: String,
        training: String,
        training_step: String,
    },
    /// The checkpoint and the training state claim the same save but differ.
    #[error(
        "{}: {MODEL_FILE} and {TRAINING_FILE} are both save {save} of the run but tensor {tensor:?} differs between them; one was edited",
        path.display()
    )]
    Edited {
        path: PathBuf,
        save: u64,
        tensor: String,
    },
    #[error(
        "{}: written by an earlier wgnn, whose training state holds no model and no run id: it cannot be resumed (eval, predict and `--init` still read its checkpoint)",
        path.display()
    )]
    OldFormat { path: PathBuf },
    #[error("{}: metadata {key:?} is missing or malformed", path.display())]
    BadMetadata { path: PathBuf, key: &'static str },
    /// What a run would replace holds something wgnn did not write.
    #[error(
        "{} holds {found}, which no wgnn run writes: move it away to replace the run there",
        path.display()
    )]
    HoldsForeign { path: PathBuf, found: String },
}

/// Where a saved run stands: the step, and the epochs done or the batch reached within one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Saved {
    pub step: u64,
    pub epochs_done: usize,
    /// Batches of epoch `epochs_done + 1` done, for a save within an epoch.
    pub batches_done: Option<usize>,
}

impl Saved {
    fn new(step: u64, position: &Position) -> Self {
        Self {
            step,
            epochs_done: position.epochs_done,
            batches_done: position.within.map(|(b, _)| b),
        }
    }
}

impl std::fmt::Display for Saved {
    /// `epoch 3`, or `batch 7 of epoch 2`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.batches_done {
            None => write!(f, "epoch {}", self.epochs_done),
            Some(b) => write!(f, "batch {b} of epoch {}", self.epochs_done + 1),
        }
    }
}

/// What a save found worth telling: a caller that trains on past divergence says so.
#[derive(Clone, Debug, Default, PartialEq)]
#[must_use]
pub struct SaveReport {
    /// The saved parameters or running statistics held NaN or ±∞ (training went on with
    /// `stop_on_nonfinite` off): `(first tensor, index, count)`.
    pub nonfinite: Option<(String, usize, usize)>,
}

/// A run resumed from its directory.
pub struct Resumed {
    pub model: Model,
    pub run: RunConfig,
    pub position: Position,
    /// What the resume found and repaired (stale temp files, a checkpoint one save behind).
    pub notes: Vec<String>,
}

/// A run directory, locked for as long as this value lives.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    /// Holds the lock; closing it releases the lock.
    _lock: File,
    /// Set by [`RunDir::identify`], read back by a resume; else derived from the settings at
    /// the first save.
    run_id: Option<String>,
    /// Saves so far in the run (the number of the last one).
    saves: u64,
    history: Vec<EpochMetrics>,
    last_saved: Option<Saved>,
    notes: Vec<String>,
}

impl RunDir {
    /// Makes `path` the directory of a new run: creates it, locks it and checks it can be
    /// written, all before any training. A directory that holds a run already is refused
    /// unless `overwrite`, which removes that run first.
    pub fn create(path: &Path, overwrite: bool) -> Result<Self> {
        let lock = open_locked(path)?;
        let mut notes = remove_stale_temp_files(path)?;
        let mut present: Vec<&str> = RUN_FILES
            .iter()
            .copied()
            .filter(|f| path.join(f).exists())
            .collect();
        // An ensemble's members, each in a directory of its own.
        let members = path.join(ensemble::MEMBERS_DIR).exists();
        if members {
            present.push(ensemble::MEMBERS_DIR);
        }
        if !present.is_empty() {
            let found = describe_run(path, &present);
            if !overwrite {
                return Err(RunDirError::HoldsRun {
                    path: path.to_path_buf(),
                    found,
                }
                .into());
            }
            if members {
                // Checked before anything is removed: what wgnn did not write stays.
                ensemble::check_members_dir(path)?;
            }
            for file in present.iter().filter(|f| **f != ensemble::MEMBERS_DIR) {
                durable::remove_file(&path.join(file)).map_err(|e| unwritable(path, e))?;
            }
            if members {
                ensemble::remove_members_dir(path)?;
            }
            durable::sync_dir(path).map_err(|e| unwritable(path, e))?;
            notes.push(format!(
                "--overwrite: removed the run that was there ({found})"
            ));
        }
        Ok(Self {
            path: path.to_path_buf(),
            _lock: lock,
            run_id: None,
            saves: 0,
            history: Vec::new(),
            last_saved: None,
            notes,
        })
    }

    /// A new run in a fresh numbered directory under `parent` (`runs/1`, `runs/2`, …, one
    /// past the highest there), with `parent/latest` pointing at it (a symbolic link, on
    /// Unix). Two processes starting at once get two directories.
    pub fn create_numbered(parent: &Path) -> Result<Self> {
        durable::create_dir_all(parent).map_err(|e| unwritable(parent, e))?;
        if !parent.is_dir() {
            return Err(RunDirError::NotADirectory {
                path: parent.to_path_buf(),
            }
            .into());
        }
        let entries = std::fs::read_dir(parent).map_err(|e| unwritable(parent, e))?;
        let highest = entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        let mut number = highest + 1;
        let path = loop {
            let path = parent.join(number.to_string());
            match durable::create_dir(&path) {
                Ok(()) => break path,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => number += 1,
                Err(e) => return Err(unwritable(&path, e).into()),
            }
        };
        let mut dir = Self::create(&path, false)?;
        dir.point_latest(parent, number);
        Ok(dir)
    }

    /// Points `parent/latest` at run `number`, unless `latest` is not a link wgnn made.
    fn point_latest(&mut self, parent: &Path, number: u64) {
        let link = parent.join(LATEST_LINK);
        let is_link = std::fs::symlink_metadata(&link).map(|m| m.file_type().is_symlink());
        match is_link {
            Ok(false) => self.notes.push(format!(
                "{} is not a link (a run directory of an earlier wgnn?): left as it is",
                link.display()
            )),
            _ => {
                #[cfg(unix)]
                if let Err(e) = durable::replace_symlink(Path::new(&number.to_string()), &link)
                    .and_then(|()| durable::sync_dir(parent))
                {
                    self.notes
                        .push(format!("could not point {} here: {e}", link.display()));
                }
                #[cfg(not(unix))]
                let _ = number;
            }
        }
    }

    /// Locks the run in `path` and reads it back as its last save left it, verified: the
    /// training state whole (checksums), the checkpoint of the same run. Removes the temp
    /// files of an interrupted save, rewrites a checkpoint that is missing or one save behind,
    /// and rewrites the figures, so the directory is consistent before training goes on.
    pub fn resume(ctx: Arc<GpuContext>, path: &Path) -> Result<(Self, Resumed)> {
        if !path.is_dir() {
            let found = if path.exists() {
                "a file, not a run directory"
            } else {
                "no such directory"
            };
            return Err(RunDirError::NothingToResume {
                path: path.to_path_buf(),
                found: found.into(),
            }
            .into());
        }
        let lock = open_locked(path)?;
        let mut notes = remove_stale_temp_files(path)?;
        let training_path = path.join(TRAINING_FILE);
        if !training_path.exists() {
            let found = if path.join(MODEL_FILE).exists() {
                format!(
                    "{MODEL_FILE} but no {TRAINING_FILE}; `--init` starts a new run from its weights"
                )
            } else {
                "no checkpoint".to_string()
            };
            return Err(RunDirError::NothingToResume {
                path: path.to_path_buf(),
                found,
            }
            .into());
        }
        let training = StateDict::read(&training_path)?;
        if let Some(members) = training.metadata.get(ensemble::ENSEMBLE_KEY) {
            let members: Vec<serde_json::Value> = serde_json::from_str(members).unwrap_or_default();
            return Err(crate::ensemble::EnsembleError::IsEnsemble {
                path: path.display().to_string(),
                members: members.len(),
            }
            .into());
        }
        let meta = |key: &'static str| {
            training.metadata.get(key).ok_or(RunDirError::BadMetadata {
                path: training_path.clone(),
                key,
            })
        };
        let run_id = match training.metadata.get(RUN_ID_KEY) {
            Some(id) => id.clone(),
            None => {
                return Err(RunDirError::OldFormat {
                    path: path.to_path_buf(),
                }
                .into());
            }
        };
        let parse = |key: &'static str| -> Result<u64> {
            meta(key)?.parse().map_err(|_| {
                RunDirError::BadMetadata {
                    path: training_path.clone(),
                    key,
                }
                .into()
            })
        };
        let saves = parse(SAVE_KEY)?;
        let epochs_done = parse(EPOCH_KEY)? as usize;
        let within = match training.metadata.get(BATCH_KEY) {
            None => None,
            Some(_) => {
                let batches = parse(BATCH_KEY)? as usize;
                let totals = parse_totals(meta(TOTALS_KEY)?).ok_or(RunDirError::BadMetadata {
                    path: training_path.clone(),
                    key: TOTALS_KEY,
                })?;
                Some((batches, totals))
            }
        };
        let position = Position {
            epochs_done,
            within,
        };
        let run: RunConfig =
            serde_json::from_str(meta(RUN_KEY)?).map_err(|e| CheckpointError::Format {
                path: training_path.display().to_string(),
                message: format!("bad {RUN_KEY:?} metadata: {e}"),
            })?;
        let mut history: Vec<EpochMetrics> =
            serde_json::from_str(meta(HISTORY_KEY)?).map_err(|_| RunDirError::BadMetadata {
                path: training_path.clone(),
                key: HISTORY_KEY,
            })?;
        restore_timings(&path.join(METRICS_FILE), &mut history);

        run.check_sizes(&training_path, ctx.max_binding_bytes(), run.batch_size)?;
        // The run's fitted preprocessing: its statistics in the run, or its tensors beside.
        let transform = run.transform(path)?;
        let mut model = run.build_with(ctx, None, transform)?;
        let keys = model.sequential().state_dict_keys();
        let (model_part, optimizer_part) = split_training_state(&training, &keys);
        let base = model.state()?;
        let state = apply_state_dict(&model_part, model.sequential(), model.graph(), &base)?;
        let state = apply_optimizer_state(&optimizer_part, model.graph(), &state)?;
        model.load_state(&state)?;
        let saved = Saved::new(state.step, &position);

        let dir = Self {
            path: path.to_path_buf(),
            _lock: lock,
            run_id: Some(run_id),
            saves,
            history,
            last_saved: Some(saved),
            notes: Vec::new(),
        };
        let model_path = path.join(MODEL_FILE);
        let rewrite = match StateDict::read(&model_path) {
            Err(CheckpointError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Some(format!("{MODEL_FILE} was missing"))
            }
            Err(e @ (CheckpointError::Checksum { .. } | CheckpointError::Format { .. })) => {
                Some(format!("{MODEL_FILE} was unreadable ({e})"))
            }
            Err(e) => return Err(e.into()),
            Ok(checkpoint) => dir.compare_checkpoint(&checkpoint, &model_part)?,
        };
        if let Some(why) = rewrite {
            let sd = dir.checkpoint_dict(&model, &state, &run);
            write(&model_path, &sd)?;
            notes.push(format!(
                "{why}; rewrote it from the training state of {saved} (step {})",
                state.step
            ));
        }
        dir.write_figures()?;
        let resumed = Resumed {
            model,
            run,
            position,
            notes,
        };
        Ok((dir, resumed))
    }

    /// Whether `checkpoint` belongs with this run's training state; `Some(reason)` when it is
    /// of an earlier or later save of the run and should be rewritten.
    fn compare_checkpoint(
        &self,
        checkpoint: &StateDict,
        model_part: &StateDict,
    ) -> Result<Option<String>> {
        let id = checkpoint.metadata.get(RUN_ID_KEY);
        let step = |sd: &StateDict| sd.metadata.get("step").cloned().unwrap_or("?".into());
        if id != self.run_id.as_ref() {
            return Err(RunDirError::ForeignCheckpoint {
                path: self.path.clone(),
                checkpoint: id.cloned().unwrap_or_else(|| "none".into()),
                checkpoint_step: step(checkpoint),
                training: self.run_id().to_string(),
                training_step: step(model_part),
            }
            .into());
        }
        let save = checkpoint
            .metadata
            .get(SAVE_KEY)
            .and_then(|s| s.parse::<u64>().ok());
        if save != Some(self.saves) {
            let which = save.map_or("of no known save".to_string(), |s| format!("of save {s}"));
            return Ok(Some(format!(
                "{MODEL_FILE} was {which} of the run, the training state of save {} (a save was interrupted)",
                self.saves
            )));
        }
        if let Some(tensor) = model_part
            .tensors
            .iter()
            .find(|(name, t)| {
                !checkpoint
                    .tensors
                    .get(*name)
                    .is_some_and(|c| same_bits(c, t))
            })
            .map(|(name, _)| name.clone())
            .or_else(|| {
                checkpoint
                    .tensors
                    .keys()
                    .find(|k| !model_part.tensors.contains_key(*k))
                    .cloned()
            })
        {
            return Err(RunDirError::Edited {
                path: self.path.clone(),
                save: self.saves,
                tensor,
            }
            .into());
        }
        Ok(None)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The run's id, stamped into both safetensors files of every save ("" before the first
    /// save of a run that [`RunDir::identify`] did not name).
    pub fn run_id(&self) -> &str {
        self.run_id.as_deref().unwrap_or("")
    }

    /// Names a new run by what defines it ([`run_id`]), before its first save. Without it,
    /// the first save derives the id from the run's settings alone.
    pub fn identify(&mut self, run_id: String) {
        self.run_id = Some(run_id);
    }

    /// Takes up, in a new directory, a run trained elsewhere (a member of a stack) where it
    /// stands: `saves` saves made and the figures of the epochs it finished, so that the next
    /// save is numbered and holds what the run's own directory would have held.
    pub fn adopt(&mut self, saves: u64, history: Vec<EpochMetrics>) {
        self.saves = saves;
        self.history = history;
    }

    /// The last save that is whole on disk (this process's, or the one resumed from).
    pub fn last_saved(&self) -> Option<Saved> {
        self.last_saved
    }

    /// The finished epochs' figures, as `metrics.csv` holds them.
    pub fn history(&self) -> &[EpochMetrics] {
        &self.history
    }

    /// What opening the directory found worth telling (temp files removed, a run replaced,
    /// `latest` not updated), once.
    pub fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    /// [`RunDir::save`] where [`crate::train::fit`] asks for a checkpoint, adding an ended
    /// epoch's figures to the history.
    pub fn checkpoint(
        &mut self,
        model: &mut Model,
        run: &RunConfig,
        at: Checkpoint<'_>,
    ) -> Result<SaveReport> {
        let position = match at {
            Checkpoint::EpochEnd(m) => {
                self.history.retain(|h| h.epoch < m.epoch);
                self.history.push(*m);
                Position {
                    epochs_done: m.epoch,
                    within: None,
                }
            }
            Checkpoint::Within {
                epoch,
                batches_done,
                totals,
            } => Position {
                epochs_done: epoch,
                within: Some((batches_done, totals)),
            },
        };
        self.save(model, run, position)
    }

    /// Saves the model where the run stands: the training state (the commit) and the
    /// checkpoint, both stamped with the run's id and this save's number, then the figures.
    /// On an error before the commit the previous save stays whole and [`RunDir::last_saved`]
    /// still names it.
    pub fn save(
        &mut self,
        model: &mut Model,
        run: &RunConfig,
        position: Position,
    ) -> Result<SaveReport> {
        let state = model.state()?;
        if self.run_id.is_none() {
            self.run_id = Some(run_id_of_settings(run));
        }
        let save = self.saves + 1;
        let mut training = self.training_dict(model, &state, run, &position, save)?;
        let checkpoint = {
            let mut sd = self.checkpoint_dict(model, &state, run);
            sd.metadata.insert(SAVE_KEY.into(), save.to_string());
            sd
        };
        let report = SaveReport {
            nonfinite: checkpoint
                .first_nonfinite()
                .map(|(name, index, _, count)| (name.to_string(), index, count)),
        };
        training.source = self.path.join(TRAINING_FILE).display().to_string();
        let training_bytes = training.to_bytes()?;
        let checkpoint_bytes = checkpoint.to_bytes()?;

        let model_path = self.path.join(MODEL_FILE);
        let training_path = self.path.join(TRAINING_FILE);
        let (model_tmp, training_tmp) = (
            durable::temp_path(&model_path),
            durable::temp_path(&training_path),
        );
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| Error::from(CheckpointError::Io { path, source })
        };
        let written = durable::write_synced(&model_tmp, &checkpoint_bytes)
            .map_err(io(&model_path))
            .and_then(|()| {
                durable::write_synced(&training_tmp, &training_bytes).map_err(io(&training_path))
            })
            .and_then(|()| {
                durable::rename(&training_tmp, &training_path).map_err(io(&training_path))
            });
        if let Err(e) = written {
            // Nothing is committed: the previous save stands.
            let _ = durable::remove_file(&model_tmp);
            let _ = durable::remove_file(&training_tmp);
            return Err(e);
        }
        self.saves = save;
        if let Err(e) = durable::sync_dir(&self.path) {
            let _ = durable::remove_file(&model_tmp);
            return Err(io(&self.path)(e));
        }
        if let Err(e) = durable::rename(&model_tmp, &model_path) {
            let _ = durable::remove_file(&model_tmp);
            return Err(io(&model_path)(e));
        }
        self.last_saved = Some(Saved::new(state.step, &position));
        self.write_figures()?;
        Ok(report)
    }

    /// `metrics.csv` and `curves.svg` from the history, each atomically, then the directory
    /// fsynced.
    fn write_figures(&self) -> Result<()> {
        let metrics = self.path.join(METRICS_FILE);
        durable::write_atomic_unsynced(&metrics, metrics_csv(&self.history).as_bytes()).map_err(
            |source| Error::Io {
                path: metrics.display().to_string(),
                source,
            },
        )?;
        #[cfg(feature = "plot")]
        {
            let curves = self.path.join(CURVES_FILE);
            let svg = crate::plot::curves_svg(&self.history)?;
            durable::write_atomic_unsynced(&curves, svg.as_bytes()).map_err(|source| {
                Error::Io {
                    path: curves.display().to_string(),
                    source,
                }
            })?;
        }
        durable::sync_dir(&self.path).map_err(|source| Error::Io {
            path: self.path.display().to_string(),
            source,
        })
    }

    /// The model's checkpoint ([`crate::run::checkpoint_dict`]), stamped with the run's id
    /// and save.
    fn checkpoint_dict(&self, model: &Model, state: &HostState, run: &RunConfig) -> StateDict {
        let mut sd = crate::run::checkpoint_dict(model, state, run);
        sd.source = self.path.join(MODEL_FILE).display().to_string();
        sd.metadata
            .insert(RUN_ID_KEY.into(), self.run_id().to_string());
        sd.metadata.insert(SAVE_KEY.into(), self.saves.to_string());
        sd
    }

    /// Everything a resume needs, in one file.
    fn training_dict(
        &self,
        model: &Model,
        state: &HostState,
        run: &RunConfig,
        position: &Position,
        save: u64,
    ) -> Result<StateDict> {
        let mut sd = self.checkpoint_dict(model, state, run);
        let optimizer = checkpoint::optimizer_state_dict(model.graph(), state);
        sd.tensors.extend(optimizer.tensors);
        sd.metadata.remove("format");
        sd.metadata.insert(SAVE_KEY.into(), save.to_string());
        sd.metadata
            .insert(EPOCH_KEY.into(), position.epochs_done.to_string());
        if let Some((batches, totals)) = position.within {
            sd.metadata.insert(BATCH_KEY.into(), batches.to_string());
            sd.metadata
                .insert(TOTALS_KEY.into(), format_totals(&totals));
        }
        // The wall-clock figures differ between identical runs: metrics.csv keeps them.
        let figures: Vec<EpochMetrics> = self
            .history
            .iter()
            .map(|m| EpochMetrics {
                seconds: 0.0,
                samples_per_second: 0.0,
                ..*m
            })
            .collect();
        let history = serde_json::to_string(&figures).map_err(|e| CheckpointError::Format {
            path: sd.source.clone(),
            message: e.to_string(),
        })?;
        sd.metadata.insert(HISTORY_KEY.into(), history);
        Ok(sd)
    }
}

/// The model's tensors of a training state (those named by `keys`, the state_dict's) and the
/// optimizer's (the rest), each with the file's metadata.
fn split_training_state(training: &StateDict, keys: &[String]) -> (StateDict, StateDict) {
    let mut model = StateDict {
        metadata: training.metadata.clone(),
        source: training.source.clone(),
        checksummed: training.checksummed,
        ..StateDict::default()
    };
    let mut optimizer = model.clone();
    for (name, t) in &training.tensors {
        let part = if keys.contains(name) {
            &mut model
        } else {
            &mut optimizer
        };
        part.tensors.insert(name.clone(), t.clone());
    }
    (model, optimizer)
}

/// The same tensor bit for bit (NaN included).
fn same_bits(a: &StateTensor, b: &StateTensor) -> bool {
    a.shape == b.shape
        && match (&a.data, &b.data) {
            (TensorData::F32(x), TensorData::F32(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits())
            }
            (TensorData::I64(x), TensorData::I64(y)) => x == y,
            _ => false,
        }
}

fn write(path: &Path, sd: &StateDict) -> Result<()> {
    Ok(sd.write(path)?)
}

/// `metrics.csv`'s text: the header and a row per epoch.
pub fn metrics_csv(history: &[EpochMetrics]) -> String {
    let mut csv = String::from(METRICS_HEADER);
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
    csv
}

/// A directory locked for one writer, as a [`RunDir`] is, for the other directories wgnn
/// writes (an experiment's results); released when dropped.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Creates `path` if needed and takes its lock ([`LOCK_FILE`]); while another process
    /// holds it, fails at once with [`RunDirError::Busy`] naming that process.
    pub fn acquire(path: &Path) -> Result<Self, RunDirError> {
        Ok(Self {
            _file: open_locked(path)?,
        })
    }
}

fn unwritable(path: &Path, source: std::io::Error) -> RunDirError {
    RunDirError::Unwritable {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates `path` if needed and takes its lock, writing this process's id into the lock file
/// for the message another writer gets.
fn open_locked(path: &Path) -> Result<File, RunDirError> {
    if path.exists() && !path.is_dir() {
        return Err(RunDirError::NotADirectory {
            path: path.to_path_buf(),
        });
    }
    durable::create_dir_all(path).map_err(|e| unwritable(path, e))?;
    let lock_path = path.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|e| unwritable(path, e))?;
    match fs4::FileExt::try_lock(&file) {
        Ok(()) => {}
        Err(fs4::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(RunDirError::Busy {
                path: path.to_path_buf(),
                pid: text.trim().parse().ok(),
            });
        }
        Err(fs4::TryLockError::Error(e)) => return Err(unwritable(path, e)),
    }
    let pid = std::process::id().to_string();
    file.set_len(0)
        .and_then(|()| file.write_all(pid.as_bytes()))
        .map_err(|e| unwritable(path, e))?;
    Ok(file)
}

/// Removes the temp files that an interrupted save left (the directory is locked, so no live
/// writer owns them); says how many.
fn remove_stale_temp_files(path: &Path) -> Result<Vec<String>, RunDirError> {
    let entries = std::fs::read_dir(path).map_err(|e| unwritable(path, e))?;
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if durable::is_temp_file(&name) {
            durable::remove_file(&entry.path()).map_err(|e| unwritable(path, e))?;
            removed.push(name);
        }
    }
    if removed.is_empty() {
        return Ok(Vec::new());
    }
    durable::sync_dir(path).map_err(|e| unwritable(path, e))?;
    removed.sort();
    Ok(vec![format!(
        "removed {} temp file(s) of an interrupted save: {}",
        removed.len(),
        removed.join(", ")
    )])
}

/// `training_state.safetensors at step 80 (epoch 4), …`: what a run directory holds.
fn describe_run(path: &Path, present: &[&str]) -> String {
    let step = read_header_metadata(&path.join(TRAINING_FILE))
        .or_else(|| read_header_metadata(&path.join(MODEL_FILE)))
        .and_then(|m| m.get("step").cloned());
    match step {
        Some(step) => format!("{} at step {step}", present.join(", ")),
        None => present.join(", "),
    }
}

/// The string metadata of a safetensors file, reading only its header.
fn read_header_metadata(path: &Path) -> Option<std::collections::BTreeMap<String, String>> {
    let mut file = File::open(path).ok()?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).ok()?;
    let len = usize::try_from(u64::from_le_bytes(len)).ok()?;
    let mut header = vec![0u8; len.min(100 << 20)];
    file.read_exact(&mut header).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&header).ok()?;
    let metadata = value.get("__metadata__")?.as_object()?;
    Some(
        metadata
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
            .collect(),
    )
}

/// A run's id from what defines it: the CRC-32s of its settings (as the checkpoint records
/// them, but the number of epochs, which `--resume --epochs N` extends without changing a
/// step), of its data (every split's shape, values and labels) and of its initial state
/// (parameters, running statistics, optimizer state and step, after any `--init`), as
/// `settings-data-state` in hexadecimal. Two runs that compute the same thing share it, so
/// their files are interchangeable; two that differ in any of the three do not, so a
/// checkpoint and a training state of different runs are never mixed.
pub fn run_id(run: &RunConfig, data: &[&Dataset], initial: &HostState) -> String {
    let mut crc = crc32fast::Hasher::new();
    for d in data {
        for &n in &d.sample_shape {
            crc.update(&(n as u64).to_le_bytes());
        }
        crc.update(bytemuck::cast_slice(&d.features));
        crc.update(bytemuck::cast_slice(&d.labels));
    }
    let data = crc.finalize();
    let mut crc = crc32fast::Hasher::new();
    let floats = initial
        .params
        .iter()
        .chain(initial.optimizer.iter().flatten())
        .map(Vec::as_slice)
        .chain(initial.buffers.iter().filter_map(BufferValues::f32s));
    for values in floats {
        crc.update(bytemuck::cast_slice(values));
    }
    for buffer in &initial.buffers {
        if let BufferValues::Count(counts) = buffer {
            for c in counts {
                crc.update(&c.to_le_bytes());
            }
        }
    }
    crc.update(&initial.step.to_le_bytes());
    format!(
        "{}-{data:08x}-{:08x}",
        run_id_of_settings(run),
        crc.finalize()
    )
}

/// The settings' part of [`run_id`] (the whole id of a run that was not identified).
fn run_id_of_settings(run: &RunConfig) -> String {
    let run = RunConfig {
        epochs: 0,
        ..run.clone()
    };
    // RunConfig holds strings and numbers only: it always serializes.
    let json = serde_json::to_string(&run).unwrap_or_default();
    format!("{:08x}", crc32fast::hash(json.as_bytes()))
}

/// Puts back the wall-clock figures of `history`'s epochs (which the training state leaves
/// out) from `metrics.csv` as the last process wrote it, for each epoch it has a row of at the
/// same step; an epoch without one (an interrupted save's) keeps zeros.
fn restore_timings(metrics: &Path, history: &mut [EpochMetrics]) {
    if let Ok(text) = std::fs::read(metrics) {
        restore_timings_from(&text, history);
    }
}

/// [`restore_timings`] from `metrics.csv`'s text.
fn restore_timings_from(metrics: &[u8], history: &mut [EpochMetrics]) {
    let mut reader = csv::Reader::from_reader(metrics);
    for row in reader.records().flatten() {
        let number = |i: usize| row.get(i).and_then(|v| v.parse::<f64>().ok());
        let (Some(epoch), Some(seconds), Some(rate), Some(step)) = (
            row.get(0).and_then(|v| v.parse::<usize>().ok()),
            number(5),
            number(6),
            row.get(7).and_then(|v| v.parse::<u64>().ok()),
        ) else {
            continue;
        };
        if let Some(m) = history
            .iter_mut()
            .find(|m| m.epoch == epoch && m.step == step)
        {
            m.seconds = seconds;
            m.samples_per_second = rate;
        }
    }
}
