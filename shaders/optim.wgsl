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
//
// Both note the first update that meets a non-finite gradient or leaves a non-finite
// parameter in the metrics totals (words 8–11, see NONFINITE below): the pass touches every
// parameter anyway, so divergence is caught where it arises, at no extra dispatch.
//
// The settings (lr, momentum, dampening, weight decay, betas, eps) come from the member's step
// record. Stacked plans: workgroups along z are members; member m's part of every flat buffer
// is at m · len, its totals at m · TOTALS_LEN; a frozen member's part is left as it is.

struct Params {
    // vec4s to update, per member
    len: u32,
    // bit 0: momentum buffer in use, bit 1: nesterov, bit 2: AdamW (decoupled weight decay),
    // bit 3: AMSGrad, bit 4: maximize (the gradient negated first)
    flags: u32,
}

const FLAG_MOMENTUM: u32 = 1u;
const FLAG_NESTEROV: u32 = 2u;
const FLAG_DECOUPLED: u32 = 4u;
const FLAG_AMSGRAD: u32 = 8u;
const FLAG_MAXIMIZE: u32 = 16u;

// The gradient as the update uses it (negated to maximize), from its one load.
fn gradient(raw: vec4<f32>) -> vec4<f32> {
    if ((p.flags & FLAG_MAXIMIZE) != 0u) { return -raw; }
    return raw;
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> steps: array<Step>;
// Four parameters per invocation: the flat buffers' lengths are multiples of 4.
@group(0) @binding(2) var<storage, read_write> param: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> grad: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> state0: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> state1: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> state2: array<vec4<f32>>;
// The metrics totals (src/ops/reduce.rs), as words.
@group(0) @binding(7) var<storage, read_write> totals: array<atomic<u32>>;

// Words of the totals: 1 once an update was non-finite (claimed by one invocation), its
// step, the flat element, and what was non-finite (bit 0: the parameter after the update,
// bit 1: the gradient).
const NONFINITE: u32 = 8u;
const TOTALS_LEN: u32 = 12u;

// NaN and ±inf have an all-ones exponent (judged on the bits: a float comparison could be
// folded by a compiler assuming finite math).
fn nonfinite4(v: vec4<f32>) -> vec4<bool> {
    return (bitcast<vec4<u32>>(v) & vec4<u32>(0x7f800000u)) == vec4<u32>(0x7f800000u);
}

// Notes member m's parameters 4i..4i+3 (of its part) if the update left one non-finite or
// its gradient was, unless an earlier update (or another invocation of this one) was noted
// first.
fn note_nonfinite(m: u32, i: u32, updated: vec4<f32>, g: vec4<f32>) {
    let bad_param = nonfinite4(updated);
    let bad_grad = nonfinite4(g);
    let bad = vec4<bool>(bad_param.x || bad_grad.x, bad_param.y || bad_grad.y,
                         bad_param.z || bad_grad.z, bad_param.w || bad_grad.w);
    if (!any(bad)) { return; }
    var lane = 3u;
    if (bad.z) { lane = 2u; }
    if (bad.y) { lane = 1u; }
    if (bad.x) { lane = 0u; }
    let kind = select(0u, 1u, any(bad_param)) | select(0u, 2u, any(bad_grad));
    let t = m * TOTALS_LEN + NONFINITE;
    loop {
        let claim = atomicCompareExchangeWeak(&totals[t], 0u, 1u);
        if (claim.exchanged) {
            atomicStore(&totals[t + 1u], steps[m].step_lo);
            atomicStore(&totals[t + 2u], 4u * i + lane);
            atomicStore(&totals[t + 3u], kind);
            return;
        }
        // A weak exchange may fail spuriously: try again until some invocation holds it.
        if (claim.old_value != 0u) { return; }
    }
}

override WG: u32 = 256u;

fn element_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * WG;
}

@compute @workgroup_size(WG)
fn sgd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let local = element_index(gid, nwg);
    let member = gid.z;
    let s = steps[member];
    if (local >= p.len || s.frozen != 0u) { return; }
    let i = member * p.len + local;
    // One load of each operand: on CPU adapters every storage load is a loop over the lanes.
    let raw = grad[i];
    var g = gradient(raw);
    let w = param[i];
    if (s.weight_decay != 0.0) { g += s.weight_decay * w; }
    if ((p.flags & FLAG_MOMENTUM) != 0u) {
        var buf = g;
        if (s.sgd_first_step == 0u) {
            buf = s.momentum * state0[i] + (1.0 - s.dampening) * g;
        }
        state0[i] = buf;
        if ((p.flags & FLAG_NESTEROV) != 0u) { g += s.momentum * buf; } else { g = buf; }
    }
    let updated = w - s.lr * g;
    param[i] = updated;
    note_nonfinite(member, local, updated, raw);
}

@compute @workgroup_size(WG)
fn adam(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let local = element_index(gid, nwg);
    let member = gid.z;
    let s = steps[member];
    if (local >= p.len || s.frozen != 0u) { return; }
    let i = member * p.len + local;
    // One load of each operand: on CPU adapters every storage load is a loop over the lanes.
    let raw = grad[i];
    var g = gradient(raw);
    var w = param[i];
    if ((p.flags & FLAG_DECOUPLED) != 0u) {
        w *= 1.0 - s.lr * s.weight_decay;
    } else if (s.weight_decay != 0.0) {
        g += s.weight_decay * w;
    }
    // torch.lerp with weight 1 - β1 < ½: start + weight·(end - start)
    let m0 = state0[i];
    let m = m0 + (1.0 - s.beta1) * (g - m0);
    let v = s.beta2 * state1[i] + (1.0 - s.beta2) * g * g;
    state0[i] = m;
    state1[i] = v;
    var second = v;
    if ((p.flags & FLAG_AMSGRAD) != 0u) {
        second = max(state2[i], v);
        state2[i] = second;
    }
    let denom = sqrt(second) / s.adam_bias_correction2_sqrt + s.eps;
    let updated = w - s.adam_step_size * m / denom;
    param[i] = updated;
    note_nonfinite(member, local, updated, raw);
}
