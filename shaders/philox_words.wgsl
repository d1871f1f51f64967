// Raw Philox words for counters (i, 0, step), so tests can compare the WGSL generator with the
// CPU one word for word. Appended to dropout.wgsl: the key is member 0's seed and the layer.

@group(0) @binding(4) var<storage, read_write> words: array<vec4<u32>>;

@compute @workgroup_size(64)
fn philox_words(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x >= p.len) { return; }
    words[gid.x] = mask_words(0u, gid.x);
}
