// broadcast: any layout through strides, any shape; for CPU adapters (lavapipe) whose
// subgroups have at least 8 lanes. Needs the SUBGROUP feature.
//
// A workgroup of 64 invocations computes 16 rows × 64 columns of C, one column per invocation.
// Every 8 steps of K, lane l of each subgroup loads A(row, k0 + l) for the workgroup's 16 rows,
// and subgroupBroadcast hands each lane the 8 values in turn: 16 storage loads of A and 8 of B
// per 128 FMAs. On lavapipe a storage load costs far more than a broadcast (a register
// shuffle), so this beats keeping A's loads merely uniform (1024³: 30 vs 20 GFLOP/s).
//
// Every load is clamped into the bound ranges, which `matmul::dispatch` checks against the
// shape: the module is built without runtime bounds checks.

@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

const ROWS: u32 = 16u;

// acc + Σ_j A(row, k0 + j) · B(k0 + j, col), where lane j of the subgroup holds A(row, k0 + j)
// in `a_lane` and `lo`, `hi` hold B(k0..k0 + 8, col).
fn dot8(acc: f32, a_lane: f32, lo: vec4<f32>, hi: vec4<f32>) -> f32 {
    var s = fma(subgroupBroadcast(a_lane, 0u), lo.x, acc);
    s = fma(subgroupBroadcast(a_lane, 1u), lo.y, s);
    s = fma(subgroupBroadcast(a_lane, 2u), lo.z, s);
    s = fma(subgroupBroadcast(a_lane, 3u), lo.w, s);
    s = fma(subgroupBroadcast(a_lane, 4u), hi.x, s);
    s = fma(subgroupBroadcast(a_lane, 5u), hi.y, s);
    s = fma(subgroupBroadcast(a_lane, 6u), hi.z, s);
    return fma(subgroupBroadcast(a_lane, 7u), hi.w, s);
}

// B(k0 + j, col) for j < 8 at `kb` = k0 · b_row + col · b_col; steps past `valid` read 0.
fn load_b8(kb: u32, valid: u32) -> array<f32, 8> {
    var v: array<f32, 8>;
    for (var j = 0u; j < 8u; j++) {
        v[j] = select(0.0, b[kb + min(j, valid - 1u) * p.b_row], j < valid);
    }
    return v;
}

@compute @workgroup_size(64)
fn broadcast(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
    @builtin(subgroup_invocation_id) subgroup_lane: u32,
) {
    let col = wg.x * 64u + li;
    // Columns past N compute a copy of the last one and skip the store: every lane stays
    // active, as the broadcasts need.
    let cb = min(col, p.n - 1u) * p.b_col;
    let lane = subgroup_lane % 8u;
    let r0 = wg.y * ROWS;
    var ra: array<u32, ROWS>;
    for (var i = 0u; i < ROWS; i++) {
        ra[i] = min(r0 + i, p.m - 1u) * p.a_row;
    }
    var acc: array<f32, ROWS>;
    let k8 = p.k - p.k % 8u;
    for (var k0 = 0u; k0 < k8; k0 += 8u) {
        let kb = k0 * p.b_row + cb;
        let lo = vec4(b[kb], b[kb + p.b_row], b[kb + 2u * p.b_row], b[kb + 3u * p.b_row]);
        let hi = vec4(b[kb + 4u * p.b_row], b[kb + 5u * p.b_row], b[kb + 6u * p.b_row], b[kb + 7u * p.b_row]);
        let ka = (k0 + lane) * p.a_col;
        for (var i = 0u; i < ROWS; i++) {
            acc[i] = dot8(acc[i], a[ra[i] + ka], lo, hi);
        }
    }
    if (k8 < p.k) {
        // The last K % 8 steps: lanes and steps past K contribute 0.
        let valid = p.k - k8;
        let bt = load_b8(k8 * p.b_row + cb, valid);
        let lo = vec4(bt[0], bt[1], bt[2], bt[3]);
        let hi = vec4(bt[4], bt[5], bt[6], bt[7]);
        let ka = (k8 + min(lane, valid - 1u)) * p.a_col;
        for (var i = 0u; i < ROWS; i++) {
            acc[i] = dot8(acc[i], select(0.0, a[ra[i] + ka], lane < valid), lo, hi);
        }
    }
    if (col >= p.n) { return; }
    let bias_at = bias[min(col, arrayLength(&bias) - 1u)];
    for (var i = 0u; i < ROWS; i++) {
        let row = r0 + i;
        if (row >= p.m) { break; }
        c[row * p.n + col] = epilogue1(acc[i], bias_at);
    }
}
