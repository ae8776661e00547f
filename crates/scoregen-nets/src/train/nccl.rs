//! The [`Collective`] of a data-parallel run on GPUs (features `mpi` and
//! `nccl`): one GPU per MPI rank, gradients summed by NCCL on the devices.
//!
//! MPI starts the processes and bootstraps NCCL: rank 0 creates the NCCL
//! unique id and broadcasts its 128 bytes over MPI, then every rank joins the
//! communicator on its own GPU (`ncclCommInitRank`, as candle's
//! `llama_multiprocess` example does). Gradients are concatenated into one
//! f32 buffer on the GPU and summed in place by one `ncclAllReduce`; the
//! small host-side operations (state hashes, abort) stay on MPI.
//!
//! **Compiled, never run**: the sessions that wrote this had no GPU
//! (docs/distributed.md).

use super::mpi::Mpi;
use super::parallel::Collective;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::nccl::{Comm, Id, ReduceOp};
use candle_core::{CpuStorage, CudaStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};
use scoregen_core::error::{Error, Result};
use std::rc::Rc;

/// NCCL over the ranks of an MPI job, one GPU per rank.
pub struct Nccl {
    comm: Rc<Comm>,
    // dropped last: it finalizes MPI
    mpi: Mpi,
}

impl Nccl {
    /// Joins rank `mpi.rank()` on `device` (a CUDA device) to a communicator
    /// of all `mpi.size()` ranks; every rank calls it at the same point.
    pub fn init(mpi: Mpi, device: &Device) -> Result<Self> {
        let cuda = device.as_cuda_device().map_err(|_| {
            Error::Invalid(format!("NCCL needs a CUDA device (one GPU per process), got {device:?}; use --device cuda"))
        })?;
        let mut bytes = [0u8; 128];
        if mpi.rank() == 0 {
            let id = Id::new().map_err(|e| Error::Invalid(format!("creating the NCCL id on rank 0: {e:?}")))?;
            for (b, c) in bytes.iter_mut().zip(id.internal()) {
                *b = *c as u8;
            }
        }
        mpi.broadcast_bytes(&mut bytes);
        let mut internal = [0 as std::ffi::c_char; 128];
        for (c, b) in internal.iter_mut().zip(bytes) {
            *c = b as std::ffi::c_char;
        }
        let comm = Comm::from_rank(cuda.cuda_stream(), mpi.rank(), mpi.size(), Id::uninit(internal)).map_err(|e| {
            Error::Invalid(format!("joining the NCCL communicator (rank {} of {}): {e:?}", mpi.rank(), mpi.size()))
        })?;
        Ok(Self { comm: Rc::new(comm), mpi })
    }
}

/// `ncclAllReduce(sum)` of one contiguous f32 CUDA tensor into a new one.
struct AllReduceSum(Rc<Comm>);

// SAFETY: the op is created, applied and dropped on the one thread that
// trains (candle asks for Send + Sync of every custom op; NCCL's communicator
// is used from that thread only).
unsafe impl Send for AllReduceSum {}
unsafe impl Sync for AllReduceSum {}

impl CustomOp1 for AllReduceSum {
    fn name(&self) -> &'static str {
        "nccl-all-reduce-sum"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("the NCCL all-reduce runs on CUDA tensors only")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("the NCCL all-reduce needs a contiguous tensor")
        };
        let src = s.as_cuda_slice::<f32>()?.slice(start..end);
        let dev = s.device().clone();
        // SAFETY: every element is written by the all-reduce before it is read.
        let mut dst = unsafe { dev.alloc::<f32>(end - start)? };
        self.0.all_reduce(&src, &mut dst, &ReduceOp::Sum).map_err(|e| candle_core::Error::Msg(format!("{e:?}")))?;
        Ok((CudaStorage::wrap_cuda_slice(dst, dev), l.shape().clone()))
    }
}

impl Collective for Nccl {
    fn rank(&self) -> usize {
        self.mpi.rank()
    }
    fn size(&self) -> usize {
        self.mpi.size()
    }
    fn all_reduce_sum(&self, tensors: &[Tensor]) -> Result<Vec<Tensor>> {
        if tensors.iter().any(|t| !t.device().is_cuda()) {
            return self.mpi.all_reduce_sum(tensors);
        }
        let flat: Vec<Tensor> =
            tensors.iter().map(|t| t.flatten_all()?.to_dtype(DType::F32)).collect::<candle_core::Result<_>>()?;
        let summed = Tensor::cat(&flat, 0)?.apply_op1_no_bwd(&AllReduceSum(self.comm.clone()))?;
        let mut at = 0;
        tensors
            .iter()
            .map(|t| {
                let n = t.elem_count();
                let v = summed.narrow(0, at, n)?.reshape(t.shape())?.to_dtype(t.dtype())?;
                at += n;
                Ok(v)
            })
            .collect()
    }
    fn all_gather_u64(&self, value: u64) -> Result<Vec<u64>> {
        self.mpi.all_gather_u64(value)
    }
    fn abort(&self, code: i32) -> ! {
        self.mpi.abort(code)
    }
    fn describe(&self) -> String {
        format!("NCCL over {}", self.mpi.describe())
    }
}
