//! The fitted preprocessing (`data::preprocess`) as the graph's fixed first stage:
//! y = A·((x − shift) ⊘ divisor) per sample. The element-wise part is
//! `shaders/preprocess.wgsl`; the matrix (PCA, whitening, ZCA) is [`matmul`]'s NT product,
//! so PCA:K of a batch \[N, D\] costs one \[N, D\]·\[K, D\]ᵀ. Its tensors are graph constants,
//! uploaded once with the model and shared by every plan; nothing is trained, and no
//! gradient flows into the input.

use std::any::Any;

use super::groups;
use super::matmul::{self, Epilogue, MatmulBindings, MatmulShape};
use crate::gpu::{
    Binding, Dispatch, GpuContext, GpuError, Kernel, Shader, grid_1d, uniform_struct,
};
use crate::graph::{Autodiff, ConstId, Node, Op, ValueId};
use crate::graph::{CpuCx, CpuError, GpuCx};

/// (x) → (y) or, with a matrix, (x) → (y, centred).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PreprocessOp {
    pub shift: ConstId,
    pub divisor: Option<ConstId>,
    /// \[K, D\]; y = centred · Aᵀ.
    pub matrix: Option<ConstId>,
}

uniform_struct! {
    /// Mirrors `Params` in `shaders/preprocess.wgsl`.
    struct Params {
        len: u32,
        features: u32,
        has_divisor: u32,
        _pad: u32,
    }
}

const WG: u32 = 256;

/// CPU reference of the element-wise part: rows of D values, (x − shift) / divisor.
pub fn reference_centre(x: &[f32], shift: &[f32], divisor: Option<&[f32]>) -> Vec<f32> {
    let d = shift.len();
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = v - shift[i % d];
            match divisor {
                Some(div) => c / div[i % d],
                None => c,
            }
        })
        .collect()
}

/// out = (x − shift) / divisor over `len` elements of rows of `features`.
pub fn centre_dispatch(
    ctx: &GpuContext,
    len: usize,
    features: usize,
    x: Binding<'_>,
    shift: Binding<'_>,
    divisor: Option<Binding<'_>>,
    out: Binding<'_>,
) -> Result<Dispatch, GpuError> {
    // Element-wise: a stacked plan's members are one longer array of the same features.
    let len = len * x.members() as usize;
    let params = Params {
        len: len as u32,
        features: features as u32,
        has_divisor: u32::from(divisor.is_some()),
        _pad: 0,
    };
    let workgroups = grid_1d(
        groups(len, WG),
        ctx.limits().max_compute_workgroups_per_dimension,
    );
    ctx.dispatch(
        &Kernel::new(Shader::Preprocess, "centre").with("WG", WG),
        Some(&params),
        &[x, shift, divisor.unwrap_or(shift), out],
        workgroups,
    )
}

impl Op for PreprocessOp {
    fn name(&self) -> &'static str {
        "preprocess"
    }

    fn has_params(&self) -> bool {
        false
    }

    fn backward(&self, _: &Node, _: ValueId, _: &mut Autodiff<'_>) -> Option<ValueId> {
        // The first stage, from the batch itself: nothing upstream needs a gradient.
        None
    }

    fn run_cpu(&self, node: &Node, cx: &mut CpuCx<'_>) -> Result<Vec<Vec<f32>>, CpuError> {
        let g = cx.graph;
        let shift = g.constant(self.shift);
        let centred = reference_centre(
            cx.input(node, 0),
            shift,
            self.divisor.map(|d| g.constant(d)),
        );
        Ok(match self.matrix {
            None => vec![centred],
            Some(a) => {
                let (rows, d) = cx.input_shape(node, 0);
                let k = g.constant(a).len() / d;
                let shape = MatmulShape::linear_forward(rows, &[k, d]);
                let y = matmul::reference(shape, &centred, g.constant(a), None, false);
                vec![y, centred]
            }
        })
    }

    fn encode_gpu(&self, node: &Node, cx: &mut GpuCx<'_, '_>) -> Result<(), GpuError> {
        let (rows, d) = cx.input_shape(node, 0);
        let centred = match self.matrix {
            Some(_) => cx.output(node, 1),
            None => cx.output(node, 0),
        };
        let centre = centre_dispatch(
            cx.ctx,
            rows * d,
            d,
            cx.input(node, 0),
            cx.constant(self.shift),
            self.divisor.map(|id| cx.constant(id)),
            centred,
        )?;
        cx.push(centre);
        if let Some(a) = self.matrix {
            let k = cx.graph.constant(a).len() / d;
            let shape = MatmulShape::linear_forward(rows, &[k, d]);
            let bindings = MatmulBindings {
                a: centred,
                b: cx.constant(a),
                bias: None,
                c: cx.output(node, 0),
            };
            matmul::encode(cx, shape, Epilogue::default(), bindings)?;
        }
        Ok(())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::GpuTensor;
    use crate::ops::test_support::{ctx, uniform};

    #[test]
    fn centring_matches_the_reference_on_awkward_shapes() {
        let ctx = ctx();
        for &(n, d) in &[(1usize, 1usize), (3, 7), (65, 33), (1000, 10), (7, 3072)] {
            let x = uniform(n as u64, n * d, -3.0, 5.0);
            let shift = uniform(7, d, -1.0, 1.0);
            let divisor = uniform(8, d, 0.1, 2.0);
            for div in [None, Some(divisor.as_slice())] {
                let gx = GpuTensor::from_slice(ctx, &x, &[n, d], "x").unwrap();
                let gs = GpuTensor::from_slice(ctx, &shift, &[d], "shift").unwrap();
                let gd = GpuTensor::from_slice(ctx, &divisor, &[d], "divisor").unwrap();
                let out = GpuTensor::zeros(ctx, &[n, d], "out").unwrap();
                let dispatch = centre_dispatch(
                    ctx,
                    n * d,
                    d,
                    gx.binding(),
                    gs.binding(),
                    div.map(|_| gd.binding()),
                    out.binding(),
                )
                .unwrap();
                ctx.submit(&[&dispatch]);
                let got: Vec<f32> = out.read(ctx).unwrap();
                // One subtraction and one correctly rounded division: exact.
                assert_eq!(got, reference_centre(&x, &shift, div), "[{n}, {d}]");
            }
        }
    }

    #[test]
    fn uniform_mirrors_the_shader() {
        crate::gpu::assert_mirrors::<Params>(Shader::Preprocess, 0);
    }
}
