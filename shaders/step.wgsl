// Values that change every training step, written by the host before each submit
// (mirrors `StepParams` in src/ops/step.rs).
struct Step {
    // Training step counter (u64 as two words): the dropout RNG's counter, Adam's t - 1.
    step_lo: u32,
    step_hi: u32,
    // Learning rate of this step.
    lr: f32,
    // Adam: lr / (1 - beta1^t) and sqrt(1 - beta2^t), computed by the host in f64 as PyTorch does.
    adam_step_size: f32,
    adam_bias_correction2_sqrt: f32,
    // SGD: 1 on the first step, where the momentum buffer starts as the gradient itself.
    sgd_first_step: u32,
    // Cross-entropy mean: 1 / Σ (weights of non-ignored targets); BCE mean: 1 / element count.
    loss_scale: f32,
    // Rows of the batch that hold samples.
    rows: u32,
}
