//! The per-epoch measures an experiment may ask for (`measure = [...]`, experiments/FORMAT.md).

use std::path::Path;
use std::sync::Arc;

use wgnn::Model;
use wgnn::data::Dataset;
use wgnn::durable;
use wgnn::gpu::GpuContext;
use wgnn::run::RunConfig;

use crate::cli::error::{CliError, Result};

/// Samples the gradient-signs measure looks at, one at a time.
const SIGN_SAMPLES: usize = 256;

/// Among the first Linear's output neurons with a nonzero per-sample weight gradient, the
/// share whose gradient row is single-signed (experiments/FORMAT.md), on a copy of `model`
/// that trains at rate 0.
pub fn single_signed_share(
    ctx: &Arc<GpuContext>,
    model: &mut Model,
    run: &RunConfig,
    train: &Dataset,
) -> wgnn::Result<f64> {
    let state = model.state()?;
    let config = wgnn::ModelConfig {
        batch_size: 1,
        ..model.config().clone()
    };
    let mut probe = Model::build(
        ctx.clone(),
        model.preprocess().cloned().map(Arc::new),
        model.sequential().clone(),
        run.loss(),
        run.optimizer(),
        config,
        Some(state),
    )?;
    probe.set_lr(0.0);
    probe.train();
    let d = train.sample_len();
    let mut shares = Shares::default();
    for i in 0..train.len().min(SIGN_SAMPLES) {
        probe.train_step(&train.features[i * d..(i + 1) * d], &train.labels[i..=i])?;
        let grads = probe.gradients()?;
        shares.add(probe.graph(), &grads);
    }
    Ok(shares.mean())
}

/// [`single_signed_share`] of members `members` of the stack `model`, each as its lone run
/// measures it: one probe stack of those members at rate 0, every member stepping on the
/// same sample, each member's gradients read on their own.
pub fn single_signed_shares(
    ctx: &Arc<GpuContext>,
    model: &mut Model,
    members: &[usize],
    train: &Dataset,
) -> wgnn::Result<Vec<f64>> {
    if members.is_empty() {
        return Ok(Vec::new());
    }
    let mut configs = Vec::with_capacity(members.len());
    let mut states = Vec::with_capacity(members.len());
    for &k in members {
        configs.push(model.member_config(k)?.clone());
        states.push(model.member_state(k)?);
    }
    let config = wgnn::ModelConfig {
        batch_size: 1,
        ..model.config().clone()
    };
    let mut probe = Model::stack(
        ctx.clone(),
        model.preprocess().cloned().map(Arc::new),
        model.sequential().clone(),
        model.loss().clone(),
        config,
        configs,
        Some(states),
    )?;
    for j in 0..members.len() {
        probe.set_member_lr(j, 0.0)?;
    }
    probe.train();
    let d = train.sample_len();
    let mut shares = vec![Shares::default(); members.len()];
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for i in 0..train.len().min(SIGN_SAMPLES) {
        x.clear();
        y.clear();
        for _ in members {
            x.extend_from_slice(&train.features[i * d..(i + 1) * d]);
            y.push(train.labels[i]);
        }
        probe.train_step_members(&x, &y)?;
        for (j, share) in shares.iter_mut().enumerate() {
            let grads = probe.member_gradients(j)?;
            share.add(probe.graph(), &grads);
        }
    }
    Ok(shares.iter().map(Shares::mean).collect())
}

/// The single-signed shares of the samples seen so far.
#[derive(Clone, Default)]
struct Shares {
    total: f64,
    counted: usize,
    /// The model has no weight matrix: the measure is NaN.
    none: bool,
}

impl Shares {
    /// One sample's gradients: the share of the first weight matrix's live rows (neurons
    /// the sample reached; a ReLU that was off gives an all-zero row) that are
    /// single-signed.
    fn add(&mut self, graph: &wgnn::graph::Graph, grads: &[(String, Vec<f32>)]) {
        let Some(w) = graph.params.iter().position(|p| p.shape.len() == 2) else {
            self.none = true;
            return;
        };
        let (rows, cols) = (graph.params[w].shape[0], graph.params[w].shape[1]);
        let g = &grads[w].1;
        let (mut live, mut single) = (0usize, 0usize);
        for r in 0..rows {
            let row = &g[r * cols..(r + 1) * cols];
            let (pos, neg) = (row.iter().any(|&v| v > 0.0), row.iter().any(|&v| v < 0.0));
            if pos || neg {
                live += 1;
                single += usize::from(!(pos && neg));
            }
        }
        if live > 0 {
            self.total += single as f64 / live as f64;
            self.counted += 1;
        }
    }

    fn mean(&self) -> f64 {
        if self.none || self.counted == 0 {
            f64::NAN
        } else {
            self.total / self.counted as f64
        }
    }
}

/// A run's measures so far, in its directory: written before the save that ends each epoch,
/// so never behind the run's last save.
pub const MEASURES_FILE: &str = "measures.csv";
const MEASURES_HEADER: [&str; 2] = ["epoch", "single_signed_share"];

fn io(path: &Path, source: std::io::Error) -> wgnn::Error {
    wgnn::Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes `shares` (epoch 1, 2, …) to `path` atomically, each exactly (the shortest decimal
/// that reads back as the same number).
pub fn write_measures(path: &Path, shares: &[f64]) -> wgnn::Result<()> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    let mut rows = vec![MEASURES_HEADER.map(String::from)];
    rows.extend(
        shares
            .iter()
            .enumerate()
            .map(|(i, s)| [(i + 1).to_string(), s.to_string()]),
    );
    for row in rows {
        writer
            .write_record(&row)
            .map_err(|e| io(path, std::io::Error::other(e)))?;
    }
    let bytes = writer
        .into_inner()
        .map_err(|e| io(path, std::io::Error::other(e.to_string())))?;
    durable::write_atomic(path, &bytes).map_err(|e| io(path, e))
}

/// The measures of the first `epochs` epochs, as [`write_measures`] wrote them.
pub fn read_measures(path: &Path, epochs: usize) -> Result<Vec<f64>> {
    let bad = |message: String| CliError::CompareDir {
        path: path.to_path_buf(),
        message: format!("{message}: the run cannot be resumed; --overwrite starts over"),
    };
    if epochs == 0 {
        return Ok(Vec::new());
    }
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let mut reader = csv::Reader::from_reader(bytes.as_slice());
    let mut shares = Vec::with_capacity(epochs);
    for (i, row) in reader.records().enumerate() {
        let row = row.map_err(|e| bad(e.to_string()))?;
        let share = match (row.get(0).map(str::parse::<usize>), row.get(1)) {
            (Some(Ok(epoch)), Some(share)) if epoch == i + 1 => share.parse::<f64>().ok(),
            _ => None,
        };
        shares.push(share.ok_or_else(|| bad(format!("row {} is not epoch {}", i + 2, i + 1)))?);
    }
    if shares.len() < epochs {
        return Err(bad(format!(
            "holds {} epoch(s), the run's last save {epochs}",
            shares.len()
        )));
    }
    shares.truncate(epochs);
    Ok(shares)
}
