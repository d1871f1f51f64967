//! Element-wise activations (ReLU, Sigmoid, Tanh, GELU, LeakyReLU): layers of a Sequential
//! and ops of the graph, all through one launcher and one kernel template.
//!
//! An activation is one file here and one shader beside `shaders/activation.wgsl`: the
//! file implements [`Activation`] (its torch.nn name, its spec token, its CPU reference
//! forward and backward) and defines its [`Token`]; the shader defines
//! `fn act_forward(x: f32, p: f32) -> f32` and `fn act_backward(v: f32, dy: f32, p: f32) -> f32`,
//! where `v` is the forward's input or its output, as [`Activation::derivative_from`] says
//! and `p` is [`Activation::param`], which the CPU reference receives too. The line in the `activations!` invocation below
//! registers it: the spec parser, the layer type and the graph pick it up from there.

use std::any::Any;
use std::fmt::Debug;
use std::sync::Arc;

use super::{OpError, expect_shape, groups};
use crate::gpu::uniform_struct;
use crate::gpu::{
    ActivationShader, Binding, Dispatch, GpuContext, GpuError, GpuTensor, Kernel, Shader, grid_1d,
};
use crate::graph::{Autodiff, Node, Op, ValueId};
use crate::graph::{CpuCx, CpuError, GpuCx};

/// Declares each activation's module, re-exports its layer type, and lists its spec token.
macro_rules! activations {
    ($($module:ident :: $layer:ident),* $(,)?) => {
        $(mod $module; pub use $module::$layer;)*

        /// The layer types, for `nn` to re-export.
        pub mod layers {
            pub use super::{$($layer),*};
        }

        /// Every activation's spec token, in the order the spec documentation lists them.
        pub const TOKENS: &[Token] = &[$($module::TOKEN),*];
    };
}

activations!(
    relu::ReLU,
    sigmoid::Sigmoid,
    tanh::Tanh,
    gelu::GELU,
    leaky_relu::LeakyReLU,
);

/// ReLU's CPU reference, which Linear's and BatchNorm's fused epilogues share.
pub use relu::{relu, relu_backward};

#[cfg(test)]
mod tests;

/// Which value of the forward the derivative is computed from (the one the backward reads
/// and so the one kept alive): the input x, or the output y (cheaper where it suffices, and
/// what PyTorch's autograd saves for ReLU, Sigmoid and Tanh).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DerivativeFrom {
    Input,
    Output,
}

/// An element-wise activation y = f(x), with dx = dy · f'(x).
pub trait Activation: Debug + Send + Sync + 'static {
    /// The torch.nn class name (`"GELU"`).
    fn kind(&self) -> &'static str;

    /// The spec token that builds it again (`"gelu:tanh"`, `"leaky_relu:0.2"`).
    fn spec(&self) -> String;

    /// The scalar its functions take as `p` (LeakyReLU's slope; 0 for one without). The
    /// CPU reference receives it as the shader does, from here, so the two cannot disagree;
    /// there is no default, so an activation says what it passes.
    fn param(&self) -> f32;

    /// The CPU reference of the forward, as PyTorch computes it (NaN in, NaN out), with `p`
    /// = [`Activation::param`].
    fn forward(&self, x: f32, p: f32) -> f32;

    /// What [`Activation::backward`] receives as `v`.
    fn derivative_from(&self) -> DerivativeFrom;

    /// The CPU reference of the backward: dx from `v` (the forward's input or output) and dy,
    /// with `p` = [`Activation::param`].
    fn backward(&self, v: f32, dy: f32, p: f32) -> f32;

    /// Its WGSL functions (`shaders/activation/<name>.wgsl`) and the names its dispatches
    /// are reported under.
    fn shader(&self) -> &'static ActivationShader;

    fn as_any(&self) -> &dyn Any;
}

/// How a spec token names an activation and builds it from its arguments.
#[derive(Clone, Copy, Debug)]
pub struct Token {
    /// Names it is written as (lower case), the first being the canonical one.
    pub names: &'static [&'static str],
    /// The form for messages and docs (`"gelu[:tanh]"`).
    pub usage: &'static str,
    /// From the token's arguments (after the name) to the activation, or what is wrong.
    pub parse: fn(&[&str]) -> Result<AnyActivation, String>,
}

/// The activation a spec token names, if any: `None` when no activation has that name.
pub fn parse_token(name: &str, args: &[&str]) -> Option<Result<AnyActivation, String>> {
    TOKENS
        .iter()
        .find(|t| t.names.contains(&name))
        .map(|t| (t.parse)(args))
}

/// A shared handle to any activation: what a layer and a graph node hold.
#[derive(Clone, Debug)]
pub struct AnyActivation(Arc<dyn Activation>);

impl AnyActivation {
    pub fn new(activation: impl Activation) -> Self {
        Self(Arc::new(activation))
    }

    /// The activation as its concrete type, when it is one.
    pub fn downcast<T: Activation>(&self) -> Option<&T> {
        self.0.as_any().downcast_ref()
    }
}

impl std::ops::Deref for AnyActivation {
    type Target = dyn Activation;

    fn deref(&self) -> &Self::Target {
        self.0.as_ref()
    }
}

impl PartialEq for AnyActivation {
    fn eq(&self, other: &Self) -> bool {
        self.kind() == other.kind() && self.spec() == other.spec()
    }
}

/// CPU reference: y = f(x) element-wise.
pub fn reference_forward(activation: &dyn Activation, x: &[f32]) -> Vec<f32> {
    let p = activation.param();
    x.iter().map(|&v| activation.forward(v, p)).collect()
}

/// CPU reference: dx = dy · f'(x), with `v` the forward's input or output.
pub fn reference_backward(activation: &dyn Activation, v: &[f32], dy: &[f32]) -> Vec<f32> {
    let p = activation.param();
    v.iter()
        .zip(dy)
        .map(|(&v, &g)| activation.backward(v, g, p))
        .collect()
}

uniform_struct! {
    /// Mirrors `Params` in `shaders/activation.wgsl`.
    struct Params {
        len: u32,
        param: f32,
        _pad: [u32; 2],
    }
}

const WG: u32 = 256;
const V: u32 = 1;
const DY: u32 = 2;
const OUT: u32 = 3;

fn kernel(activation: &dyn Activation, entry: &'static str) -> Kernel {
    let shader = activation.shader();
    let label = match entry {
        "forward" => shader.name,
        _ => shader.backward_name,
    };
    Kernel::new(Shader::Activation(shader), entry)
        .with("WG", WG)
        .labelled(label)
}

/// `entry` over `len` elements of each member the bindings hold: element-wise, a stacked
/// plan's members are one longer array.
fn launch(
    ctx: &GpuContext,
    activation: &dyn Activation,
    entry: &'static str,
    len: usize,
    bindings: &[(u32, Binding<'_>)],
) -> Result<Dispatch, GpuError> {
    let members = bindings.first().map_or(1, |(_, b)| b.members()) as usize;
    let len = len * members;
    let params = Params {
        len: len as u32,
        param: activation.param(),
        _pad: [0; 2],
    };
    let workgroups = grid_1d(
        groups(len, WG),
        ctx.limits().max_compute_workgroups_per_dimension,
    );
    ctx.dispatch_at(
        &kernel(activation, entry),
        Some(&params),
        bindings,
        workgroups,
    )
}

/// y = f(x) over `len` elements (of each member).
pub fn forward_dispatch(
    ctx: &GpuContext,
    activation: &dyn Activation,
    len: usize,
    x: Binding<'_>,
    y: Binding<'_>,
) -> Result<Dispatch, GpuError> {
    launch(ctx, activation, "forward", len, &[(V, x), (OUT, y)])
}

/// dx = dy · f'(x) over `len` elements (of each member), `v` being the forward's input or
/// output.
pub fn backward_dispatch(
    ctx: &GpuContext,
    activation: &dyn Activation,
    len: usize,
    v: Binding<'_>,
    dy: Binding<'_>,
    dx: Binding<'_>,
) -> Result<Dispatch, GpuError> {
    launch(
        ctx,
        activation,
        "backward",
        len,
        &[(V, v), (DY, dy), (OUT, dx)],
    )
}

/// The activation of a GPU tensor.
pub fn forward(
    ctx: &GpuContext,
    activation: &dyn Activation,
    x: &GpuTensor,
) -> Result<GpuTensor, OpError> {
    let y = GpuTensor::zeros(ctx, x.shape(), "activation.y")?;
    let d = forward_dispatch(ctx, activation, x.len(), x.binding(), y.binding())?;
    ctx.submit(&[&d]);
    Ok(y)
}

/// The activation's backward from `v` (its input or output, see
/// [`Activation::derivative_from`]) and the upstream gradient `dy`.
pub fn backward(
    ctx: &GpuContext,
    activation: &dyn Activation,
    v: &GpuTensor,
    dy: &GpuTensor,
) -> Result<GpuTensor, OpError> {
    expect_shape("activation backward", "grad_output", dy.shape(), v.shape())?;
    let dx = GpuTensor::zeros(ctx, v.shape(), "activation.dx")?;
    let d = backward_dispatch(
        ctx,
        activation,
        v.len(),
        v.binding(),
        dy.binding(),
        dx.binding(),
    )?;
    ctx.submit(&[&d]);
    Ok(dx)
}

/// (x) → (y): an activation layer in the graph.
#[derive(Clone, Debug, PartialEq)]
pub struct ActivationOp {
    pub activation: AnyActivation,
}

/// (v, dy) → (dx), v being the forward's input or output.
#[derive(Clone, Debug, PartialEq)]
pub struct ActivationBackwardOp {
    pub activation: AnyActivation,
}

impl ActivationOp {
    pub fn new(activation: AnyActivation) -> Self {
        Self { activation }
    }

    /// Whether it is a ReLU, which Linear and BatchNorm fuse as an epilogue.
    pub fn is_relu(&self) -> bool {
        self.activation.downcast::<ReLU>().is_some()
    }
}

impl ActivationBackwardOp {
    /// ReLU's backward from the output: for a ReLU fused into the op before it.
    pub fn relu() -> Self {
        Self {
            activation: AnyActivation::new(ReLU),
        }
    }
}

impl Op for ActivationOp {
    fn name(&self) -> &'static str {
        self.activation.shader().name
    }

    fn has_params(&self) -> bool {
        false
    }

    fn backward(&self, node: &Node, dy: ValueId, ad: &mut Autodiff<'_>) -> Option<ValueId> {
        let x = node.inputs[0];
        if !ad.needs_grad(x) {
            return None;
        }
        let v = match self.activation.derivative_from() {
            DerivativeFrom::Input => x,
            DerivativeFrom::Output => node.outputs[0],
        };
        let op = ActivationBackwardOp {
            activation: self.activation.clone(),
        };
        Some(ad.push_gradient(op, vec![v, dy], x))
    }

    fn run_cpu(&self, node: &Node, cx: &mut CpuCx<'_>) -> Result<Vec<Vec<f32>>, CpuError> {
        Ok(vec![reference_forward(
            &*self.activation,
            cx.input(node, 0),
        )])
    }

    fn encode_gpu(&self, node: &Node, cx: &mut GpuCx<'_, '_>) -> Result<(), GpuError> {
        let len = cx.graph.value(node.inputs[0]).len();
        let d = forward_dispatch(
            cx.ctx,
            &*self.activation,
            len,
            cx.input(node, 0),
            cx.output(node, 0),
        )?;
        cx.push(d);
        Ok(())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Op for ActivationBackwardOp {
    #[allow(clippy::misnamed_getters)] // the backward node is named after the backward
    fn name(&self) -> &'static str {
        self.activation.shader().backward_name
    }

    fn has_params(&self) -> bool {
        false
    }

    fn backward(&self, _: &Node, _: ValueId, _: &mut Autodiff<'_>) -> Option<ValueId> {
        None
    }

    fn run_cpu(&self, node: &Node, cx: &mut CpuCx<'_>) -> Result<Vec<Vec<f32>>, CpuError> {
        let (v, dy) = (cx.input(node, 0), cx.input(node, 1));
        Ok(vec![reference_backward(&*self.activation, v, dy)])
    }

    fn encode_gpu(&self, node: &Node, cx: &mut GpuCx<'_, '_>) -> Result<(), GpuError> {
        let len = cx.graph.value(node.inputs[0]).len();
        let d = backward_dispatch(
            cx.ctx,
            &*self.activation,
            len,
            cx.input(node, 0),
            cx.input(node, 1),
            cx.output(node, 0),
        )?;
        cx.push(d);
        Ok(())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// For activations that take no argument: the parse function of their [`Token`].
fn no_args<A: Activation>(
    name: &str,
    make: impl Fn() -> A,
    args: &[&str],
) -> Result<AnyActivation, String> {
    if args.is_empty() {
        Ok(AnyActivation::new(make()))
    } else {
        Err(format!("{name} takes no argument"))
    }
}
