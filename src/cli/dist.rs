//! The command line in a data-parallel job: joining it, checking that every process was
//! started alike and holds the same data, and handing rank 0's run to the others.

use serde::{Deserialize, Serialize};
use wgnn::data::{Dataset, Preprocess, Transform};
use wgnn::dist::{Comm, Communicator, DistError, Fingerprint, agree, broadcast_bytes};
use wgnn::run::{Position, RunConfig};

use super::error::{CliError, Result};

/// The job this process belongs to: MPI's when a launcher started it (built with the `mpi`
/// feature), else a process of its own.
pub fn init() -> std::result::Result<Comm, DistError> {
    let launched = wgnn::dist::launched_world();
    #[cfg(feature = "mpi")]
    if launched.is_some() {
        return Ok(std::sync::Arc::new(
            wgnn::dist::mpi::MpiCommunicator::init()?
        ));
    }
    match launched {
        Some((_, size)) if size > 1 => Err(DistError::NoMpi { size }),
        _ => Ok(wgnn::dist::single()),
    }
}

/// Every process must have been given the same arguments.
pub fn check_arguments(comm: &dyn Communicator) -> Result<()> {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let print = vec![("arguments".to_string(), arguments.join(" "))];
    Ok(agree(comm, &print).map_err(wgnn::Error::from)?)
}

/// Every process must read the same data: its size, shape and a checksum of its values.
pub fn check_data(comm: &dyn Communicator, train: &Dataset, test: &Dataset) -> Result<()> {
    let describe = |d: &Dataset| {
        let mut crc = crc32fast::Hasher::new();
        crc.update(bytemuck::cast_slice(&d.features));
        crc.update(bytemuck::cast_slice(&d.labels));
        format!(
            "{} samples of shape {:?}, checksum {:08x}",
            d.len(),
            d.sample_shape,
            crc.finalize()
        )
    };
    let print: Fingerprint = vec![
        ("training data".into(), describe(train)),
        ("test data".into(), describe(test)),
    ];
    Ok(agree(comm, &print).map_err(wgnn::Error::from)?)
}

/// What rank 0 decided about the run, for every other rank to build the same model.
#[derive(Serialize, Deserialize)]
struct Handed {
    run: RunConfig,
    epochs_done: usize,
    /// Batches done within the next epoch, and the totals' words as bits.
    within: Option<(usize, Vec<u32>)>,
    transform: Option<TransformWire>,
}

/// A fitted preprocessing, exactly (as f32 bits).
#[derive(Serialize, Deserialize)]
struct TransformWire {
    kind: String,
    input_shape: Vec<usize>,
    output_shape: Vec<usize>,
    shift: Vec<u32>,
    divisor: Option<Vec<u32>>,
    matrix: Option<Vec<u32>>,
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn floats(v: &[u32]) -> Vec<f32> {
    v.iter().map(|&b| f32::from_bits(b)).collect()
}

/// Rank 0's run, position and preprocessing on every rank, or `None` on every rank when rank
/// 0 found nothing to train (`mine` is rank 0's decision; other ranks' is ignored).
pub fn hand_run(
    comm: &dyn Communicator,
    mine: Option<(&RunConfig, Position, Option<&Transform>)>,
) -> Result<Option<(RunConfig, Position, Option<Transform>)>> {
    let encoded = match mine {
        None => {
            serde_json::to_vec(&Option::<Handed>::None).map_err(|e| DistError::Mpi(e.to_string()))
        }
        Some((run, position, transform)) => {
            let handed = Handed {
                run: run.clone(),
                epochs_done: position.epochs_done,
                within: position.within.map(|(b, t)| (b, bits(&t))),
                transform: transform.map(|t| TransformWire {
                    kind: t.kind.to_string(),
                    input_shape: t.input_shape.clone(),
                    output_shape: t.output_shape.clone(),
                    shift: bits(&t.shift),
                    divisor: t.divisor.as_deref().map(bits),
                    matrix: t.matrix.as_deref().map(bits),
                }),
            };
            serde_json::to_vec(&Some(handed)).map_err(|e| DistError::Garbled(e.to_string()))
        }
    }
    .map_err(wgnn::Error::from)?;
    let bytes = broadcast_bytes(comm, encoded, 0).map_err(wgnn::Error::from)?;
    let handed: Option<Handed> = serde_json::from_slice(&bytes)
        .map_err(|e| wgnn::Error::from(DistError::Garbled(format!("rank 0's run: {e}"))))?;
    let Some(handed) = handed else {
        return Ok(None);
    };
    let within = match handed.within {
        Some((batches, words)) => {
            let mut totals = [0f32; wgnn::ops::reduce::TOTALS_LEN];
            for (t, w) in totals.iter_mut().zip(floats(&words)) {
                *t = w;
            }
            Some((batches, totals))
        }
        None => None,
    };
    let transform = match handed.transform {
        Some(w) => {
            let kind: Preprocess = w.kind.parse().map_err(wgnn::data::DataError::from)?;
            Some(Transform {
                kind,
                input_shape: w.input_shape,
                output_shape: w.output_shape,
                shift: floats(&w.shift),
                divisor: w.divisor.as_deref().map(floats),
                matrix: w.matrix.as_deref().map(floats),
            })
        }
        None => None,
    };
    let position = Position {
        epochs_done: handed.epochs_done,
        within,
    };
    Ok(Some((handed.run, position, transform)))
}

impl CliError {
    /// Every rank of a job meets this error at the same point, so each can end in order; any
    /// other error on one rank aborts the job (the others wait in a collective).
    pub fn is_collective(&self) -> bool {
        match self {
            CliError::Wgnn(wgnn::Error::Dist(e)) => e.is_collective(),
            CliError::OnlyTrainRunsParallel { .. } | CliError::EnsembleUnderMpi { .. } => true,
            _ => false,
        }
    }
}
