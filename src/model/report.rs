//! What the model did and what it costs: step counters, the plan report (dispatches,
//! submits and resident bytes per kind), per-dispatch profiling, and the bytes it holds.

use crate::error::Result;
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
}

/// What a plan costs per step and what the model keeps resident.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanReport {
    pub mode: Mode,
    pub batch_size: usize,
    pub dispatches_per_step: usize,
    pub submits_per_step: usize,
    pub blocking_readbacks_per_step: usize,
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
        )
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
        let other_bytes = self.state.running.size()
            + self.state.counters.size()
            + self.state.constant_bytes()
            + self.totals.bytes()
            + std::mem::size_of::<StepParams>() as u64;
        PlanReport {
            mode,
            batch_size: batch,
            dispatches_per_step: plan.dispatch_count(),
            submits_per_step: 1,
            blocking_readbacks_per_step: 0,
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

    /// Per-dispatch times of the plan for `mode` at the configured batch size (each dispatch
    /// repeated `reps` times on its own). Running it updates the model's state: profile a
    /// throw-away model.
    pub fn profile(&mut self, mode: Mode, reps: usize) -> Result<Vec<(&'static str, f64)>> {
        let batch = self.config.batch_size;
        let plan = &self.plans[&(mode, batch)];
        let result = plan.profile(&self.ctx, reps)?;
        self.in_flight.clear();
        Ok(result)
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
            + self.state.running.size()
            + self.state.counters.size()
            + self.state.constant_bytes()
            + self.totals.bytes()
            + plans
    }
}
