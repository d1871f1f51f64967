//! The compare directory: everything `wgnn compare` writes for one experiment, by one process
//! at a time, marked as that experiment's so that a rerun resumes its runs and nothing else
//! is overwritten without `--overwrite`.
//!
//! | entry | what it holds |
//! |---|---|
//! | `experiment.toml` | the experiment file as the directory's first run read it: the mark that the directory is this experiment's, and what a rerun's file is compared with |
//! | `runs/V-seedS/` | one run directory per variant (numbered from 1 in the file's order) and seed, as `wgnn train` keeps it ([`wgnn::rundir`]), and its `result.csv` once the run ended |
//! | `groups/V-seedS.safetensors` | the save of a stack of runs still training, named by its first run ([`super::group_save`]); removed when the stack's runs have ended |
//! | `results.csv`, `summary.md`, `curves.svg` | every ended run's rows, the table, the curves: each rewritten atomically whenever a run ends |
//! | `.wgnn-lock` | locked by the process writing the directory |

use std::path::{Path, PathBuf};

use wgnn::checkpoint::{MODEL_FILE, TRAINING_FILE};
use wgnn::durable;
use wgnn::rundir::{DirLock, METRICS_FILE};

use super::group_save::GROUPS_DIR;
use super::results::RESULTS_FILE;
use super::schema::{Experiment, read_bounded};
use super::summary::SUMMARY_FILE;
use crate::cli::error::{CliError, Result};

/// The experiment's text, which marks the directory as its own.
pub const EXPERIMENT_FILE: &str = "experiment.toml";
/// The runs' directories.
pub const RUNS_DIR: &str = "runs";
/// The comparison's curves.
pub const CURVES_FILE: &str = "curves.svg";
/// What the experiment writes beside its runs.
const OUTPUTS: [&str; 3] = [RESULTS_FILE, SUMMARY_FILE, CURVES_FILE];
/// What a `wgnn train` run directory holds besides `curves.svg`.
const TRAIN_FILES: [&str; 4] = [
    TRAINING_FILE,
    MODEL_FILE,
    METRICS_FILE,
    wgnn::run::PREPROCESS_FILE,
];

/// What a directory held when it was opened.
enum Holds {
    /// Nothing of wgnn's.
    Nothing,
    /// This experiment's runs, to resume.
    ThisExperiment,
    /// This experiment's runs under another version of its file: what changed.
    Changed(Vec<String>),
    /// Another experiment's results or a `wgnn train` run: which.
    Other(String),
}

/// A compare directory, locked for as long as this value lives.
pub struct CompareDir {
    path: PathBuf,
    _lock: DirLock,
    /// Its runs are this experiment's: they are kept and resumed.
    resumes: bool,
    /// What it held goes before the first run (`--overwrite`).
    clears: bool,
}

fn refused(path: &Path, message: String) -> CliError {
    CliError::CompareDir {
        path: path.to_path_buf(),
        message,
    }
}

fn io(path: &Path, source: std::io::Error) -> CliError {
    CliError::Wgnn(wgnn::Error::Io {
        path: path.display().to_string(),
        source,
    })
}

impl CompareDir {
    /// Creates and locks `path` and says what it holds, before any data is read: this
    /// experiment's runs are resumed; another experiment's results, this experiment's under
    /// a changed file (saying what changed) or a `wgnn train` run are refused unless
    /// `overwrite`, which replaces them once every variant has been checked
    /// ([`CompareDir::start`]).
    pub fn open(path: &Path, experiment: &Experiment, overwrite: bool) -> Result<Self> {
        let lock = DirLock::acquire(path)?;
        remove_stale_temp_files(path)?;
        let holds = inspect(path, experiment, false)?;
        let (resumes, clears) = match (holds, overwrite) {
            (Holds::Nothing, _) => (false, false),
            (_, true) => (false, true),
            (Holds::ThisExperiment, false) => (true, false),
            (Holds::Changed(changes), false) => {
                return Err(refused(
                    path,
                    format!(
                        "holds the runs of experiment {:?} under an earlier version of its file, \
                         which has changed since: {}; restore it to resume them, give another \
                         --out, or pass --overwrite to start over",
                        experiment.name,
                        changes.join("; ")
                    ),
                ));
            }
            (Holds::Other(what), false) => {
                return Err(refused(
                    path,
                    format!("holds {what}: give another --out, or pass --overwrite to replace it"),
                ));
            }
        };
        Ok(Self {
            path: path.to_path_buf(),
            _lock: lock,
            resumes,
            clears,
        })
    }

    /// Locks `path` for `--replot`: it must hold a results.csv, and no other experiment's.
    pub fn for_replot(path: &Path, experiment: &Experiment) -> Result<Self> {
        if !path.is_dir() {
            return Err(refused(path, "no such directory: nothing to redraw".into()));
        }
        let lock = DirLock::acquire(path)?;
        remove_stale_temp_files(path)?;
        if let Holds::Other(what) = inspect(path, experiment, true)? {
            return Err(refused(
                path,
                format!("holds {what}: --replot redraws its own"),
            ));
        }
        if !path.join(RESULTS_FILE).is_file() {
            return Err(refused(
                path,
                format!("holds no {RESULTS_FILE}: nothing to redraw (run the experiment first)"),
            ));
        }
        Ok(Self {
            path: path.to_path_buf(),
            _lock: lock,
            resumes: true,
            clears: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes the directory this experiment's, once everything has been checked: removes what
    /// `--overwrite` replaces, then writes the experiment's text (its mark), unless the runs
    /// there resume.
    pub fn start(&mut self, text: &str) -> Result<()> {
        if self.clears {
            // The old mark goes last (replaced): a kill in between leaves a directory that
            // still says whose it is.
            for dir in [RUNS_DIR, GROUPS_DIR] {
                let dir = self.path.join(dir);
                if dir.exists() {
                    std::fs::remove_dir_all(&dir).map_err(|e| io(&dir, e))?;
                }
            }
            for file in OUTPUTS.iter().chain(&TRAIN_FILES) {
                let file = self.path.join(file);
                if file.exists() {
                    durable::remove_file(&file).map_err(|e| io(&file, e))?;
                }
            }
            durable::sync_dir(&self.path).map_err(|e| io(&self.path, e))?;
            self.clears = false;
        }
        if !self.resumes {
            let marker = self.path.join(EXPERIMENT_FILE);
            durable::write_atomic(&marker, text.as_bytes()).map_err(|e| io(&marker, e))?;
            self.resumes = true;
        }
        Ok(())
    }

    /// The directory of variant `variant` (0-based, of `variants`) with `seed`.
    pub fn run_path(&self, variant: usize, variants: usize, seed: u64) -> PathBuf {
        let width = variants.to_string().len();
        self.path
            .join(RUNS_DIR)
            .join(format!("{:0width$}-seed{seed}", variant + 1))
    }

    /// Replaces results.csv (when given), summary.md and curves.svg, each atomically, then
    /// makes the renames durable together.
    pub fn write_outputs(&self, results: Option<&[u8]>, summary: &str, curves: &str) -> Result<()> {
        let files = [
            (RESULTS_FILE, results),
            (SUMMARY_FILE, Some(summary.as_bytes())),
            (CURVES_FILE, Some(curves.as_bytes())),
        ];
        for (name, bytes) in files {
            let Some(bytes) = bytes else { continue };
            let file = self.path.join(name);
            durable::write_atomic_unsynced(&file, bytes).map_err(|e| io(&file, e))?;
        }
        durable::sync_dir(&self.path).map_err(|e| io(&self.path, e))
    }
}

/// What `path` holds, as it concerns `experiment`. A `runs/` directory that no experiment
/// marked is refused whatever the flags: `--overwrite` removes only what wgnn wrote.
fn inspect(path: &Path, experiment: &Experiment, replot: bool) -> Result<Holds> {
    let marker = path.join(EXPERIMENT_FILE);
    if marker.exists() {
        let earlier = read_bounded(&marker, super::schema::MAX_FILE_BYTES)
            .map_err(|e| io(&marker, e))
            .and_then(|text| Experiment::parse(&marker, &text));
        return Ok(match earlier {
            Err(e) => Holds::Other(format!("an {EXPERIMENT_FILE} this wgnn cannot read ({e})")),
            Ok(earlier) if earlier.name != experiment.name => Holds::Other(format!(
                "the results of another experiment, {:?}",
                earlier.name
            )),
            Ok(earlier) => match experiment.changes_since(&earlier) {
                changes if changes.is_empty() || replot => Holds::ThisExperiment,
                changes => Holds::Changed(changes),
            },
        });
    }
    let present = |names: &[&str]| -> Vec<String> {
        names
            .iter()
            .filter(|n| path.join(n).exists())
            .map(|n| n.to_string())
            .collect()
    };
    for dir in [RUNS_DIR, GROUPS_DIR] {
        if path.join(dir).exists() && !replot {
            return Err(refused(
                path,
                format!(
                    "holds a {dir}/ directory but no {EXPERIMENT_FILE}: not an experiment's, \
                     and not wgnn's to replace; give another --out"
                ),
            ));
        }
    }
    let train = present(&TRAIN_FILES);
    if !train.is_empty() {
        return Ok(Holds::Other(format!(
            "a `wgnn train` run ({})",
            train.join(", ")
        )));
    }
    let outputs = present(&OUTPUTS);
    if !outputs.is_empty() && !replot {
        return Ok(Holds::Other(format!(
            "the results of an experiment ({}) without the {EXPERIMENT_FILE} that says which \
             (an earlier wgnn's?)",
            outputs.join(", ")
        )));
    }
    Ok(Holds::Nothing)
}

/// Removes the temp files an interrupted atomic write left (the directory is locked, so no
/// live writer owns them).
fn remove_stale_temp_files(path: &Path) -> Result<()> {
    let entries = std::fs::read_dir(path).map_err(|e| io(path, e))?;
    let mut removed = false;
    for entry in entries.flatten() {
        if durable::is_temp_file(&entry.file_name().to_string_lossy()) {
            durable::remove_file(&entry.path()).map_err(|e| io(&entry.path(), e))?;
            removed = true;
        }
    }
    if removed {
        durable::sync_dir(path).map_err(|e| io(path, e))?;
    }
    Ok(())
}
