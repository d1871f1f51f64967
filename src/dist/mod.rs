//! Data-parallel training across processes, with `torch.nn.parallel.DistributedDataParallel`'s
//! semantics: every rank holds the whole model, trains on its share of each batch, and the
//! ranks average their gradients with one all-reduce per step before the same optimizer step.
//!
//! The ranks talk only through a [`Communicator`]: [`SingleProcess`] (one rank, every
//! collective the identity) or, with the `mpi` feature, `mpi::MpiCommunicator` over the MPI
//! implementation `mpirun` started the job with.
//!
//! | file | what it holds |
//! |---|---|
//! | `mod.rs` | the [`Communicator`] trait, [`SingleProcess`], [`DistError`], typed collectives |
//! | `agree.rs` | the start-up check that every rank runs the same configuration and data |
//! | `moments.rs` | SyncBatchNorm's combination of every rank's batch mean and variance |
//! | `totals.rs` | loss and accuracy totals reduced over ranks |
//! | `mpi.rs` | the MPI communicator (feature `mpi`) |

mod agree;
mod moments;
#[cfg(feature = "mpi")]
pub mod mpi;
mod totals;

use std::sync::Arc;

pub use agree::{Fingerprint, agree};
pub use moments::{RankMoments, combine_moments};
pub use totals::reduce_totals;

/// What goes wrong between ranks.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DistError {
    /// The ranks were started with different configurations or data.
    #[error("rank {rank} differs from rank 0 in its {what}: {detail}")]
    Mismatch {
        rank: usize,
        what: String,
        detail: String,
    },
    /// A collective step needs every rank at the same batch size.
    #[error(
        "ranks disagree on the batch size of a step (rows per rank: {rows:?}): every rank must take equal batches"
    )]
    UnequalBatches { rows: Vec<u64> },
    /// A resumed run trained by a different number of processes.
    #[error(
        "{dir} was trained by {trained} process(es); resume it with {trained} (this job has {now}): the sample order depends on it"
    )]
    WorldSize {
        dir: String,
        trained: usize,
        now: usize,
    },
    /// This build cannot join the job it was started in.
    #[error(
        "started as one of {size} processes, but this wgnn was built without MPI: build it with `cargo build --release --features mpi`"
    )]
    NoMpi { size: usize },
    /// The MPI library failed.
    #[error("MPI: {0}")]
    Mpi(String),
    /// What a job of several processes cannot do.
    #[error("{0}")]
    Unsupported(String),
    /// What a rank received cannot be read (ranks of different wgnn builds, say).
    #[error("ranks exchanged unreadable data: {0}")]
    Garbled(String),
}

impl DistError {
    /// Every rank finds this error at the same point (a mismatch, say), so the job can end
    /// in order; any other error on one rank has to abort the others, which wait in a
    /// collective.
    pub fn is_collective(&self) -> bool {
        matches!(self, Self::Mismatch { .. } | Self::UnequalBatches { .. })
    }
}

/// The collectives data-parallel training needs, over the ranks of one job. Every rank calls
/// the same collectives in the same order with buffers of the same length.
pub trait Communicator: Send + Sync {
    /// This process's rank, `0..size()`.
    fn rank(&self) -> usize;
    /// Processes in the job.
    fn size(&self) -> usize;
    /// `values` ← the element-wise sum of every rank's `values`.
    fn all_reduce_sum(&self, values: &mut [f32]) -> Result<(), DistError>;
    /// `recv` ← every rank's `send` in rank order (`recv.len() == size() * send.len()`).
    fn all_gather(&self, send: &[u8], recv: &mut [u8]) -> Result<(), DistError>;
    /// `buffer` ← root's `buffer` on every rank.
    fn broadcast(&self, buffer: &mut [u8], root: usize) -> Result<(), DistError>;
    /// Ends every process of the job with `code` (MPI_Abort), after this rank's message.
    fn abort(&self, code: i32) -> !;
    /// Where this rank runs, for messages ("rank 1 of 2").
    fn describe(&self) -> String {
        format!("rank {} of {}", self.rank(), self.size())
    }
}

/// One process: every collective is the identity.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleProcess;

impl Communicator for SingleProcess {
    fn rank(&self) -> usize {
        0
    }

    fn size(&self) -> usize {
        1
    }

    fn all_reduce_sum(&self, _: &mut [f32]) -> Result<(), DistError> {
        Ok(())
    }

    fn all_gather(&self, send: &[u8], recv: &mut [u8]) -> Result<(), DistError> {
        recv.copy_from_slice(send);
        Ok(())
    }

    fn broadcast(&self, _: &mut [u8], _: usize) -> Result<(), DistError> {
        Ok(())
    }

    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// A shared communicator, as models and the training loop hold it.
pub type Comm = Arc<dyn Communicator>;

/// The single-process communicator.
pub fn single() -> Comm {
    Arc::new(SingleProcess)
}

/// Every rank's `values` (all of one length), rank after rank.
pub fn all_gather_u64(comm: &dyn Communicator, values: &[u64]) -> Result<Vec<u64>, DistError> {
    let mut recv = vec![0u64; values.len() * comm.size()];
    comm.all_gather(
        bytemuck::cast_slice(values),
        bytemuck::cast_slice_mut(&mut recv),
    )?;
    Ok(recv)
}

/// Every rank's `values` (all of one length), rank after rank.
pub fn all_gather_f64(comm: &dyn Communicator, values: &[f64]) -> Result<Vec<f64>, DistError> {
    let mut recv = vec![0f64; values.len() * comm.size()];
    comm.all_gather(
        bytemuck::cast_slice(values),
        bytemuck::cast_slice_mut(&mut recv),
    )?;
    Ok(recv)
}

/// Root's bytes on every rank, whatever their length elsewhere (two broadcasts: the length,
/// then the bytes).
pub fn broadcast_bytes(
    comm: &dyn Communicator,
    bytes: Vec<u8>,
    root: usize,
) -> Result<Vec<u8>, DistError> {
    if comm.size() == 1 {
        return Ok(bytes);
    }
    let mut len = [bytes.len() as u64];
    comm.broadcast(bytemuck::cast_slice_mut(&mut len), root)?;
    let mut buffer = if comm.rank() == root {
        bytes
    } else {
        vec![0u8; len[0] as usize]
    };
    comm.broadcast(&mut buffer, root)?;
    Ok(buffer)
}

/// Root's words on every rank (`values` has the same length on every rank).
pub fn broadcast_u32(
    comm: &dyn Communicator,
    values: &mut [u32],
    root: usize,
) -> Result<(), DistError> {
    comm.broadcast(bytemuck::cast_slice_mut(values), root)
}

/// Which rank this process is and how many there are, as the launcher says: Open MPI's
/// `OMPI_COMM_WORLD_*`, else PMIx's or Slurm's; `None` when no launcher started it.
pub fn launched_world() -> Option<(usize, usize)> {
    let read = |name: &str| std::env::var(name).ok()?.trim().parse::<usize>().ok();
    [
        ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
        ("PMIX_RANK", "PMIX_SIZE"),
        ("PMI_RANK", "PMI_SIZE"),
    ]
    .iter()
    .find_map(|(rank, size)| Some((read(rank)?, read(size)?)))
}

/// This process's rank among those of its node (`OMPI_COMM_WORLD_LOCAL_RANK`, or MPICH's
/// and Slurm's), which picks its adapter.
pub fn local_rank() -> Option<usize> {
    [
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "MPI_LOCALRANKID",
        "SLURM_LOCALID",
    ]
    .iter()
    .find_map(|name| std::env::var(name).ok()?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_process_collectives_are_the_identity() {
        let comm = SingleProcess;
        let mut values = [1.5f32, -2.0];
        comm.all_reduce_sum(&mut values).unwrap();
        assert_eq!(values, [1.5, -2.0]);
        assert_eq!(all_gather_u64(&comm, &[7, 9]).unwrap(), [7, 9]);
        assert_eq!(broadcast_bytes(&comm, b"abc".to_vec(), 0).unwrap(), b"abc");
        assert_eq!(comm.describe(), "rank 0 of 1");
    }

    #[test]
    fn only_disagreements_every_rank_sees_end_the_job_in_order() {
        let mismatch = DistError::Mismatch {
            rank: 1,
            what: "seed".into(),
            detail: "1 instead of 0".into(),
        };
        assert!(mismatch.is_collective());
        assert_eq!(
            mismatch.to_string(),
            "rank 1 differs from rank 0 in its seed: 1 instead of 0"
        );
        assert!(!DistError::Mpi("lost".into()).is_collective());
    }
}
