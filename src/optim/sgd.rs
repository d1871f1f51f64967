//! `torch.optim.SGD`: its settings, its CPU reference step, and its part of the fused kernel
//! (`sgd` in `shaders/optim.wgsl`).

use super::kernel::{FLAG_MAXIMIZE, FLAG_MOMENTUM, FLAG_NESTEROV};
use crate::ops::step::StepParams;

/// `torch.optim.SGD(params, lr=0.01, momentum=0, dampening=0, weight_decay=0,
/// nesterov=False, maximize=False)`'s options, with PyTorch's defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sgd {
    /// Learning rate (`lr`; default 0.01; `wgnn train` uses 0.02).
    pub lr: f32,
    /// Momentum factor (`momentum`; default 0: no momentum buffer).
    pub momentum: f32,
    /// Dampening of the momentum (`dampening`; default 0).
    pub dampening: f32,
    /// L2 penalty added to the gradient (`weight_decay`; default 0).
    pub weight_decay: f32,
    /// Nesterov momentum (`nesterov`; default false; needs a momentum and zero dampening).
    pub nesterov: bool,
    /// Ascend the objective instead (`maximize`; default false): the gradient's sign is
    /// flipped first.
    pub maximize: bool,
}

impl Default for Sgd {
    /// torch.optim.SGD's defaults: lr 0.01, everything else off.
    fn default() -> Self {
        Self {
            lr: 0.01,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
            maximize: false,
        }
    }
}

impl Sgd {
    /// PyTorch's name of each state tensor a parameter keeps: the momentum buffer, when
    /// there is momentum.
    pub fn state_names(&self) -> &'static [&'static str] {
        if self.momentum != 0.0 {
            &["momentum_buffer"]
        } else {
            &[]
        }
    }

    /// CPU reference: one update of `param` from `grad` at update number `step` (0-based);
    /// `state` is empty or the momentum buffer (its first update sets it to the gradient).
    pub(super) fn reference(
        &self,
        step: u64,
        param: &mut [f32],
        grad: &[f32],
        state: &mut [Vec<f32>],
    ) {
        for i in 0..param.len() {
            let mut g = if self.maximize { -grad[i] } else { grad[i] };
            if self.weight_decay != 0.0 {
                g += self.weight_decay * param[i];
            }
            if let Some(buf) = state.first_mut() {
                buf[i] = if step == 0 {
                    g
                } else {
                    self.momentum * buf[i] + (1.0 - self.dampening) * g
                };
                g = if self.nesterov {
                    g + self.momentum * buf[i]
                } else {
                    buf[i]
                };
            }
            param[i] -= self.lr * g;
        }
    }

    /// The kernel's flags for these settings.
    pub(super) fn kernel_flags(&self) -> u32 {
        (if self.momentum != 0.0 {
            FLAG_MOMENTUM
        } else {
            0
        }) | (if self.nesterov { FLAG_NESTEROV } else { 0 })
            | (if self.maximize { FLAG_MAXIMIZE } else { 0 })
    }

    /// SGD's per-step fields: its settings, and whether this is the first update.
    pub(super) fn fill_step(&self, step: u64, params: &mut StepParams) {
        params.lr = self.lr;
        params.sgd_first_step = u32::from(step == 0);
        params.momentum = self.momentum;
        params.dampening = self.dampening;
        params.weight_decay = self.weight_decay;
    }
}
