// NaN judged on the bits, for the kernels that must pass it on as PyTorch does: drivers may
// evaluate built-ins (tanh, exp, max, inverseSqrt) in ways that lose a NaN, and a compiler
// that assumes finite math may fold x != x to false.

// An all-ones exponent and a non-zero mantissa, of either sign.
fn is_nan(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u;
}

// v, or x itself where x is NaN: a result computed from x that must stay NaN with it.
fn keep_nan(x: f32, v: f32) -> f32 {
    return select(v, x, is_nan(x));
}
