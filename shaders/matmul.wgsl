// C[M,N] = op(A) · op(B) (+ bias[N]) (then ReLU, as shaders/activation/relu.wgsl defines it), f32.
//
// Variants, chosen by the launcher from the layout and the shapes:
//   nt_vec4   A [M,K], B [N,K]            (Linear forward: x · Wᵀ)    needs K % 4 == 0
//   nn_bvec4  A [M,K], B [K,N]            (Linear dX: dy · W)         needs N % 4 == 0
//   tn_bvec4  A [K,M], B [K,N]            (Linear dW: dyᵀ · x)        needs N % 4 == 0
//   general   any layout, via strides, 4×4 outputs per invocation (no alignment needed)
//   tiled     any layout, 64×64 tiles through workgroup memory (GPUs); when the tiles are too
//             few to fill the GPU, K is split over workgroups (z) into partial products that
//             splitk_reduce sums
//   broadcast_nt, broadcast_nn (matmul_broadcast_*.wgsl): CPU adapters with 8-lane subgroups,
//             A shared through subgroupBroadcast; the choice there for 32 or more columns
//
// The register variants keep an 8×8 block of C per invocation. Invocations along x share their rows of
// A, so A's loads are uniform across a SIMD batch; on lavapipe, where every storage load is
// costly, this keeps loads per FMA low (1024³: 25 GFLOP/s vs 3 for one output per invocation).
// Rows past M are clamped on load and skipped on store, so any M works.
//
// Stacked plans: the grid's z holds the members (tiled: `splits` z-slices each); every entry
// point calls enter_member first, and member m's part of A, B, bias and C starts
// m · a_stride, … scalars into its binding (0 for a part every member shares).

struct Params {
    m: u32,
    n: u32,
    k: u32,
    // bit 0: add bias, bit 1: ReLU
    flags: u32,
    // element (i, j) of A is at i * a_row + j * a_col (general variant only); same for B
    a_row: u32,
    a_col: u32,
    b_row: u32,
    b_col: u32,
    // split-K (tiled only): each z-slice of workgroups sums k_chunk of K into its own [M, N]
    k_chunk: u32,
    splits: u32,
    a_stride: u32,
    b_stride: u32,
    bias_stride: u32,
    c_stride: u32,
}

const FLAG_BIAS: u32 = 1u;
const FLAG_RELU: u32 = 2u;
// Write raw partial sums (split-K); splitk_reduce applies the epilogue.
const FLAG_PARTIAL: u32 = 4u;

override WG_X: u32 = 8u;
override WG_Y: u32 = 8u;

@group(0) @binding(0) var<uniform> p: Params;

// Where the current member's part of each binding starts, in scalars.
var<private> a_base: u32;
var<private> b_base: u32;
var<private> bias_base: u32;
var<private> c_base: u32;

fn enter_member(m: u32) {
    a_base = m * p.a_stride;
    b_base = m * p.b_stride;
    bias_base = m * p.bias_stride;
    c_base = m * p.c_stride;
}

fn epilogue4(v: vec4<f32>, bias: vec4<f32>) -> vec4<f32> {
    var r = v;
    if ((p.flags & FLAG_BIAS) != 0u) { r += bias; }
    if ((p.flags & FLAG_RELU) != 0u) { r = relu4(r); }
    return r;
}

fn epilogue1(v: f32, bias: f32) -> f32 {
    var r = v;
    if ((p.flags & FLAG_BIAS) != 0u) { r += bias; }
    if ((p.flags & FLAG_RELU) != 0u) { r = relu(r); }
    return r;
}
