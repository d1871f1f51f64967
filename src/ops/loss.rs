//! The rule every loss that ends a graph follows, written once: one node reads the logits and
//! the targets and writes per-row terms (scaled loss, correct, counted, 0) and, in train
//! mode, dlogits; it absorbs the metrics node after it (folding its rows into the running
//! totals itself, up to [`FOLD_MAX_ROWS`] rows) and the column sum of dlogits (the last
//! Linear's bias gradient). Each loss says only what differs — its CPU reference and its
//! kernel — through [`LossKernel`]: cross-entropy in `softmax_xent.rs`, BCE in `bce.rs`.

use std::any::Any;
use std::fmt::Debug;
use std::sync::Arc;

use super::reduce::{self, FOLD_MAX_ROWS};
use crate::gpu::{Binding, Dispatch, GpuError};
use crate::graph::{Autodiff, CpuCx, CpuError, GpuCx, Graph, Mode, Node, Op, ParamId, ValueId};

/// What a loss's CPU reference gives for a batch.
pub struct LossReference {
    /// Per row: (scaled loss, correct, counted, 0).
    pub rows: Vec<f32>,
    /// The batch's reduced loss.
    pub loss: f32,
    /// ∂loss/∂logits, shaped like the logits.
    pub grad: Vec<f32>,
}

/// The buffers of a loss kernel's dispatch.
#[derive(Clone, Copy)]
pub struct LossBindings<'a> {
    /// The step uniform; its `loss_scale` is the loss's scale of the batch's targets.
    pub step: Binding<'a>,
    pub logits: Binding<'a>,
    pub targets: Binding<'a>,
    /// [n, 4]: per row (scaled loss, correct, counted, 0).
    pub rows: Binding<'a>,
    /// ∂loss/∂logits, in train mode.
    pub grad: Option<Binding<'a>>,
    /// The running totals, when the loss folds the batch into them itself.
    pub totals: Option<Binding<'a>>,
    /// The gradient's column sums (the last Linear's bias gradient), when it folds.
    pub bias_grad: Option<Binding<'a>>,
}

/// What differs between losses: the name, the CPU reference and the kernel.
pub trait LossKernel: Clone + Debug + PartialEq + Send + Sync + 'static {
    /// The node's name in reports (`"cross_entropy"`).
    const NAME: &'static str;

    /// The CPU reference over `logits` [n, classes] with the batch's `labels`.
    fn reference(
        &self,
        graph: &Graph,
        logits: &[f32],
        classes: usize,
        labels: &[u32],
    ) -> LossReference;

    /// The loss kernel over `shape` = (rows, classes) logits.
    fn dispatch(
        &self,
        cx: &GpuCx<'_, '_>,
        shape: (usize, usize),
        bindings: LossBindings<'_>,
    ) -> Result<Dispatch, GpuError>;
}

/// (logits, target) → (rows, dlogits): a loss as the graph's last forward node. Eval writes
/// no gradient. With `metrics`, the node has absorbed the metrics node after it and folds the
/// rows into the running totals itself: one dispatch for both up to [`FOLD_MAX_ROWS`] rows.
/// With `bias_grad`, it also writes the column sums of dlogits there in train mode (the last
/// Linear's bias gradient, handed over by its gradient node: [`Op::absorb_column_sum`]).
#[derive(Clone, Debug, PartialEq)]
pub struct LossOp<K> {
    pub kind: K,
    pub metrics: bool,
    pub bias_grad: Option<ParamId>,
}

impl<K: LossKernel> LossOp<K> {
    /// The loss alone, before any fusion.
    pub fn new(kind: K) -> Self {
        Self {
            kind,
            metrics: false,
            bias_grad: None,
        }
    }
}

impl<K: LossKernel> Op for LossOp<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn outputs_in(&self, mode: Mode, outputs: usize) -> usize {
        match mode {
            Mode::Train => outputs,
            Mode::Eval => 1,
        }
    }

    fn has_params(&self) -> bool {
        false
    }

    fn backward(&self, _: &Node, _: ValueId, _: &mut Autodiff<'_>) -> Option<ValueId> {
        // The loss node writes its own gradient (dlogits) in the forward pass.
        None
    }

    fn run_cpu(&self, node: &Node, cx: &mut CpuCx<'_>) -> Result<Vec<Vec<f32>>, CpuError> {
        let c = cx.input_shape(node, 0).1;
        let LossReference { rows, loss, grad } =
            self.kind
                .reference(cx.graph, cx.input(node, 0), c, cx.labels);
        *cx.loss = loss;
        if self.metrics {
            reduce::reference_fold(&rows, cx);
        }
        Ok(match cx.mode {
            Mode::Train => {
                if let Some(b) = self.bias_grad {
                    cx.grads[b.0] = reduce::reference_column_sum(&grad, c);
                }
                vec![rows, grad]
            }
            Mode::Eval => vec![rows],
        })
    }

    fn encode_gpu(&self, node: &Node, cx: &mut GpuCx<'_, '_>) -> Result<(), GpuError> {
        let (n, c) = cx.input_shape(node, 0);
        // Folded here up to FOLD_MAX_ROWS; beyond, the metrics and column-sum kernels follow.
        let fold = self.metrics && n <= FOLD_MAX_ROWS;
        let grad = (cx.mode == Mode::Train).then(|| cx.output(node, 1));
        let bias_grad = grad.and(self.bias_grad).map(|b| cx.grad(b));
        let bindings = LossBindings {
            step: cx.step,
            logits: cx.input(node, 0),
            targets: cx.input(node, 1),
            rows: cx.output(node, 0),
            grad,
            totals: fold.then_some(cx.totals),
            bias_grad: bias_grad.filter(|_| fold),
        };
        let d = self.kind.dispatch(cx, (n, c), bindings)?;
        cx.push(d);
        let grad_sums = grad.zip(bias_grad);
        let rest =
            reduce::after_unfolded_loss(cx, (n, c), fold, self.metrics, bindings.rows, grad_sums)?;
        rest.into_iter().for_each(|d| cx.push(d));
        Ok(())
    }

    fn absorb_column_sum(&self, param: ParamId, output: usize) -> Option<Arc<dyn Op>> {
        // dlogits is output 1.
        (output == 1 && self.bias_grad.is_none()).then(|| {
            Arc::new(Self {
                bias_grad: Some(param),
                ..self.clone()
            }) as Arc<dyn Op>
        })
    }

    fn absorb(&self, next: &dyn Op) -> Option<Arc<dyn Op>> {
        let metrics = next.as_any().downcast_ref::<reduce::MetricsOp>().is_some();
        (metrics && !self.metrics).then(|| {
            Arc::new(Self {
                metrics: true,
                ..self.clone()
            }) as Arc<dyn Op>
        })
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
