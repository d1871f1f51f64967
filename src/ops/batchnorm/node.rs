//! BatchNorm1d as graph nodes: the forward (train: batch statistics, running update, saved
//! mean and 1/std; eval: running statistics), with a ReLU and, after it, a dropout fused in,
//! and its backward through both. The layer's running statistics are state buffers it
//! declares when it lowers (`nn::BatchNorm1d`): [running_mean; running_var] and
//! num_batches_tracked.

use std::any::Any;
use std::sync::Arc;

use super::launch::{
    BackwardBindings, ForwardBindings, LayerBindings, Pass, PassDropout, backward_dispatches,
    eval_dispatch, sync_backward_dispatches, sync_train_dispatches, train_dispatches,
};
use super::{
    Affine, BatchNormConfig, RunningStats, Saved, reference_backward, reference_eval,
    reference_train,
};
use crate::gpu::{Binding, GpuError};
use crate::graph::{
    Autodiff, BufferId, BufferValues, CpuCx, CpuError, Exchange, GpuCx, HostState, Mode, Node, Op,
    ParamId, Region, ValueId,
};
use crate::ops::activation::ActivationOp;
use crate::ops::dropout::{self, DropProbability, DropoutOp, MaskStream};
use crate::ops::reduce;

/// One BatchNorm1d layer as its nodes see it: its size and options, its parameters and its
/// state buffers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNormLayer {
    pub features: usize,
    pub config: BatchNormConfig,
    pub gamma: ParamId,
    pub beta: ParamId,
    /// [running_mean; running_var], 2·features floats.
    pub running: BufferId,
    /// num_batches_tracked.
    pub counter: BufferId,
}

/// A dropout folded into the batch norm before it (BatchNorm1d → ReLU → Dropout): its
/// probability and mask stream (the Dropout layer's index).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FoldedDropout {
    pub p: DropProbability,
    pub stream: u32,
}

/// (x) → (y, saved). Train: batch statistics, running-stat update, saved = [mean; invstd].
/// Eval: running statistics; `saved` is not produced. A folded dropout (only after the
/// fused ReLU) applies in train mode: y is then the dropout's output.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNormOp {
    pub layer: BatchNormLayer,
    pub relu: bool,
    pub dropout: Option<FoldedDropout>,
}

/// (x, y, dy, saved) → (dx), with dγ, dβ into the gradient buffer; through the folded
/// dropout and ReLU too. With `bias_grad`, also Σ_rows dx into that parameter's gradient: the
/// bias gradient of the Linear before, handed over by its gradient node
/// ([`Op::absorb_column_sum`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNormBackwardOp {
    pub layer: BatchNormLayer,
    pub relu: bool,
    pub dropout: Option<FoldedDropout>,
    pub bias_grad: Option<ParamId>,
}

/// Each member's probability for a folded dropout (none without one).
fn member_p(
    cx: &GpuCx<'_, '_>,
    dropout: Option<FoldedDropout>,
) -> Result<Vec<DropProbability>, GpuError> {
    match dropout {
        Some(d) => dropout::member_probabilities(cx, d.stream, d.p),
        None => Ok(Vec::new()),
    }
}

/// The pass a node's kernels run over `n` rows of each member, the folded dropout with each
/// member's probability `p`.
fn pass<'p>(
    layer: &BatchNormLayer,
    n: usize,
    relu: bool,
    dropout: Option<FoldedDropout>,
    p: &'p [DropProbability],
) -> Pass<'p> {
    Pass {
        n,
        d: layer.features,
        config: layer.config,
        relu,
        dropout: dropout.map(|d| PassDropout { p, layer: d.stream }),
    }
}

/// The layer's running statistics, out of the host state's buffers.
fn running_stats(state: &HostState, layer: &BatchNormLayer) -> RunningStats {
    let d = layer.features;
    let floats = state.buffers[layer.running.0].f32s().unwrap_or(&[]);
    let count = match &state.buffers[layer.counter.0] {
        BufferValues::Count(c) => c.first().copied().unwrap_or(0),
        BufferValues::F32(_) => 0,
    };
    RunningStats {
        mean: floats.get(..d).unwrap_or(&[]).to_vec(),
        var: floats.get(d..2 * d).unwrap_or(&[]).to_vec(),
        num_batches_tracked: count,
    }
}

/// Writes the layer's running statistics back into the host state's buffers.
fn store_running_stats(state: &mut HostState, layer: &BatchNormLayer, stats: RunningStats) {
    state.buffers[layer.running.0] = BufferValues::F32([stats.mean, stats.var].concat());
    state.buffers[layer.counter.0] = BufferValues::Count(vec![stats.num_batches_tracked]);
}

impl BatchNormOp {
    fn bindings<'a>(&self, cx: &GpuCx<'a, '_>) -> LayerBindings<'a> {
        LayerBindings {
            gamma: cx.param(self.layer.gamma),
            beta: cx.param(self.layer.beta),
            running: cx.buffer(self.layer.running),
            num_batches_tracked: cx.buffer(self.layer.counter),
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
            layer: self.layer,
            relu: self.relu,
            dropout: self.dropout,
            bias_grad: None,
        };
        Some(ad.push_gradient(op, vec![x, y, dy, saved], x))
    }

    fn run_cpu(&self, node: &Node, cx: &mut CpuCx<'_>) -> Result<Vec<Vec<f32>>, CpuError> {
        let layer = &self.layer;
        let x = cx.input(node, 0);
        let mut running = running_stats(cx.state, layer);
        let params = &cx.state.params;
        let affine = Affine {
            gamma: &params[layer.gamma.0],
            beta: &params[layer.beta.0],
            config: layer.config,
            relu: self.relu,
        };
        Ok(match cx.mode {
            Mode::Train => {
                let rows = cx.input_shape(node, 0).0;
                let (y, saved) = reference_train(x, (rows, layer.features), affine, &mut running);
                store_running_stats(cx.state, layer, running);
                let y = match self.dropout {
                    Some(d) => {
                        let stream = MaskStream::new(cx.seed, d.stream);
                        dropout::reference(&y, d.p, stream, cx.step())
                    }
                    None => y,
                };
                vec![y, [saved.mean, saved.invstd].concat()]
            }
            Mode::Eval => vec![reference_eval(x, layer.features, affine, &running)],
        })
    }

    fn encode_gpu(&self, node: &Node, cx: &mut GpuCx<'_, '_>) -> Result<(), GpuError> {
        let n = cx.input_shape(node, 0).0;
        let p = member_p(cx, self.dropout)?;
        let pass = pass(&self.layer, n, self.relu, self.dropout, &p);
        let layer = self.bindings(cx);
        match cx.mode {
            Mode::Train => {
                let bindings = ForwardBindings {
                    layer,
                    x: cx.input(node, 0),
                    saved: cx.output(node, 1),
                    y: cx.output(node, 0),
                };
                if cx.parallel.sync_bn {
                    let total = n * cx.parallel.ranks;
                    let [before, after] = sync_train_dispatches(cx.ctx, &pass, total, bindings)?;
                    before.into_iter().for_each(|d| cx.push(d));
                    cx.exchange(Exchange::Moments {
                        saved: Region::of(bindings.saved),
                        rows: n,
                        features: pass.d,
                    });
                    after.into_iter().for_each(|d| cx.push(d));
                } else {
                    let dispatches = train_dispatches(cx.ctx, &pass, bindings)?;
                    dispatches.into_iter().for_each(|d| cx.push(d));
                }
            }
            Mode::Eval => {
                let (x, y) = (cx.input(node, 0), cx.output(node, 0));
                let dispatch = eval_dispatch(cx.ctx, &pass, layer, x, y)?;
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
    fn bindings<'a>(&self, node: &Node, cx: &GpuCx<'a, '_>) -> BackwardBindings<'a> {
        BackwardBindings {
            x: cx.input(node, 0),
            y: cx.input(node, 1),
            dy: cx.input(node, 2),
            saved: cx.input(node, 3),
            gamma: cx.param(self.layer.gamma),
            dgamma: cx.grad(self.layer.gamma),
            dbeta: cx.grad(self.layer.beta),
            dx: cx.output(node, 0),
            dbias: self.bias_grad.map(|b| cx.grad(b)),
        }
    }

    /// SyncBatchNorm: dx from Σdy and Σdy·x̂ over every rank's batch.
    fn encode_sync(&self, node: &Node, cx: &mut GpuCx<'_, '_>) -> Result<(), GpuError> {
        let n = cx.input_shape(node, 0).0;
        let p = member_p(cx, self.dropout)?;
        let pass = pass(&self.layer, n, self.relu, self.dropout, &p);
        let d = pass.d;
        let sums = [
            cx.scratch_buffer("sync batch norm Σdy", (d * 4) as u64)?,
            cx.scratch_buffer("sync batch norm Σdy·x̂", (d * 4) as u64)?,
        ];
        let bindings = self.bindings(node, cx);
        let total = n * cx.parallel.ranks;
        let [before, after] =
            sync_backward_dispatches(cx.ctx, &pass, total, bindings, [&sums[0], &sums[1]])?;
        before.into_iter().for_each(|d| cx.push(d));
        cx.exchange(Exchange::Sum {
            reads: vec![Region::of(bindings.dbeta), Region::of(bindings.dgamma)],
            writes: sums.iter().map(|b| Region::of(Binding::whole(b))).collect(),
        });
        after.into_iter().for_each(|d| cx.push(d));
        if let Some(dbias) = bindings.dbias {
            let sum = reduce::column_sum_dispatch(cx.ctx, n, d, bindings.dx, dbias)?;
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

    fn run_cpu(&self, node: &Node, cx: &mut CpuCx<'_>) -> Result<Vec<Vec<f32>>, CpuError> {
        let layer = &self.layer;
        let d = layer.features;
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
            Some(f) => {
                let stream = MaskStream::new(cx.seed, f.stream);
                dropout::reference(cx.input(node, 2), f.p, stream, cx.step())
            }
            None => cx.input(node, 2).to_vec(),
        };
        let grads = reference_backward(
            cx.input(node, 0),
            &dy,
            cx.input_shape(node, 0).0,
            d,
            &cx.state.params[layer.gamma.0],
            &saved,
            self.relu.then_some(y),
        );
        cx.grads[layer.gamma.0] = grads.dgamma;
        cx.grads[layer.beta.0] = grads.dbeta;
        if let Some(b) = self.bias_grad {
            cx.grads[b.0] = reduce::reference_column_sum(&grads.dx, d);
        }
        Ok(vec![grads.dx])
    }

    fn encode_gpu(&self, node: &Node, cx: &mut GpuCx<'_, '_>) -> Result<(), GpuError> {
        if cx.parallel.sync_bn {
            return self.encode_sync(node, cx);
        }
        let n = cx.input_shape(node, 0).0;
        let p = member_p(cx, self.dropout)?;
        let pass = pass(&self.layer, n, self.relu, self.dropout, &p);
        let dispatches = backward_dispatches(cx.ctx, &pass, self.bindings(node, cx))?;
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
