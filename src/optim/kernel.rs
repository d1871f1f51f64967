//! The fused update kernel (`shaders/optim.wgsl`): one dispatch over the flat parameter
//! buffer updates every parameter, with the settings of whichever optimizer the graph has.

use super::Optimizer;
use crate::gpu::uniform_struct;
use crate::gpu::{Binding, Dispatch, GpuContext, GpuError, Kernel, Shader, grid_1d};
use crate::graph::FlatState;
use crate::ops::groups;

uniform_struct! {
    /// Mirrors `Params` in `shaders/optim.wgsl`.
    pub(super) struct Params {
        pub(super) len: u32,
        pub(super) flags: u32,
        pub(super) _pad: [u32; 2],
    }
}

// The flags of `Params`, as `shaders/optim.wgsl` names them.
pub(super) const FLAG_MOMENTUM: u32 = 1;
pub(super) const FLAG_NESTEROV: u32 = 2;
pub(super) const FLAG_DECOUPLED: u32 = 4;
pub(super) const FLAG_AMSGRAD: u32 = 8;
pub(super) const FLAG_MAXIMIZE: u32 = 16;

const WG: u32 = 256;
/// vec4s an invocation updates (PER_INVOCATION in the shader) on CPU adapters, where each
/// invocation's read of its step record costs a loop over the lanes; GPUs take one each, for
/// the invocations to fill them.
const CPU_PER_INVOCATION: u32 = 4;

/// Builds the update of the `flat.len` parameters of each member's part of the flat buffers;
/// `flat.optimizer` holds [`Optimizer::state_count`] buffers shaped like the parameters. The
/// settings (learning rate, momentum, betas, …) come from each member's step record. The
/// kernel updates values four at a time, so every part must hold `len` rounded up to a
/// multiple of 4.
/// The first update that meets a non-finite gradient or leaves a non-finite parameter is
/// noted in `totals` (the metrics totals,
/// [`Totals::first_nonfinite_update`](crate::graph::Totals::first_nonfinite_update)).
pub fn dispatch<'a>(
    ctx: &GpuContext,
    optimizer: &Optimizer,
    flat: &FlatState<'a>,
    step: Binding<'a>,
    totals: Binding<'a>,
) -> Result<Dispatch, GpuError> {
    let per_invocation = if ctx.adapter().is_cpu() {
        CPU_PER_INVOCATION
    } else {
        1
    };
    dispatch_per(ctx, optimizer, flat, [step, totals], per_invocation)
}

/// [`dispatch`] with `per_invocation` vec4s an invocation.
pub(super) fn dispatch_per<'a>(
    ctx: &GpuContext,
    optimizer: &Optimizer,
    flat: &FlatState<'a>,
    [step, totals]: [Binding<'a>; 2],
    per_invocation: u32,
) -> Result<Dispatch, GpuError> {
    let vec4s = flat.len.div_ceil(4);
    let (entry, flags) = match optimizer {
        Optimizer::Sgd(s) => ("sgd", s.kernel_flags()),
        Optimizer::Adam(a) => ("adam", a.kernel_flags()),
    };
    let params = Params {
        len: vec4s as u32,
        flags,
        _pad: [0; 2],
    };
    let members = flat.params.members();
    // Every member's part, each rounded up to the vec4s the kernel reads.
    let whole = |b: &Binding<'a>| Binding {
        size: b.member_stride * u64::from(members - 1) + (vec4s * 16) as u64,
        ..*b
    };
    let mut bindings = vec![
        (1, step),
        (2, whole(&flat.params)),
        (3, whole(&flat.grads)),
        (7, totals),
    ];
    for (i, s) in flat.optimizer.iter().enumerate() {
        bindings.push((4 + i as u32, whole(s)));
    }
    // SGD without momentum never touches its buffer, nor Adam without AMSGrad its third,
    // but the kernels still declare them.
    let declared = if entry == "sgd" { 1 } else { 3 };
    for i in flat.optimizer.len()..declared {
        bindings.push((4 + i as u32, ctx.placeholder_out()));
    }
    let [x, y, _] = grid_1d(
        groups(vec4s.div_ceil(per_invocation as usize), WG),
        ctx.limits().max_compute_workgroups_per_dimension,
    );
    let kernel = Kernel::new(Shader::Optim, entry)
        .with("WG", WG)
        .with("PER_INVOCATION", per_invocation);
    ctx.dispatch_at(&kernel, Some(&params), &bindings, [x, y, members])
}

#[cfg(test)]
pub(super) fn assert_params_mirror_the_shader() {
    crate::gpu::assert_mirrors::<Params>(Shader::Optim, 0);
}
