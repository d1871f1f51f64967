// LeakyReLU(p = negative_slope): y = x for x > 0, else p · x (NaN · p stays NaN);
// backward from the input x: dx = dy for x > 0, else p · dy (for a NaN x too, as PyTorch's
// x > 0 is false for it).
//
// x > 0 judged on the bits, as relu.wgsl judges x < 0: a compiler that assumes finite math
// may rewrite the comparison so that NaN passes it.

// x > 0, false for NaN: the sign bit clear, a non-zero magnitude, and not NaN.
fn leaky_positive(x: f32) -> bool {
    let bits = bitcast<u32>(x);
    return bits > 0u && bits <= 0x7f800000u;
}

fn act_forward(x: f32, p: f32) -> f32 {
    return select(x * p, x, leaky_positive(x));
}

fn act_backward(x: f32, g: f32, p: f32) -> f32 {
    return select(g * p, g, leaky_positive(x));
}
