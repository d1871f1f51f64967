// broadcast_nn: C[M,N] = op(A) · B[K,N] with A at (i, k) → i·a_row + k·a_col (NN: Linear dX,
// TN: Linear dW) on CPU adapters (lavapipe) whose subgroups have at least 8 lanes; B, bias and
// C are read and written as vec2 along N (N % 2 == 0). Needs SUBGROUP.
//
// A workgroup of 32 invocations computes ROWS (12 or 16) rows × 64 columns of C, two adjacent
// columns per invocation. Every 8 steps of K, lane j of each subgroup loads A(row, k0 + j) for
// the ROWS rows and subgroupBroadcast hands each lane the 8 values in turn; each lane reads 8
// vec2 of B.
// See matmul_broadcast_nt.wgsl for why this suits lavapipe (1024³: 37 GFLOP/s vs 26).
//
// Every index is clamped into the shape, and `matmul::dispatch` checks the bindings hold it:
// the module is built without runtime bounds checks.

@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read> bias: array<vec2<f32>>;
@group(0) @binding(4) var<storage, read_write> c: array<vec2<f32>>;

// ROWS (12 or 16) is defined before this file by the launcher's choice for M
// (`BroadcastRows` in src/gpu/kernel.rs).

// acc + Σ_j A(row, k0 + j) · B(k0 + j, cols), where lane j of the subgroup holds A(row, k0 + j)
// in `a_lane` and bv[j] holds B(k0 + j, cols).
fn dot8(acc: vec2<f32>, a_lane: f32, bv: array<vec2<f32>, 8>) -> vec2<f32> {
    var s = fma(vec2(subgroupBroadcast(a_lane, 0u)), bv[0], acc);
    s = fma(vec2(subgroupBroadcast(a_lane, 1u)), bv[1], s);
    s = fma(vec2(subgroupBroadcast(a_lane, 2u)), bv[2], s);
    s = fma(vec2(subgroupBroadcast(a_lane, 3u)), bv[3], s);
    s = fma(vec2(subgroupBroadcast(a_lane, 4u)), bv[4], s);
    s = fma(vec2(subgroupBroadcast(a_lane, 5u)), bv[5], s);
    s = fma(vec2(subgroupBroadcast(a_lane, 6u)), bv[6], s);
    return fma(vec2(subgroupBroadcast(a_lane, 7u)), bv[7], s);
}

@compute @workgroup_size(32)
fn broadcast_nn(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
    @builtin(subgroup_invocation_id) subgroup_lane: u32,
) {
    enter_member(wg.z);
    let n2 = p.n / 2u;
    let b2 = b_base / 2u;
    let cx = wg.x * 32u + li;
    // Column pairs past N compute a copy of the last one and skip the store: every lane
    // stays active, as the broadcasts need.
    let cb = min(cx, n2 - 1u);
    let lane = subgroup_lane % 8u;
    let r0 = wg.y * ROWS;
    var ra: array<u32, ROWS>;
    for (var i = 0u; i < ROWS; i++) {
        ra[i] = a_base + min(r0 + i, p.m - 1u) * p.a_row;
    }
    var acc: array<vec2<f32>, ROWS>;
    let k8 = p.k - p.k % 8u;
    for (var k0 = 0u; k0 < k8; k0 += 8u) {
        var bv: array<vec2<f32>, 8>;
        for (var j = 0u; j < 8u; j++) {
            bv[j] = b[b2 + (k0 + j) * n2 + cb];
        }
        let ka = (k0 + lane) * p.a_col;
        for (var i = 0u; i < ROWS; i++) {
            acc[i] = dot8(acc[i], a[ra[i] + ka], bv);
        }
    }
    if (k8 < p.k) {
        // The last K % 8 steps: lanes and steps past K contribute 0.
        let valid = p.k - k8;
        var bv: array<vec2<f32>, 8>;
        for (var j = 0u; j < 8u; j++) {
            bv[j] = select(vec2(0.0), b[b2 + (k8 + min(j, valid - 1u)) * n2 + cb], j < valid);
        }
        let ka = (k8 + min(lane, valid - 1u)) * p.a_col;
        for (var i = 0u; i < ROWS; i++) {
            acc[i] = dot8(acc[i], select(0.0, a[ra[i] + ka], lane < valid), bv);
        }
    }
    if (cx >= n2) { return; }
    let bias_pair = bias[min(bias_base / 2u + cx, arrayLength(&bias) - 1u)];
    for (var i = 0u; i < ROWS; i++) {
        let row = r0 + i;
        if (row >= p.m) { break; }
        let v = acc[i];
        c[c_base / 2u + row * n2 + cx] = vec2(epilogue1(v.x, bias_pair.x), epilogue1(v.y, bias_pair.y));
    }
}
