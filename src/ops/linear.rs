//! `nn.Linear` as graph nodes: y = x·Wᵀ + b (then ReLU when one is fused), and its backward,
//! dx = dy·W, dW = dyᵀ·x, db = Σ_rows dy. The products are [`matmul`]'s kernels, the bias
//! gradient [`reduce`]'s column sum.

use std::any::Any;
use std::sync::Arc;

use super::activation::{ActivationBackwardOp, ActivationOp};
use super::matmul::{self, Epilogue, MatmulBindings, MatmulShape};
use super::reduce;
use crate::gpu::GpuError;
use crate::graph::{Autodiff, Node, Op, ParamId, ValueId};
use crate::graph::{CpuCx, CpuError, GpuCx};

/// (x) → (y): y = x·Wᵀ + b, then ReLU if fused.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinearOp {
    pub weight: ParamId,
    pub bias: Option<ParamId>,
    pub relu: bool,
}

/// (dy) → (dx): dx = dy·W.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinearGradInputOp {
    pub weight: ParamId,
}

/// (dy, x) → (): dW = dyᵀ·x, db = Σ_rows dy, into the gradient buffer (db, where the node
/// that wrote dy can sum it on the way, is handed to that node: [`Op::yield_column_sum`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinearGradParamsOp {
    pub weight: ParamId,
    pub bias: Option<ParamId>,
}

impl Op for LinearOp {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn has_params(&self) -> bool {
        true
    }

    fn backward(&self, node: &Node, dy: ValueId, ad: &mut Autodiff<'_>) -> Option<ValueId> {
        let (x, y) = (node.inputs[0], node.outputs[0]);
        // y = relu(x·Wᵀ + b): the ReLU's mask first, from y itself.
        let dz = if self.relu {
            ad.push_gradient(ActivationBackwardOp::relu(), vec![y, dy], y)
        } else {
            dy
        };
        let (weight, bias) = (self.weight, self.bias);
        ad.push(LinearGradParamsOp { weight, bias }, vec![dz, x], vec![]);
        ad.needs_grad(x)
            .then(|| ad.push_gradient(LinearGradInputOp { weight }, vec![dz], x))
    }

    fn run_cpu(&self, node: &Node, cx: &mut CpuCx<'_>) -> Result<Vec<Vec<f32>>, CpuError> {
        let w = &cx.state.params[self.weight.0];
        let shape =
            MatmulShape::linear_forward(cx.input_shape(node, 0).0, &param_shape(cx, self.weight));
        let b = self.bias.map(|b| cx.state.params[b.0].as_slice());
        Ok(vec![matmul::reference(
            shape,
            cx.input(node, 0),
            w,
            b,
            self.relu,
        )])
    }

    fn encode_gpu(&self, node: &Node, cx: &mut GpuCx<'_, '_>) -> Result<(), GpuError> {
        let rows = cx.input_shape(node, 0).0;
        let shape = MatmulShape::linear_forward(rows, &cx.graph.param(self.weight).shape);
        let epilogue = Epilogue {
            bias: self.bias.is_some(),
            relu: self.relu,
        };
        let bindings = MatmulBindings {
            a: cx.input(node, 0),
            b: cx.param(self.weight),
            bias: self.bias.map(|b| cx.param(b)),
            c: cx.output(node, 0),
        };
        matmul::encode(cx, shape, epilogue, bindings)
    }

    fn absorb(&self, next: &dyn Op) -> Option<Arc<dyn Op>> {
        let relu = next.as_any().downcast_ref::<ActivationOp>()?.is_relu();
        (relu && !self.relu).then(|| {
            Arc::new(Self {
                relu: true,
                ..*self
            }) as Arc<dyn Op>
        })
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Op for LinearGradInputOp {
    fn name(&self) -> &'static str {
        "linear_grad_input"
    }

    fn has_params(&self) -> bool {
        true
    }

    fn backward(&self, _: &Node, _: ValueId, _: &mut Autodiff<'_>) -> Option<ValueId> {
        None
    }

    fn run_cpu(&self, node: &Node, cx: &mut CpuCx<'_>) -> Result<Vec<Vec<f32>>, CpuError> {
        let rows = cx.input_shape(node, 0).0;
        let shape = MatmulShape::linear_grad_input(rows, &param_shape(cx, self.weight));
        let w = &cx.state.params[self.weight.0];
        Ok(vec![matmul::reference(
            shape,
            cx.input(node, 0),
            w,
            None,
            false,
        )])
    }

    fn encode_gpu(&self, node: &Node, cx: &mut GpuCx<'_, '_>) -> Result<(), GpuError> {
        let rows = cx.input_shape(node, 0).0;
        let shape = MatmulShape::linear_grad_input(rows, &cx.graph.param(self.weight).shape);
        let bindings = MatmulBindings {
            a: cx.input(node, 0),
            b: cx.param(self.weight),
            bias: None,
            c: cx.output(node, 0),
        };
        matmul::encode(cx, shape, Epilogue::default(), bindings)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Op for LinearGradParamsOp {
    fn name(&self) -> &'static str {
        "linear_grad_params"
    }

    fn has_params(&self) -> bool {
        true
    }

    fn backward(&self, _: &Node, _: ValueId, _: &mut Autodiff<'_>) -> Option<ValueId> {
        None
    }

    fn run_cpu(&self, node: &Node, cx: &mut CpuCx<'_>) -> Result<Vec<Vec<f32>>, CpuError> {
        let (rows, cols) = cx.input_shape(node, 0);
        let dy = cx.input(node, 0);
        let shape = MatmulShape::linear_grad_weight(rows, &param_shape(cx, self.weight));
        cx.grads[self.weight.0] = matmul::reference(shape, dy, cx.input(node, 1), None, false);
        if let Some(b) = self.bias {
            cx.grads[b.0] = reduce::reference_column_sum(dy, cols);
        }
        Ok(vec![])
    }

    fn encode_gpu(&self, node: &Node, cx: &mut GpuCx<'_, '_>) -> Result<(), GpuError> {
        let (rows, cols) = cx.input_shape(node, 0);
        let shape = MatmulShape::linear_grad_weight(rows, &cx.graph.param(self.weight).shape);
        let bindings = MatmulBindings {
            a: cx.input(node, 0),
            b: cx.input(node, 1),
            bias: None,
            c: cx.grad(self.weight),
        };
        matmul::encode(cx, shape, Epilogue::default(), bindings)?;
        if let Some(b) = self.bias {
            let sum =
                reduce::column_sum_dispatch(cx.ctx, rows, cols, cx.input(node, 0), cx.grad(b))?;
            cx.push(sum);
        }
        Ok(())
    }

    fn yield_column_sum(&self) -> Option<(ParamId, Arc<dyn Op>)> {
        let bias = self.bias?;
        Some((
            bias,
            Arc::new(Self {
                bias: None,
                ..*self
            }),
        ))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

fn param_shape(cx: &CpuCx<'_>, id: ParamId) -> Vec<usize> {
    cx.graph.param(id).shape.clone()
}
