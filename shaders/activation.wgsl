// Element-wise activations over flat f32 arrays. Each activation's file in activation/
// is appended to this one and defines
//   fn act_forward(x: f32, p: f32) -> f32
//   fn act_backward(v: f32, dy: f32, p: f32) -> f32
// with v the forward's input or output (as the activation's Rust side says) and p its
// scalar parameter (LeakyReLU's slope).
//   forward:  out = act_forward(v, p)     (v = x), and NaN where x is NaN
//   backward: out = act_backward(v, dy, p)
// NaN in, NaN out holds for every activation's forward (as in PyTorch), so the kernel
// enforces it on the bits (shaders/nan.wgsl) rather than trusting the driver's tanh, exp
// or max with NaN. The backward's NaN rule differs (ReLU's and LeakyReLU's let dy through
// a NaN), so each act_backward keeps its own.

struct Params {
    len: u32,
    param: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> v: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

override WG: u32 = 256u;

fn element_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * WG;
}

@compute @workgroup_size(WG)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element_index(gid, nwg);
    if (i >= params.len) { return; }
    let x = v[i];
    out[i] = keep_nan(x, act_forward(x, params.param));
}

@compute @workgroup_size(WG)
fn backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element_index(gid, nwg);
    if (i >= params.len) { return; }
    out[i] = act_backward(v[i], dy[i], params.param);
}
