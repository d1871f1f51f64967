//! What the model did and what it costs: step counters, the plan report (dispatches,
//! submits and resident bytes per kind), per-dispatch profiling, and the bytes it holds.

use crate::error::Result;
use crate::gpu::StepProfile;
use crate::graph::Mode;
use crate::ops::step::StepParams;

use super::Model;

/// Counters of what the steps did, for checking "one submit, no blocking readback".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub train_steps: u64,
    pub eval_steps: u64,
    pub submits: u64,
    /// Reads that waited for the device (metrics read, predictions, state download).
    pub blocking_readbacks: u64,
    /// Data-parallel steps' stops for the ranks to exchange data ([`crate::graph::Exchange`]).
    pub exchanges: u64,
    /// Time at those stops waiting for the device to finish the segment before and copy what
    /// the exchange reads.
    pub exchange_wait_nanos: u64,
    /// Time at those stops on the host after that: the collectives, combining, writing back.
    pub exchange_host_nanos: u64,
    /// Of which in the collectives themselves (including waiting for the slowest rank).
    pub collective_nanos: u64,
}

/// What a plan costs per step and what the model keeps resident.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanReport {
    pub mode: Mode,
    pub batch_size: usize,
    pub dispatches_per_step: usize,
    pub submits_per_step: usize,
    pub blocking_readbacks_per_step: usize,
    /// Stops for the ranks of a data-parallel job to exchange data, and the bytes each rank
    /// sends into their collectives.
    pub exchanges_per_step: usize,
    pub exchanged_bytes_per_step: u64,
    pub parameter_bytes: u64,
    pub gradient_bytes: u64,
    pub optimizer_bytes: u64,
    /// Activations and gradients of activations (after buffer sharing), plus batch uploads.
    pub activation_bytes: u64,
    /// Running statistics, counters, step uniform, totals, and a preprocessing's constants.
    pub other_bytes: u64,
    pub total_bytes: u64,
}

impl std::fmt::Display for PlanReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kib = |b: u64| b as f64 / 1024.0;
        write!(
            f,
            "{:?} plan, batch {}: {} dispatches, {} submit, {} blocking readbacks per step; \
             resident {:.1} KiB (parameters {:.1}, gradients {:.1}, optimizer {:.1}, \
             activations {:.1}, other {:.1})",
            self.mode,
            self.batch_size,
            self.dispatches_per_step,
            self.submits_per_step,
            self.blocking_readbacks_per_step,
            kib(self.total_bytes),
            kib(self.parameter_bytes),
            kib(self.gradient_bytes),
            kib(self.optimizer_bytes),
            kib(self.activation_bytes),
            kib(self.other_bytes),
        )?;
        if self.exchanges_per_step > 0 {
            write!(
                f,
                "; {} exchange(s) of {:.1} KiB in all between ranks per step",
                self.exchanges_per_step,
                kib(self.exchanged_bytes_per_step)
            )?;
        }
        Ok(())
    }
}

impl Model {
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The cost of the plan for `mode` at the configured batch size.
    pub fn report(&self, mode: Mode) -> PlanReport {
        let batch = self.config.batch_size;
        let plan = &self.plans[&(mode, batch)];
        let parameter_bytes = self.state.param_bytes();
        let gradient_bytes = self.state.grads.size();
        let optimizer_bytes = self.state.optimizer_bytes();
        let activation_bytes = plan.activation_bytes() + plan.batch_bytes();
        let other_bytes = self.state.buffer_bytes()
            + self.state.constant_bytes()
            + self.totals.bytes()
            + std::mem::size_of::<StepParams>() as u64;
        PlanReport {
            mode,
            batch_size: batch,
            dispatches_per_step: plan.dispatch_count(),
            submits_per_step: 1 + plan.exchanges().len(),
            blocking_readbacks_per_step: plan.exchanges().len(),
            exchanges_per_step: plan.exchanges().len(),
            exchanged_bytes_per_step: super::exchange::exchanged_bytes(plan.exchanges()),
            parameter_bytes,
            gradient_bytes,
            optimizer_bytes,
            activation_bytes,
            other_bytes,
            total_bytes: parameter_bytes
                + gradient_bytes
                + optimizer_bytes
                + activation_bytes
                + other_bytes,
        }
    }

    /// Where a step of `mode` at the configured batch size spends its time: each dispatch's
    /// GPU time, the host's recording and submit (medians of `reps` steps after a warm-up).
    /// Running it updates the model's state: profile a throw-away model.
    pub fn profile(&mut self, mode: Mode, reps: usize) -> Result<StepProfile> {
        let batch = self.config.batch_size;
        self.plan(mode, batch)?;
        self.ctx.wait_idle()?;
        self.in_flight.clear();
        let plan = &self.plans[&(mode, batch)];
        Ok(plan.profile(&self.ctx, reps)?)
    }

    /// Bytes of every buffer the model holds (all plans included).
    pub fn resident_bytes(&self) -> u64 {
        let plans: u64 = self
            .plans
            .values()
            .map(|p| p.activation_bytes() + p.batch_bytes())
            .sum();
        self.state.param_bytes()
            + self.state.grads.size()
            + self.state.optimizer_bytes()
            + self.state.buffer_bytes()
            + self.state.constant_bytes()
            + self.totals.bytes()
            + plans
    }
}
