//! `wgnn predict`.

use std::path::{Path, PathBuf};

use wgnn::checkpoint::{MODEL_FILE, StateDict, StateTensor, TensorData};
use wgnn::data::{Split, load_with, npy};
use wgnn::ensemble;
use wgnn::run::{self, RunConfig};
use wgnn::rundir::ensemble::{MEMBERS_DIR, read_manifest};
use wgnn::train::argmax;

use super::error::{CliError, Result};
use super::{PredictArgs, open_gpu};

pub fn run(args: PredictArgs) -> Result<()> {
    // Checked before anything is read or computed: a bad --output fails at once.
    check_output(&args)?;
    let checkpoint = match args.member {
        Some(k) => super::eval::member_checkpoint(&args.checkpoint, k)?,
        None if read_manifest(&args.checkpoint)?.is_some() => return run_ensemble(&args),
        None => args.checkpoint.clone(),
    };
    let ctx = open_gpu()?;
    // Planned at the prediction's batch, whatever the training's was.
    let (mut model, run) = run::restore_at(ctx, &checkpoint, args.batch_size)?;
    // Raw samples: the model applies the run's preprocessing itself.
    let (x, rows) = read_input(&args, &run)?;
    model.eval();
    let features: usize = run.sample_shape.iter().product();
    let mut logits = Vec::with_capacity(rows * model.graph().classes());
    for chunk in x.chunks(run.batch_size * features) {
        logits.extend(model.predict(chunk)?);
    }
    let classes = model.graph().classes();
    let binary = classes == 1;
    let predictions: Vec<i64> = logits
        .chunks(classes)
        .map(|row| {
            if binary {
                i64::from(row[0] > 0.0)
            } else {
                argmax(row) as i64
            }
        })
        .collect();
    let (name, values) = if args.probs {
        let probs = if binary {
            logits.iter().map(|&v| 1.0 / (1.0 + (-v).exp())).collect()
        } else {
            wgnn::ops::softmax_xent::reference_softmax(&logits, classes)
        };
        ("probs", probs)
    } else {
        ("logits", logits)
    };
    write_output(&args.output, name, rows, classes, values, predictions)?;
    println!(
        "wrote {name} of {rows} samples ({classes} per sample) to {}",
        args.output.display()
    );
    Ok(())
}

/// The input's samples and their count, its CSV read as the flags say or else as the run's
/// data was.
fn read_input(args: &PredictArgs, run: &RunConfig) -> Result<(Vec<f32>, usize)> {
    let csv = wgnn::data::LoadOptions {
        csv_header: args.csv.header().or(run.data.header),
        csv_delimiter: args.csv.delimiter.or(run.data.delimiter),
        ..wgnn::data::LoadOptions::default()
    };
    read_samples(
        &args.input,
        &run.sample_shape,
        args.label_column.clone(),
        &csv,
    )
}

/// An ensemble's prediction: the mean of its members' probabilities, or its logits (the
/// log of that mean; for BCE, its logit), and the class of that mean.
fn run_ensemble(args: &PredictArgs) -> Result<()> {
    let ctx = open_gpu()?;
    let mut restored = wgnn::rundir::ensemble::restore(ctx, &args.checkpoint, args.batch_size)?;
    let run = &restored.run;
    let (x, rows) = read_input(args, run)?;
    let model = &mut restored.model;
    let outputs = model.graph().classes();
    let slots: Vec<usize> = (0..restored.members.len()).collect();
    let log_probs = ensemble::predict(model, &slots, &x, run.batch_size)?;
    let predictions = ensemble::predictions(&log_probs, outputs)
        .into_iter()
        .map(|c| c as i64)
        .collect();
    let (name, values) = if args.probs {
        ("probs", ensemble::probabilities(&log_probs, outputs))
    } else {
        ("logits", ensemble::logits(&log_probs, outputs))
    };
    write_output(&args.output, name, rows, outputs, values, predictions)?;
    println!(
        "wrote {name} of {rows} samples ({outputs} per sample) to {}: the ensemble of {}, their probabilities averaged",
        args.output.display(),
        super::ensemble::count(slots.len())
    );
    Ok(())
}

/// `--output` before any work: a format wgnn writes, a directory to write it in, and none of
/// the files predict reads (the input, the checkpoint and what lies beside it).
fn check_output(args: &PredictArgs) -> Result<()> {
    let output = &args.output;
    if !matches!(
        output.extension().and_then(|e| e.to_str()),
        Some("npy" | "safetensors")
    ) {
        return Err(CliError::OutputFormat {
            path: output.clone(),
        });
    }
    let problem = |problem: &str| CliError::OutputPath {
        path: output.clone(),
        problem: problem.to_string(),
    };
    if output.is_dir() {
        return Err(problem("is a directory"));
    }
    let parent = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(problem(&format!(
            "{} is not a directory to write it in",
            parent.display()
        )));
    }
    let dir = run::checkpoint_dir(&args.checkpoint);
    let mut inputs: Vec<PathBuf> = vec![args.input.clone(), run::model_file(&args.checkpoint)];
    // The run beside the checkpoint: its preprocessing, training state and figures.
    inputs.extend(
        wgnn::rundir::RUN_FILES
            .iter()
            .filter(|f| **f != MODEL_FILE)
            .map(|f| dir.join(f)),
    );
    // An ensemble's members, each with its own.
    if let Ok(members) = std::fs::read_dir(dir.join(MEMBERS_DIR)) {
        for member in members.flatten() {
            inputs.extend([MODEL_FILE, run::PREPROCESS_FILE].map(|f| member.path().join(f)));
        }
    }
    match inputs.into_iter().find(|input| same_file(output, input)) {
        Some(input) => Err(CliError::OutputIsInput {
            output: output.clone(),
            input,
        }),
        None => Ok(()),
    }
}

/// Whether two paths name one existing file (through links, relative paths or hard links).
fn same_file(a: &Path, b: &Path) -> bool {
    let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::metadata(b)) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        ma.dev() == mb.dev() && ma.ino() == mb.ino()
    }
    #[cfg(not(unix))]
    {
        let _ = (ma, mb);
        matches!(
            (std::fs::canonicalize(a), std::fs::canonicalize(b)),
            (Ok(x), Ok(y)) if x == y
        )
    }
}

/// Samples from a file, flattened, checked against the model's sample shape.
fn read_samples(
    path: &Path,
    shape: &[usize],
    label_column: Option<String>,
    csv: &wgnn::data::LoadOptions,
) -> Result<(Vec<f32>, usize)> {
    let features: usize = shape.iter().product();
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let (data, dims) = match ext {
        "npy" => {
            let array = npy::load(path)?;
            (array.data, array.shape)
        }
        "safetensors" => wgnn::data::safetensors::load_samples(path)?,
        _ => {
            let options = wgnn::run::DataConfig {
                path: None,
                test_path: None,
                holdout: 0.2,
                label_column,
                header: csv.csv_header,
                delimiter: csv.csv_delimiter,
                normalize: false,
                check_finite: false,
            }
            .load_options();
            let d = load_with(path, Split::Test, &options)?;
            let mut dims = vec![d.len()];
            dims.extend(&d.sample_shape);
            (d.features, dims)
        }
    };
    let rows = dims.first().copied().unwrap_or(0);
    let sample: usize = dims.iter().skip(1).product();
    if rows == 0 && !dims.is_empty() {
        return Err(CliError::NoRows { path: path.into() });
    }
    if sample != features || data.len() != rows * features {
        return Err(CliError::SampleShape {
            path: path.into(),
            found: dims,
            expected: shape.to_vec(),
        });
    }
    Ok((data, rows))
}

fn write_output(
    path: &Path,
    name: &str,
    rows: usize,
    classes: usize,
    values: Vec<f32>,
    predictions: Vec<i64>,
) -> Result<()> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("npy") => {
            let bytes = npy::encode(&[rows, classes], &values, path)?;
            Ok(wgnn::checkpoint::write_atomic(path, &bytes)?)
        }
        Some("safetensors") => {
            let mut sd = StateDict {
                source: path.display().to_string(),
                ..StateDict::default()
            };
            sd.tensors
                .insert(name.into(), StateTensor::f32(vec![rows, classes], values));
            sd.tensors.insert(
                "predictions".into(),
                StateTensor {
                    shape: vec![rows],
                    data: TensorData::I64(predictions),
                    dtype: "I64".into(),
                },
            );
            Ok(sd.write(path)?)
        }
        _ => Err(CliError::OutputFormat { path: path.into() }),
    }
}
