//! Optimizers, as `torch.optim` defines them: SGD (momentum, dampening, Nesterov, weight
//! decay), Adam and AdamW (with or without AMSGrad), and the learning-rate schedules.
//!
//! | file | what it holds |
//! |---|---|
//! | `sgd.rs` | [`Sgd`]: settings, CPU reference step, its kernel constants |
//! | `adam.rs` | [`Adam`] (and AdamW): settings, CPU reference step, its kernel constants |
//! | `mod.rs` | [`Optimizer`], what the two share: checks, state names, the per-step fields |
//! | `kernel.rs` | the fused update kernel (`shaders/optim.wgsl`), one dispatch for all |
//! | `node.rs` | [`OptimizerStep`], the graph's last node |
//! | `schedule.rs` | [`LrSchedule`]: StepLR and CosineAnnealingLR |

mod adam;
mod kernel;
mod node;
mod schedule;
mod sgd;

pub use adam::Adam;
pub use kernel::dispatch;
pub use node::OptimizerStep;
pub use schedule::{LrSchedule, ScheduleError};
pub use sgd::Sgd;

use crate::ops::OpError;
use crate::ops::step::StepParams;

/// An optimizer and its hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Optimizer {
    Sgd(Sgd),
    Adam(Adam),
}

impl Optimizer {
    /// Rejects what torch.optim rejects.
    pub fn validate(&self) -> Result<(), OpError> {
        let invalid = |message: String| {
            Err(OpError::Invalid {
                op: "optimizer",
                message,
            })
        };
        let (lr, wd) = match self {
            Optimizer::Sgd(s) => (s.lr, s.weight_decay),
            Optimizer::Adam(a) => (a.lr, a.weight_decay),
        };
        if !(lr >= 0.0) {
            return invalid(format!("invalid learning rate: {lr}"));
        }
        if !(wd >= 0.0) {
            return invalid(format!("invalid weight_decay value: {wd}"));
        }
        match self {
            Optimizer::Sgd(s) => {
                if !(s.momentum >= 0.0) {
                    return invalid(format!("invalid momentum value: {}", s.momentum));
                }
                if s.nesterov && (s.momentum <= 0.0 || s.dampening != 0.0) {
                    return invalid(
                        "nesterov momentum requires a momentum and zero dampening".into(),
                    );
                }
            }
            Optimizer::Adam(a) => {
                if !(a.eps >= 0.0) {
                    return invalid(format!("invalid epsilon value: {}", a.eps));
                }
                for (i, b) in [a.betas.0, a.betas.1].into_iter().enumerate() {
                    if !(0.0..1.0).contains(&b) {
                        return invalid(format!("invalid beta parameter at index {i}: {b}"));
                    }
                }
            }
        }
        Ok(())
    }

    /// Optimizer state tensors per parameter: SGD's momentum buffer, Adam's two moments
    /// (and AMSGrad's running maximum of the second).
    pub fn state_count(&self) -> usize {
        self.state_names().len()
    }

    /// PyTorch's names for the state tensors, in state order.
    pub fn state_names(&self) -> &'static [&'static str] {
        match self {
            Optimizer::Sgd(s) => s.state_names(),
            Optimizer::Adam(a) => a.state_names(),
        }
    }

    pub fn lr(&self) -> f32 {
        match self {
            Optimizer::Sgd(s) => s.lr,
            Optimizer::Adam(a) => a.lr,
        }
    }

    /// Sets the learning rate.
    pub fn set_lr(&mut self, lr: f32) {
        match self {
            Optimizer::Sgd(s) => s.lr = lr,
            Optimizer::Adam(a) => a.lr = lr,
        }
    }

    /// Fills the per-step fields for update number `step` (0-based): the learning rate and
    /// Adam's bias corrections for t = step + 1, in f64 as PyTorch computes them.
    pub fn fill_step(&self, step: u64, params: &mut StepParams) {
        match self {
            Optimizer::Sgd(s) => s.fill_step(step, params),
            Optimizer::Adam(a) => a.fill_step(step, params),
        }
    }

    /// CPU reference: one update of `param` from `grad`, at update number `step` (0-based).
    /// `state` holds [`Optimizer::state_count`] tensors shaped like `param`; any other count
    /// is an error and changes nothing.
    pub fn reference_step(
        &self,
        step: u64,
        param: &mut [f32],
        grad: &[f32],
        state: &mut [Vec<f32>],
    ) -> Result<(), OpError> {
        let expected = self.state_count();
        let short = state.iter().any(|s| s.len() != param.len());
        if state.len() != expected || short || grad.len() != param.len() {
            return Err(OpError::Invalid {
                op: "optimizer",
                message: format!(
                    "{self:?} keeps {expected} state tensor(s) of {} values, got {} of {:?}, and {} gradient values",
                    param.len(),
                    state.len(),
                    state.iter().map(Vec::len).collect::<Vec<_>>(),
                    grad.len()
                ),
            });
        }
        match self {
            Optimizer::Sgd(s) => s.reference(step, param, grad, state),
            Optimizer::Adam(a) => {
                let (m, rest) = state.split_at_mut(1);
                let (v, rest) = rest.split_at_mut(1);
                let moments = adam::Moments {
                    m: &mut m[0],
                    v: &mut v[0],
                    max_v: rest.first_mut().map(Vec::as_mut_slice),
                };
                a.reference(step, param, grad, moments);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
