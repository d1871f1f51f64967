//! wgnn's error type: every failure a user can cause or meet, each naming what is wrong.

use crate::data::DataError;
use crate::gpu::GpuError;
use crate::graph::BuildError;
use crate::ops::OpError;

/// Any wgnn error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error(transparent)]
    Op(#[from] OpError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    #[error(transparent)]
    Spec(#[from] crate::nn::spec::SpecError),
    /// A batch that does not fit the model.
    #[error("batch: {0}")]
    Batch(String),
    /// A model, a state or a setting that cannot work (with what is wrong).
    #[error("{0}")]
    Invalid(String),
    /// An operation called in the wrong mode.
    #[error("{0}")]
    Mode(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// Training produced a NaN or infinite loss.
    #[error(
        "the loss became {value} at step {step}: training diverged (lower the learning rate, or check the data for NaN/Inf with --check-finite)"
    )]
    Diverged { step: u64, value: f32 },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
