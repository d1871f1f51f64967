//! `torch.optim.Adam` and `torch.optim.AdamW` (with or without AMSGrad): their settings,
//! their CPU reference step, and their part of the fused kernel (`adam` in
//! `shaders/optim.wgsl`).

use super::kernel::{FLAG_AMSGRAD, FLAG_DECOUPLED, FLAG_MAXIMIZE};
use crate::ops::step::StepParams;

/// One parameter's Adam state, as the reference updates it.
pub(super) struct Moments<'a> {
    /// exp_avg.
    pub m: &'a mut [f32],
    /// exp_avg_sq.
    pub v: &'a mut [f32],
    /// max_exp_avg_sq, with AMSGrad.
    pub max_v: Option<&'a mut [f32]>,
}

/// `torch.optim.Adam(params, lr=0.001, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
/// amsgrad=False, maximize=False)`'s options, with PyTorch's defaults;
/// `decoupled_weight_decay` makes it `torch.optim.AdamW` ([`Adam::adamw`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Adam {
    /// Learning rate (`lr`; default 0.001).
    pub lr: f32,
    /// Decay rates of the first and second moment estimates (`betas`; default (0.9, 0.999)).
    pub betas: (f32, f32),
    /// Added to the denominator (`eps`; default 1e-8).
    pub eps: f32,
    /// Weight decay (`weight_decay`; default 0 for Adam, 0.01 for AdamW): an L2 penalty on
    /// the gradient for Adam, a decay of the parameter itself for AdamW.
    pub weight_decay: f32,
    /// AdamW's decoupled weight decay (default false; true from [`Adam::adamw`]).
    pub decoupled_weight_decay: bool,
    /// Normalize by the largest second moment seen so far (`amsgrad`; default false): a
    /// third state tensor, `max_exp_avg_sq`.
    pub amsgrad: bool,
    /// Ascend the objective instead (`maximize`; default false): the gradient's sign is
    /// flipped first.
    pub maximize: bool,
}

impl Default for Adam {
    /// torch.optim.Adam's defaults: lr 0.001, betas (0.9, 0.999), eps 1e-8, no weight decay.
    fn default() -> Self {
        Self {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled_weight_decay: false,
            amsgrad: false,
            maximize: false,
        }
    }
}

impl Adam {
    /// torch.optim.AdamW's defaults: Adam's, with decoupled weight decay 0.01.
    pub fn adamw() -> Self {
        Self {
            weight_decay: 1e-2,
            decoupled_weight_decay: true,
            ..Self::default()
        }
    }

    /// PyTorch's name of each state tensor a parameter keeps.
    pub fn state_names(&self) -> &'static [&'static str] {
        if self.amsgrad {
            &["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]
        } else {
            &["exp_avg", "exp_avg_sq"]
        }
    }

    /// Adam's per-step fields for update number `step` (0-based): the learning rate and the
    /// bias corrections for t = step + 1, in f64 as PyTorch computes them.
    pub(super) fn fill_step(&self, step: u64, params: &mut StepParams) {
        params.lr = self.lr;
        let t = (step + 1) as f64;
        let bc1 = 1.0 - f64::from(self.betas.0).powf(t);
        let bc2 = 1.0 - f64::from(self.betas.1).powf(t);
        params.adam_step_size = (f64::from(self.lr) / bc1) as f32;
        params.adam_bias_correction2_sqrt = bc2.sqrt() as f32;
        params.beta1 = self.betas.0;
        params.beta2 = self.betas.1;
        params.eps = self.eps;
        params.weight_decay = self.weight_decay;
    }

    /// CPU reference: one update of `param` from `grad` at update number `step` (0-based).
    pub(super) fn reference(
        &self,
        step: u64,
        param: &mut [f32],
        grad: &[f32],
        moments: Moments<'_>,
    ) {
        let mut p = StepParams::default();
        self.fill_step(step, &mut p);
        let Moments { m, v, mut max_v } = moments;
        for i in 0..param.len() {
            let mut g = if self.maximize { -grad[i] } else { grad[i] };
            if self.decoupled_weight_decay {
                param[i] *= 1.0 - self.lr * self.weight_decay;
            } else if self.weight_decay != 0.0 {
                g += self.weight_decay * param[i];
            }
            m[i] += (1.0 - self.betas.0) * (g - m[i]);
            v[i] = self.betas.1 * v[i] + (1.0 - self.betas.1) * g * g;
            let second = match max_v.as_deref_mut() {
                Some(max_v) => {
                    max_v[i] = max_v[i].max(v[i]);
                    max_v[i]
                }
                None => v[i],
            };
            let denom = second.sqrt() / p.adam_bias_correction2_sqrt + self.eps;
            param[i] -= p.adam_step_size * m[i] / denom;
        }
    }

    /// The kernel's flags for these settings.
    pub(super) fn kernel_flags(&self) -> u32 {
        (if self.decoupled_weight_decay {
            FLAG_DECOUPLED
        } else {
            0
        }) | (if self.amsgrad { FLAG_AMSGRAD } else { 0 })
            | (if self.maximize { FLAG_MAXIMIZE } else { 0 })
    }
}
