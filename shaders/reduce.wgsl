// Reductions.
//   column_sum: out[j] = Σ_i x[i, j] over x: [N, D]   (a Linear layer's bias gradient)
//   metrics:    folds a batch's per-row (loss, correct, counted, _) into running totals
//               (fold_batch, shaders/totals.wgsl)

struct Params {
    n: u32,
    d: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> rows: array<vec4<f32>>;
// The running totals (layout: shaders/totals.wgsl).
@group(0) @binding(5) var<storage, read_write> totals: array<f32>;

// column_sum: WG_FEATURES × ROWS invocations per workgroup, ROWS of them sharing a column's
// rows (16 on GPUs, 1 on lavapipe where barriers are costly).
override WG_FEATURES: u32 = 64u;
override ROWS: u32 = 1u;

var<workgroup> column_partial: array<f32, 256>;

@compute @workgroup_size(WG_FEATURES, ROWS)
fn column_sum(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let j = min(gid.x, p.d - 1u);
    var s = 0.0;
    for (var i = lid.y; i < p.n; i += ROWS) { s += x[i * p.d + j]; }
    if (ROWS > 1u) {
        let slot = lid.y * WG_FEATURES + lid.x;
        column_partial[slot] = s;
        workgroupBarrier();
        for (var width = ROWS / 2u; width > 0u; width /= 2u) {
            if (lid.y < width) { column_partial[slot] += column_partial[slot + width * WG_FEATURES]; }
            workgroupBarrier();
        }
        s = column_partial[lid.x];
    }
    if (gid.x < p.d && lid.y == 0u) { out[gid.x] = s; }
}

// One workgroup: each invocation sums a strided share of the rows, then fold_batch
// (shaders/totals.wgsl).
@compute @workgroup_size(TOTALS_WG)
fn metrics(@builtin(local_invocation_index) lid: u32) {
    var s = vec4<f32>(0.0);
    for (var i = lid; i < p.n; i += TOTALS_WG) { s += rows[i]; }
    fold_batch(lid, s);
}
