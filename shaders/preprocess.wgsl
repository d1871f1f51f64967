// The fitted preprocessing's element-wise part, over a batch of rows of D features:
//   out[r, j] = (x[r, j] − shift[j]) / divisor[j]     (divisor: 1 when the option has none)
// A matrix, when the option has one (PCA, whitening, ZCA), is applied after by the matmul.

struct Params {
    len: u32,
    features: u32,
    has_divisor: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> shift: array<f32>;
@group(0) @binding(3) var<storage, read> divisor: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

override WG: u32 = 256u;

@compute @workgroup_size(WG)
fn centre(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.len) { return; }
    let j = i % p.features;
    let c = x[i] - shift[j];
    if (p.has_divisor != 0u) {
        out[i] = c / divisor[j];
    } else {
        out[i] = c;
    }
}
