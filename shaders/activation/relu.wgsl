// ReLU: y = max(x, 0); backward from the output y: dx = dy · [y > 0].

fn act_forward(x: f32, p: f32) -> f32 {
    return max(x, 0.0);
}

fn act_backward(y: f32, g: f32, p: f32) -> f32 {
    return select(0.0, g, y > 0.0);
}
