// nt_vec4: C[M,N] = A[M,K] · B[N,K]ᵀ, loads of A and B as vec4 along K (K % 4 == 0).
// Invocation (x, y) computes rows 8y..8y+7 and columns 8x..8x+7 of C.

@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

@compute @workgroup_size(WG_X, WG_Y)
fn nt_vec4(@builtin(global_invocation_id) gid: vec3<u32>) {
    enter_member(gid.z);
    let c0 = gid.x * 8u;
    let r0 = gid.y * 8u;
    if (c0 >= p.n || r0 >= p.m) { return; }
    let k4 = p.k / 4u;
    var rb: array<u32, 8>;
    for (var j = 0u; j < 8u; j++) { rb[j] = b_base / 4u + min(c0 + j, p.n - 1u) * k4; }
    let a4 = a_base / 4u;
    // acc[2i] holds C[r0+i, c0..c0+3], acc[2i+1] holds C[r0+i, c0+4..c0+7].
    var acc: array<vec4<f32>, 16>;
    for (var kk = 0u; kk < k4; kk++) {
        let b0 = b[rb[0] + kk]; let b1 = b[rb[1] + kk]; let b2 = b[rb[2] + kk]; let b3 = b[rb[3] + kk];
        let b4 = b[rb[4] + kk]; let b5 = b[rb[5] + kk]; let b6 = b[rb[6] + kk]; let b7 = b[rb[7] + kk];
        // Transposed in registers: lo.x = (b0.x, b1.x, b2.x, b3.x), the k-th slice of 4 columns.
        let lx = vec4(b0.x, b1.x, b2.x, b3.x); let hx = vec4(b4.x, b5.x, b6.x, b7.x);
        let ly = vec4(b0.y, b1.y, b2.y, b3.y); let hy = vec4(b4.y, b5.y, b6.y, b7.y);
        let lz = vec4(b0.z, b1.z, b2.z, b3.z); let hz = vec4(b4.z, b5.z, b6.z, b7.z);
        let lw = vec4(b0.w, b1.w, b2.w, b3.w); let hw = vec4(b4.w, b5.w, b6.w, b7.w);
        for (var i = 0u; i < 8u; i++) {
            let av = a[a4 + min(r0 + i, p.m - 1u) * k4 + kk];
            acc[2u * i] = fma(vec4(av.w), lw, fma(vec4(av.z), lz, fma(vec4(av.y), ly, fma(vec4(av.x), lx, acc[2u * i]))));
            acc[2u * i + 1u] = fma(vec4(av.w), hw, fma(vec4(av.z), hz, fma(vec4(av.y), hy, fma(vec4(av.x), hx, acc[2u * i + 1u]))));
        }
    }
    for (var i = 0u; i < 8u; i++) {
        let row = r0 + i;
        if (row >= p.m) { break; }
        for (var j = 0u; j < 8u; j++) {
            let col = c0 + j;
            if (col < p.n) {
                c[c_base + row * p.n + col] = epilogue1(acc[2u * i + j / 4u][j % 4u], bias[min(bias_base + col, arrayLength(&bias) - 1u)]);
            }
        }
    }
}
