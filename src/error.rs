//! wgnn's error type: every failure a user can cause or meet, each naming what is wrong and
//! carrying the values that show it.

use crate::data::DataError;
use crate::gpu::GpuError;
use crate::graph::{BuildError, Mode};
use crate::model::{BatchError, StateProblem};
use crate::ops::OpError;
use crate::optim::ScheduleError;

/// Any wgnn error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error(transparent)]
    Op(#[from] OpError),
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The CPU reference executor could not run a step.
    #[error("CPU reference: {0}")]
    Reference(#[from] crate::exec::cpu::CpuRunError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    #[error(transparent)]
    Spec(#[from] crate::nn::spec::SpecError),
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    #[error(transparent)]
    Dist(#[from] crate::dist::DistError),
    #[error(transparent)]
    RunDir(#[from] crate::rundir::RunDirError),
    /// Members that cannot share a stack.
    #[error("stack: {0}")]
    Stack(#[from] crate::model::StackError),
    #[error(transparent)]
    Ensemble(#[from] crate::ensemble::EnsembleError),
    /// A batch that does not fit the model.
    #[error("batch: {0}")]
    Batch(#[from] BatchError),
    /// An operation called in the wrong mode: `op` needs the model in `needs`.
    #[error("{op} needs {} mode: call model.{}() first", mode_name(*needs), mode_name(*needs))]
    WrongMode { op: &'static str, needs: Mode },
    /// A loss with `reduction = none`: per-row losses, no scalar to differentiate.
    #[error("a loss with reduction 'none' gives no scalar to train on: use mean or sum")]
    UnreducedLoss,
    /// The flat parameter buffer would exceed one storage binding.
    #[error(
        "the model's parameters need {bytes} bytes (largest: {largest} {shape:?}), over the \
         device's max_storage_buffer_binding_size of {limit} bytes"
    )]
    ParametersTooLarge {
        bytes: u64,
        limit: u64,
        /// The largest parameter tensor's name and shape.
        largest: String,
        shape: Vec<usize>,
    },
    /// A model of more layers than [`crate::nn::spec::MAX_LAYERS`] (a spec past it fails as
    /// [`Error::Spec`], naming the token).
    #[error("the model has {layers} layers; a model has at most {limit}")]
    TooManyLayers { layers: usize, limit: usize },
    /// A state (e.g. from a checkpoint) whose tensors do not fit the model: every problem.
    #[error("state does not fit the model: {}", join(problems))]
    StateMismatch { problems: Vec<StateProblem> },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// A run whose preprocessing is stored beside its checkpoint, built without it.
    #[error(
        "this run's preprocessing ({option}) is stored beside its checkpoint: load it with \
         run::restore, or build with RunConfig::transform and RunConfig::build_with"
    )]
    PreprocessNotLoaded { option: String },
    /// An optimizer update met a NaN or infinite gradient, or left a parameter so.
    #[error(
        "the update at step {step} {}: training diverged (lower the learning rate, or check the data for NaN/Inf with --check-finite)",
        if *gradient {
            format!("met a non-finite gradient of {parameter}[{index}]")
        } else {
            format!("left {parameter}[{index}] non-finite")
        }
    )]
    NonFiniteUpdate {
        step: u64,
        parameter: String,
        index: usize,
        /// The gradient was non-finite (else the update overflowed the parameter).
        gradient: bool,
    },
    /// Training produced a NaN or infinite loss.
    #[error(
        "the loss became {value} at step {step}: training diverged (lower the learning rate, or check the data for NaN/Inf with --check-finite)"
    )]
    Diverged { step: u64, value: f32 },
}

/// `train` or `eval`, as in `model.train()` / `model.eval()`.
fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Train => "train",
        Mode::Eval => "eval",
    }
}

fn join(problems: &[StateProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_values() {
        let wrong = Error::WrongMode {
            op: "train_step",
            needs: Mode::Train,
        };
        assert_eq!(
            wrong.to_string(),
            "train_step needs train mode: call model.train() first"
        );
        let mismatch = Error::StateMismatch {
            problems: vec![
                StateProblem::ParameterCount {
                    given: 2,
                    expected: 4,
                },
                StateProblem::BufferLength {
                    names: "1.running_mean, 1.running_var".into(),
                    len: 64,
                    kind: "f32",
                    expected: 128,
                    expected_kind: "f32",
                },
            ],
        };
        assert_eq!(
            mismatch.to_string(),
            "state does not fit the model: 2 parameters given, the model has 4; \
             1.running_mean, 1.running_var: 64 values of f32, expected 128 of f32"
        );
        let label = Error::from(BatchError::LabelOutOfRange {
            index: 1,
            label: 3,
            classes: 3,
        });
        assert_eq!(
            label.to_string(),
            "batch: target 3 at index 1 is out of bounds for 3 classes"
        );
    }
}
