// general: any layout through strides, any shape, 4×4 outputs per invocation, scalar loads.
// The fallback when no vectorized variant fits, and a second oracle for the others.

@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

@compute @workgroup_size(WG_X, WG_Y)
fn general(@builtin(global_invocation_id) gid: vec3<u32>) {
    enter_member(gid.z);
    let c0 = gid.x * 4u;
    let r0 = gid.y * 4u;
    if (c0 >= p.n || r0 >= p.m) { return; }
    var acc: array<vec4<f32>, 4>;
    var ra: array<u32, 4>;
    var cb: array<u32, 4>;
    for (var i = 0u; i < 4u; i++) {
        ra[i] = a_base + min(r0 + i, p.m - 1u) * p.a_row;
        cb[i] = b_base + min(c0 + i, p.n - 1u) * p.b_col;
    }
    for (var k = 0u; k < p.k; k++) {
        let kb = k * p.b_row;
        let bv = vec4(b[kb + cb[0]], b[kb + cb[1]], b[kb + cb[2]], b[kb + cb[3]]);
        let ka = k * p.a_col;
        for (var i = 0u; i < 4u; i++) {
            acc[i] = fma(vec4(a[ra[i] + ka]), bv, acc[i]);
        }
    }
    let last = arrayLength(&bias) - 1u;
    for (var i = 0u; i < 4u; i++) {
        let row = r0 + i;
        if (row >= p.m) { break; }
        for (var j = 0u; j < 4u; j++) {
            let col = c0 + j;
            if (col < p.n) {
                c[c_base + row * p.n + col] = epilogue1(acc[i][j], bias[min(bias_base + col, last)]);
            }
        }
    }
}
