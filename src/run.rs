//! A training run as the command line describes it: the model, loss, optimizer, data
//! preprocessing and loop settings, stored in the checkpoint so that eval, predict and resume
//! need nothing else.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::checkpoint::{
    self, CheckpointError, MODEL_FILE, StateDict, StateTensor, TensorData, apply_state_dict,
};
use crate::data::{Normalization, Preprocess, Transform};
use crate::error::{Error, Result};
use crate::exec::state::HostState;
use crate::gpu::GpuContext;
use crate::nn::{BCEWithLogitsLoss, CrossEntropyLoss, Loss, Sequential, spec};
use crate::ops::bce::BceConfig;
use crate::ops::reduce::{RawTotals, TOTALS_LEN};
use crate::ops::softmax_xent::{CrossEntropyConfig, Reduction};
use crate::optim::{Adam, LrSchedule, Optimizer, Sgd};
use crate::{MemberConfig, Model, ModelConfig};

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

/// Everything that defines a run, as a checkpoint records it (`wgnn.run`): what `wgnn train`'s
/// flags gave (each field names its flag and the flag's default), or what a model built in
/// Rust amounts to ([`crate::Model::save`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// Model spec string (`--arch`; default the lecture's MLP with as many outputs as the
    /// data has classes, one for BCE).
    pub arch: String,
    /// The shape of one raw sample, as the data gives it.
    pub sample_shape: Vec<usize>,
    /// Classes of the data (`--classes`; default the largest label plus one), 2 for BCE,
    /// whose model has one output.
    pub classes: usize,
    /// `--loss` (default cross-entropy).
    pub loss: LossKind,
    /// `--label-smoothing`, `CrossEntropyLoss(label_smoothing=…)` (default 0).
    pub label_smoothing: f32,
    /// `--pos-weight`, `BCEWithLogitsLoss(pos_weight=…)` (default 1).
    pub pos_weight: f32,
    /// `--optimizer` (default SGD).
    pub optimizer: OptimizerKind,
    /// `--lr` (default 0.02 for SGD, 0.001 for Adam and AdamW).
    pub lr: f32,
    /// `--momentum`, SGD's (default 0.9).
    pub momentum: f32,
    /// `--weight-decay` (default 0; 0.01 for AdamW).
    pub weight_decay: f32,
    /// `--amsgrad`: Adam's and AdamW's AMSGrad variant (default off; absent from runs saved
    /// before it existed).
    #[serde(default)]
    pub amsgrad: bool,
    /// `--lr-schedule`: the learning rate's schedule over epochs, from `lr` (default none:
    /// constant).
    #[serde(default)]
    pub lr_schedule: Option<LrSchedule>,
    /// `--batch-size` (default 32), per process in a data-parallel job.
    pub batch_size: usize,
    /// `--epochs` (default 12); 0 for a model saved by [`crate::Model::save`], which
    /// records no training loop.
    pub epochs: usize,
    /// `--seed` (default 0): initialization, dropout masks and shuffling.
    pub seed: u64,
    /// Shuffle each epoch (default on; `--no-shuffle`).
    pub shuffle: bool,
    /// `--drop-last` (default off).
    pub drop_last: bool,
    /// The preprocessing fitted on the training split (`--normalize`, default
    /// per-channel; absent: data used as is).
    pub normalization: Option<Preprocessing>,
    /// Where the data comes from.
    pub data: DataConfig,
    /// The data-parallel job that trains it (absent from single-process runs before it).
    #[serde(default)]
    pub data_parallel: DataParallel,
    /// The loss's and optimizer's options that `wgnn train` has no flag for, at PyTorch's
    /// defaults unless a model built in Rust set them (and then only written).
    #[serde(default, skip_serializing_if = "ExtraOptions::is_default")]
    pub extra: ExtraOptions,
}

/// The options of a model's loss and optimizer beyond `wgnn train`'s flags, so that a model
/// built in Rust is saved exactly ([`crate::Model::save`]); each defaults to PyTorch's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExtraOptions {
    /// `CrossEntropyLoss(weight=…)`, one per class; default none (every class weighs 1).
    pub class_weights: Option<Vec<f32>>,
    /// `CrossEntropyLoss(ignore_index=…)`; default −100.
    pub ignore_index: i64,
    /// The loss's `reduction`: `"mean"` (the default), `"sum"` or `"none"`.
    #[serde(with = "reduction_name")]
    pub reduction: Reduction,
    /// `SGD(dampening=…)`; default 0.
    pub dampening: f32,
    /// `SGD(nesterov=…)`; default false.
    pub nesterov: bool,
    /// `maximize` of SGD, Adam and AdamW; default false.
    pub maximize: bool,
    /// Adam's and AdamW's `betas`; default (0.9, 0.999).
    pub betas: (f32, f32),
    /// Adam's and AdamW's `eps`; default 1e-8.
    pub eps: f32,
}

impl Default for ExtraOptions {
    fn default() -> Self {
        let (ce, sgd, adam) = (
            CrossEntropyConfig::default(),
            Sgd::default(),
            Adam::default(),
        );
        Self {
            class_weights: ce.weight,
            ignore_index: ce.ignore_index,
            reduction: ce.reduction,
            dampening: sgd.dampening,
            nesterov: sgd.nesterov,
            maximize: sgd.maximize,
            betas: adam.betas,
            eps: adam.eps,
        }
    }
}

impl ExtraOptions {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// [`Reduction`] as PyTorch spells it.
mod reduction_name {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    use crate::ops::softmax_xent::Reduction;

    pub fn serialize<S: Serializer>(reduction: &Reduction, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match reduction {
            Reduction::Mean => "mean",
            Reduction::Sum => "sum",
            Reduction::None => "none",
        })
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Reduction, D::Error> {
        match String::deserialize(d)?.as_str() {
            "mean" => Ok(Reduction::Mean),
            "sum" => Ok(Reduction::Sum),
            "none" => Ok(Reduction::None),
            other => Err(D::Error::custom(format!(
                "reduction {other:?}: expected mean, sum or none"
            ))),
        }
    }
}

/// How many processes train a run, and how their batch norms meet: a run resumes only under
/// the same number, since every rank's share of an epoch depends on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataParallel {
    /// Processes of the job (`mpirun -np N`; default 1).
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

/// Where a run's data comes from, so `--resume` can load it again. A model saved by
/// [`crate::Model::save`] records none: every field at its default, as `wgnn train`
/// without flags would read the embedded digits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataConfig {
    /// `--data` (default none: the embedded MNIST digits).
    pub path: Option<PathBuf>,
    /// `--test-data` (default none: the data's own test split, else a holdout).
    pub test_path: Option<PathBuf>,
    /// `--holdout`: fraction of a single file's rows held back for testing (default 0.2).
    pub holdout: f64,
    /// `--label-column`: CSV label column (name or 0-based index); default none: automatic.
    pub label_column: Option<String>,
    /// `--header`/`--no-header`: whether a CSV file's first row is a header; default none:
    /// guessed.
    #[serde(default)]
    pub header: Option<bool>,
    /// `--delimiter`: a CSV file's delimiter; default none: `,` (a tab for `.tsv`).
    #[serde(default)]
    pub delimiter: Option<u8>,
    /// A preprocessing is fitted (`--normalize` other than `none`; default yes).
    pub normalize: bool,
    /// `--check-finite`: refuse data holding NaN or ±∞ (default off).
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
        let extra = &self.extra;
        match self.loss {
            LossKind::Ce => CrossEntropyLoss {
                config: CrossEntropyConfig {
                    weight: extra.class_weights.clone(),
                    ignore_index: extra.ignore_index,
                    label_smoothing: self.label_smoothing,
                    reduction: extra.reduction,
                },
            }
            .into(),
            LossKind::Bce => BCEWithLogitsLoss {
                config: BceConfig {
                    pos_weight: self.pos_weight,
                    reduction: extra.reduction,
                },
            }
            .into(),
        }
    }

    pub fn optimizer(&self) -> Optimizer {
        let extra = &self.extra;
        let adam = Adam {
            lr: self.lr,
            betas: extra.betas,
            eps: extra.eps,
            weight_decay: self.weight_decay,
            decoupled_weight_decay: self.optimizer == OptimizerKind::Adamw,
            amsgrad: self.amsgrad,
            maximize: extra.maximize,
        };
        match self.optimizer {
            OptimizerKind::Sgd => Optimizer::Sgd(Sgd {
                lr: self.lr,
                momentum: self.momentum,
                dampening: extra.dampening,
                weight_decay: self.weight_decay,
                nesterov: extra.nesterov,
                maximize: extra.maximize,
            }),
            OptimizerKind::Adam | OptimizerKind::Adamw => Optimizer::Adam(adam),
        }
    }

    /// The run a model built in Rust amounts to, for [`crate::Model::save`]: its layers as a
    /// spec, its sample shape, loss, optimizer, batch size, seed and preprocessing. It has
    /// no loop and no data: `epochs` is 0 and `data` names none. Fails, saying what, when the
    /// record would not rebuild the same model.
    pub(crate) fn of_model(model: &Model) -> std::result::Result<RunConfig, String> {
        let mut extra = ExtraOptions::default();
        let (loss, label_smoothing, pos_weight) = match model.loss() {
            Loss::CrossEntropy(ce) => {
                extra.class_weights = ce.config.weight.clone();
                extra.ignore_index = ce.config.ignore_index;
                extra.reduction = ce.config.reduction;
                (LossKind::Ce, ce.config.label_smoothing, 1.0)
            }
            Loss::BceWithLogits(bce) => {
                extra.reduction = bce.config.reduction;
                (LossKind::Bce, 0.0, bce.config.pos_weight)
            }
        };
        let (optimizer, lr, momentum, weight_decay, amsgrad) = match *model.optimizer() {
            Optimizer::Sgd(s) => {
                extra.dampening = s.dampening;
                extra.nesterov = s.nesterov;
                extra.maximize = s.maximize;
                let kind = OptimizerKind::Sgd;
                (kind, s.lr, s.momentum, s.weight_decay, false)
            }
            Optimizer::Adam(a) => {
                extra.betas = a.betas;
                extra.eps = a.eps;
                extra.maximize = a.maximize;
                let kind = match a.decoupled_weight_decay {
                    true => OptimizerKind::Adamw,
                    false => OptimizerKind::Adam,
                };
                (kind, a.lr, 0.0, a.weight_decay, a.amsgrad)
            }
        };
        let config = model.config();
        let run = RunConfig {
            arch: spec::to_spec(model.sequential()),
            sample_shape: config.sample_shape.clone(),
            classes: model.loss().label_count(model.graph().classes()),
            loss,
            label_smoothing,
            pos_weight,
            optimizer,
            lr,
            momentum,
            weight_decay,
            amsgrad,
            lr_schedule: None,
            batch_size: config.batch_size,
            epochs: 0,
            seed: config.seed,
            shuffle: false,
            drop_last: false,
            normalization: Self::record(model.preprocess()),
            data: DataConfig {
                path: None,
                test_path: None,
                holdout: 0.0,
                label_column: None,
                header: None,
                delimiter: None,
                normalize: model.preprocess().is_some(),
                check_finite: false,
            },
            data_parallel: DataParallel {
                processes: model.communicator().size(),
                sync_bn: model.sync_bn(),
            },
            extra,
        };
        run.check_rebuilds(model)?;
        Ok(run)
    }

    /// Whether this record, written as JSON and read back, rebuilds `model`'s layers, loss,
    /// optimizer and per-channel statistics exactly.
    fn check_rebuilds(&self, model: &Model) -> std::result::Result<(), String> {
        let json = serde_json::to_string(self).map_err(|e| e.to_string())?;
        let read: RunConfig = serde_json::from_str(&json)
            .map_err(|e| format!("its settings do not survive JSON ({e}): a NaN or ∞ in one?"))?;
        let (layers, back) = (model.sequential().layers(), read.sequential());
        let back = back.map_err(|e| e.to_string())?;
        if back.layers() != layers {
            let differs = layers.iter().zip(back.layers()).position(|(a, b)| a != b);
            return Err(match differs {
                Some(i) => format!(
                    "layer {i} ({:?}) is written {:?}, which builds {:?}",
                    layers[i],
                    layers[i].spec(),
                    back.layers()[i]
                ),
                None => format!("its {} layers are written {:?}", layers.len(), read.arch),
            });
        }
        if read.loss() != *model.loss() {
            return Err(format!(
                "the loss {:?} is not recorded exactly",
                model.loss()
            ));
        }
        if read.optimizer() != *model.optimizer() {
            let optimizer = model.optimizer();
            return Err(format!(
                "the optimizer {optimizer:?} is not recorded exactly"
            ));
        }
        if let (Some(Preprocessing::PerChannel(..)), Some(t)) =
            (&read.normalization, model.preprocess())
            && read.transform(Path::new(".")).ok().flatten().as_ref() != Some(t)
        {
            return Err(
                "its per-channel preprocessing differs within a channel, which the record's \
                 one mean and std per channel cannot hold"
                    .into(),
            );
        }
        Ok(())
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
        let sequential = self.sequential()?;
        let transform = transform.map(Arc::new);
        Model::build(
            ctx,
            transform,
            sequential,
            self.loss(),
            self.optimizer(),
            self.model_config(),
            state,
        )
    }

    /// Builds this run's architecture, loss and batch as a stack of `members` (each with its
    /// own seed and settings), `transform` its plans' first stage, every member freshly
    /// initialized.
    pub fn build_stack(
        &self,
        ctx: Arc<GpuContext>,
        transform: Option<Arc<Transform>>,
        members: Vec<MemberConfig>,
    ) -> Result<Model> {
        Model::stack(
            ctx,
            transform,
            self.sequential()?,
            self.loss(),
            self.model_config(),
            members,
            None,
        )
    }

    /// The model's sample shape, batch and seed.
    fn model_config(&self) -> ModelConfig {
        ModelConfig {
            sample_shape: self.sample_shape.clone(),
            batch_size: self.batch_size,
            seed: self.seed,
        }
    }
}

/// The checkpoint of a model: its state_dict under PyTorch's names, with the run that
/// rebuilds it ([`RUN_KEY`]) and the step in the metadata. The one writer of a checkpoint's
/// metadata: `wgnn train`'s saves ([`crate::rundir`]) stamp it with their run and save, and
/// [`Model::save`] writes it as it is.
pub fn checkpoint_dict(model: &Model, state: &HostState, run: &RunConfig) -> StateDict {
    let mut sd = checkpoint::model_state_dict(model.graph(), state, "");
    // RunConfig holds strings and numbers only: it always serializes.
    let json = serde_json::to_string(run).unwrap_or_default();
    sd.metadata.insert(RUN_KEY.into(), json);
    sd.metadata.insert("step".into(), state.step.to_string());
    sd
}

/// Writes a fitted preprocessing's tensors ([`PREPROCESS_FILE`]) atomically.
pub fn write_transform(path: &Path, t: &Transform) -> Result<()> {
    transform_dict(t).write(path)?;
    Ok(())
}

/// A fitted preprocessing's tensors as [`PREPROCESS_FILE`] holds them.
pub(crate) fn transform_dict(t: &Transform) -> StateDict {
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
    sd
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
                "no {RUN_KEY:?} metadata: not a wgnn checkpoint (a plain state_dict loads into a model with `Model::load_state_dict`, or `wgnn train --init`)"
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
    restore_with(ctx, path, Some(batch_size))
}

/// A model from a checkpoint, as [`restore_at`], planned at the batch it was trained at (the
/// model [`Model::save`] saved, whole).
pub fn restore_trained(ctx: Arc<GpuContext>, path: &Path) -> Result<(Model, RunConfig)> {
    restore_with(ctx, path, None)
}

/// [`restore_at`] with `eval_batch` (the evaluation's choice), or at the training batch when
/// `None`.
fn restore_with(
    ctx: Arc<GpuContext>,
    path: &Path,
    eval_batch: Option<Option<usize>>,
) -> Result<(Model, RunConfig)> {
    let (mut run, sd) = load(path)?;
    let limit = ctx.max_binding_bytes();
    // Planned at its training batch, the checkpoint's batch size is checked too.
    let planned = if eval_batch.is_some() {
        1
    } else {
        run.batch_size
    };
    run.check_sizes(&model_file(path), limit, planned)?;
    if let Some(batch_size) = eval_batch {
        run.batch_size = run.eval_batch_size(limit, batch_size)?;
    }
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
