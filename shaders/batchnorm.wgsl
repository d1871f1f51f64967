// BatchNorm1d over x: [N, D] (PyTorch semantics).
//   train: y = (x - μ_B)·(σ²_B + eps)^-½·γ + β with the batch's mean and biased variance;
//          running_mean ← (1-m)·running_mean + m·μ_B, running_var ← (1-m)·running_var + m·σ²_B·N/(N-1)
//          (m = momentum, or 1/num_batches_tracked for the cumulative average).
//   eval:  the same with running_mean / running_var.
//   Optionally fused with a following ReLU, and after it a dropout (train mode: dropout.wgsl's
//   mask, same key, counter and step).
// Backward (train mode), with x̂ = (x - μ)·invstd and dy masked by the ReLU:
//   dβ = Σ dy, dγ = Σ dy·x̂, dx = γ·invstd/N·(N·dy - dβ - x̂·dγ).
// With the dropout, y is 0 wherever the ReLU or the dropout stopped the gradient and positive
// elsewhere, so the backward scales dy by 1/(1-p) where y > 0 and needs no mask of its own.
// A NaN in a feature's batch makes its mean, variance, 1/std and running statistics NaN, and
// its whole column (dropped elements too: NaN · 0), as in PyTorch: the variance's clamp at 0
// and 1/std keep NaN on the bits (shaders/nan.wgsl), whatever the driver's max and
// inverseSqrt make of it; the fused ReLU keeps it as relu.wgsl does.
//
// Stacked plans: the grid's z holds the members (element grids: zrows slices of rows each).
// Every entry point starts with enter(member), which sets where the member's part of each
// binding starts: x, y, dy, dx at m · N·D; saved at m · saved_stride; γ, β, dγ, dβ and the
// bias gradient at m · param_stride (the flat parameter and gradient buffers); running at
// m · running_stride; num_batches_tracked at m · count_stride. The member's step, seed and
// dropout probability come from steps[m] and drops[m]. A frozen member's running statistics
// and count are left as they are.

struct Params {
    n: u32,
    d: u32,
    eps: f32,
    momentum: f32,
    flags: u32,
    // The fused dropout's layer: the second word of its Philox key, as in dropout.wgsl.
    layer: u32,
    // SyncBatchNorm's backward_dx: rows of the global batch its sums are over (0: n).
    total: u32,
    // Element grids: z-slices of rows per member.
    zrows: u32,
    saved_stride: u32,
    param_stride: u32,
    running_stride: u32,
    count_stride: u32,
}

const FLAG_RELU: u32 = 1u;
// The stats binding holds [running_mean; running_var] instead of [mean; invstd].
const FLAG_FROM_VARIANCE: u32 = 2u;
// momentum = None: running stats are the cumulative average.
const FLAG_CUMULATIVE: u32 = 4u;
// Count the batch in num_batches_tracked.
const FLAG_COUNT_BATCH: u32 = 8u;
// A dropout follows the ReLU (train mode only, and only with FLAG_RELU).
const FLAG_DROPOUT: u32 = 16u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> dx: array<f32>;
// [mean; invstd] of the batch, saved for the backward: [2, D].
@group(0) @binding(5) var<storage, read_write> saved: array<f32>;
// [running_mean; running_var]: [2, D].
@group(0) @binding(6) var<storage, read_write> running: array<f32>;
@group(0) @binding(7) var<storage, read> gamma: array<f32>;
@group(0) @binding(8) var<storage, read> beta: array<f32>;
@group(0) @binding(9) var<storage, read_write> dgamma: array<f32>;
@group(0) @binding(10) var<storage, read_write> dbeta: array<f32>;
@group(0) @binding(11) var<storage, read_write> num_batches_tracked: array<u32>;
@group(0) @binding(12) var<storage, read> steps: array<Step>;
// The preceding Linear's bias gradient, Σ_r dx (backward_column_bias).
@group(0) @binding(13) var<storage, read_write> dbias: array<f32>;
// The fused dropout's (threshold, bits of 1/(1-p)) per member, as in dropout.wgsl.
@group(0) @binding(14) var<storage, read> drops: array<vec2<u32>>;

// Where the current member's part of each binding starts (see enter).
var<private> member: u32;
var<private> xb: u32;
var<private> sb: u32;
var<private> pb: u32;
var<private> rb: u32;
var<private> cb: u32;

fn enter(m: u32) {
    member = m;
    xb = m * p.n * p.d;
    sb = m * p.saved_stride;
    pb = m * p.param_stride;
    rb = m * p.running_stride;
    cb = m * p.count_stride;
}

// Whether the member's lasting state (running statistics, count) may change.
fn live() -> bool {
    return steps[member].frozen == 0u;
}

// Per-feature reductions use WG_FEATURES × ROWS invocations per workgroup: ROWS invocations
// share a feature's rows and combine their partial sums in workgroup memory. A GPU wants many
// (ROWS = 16); lavapipe, where barriers are costly, takes ROWS = 1.
override WG_FEATURES: u32 = 64u;
override ROWS: u32 = 1u;
var<workgroup> partial: array<vec2<f32>, 256>;

// Sums the workgroup's ROWS partials of each feature; every invocation gets its feature's total.
fn reduce_rows(lid: vec3<u32>, value: vec2<f32>) -> vec2<f32> {
    if (ROWS == 1u) { return value; }
    let slot = lid.y * WG_FEATURES + lid.x;
    partial[slot] = value;
    workgroupBarrier();
    for (var width = ROWS / 2u; width > 0u; width /= 2u) {
        if (lid.y < width) { partial[slot] += partial[slot + width * WG_FEATURES]; }
        workgroupBarrier();
    }
    return partial[lid.x];
}

// Feature fc's Σv and Σv² over the batch, v = x - shift, its rows split over the workgroup's
// ROWS invocations; every invocation gets the totals.
fn shifted_sums(fc: u32, shift: f32, lid: vec3<u32>) -> vec2<f32> {
    var s = vec2<f32>(0.0);
    for (var r = lid.y; r < p.n; r += ROWS) {
        let v = x[xb + r * p.d + fc] - shift;
        s += vec2<f32>(v, v * v);
    }
    return reduce_rows(lid, s);
}

// Per feature: the batch mean, 1/std and the running statistics. Sums are shifted by the
// feature's first value, so a feature with mean 1e4 and std 1e-2 keeps its variance
// (E[x²] - E[x]² in f32 would lose it all).
@compute @workgroup_size(WG_FEATURES, ROWS)
fn stats(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    enter(gid.z);
    let f = gid.x;
    let fc = min(f, p.d - 1u);
    let shift = x[xb + fc];
    let s = shifted_sums(fc, shift, lid);
    if (f >= p.d || lid.y != 0u) { return; }
    save_stats(f, shift, s);
}

// Writes feature f's mean and 1/std (from its shifted sums Σv, Σv²) and updates its running
// statistics; returns (mean, 1/std).
fn save_stats(f: u32, shift: f32, s: vec2<f32>) -> vec2<f32> {
    let m = moments(shift, s);
    return save_moments(f, m.x, m.y, f32(p.n));
}

// (mean, biased variance) of the batch's p.n rows from their shifted sums Σv, Σv².
fn moments(shift: f32, s: vec2<f32>) -> vec2<f32> {
    let n = f32(p.n);
    let mean_shifted = s.x / n;
    // Rounding may leave the difference a little below 0; max(NaN, 0) may give 0.
    let variance = s.y / n - mean_shifted * mean_shifted;
    return vec2<f32>(shift + mean_shifted, keep_nan(variance, max(variance, 0.0)));
}

// 1/std from a biased variance.
fn invstd_of(var_biased: f32) -> f32 {
    return keep_nan(var_biased, inverseSqrt(var_biased + p.eps));
}

// Writes feature f's mean and 1/std from the batch's mean and biased variance over n rows,
// and updates its running statistics; returns (mean, 1/std).
fn save_moments(f: u32, mean: f32, var_biased: f32, n: f32) -> vec2<f32> {
    let invstd = invstd_of(var_biased);
    saved[sb + f] = mean;
    saved[sb + p.d + f] = invstd;

    var m = p.momentum;
    if ((p.flags & FLAG_CUMULATIVE) != 0u) {
        m = 1.0 / f32(num_batches_tracked[cb] + 1u);
    }
    let var_unbiased = var_biased * n / max(n - 1.0, 1.0);
    if (live()) {
        running[rb + f] = (1.0 - m) * running[rb + f] + m * mean;
        running[rb + p.d + f] = (1.0 - m) * running[rb + p.d + f] + m * var_unbiased;
    }
    return vec2<f32>(mean, invstd);
}

// SyncBatchNorm, before the ranks' exchange: this rank's batch mean and biased variance,
// saved = [mean; var] (shifted sums, as stats).
@compute @workgroup_size(WG_FEATURES, ROWS)
fn local_moments(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    enter(gid.z);
    let f = gid.x;
    let fc = min(f, p.d - 1u);
    let shift = x[xb + fc];
    let s = shifted_sums(fc, shift, lid);
    if (f >= p.d || lid.y != 0u) { return; }
    let m = moments(shift, s);
    saved[sb + f] = m.x;
    saved[sb + p.d + f] = m.y;
}

// SyncBatchNorm, after the exchange left the global batch's [mean; var] in saved: 1/std in
// its place and the running statistics over the global batch's p.n rows.
@compute @workgroup_size(WG_FEATURES, 1)
fn apply_moments(@builtin(global_invocation_id) gid: vec3<u32>) {
    enter(gid.z);
    let f = gid.x;
    if (f >= p.d) { return; }
    save_moments(f, saved[sb + f], saved[sb + p.d + f], f32(p.n));
}

// y[i] from its feature's statistics, γ and β: x̂·γ + β (then ReLU, then dropout).
fn normalized(i: u32, mean: f32, invstd: f32, g: f32, b: f32) -> f32 {
    var v = (x[xb + i] - mean) * invstd * g + b;
    if ((p.flags & FLAG_RELU) != 0u) { v = relu(v); }
    if ((p.flags & FLAG_DROPOUT) != 0u) {
        // Element i's word of the draw dropout.wgsl makes for its group of four.
        let step = steps[member];
        let bits = philox4x32_10(vec4<u32>(i >> 2u, 0u, step.step_lo, step.step_hi), vec2<u32>(step.seed_key, p.layer));
        let keep = (bits[i & 3u] >> 8u) >= drops[member].x;
        v = v * select(0.0, bitcast<f32>(drops[member].y), keep);
    }
    return v;
}

// CPU adapters: stats and normalize in one dispatch, one invocation per feature walking its
// column twice. On lavapipe a dispatch costs tens of microseconds, more than this pass over
// a small batch. Not for the cumulative average: it reads num_batches_tracked, which this
// dispatch also counts, and workgroups have no order.
@compute @workgroup_size(WG_FEATURES, 1)
fn stats_normalize(@builtin(global_invocation_id) gid: vec3<u32>) {
    enter(gid.z);
    let f = gid.x;
    if (f >= p.d) { return; }
    let shift = x[xb + f];
    var s = vec2<f32>(0.0);
    for (var r = 0u; r < p.n; r++) {
        let v = x[xb + r * p.d + f] - shift;
        s += vec2<f32>(v, v * v);
    }
    let stats = save_stats(f, shift, s);
    if (f == 0u && live()) { num_batches_tracked[cb] += 1u; }
    normalize_column(f, stats.x, stats.y);
}

// GPUs, a batch of at most a few thousand rows: stats and normalize in one dispatch, the
// ROWS invocations of a feature summing its rows as stats does (shifted_sums, the same order)
// and then each mapping its share of them as normalize does: the same bits, one dispatch and
// one barrier fewer. Not for the cumulative average (see stats_normalize).
@compute @workgroup_size(WG_FEATURES, ROWS)
fn stats_normalize_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    enter(gid.z);
    let f = gid.x;
    let fc = min(f, p.d - 1u);
    let shift = x[xb + fc];
    let s = shifted_sums(fc, shift, lid);
    if (f >= p.d) { return; }
    var stats: vec2<f32>;
    if (lid.y == 0u) {
        stats = save_stats(f, shift, s);
        if (f == 0u && (p.flags & FLAG_COUNT_BATCH) != 0u && live()) { num_batches_tracked[cb] += 1u; }
    } else {
        let m = moments(shift, s);
        stats = vec2<f32>(m.x, invstd_of(m.y));
    }
    let g = gamma[pb + f];
    let b = beta[pb + f];
    for (var r = lid.y; r < p.n; r += ROWS) {
        let i = r * p.d + f;
        y[xb + i] = normalized(i, stats.x, stats.y, g, b);
    }
}

// Feature f's column of y, its γ and β loaded once.
fn normalize_column(f: u32, mean: f32, invstd: f32) {
    let g = gamma[pb + f];
    let b = beta[pb + f];
    for (var r = 0u; r < p.n; r++) {
        let i = r * p.d + f;
        y[xb + i] = normalized(i, mean, invstd, g, b);
    }
}

// Feature f's 1/std from the saved binding: saved as is, or from the running variance.
fn saved_invstd(f: u32) -> f32 {
    if ((p.flags & FLAG_FROM_VARIANCE) != 0u) {
        return invstd_of(saved[sb + p.d + f]);
    }
    return saved[sb + p.d + f];
}

// CPU adapters, eval mode: normalize's work with one invocation per feature walking its
// column, so the feature's statistics, γ and β are loaded once rather than per element.
@compute @workgroup_size(WG_FEATURES, 1)
fn normalize_columns(@builtin(global_invocation_id) gid: vec3<u32>) {
    enter(gid.z);
    let f = gid.x;
    if (f >= p.d) { return; }
    normalize_column(f, saved[sb + f], saved_invstd(f));
}

// Element-wise kernels run on a 2-D grid — x over features, y (and z) over rows — so no
// invocation divides to find its feature (integer division is scalar per lane on lavapipe).
const MAP_X: u32 = 64u;
const MAP_Y: u32 = 4u;

fn map_row(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.y + (gid.z % p.zrows) * nwg.y * MAP_Y;
}

// The member of an element grid's invocation: its z-slice of rows.
fn map_member(gid: vec3<u32>) -> u32 {
    return gid.z / p.zrows;
}

// y = x̂·γ + β (then ReLU), with x̂ from the batch stats or the running stats.
@compute @workgroup_size(MAP_X, MAP_Y)
fn normalize(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    enter(map_member(gid));
    let f = gid.x;
    let r = map_row(gid, nwg);
    if (f == 0u && r == 0u && (p.flags & FLAG_COUNT_BATCH) != 0u && live()) {
        // After stats has read it (a dispatch boundary separates them).
        num_batches_tracked[cb] += 1u;
    }
    if (f >= p.d || r >= p.n) { return; }
    let i = r * p.d + f;
    y[xb + i] = normalized(i, saved[sb + f], saved_invstd(f), gamma[pb + f], beta[pb + f]);
}

fn upstream(i: u32) -> f32 {
    // Through the fused ReLU (and dropout): its output y is 0 exactly where the gradient stops.
    var g = dy[xb + i];
    if ((p.flags & FLAG_RELU) != 0u) { g = relu_backward(y[xb + i], g); }
    if ((p.flags & FLAG_DROPOUT) != 0u) { g *= bitcast<f32>(drops[member].y); }
    return g;
}

// Feature fc's Σdy and Σdy·x̂ (dβ, dγ) over the batch, its rows split over the workgroup's
// ROWS invocations; every invocation gets the totals.
fn upstream_sums(fc: u32, mean: f32, invstd: f32, lid: vec3<u32>) -> vec2<f32> {
    var s = vec2<f32>(0.0);
    for (var r = lid.y; r < p.n; r += ROWS) {
        let i = r * p.d + fc;
        let g = upstream(i);
        s += vec2<f32>(g, g * (x[xb + i] - mean) * invstd);
    }
    return reduce_rows(lid, s);
}

// dx at element i of feature f from the sums (dβ, dγ) over n rows.
fn dx_at(i: u32, f: u32, mean: f32, invstd: f32, sums: vec2<f32>, n: f32) -> f32 {
    let xhat = (x[xb + i] - mean) * invstd;
    return gamma[pb + f] * invstd / n * (n * upstream(i) - sums.x - xhat * sums.y);
}

// dβ and dγ per feature.
@compute @workgroup_size(WG_FEATURES, ROWS)
fn backward_reduce(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    enter(gid.z);
    let f = gid.x;
    let fc = min(f, p.d - 1u);
    let s = upstream_sums(fc, saved[sb + fc], saved[sb + p.d + fc], lid);
    if (f >= p.d || lid.y != 0u) { return; }
    dbeta[pb + f] = s.x;
    dgamma[pb + f] = s.y;
}

// Feature f's backward walking its column twice; returns Σ_r dx in row order (what a
// column sum of dx with one invocation per column gives).
fn column_backward(f: u32) -> f32 {
    let mean = saved[sb + f];
    let invstd = saved[sb + p.d + f];
    var s = vec2<f32>(0.0);
    for (var r = 0u; r < p.n; r++) {
        let i = r * p.d + f;
        let g = upstream(i);
        s += vec2<f32>(g, g * (x[xb + i] - mean) * invstd);
    }
    dbeta[pb + f] = s.x;
    dgamma[pb + f] = s.y;
    let n = f32(p.n);
    let scale = gamma[pb + f] * invstd / n;
    var dx_sum = 0.0;
    for (var r = 0u; r < p.n; r++) {
        let i = r * p.d + f;
        let xhat = (x[xb + i] - mean) * invstd;
        let g = scale * (n * upstream(i) - s.x - xhat * s.y);
        dx[xb + i] = g;
        dx_sum += g;
    }
    return dx_sum;
}

// CPU adapters: backward_reduce and backward_dx in one dispatch, one invocation per feature.
@compute @workgroup_size(WG_FEATURES, 1)
fn backward_column(@builtin(global_invocation_id) gid: vec3<u32>) {
    enter(gid.z);
    if (gid.x < p.d) { _ = column_backward(gid.x); }
}

// The same, also writing the preceding Linear's bias gradient: no column-sum dispatch.
@compute @workgroup_size(WG_FEATURES, 1)
fn backward_column_bias(@builtin(global_invocation_id) gid: vec3<u32>) {
    enter(gid.z);
    if (gid.x < p.d) { dbias[pb + gid.x] = column_backward(gid.x); }
}

// GPUs, a batch of at most a few thousand rows: backward_reduce and backward_dx in one
// dispatch, the ROWS invocations of a feature summing its rows as backward_reduce does and
// then each computing its share of dx as backward_dx does. Returns the invocation's share of
// Σ_r dx, summed in the column-sum kernel's order (rows lid.y, lid.y + ROWS, …).
fn rows_backward(gid: vec3<u32>, lid: vec3<u32>) -> f32 {
    let f = gid.x;
    let fc = min(f, p.d - 1u);
    let mean = saved[sb + fc];
    let invstd = saved[sb + p.d + fc];
    let s = upstream_sums(fc, mean, invstd, lid);
    var dx_sum = 0.0;
    if (f < p.d) {
        if (lid.y == 0u) {
            dbeta[pb + f] = s.x;
            dgamma[pb + f] = s.y;
        }
        let n = f32(p.n);
        for (var r = lid.y; r < p.n; r += ROWS) {
            let i = r * p.d + f;
            let g = dx_at(i, f, mean, invstd, s, n);
            dx[xb + i] = g;
            dx_sum += g;
        }
    }
    return dx_sum;
}

@compute @workgroup_size(WG_FEATURES, ROWS)
fn backward_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    enter(gid.z);
    _ = rows_backward(gid, lid);
}

// The same, also writing the preceding Linear's bias gradient: no column-sum dispatch.
@compute @workgroup_size(WG_FEATURES, ROWS)
fn backward_rows_bias(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    enter(gid.z);
    let share = rows_backward(gid, lid);
    // Every invocation has read the first reduction's total before the partials are reused.
    workgroupBarrier();
    let total = reduce_rows(lid, vec2<f32>(share, 0.0)).x;
    if (gid.x < p.d && lid.y == 0u) { dbias[pb + gid.x] = total; }
}

@compute @workgroup_size(MAP_X, MAP_Y)
fn backward_dx(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    enter(map_member(gid));
    let f = gid.x;
    let r = map_row(gid, nwg);
    if (f >= p.d || r >= p.n) { return; }
    let n = f32(select(p.n, p.total, p.total != 0u));
    let sums = vec2<f32>(dbeta[pb + f], dgamma[pb + f]);
    dx[xb + r * p.d + f] = dx_at(r * p.d + f, f, saved[sb + f], saved[sb + p.d + f], sums, n);
}
