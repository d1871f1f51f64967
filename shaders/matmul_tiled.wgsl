// tiled: workgroup-memory tiles for discrete GPUs, any layout (strides) and any shape.
// A 16×16 workgroup computes a 64×64 tile of C; invocation (tx, ty) keeps the 4×4 block at
// rows 4ty.., columns 4tx.. in four vec4 registers. K advances 16 at a time through two
// 16×64 tiles in workgroup memory, read back as vec4s; the inner loop is written out so that
// no register array is indexed at run time.
// tiled_wide: the same with 128×64 tiles and 8×4 blocks, for products with at least 128 rows;
// tiled_big: 128×128 tiles and 8×8 blocks (four vec4 reads from workgroup memory per 64
// FMAs), for products with at least 128 rows and 128 columns.

const TILE: u32 = 64u;
const TK: u32 = 16u;

@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

// [TK][TILE / 4] vec4s: a_tile[k * 16 + i] holds A rows 4i..4i+3 at k; b_tile likewise columns.
var<workgroup> a_tile: array<vec4<f32>, 256>;
var<workgroup> b_tile: array<vec4<f32>, 256>;
// [TK][32] vec4s: 128 rows of A at each k (tiled_wide, tiled_big); 128 columns of B (tiled_big).
var<workgroup> a_wide_tile: array<vec4<f32>, 512>;
var<workgroup> b_wide_tile: array<vec4<f32>, 512>;

fn load_a(m: u32, k: u32, k_end: u32) -> f32 {
    if (m >= p.m || k >= k_end) { return 0.0; }
    return a[a_base + m * p.a_row + k * p.a_col];
}

fn load_b(k: u32, n: u32, k_end: u32) -> f32 {
    if (k >= k_end || n >= p.n) { return 0.0; }
    return b[b_base + k * p.b_row + n * p.b_col];
}

// Rows m..m+3 of A at one k, as a tile stores them.
fn a_quad(m: u32, k: u32, k_end: u32) -> vec4<f32> {
    return vec4<f32>(load_a(m, k, k_end), load_a(m + 1u, k, k_end), load_a(m + 2u, k, k_end), load_a(m + 3u, k, k_end));
}

// Columns n..n+3 of B at one k.
fn b_quad(k: u32, n: u32, k_end: u32) -> vec4<f32> {
    return vec4<f32>(load_b(k, n, k_end), load_b(k, n + 1u, k_end), load_b(k, n + 2u, k_end), load_b(k, n + 3u, k_end));
}

@compute @workgroup_size(16, 16)
fn tiled(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    let tid = lid.y * 16u + lid.x;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    enter_member(wid.z / p.splits);
    let split = wid.z % p.splits;
    let k_begin = split * p.k_chunk;
    let k_end = min(k_begin + p.k_chunk, p.k);
    for (var k0 = k_begin; k0 < k_end; k0 += TK) {
        // Each invocation stages one vec4 of each tile: 4 rows (or columns) at one k. The
        // fastest-varying index follows the operand's contiguous dimension so reads coalesce.
        var ka: u32; var ma: u32;
        if (p.a_col == 1u) { ka = tid % TK; ma = tid / TK; } else { ma = tid % 16u; ka = tid / 16u; }
        a_tile[ka * 16u + ma] = a_quad(row0 + 4u * ma, k0 + ka, k_end);
        stage_b(tid, col0, k0, k_end);
        workgroupBarrier();
        for (var k = 0u; k < TK; k++) {
            let av = a_tile[k * 16u + lid.y];
            let bv = b_tile[k * 16u + lid.x];
            acc0 = fma(vec4<f32>(av.x), bv, acc0);
            acc1 = fma(vec4<f32>(av.y), bv, acc1);
            acc2 = fma(vec4<f32>(av.z), bv, acc2);
            acc3 = fma(vec4<f32>(av.w), bv, acc3);
        }
        workgroupBarrier();
    }
    let row = row0 + 4u * lid.y;
    let col = col0 + 4u * lid.x;
    // A split's partial product goes to its own [M, N] slice of the scratch buffer.
    let base = c_base + split * p.m * p.n;
    store_row(base, row, col, acc0);
    store_row(base, row + 1u, col, acc1);
    store_row(base, row + 2u, col, acc2);
    store_row(base, row + 3u, col, acc3);
}

// Stages one vec4 of the B tile (4 columns at one k) per invocation.
fn stage_b(tid: u32, col0: u32, k0: u32, k_end: u32) {
    var kb: u32; var nb: u32;
    if (p.b_col == 1u) { nb = tid % 16u; kb = tid / 16u; } else { kb = tid % TK; nb = tid / TK; }
    b_tile[kb * 16u + nb] = b_quad(k0 + kb, col0 + 4u * nb, k_end);
}

@compute @workgroup_size(16, 16)
fn tiled_wide(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let row0 = wid.y * 128u;
    let col0 = wid.x * TILE;
    let tid = lid.y * 16u + lid.x;
    var acc0 = vec4<f32>(0.0); var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0); var acc3 = vec4<f32>(0.0);
    var acc4 = vec4<f32>(0.0); var acc5 = vec4<f32>(0.0);
    var acc6 = vec4<f32>(0.0); var acc7 = vec4<f32>(0.0);
    enter_member(wid.z / p.splits);
    let split = wid.z % p.splits;
    let k_begin = split * p.k_chunk;
    let k_end = min(k_begin + p.k_chunk, p.k);
    for (var k0 = k_begin; k0 < k_end; k0 += TK) {
        stage_a_wide(tid, row0, k0, k_end);
        stage_b(tid, col0, k0, k_end);
        workgroupBarrier();
        for (var k = 0u; k < TK; k++) {
            let lo = a_wide_tile[k * 32u + 2u * lid.y];
            let hi = a_wide_tile[k * 32u + 2u * lid.y + 1u];
            let bv = b_tile[k * 16u + lid.x];
            acc0 = fma(vec4<f32>(lo.x), bv, acc0);
            acc1 = fma(vec4<f32>(lo.y), bv, acc1);
            acc2 = fma(vec4<f32>(lo.z), bv, acc2);
            acc3 = fma(vec4<f32>(lo.w), bv, acc3);
            acc4 = fma(vec4<f32>(hi.x), bv, acc4);
            acc5 = fma(vec4<f32>(hi.y), bv, acc5);
            acc6 = fma(vec4<f32>(hi.z), bv, acc6);
            acc7 = fma(vec4<f32>(hi.w), bv, acc7);
        }
        workgroupBarrier();
    }
    let row = row0 + 8u * lid.y;
    let col = col0 + 4u * lid.x;
    let base = c_base + split * p.m * p.n;
    store_row(base, row, col, acc0);
    store_row(base, row + 1u, col, acc1);
    store_row(base, row + 2u, col, acc2);
    store_row(base, row + 3u, col, acc3);
    store_row(base, row + 4u, col, acc4);
    store_row(base, row + 5u, col, acc5);
    store_row(base, row + 6u, col, acc6);
    store_row(base, row + 7u, col, acc7);
}

// Stages two vec4s of the 128-row A tile per invocation.
fn stage_a_wide(tid: u32, row0: u32, k0: u32, k_end: u32) {
    for (var half = 0u; half < 2u; half++) {
        let e = tid + half * 256u;
        var ka: u32; var ma: u32;
        if (p.a_col == 1u) { ka = e % TK; ma = e / TK; } else { ma = e % 32u; ka = e / 32u; }
        a_wide_tile[ka * 32u + ma] = a_quad(row0 + 4u * ma, k0 + ka, k_end);
    }
}

// Stages two vec4s of the 128-column B tile per invocation.
fn stage_b_wide(tid: u32, col0: u32, k0: u32, k_end: u32) {
    for (var half = 0u; half < 2u; half++) {
        let e = tid + half * 256u;
        var kb: u32; var nb: u32;
        if (p.b_col == 1u) { nb = e % 32u; kb = e / 32u; } else { kb = e % TK; nb = e / TK; }
        b_wide_tile[kb * 32u + nb] = b_quad(k0 + kb, col0 + 4u * nb, k_end);
    }
}

@compute @workgroup_size(16, 16)
fn tiled_big(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let row0 = wid.y * 128u;
    let col0 = wid.x * 128u;
    let tid = lid.y * 16u + lid.x;
    // acc<r><h>: row 8ty + r, columns 8tx + 4h ..
    var acc00 = vec4<f32>(0.0); var acc01 = vec4<f32>(0.0);
    var acc10 = vec4<f32>(0.0); var acc11 = vec4<f32>(0.0);
    var acc20 = vec4<f32>(0.0); var acc21 = vec4<f32>(0.0);
    var acc30 = vec4<f32>(0.0); var acc31 = vec4<f32>(0.0);
    var acc40 = vec4<f32>(0.0); var acc41 = vec4<f32>(0.0);
    var acc50 = vec4<f32>(0.0); var acc51 = vec4<f32>(0.0);
    var acc60 = vec4<f32>(0.0); var acc61 = vec4<f32>(0.0);
    var acc70 = vec4<f32>(0.0); var acc71 = vec4<f32>(0.0);
    enter_member(wid.z / p.splits);
    let split = wid.z % p.splits;
    let k_begin = split * p.k_chunk;
    let k_end = min(k_begin + p.k_chunk, p.k);
    for (var k0 = k_begin; k0 < k_end; k0 += TK) {
        stage_a_wide(tid, row0, k0, k_end);
        stage_b_wide(tid, col0, k0, k_end);
        workgroupBarrier();
        for (var k = 0u; k < TK; k++) {
            let lo = a_wide_tile[k * 32u + 2u * lid.y];
            let hi = a_wide_tile[k * 32u + 2u * lid.y + 1u];
            let b0 = b_wide_tile[k * 32u + 2u * lid.x];
            let b1 = b_wide_tile[k * 32u + 2u * lid.x + 1u];
            acc00 = fma(vec4<f32>(lo.x), b0, acc00); acc01 = fma(vec4<f32>(lo.x), b1, acc01);
            acc10 = fma(vec4<f32>(lo.y), b0, acc10); acc11 = fma(vec4<f32>(lo.y), b1, acc11);
            acc20 = fma(vec4<f32>(lo.z), b0, acc20); acc21 = fma(vec4<f32>(lo.z), b1, acc21);
            acc30 = fma(vec4<f32>(lo.w), b0, acc30); acc31 = fma(vec4<f32>(lo.w), b1, acc31);
            acc40 = fma(vec4<f32>(hi.x), b0, acc40); acc41 = fma(vec4<f32>(hi.x), b1, acc41);
            acc50 = fma(vec4<f32>(hi.y), b0, acc50); acc51 = fma(vec4<f32>(hi.y), b1, acc51);
            acc60 = fma(vec4<f32>(hi.z), b0, acc60); acc61 = fma(vec4<f32>(hi.z), b1, acc61);
            acc70 = fma(vec4<f32>(hi.w), b0, acc70); acc71 = fma(vec4<f32>(hi.w), b1, acc71);
        }
        workgroupBarrier();
    }
    let row = row0 + 8u * lid.y;
    let col = col0 + 8u * lid.x;
    let base = c_base + split * p.m * p.n;
    store_row(base, row, col, acc00); store_row(base, row, col + 4u, acc01);
    store_row(base, row + 1u, col, acc10); store_row(base, row + 1u, col + 4u, acc11);
    store_row(base, row + 2u, col, acc20); store_row(base, row + 2u, col + 4u, acc21);
    store_row(base, row + 3u, col, acc30); store_row(base, row + 3u, col + 4u, acc31);
    store_row(base, row + 4u, col, acc40); store_row(base, row + 4u, col + 4u, acc41);
    store_row(base, row + 5u, col, acc50); store_row(base, row + 5u, col + 4u, acc51);
    store_row(base, row + 6u, col, acc60); store_row(base, row + 6u, col + 4u, acc61);
    store_row(base, row + 7u, col, acc70); store_row(base, row + 7u, col + 4u, acc71);
}

fn store_row(base: u32, row: u32, col: u32, v: vec4<f32>) {
    if (row >= p.m) { return; }
    let last = arrayLength(&bias) - 1u;
    let partial = (p.flags & FLAG_PARTIAL) != 0u;
    for (var j = 0u; j < 4u; j++) {
        if (col + j < p.n) {
            let out = select(epilogue1(v[j], bias[min(bias_base + col + j, last)]), v[j], partial);
            c[base + row * p.n + col + j] = out;
        }
    }
}

// C = epilogue(Σ_s partial_s): one invocation per element of C; `a` holds each member's
// [splits, M, N] partial products.
@compute @workgroup_size(256)
fn splitk_reduce(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    enter_member(gid.z);
    let i = gid.x + gid.y * nwg.x * 256u;
    let len = p.m * p.n;
    if (i >= len) { return; }
    var s = 0.0;
    for (var z = 0u; z < p.splits; z++) { s += a[a_base + z * len + i]; }
    let last = arrayLength(&bias) - 1u;
    c[c_base + i] = epilogue1(s, bias[min(bias_base + i % p.n, last)]);
}
