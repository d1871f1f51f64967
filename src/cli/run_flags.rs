//! The run `wgnn train`'s flags describe, shared by a lone run, an ensemble
//! (`--ensemble`) and `wgnn compare`'s variants: its data, its settings with their defaults,
//! its preprocessing fitted on the training split, and where a new run goes without --out.

use wgnn::data::prepare::Splits;
use wgnn::data::{Dataset, FitLimits, Preprocess, Transform};
use wgnn::nn::{Layer, Sequential, spec};
use wgnn::optim::LrSchedule;
use wgnn::run::{DataConfig, LossKind, OptimizerKind, RunConfig};

use super::TrainArgs;
use super::error::{CliError, Result};

/// Epochs of a new run unless --epochs says otherwise.
pub(super) const DEFAULT_EPOCHS: usize = 12;
/// Dropout of the default architecture, the lecture's MLP.
const LECTURE_DROPOUT: f32 = 0.2;
/// Where new runs go without --out: a numbered directory each.
pub(super) const RUNS: &str = "runs";

/// The run the flags describe, its data (loaded once, to learn its shape and classes, and
/// raw: the model preprocesses), and its preprocessing fitted on the training split, its
/// size checked against `limits` (the machine's memory, the device's binding) first.
pub(super) fn new_run_with(
    args: &TrainArgs,
    limits: &FitLimits,
) -> Result<(RunConfig, Option<Transform>, Splits)> {
    let data = data_config(args)?;
    let splits = data.load()?;
    let (run, transform) = run_on(args, data, &splits, limits)?;
    Ok((run, transform, splits))
}

/// Where the flags' data comes from and how it is read.
pub(super) fn data_config(args: &TrainArgs) -> Result<DataConfig> {
    let normalize: Preprocess = args
        .normalize
        .parse()
        .map_err(wgnn::data::DataError::from)?;
    Ok(DataConfig {
        path: args.data.clone(),
        test_path: args.test_data.clone(),
        holdout: args.holdout,
        label_column: args.label_column.clone(),
        header: args.csv.header(),
        delimiter: args.csv.delimiter,
        normalize: normalize != Preprocess::None,
        check_finite: args.check_finite,
    })
}

/// The run the flags describe on `splits` (loaded from `data`), with its preprocessing
/// fitted on the training split (its size checked against `limits` first).
pub(super) fn run_on(
    args: &TrainArgs,
    data: DataConfig,
    splits: &Splits,
    limits: &FitLimits,
) -> Result<(RunConfig, Option<Transform>)> {
    let normalize: Preprocess = args
        .normalize
        .parse()
        .map_err(wgnn::data::DataError::from)?;
    let classes = match args.classes {
        Some(classes) => {
            splits.train.check_labels(classes)?;
            splits.test.check_labels(classes)?;
            classes
        }
        None => Dataset::infer_classes(&[&splits.train, &splits.test])?,
    };
    let loss: LossKind = args.loss.into();
    let outputs = match loss {
        LossKind::Ce => classes,
        LossKind::Bce => {
            if classes > 2 {
                return Err(CliError::BinaryLossClasses { classes });
            }
            1
        }
    };
    let sample_shape = splits.train.sample_shape.clone();
    let transform = Transform::fit_within(normalize, &splits.train, limits)?;
    // What the first layer sees: the preprocessing's output (K features for pca:K).
    let model_shape = transform
        .as_ref()
        .map_or(&sample_shape, |t| &t.output_shape)
        .clone();
    let (arch, sequential) = match &args.arch {
        Some(arch) => (arch.clone(), spec::parse(arch, &model_shape)?),
        None => {
            let features = model_shape.iter().product();
            let sequential = Sequential::lecture_mlp(features, outputs, LECTURE_DROPOUT);
            (spec::to_spec(&sequential), sequential)
        }
    };
    check_outputs(&sequential, outputs, loss, &arch)?;
    let normalization = RunConfig::record(transform.as_ref());
    let optimizer: OptimizerKind = args.optimizer.into();
    let lr = args.lr.unwrap_or(match optimizer {
        OptimizerKind::Sgd => 0.02,
        OptimizerKind::Adam | OptimizerKind::Adamw => 1e-3,
    });
    let weight_decay = args.weight_decay.unwrap_or(match optimizer {
        OptimizerKind::Adamw => 1e-2,
        _ => 0.0,
    });
    let lr_schedule = args
        .lr_schedule
        .as_deref()
        .map(LrSchedule::parse)
        .transpose()?;
    if args.amsgrad && optimizer == OptimizerKind::Sgd {
        return Err(CliError::AmsgradWithSgd);
    }
    let run = RunConfig {
        arch,
        sample_shape,
        classes,
        loss,
        label_smoothing: args.label_smoothing,
        pos_weight: args.pos_weight,
        optimizer,
        lr,
        momentum: args.momentum,
        weight_decay,
        amsgrad: args.amsgrad,
        lr_schedule,
        batch_size: args.batch_size,
        epochs: args.epochs.unwrap_or(DEFAULT_EPOCHS),
        seed: args.seed,
        shuffle: !args.no_shuffle,
        drop_last: args.drop_last,
        normalization,
        data,
        data_parallel: wgnn::run::DataParallel {
            processes: 1,
            sync_bn: args.sync_bn,
        },
        extra: wgnn::run::ExtraOptions::default(),
    };
    Ok((run, transform))
}

/// The model's last Linear must give one logit per class (one for BCE).
fn check_outputs(model: &Sequential, outputs: usize, loss: LossKind, arch: &str) -> Result<()> {
    let last = model.layers().iter().rev().find_map(|l| match l {
        Layer::Linear(l) => Some(l.out_features),
        _ => None,
    });
    match last {
        Some(n) if n == outputs || (loss == LossKind::Ce && n > outputs) => Ok(()),
        Some(found) => Err(CliError::ArchOutputs {
            arch: arch.into(),
            found,
            needed: outputs,
            loss,
        }),
        None => Err(CliError::ArchWithoutLogits { arch: arch.into() }),
    }
}
