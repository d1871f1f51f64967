//! Where a data-parallel step stops for the ranks to meet. An op declares an exchange while
//! its dispatches are planned ([`GpuCx::exchange`](super::GpuCx::exchange)); the model's step
//! submits the dispatches before it, the host reads the regions, runs the collective over
//! the ranks and writes the result back before the step goes on. The kinds are collectives,
//! not ops: the optimizer averages gradients, SyncBatchNorm combines moments and sums.

/// Part of a buffer, owned (a [`Binding`](crate::gpu::Binding) without its borrow), for the
/// host to read or write between a plan's dispatches.
#[derive(Clone, Debug)]
pub struct Region {
    pub buffer: wgpu::Buffer,
    pub offset: u64,
    pub size: u64,
}

impl Region {
    pub fn of(binding: crate::gpu::Binding<'_>) -> Self {
        Self {
            buffer: binding.buffer.clone(),
            offset: binding.offset,
            size: binding.size,
        }
    }
}

/// A point within a step where the plan stops and the ranks of a data-parallel job exchange
/// data through the host: the dispatches before it are submitted and waited for, the host
/// reads the region, runs the collective and writes the result back, and the step goes on.
#[derive(Clone, Debug)]
pub enum Exchange {
    /// `region`: summed over the ranks, then divided by their number (DDP's gradients).
    Mean { region: Region },
    /// `saved` holds this rank's per-feature [mean; biased variance] of `rows` rows and
    /// `features` features, and gets the global batch's (Chan's combination, in f64).
    Moments {
        saved: Region,
        rows: usize,
        features: usize,
    },
    /// The `reads`, back to back, summed over the ranks and written to `writes` (of the
    /// same sizes, in order).
    Sum {
        reads: Vec<Region>,
        writes: Vec<Region>,
    },
}

impl Exchange {
    /// The regions the host reads at this exchange, in order.
    pub fn reads(&self) -> Vec<&Region> {
        match self {
            Exchange::Mean { region } => vec![region],
            Exchange::Moments { saved, .. } => vec![saved],
            Exchange::Sum { reads, .. } => reads.iter().collect(),
        }
    }

    /// Bytes read back (and sent into the collectives) at this exchange.
    pub fn read_bytes(&self) -> u64 {
        self.reads().iter().map(|r| r.size).sum()
    }
}
