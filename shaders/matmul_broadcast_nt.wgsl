// broadcast_nt: C[M,N] = A[M,K] · B[N,K]ᵀ (Linear forward) on CPU adapters (lavapipe) whose
// subgroups have at least 8 lanes; B is read as vec4 along K (K % 4 == 0). Needs SUBGROUP.
//
// A workgroup of 32 invocations computes ROWS (12 or 16) rows × 64 columns of C: invocation l
// owns columns l and l + 32. Every 8 steps of K, lane j of each subgroup loads A(row, k0 + j)
// for the ROWS rows and subgroupBroadcast hands each lane the 8 values in turn, while each
// lane reads its two columns of B as four vec4. On lavapipe a storage load costs a loop over
// the SIMD lanes with a bounds check per lane and component, and a broadcast one register
// shuffle: this shape of work (12 loads of A and 4 of B per 192 FMAs) ran 1024³ at 42 GFLOP/s
// where an 8×8 block per invocation ran 20; 16 rows reuse each load of B for a third more
// rows (1024³ about a tenth faster again).
//
// Every index is clamped into the shape, and `matmul::dispatch` checks the bindings hold it:
// the module is built without runtime bounds checks.

@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

// ROWS (12 or 16) is defined before this file by the launcher's choice for M
// (`BroadcastRows` in src/gpu/kernel.rs).

// acc + Σ_j A(row, k0 + j) · (B(c0, k0 + j), B(c1, k0 + j)), where lane j of the subgroup holds
// A(row, k0 + j) in `a_lane`; lo0, hi0 hold B(c0, k0..k0 + 8) and lo1, hi1 the same for c1.
fn dot8x2(acc: vec2<f32>, a_lane: f32, lo0: vec4<f32>, hi0: vec4<f32>, lo1: vec4<f32>, hi1: vec4<f32>) -> vec2<f32> {
    var s = fma(vec2(subgroupBroadcast(a_lane, 0u)), vec2(lo0.x, lo1.x), acc);
    s = fma(vec2(subgroupBroadcast(a_lane, 1u)), vec2(lo0.y, lo1.y), s);
    s = fma(vec2(subgroupBroadcast(a_lane, 2u)), vec2(lo0.z, lo1.z), s);
    s = fma(vec2(subgroupBroadcast(a_lane, 3u)), vec2(lo0.w, lo1.w), s);
    s = fma(vec2(subgroupBroadcast(a_lane, 4u)), vec2(hi0.x, hi1.x), s);
    s = fma(vec2(subgroupBroadcast(a_lane, 5u)), vec2(hi0.y, hi1.y), s);
    s = fma(vec2(subgroupBroadcast(a_lane, 6u)), vec2(hi0.z, hi1.z), s);
    return fma(vec2(subgroupBroadcast(a_lane, 7u)), vec2(hi0.w, hi1.w), s);
}

@compute @workgroup_size(32)
fn broadcast_nt(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
    @builtin(subgroup_invocation_id) subgroup_lane: u32,
) {
    enter_member(wg.z);
    let k4 = p.k / 4u;
    let col0 = wg.x * 64u + li;
    let col1 = col0 + 32u;
    // Columns past N compute a copy of the last one and skip the store: every lane stays
    // active, as the broadcasts need.
    let b0 = b_base / 4u + min(col0, p.n - 1u) * k4;
    let b1 = b_base / 4u + min(col1, p.n - 1u) * k4;
    let lane = subgroup_lane % 8u;
    let r0 = wg.y * ROWS;
    var ra: array<u32, ROWS>;
    for (var i = 0u; i < ROWS; i++) {
        ra[i] = a_base + min(r0 + i, p.m - 1u) * p.k;
    }
    var acc: array<vec2<f32>, ROWS>;
    let k8 = p.k - p.k % 8u;
    for (var k0 = 0u; k0 < k8; k0 += 8u) {
        let q = k0 / 4u;
        let lo0 = b[b0 + q];
        let hi0 = b[b0 + q + 1u];
        let lo1 = b[b1 + q];
        let hi1 = b[b1 + q + 1u];
        for (var i = 0u; i < ROWS; i++) {
            acc[i] = dot8x2(acc[i], a[ra[i] + k0 + lane], lo0, hi0, lo1, hi1);
        }
    }
    if (k8 < p.k) {
        // K % 8 == 4: the last four steps, with lanes 4..8 contributing 0.
        let q = k8 / 4u;
        let lo0 = b[b0 + q];
        let lo1 = b[b1 + q];
        let zero = vec4(0.0);
        let ka = k8 + min(lane, 3u);
        for (var i = 0u; i < ROWS; i++) {
            let a_lane = select(0.0, a[ra[i] + ka], lane < 4u);
            acc[i] = dot8x2(acc[i], a_lane, lo0, zero, lo1, zero);
        }
    }
    let last_bias = arrayLength(&bias) - 1u;
    let bias0 = bias[min(bias_base + col0, last_bias)];
    let bias1 = bias[min(bias_base + col1, last_bias)];
    for (var i = 0u; i < ROWS; i++) {
        let row = r0 + i;
        if (row >= p.m) { break; }
        if (col0 < p.n) { c[c_base + row * p.n + col0] = epilogue1(acc[i].x, bias0); }
        if (col1 < p.n) { c[c_base + row * p.n + col1] = epilogue1(acc[i].y, bias1); }
    }
}
