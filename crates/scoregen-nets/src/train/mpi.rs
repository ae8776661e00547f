//! The [`Collective`] of a data-parallel run over MPI (the `mpi` feature):
//! one process per rank of `MPI_COMM_WORLD`, started by `mpirun`.
//!
//! Gradients travel as one flat f32 buffer per step (`MPI_Allreduce` with
//! `MPI_SUM`): tensors are copied to the host, summed, copied back. MPI's
//! default error handler (`MPI_ERRORS_ARE_FATAL`) ends the whole job when a
//! call fails, and `mpirun` ends it when one process dies, naming that rank.

use super::parallel::{flatten_f32, unflatten_f32, Collective};
use candle_core::Tensor;
use mpi::collective::{CommunicatorCollectives, SystemOperation};
use mpi::environment::Universe;
use mpi::topology::{Communicator, SimpleCommunicator};
use scoregen_core::error::{Error, Result};

/// `MPI_COMM_WORLD` of an initialized MPI; finalizes MPI when dropped.
pub struct Mpi {
    // dropped after `world`: `Universe`'s drop calls MPI_Finalize
    world: SimpleCommunicator,
    _universe: Universe,
}

impl Mpi {
    /// Initializes MPI (once per process). Started without `mpirun`, the
    /// process is rank 0 of 1 (a singleton), which trains like a plain run.
    pub fn init() -> Result<Self> {
        let universe = mpi::initialize()
            .ok_or_else(|| Error::Invalid("MPI is already initialized in this process (initialize it once)".into()))?;
        Ok(Self { world: universe.world(), _universe: universe })
    }

    /// The MPI library's version line (e.g. "Open MPI v4.1.4, …").
    pub fn library(&self) -> String {
        mpi::environment::library_version().unwrap_or_default().lines().next().unwrap_or_default().to_string()
    }

    /// Rank 0's bytes on every process (`MPI_Bcast`); `buf` has the same length everywhere.
    pub fn broadcast_bytes(&self, buf: &mut [u8]) {
        use mpi::collective::Root;
        self.world.process_at_rank(0).broadcast_into(buf);
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }
    fn size(&self) -> usize {
        self.world.size() as usize
    }
    fn all_reduce_sum(&self, tensors: &[Tensor]) -> Result<Vec<Tensor>> {
        let send = flatten_f32(tensors)?;
        let mut recv = vec![0f32; send.len()];
        self.world.all_reduce_into(&send[..], &mut recv[..], SystemOperation::sum());
        unflatten_f32(&recv, tensors)
    }
    fn all_gather_u64(&self, value: u64) -> Result<Vec<u64>> {
        let mut all = vec![0u64; self.size()];
        self.world.all_gather_into(&value, &mut all[..]);
        Ok(all)
    }
    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
    fn describe(&self) -> String {
        format!("MPI ({}), {} processes", self.library(), self.size())
    }
}
