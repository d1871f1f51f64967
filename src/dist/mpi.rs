//! The MPI communicator (feature `mpi`, on the `mpi` crate): the job `mpirun` started, as
//! MPI_COMM_WORLD. MPI is initialized once per process; the communicator finalizes it when
//! dropped, so drop it before the process exits.

use std::sync::Mutex;

use mpi::Threading;
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::traits::{Communicator as _, CommunicatorCollectives, Root};

use super::{Communicator, DistError};

/// MPI_COMM_WORLD of this process's job. Calls are serialized by a lock (MPI is initialized
/// with `MPI_THREAD_SERIALIZED`), so the communicator can be shared across threads.
pub struct MpiCommunicator {
    universe: Mutex<Universe>,
    rank: usize,
    size: usize,
}

impl MpiCommunicator {
    /// Initializes MPI and joins the job; an error when MPI is already initialized or gives
    /// less than serialized threading.
    pub fn init() -> Result<Self, DistError> {
        let (universe, threading) = mpi::initialize_with_threading(Threading::Serialized)
            .ok_or_else(|| DistError::Mpi("MPI is already initialized in this process".into()))?;
        if threading < Threading::Serialized {
            return Err(DistError::Mpi(format!(
                "the MPI library gives {threading:?} threading; wgnn needs Serialized"
            )));
        }
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        Ok(Self {
            universe: Mutex::new(universe),
            rank,
            size,
        })
    }

    fn with_world<T>(&self, f: impl FnOnce(&mpi::topology::SimpleCommunicator) -> T) -> T {
        // A poisoned lock only means another thread panicked mid-call; MPI itself is intact.
        let universe = self
            .universe
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&universe.world())
    }
}

/// MPI counts are C ints.
fn count(len: usize, what: &str) -> Result<(), DistError> {
    if i32::try_from(len).is_err() {
        return Err(DistError::Mpi(format!(
            "{what} of {len} elements is over MPI's count limit of 2^31 - 1"
        )));
    }
    Ok(())
}

impl Communicator for MpiCommunicator {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn all_reduce_sum(&self, values: &mut [f32]) -> Result<(), DistError> {
        count(values.len(), "an all-reduce")?;
        let send = values.to_vec();
        self.with_world(|world| world.all_reduce_into(&send[..], values, SystemOperation::sum()));
        Ok(())
    }

    fn all_gather(&self, send: &[u8], recv: &mut [u8]) -> Result<(), DistError> {
        count(recv.len(), "an all-gather")?;
        if recv.len() != send.len() * self.size {
            return Err(DistError::Mpi(format!(
                "all-gather of {} bytes into {} for {} ranks",
                send.len(),
                recv.len(),
                self.size
            )));
        }
        self.with_world(|world| world.all_gather_into(send, recv));
        Ok(())
    }

    fn broadcast(&self, buffer: &mut [u8], root: usize) -> Result<(), DistError> {
        count(buffer.len(), "a broadcast")?;
        self.with_world(|world| world.process_at_rank(root as i32).broadcast_into(buffer));
        Ok(())
    }

    fn abort(&self, code: i32) -> ! {
        self.with_world(|world| world.abort(code))
    }
}
