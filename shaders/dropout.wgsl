// Dropout: y = x · mask · 1/(1-p), mask drawn by Philox4x32-10 with key (seed, layer) and
// counter (element / 4, 0, step): one draw gives the mask of 4 consecutive elements.
// The same kernel is the backward (dx = dy · mask · scale): the mask is recomputed, not stored.

struct Params {
    len: u32,
    // Keep an element when the top 24 bits of its random word are ≥ threshold = round(p·2²⁴).
    threshold: u32,
    // 1/(1-p), or 0 when p = 1 (PyTorch returns zeros rather than 0·inf).
    scale: f32,
    key0: u32,
    key1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn dropout(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let group = gid.x + gid.y * nwg.x * WG;
    let first = group * 4u;
    if (first >= p.len) { return; }
    let bits = philox4x32_10(vec4<u32>(group, 0u, step.step_lo, step.step_hi), vec2<u32>(p.key0, p.key1));
    for (var j = 0u; j < 4u; j++) {
        let i = first + j;
        if (i < p.len) {
            let keep = (bits[j] >> 8u) >= p.threshold;
            // x · (mask · scale), as PyTorch multiplies: a dropped NaN or ∞ gives NaN, a
            // dropped negative -0.
            y[i] = x[i] * select(0.0, p.scale, keep);
        }
    }
}

