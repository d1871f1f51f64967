//! BatchNorm1d as graph nodes: the forward (train: batch statistics, running update, saved
//! mean and 1/std; eval: running statistics), with a ReLU and, after it, a dropout fused in,
//! and its backward through both.

use std::any::Any;
use std::sync::Arc;

use super::launch::{
    LayerBindings, backward_dispatches, eval_dispatch, sync_backward_dispatches,
    sync_train_dispatches, train_dispatches,
};
use super::{FusedDropout, Saved, reference_backward, reference_eval, reference_train};
use crate::exec::gpu::{Exchange, Region};
use crate::exec::{CpuCx, GpuCx};
use crate::gpu::GpuError;
use crate::graph::{Autodiff, FoldedDropout, Mode, Node, Op, ParamId, ValueId};
use crate::ops::activation::ActivationOp;
use crate::ops::dropout::{self, DropoutOp};
use crate::ops::reduce;

/// (x) → (y, saved). Train: batch statistics, running-stat update, saved = [mean; invstd].
/// Eval: running statistics; `saved` is not produced. A folded dropout (only after the
/// fused ReLU) applies in train mode: y is then the dropout's output.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNormOp {
    /// Index of the layer's state in `Graph::batch_norms`.
    pub bn: usize,
    pub relu: bool,
    pub dropout: Option<FoldedDropout>,
}

/// (x, y, dy, saved) → (dx), with dγ, dβ into the gradient buffer; through the folded
/// dropout and ReLU too. With `bias_grad`, also Σ_rows dx into that parameter's gradient: the
/// bias gradient of the Linear before, handed over by its gradient node
/// ([`Op::absorb_column_sum`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNormBackwardOp {
    pub bn: usize,
    pub relu: bool,
    pub dropout: Option<FoldedDropout>,
    pub bias_grad: Option<ParamId>,
}

fn fused(cx_seed: u64, dropout: Option<FoldedDropout>) -> Option<FusedDropout> {
    dropout.map(|d| FusedDropout {
        p: d.p,
        stream: dropout::MaskStream {
            seed: cx_seed,
            layer: d.stream,
        },
    })
}

impl BatchNormOp {
    fn layer<'a>(&self, cx: &GpuCx<'a, '_>) -> LayerBindings<'a> {
        let info = &cx.graph.batch_norms[self.bn];
        LayerBindings {
            gamma: cx.param(info.gamma),
            beta: cx.param(info.beta),
            running: cx.state.running_binding(self.bn, info.features),
            num_batches_tracked: cx.state.counter_binding(self.bn),
            step: cx.step,
        }
    }
}

impl Op for BatchNormOp {
    fn name(&self) -> &'static str {
        "batch_norm"
    }

    fn outputs_in(&self, mode: Mode, outputs: usize) -> usize {
        match mode {
            Mode::Train => outputs,
            Mode::Eval => 1,
        }
    }

    fn has_params(&self) -> bool {
        true
    }

    fn backward(&self, node: &Node, dy: ValueId, ad: &mut Autodiff<'_>) -> Option<ValueId> {
        // Always run: it also gives dγ and dβ.
        let (x, y, saved) = (node.inputs[0], node.outputs[0], node.outputs[1]);
        let op = BatchNormBackwardOp {
            bn: self.bn,
            relu: self.relu,
            dropout: self.dropout,
            bias_grad: None,
        };
        Some(ad.push_gradient(op, vec![x, y, dy, saved], x))
    }

    fn run_cpu(&self, node: &Node, cx: &mut CpuCx<'_>) -> Vec<Vec<f32>> {
        let info = &cx.graph.batch_norms[self.bn];
        let x = cx.input(node, 0);
        let gamma = &cx.state.params[info.gamma.0];
        let beta = &cx.state.params[info.beta.0];
        match cx.mode {
            Mode::Train => {
                let rows = cx.input_shape(node, 0).0;
                let (y, saved) = reference_train(
                    x,
                    rows,
                    info.features,
                    gamma,
                    beta,
                    info.config,
                    &mut cx.state.running[self.bn],
                    self.relu,
                );
                let y = match self.dropout {
                    Some(d) => dropout::reference(&y, d.p, cx.stream(d.stream), cx.step()),
                    None => y,
                };
                vec![y, [saved.mean, saved.invstd].concat()]
            }
            Mode::Eval => {
                let running = &cx.state.running[self.bn];
                let y = reference_eval(
                    x,
                    info.features,
                    gamma,
                    beta,
                    info.config,
                    running,
                    self.relu,
                );
                vec![y]
            }
        }
    }

    fn encode_gpu(&self, node: &Node, cx: &mut GpuCx<'_, '_>) -> Result<(), GpuError> {
        let info = &cx.graph.batch_norms[self.bn];
        let (n, d) = (cx.input_shape(node, 0).0, info.features);
        let layer = self.layer(cx);
        match cx.mode {
            Mode::Train if cx.parallel.sync_bn => {
                let saved = cx.output(node, 1);
                let [before, after] = sync_train_dispatches(
                    cx.ctx,
                    n,
                    d,
                    n * cx.parallel.ranks,
                    info.config,
                    self.relu,
                    fused(cx.seed, self.dropout),
                    layer,
                    cx.input(node, 0),
                    saved,
                    cx.output(node, 0),
                )?;
                before.into_iter().for_each(|d| cx.push(d));
                cx.exchange(Exchange::BatchNormMoments {
                    saved: Region::of(saved),
                    rows: n,
                    features: d,
                });
                after.into_iter().for_each(|d| cx.push(d));
            }
            Mode::Train => {
                let dispatches = train_dispatches(
                    cx.ctx,
                    n,
                    d,
                    info.config,
                    self.relu,
                    fused(cx.seed, self.dropout),
                    layer,
                    cx.input(node, 0),
                    cx.output(node, 1),
                    cx.output(node, 0),
                )?;
                dispatches.into_iter().for_each(|d| cx.push(d));
            }
            Mode::Eval => {
                let dispatch = eval_dispatch(
                    cx.ctx,
                    n,
                    d,
                    info.config,
                    self.relu,
                    layer,
                    cx.input(node, 0),
                    cx.output(node, 0),
                )?;
                cx.push(dispatch);
            }
        }
        Ok(())
    }

    /// BatchNorm → ReLU, then (ReLU fused) → Dropout: one pass instead of three, and the
    /// backward reads the dropout's mask off the output's zeros.
    fn absorb(&self, next: &dyn Op) -> Option<Arc<dyn Op>> {
        let next = next.as_any();
        if let Some(a) = next.downcast_ref::<ActivationOp>() {
            return (a.is_relu() && !self.relu).then(|| {
                Arc::new(Self {
                    relu: true,
                    ..*self
                }) as Arc<dyn Op>
            });
        }
        let d = next.downcast_ref::<DropoutOp>()?;
        (self.relu && self.dropout.is_none()).then(|| {
            let dropout = Some(FoldedDropout {
                p: d.p,
                stream: d.stream,
            });
            Arc::new(Self { dropout, ..*self }) as Arc<dyn Op>
        })
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl BatchNormBackwardOp {
    /// SyncBatchNorm: dx from Σdy and Σdy·x̂ over every rank's batch.
    fn encode_sync(&self, node: &Node, cx: &mut GpuCx<'_, '_>) -> Result<(), GpuError> {
        let info = &cx.graph.batch_norms[self.bn];
        let (n, d) = (cx.input_shape(node, 0).0, info.features);
        let sums = [
            cx.scratch_buffer("sync batch norm Σdy", (d * 4) as u64)?,
            cx.scratch_buffer("sync batch norm Σdy·x̂", (d * 4) as u64)?,
        ];
        let (dgamma, dbeta) = (cx.grad(info.gamma), cx.grad(info.beta));
        let [before, after] = sync_backward_dispatches(
            cx.ctx,
            n,
            d,
            n * cx.parallel.ranks,
            self.relu,
            fused(cx.seed, self.dropout),
            cx.input(node, 0),
            cx.input(node, 1),
            cx.input(node, 2),
            cx.input(node, 3),
            cx.param(info.gamma),
            dgamma,
            dbeta,
            [&sums[0], &sums[1]],
            cx.output(node, 0),
        )?;
        before.into_iter().for_each(|d| cx.push(d));
        cx.exchange(Exchange::BatchNormGradSums {
            dbeta: Region::of(dbeta),
            dgamma: Region::of(dgamma),
            sums: sums.map(|b| Region::of(crate::gpu::Binding::whole(&b))),
        });
        after.into_iter().for_each(|d| cx.push(d));
        if let Some(b) = self.bias_grad {
            let sum = reduce::column_sum_dispatch(cx.ctx, n, d, cx.output(node, 0), cx.grad(b))?;
            cx.push(sum);
        }
        Ok(())
    }
}

impl Op for BatchNormBackwardOp {
    fn name(&self) -> &'static str {
        "batch_norm_backward"
    }

    fn has_params(&self) -> bool {
        true
    }

    fn backward(&self, _: &Node, _: ValueId, _: &mut Autodiff<'_>) -> Option<ValueId> {
        None
    }

    fn run_cpu(&self, node: &Node, cx: &mut CpuCx<'_>) -> Vec<Vec<f32>> {
        let info = &cx.graph.batch_norms[self.bn];
        let d = info.features;
        let s = cx.input(node, 3);
        let saved = Saved {
            mean: s[..d].to_vec(),
            invstd: s[d..].to_vec(),
        };
        // Through the dropout first (its mask, recomputed), then the ReLU: the dropout's
        // output is 0 where either stopped the gradient, so it masks as the ReLU's own
        // output would.
        let y = cx.input(node, 1);
        let dy = match self.dropout {
            Some(f) => dropout::reference(cx.input(node, 2), f.p, cx.stream(f.stream), cx.step()),
            None => cx.input(node, 2).to_vec(),
        };
        let grads = reference_backward(
            cx.input(node, 0),
            &dy,
            cx.input_shape(node, 0).0,
            d,
            &cx.state.params[info.gamma.0],
            &saved,
            self.relu.then_some(y),
        );
        cx.grads[info.gamma.0] = grads.dgamma;
        cx.grads[info.beta.0] = grads.dbeta;
        if let Some(b) = self.bias_grad {
            cx.grads[b.0] = reduce::reference_column_sum(&grads.dx, d);
        }
        vec![grads.dx]
    }

    fn encode_gpu(&self, node: &Node, cx: &mut GpuCx<'_, '_>) -> Result<(), GpuError> {
        let info = &cx.graph.batch_norms[self.bn];
        if cx.parallel.sync_bn {
            return self.encode_sync(node, cx);
        }
        let dispatches = backward_dispatches(
            cx.ctx,
            cx.input_shape(node, 0).0,
            info.features,
            self.relu,
            fused(cx.seed, self.dropout),
            cx.input(node, 0),
            cx.input(node, 1),
            cx.input(node, 2),
            cx.input(node, 3),
            cx.param(info.gamma),
            cx.grad(info.gamma),
            cx.grad(info.beta),
            cx.output(node, 0),
            self.bias_grad.map(|b| cx.grad(b)),
        )?;
        dispatches.into_iter().for_each(|d| cx.push(d));
        Ok(())
    }

    fn absorb_column_sum(&self, param: ParamId, output: usize) -> Option<Arc<dyn Op>> {
        (output == 0 && self.bias_grad.is_none()).then(|| {
            Arc::new(Self {
                bias_grad: Some(param),
                ..*self
            }) as Arc<dyn Op>
        })
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
