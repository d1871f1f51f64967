//! The optimizer as the graph's last node: after every gradient is written, one dispatch
//! updates every parameter (`crate::optim::kernel`), and the CPU reference does the same
//! parameter by parameter.

use std::any::Any;

use super::Optimizer;
use crate::exec::state::StateLayout;
use crate::gpu::GpuError;
use crate::graph::{
    Autodiff, CpuCx, CpuError, Exchange, GpuCx, Node, NonFiniteUpdate, Op, Region, ValueId,
};

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

    fn run_cpu(&self, _: &Node, cx: &mut CpuCx<'_>) -> Result<Vec<Vec<f32>>, CpuError> {
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
            let param = &mut cx.state.params[i];
            let updated = self.optimizer.reference_step(step, param, grad, &mut state);
            if let Err(e) = updated {
                return Err(CpuError {
                    op: "optimizer_step",
                    message: format!("{}: {e}", cx.graph.params[i].name),
                });
            }
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
        Ok(vec![])
    }

    fn encode_gpu(&self, _: &Node, cx: &mut GpuCx<'_, '_>) -> Result<(), GpuError> {
        let flat = cx.flat_state();
        if flat.len == 0 {
            // A model without parameters (a lone Dropout, say) has nothing to update.
            return Ok(());
        }
        // Data-parallel: every rank's gradients are averaged before the same update (DDP).
        if cx.parallel.averages_gradients() {
            cx.exchange(Exchange::Mean {
                region: Region::of(flat.grads),
            });
        }
        let d = super::kernel::dispatch(cx.ctx, &self.optimizer, &flat, cx.step, cx.totals)?;
        cx.push(d);
        Ok(())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
