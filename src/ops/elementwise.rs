//! ReLU and its backward, for when it cannot be fused into a matmul or batch norm.
//! Kernel: `shaders/elementwise.wgsl`.

use bytemuck::{Pod, Zeroable};

use super::{OpError, expect_shape, groups};
use crate::gpu::{Binding, Dispatch, GpuContext, GpuError, GpuTensor, Kernel, Shader, grid_1d};

/// CPU reference: y = max(x, 0).
pub fn reference_relu(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| v.max(0.0)).collect()
}

/// CPU reference: dx = dy where the forward's output y > 0, else 0 (PyTorch's rule at 0).
pub fn reference_relu_backward(y: &[f32], dy: &[f32]) -> Vec<f32> {
    y.iter()
        .zip(dy)
        .map(|(&y, &g)| if y > 0.0 { g } else { 0.0 })
        .collect()
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    len: u32,
    _pad: [u32; 3],
}

const WG: u32 = 256;

fn launch(
    ctx: &GpuContext,
    entry: &'static str,
    len: usize,
    bindings: &[Binding<'_>],
) -> Result<Dispatch, GpuError> {
    let workgroups = grid_1d(
        groups(len, WG),
        ctx.limits().max_compute_workgroups_per_dimension,
    );
    ctx.dispatch(
        &Kernel::new(Shader::Elementwise, entry).with("WG", WG),
        Some(&Params {
            len: len as u32,
            _pad: [0; 3],
        }),
        bindings,
        workgroups,
    )
}

/// y = relu(x) over `len` elements.
pub fn relu_dispatch(
    ctx: &GpuContext,
    len: usize,
    x: Binding<'_>,
    y: Binding<'_>,
) -> Result<Dispatch, GpuError> {
    // binding 2 is unused by relu, so the auto layout leaves it out.
    ctx.dispatch_at(
        &Kernel::new(Shader::Elementwise, "relu").with("WG", WG),
        Some(&Params {
            len: len as u32,
            _pad: [0; 3],
        }),
        &[(1, x), (3, y)],
        grid_1d(
            groups(len, WG),
            ctx.limits().max_compute_workgroups_per_dimension,
        ),
    )
}

/// dx = dy · \[y > 0\] over `len` elements.
pub fn relu_backward_dispatch(
    ctx: &GpuContext,
    len: usize,
    y: Binding<'_>,
    dy: Binding<'_>,
    dx: Binding<'_>,
) -> Result<Dispatch, GpuError> {
    launch(ctx, "relu_backward", len, &[y, dy, dx])
}

/// ReLU of a GPU tensor.
pub fn relu(ctx: &GpuContext, x: &GpuTensor) -> Result<GpuTensor, OpError> {
    let y = GpuTensor::zeros(ctx, x.shape(), "relu.y")?;
    let d = relu_dispatch(ctx, x.len(), x.binding(), y.binding())?;
    ctx.submit(&[&d]);
    Ok(y)
}

/// ReLU's backward from its output `y` and the upstream gradient `dy`.
pub fn relu_backward(
    ctx: &GpuContext,
    y: &GpuTensor,
    dy: &GpuTensor,
) -> Result<GpuTensor, OpError> {
    expect_shape("relu backward", "grad_output", dy.shape(), y.shape())?;
    let dx = GpuTensor::zeros(ctx, y.shape(), "relu.dx")?;
    let d = relu_backward_dispatch(ctx, y.len(), y.binding(), dy.binding(), dx.binding())?;
    ctx.submit(&[&d]);
    Ok(dx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_support::{ctx, uniform};

    #[test]
    fn relu_and_backward_match_reference_exactly() {
        let ctx = ctx();
        for &len in &[1usize, 3, 7, 65, 1000, 128 * 3072] {
            let mut x = uniform(len as u64, len, -1.0, 1.0);
            x[0] = 0.0;
            let gx = GpuTensor::from_slice(ctx, &x, &[len], "x").unwrap();
            let y: Vec<f32> = relu(ctx, &gx).unwrap().read(ctx).unwrap();
            assert_eq!(y, reference_relu(&x), "relu len {len}");
            let dy = uniform(5, len, -1.0, 1.0);
            let gy = GpuTensor::from_slice(ctx, &y, &[len], "y").unwrap();
            let gdy = GpuTensor::from_slice(ctx, &dy, &[len], "dy").unwrap();
            let dx: Vec<f32> = relu_backward(ctx, &gy, &gdy).unwrap().read(ctx).unwrap();
            assert_eq!(
                dx,
                reference_relu_backward(&y, &dy),
                "relu backward len {len}"
            );
            // The gradient at exactly 0 is 0, as in PyTorch.
            assert_eq!(dx[0], 0.0);
        }
    }

    #[test]
    fn mismatched_gradient_shape_is_an_error() {
        let ctx = ctx();
        let y = GpuTensor::zeros(ctx, &[2, 3], "y").unwrap();
        let dy = GpuTensor::zeros(ctx, &[3, 2], "dy").unwrap();
        let err = relu_backward(ctx, &y, &dy).unwrap_err();
        assert!(
            err.to_string().contains("[3, 2]") && err.to_string().contains("[2, 3]"),
            "{err}"
        );
    }
}
