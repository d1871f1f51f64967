// Raw Philox words for counters (i, 0, step), so tests can compare the WGSL generator with the
// CPU one word for word. Appended to dropout.wgsl: the key comes from its Params.

@group(0) @binding(4) var<storage, read_write> words: array<vec4<u32>>;

@compute @workgroup_size(64)
fn philox_words(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x >= p.len) { return; }
    words[gid.x] = philox4x32_10(vec4<u32>(gid.x, 0u, step.step_lo, step.step_hi), vec2<u32>(p.key0, p.key1));
}
