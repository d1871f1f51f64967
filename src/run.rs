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

/// The batch `eval` and `predict` take without `--batch-size`, when the device fits it.
pub const DEFAULT_EVAL_BATCH: usize = 256;

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

/// A fitted preprocessing other than per-channel: the option, its output shape and the
/// identity of its tensors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PreprocessRecord {
    /// The `--normalize` option, e.g. `pca-whiten:50`.
    pub option: String,
    /// The sample shape the model's first layer sees.
    pub output_shape: Vec<usize>,
    /// [`Transform::identity`] of the fitted tensors, which [`PREPROCESS_FILE`] must match
    /// when read back (absent from runs saved before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
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
        let csv_label = self
            .label_column
            .as_deref()
            .map_or(LabelColumn::Auto, LabelColumn::from_arg);
        crate::data::LoadOptions {
            csv_label,
            csv_header: self.header,
            csv_delimiter: self.delimiter,
        }
    }

    /// Loads both splits (and checks them for NaN/Inf when asked), unnormalized. Training
    /// needs labels: `--label-column none` is refused here.
    pub fn load(&self) -> Result<crate::data::prepare::Splits> {
        if self.load_options().csv_label == crate::data::LabelColumn::None {
            return Err(crate::data::DataError::CsvLabelColumn {
                path: self.path.clone().unwrap_or_default(),
                message: "--label-column none reads no labels, and training needs them \
                          (none is for `wgnn predict` on unlabelled samples)"
                    .into(),
            }
            .into());
        }
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
    /// [`PREPROCESS_FILE`] in `dir`, checked: values that would make the transform of an input
    /// non-finite are refused, and the file must be the one the run recorded.
    pub fn transform(&self, dir: &Path) -> Result<Option<Transform>> {
        let checkpoint = dir.join(MODEL_FILE);
        let bad = |message: String| CheckpointError::Format {
            path: checkpoint.display().to_string(),
            message,
        };
        match &self.normalization {
            Some(Preprocessing::Fitted(record)) => Ok(Some(read_transform(
                &dir.join(PREPROCESS_FILE),
                &checkpoint,
                record,
                self,
            )?)),
            Some(Preprocessing::PerChannel(mean, std)) => {
                // The statistics are per channel of the sample shape, checked before the
                // shape's size is allocated.
                self.check_shape("sample_shape", &self.sample_shape)
                    .map_err(bad)?;
                let channels = crate::data::normalize::channel_layout(&self.sample_shape)
                    .map_or(0, |(c, _)| c);
                if mean.len() != channels || std.len() != channels {
                    return Err(bad(format!(
                        "normalization: {} means and {} stds for {channels} channels of samples \
                         shaped {:?}",
                        mean.len(),
                        std.len(),
                        self.sample_shape
                    ))
                    .into());
                }
                let norm = Normalization::new(mean.clone(), std.clone())
                    .map_err(|e| bad(e.to_string()))?;
                let transform = Transform::per_channel(&norm, &self.sample_shape);
                transform
                    .validate()
                    .map_err(|e| bad(format!("normalization: {e}")))?;
                Ok(Some(transform))
            }
            None => Ok(None),
        }
    }

    /// Checks every size the run records, with overflow-safe arithmetic, against each other
    /// and the device's largest storage binding, before anything of those sizes is allocated:
    /// the sample shapes, the classes, the layers and a batch of `batch_size`. `file` is where
    /// the run was read from, which the error names.
    pub fn check_sizes(
        &self,
        file: &Path,
        max_binding_bytes: u64,
        batch_size: usize,
    ) -> Result<()> {
        let bad = |message: String| CheckpointError::Format {
            path: file.display().to_string(),
            message,
        };
        let layers = self.arch.split(',').count();
        if layers > spec::MAX_LAYERS {
            return Err(bad(format!(
                "arch: {layers} layers; a model has at most {}",
                spec::MAX_LAYERS
            ))
            .into());
        }
        let features = self
            .check_shape("sample_shape", &self.sample_shape)
            .map_err(bad)?;
        let inputs = self
            .check_shape("the preprocessing's output_shape", self.model_input_shape())
            .map_err(bad)?;
        if self.classes == 0 || u32::try_from(self.classes).is_err() {
            return Err(bad(format!(
                "classes: {} is not a class count (1 to {})",
                self.classes,
                u32::MAX
            ))
            .into());
        }
        if self.data_parallel.processes == 0 {
            return Err(bad("data_parallel: 0 processes".into()).into());
        }
        // One value of a batch's widest input, per sample, must fit a binding.
        let widest = features.max(inputs).max(self.classes) as u64;
        let bytes = (batch_size as u64).checked_mul(widest.saturating_mul(4));
        match bytes {
            Some(bytes) if batch_size >= 1 && bytes <= max_binding_bytes => Ok(()),
            _ => Err(bad(format!(
                "batch_size: {batch_size} samples of {widest} values need {} bytes, over the \
                 device's max_storage_buffer_binding_size of {max_binding_bytes} bytes; the \
                 largest batch that fits is {}",
                bytes.map_or_else(|| "more than 2^64".to_string(), |b| b.to_string()),
                max_binding_bytes / widest.saturating_mul(4)
            ))
            .into()),
        }
    }

    /// The values of one sample shaped `shape`: every dimension at least 1 and their product
    /// within the range of the device's 32-bit indices.
    fn check_shape(&self, what: &str, shape: &[usize]) -> std::result::Result<usize, String> {
        if shape.is_empty() || shape.contains(&0) {
            return Err(format!("{what} {shape:?} holds no values"));
        }
        match shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)) {
            Some(values) if values <= u32::MAX as usize => Ok(values),
            _ => Err(format!(
                "{what} {shape:?} has more values than a device can index (2^32)"
            )),
        }
    }

    /// The batch that evaluates this run on the device whose largest storage binding is
    /// `max_binding_bytes`: `requested`, else [`DEFAULT_EVAL_BATCH`] or the largest batch
    /// whose widest value fits the binding if that is smaller. A requested batch that does not
    /// fit is refused, naming the largest that does.
    pub fn eval_batch_size(
        &self,
        max_binding_bytes: u64,
        requested: Option<usize>,
    ) -> Result<usize> {
        let sequential = self.sequential()?;
        let widest = sequential
            .layers()
            .iter()
            .filter_map(|l| match l {
                crate::nn::Layer::Linear(l) => Some(l.out_features),
                _ => None,
            })
            .chain([
                self.sample_shape.iter().product::<usize>(),
                self.model_input_shape().iter().product::<usize>(),
            ])
            .max()
            .unwrap_or(1)
            .max(1) as u64;
        let per_sample = widest.saturating_mul(4);
        let largest = max_binding_bytes / per_sample;
        match requested {
            None => Ok(usize::try_from(largest)
                .unwrap_or(usize::MAX)
                .clamp(1, DEFAULT_EVAL_BATCH)),
            Some(0) => Err(crate::data::DataError::BatchSize { batch_size: 0 }.into()),
            Some(batch) if (batch as u64) <= largest => Ok(batch),
            Some(batch) => Err(crate::model::BatchError::TooLarge {
                batch_size: batch,
                what: format!("its widest value ({widest} per sample)"),
                bytes: (batch as u64).saturating_mul(per_sample),
                limit: max_binding_bytes,
                largest,
            }
            .into()),
        }
    }

    /// What a run records of a fitted transform: the per-channel statistics, or the option
    /// whose tensors go to [`PREPROCESS_FILE`] with their [`Transform::identity`]. Every writer
    /// of a checkpoint records its run through this, so that the file beside it can be tied to
    /// it when read back.
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
                identity: Some(t.identity()),
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

/// Reads [`PREPROCESS_FILE`] back into the transform `record` describes, checking it, and
/// that it is the transform the run in `checkpoint` recorded: its identity must match the
/// recorded one, and a run that recorded none (saved before it did) needs a file whose
/// checksums hold.
fn read_transform(
    path: &Path,
    checkpoint: &Path,
    record: &PreprocessRecord,
    run: &RunConfig,
) -> Result<Transform> {
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
    let found = transform.identity();
    match &record.identity {
        Some(recorded) if *recorded == found => {}
        Some(recorded) => {
            return Err(bad(format!(
                "its tensors are {found}, but {} records {recorded}: another run's \
                 preprocessing, or an edited one; put the file that run wrote beside it",
                checkpoint.display()
            ))
            .into());
        }
        None if !sd.checksummed => {
            return Err(bad(format!(
                "carries no checksums and {} records no identity for its preprocessing, so \
                 nothing ties this file to it (re-saved by another program?)",
                checkpoint.display()
            ))
            .into());
        }
        None => log::warn!(
            "{}: {} records no identity for its preprocessing (written by an earlier wgnn): \
             this file's checksums hold, but it cannot be tied to that run",
            path.display(),
            checkpoint.display()
        ),
    }
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

/// A model ready for eval or predict from a checkpoint, with its normalization, planned at
/// the default evaluation batch ([`restore_at`]).
pub fn restore(ctx: Arc<GpuContext>, path: &Path) -> Result<(Model, RunConfig)> {
    restore_at(ctx, path, None)
}

/// A model ready for eval or predict from a checkpoint, with its normalization, planned at
/// the evaluation's batch ([`RunConfig::eval_batch_size`] of `batch_size`), not the
/// training's: the run comes back with that batch size. Every size the checkpoint records is
/// checked before anything is built, and a checkpoint whose parameters or running statistics
/// hold NaN or ±∞ is refused.
pub fn restore_at(
    ctx: Arc<GpuContext>,
    path: &Path,
    batch_size: Option<usize>,
) -> Result<(Model, RunConfig)> {
    let (mut run, sd) = load(path)?;
    let limit = ctx.max_binding_bytes();
    run.check_sizes(&model_file(path), limit, 1)?;
    run.batch_size = run.eval_batch_size(limit, batch_size)?;
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
