//! The command line's errors: the library's, and those of flags and files only the command
//! line reads. `main` prints any of them on one line.

use std::path::PathBuf;

use wgnn::run::LossKind;

/// A failure of a `wgnn` command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Wgnn(#[from] wgnn::Error),
    /// Training failed after a checkpoint was written: the error, and where the run can be
    /// resumed from.
    #[error(
        "{source} (the checkpoint of {place} in {dir} is intact: `wgnn train --resume {dir}` continues from it)",
        dir = dir.display()
    )]
    AfterCheckpoint {
        source: Box<wgnn::Error>,
        /// The last save whole on disk: `epoch 3`, or `batch 7 of epoch 2`.
        place: wgnn::rundir::Saved,
        dir: PathBuf,
    },
    /// A mistake in an experiment file for `wgnn compare`, naming the key.
    #[error("{}: {message}", path.display())]
    Experiment { path: PathBuf, message: String },
    /// `wgnn compare`'s output directory refused, or a run in it failed: what to do next.
    #[error("{}: {message}", path.display())]
    CompareDir { path: PathBuf, message: String },
    /// A command other than `train` under mpirun.
    #[error(
        "only `wgnn train` runs as several processes (this job has {size}): run other commands alone"
    )]
    OnlyTrainRunsParallel { size: usize },
    #[error("--epochs 0 trains nothing: give at least 1")]
    NoEpochs,
    #[error("--ensemble 0 trains no model: give at least 1 member")]
    NoMembers,
    /// An ensemble under mpirun: its members train side by side in one process.
    #[error(
        "an ensemble trains its members side by side in one process, but this job has {size}: run `wgnn train --ensemble N` without mpirun (or with -np 1)"
    )]
    EnsembleUnderMpi { size: usize },
    /// `--resume --epochs N` with N below what the run has done.
    #[error(
        "{} has done {done} epoch(s){}: --epochs {epochs} would train nothing (give more than {done})",
        dir.display(),
        if *within { " and part of the next" } else { "" }
    )]
    ResumeEpochs {
        dir: PathBuf,
        epochs: usize,
        done: usize,
        within: bool,
    },
    #[error("--loss bce needs labels 0 and 1, but the data has {classes} classes")]
    BinaryLossClasses { classes: usize },
    #[error("--amsgrad applies to --optimizer adam or adamw, not sgd")]
    AmsgradWithSgd,
    /// The architecture's last Linear gives `found` logits where the loss needs `needed`.
    #[error("--arch {arch:?} ends with {found} outputs, but {} needs {needed}", needer(*loss))]
    ArchOutputs {
        arch: String,
        found: usize,
        needed: usize,
        loss: LossKind,
    },
    #[error("--arch {arch:?} has no linear layer to produce logits")]
    ArchWithoutLogits { arch: String },
    /// Samples of another shape than the checkpoint's model takes; both shapes lead with N.
    #[error(
        "{}: samples shaped {found:?}, but the model takes [N, {}] ({} values per sample)",
        path.display(),
        dims(expected),
        expected.iter().product::<usize>()
    )]
    SampleShape {
        path: PathBuf,
        found: Vec<usize>,
        /// One sample's shape.
        expected: Vec<usize>,
    },
    /// An input that holds no samples at all.
    #[error("{}: no rows: there are no samples to predict", path.display())]
    NoRows { path: PathBuf },
    #[error("--output {}: use a .safetensors or .npy file name", path.display())]
    OutputFormat { path: PathBuf },
    /// An output path that cannot be written, found before anything is computed.
    #[error("--output {}: {problem}", path.display())]
    OutputPath { path: PathBuf, problem: String },
    /// An output path that is one of the files the command reads.
    #[error(
        "--output {} is {}, which predict reads: write the predictions to another file",
        output.display(),
        input.display()
    )]
    OutputIsInput { output: PathBuf, input: PathBuf },
    /// `eval --label-column none`: no labels to measure against.
    #[error(
        "--label-column none reads no labels, but eval measures loss and accuracy against them: \
         `wgnn predict --label-column none` writes the model's outputs for unlabelled samples"
    )]
    EvalWithoutLabels,
    /// Flags that `--resume` cannot apply: the run fixed them when it started.
    #[error(
        "{} is resumed with the settings it started with, which {flags} would change: drop {}, \
         or start a new run from its weights (`--init {}`); with --resume only --epochs, \
         --max-steps, --checkpoint-every, --keep-going and --quiet apply",
        dir.display(),
        if flags.contains(',') { "them" } else { "it" },
        dir.display()
    )]
    ResumeFixes { dir: PathBuf, flags: String },
    #[error("writing the JSON report: {0}")]
    Json(#[from] serde_json::Error),
}

pub type Result<T, E = CliError> = std::result::Result<T, E>;

/// What a loss needs its logits to match, for [`CliError::ArchOutputs`].
fn needer(loss: LossKind) -> &'static str {
    match loss {
        LossKind::Ce => "the data's classes",
        LossKind::Bce => "--loss bce",
    }
}

/// `1, 28, 28`.
fn dims(shape: &[usize]) -> String {
    shape
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Errors of the library's own kinds convert through [`wgnn::Error`].
macro_rules! from_wgnn {
    ($($kind:ty),*) => {
        $(impl From<$kind> for CliError {
            fn from(error: $kind) -> Self {
                CliError::Wgnn(error.into())
            }
        })*
    };
}

from_wgnn!(
    wgnn::gpu::GpuError,
    wgnn::data::DataError,
    wgnn::checkpoint::CheckpointError,
    wgnn::nn::spec::SpecError,
    wgnn::optim::ScheduleError,
    wgnn::rundir::RunDirError
);
