// Tanh: y = tanh(x); backward from the output y: dx = dy · (1 − y²).

// tanh with its argument clamped to ±10, where it is ±1 in f32 already, so that an
// implementation going through e^(2x) cannot overflow to ∞/∞. NaN, which a driver's tanh
// may turn into ±1 (GL on llvmpipe gives -1), is kept by the forward kernel itself
// (activation.wgsl); the backward's arithmetic passes a NaN y or dy on.
fn tanh_clamped(x: f32) -> f32 {
    return tanh(select(x, sign(x) * 10.0, abs(x) > 10.0));
}

fn act_forward(x: f32, p: f32) -> f32 {
    return tanh_clamped(x);
}

fn act_backward(y: f32, g: f32, p: f32) -> f32 {
    return g * (1.0 - y * y);
}
