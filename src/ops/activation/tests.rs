//! Every registered activation's kernels against its CPU reference, on shapes that are no
//! multiple of the workgroup size, with the values where activations are delicate.

use super::*;
use crate::check::{Tolerance, assert_close};
use crate::ops::test_support::{ctx, uniform};

/// One of each registered activation (LeakyReLU with a non-default slope too).
fn every_activation() -> Vec<AnyActivation> {
    let mut all: Vec<AnyActivation> = TOKENS
        .iter()
        .map(|t| (t.parse)(&[]).expect("every activation parses without arguments"))
        .collect();
    all.push(AnyActivation::new(GELU::tanh()));
    all.push(AnyActivation::new(LeakyReLU::new(0.2)));
    all
}

/// Inputs spread over [-8, 8), with zeros, tiny values, and large ones of both signs.
fn inputs(len: usize) -> Vec<f32> {
    let mut x = uniform(len as u64, len, -8.0, 8.0);
    let special = [0.0, -0.0, 1e-7, -1e-7, 30.0, -30.0, 90.0, -90.0, 1e4, -1e4];
    for (v, s) in x.iter_mut().zip(special) {
        *v = s;
    }
    x
}

#[test]
fn kernels_match_the_reference_on_awkward_lengths() {
    let ctx = ctx();
    let tol = Tolerance {
        atol: 1e-6,
        rtol: 2e-6,
    };
    for activation in every_activation() {
        for &len in &[1usize, 3, 7, 65, 255, 257, 1000, 128 * 3072] {
            let x = inputs(len);
            let name = activation.spec();
            let gx = GpuTensor::from_slice(ctx, &x, &[len], "x").unwrap();
            let y: Vec<f32> = forward(ctx, &*activation, &gx).unwrap().read(ctx).unwrap();
            let y_ref = reference_forward(&*activation, &x);
            assert_close(&format!("{name} forward, len {len}"), &y, &y_ref, tol);

            let dy = uniform(5, len, -1.0, 1.0);
            let v = match activation.derivative_from() {
                DerivativeFrom::Input => &x,
                DerivativeFrom::Output => &y_ref,
            };
            let gv = GpuTensor::from_slice(ctx, v, &[len], "v").unwrap();
            let gdy = GpuTensor::from_slice(ctx, &dy, &[len], "dy").unwrap();
            let dx: Vec<f32> = backward(ctx, &*activation, &gv, &gdy)
                .unwrap()
                .read(ctx)
                .unwrap();
            let dx_ref = reference_backward(&*activation, v, &dy);
            assert_close(&format!("{name} backward, len {len}"), &dx, &dx_ref, tol);
        }
    }
}

#[test]
fn relu_is_exact_and_its_gradient_at_zero_is_zero() {
    let ctx = ctx();
    let x = inputs(1000);
    let gx = GpuTensor::from_slice(ctx, &x, &[1000], "x").unwrap();
    let y: Vec<f32> = forward(ctx, &ReLU, &gx).unwrap().read(ctx).unwrap();
    assert_eq!(y, reference_forward(&ReLU, &x));
    assert_eq!(ReLU.backward(0.0, 1.0, ReLU.param()), 0.0);
}

/// Each reference's backward against central differences of its forward (in f64 steps of
/// the f32 function, away from kinks).
#[test]
fn reference_gradients_match_finite_differences() {
    for activation in every_activation() {
        for &x in &[-3.7f32, -1.2, -0.3, 0.4, 1.1, 2.9] {
            let h = 1e-3f32;
            let fd = (activation.forward(x + h, activation.param())
                - activation.forward(x - h, activation.param()))
                / (2.0 * h);
            let v = match activation.derivative_from() {
                DerivativeFrom::Input => x,
                DerivativeFrom::Output => activation.forward(x, activation.param()),
            };
            let analytic = activation.backward(v, 1.0, activation.param());
            assert!(
                (fd - analytic).abs() < 2e-3 * (1.0 + analytic.abs()),
                "{} at {x}: finite difference {fd}, backward {analytic}",
                activation.spec()
            );
        }
    }
}

/// NaN in, NaN out, whatever the driver's built-ins (tanh, exp, max) make of NaN: the
/// kernels' NaNs are the reference's (PyTorch's), forward and backward, for NaNs of either
/// sign and any payload, in the input (or the output the backward reads) and in dy.
#[test]
fn nan_propagates_through_every_activation() {
    let ctx = ctx();
    let nans = [
        f32::NAN,
        -f32::NAN,
        f32::from_bits(0x7f80_0001),
        f32::from_bits(0xffff_ffff),
    ];
    let mut x = vec![1.0, -1.0, 0.0, -0.0, 0.3, -2.5, 30.0, -30.0];
    x.extend(nans);
    let n = x.len();
    // dy: NaN where x is finite and finite where x is NaN, then NaN against NaN.
    let mut dy = vec![0.5; n];
    dy[..nans.len()].copy_from_slice(&nans);
    dy[n - 1] = f32::NAN;
    let tol = Tolerance::new(1e-6, 2e-6);
    for activation in every_activation() {
        let name = activation.spec();
        let gx = GpuTensor::from_slice(ctx, &x, &[n], "x").unwrap();
        let y: Vec<f32> = forward(ctx, &*activation, &gx).unwrap().read(ctx).unwrap();
        let y_ref = reference_forward(&*activation, &x);
        assert!(y_ref[n - nans.len()..].iter().all(|v| v.is_nan()), "{name}");
        assert_close(&format!("{name} forward"), &y, &y_ref, tol);

        let v = match activation.derivative_from() {
            DerivativeFrom::Input => &x,
            DerivativeFrom::Output => &y_ref,
        };
        let gv = GpuTensor::from_slice(ctx, v, &[n], "v").unwrap();
        let gdy = GpuTensor::from_slice(ctx, &dy, &[n], "dy").unwrap();
        let dx: Vec<f32> = backward(ctx, &*activation, &gv, &gdy)
            .unwrap()
            .read(ctx)
            .unwrap();
        let dx_ref = reference_backward(&*activation, v, &dy);
        assert_close(&format!("{name} backward"), &dx, &dx_ref, tol);
    }
}

#[test]
fn spec_tokens_round_trip_and_bad_arguments_say_why() {
    for activation in every_activation() {
        let spec = activation.spec();
        let mut parts = spec.split(':');
        let name = parts.next().unwrap();
        let args: Vec<&str> = parts.collect();
        let again = parse_token(name, &args).unwrap().unwrap();
        assert_eq!(again, activation, "{spec}");
    }
    let err = parse_token("gelu", &["erf"]).unwrap().unwrap_err();
    assert!(err.contains("none or tanh"), "{err}");
    let err = parse_token("leaky_relu", &["nan"]).unwrap().unwrap_err();
    assert!(err.contains("finite"), "{err}");
    let err = parse_token("sigmoid", &["2"]).unwrap().unwrap_err();
    assert!(err.contains("takes no argument"), "{err}");
    assert!(parse_token("swish", &[]).is_none());
}

#[test]
fn mismatched_gradient_shape_is_an_error() {
    let ctx = ctx();
    let y = GpuTensor::zeros(ctx, &[2, 3], "y").unwrap();
    let dy = GpuTensor::zeros(ctx, &[3, 2], "dy").unwrap();
    let err = backward(ctx, &Sigmoid, &y, &dy).unwrap_err().to_string();
    assert!(err.contains("[3, 2]") && err.contains("[2, 3]"), "{err}");
}

#[test]
fn uniform_mirrors_the_shader_of_every_activation() {
    for activation in every_activation() {
        crate::gpu::assert_mirrors::<Params>(Shader::Activation(activation.shader()), 0);
    }
}

#[test]
fn relu_keeps_nan_and_negative_zero_and_lets_the_gradient_through_nan_as_pytorch() {
    // torch.relu([NaN, -0, 0, -1, 2, inf, -inf]) and its backward with dy = 1.
    let ctx = ctx();
    let x = [
        f32::NAN,
        -0.0,
        0.0,
        -1.0,
        2.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
    ];
    let want_y = [f32::NAN, -0.0, 0.0, 0.0, 2.0, f32::INFINITY, 0.0];
    let want_dx = [1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0];
    let relu = AnyActivation::new(ReLU);
    // Bits, so that -0 differs from 0; any NaN is NaN.
    let bits = |v: &[f32]| {
        v.iter()
            .map(|x| if x.is_nan() { u32::MAX } else { x.to_bits() })
            .collect::<Vec<_>>()
    };
    let gx = GpuTensor::from_slice(ctx, &x, &[x.len()], "x").unwrap();
    let y: Vec<f32> = forward(ctx, &*relu, &gx).unwrap().read(ctx).unwrap();
    assert_eq!(bits(&y), bits(&want_y), "GPU forward {y:?}");
    assert_eq!(bits(&reference_forward(&*relu, &x)), bits(&want_y));
    let gy = GpuTensor::from_slice(ctx, &want_y, &[x.len()], "y").unwrap();
    let dy = GpuTensor::from_slice(ctx, &[1.0f32; 7], &[7], "dy").unwrap();
    let dx: Vec<f32> = backward(ctx, &*relu, &gy, &dy).unwrap().read(ctx).unwrap();
    assert_eq!(dx, want_dx, "GPU backward");
    assert_eq!(reference_backward(&*relu, &want_y, &[1.0; 7]), want_dx);
}
