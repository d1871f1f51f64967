// Optimizer updates over the flat parameter buffer (all parameters in one dispatch), exactly
// as torch.optim (foreach=False) defines them. lr and Adam's bias corrections come from the
// step uniform, computed by the host in f64 as PyTorch computes them in Python floats.
//
// SGD:  g = grad + wd·param
//       buf = g on the first step, else momentum·buf + (1 - dampening)·g
//       g = g + momentum·buf (nesterov) or buf;   param -= lr·g
// Adam: g = grad + wd·param (Adam) | param *= 1 - lr·wd (AdamW)
//       m = lerp(m, g, 1 - β1);  v = β2·v + (1 - β2)·g²
//       param -= step_size · m / (√v / √(1 - β2^t) + eps),  step_size = lr / (1 - β1^t)
//       AMSGrad: v_max = max(v_max, v), and √v_max in place of √v
// maximize (both): grad negated before anything else.

struct Params {
    // vec4s to update
    len: u32,
    // bit 0: momentum buffer in use, bit 1: nesterov, bit 2: AdamW (decoupled weight decay),
    // bit 3: AMSGrad, bit 4: maximize (the gradient negated first)
    flags: u32,
    momentum: f32,
    dampening: f32,
    weight_decay: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
}

const FLAG_MOMENTUM: u32 = 1u;
const FLAG_NESTEROV: u32 = 2u;
const FLAG_DECOUPLED: u32 = 4u;
const FLAG_AMSGRAD: u32 = 8u;
const FLAG_MAXIMIZE: u32 = 16u;

fn gradient(i: u32) -> vec4<f32> {
    if ((p.flags & FLAG_MAXIMIZE) != 0u) { return -grad[i]; }
    return grad[i];
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
// Four parameters per invocation: the flat buffers' lengths are multiples of 4.
@group(0) @binding(2) var<storage, read_write> param: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> grad: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> state0: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> state1: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> state2: array<vec4<f32>>;

override WG: u32 = 256u;

fn element_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * WG;
}

@compute @workgroup_size(WG)
fn sgd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element_index(gid, nwg);
    if (i >= p.len) { return; }
    var g = gradient(i);
    if (p.weight_decay != 0.0) { g += p.weight_decay * param[i]; }
    if ((p.flags & FLAG_MOMENTUM) != 0u) {
        var buf = g;
        if (step.sgd_first_step == 0u) {
            buf = p.momentum * state0[i] + (1.0 - p.dampening) * g;
        }
        state0[i] = buf;
        if ((p.flags & FLAG_NESTEROV) != 0u) { g += p.momentum * buf; } else { g = buf; }
    }
    param[i] -= step.lr * g;
}

@compute @workgroup_size(WG)
fn adam(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element_index(gid, nwg);
    if (i >= p.len) { return; }
    var g = gradient(i);
    var w = param[i];
    if ((p.flags & FLAG_DECOUPLED) != 0u) {
        w *= 1.0 - step.lr * p.weight_decay;
    } else if (p.weight_decay != 0.0) {
        g += p.weight_decay * w;
    }
    // torch.lerp with weight 1 - β1 < ½: start + weight·(end - start)
    let m = state0[i] + (1.0 - p.beta1) * (g - state0[i]);
    let v = p.beta2 * state1[i] + (1.0 - p.beta2) * g * g;
    state0[i] = m;
    state1[i] = v;
    var second = v;
    if ((p.flags & FLAG_AMSGRAD) != 0u) {
        second = max(state2[i], v);
        state2[i] = second;
    }
    let denom = sqrt(second) / step.adam_bias_correction2_sqrt + p.eps;
    param[i] = w - step.adam_step_size * m / denom;
}
