//! The one definition of an operation of the graph. Each op module (`src/ops/<op>.rs`)
//! implements [`Op`] for its node types: how many outputs it writes in each mode, its
//! backward rule, its CPU reference execution and its GPU dispatches. The executors and
//! autodiff are loops over the graph that call these methods and never name an op.
//!
//! Every method an op must answer for has no default, so a new op that forgets one does not
//! compile; the defaults are the behaviours almost every op shares.

use std::any::Any;
use std::fmt::Debug;
use std::sync::Arc;

use super::{Autodiff, CpuCx, CpuError, GpuCx, Mode, Node, ParamId, ValueId};
use crate::gpu::GpuError;

pub trait Op: Debug + Send + Sync + 'static {
    /// A short name for reports and messages (`"linear"`, `"gelu_backward"`).
    fn name(&self) -> &'static str;

    /// How many of the node's `outputs` (a leading part) it writes in `mode`. Eval batch
    /// norm saves nothing, eval losses give no gradient, eval dropout writes nothing.
    fn outputs_in(&self, _mode: Mode, outputs: usize) -> usize {
        outputs
    }

    /// Whether output 0 is input 0 itself in `mode` (eval dropout): the memory planner gives
    /// both one buffer.
    fn aliases_input(&self, _mode: Mode) -> bool {
        false
    }

    /// Whether the op reads learnable parameters, so that its outputs need gradients.
    fn has_params(&self) -> bool;

    /// Appends to `ad` the nodes that turn `dy`, the gradient of `node`'s output 0, into the
    /// gradients of its parameters and, when `ad.needs_grad(node.inputs[0])`, of its input
    /// 0, which it returns. Called only for forward nodes that came from a layer.
    fn backward(&self, node: &Node, dy: ValueId, ad: &mut Autodiff<'_>) -> Option<ValueId>;

    /// The CPU reference: reads the node's inputs from `cx`, returns the outputs it writes in
    /// `cx.mode`, in order (and writes gradients, running statistics or totals into `cx`),
    /// or an error when the state it was given does not fit it.
    fn run_cpu(&self, node: &Node, cx: &mut CpuCx<'_>) -> Result<Vec<Vec<f32>>, CpuError>;

    /// Appends the node's dispatches in `cx.mode` to the plan.
    fn encode_gpu(&self, node: &Node, cx: &mut GpuCx<'_, '_>) -> Result<(), GpuError>;

    /// This op fused with `next`, the op reading its output 0 as its only input, when the
    /// pair can run as one (Linear → ReLU, BatchNorm → ReLU → Dropout). The fusion pass
    /// applies it wherever the output has no other reader.
    fn absorb(&self, _next: &dyn Op) -> Option<Arc<dyn Op>> {
        None
    }

    /// Where the op writes the column sums of its input 0 into a parameter's gradient (a
    /// Linear's bias gradient from the gradient of its output): that parameter, and the op
    /// without that part, for the producer of the input to take over when it can
    /// ([`Op::absorb_column_sum`]).
    fn yield_column_sum(&self) -> Option<(ParamId, Arc<dyn Op>)> {
        None
    }

    /// This op also writing the column sums of its output `output` into `param`'s gradient,
    /// when it can do so on the way (batch norm's backward, which walks dx by column; a loss
    /// that runs as one workgroup, over dlogits).
    fn absorb_column_sum(&self, _param: ParamId, _output: usize) -> Option<Arc<dyn Op>> {
        None
    }

    /// The op as `Any`, for fusion rules and tests that look at a concrete op.
    fn as_any(&self) -> &dyn Any;
}
