//! `wgnn predict`.

use std::path::Path;

use wgnn::checkpoint::{StateDict, StateTensor, TensorData};
use wgnn::data::{Split, load_with, npy};
use wgnn::run;
use wgnn::train::argmax;

use super::error::{CliError, Result};
use super::{PredictArgs, open_gpu};

pub fn run(args: PredictArgs) -> Result<()> {
    let ctx = open_gpu()?;
    if args.batch_size == 0 {
        return Err(wgnn::data::DataError::BatchSize { batch_size: 0 }.into());
    }
    let (mut model, run) = run::restore(ctx, &args.checkpoint)?;
    let csv = wgnn::data::LoadOptions {
        csv_header: args.csv.header().or(run.data.header),
        csv_delimiter: args.csv.delimiter.or(run.data.delimiter),
        ..wgnn::data::LoadOptions::default()
    };
    // Raw samples: the model applies the run's preprocessing itself.
    let (x, rows) = read_samples(
        &args.input,
        &run.sample_shape,
        args.label_column.clone(),
        &csv,
    )?;
    model.eval();
    let features: usize = run.sample_shape.iter().product();
    let mut logits = Vec::with_capacity(rows * model.graph().classes());
    for chunk in x.chunks(args.batch_size * features) {
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

/// The tensor of a .safetensors input that holds the samples.
const SAMPLES: &str = "x";

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
        "safetensors" => {
            let sd = StateDict::read(path)?;
            let Some(x) = sd.tensors.get(SAMPLES) else {
                return Err(CliError::MissingTensor {
                    path: path.into(),
                    name: SAMPLES,
                });
            };
            let TensorData::F32(values) = &x.data else {
                return Err(CliError::NotFloat {
                    path: path.into(),
                    name: SAMPLES,
                    dtype: x.dtype.clone(),
                });
            };
            (values.clone(), x.shape.clone())
        }
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
    if rows == 0 || sample != features || data.len() != rows * features {
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
