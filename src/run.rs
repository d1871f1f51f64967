//! A training run as the command line describes it: the model, loss, optimizer, data
//! preprocessing and loop settings, stored in the checkpoint so that eval, predict and resume
//! need nothing else.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::checkpoint::{CheckpointError, MODEL_FILE, StateDict, apply_state_dict};
use crate::data::Normalization;
use crate::error::Result;
use crate::exec::state::HostState;
use crate::gpu::GpuContext;
use crate::nn::{BCEWithLogitsLoss, CrossEntropyLoss, Loss, Sequential, spec};
use crate::ops::reduce::{RawTotals, TOTALS_LEN};
use crate::optim::{Adam, LrSchedule, Optimizer, Sgd};
use crate::{Model, ModelConfig};

/// Metadata key of the run description in `checkpoint.safetensors`.
pub const RUN_KEY: &str = "wgnn.run";
/// Metadata key of the completed epochs in `training_state.safetensors` (see
/// [`crate::rundir`] for the rest of what it holds).
pub const EPOCH_KEY: &str = "epoch";
/// Metadata keys of a checkpoint taken within an epoch: the batches of the next epoch done,
/// and that epoch's running totals (the totals buffer's words, as hexadecimal bits).
pub const BATCH_KEY: &str = "batches_done";
pub const TOTALS_KEY: &str = "epoch_totals";

/// Where a run stands in its data: epochs done and, within the next one, the batches done
/// with their running totals.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Position {
    pub epochs_done: usize,
    pub within: Option<(usize, RawTotals)>,
}

/// `--loss`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossKind {
    /// Cross-entropy over class logits.
    Ce,
    /// Binary cross-entropy with logits (one output, labels 0/1).
    Bce,
}

/// `--optimizer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Sgd,
    Adam,
    Adamw,
}

/// Everything that defines a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// Model spec string, e.g. the lecture's MLP.
    pub arch: String,
    pub sample_shape: Vec<usize>,
    /// Classes of the data (2 for BCE, whose model has one output).
    pub classes: usize,
    pub loss: LossKind,
    pub label_smoothing: f32,
    pub pos_weight: f32,
    pub optimizer: OptimizerKind,
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    /// Adam and AdamW: the AMSGrad variant (absent from runs saved before it existed).
    #[serde(default)]
    pub amsgrad: bool,
    /// The learning rate's schedule over epochs, from `lr` (none: constant).
    #[serde(default)]
    pub lr_schedule: Option<LrSchedule>,
    pub batch_size: usize,
    pub epochs: usize,
    pub seed: u64,
    pub shuffle: bool,
    pub drop_last: bool,
    /// Per-channel mean and std of the training split (absent: data used as is).
    pub normalization: Option<(Vec<f32>, Vec<f32>)>,
    pub data: DataConfig,
}

/// Where a run's data comes from, so `--resume` can load it again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataConfig {
    /// None: the embedded MNIST digits.
    pub path: Option<PathBuf>,
    pub test_path: Option<PathBuf>,
    /// Fraction of a single file's rows held back for testing.
    pub holdout: f64,
    /// CSV label column (name or 0-based index); None: automatic.
    pub label_column: Option<String>,
    /// Whether a CSV file's first row is a header; None: guessed.
    #[serde(default)]
    pub header: Option<bool>,
    /// A CSV file's delimiter; None: `,` (a tab for `.tsv`).
    #[serde(default)]
    pub delimiter: Option<u8>,
    /// Per-channel normalization (else the data is used as is).
    pub normalize: bool,
    pub check_finite: bool,
}

impl DataConfig {
    pub fn source(&self) -> crate::data::prepare::Source {
        match &self.path {
            Some(p) => crate::data::prepare::Source::Path(p.clone()),
            None => crate::data::prepare::Source::EmbeddedMnist,
        }
    }

    pub fn load_options(&self) -> crate::data::LoadOptions {
        use crate::data::LabelColumn;
        let csv_label = match &self.label_column {
            None => LabelColumn::Auto,
            Some(c) => c
                .parse()
                .map_or_else(|_| LabelColumn::Name(c.clone()), LabelColumn::Index),
        };
        crate::data::LoadOptions {
            csv_label,
            csv_header: self.header,
            csv_delimiter: self.delimiter,
        }
    }

    /// Loads both splits (and checks them for NaN/Inf when asked), unnormalized.
    pub fn load(&self) -> Result<crate::data::prepare::Splits> {
        let splits = crate::data::prepare::load_splits(
            &self.source(),
            self.test_path.as_deref(),
            self.holdout,
            &self.load_options(),
        )?;
        splits.check_compatible()?;
        if self.check_finite {
            splits.train.check_finite()?;
            splits.test.check_finite()?;
        }
        Ok(splits)
    }
}

impl RunConfig {
    pub fn sequential(&self) -> Result<Sequential> {
        Ok(spec::parse(&self.arch, &self.sample_shape)?)
    }

    pub fn loss(&self) -> Loss {
        match self.loss {
            LossKind::Ce => CrossEntropyLoss::new()
                .label_smoothing(self.label_smoothing)
                .into(),
            LossKind::Bce => BCEWithLogitsLoss::new().pos_weight(self.pos_weight).into(),
        }
    }

    pub fn optimizer(&self) -> Optimizer {
        match self.optimizer {
            OptimizerKind::Sgd => Optimizer::Sgd(Sgd {
                lr: self.lr,
                momentum: self.momentum,
                weight_decay: self.weight_decay,
                ..Sgd::default()
            }),
            OptimizerKind::Adam => Optimizer::Adam(Adam {
                lr: self.lr,
                weight_decay: self.weight_decay,
                amsgrad: self.amsgrad,
                ..Adam::default()
            }),
            OptimizerKind::Adamw => Optimizer::Adam(Adam {
                lr: self.lr,
                weight_decay: self.weight_decay,
                decoupled_weight_decay: true,
                amsgrad: self.amsgrad,
                ..Adam::default()
            }),
        }
    }

    pub fn normalization(&self) -> Result<Option<Normalization>> {
        match &self.normalization {
            Some((mean, std)) => Ok(Some(Normalization::new(mean.clone(), std.clone())?)),
            None => Ok(None),
        }
    }

    /// Builds the model, with `state` or a fresh PyTorch-style initialization.
    pub fn build(&self, ctx: Arc<GpuContext>, state: Option<HostState>) -> Result<Model> {
        let config = ModelConfig {
            sample_shape: self.sample_shape.clone(),
            batch_size: self.batch_size,
            seed: self.seed,
        };
        let sequential = self.sequential()?;
        match state {
            Some(s) => Model::with_state(ctx, sequential, self.loss(), self.optimizer(), config, s),
            None => Model::new(ctx, sequential, self.loss(), self.optimizer(), config),
        }
    }
}

/// The model file of a checkpoint given as the file itself or its directory.
pub fn model_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join(MODEL_FILE)
    } else {
        path.to_path_buf()
    }
}

/// Reads a wgnn checkpoint's run description and state_dict.
pub fn load(path: &Path) -> Result<(RunConfig, StateDict)> {
    let file = model_file(path);
    let sd = StateDict::read(&file)?;
    let Some(json) = sd.metadata.get(RUN_KEY) else {
        return Err(CheckpointError::Format {
            path: file.display().to_string(),
            message: format!(
                "no {RUN_KEY:?} metadata: not a wgnn checkpoint (a plain state_dict loads with `wgnn train --init`)"
            ),
        }
        .into());
    };
    let run: RunConfig = serde_json::from_str(json).map_err(|e| CheckpointError::Format {
        path: file.display().to_string(),
        message: format!("bad {RUN_KEY:?} metadata: {e}"),
    })?;
    if !sd.checksummed {
        log::warn!(
            "{}: no checksums (written by an earlier wgnn?): its contents are not verified",
            file.display()
        );
    }
    Ok((run, sd))
}

/// A model ready for eval or predict from a checkpoint, with its normalization. A checkpoint
/// whose parameters or running statistics hold NaN or ±∞ is refused.
pub fn restore(ctx: Arc<GpuContext>, path: &Path) -> Result<(Model, RunConfig)> {
    let (run, sd) = load(path)?;
    sd.check_finite()?;
    let mut model = run.build(ctx, None)?;
    let base = model.state()?;
    let state = apply_state_dict(&sd, model.sequential(), model.graph(), &base)?;
    model.load_state(&state)?;
    Ok((model, run))
}

/// The totals words as a checkpoint within an epoch keeps them: hexadecimal bits,
/// comma-separated.
pub(crate) fn format_totals(totals: &RawTotals) -> String {
    let words: Vec<String> = totals
        .iter()
        .map(|v| format!("{:08x}", v.to_bits()))
        .collect();
    words.join(",")
}

/// The totals words as [`format_totals`] writes them.
pub(crate) fn parse_totals(text: &str) -> Option<RawTotals> {
    let mut totals = [0.0; TOTALS_LEN];
    let mut words = text.split(',');
    for slot in &mut totals {
        *slot = f32::from_bits(u32::from_str_radix(words.next()?, 16).ok()?);
    }
    words.next().is_none().then_some(totals)
}
