// Binary cross-entropy with logits, torch.nn.BCEWithLogitsLoss's stable form:
//   loss_i = (1 - y)·x + (1 + (pw - 1)·y)·(log1p(exp(-|x|)) + max(-x, 0))
//   ∂loss_i/∂x = (1 + (pw - 1)·y)·σ(x) - pw·y
// multiplied by step.loss_scale (1/N for 'mean', 1 otherwise). A NaN logit gives a NaN loss
// and gradient, as in PyTorch, kept on the bits whatever the driver's exp, log and max make
// of NaN.
// bce_with_logits_totals does the same in one workgroup and folds the batch into the running
// totals itself (fold_batch, shaders/totals.wgsl); with flag bit 1, also the bias gradient
// of the Linear before the loss, Σ of the gradient (column_sums, shaders/loss_columns.wgsl).
// Stacked plans: workgroups along z are members (bce_with_logits_totals: one workgroup
// each); member m's logits, targets, rows and gradient are at m · N, its totals at
// m · TOTALS_LEN, its bias gradient at m · dbias_stride, and its step is steps[m].

struct Params {
    n: u32,
    // bit 0: write the gradient, bit 1: and its sum
    flags: u32,
    pos_weight: f32,
    // Elements from one member's bias gradient to the next.
    dbias_stride: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> steps: array<Step>;
@group(0) @binding(2) var<storage, read> logits: array<f32>;
@group(0) @binding(3) var<storage, read> targets: array<f32>;
// Per element: (loss_i · loss_scale, 1 if (x > 0) = (y > ½), 1, 0).
@group(0) @binding(4) var<storage, read_write> rows: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> grad: array<f32>;
@group(0) @binding(6) var<storage, read_write> totals: array<f32>;
@group(0) @binding(7) var<storage, read_write> dbias: array<f32>;

override WG: u32 = 64u;

// log(1 + e) accurate for small e (Goldberg's trick: the rounding of 1 + e cancels out).
fn log1p(e: f32) -> f32 {
    let u = 1.0 + e;
    if (u == 1.0) { return e; }
    return log(u) * e / (u - 1.0);
}

// Member m's element r: its loss and gradient; writes its rows entry (and the gradient) and
// returns it.
fn bce_row(m: u32, r: u32) -> vec4<f32> {
    let i = m * p.n + r;
    let step = steps[m];
    let x = logits[i];
    let y = targets[i];
    let lw = 1.0 + (p.pos_weight - 1.0) * y;
    let e = exp(-abs(x));
    let softplus_tail = log1p(e);
    let loss = keep_nan(x, (1.0 - y) * x + lw * (softplus_tail + max(-x, 0.0)));
    let sigmoid = select(e / (1.0 + e), 1.0 / (1.0 + e), x >= 0.0);
    let correct = select(0.0, 1.0, (x > 0.0) == (y > 0.5));
    let row = vec4<f32>(loss * step.loss_scale, correct, 1.0, 0.0);
    rows[i] = row;
    if ((p.flags & 1u) != 0u) {
        grad[i] = keep_nan(x, lw * sigmoid - p.pos_weight * y) * step.loss_scale;
    }
    return row;
}

@compute @workgroup_size(WG)
fn bce_with_logits(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x < p.n) { _ = bce_row(gid.z, gid.x); }
}

// One workgroup per member: each invocation takes elements lid, lid + TOTALS_WG, … in order,
// as the metrics kernel sums them.
@compute @workgroup_size(TOTALS_WG)
fn bce_with_logits_totals(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let m = wid.z;
    var s = vec4<f32>(0.0);
    for (var r = lid; r < p.n; r += TOTALS_WG) { s += bce_row(m, r); }
    if ((p.flags & 2u) != 0u) {
        storageBarrier();
        column_sums(lid, p.n, 1u, m * p.n, m * p.dbias_stride);
    }
    fold_batch(lid, s, m);
}
