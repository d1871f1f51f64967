// Softmax and fused softmax + cross-entropy over logits [N, C], one invocation per row, with
// torch.nn.CrossEntropyLoss's semantics: class weights w, ignore_index, label smoothing ε.
//   lse_i = log Σ_c exp(x_ic)  (shifted by the row max, so logits of ±1e4 stay finite)
//   loss_i = (1-ε)·w_t·(lse_i - x_it) + ε/C·Σ_c w_c·(lse_i - x_ic)
//   ∂loss_i/∂x_ij = (1-ε)·w_t·(p_ij - [j = t]) + ε/C·(p_ij·Σ_c w_c - w_j)
// Both are multiplied by step.loss_scale: 1 / Σ_i w_{t_i} over non-ignored rows for 'mean',
// 1 for 'sum' and 'none'. Ignored rows give 0 loss and 0 gradient.
// softmax_xent_totals does the same in one workgroup and folds the batch into the running
// totals itself (fold_batch, shaders/totals.wgsl): the metrics kernel's work, without its
// dispatch; with FLAG_BIAS also the bias gradient of the Linear before the loss, Σ_r of the
// gradient's rows (column_sums, shaders/loss_columns.wgsl): the column-sum kernel's work.
// Stacked plans: workgroups along z are members (softmax_xent_totals: one workgroup each);
// member m's logits and gradient are at m · N·C, its targets and rows at m · N, its totals
// at m · TOTALS_LEN, its bias gradient at m · dbias_stride, and its step is steps[m]. The
// class weights are one part, shared.

struct Params {
    n: u32,
    c: u32,
    ignore_index: i32,
    // bit 0: class weights bound, bit 1: write the gradient, bit 2: and its column sums
    flags: u32,
    label_smoothing: f32,
    // Σ_c w_c (C without weights)
    weight_sum: f32,
    // Elements from one member's bias gradient to the next.
    dbias_stride: u32,
}

const FLAG_WEIGHTS: u32 = 1u;
const FLAG_GRAD: u32 = 2u;
const FLAG_BIAS: u32 = 4u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> steps: array<Step>;
@group(0) @binding(2) var<storage, read> logits: array<f32>;
@group(0) @binding(3) var<storage, read> targets: array<i32>;
@group(0) @binding(4) var<storage, read> weight: array<f32>;
// Per row: (loss_i · loss_scale, 1 if argmax = target, 1 if not ignored, 0).
@group(0) @binding(5) var<storage, read_write> rows: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> grad: array<f32>;
@group(0) @binding(7) var<storage, read_write> probs: array<f32>;
@group(0) @binding(8) var<storage, read_write> totals: array<f32>;
@group(0) @binding(9) var<storage, read_write> dbias: array<f32>;

override WG: u32 = 64u;

fn class_weight(j: u32) -> f32 {
    if ((p.flags & FLAG_WEIGHTS) != 0u) { return weight[j]; }
    return 1.0;
}

// Row max m and its first index (torch.argmax's tie rule), and s = Σ exp(x - m).
// lse - x_j is formed as (m - x_j) + log s: adding log s to m first would round it at m's
// magnitude (1e-3 at 1e4) and spoil every probability.
// Where some x - m is NaN — a NaN logit, or ∞ - ∞ for a +∞ logit or a row of -∞ — the row's
// log-softmax is NaN in PyTorch: log s and 1/s are then that NaN, so the row's loss,
// gradient and probabilities are NaN by arithmetic, whatever the driver's exp and log make
// of NaN.
struct RowStats { max: f32, log_sum: f32, inv_sum: f32, argmax: u32 }

fn row_stats(base: u32) -> RowStats {
    var m = logits[base];
    var arg = 0u;
    for (var j = 1u; j < p.c; j++) {
        let v = logits[base + j];
        if (v > m) { m = v; arg = j; }
    }
    var s = 0.0;
    // 0, or the last NaN x - m.
    var nan_diff = 0.0;
    for (var j = 0u; j < p.c; j++) {
        let d = logits[base + j] - m;
        nan_diff = keep_nan(d, nan_diff);
        s += exp(d);
    }
    return RowStats(m, keep_nan(nan_diff, log(s)), keep_nan(nan_diff, 1.0 / s), arg);
}

// -log p_j = lse - x_j
fn neg_log_prob(stats: RowStats, x: f32) -> f32 {
    return (stats.max - x) + stats.log_sum;
}

fn prob(stats: RowStats, x: f32) -> f32 {
    return exp(x - stats.max) * stats.inv_sum;
}

// Member m's row r: its loss and gradient; writes its rows entry (and the gradient) and
// returns it.
fn xent_row(m: u32, r: u32) -> vec4<f32> {
    let row_index = m * p.n + r;
    let base = row_index * p.c;
    let t = targets[row_index];
    let write_grad = (p.flags & FLAG_GRAD) != 0u;
    if (t == p.ignore_index || t < 0 || u32(t) >= p.c) {
        rows[row_index] = vec4<f32>(0.0);
        if (write_grad) {
            for (var j = 0u; j < p.c; j++) { grad[base + j] = 0.0; }
        }
        return vec4<f32>(0.0);
    }
    let tu = u32(t);
    let stats = row_stats(base);
    let eps = p.label_smoothing;
    let w_t = class_weight(tu);
    var loss = (1.0 - eps) * w_t * neg_log_prob(stats, logits[base + tu]);
    if (eps > 0.0) {
        var smoothed = 0.0;
        for (var j = 0u; j < p.c; j++) { smoothed += class_weight(j) * neg_log_prob(stats, logits[base + j]); }
        loss += eps / f32(p.c) * smoothed;
    }
    let scale = steps[m].loss_scale;
    let row = vec4<f32>(loss * scale, select(0.0, 1.0, stats.argmax == tu), 1.0, 0.0);
    rows[row_index] = row;
    if (write_grad) {
        for (var j = 0u; j < p.c; j++) {
            let pj = prob(stats, logits[base + j]);
            var g = (1.0 - eps) * w_t * (pj - select(0.0, 1.0, j == tu));
            if (eps > 0.0) { g += eps / f32(p.c) * (pj * p.weight_sum - class_weight(j)); }
            grad[base + j] = g * scale;
        }
    }
    return row;
}

@compute @workgroup_size(WG)
fn softmax_xent(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x < p.n) { _ = xent_row(gid.z, gid.x); }
}

// One workgroup per member: each invocation takes rows lid, lid + TOTALS_WG, … in order, as
// the metrics kernel sums them.
@compute @workgroup_size(TOTALS_WG)
fn softmax_xent_totals(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let m = wid.z;
    var s = vec4<f32>(0.0);
    for (var r = lid; r < p.n; r += TOTALS_WG) { s += xent_row(m, r); }
    if ((p.flags & FLAG_BIAS) != 0u) {
        storageBarrier();
        column_sums(lid, p.n, p.c, m * p.n * p.c, m * p.dbias_stride);
    }
    fold_batch(lid, s, m);
}

// probs = softmax(logits) row by row.
@compute @workgroup_size(WG)
fn softmax(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.x;
    if (r >= p.n) { return; }
    let base = (gid.z * p.n + r) * p.c;
    let stats = row_stats(base);
    for (var j = 0u; j < p.c; j++) { probs[base + j] = prob(stats, logits[base + j]); }
}
