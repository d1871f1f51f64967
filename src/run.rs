//! A training run as the command line describes it: the model, loss, optimizer, data
//! preprocessing and loop settings, stored in the checkpoint so that eval, predict and resume
//! need nothing else.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::checkpoint::{
    CheckpointError, MODEL_FILE, StateDict, StateTensor, TensorData, apply_state_dict,
};
use crate::data::{Normalization, Preprocess, Transform};
use crate::error::{Error, Result};
use crate::exec::state::HostState;
use crate::gpu::GpuContext;
use crate::nn::{BCEWithLogitsLoss, CrossEntropyLoss, Loss, Sequential, spec};
use crate::ops::reduce::{RawTotals, TOTALS_LEN};
use crate::optim::{Adam, LrSchedule, Optimizer, Sgd};
use crate::{Model, ModelConfig};

/// The fitted preprocessing's tensors, beside the checkpoint: `shift` \[D\], `divisor` \[D\]
/// (when it has one) and `matrix` \[K, D\] (when it has one), in f32; y = matrix·((x −
/// shift) / divisor) per flattened sample.
pub const PREPROCESS_FILE: &str = "preprocess.safetensors";

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
    /// The preprocessing fitted on the training split (absent: data used as is).
    pub normalization: Option<Preprocessing>,
    pub data: DataConfig,
    /// The data-parallel job that trains it (absent from single-process runs before it).
    #[serde(default)]
    pub data_parallel: DataParallel,
}

/// How many processes train a run, and how their batch norms meet: a run resumes only under
/// the same number, since every rank's share of an epoch depends on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataParallel {
    pub processes: usize,
    /// `--sync-bn`: batch statistics over the global batch (`torch.nn.SyncBatchNorm`).
    pub sync_bn: bool,
}

impl Default for DataParallel {
    fn default() -> Self {
        Self {
            processes: 1,
            sync_bn: false,
        }
    }
}

/// A run's fitted preprocessing as its checkpoint records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Preprocessing {
    /// `--normalize per-channel` (the default): the training split's per-channel mean and
    /// population std, written `[mean, std]` as every run before the other options was.
    PerChannel(Vec<f32>, Vec<f32>),
    /// Any other option: what it is, with its tensors in [`PREPROCESS_FILE`] beside the
    /// checkpoint (a D × D matrix has no place in JSON metadata).
    Fitted(PreprocessRecord),
}

/// A fitted preprocessing other than per-channel: the option and its output shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PreprocessRecord {
    /// The `--normalize` option, e.g. `pca-whiten:50`.
    pub option: String,
    /// The sample shape the model's first layer sees.
    pub output_shape: Vec<usize>,
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
    /// The sample shape the model's first layer sees: the preprocessing's output, else the
    /// data's own.
    pub fn model_input_shape(&self) -> &[usize] {
        match &self.normalization {
            Some(Preprocessing::Fitted(record)) => &record.output_shape,
            _ => &self.sample_shape,
        }
    }

    pub fn sequential(&self) -> Result<Sequential> {
        Ok(spec::parse(&self.arch, self.model_input_shape())?)
    }

    /// The run's fitted preprocessing, from the per-channel statistics it records or from
    /// [`PREPROCESS_FILE`] in `dir`.
    pub fn transform(&self, dir: &Path) -> Result<Option<Transform>> {
        match &self.normalization {
            Some(Preprocessing::Fitted(record)) => Ok(Some(read_transform(
                &dir.join(PREPROCESS_FILE),
                record,
                self,
            )?)),
            Some(Preprocessing::PerChannel(mean, std)) => {
                let norm = Normalization::new(mean.clone(), std.clone())?;
                Ok(Some(Transform::per_channel(&norm, &self.sample_shape)))
            }
            None => Ok(None),
        }
    }

    /// What a run records of a fitted transform (the per-channel statistics, or the option
    /// whose tensors go to [`PREPROCESS_FILE`]).
    pub fn record(transform: Option<&Transform>) -> Option<Preprocessing> {
        let t = transform?;
        Some(match t.kind {
            Preprocess::PerChannel => {
                let (channels, _) = crate::data::normalize::channel_layout(&t.input_shape)
                    .unwrap_or((t.input_features(), 1));
                let per = t.input_features() / channels.max(1);
                let pick = |v: &[f32]| v.iter().step_by(per.max(1)).copied().collect();
                let divisor = t.divisor.as_deref().unwrap_or(&[]);
                Preprocessing::PerChannel(pick(&t.shift), pick(divisor))
            }
            _ => Preprocessing::Fitted(PreprocessRecord {
                option: t.kind.to_string(),
                output_shape: t.output_shape.clone(),
            }),
        })
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

    /// Builds the model, with `state` or a fresh PyTorch-style initialization, and the
    /// run's per-channel normalization (if it has one) as its plans' first stage. A run with
    /// another preprocessing keeps its tensors beside its checkpoint: build it with
    /// [`RunConfig::build_with`] and [`RunConfig::transform`], as [`restore`] does.
    pub fn build(&self, ctx: Arc<GpuContext>, state: Option<HostState>) -> Result<Model> {
        if let Some(Preprocessing::Fitted(record)) = &self.normalization {
            return Err(Error::PreprocessNotLoaded {
                option: record.option.clone(),
            });
        }
        let transform = self.transform(Path::new("."))?;
        self.build_with(ctx, state, transform)
    }

    /// Builds the model with `transform` (the run's fitted preprocessing) as its plans'
    /// first stage: raw samples go in.
    pub fn build_with(
        &self,
        ctx: Arc<GpuContext>,
        state: Option<HostState>,
        transform: Option<Transform>,
    ) -> Result<Model> {
        let config = ModelConfig {
            sample_shape: self.sample_shape.clone(),
            batch_size: self.batch_size,
            seed: self.seed,
        };
        let sequential = self.sequential()?;
        let transform = transform.map(Arc::new);
        Model::build(
            ctx,
            transform,
            sequential,
            self.loss(),
            self.optimizer(),
            config,
            state,
        )
    }
}

/// Writes a fitted preprocessing's tensors ([`PREPROCESS_FILE`]) atomically.
pub fn write_transform(path: &Path, t: &Transform) -> Result<()> {
    let mut sd = StateDict::default();
    let d = t.input_features();
    sd.tensors
        .insert("shift".into(), StateTensor::f32(vec![d], t.shift.clone()));
    if let Some(div) = &t.divisor {
        sd.tensors
            .insert("divisor".into(), StateTensor::f32(vec![d], div.clone()));
    }
    if let Some(a) = &t.matrix {
        let k = t.output_features();
        sd.tensors
            .insert("matrix".into(), StateTensor::f32(vec![k, d], a.clone()));
    }
    sd.metadata.insert("option".into(), t.kind.to_string());
    sd.write(path)?;
    Ok(())
}

/// Reads [`PREPROCESS_FILE`] back into the transform `record` describes, checking it.
fn read_transform(path: &Path, record: &PreprocessRecord, run: &RunConfig) -> Result<Transform> {
    let sd = StateDict::read(path)?;
    let bad = |message: String| CheckpointError::Format {
        path: path.display().to_string(),
        message,
    };
    let kind: Preprocess = record
        .option
        .parse()
        .map_err(|e: crate::data::PreprocessError| bad(e.to_string()))?;
    if sd.metadata.get("option") != Some(&record.option) {
        return Err(bad(format!(
            "holds {:?}, but the checkpoint's run was preprocessed with {}",
            sd.metadata
                .get("option")
                .map_or("no option", String::as_str),
            record.option
        ))
        .into());
    }
    let floats = |key: &str| -> Result<Option<Vec<f32>>> {
        match sd.tensors.get(key).map(|t| &t.data) {
            None => Ok(None),
            Some(TensorData::F32(v)) => Ok(Some(v.clone())),
            Some(_) => Err(bad(format!("tensor {key:?} is not F32")).into()),
        }
    };
    let transform = Transform {
        kind,
        input_shape: run.sample_shape.clone(),
        output_shape: record.output_shape.clone(),
        shift: floats("shift")?.ok_or_else(|| bad("no \"shift\" tensor".into()))?,
        divisor: floats("divisor")?,
        matrix: floats("matrix")?,
    };
    transform.validate().map_err(|e| bad(e.to_string()))?;
    Ok(transform)
}

/// The model file of a checkpoint given as the file itself or its directory.
pub fn model_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join(MODEL_FILE)
    } else {
        path.to_path_buf()
    }
}

/// The directory of a checkpoint given as the file itself or its directory.
pub fn checkpoint_dir(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.to_path_buf()
    } else {
        path.parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
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
    let transform = run.transform(&checkpoint_dir(path))?;
    let mut model = run.build_with(ctx, None, transform)?;
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
