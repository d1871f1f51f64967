// GELU (approximate='none'): y = x · Φ(x), Φ(x) = ½ · erfc(−x/√2);
// backward from the input x: dx = dy · (Φ(x) + x · φ(x)), φ(x) = e^(−x²/2) / √(2π); NaN
// for a NaN x whatever the driver's exp gives for it (the forward kernel keeps NaN itself).

// erfc(z) for z ≥ 0: Numerical Recipes' erfcc, fractional error below 1.2e-7 everywhere,
// so the tail Φ(−|x|) keeps its relative precision where 1 − erf would cancel.
fn erfc_nonneg(z: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418
        + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587
        + t * (-0.82215223 + t * 0.17087277))))))));
    return t * exp(poly - z * z);
}

fn normal_cdf(x: f32) -> f32 {
    let tail = 0.5 * erfc_nonneg(abs(x) * 0.70710678);
    return select(tail, 1.0 - tail, x > 0.0);
}

fn act_forward(x: f32, p: f32) -> f32 {
    return x * normal_cdf(x);
}

fn act_backward(x: f32, g: f32, p: f32) -> f32 {
    let pdf = exp(-0.5 * x * x) * 0.39894228;
    return keep_nan(x, g * (normal_cdf(x) + x * pdf));
}
