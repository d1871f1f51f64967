//! What an epoch of training measured. Plain data, below everything that records or draws it
//! ([`crate::train`], [`crate::rundir`], [`crate::plot`]).

/// One epoch's figures.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochMetrics {
    /// 1-based.
    pub epoch: usize,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub test_loss: f64,
    pub test_accuracy: f64,
    /// Wall time of the epoch's training part.
    pub seconds: f64,
    /// Training samples per second, of every rank in a data-parallel job.
    pub samples_per_second: f64,
    /// Optimizer steps taken so far.
    pub step: u64,
}
