//! A model in a data-parallel job ([`Model::distribute`]), as PyTorch's
//! `DistributedDataParallel` wraps a module: rank 0's state is broadcast once, each step's
//! gradients are averaged over the ranks before the optimizer step (one all-reduce of the
//! flat gradient buffer), and batch norm normalizes with each rank's own batch statistics
//! (rank 0's running statistics are the ones kept, as `broadcast_buffers=True`) or, with
//! SyncBatchNorm, with the global batch's.

use crate::dist::{Comm, Communicator, broadcast_u32, reduce_totals};
use crate::error::Result;
use crate::gpu::read_buffer;
use crate::graph::{BufferValues, HostState, Mode, Parallel};
use crate::ops::reduce::RawTotals;

use super::Model;

impl Model {
    /// Joins the data-parallel job of `comm`: every rank takes rank 0's parameters, optimizer
    /// state, running statistics and step, and from now on every training step averages the
    /// gradients over the ranks. With `sync_bn`, batch norm takes its mean and variance over
    /// the global batch in forward and backward (`torch.nn.SyncBatchNorm`); every rank must
    /// then step on batches of equal size. Every rank must call it, with the same model.
    pub fn distribute(&mut self, comm: Comm, sync_bn: bool) -> Result<()> {
        if self.members() > 1 && comm.size() > 1 {
            return Err(crate::dist::DistError::Unsupported(format!(
                "a stack of {} members cannot train across processes",
                self.members()
            ))
            .into());
        }
        // The state is broadcast as words of this model's shapes: every rank's must agree.
        crate::dist::agree(comm.as_ref(), &self.fingerprint(sync_bn))?;
        self.comm = comm;
        self.sync_bn = sync_bn;
        // The plans' exchanges depend on the job: build them again (on use).
        self.plans.clear();
        self.in_flight.clear();
        let batch = self.config.batch_size;
        self.plan(Mode::Train, batch)?;
        self.plan(Mode::Eval, batch)?;
        self.broadcast_state()
    }

    /// The job this model trains in (a single process unless [`Model::distribute`]d).
    pub fn communicator(&self) -> &dyn Communicator {
        self.comm.as_ref()
    }

    /// Whether batch norm takes its statistics over every rank's batch.
    pub fn sync_bn(&self) -> bool {
        self.sync_bn
    }

    /// What every rank's model must share to train together.
    fn fingerprint(&self, sync_bn: bool) -> crate::dist::Fingerprint {
        let graph = self.graph();
        let shapes: Vec<String> = graph
            .params
            .iter()
            .map(|p| format!("{} {:?}", p.name, p.shape))
            .collect();
        vec![
            (
                "model".into(),
                format!(
                    "{} over samples {:?}, parameters {}",
                    crate::nn::spec::to_spec(&self.sequential),
                    self.config.sample_shape,
                    shapes.join(", ")
                ),
            ),
            ("loss".into(), format!("{:?}", self.loss)),
            ("optimizer".into(), format!("{:?}", self.optimizer())),
            ("batch size".into(), self.config.batch_size.to_string()),
            ("seed".into(), self.config.seed.to_string()),
            ("--sync-bn".into(), sync_bn.to_string()),
        ]
    }

    pub(super) fn parallel(&self) -> Parallel {
        Parallel {
            ranks: self.comm.size(),
            sync_bn: self.sync_bn,
        }
    }

    /// Every rank takes rank 0's whole state.
    fn broadcast_state(&mut self) -> Result<()> {
        if self.comm.size() == 1 {
            return Ok(());
        }
        let mut host = self.state()?;
        let mut words = flatten(&host);
        broadcast_u32(self.comm.as_ref(), &mut words, 0)?;
        unflatten(&words, &mut host);
        self.load_state(&host)
    }

    /// Every rank takes rank 0's running statistics and batch counts: what DDP's
    /// `broadcast_buffers` makes every rank's before a forward. The training loop calls it
    /// before evaluating (the test split is spread over the ranks); training itself never
    /// reads another rank's. A collective; nothing to do alone or with SyncBatchNorm, where
    /// every rank's are the same.
    pub fn broadcast_buffers(&mut self) -> Result<()> {
        if self.comm.size() == 1 || self.sync_bn {
            return Ok(());
        }
        let state = &self.state;
        let (running, counters) = (&state.floats, &state.counts);
        let mut words: Vec<u32> = read_buffer(&self.ctx, running, 0, running.size())?;
        let running_words = words.len();
        words.extend(read_buffer::<u32>(&self.ctx, counters, 0, counters.size())?);
        self.counters.blocking_readbacks += 2;
        self.in_flight.clear();
        broadcast_u32(self.comm.as_ref(), &mut words, 0)?;
        let queue = &self.ctx.queue;
        queue.write_buffer(running, 0, bytemuck::cast_slice(&words[..running_words]));
        queue.write_buffer(counters, 0, bytemuck::cast_slice(&words[running_words..]));
        Ok(())
    }

    /// This rank's totals reduced over the job's ranks.
    pub(super) fn reduce_totals(&self, mine: &RawTotals) -> Result<RawTotals> {
        Ok(reduce_totals(self.comm.as_ref(), mine)?)
    }
}

/// Every value of a state as words, in a fixed order of the model's own shapes.
fn flatten(host: &HostState) -> Vec<u32> {
    let mut words = Vec::new();
    let floats = |words: &mut Vec<u32>, v: &[f32]| words.extend(v.iter().map(|x| x.to_bits()));
    for p in &host.params {
        floats(&mut words, p);
    }
    for kind in &host.optimizer {
        for t in kind {
            floats(&mut words, t);
        }
    }
    for buffer in &host.buffers {
        match buffer {
            BufferValues::F32(v) => floats(&mut words, v),
            BufferValues::Count(v) => v.iter().for_each(|&c| words.extend(split(c))),
        }
    }
    words.extend(split(host.step));
    words
}

/// Overwrites `host` with the values of [`flatten`]'s words (of a state of the same shapes).
fn unflatten(words: &[u32], host: &mut HostState) {
    let mut it = words.iter().copied();
    let floats = |v: &mut [f32], it: &mut dyn Iterator<Item = u32>| {
        for (x, w) in v.iter_mut().zip(it) {
            *x = f32::from_bits(w);
        }
    };
    for p in &mut host.params {
        floats(p, &mut it);
    }
    for kind in &mut host.optimizer {
        for t in kind {
            floats(t, &mut it);
        }
    }
    let join = |it: &mut dyn Iterator<Item = u32>| {
        let lo = u64::from(it.next().unwrap_or(0));
        let hi = u64::from(it.next().unwrap_or(0));
        lo | hi << 32
    };
    for buffer in &mut host.buffers {
        match buffer {
            BufferValues::F32(v) => floats(v, &mut it),
            BufferValues::Count(v) => v.iter_mut().for_each(|c| *c = join(&mut it)),
        }
    }
    host.step = join(&mut it);
}

fn split(value: u64) -> [u32; 2] {
    [value as u32, (value >> 32) as u32]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_survives_its_words() {
        let host = HostState {
            params: vec![vec![1.0, -2.5], vec![f32::NAN]],
            optimizer: vec![vec![vec![0.5, 0.25], vec![3.0]]],
            buffers: vec![
                BufferValues::F32(vec![0.1, 0.9]),
                BufferValues::Count(vec![(7 << 32) + 5]),
            ],
            step: u64::MAX - 1,
        };
        let words = flatten(&host);
        let mut back = HostState {
            params: vec![vec![0.0; 2], vec![0.0]],
            optimizer: vec![vec![vec![0.0; 2], vec![0.0]]],
            buffers: vec![
                BufferValues::F32(vec![0.0, 1.0]),
                BufferValues::Count(vec![0]),
            ],
            step: 0,
        };
        unflatten(&words, &mut back);
        assert_eq!(flatten(&back), words);
        assert_eq!(back.step, u64::MAX - 1);
        assert_eq!(back.buffers[1], BufferValues::Count(vec![(7 << 32) + 5]));
    }
}
