// LeakyReLU(p = negative_slope): y = x for x > 0, else p · x (NaN · p stays NaN);
// backward from the input x: dx = dy for x > 0, else p · dy.

fn act_forward(x: f32, p: f32) -> f32 {
    return select(x * p, x, x > 0.0);
}

fn act_backward(x: f32, g: f32, p: f32) -> f32 {
    return select(g * p, g, x > 0.0);
}
