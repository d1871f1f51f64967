// Values that change every training step, written by the host before each submit (mirrors
// `StepParams` in src/ops/step.rs), one record per member of the plan: a stacked plan runs
// several models side by side, each with its own step, learning rate and settings; a lone
// model is member 0. Kernels bind them as `steps: array<Step>` and read `steps[member]`.
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
    // The optimizer's settings (SGD: momentum, dampening, weight_decay; Adam: betas, eps,
    // weight_decay).
    momentum: f32,
    dampening: f32,
    weight_decay: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    // 1 in a training step once the member is frozen (it diverged): kernels that write
    // lasting state (the optimizer, running statistics, the totals) leave its part alone.
    frozen: u32,
    // The member's dropout key: its seed folded to 32 bits.
    seed_key: u32,
}
