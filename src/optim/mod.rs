//! Optimizers, as `torch.optim` defines them: SGD (momentum, dampening, Nesterov, weight
//! decay), Adam and AdamW (with or without AMSGrad). Kernel: `shaders/optim.wgsl`, one dispatch for every parameter
//! (they live in one flat buffer).

mod schedule;
pub use schedule::{LrSchedule, ScheduleError};

use crate::gpu::uniform_struct;
use crate::gpu::{Binding, Dispatch, GpuContext, GpuError, Kernel, Shader, grid_1d};
use crate::ops::step::StepParams;
use crate::ops::{OpError, groups};
use std::any::Any;

use crate::exec::gpu::{Exchange, Region};
use crate::exec::state::StateLayout;
use crate::exec::{CpuCx, GpuCx};
use crate::graph::{Autodiff, Node, Op, ValueId};
use crate::ops::reduce::NonFiniteUpdate;

/// `torch.optim.SGD`'s options.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sgd {
    pub lr: f32,
    pub momentum: f32,
    pub dampening: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
    /// Ascend the objective instead (the gradient's sign flipped first).
    pub maximize: bool,
}

impl Default for Sgd {
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

/// `torch.optim.Adam`'s options; `decoupled_weight_decay` makes it `torch.optim.AdamW`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Adam {
    pub lr: f32,
    pub betas: (f32, f32),
    pub eps: f32,
    pub weight_decay: f32,
    pub decoupled_weight_decay: bool,
    /// Normalize by the largest second moment seen so far (a third state tensor,
    /// `max_exp_avg_sq`).
    pub amsgrad: bool,
    /// Ascend the objective instead (the gradient's sign flipped first).
    pub maximize: bool,
}

impl Default for Adam {
    /// torch.optim.Adam's defaults.
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
    /// torch.optim.AdamW's defaults (weight decay 0.01).
    pub fn adamw() -> Self {
        Self {
            weight_decay: 1e-2,
            decoupled_weight_decay: true,
            ..Self::default()
        }
    }
}

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
            Optimizer::Sgd(s) if s.momentum != 0.0 => &["momentum_buffer"],
            Optimizer::Sgd(_) => &[],
            Optimizer::Adam(a) if a.amsgrad => &["exp_avg", "exp_avg_sq", "max_exp_avg_sq"],
            Optimizer::Adam(_) => &["exp_avg", "exp_avg_sq"],
        }
    }

    pub fn lr(&self) -> f32 {
        match self {
            Optimizer::Sgd(s) => s.lr,
            Optimizer::Adam(a) => a.lr,
        }
    }

    /// Fills the per-step fields for update number `step` (0-based): the learning rate and
    /// Adam's bias corrections for t = step + 1, in f64 as PyTorch computes them.
    pub fn fill_step(&self, step: u64, params: &mut StepParams) {
        params.lr = self.lr();
        params.sgd_first_step = u32::from(step == 0);
        if let Optimizer::Adam(a) = self {
            let t = (step + 1) as f64;
            let bc1 = 1.0 - f64::from(a.betas.0).powf(t);
            let bc2 = 1.0 - f64::from(a.betas.1).powf(t);
            params.adam_step_size = (f64::from(a.lr) / bc1) as f32;
            params.adam_bias_correction2_sqrt = bc2.sqrt() as f32;
        }
    }
}

/// CPU reference: one update of `param` from `grad`, at update number `step` (0-based).
/// `state` holds [`Optimizer::state_count`] tensors shaped like `param`.
pub fn reference_step(
    optimizer: &Optimizer,
    step: u64,
    param: &mut [f32],
    grad: &[f32],
    state: &mut [Vec<f32>],
) {
    let mut p = StepParams::default();
    optimizer.fill_step(step, &mut p);
    match *optimizer {
        Optimizer::Sgd(s) => {
            for i in 0..param.len() {
                let mut g = if s.maximize { -grad[i] } else { grad[i] };
                if s.weight_decay != 0.0 {
                    g += s.weight_decay * param[i];
                }
                if let Some(buf) = state.first_mut() {
                    buf[i] = if step == 0 {
                        g
                    } else {
                        s.momentum * buf[i] + (1.0 - s.dampening) * g
                    };
                    g = if s.nesterov {
                        g + s.momentum * buf[i]
                    } else {
                        buf[i]
                    };
                }
                param[i] -= s.lr * g;
            }
        }
        Optimizer::Adam(a) => {
            let (m, v, mut max_v) = match state {
                [m, v] => (m, v, None),
                [m, v, max_v] => (m, v, Some(max_v)),
                _ => return,
            };
            for i in 0..param.len() {
                let mut g = if a.maximize { -grad[i] } else { grad[i] };
                if a.decoupled_weight_decay {
                    param[i] *= 1.0 - a.lr * a.weight_decay;
                } else if a.weight_decay != 0.0 {
                    g += a.weight_decay * param[i];
                }
                m[i] += (1.0 - a.betas.0) * (g - m[i]);
                v[i] = a.betas.1 * v[i] + (1.0 - a.betas.1) * g * g;
                let second = match max_v.as_deref_mut() {
                    Some(max_v) => {
                        max_v[i] = max_v[i].max(v[i]);
                        max_v[i]
                    }
                    None => v[i],
                };
                let denom = second.sqrt() / p.adam_bias_correction2_sqrt + a.eps;
                param[i] -= p.adam_step_size * m[i] / denom;
            }
        }
    }
}

uniform_struct! {
    /// Mirrors `Params` in `shaders/optim.wgsl`.
    struct Params {
        len: u32,
        flags: u32,
        momentum: f32,
        dampening: f32,
        weight_decay: f32,
        beta1: f32,
        beta2: f32,
        eps: f32,
    }
}

const WG: u32 = 256;

/// Builds the update of `len` parameters (one flat buffer); `state` holds
/// [`Optimizer::state_count`] buffers shaped like `param`. The kernel updates four values per
/// invocation, so every buffer must hold `len` rounded up to a multiple of 4. The first update
/// that meets a non-finite gradient or leaves a non-finite parameter is noted in `totals` (the
/// metrics totals, [`crate::ops::reduce::Totals::first_nonfinite_update`]).
#[allow(clippy::too_many_arguments)]
pub fn dispatch<'a>(
    ctx: &GpuContext,
    optimizer: &Optimizer,
    len: usize,
    step: Binding<'a>,
    param: Binding<'a>,
    grad: Binding<'a>,
    state: &[Binding<'a>],
    totals: Binding<'a>,
) -> Result<Dispatch, GpuError> {
    let vec4s = len.div_ceil(4);
    let (entry, params) = match *optimizer {
        Optimizer::Sgd(s) => (
            "sgd",
            Params {
                len: vec4s as u32,
                flags: u32::from(s.momentum != 0.0)
                    | (u32::from(s.nesterov) << 1)
                    | (u32::from(s.maximize) << 4),
                momentum: s.momentum,
                dampening: s.dampening,
                weight_decay: s.weight_decay,
                beta1: 0.0,
                beta2: 0.0,
                eps: 0.0,
            },
        ),
        Optimizer::Adam(a) => (
            "adam",
            Params {
                len: vec4s as u32,
                flags: (u32::from(a.decoupled_weight_decay) << 2)
                    | (u32::from(a.amsgrad) << 3)
                    | (u32::from(a.maximize) << 4),
                momentum: 0.0,
                dampening: 0.0,
                weight_decay: a.weight_decay,
                beta1: a.betas.0,
                beta2: a.betas.1,
                eps: a.eps,
            },
        ),
    };
    let whole = |b: Binding<'a>| Binding {
        size: (vec4s * 16) as u64,
        ..b
    };
    let mut bindings = vec![(1, step), (2, whole(param)), (3, whole(grad)), (7, totals)];
    for (i, s) in state.iter().enumerate() {
        bindings.push((4 + i as u32, whole(*s)));
    }
    // SGD without momentum never touches its buffer, nor Adam without AMSGrad its third,
    // but the kernels still declare them.
    let declared = if entry == "sgd" { 1 } else { 3 };
    for i in state.len()..declared {
        bindings.push((4 + i as u32, ctx.placeholder_out()));
    }
    let workgroups = grid_1d(
        groups(vec4s, WG),
        ctx.limits().max_compute_workgroups_per_dimension,
    );
    ctx.dispatch_at(
        &Kernel::new(Shader::Optim, entry).with("WG", WG),
        Some(&params),
        &bindings,
        workgroups,
    )
}

/// () → (): every parameter updated from its gradient, in one pass over the flat buffers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OptimizerStep {
    pub optimizer: Optimizer,
}

impl Op for OptimizerStep {
    fn name(&self) -> &'static str {
        "optimizer_step"
    }

    fn has_params(&self) -> bool {
        true
    }

    fn backward(&self, _: &Node, _: ValueId, _: &mut Autodiff<'_>) -> Option<ValueId> {
        None
    }

    fn run_cpu(&self, _: &Node, cx: &mut CpuCx<'_>) -> Vec<Vec<f32>> {
        let step = cx.state.step;
        // Elements as a flat buffer aligned to 4 would number them.
        let offsets = StateLayout::new(cx.graph, 4).params;
        for (i, grad) in cx.grads.iter().enumerate() {
            let mut state: Vec<Vec<f32>> = cx
                .state
                .optimizer
                .iter_mut()
                .map(|s| std::mem::take(&mut s[i]))
                .collect();
            reference_step(
                &self.optimizer,
                step,
                &mut cx.state.params[i],
                grad,
                &mut state,
            );
            for (k, s) in state.into_iter().enumerate() {
                cx.state.optimizer[k][i] = s;
            }
            let first_bad = cx.state.params[i]
                .iter()
                .zip(grad)
                .position(|(p, g)| !p.is_finite() || !g.is_finite());
            if let Some(j) = first_bad
                && cx.totals.first_nonfinite_update.is_none()
            {
                let (p, g) = (cx.state.params[i][j], grad[j]);
                cx.totals.first_nonfinite_update = Some(NonFiniteUpdate {
                    step: step as u32,
                    element: (offsets[i] + j) as u32,
                    parameter: !p.is_finite(),
                    gradient: !g.is_finite(),
                });
            }
        }
        cx.state.step += 1;
        vec![]
    }

    fn encode_gpu(&self, _: &Node, cx: &mut GpuCx<'_, '_>) -> Result<(), GpuError> {
        let state = cx.state;
        let len = state.layout.params_len;
        if len == 0 {
            // A model without parameters (a lone Dropout, say) has nothing to update.
            return Ok(());
        }
        // The first `len` floats of each flat buffer.
        let flat = |buffer| Binding {
            buffer,
            offset: 0,
            size: (len * 4) as u64,
        };
        let opt_state: Vec<Binding<'_>> = state.optimizer.iter().map(flat).collect();
        // Data-parallel: every rank's gradients are averaged before the same update (DDP).
        if cx.parallel.averages_gradients() {
            cx.exchange(Exchange::AverageGradients {
                grads: Region::of(flat(&state.grads)),
            });
        }
        let d = dispatch(
            cx.ctx,
            &self.optimizer,
            len,
            cx.step,
            flat(&state.params),
            flat(&state.grads),
            &opt_state,
            cx.totals,
        )?;
        cx.push(d);
        Ok(())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests;
