// Reductions.
//   column_sum: out[j] = Σ_i x[i, j] over x: [N, D]   (a Linear layer's bias gradient)
//   metrics:    folds a batch's per-row (loss, correct, counted, _) into running totals
//               (fold_batch, shaders/totals.wgsl)
// Stacked plans: workgroups along z are members. Member m's x (rows) is at m · N·D (m · N),
// its out at m · out_stride (a gradient's stride in the flat buffer), its totals at
// m · TOTALS_LEN.

struct Params {
    n: u32,
    d: u32,
    // Elements from one member's out to the next.
    out_stride: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> steps: array<Step>;
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
    let member = gid.z;
    let base = member * p.n * p.d;
    let j = min(gid.x, p.d - 1u);
    var s = 0.0;
    for (var i = lid.y; i < p.n; i += ROWS) { s += x[base + i * p.d + j]; }
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
    if (gid.x < p.d && lid.y == 0u) { out[member * p.out_stride + gid.x] = s; }
}

// One workgroup per member: each invocation sums a strided share of the member's rows, then
// fold_batch (shaders/totals.wgsl).
@compute @workgroup_size(TOTALS_WG)
fn metrics(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let member = wid.z;
    let base = member * p.n;
    var s = vec4<f32>(0.0);
    for (var i = lid; i < p.n; i += TOTALS_WG) { s += rows[base + i]; }
    fold_batch(lid, s, member);
}
