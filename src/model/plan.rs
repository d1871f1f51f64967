//! Graphs and GPU plans per (mode, batch size): built once on first use and kept, so a
//! step only looks its plan up. Failures against the device's limits are turned into errors
//! that name the limit and what would fit.

use std::sync::Arc;

use crate::data::Transform;
use crate::error::{Error, Result};
use crate::exec::gpu::{GpuPlan, Shared};
use crate::gpu::GpuError;
use crate::graph::{Graph, Mode};
use crate::nn::{Loss, Sequential};
use crate::ops::softmax_xent::Reduction;
use crate::optim::Optimizer;

use super::validate::BatchError;
use super::{Model, ModelConfig};

impl Model {
    /// Builds (once) the plan for `mode` at `rows` samples.
    pub(super) fn plan(&mut self, mode: Mode, rows: usize) -> Result<()> {
        if self.plans.contains_key(&(mode, rows)) {
            return Ok(());
        }
        if !self.graphs.contains_key(&rows) {
            let graph = build_graph(
                &self.sequential,
                &self.loss,
                self.optimizer(),
                &self.config,
                rows,
                self.preprocess.as_ref(),
            )?;
            self.graphs.insert(rows, graph);
        }
        let graph = &self.graphs[&rows];
        let plan = GpuPlan::new(&self.ctx, graph, mode, &self.shared())
            .map_err(|e| batch_limit_error(e, graph))?;
        self.plans.insert((mode, rows), plan);
        Ok(())
    }

    /// What the plans share: the resident state and the per-step buffers.
    pub(super) fn shared(&self) -> Shared<'_> {
        Shared {
            state: &self.state,
            step: self.step_buffer.binding(),
            totals: self.totals.binding(),
            seed: self.config.seed,
            parallel: self.parallel(),
            dropout: &self.dropout,
        }
    }
}

/// Builds the graph at `rows` samples, refusing losses that cannot be trained.
pub(super) fn build_graph(
    sequential: &Sequential,
    loss: &Loss,
    optimizer: &Optimizer,
    config: &ModelConfig,
    rows: usize,
    preprocess: Option<&Arc<Transform>>,
) -> Result<Graph> {
    if loss.reduction() == Reduction::None {
        return Err(Error::UnreducedLoss);
    }
    Ok(crate::nn::build_with(
        sequential,
        loss,
        optimizer,
        &config.sample_shape,
        rows,
        preprocess,
    )?)
}

/// Fails before anything is allocated when the parameters cannot fit one storage binding
/// (they live in one flat buffer): the error names the largest layer and the limit.
pub(super) fn check_parameters_fit(graph: &Graph, limit: u64) -> Result<()> {
    let bytes: u64 = graph.params.iter().map(|p| p.len() as u64 * 4).sum();
    match graph.params.iter().max_by_key(|p| p.len()) {
        Some(largest) if bytes > limit => Err(Error::ParametersTooLarge {
            bytes,
            limit,
            largest: largest.name.clone(),
            shape: largest.shape.clone(),
        }),
        _ => Ok(()),
    }
}

/// Turns a buffer-size failure into an error that names the limit and the largest batch
/// that fits.
fn batch_limit_error(error: GpuError, graph: &Graph) -> Error {
    if let GpuError::BufferTooLarge { what, bytes, limit } = error {
        // The widest value, in bytes per sample, bounds the batch.
        let widest = graph
            .values
            .iter()
            .map(|v| v.cols as u64 * 4)
            .max()
            .unwrap_or(4)
            .max(1);
        return BatchError::TooLarge {
            batch_size: graph.batch_size,
            what,
            bytes,
            limit,
            largest: limit / widest,
        }
        .into();
    }
    Error::Gpu(error)
}
