// Sigmoid: y = 1 / (1 + e^(−x)); backward from the output y: dx = dy · y · (1 − y).
// e^(−x) overflows to ∞ for x < −88, giving 0. NaN stays NaN: the forward kernel keeps it
// (activation.wgsl), and the backward's arithmetic passes a NaN y or dy on.

fn act_forward(x: f32, p: f32) -> f32 {
    return 1.0 / (1.0 + exp(-x));
}

fn act_backward(y: f32, g: f32, p: f32) -> f32 {
    return g * y * (1.0 - y);
}
