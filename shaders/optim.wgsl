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

// Momentum buffers of parameters whose gradient is exactly zero (dead ReLU units, a
// diverged-and-saturated network) decay by `momentum` each step into the subnormal range,
// where they stay: 0.9 · k·2⁻¹⁴⁹ rounds back to k·2⁻¹⁴⁹ for k ≤ 4. On CPU adapters every
// float operation with a subnormal operand or result takes a microcode assist (lavapipe
// does not flush them), which made such runs' optimizer steps many times slower. For
// these components the step is computed without subnormal operands, to the same bits:
//   buf' = RNE(momentum · buf) (+ (1 - dampening)·(±0), which leaves a non-zero value as
//   it is), and param' = param - lr·buf' = param, since |lr·buf'| < |lr|·2⁻¹²⁶ is below
//   half an ulp of any |param| ≥ max(|lr|, 1)·2⁻¹⁰⁰.
// Idle: plain momentum (no Nesterov, no weight decay), |momentum| < 1, a finite lr,
// a finite dampening, a ±0 gradient, a subnormal buffer whose decay neither rounds to
// zero (where the sign of a zero sum would depend on contraction) nor needs a tie broken
// (see decay_steps), and a finite |param| ≥ max(|lr|, 1)·2⁻¹⁰⁰. Everything else takes the
// float path.
fn finite(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7f800000u) != 0x7f800000u;
}

fn idle_momentum(old: vec4<f32>, g: vec4<f32>, w: vec4<f32>, s: Step) -> vec4<bool> {
    let settings = (p.flags & FLAG_NESTEROV) == 0u && s.weight_decay == 0.0
        && abs(s.momentum) < 1.0 && finite(s.lr) && finite(s.dampening);
    let old_bits = bitcast<vec4<u32>>(old);
    let subnormal = ((old_bits & vec4(0x7f800000u)) == vec4(0u))
        & ((old_bits & vec4(0x007fffffu)) != vec4(0u));
    let zero_grad = (bitcast<vec4<u32>>(g) & vec4(0x7fffffffu)) == vec4(0u);
    // |lr·buf'| < |lr|·2⁻¹²⁶ stays below half an ulp (> |w|·2⁻²⁵) of a finite w this large.
    let w_min = max(abs(s.lr), 1.0) * 7.888609e-31; // 2⁻¹⁰⁰
    let w_large = (abs(w) >= vec4(w_min)) & !nonfinite4(w);
    let decays = decay_steps(old_bits, abs(s.momentum)) > vec4(0.0);
    return vec4(settings) & subnormal & zero_grad & w_large & decays;
}

// RNE(c · k) for the subnormal steps k of `bits` and 0 ≤ c < 1, as a float holding the
// integer result (< 2²³). The product q = c·k is one IEEE multiplication of normal floats;
// half-integers below 2²³ are floats, so unless q is one, the exact product lies on the
// same side of every half-integer as q and rounds to the same integer. A q that is a
// half-integer gives -1: not idle (the float path rounds that one).
fn decay_steps(bits: vec4<u32>, c: f32) -> vec4<f32> {
    let q = c * vec4<f32>(bits & vec4(0x007fffffu));
    return select(round(q), vec4(-1.0), q - floor(q) == vec4(0.5));
}

// v with ±0 (its sign kept) where `zero`, by masking its bits. Neither a float select nor
// a mask to +0 will do: with a constant arm, the compiler moves the multiplication that
// follows into both arms of the select it sees, subnormal operand included.
fn zero_where(v: vec4<f32>, zero: vec4<bool>) -> vec4<f32> {
    let keep = select(vec4(0xffffffffu), vec4(0x80000000u), zero);
    return bitcast<vec4<f32>>(bitcast<vec4<u32>>(v) & keep);
}

// momentum · old for subnormal `old`, as bits: the sign of the product over its steps.
fn idle_decay(old: vec4<f32>, momentum: f32) -> vec4<f32> {
    let old_bits = bitcast<vec4<u32>>(old);
    let steps = vec4<u32>(decay_steps(old_bits, abs(momentum)));
    let sign = (old_bits ^ vec4(bitcast<u32>(momentum))) & vec4(0x80000000u);
    return bitcast<vec4<f32>>(sign | steps);
}

override WG: u32 = 256u;
// vec4s each invocation updates, a grid's width apart (adjacent invocations, adjacent vec4s).
// The member's step record is read once for all of them: on CPU adapters every storage load
// is a loop over the lanes, and the record's were a quarter of one vec4's loads.
override PER_INVOCATION: u32 = 4u;

fn element_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * WG;
}

@compute @workgroup_size(WG)
fn sgd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let member = gid.z;
    let s = steps[member];
    if (s.frozen != 0u) { return; }
    let first = element_index(gid, nwg);
    for (var j = 0u; j < PER_INVOCATION; j++) {
        sgd_update(member, first + j * nwg.x * nwg.y * WG, s);
    }
}

// SGD's update of member `member`'s vec4 `local`.
fn sgd_update(member: u32, local: u32, s: Step) {
    if (local >= p.len) { return; }
    let i = member * p.len + local;
    // One load of each operand: on CPU adapters every storage load is a loop over the lanes.
    let raw = grad[i];
    var g = gradient(raw);
    let w = param[i];
    if (s.weight_decay != 0.0) { g += s.weight_decay * w; }
    // Components whose update is computed without float arithmetic (see idle_decay).
    var idle = vec4(false);
    if ((p.flags & FLAG_MOMENTUM) != 0u) {
        var buf = g;
        if (s.sgd_first_step == 0u) {
            let old = state0[i];
            idle = idle_momentum(old, g, w, s);
            if (all(idle)) {
                // The parameters stay as they are (and finite); only the buffers decay.
                state0[i] = idle_decay(old, s.momentum);
                return;
            }
            // The float path sees ±0 where idle: no subnormal operand reaches the FPU.
            buf = s.momentum * zero_where(old, idle) + (1.0 - s.dampening) * g;
            buf = select(buf, idle_decay(old, s.momentum), idle);
        }
        state0[i] = buf;
        if ((p.flags & FLAG_NESTEROV) != 0u) { g += s.momentum * buf; } else { g = buf; }
    }
    // Where idle, the update leaves the parameter as it is (w - lr·(±0) = w).
    let updated = w - s.lr * zero_where(g, idle);
    param[i] = updated;
    note_nonfinite(member, local, updated, raw);
}

@compute @workgroup_size(WG)
fn adam(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let member = gid.z;
    let s = steps[member];
    if (s.frozen != 0u) { return; }
    let first = element_index(gid, nwg);
    for (var j = 0u; j < PER_INVOCATION; j++) {
        adam_update(member, first + j * nwg.x * nwg.y * WG, s);
    }
}

// Adam's (AdamW's) update of member `member`'s vec4 `local`.
fn adam_update(member: u32, local: u32, s: Step) {
    if (local >= p.len) { return; }
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
