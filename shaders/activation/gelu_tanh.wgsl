// GELU (approximate='tanh'): y = ½ · x · (1 + tanh(u)), u = √(2/π) · (x + 0.044715 · x³);
// backward from the input x:
//   dx = dy · (½ · (1 + tanh u) + ½ · x · (1 − tanh² u) · √(2/π) · (1 + 3 · 0.044715 · x²)).
// Both through s = σ(2u) = ½ · (1 + tanh u) and 1 − s = σ(−2u): y = x · s and
// dx = dy · (s + 2 · x · s · (1 − s) · du/dx), with no 1 + tanh u cancelling near tanh u = −1.
// The backward is NaN for a NaN x whatever the driver's exp gives for it (the forward kernel
// keeps NaN itself).

const SQRT_2_OVER_PI: f32 = 0.7978846;
const COEFF: f32 = 0.044715;

fn u_of(x: f32) -> f32 {
    return SQRT_2_OVER_PI * (x + COEFF * x * x * x);
}

fn act_forward(x: f32, p: f32) -> f32 {
    return x / (1.0 + exp(-2.0 * u_of(x)));
}

fn act_backward(x: f32, g: f32, p: f32) -> f32 {
    let u = u_of(x);
    let s = 1.0 / (1.0 + exp(-2.0 * u));
    let one_minus_s = 1.0 / (1.0 + exp(2.0 * u));
    let du = SQRT_2_OVER_PI * (1.0 + 3.0 * COEFF * x * x);
    return keep_nan(x, g * (s + 2.0 * x * s * one_minus_s * du));
}
