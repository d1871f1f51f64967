// Dropout: y = x · mask · 1/(1-p), mask drawn by Philox4x32-10 with key (seed, layer) and
// counter (element / 4, 0, step): one draw gives the mask of 4 consecutive elements.
// The same kernel is the backward (dx = dy · mask · scale): the mask is recomputed, not stored.
// Stacked plans: workgroups along z are members; member m's elements are at m · len, its seed
// and step come from steps[m] and its probability from drops[m].

struct Params {
    // Elements of one member.
    len: u32,
    // The second word of the Philox key: the layer.
    layer: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> steps: array<Step>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
// Per member: keep an element when the top 24 bits of its random word are ≥ the threshold
// round(p·2²⁴); survivors scale by 1/(1-p) (bits of an f32), 0 when p = 1 (PyTorch returns
// zeros rather than 0·inf).
@group(0) @binding(5) var<storage, read> drops: array<vec2<u32>>;

override WG: u32 = 64u;

// The four words of member m's draw for its group `group` of four elements.
fn mask_words(m: u32, group: u32) -> vec4<u32> {
    let step = steps[m];
    return philox4x32_10(vec4<u32>(group, 0u, step.step_lo, step.step_hi), vec2<u32>(step.seed_key, p.layer));
}

@compute @workgroup_size(WG)
fn dropout(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let group = gid.x + gid.y * nwg.x * WG;
    let first = group * 4u;
    if (first >= p.len) { return; }
    let m = gid.z;
    let bits = mask_words(m, group);
    let threshold = drops[m].x;
    let scale = bitcast<f32>(drops[m].y);
    let base = m * p.len;
    for (var j = 0u; j < 4u; j++) {
        let i = first + j;
        if (i < p.len) {
            let keep = (bits[j] >> 8u) >= threshold;
            // x · (mask · scale), as PyTorch multiplies: a dropped NaN or ∞ gives NaN, a
            // dropped negative -0.
            y[base + i] = x[base + i] * select(0.0, scale, keep);
        }
    }
}
