//! What both ways of training an experiment's runs stand on, one at a time
//! ([`super::runs`]) or as stacked groups ([`super::stacked`]): the [`Session`] (the device,
//! the experiment, its directory, its prepared variants) with each run's settings, directory
//! and the start of its progress line; a run's [`RunId`]; the [`DataCache`] that keeps the
//! last data loaded for the next run; the [`Clock`] of the time left; and the errors they share.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use wgnn::data::Transform;
use wgnn::data::prepare::Splits;
use wgnn::gpu::GpuContext;
use wgnn::run::{DataConfig, RunConfig};

use super::outdir::CompareDir;
use super::schema::Experiment;
use crate::cli::error::CliError;

/// A variant ready to run: its run (with the first seed; each run sets its own), its
/// preprocessing, fitted once on the training split (the seed changes neither), and how
/// many of its runs one stack holds on the device.
pub struct Prepared {
    pub(super) run: RunConfig,
    pub(super) transform: Option<Transform>,
    pub(super) capacity: usize,
}

/// How the experiment's runs are trained.
pub struct Session<'a> {
    pub ctx: Arc<GpuContext>,
    pub experiment: &'a Experiment,
    pub dir: &'a CompareDir,
    pub prepared: Vec<Prepared>,
    pub checkpoint_every: Option<u64>,
    /// One run at a time, none stacked (`--sequential`).
    pub sequential: bool,
}

impl Session<'_> {
    /// The run's settings: its variant's, with its seed.
    pub(super) fn run_of(&self, id: RunId) -> RunConfig {
        let mut run = self.prepared[id.variant].run.clone();
        run.seed = id.seed;
        run
    }

    /// The run's directory.
    pub(super) fn path(&self, id: RunId) -> PathBuf {
        let variants = self.experiment.variants.len();
        self.dir.run_path(id.variant, variants, id.seed)
    }

    /// `[  3/24] lr=0.1 · seed 2:`, the start of a run's progress line.
    pub(super) fn prefix(&self, id: RunId) -> String {
        format!(
            "[{:>3}/{}] {} · seed {}:",
            id.number,
            self.experiment.runs(),
            self.experiment.variants[id.variant].name,
            id.seed
        )
    }
}

/// One run of the experiment: a variant (its index), a seed, and its number in the file's
/// order (from 1), as the progress lines count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct RunId {
    pub(super) variant: usize,
    pub(super) seed: u64,
    pub(super) number: usize,
}

/// The last data loaded, kept while the next variant or run reads the same.
#[derive(Default)]
pub(super) struct DataCache {
    loaded: Option<(DataConfig, Splits)>,
}

impl DataCache {
    pub(super) fn get(&mut self, data: &DataConfig) -> wgnn::Result<&Splits> {
        // Other data is dropped before the next is loaded.
        let kept = self.loaded.take().filter(|(c, _)| c == data);
        let loaded = match kept {
            Some(kept) => kept,
            None => (data.clone(), data.load()?),
        };
        Ok(&self.loaded.insert(loaded).1)
    }
}

/// The time left, from the member-epochs trained so far and those still to train.
pub(super) struct Clock {
    start: Instant,
    total: f64,
    done: f64,
    /// Where `done` stands when the current unit has ended.
    unit_end: f64,
}

impl Clock {
    /// A clock for `total` member-epochs, started now.
    pub(super) fn new(total: usize) -> Self {
        Self {
            start: Instant::now(),
            total: total as f64,
            done: 0.0,
            unit_end: 0.0,
        }
    }

    /// A unit of `work` member-epochs begins.
    pub(super) fn begin(&mut self, work: usize) {
        self.unit_end = self.done + work as f64;
    }

    /// `work` member-epochs of the current unit are done.
    pub(super) fn advance(&mut self, work: usize) {
        self.done = (self.done + work as f64).min(self.unit_end);
    }

    /// The current unit has ended (its diverged members' epochs with it).
    pub(super) fn finish(&mut self) {
        self.done = self.unit_end;
    }

    /// `about 42 s left`.
    pub(super) fn left(&self) -> String {
        if self.done <= 0.0 {
            return "time left not known yet".into();
        }
        let rate = self.start.elapsed().as_secs_f64() / self.done;
        format!(
            "about {:.0} s left",
            rate * (self.total - self.done).max(0.0)
        )
    }
}

/// An I/O error on `path`.
pub(super) fn io(path: &Path, source: std::io::Error) -> CliError {
    CliError::Wgnn(wgnn::Error::Io {
        path: path.display().to_string(),
        source,
    })
}

/// The settings in which two runs differ, by name.
pub(super) fn differences(a: &RunConfig, b: &RunConfig) -> String {
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
