// nn_bvec4: C[M,N] = A[M,K] · B[K,N];  tn_bvec4: C[M,N] = A[K,M]ᵀ · B[K,N].
// B and C are read and written as vec4 along N (N % 4 == 0); A is read one scalar at a time.
// Invocation (x, y) computes rows 8y..8y+7 and columns 8x..8x+7 of C.

@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> bias: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> c: array<vec4<f32>>;

fn store_block(r0: u32, cx: u32, acc: ptr<function, array<vec4<f32>, 16>>) {
    let n4 = p.n / 4u;
    let last = arrayLength(&bias) - 1u;
    for (var i = 0u; i < 8u; i++) {
        let row = r0 + i;
        if (row >= p.m) { break; }
        let c4 = c_base / 4u + row * n4;
        let b4 = bias_base / 4u;
        c[c4 + cx] = epilogue4((*acc)[2u * i], bias[min(b4 + cx, last)]);
        if (cx + 1u < n4) {
            c[c4 + cx + 1u] = epilogue4((*acc)[2u * i + 1u], bias[min(b4 + cx + 1u, last)]);
        }
    }
}

@compute @workgroup_size(WG_X, WG_Y)
fn nn_bvec4(@builtin(global_invocation_id) gid: vec3<u32>) {
    enter_member(gid.z);
    let n4 = p.n / 4u;
    let b4 = b_base / 4u;
    let cx = gid.x * 2u;
    let r0 = gid.y * 8u;
    if (cx >= n4 || r0 >= p.m) { return; }
    let cx1 = min(cx + 1u, n4 - 1u);
    var ra: array<u32, 8>;
    for (var i = 0u; i < 8u; i++) { ra[i] = a_base + min(r0 + i, p.m - 1u) * p.k; }
    var acc: array<vec4<f32>, 16>;
    for (var k = 0u; k < p.k; k++) {
        let b0 = b[b4 + k * n4 + cx];
        let b1 = b[b4 + k * n4 + cx1];
        for (var i = 0u; i < 8u; i++) {
            let av = vec4(a[ra[i] + k]);
            acc[2u * i] = fma(av, b0, acc[2u * i]);
            acc[2u * i + 1u] = fma(av, b1, acc[2u * i + 1u]);
        }
    }
    store_block(r0, cx, &acc);
}

@compute @workgroup_size(WG_X, WG_Y)
fn tn_bvec4(@builtin(global_invocation_id) gid: vec3<u32>) {
    enter_member(gid.z);
    let n4 = p.n / 4u;
    let b4 = b_base / 4u;
    let cx = gid.x * 2u;
    let r0 = gid.y * 8u;
    if (cx >= n4 || r0 >= p.m) { return; }
    let cx1 = min(cx + 1u, n4 - 1u);
    var acc: array<vec4<f32>, 16>;
    for (var k = 0u; k < p.k; k++) {
        let b0 = b[b4 + k * n4 + cx];
        let b1 = b[b4 + k * n4 + cx1];
        for (var i = 0u; i < 8u; i++) {
            let av = vec4(a[a_base + k * p.m + min(r0 + i, p.m - 1u)]);
            acc[2u * i] = fma(av, b0, acc[2u * i]);
            acc[2u * i + 1u] = fma(av, b1, acc[2u * i + 1u]);
        }
    }
    store_block(r0, cx, &acc);
}
