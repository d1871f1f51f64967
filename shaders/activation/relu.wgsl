// ReLU, as PyTorch computes it: y = x where x ≥ 0 or x is NaN, else 0 (so relu(NaN) = NaN and
// relu(-0) = -0); backward from the output y, as threshold_backward(dy, y, 0): dx = 0 where
// y ≤ 0, else dy (NaN included). Linear's and BatchNorm's fused epilogues call `relu` and
// `relu_backward` too (src/gpu/kernel.rs appends this file to their modules).
//
// Judged on the bits: max(NaN, 0) may give 0, and a compiler that assumes finite math may fold
// a float comparison with NaN.

// x < 0, false for NaN: the sign bit set, a non-zero magnitude, and not NaN.
fn relu_negative(x: f32) -> bool {
    let bits = bitcast<u32>(x);
    return bits > 0x80000000u && bits <= 0xff800000u;
}

fn relu(x: f32) -> f32 {
    return select(x, 0.0, relu_negative(x));
}

fn relu4(v: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(relu(v.x), relu(v.y), relu(v.z), relu(v.w));
}

// dx from the forward's output y: y ≤ 0 (±0 or negative), false for NaN, stops the gradient.
fn relu_backward(y: f32, g: f32) -> f32 {
    let stops = relu_negative(y) || (bitcast<u32>(y) & 0x7fffffffu) == 0u;
    return select(g, 0.0, stops);
}

fn act_forward(x: f32, p: f32) -> f32 {
    return relu(x);
}

fn act_backward(y: f32, g: f32, p: f32) -> f32 {
    return relu_backward(y, g);
}
