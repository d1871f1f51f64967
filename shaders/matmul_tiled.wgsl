// tiled: workgroup-memory tiles for discrete GPUs, any layout (strides) and any shape.
// A 16×16 workgroup computes a 128×128 tile of C; each invocation keeps 8×8 outputs, at rows
// ty + 16i and columns tx + 16j so that neighbouring invocations read neighbouring words of
// the shared tiles. K advances 8 at a time through two 8×128 tiles in workgroup memory.

const TILE: u32 = 128u;
const TK: u32 = 8u;
const THREADS: u32 = 256u;

@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

var<workgroup> a_tile: array<f32, 1024>; // [TK][TILE]: a_tile[k * TILE + m]
var<workgroup> b_tile: array<f32, 1024>; // [TK][TILE]: b_tile[k * TILE + n]

fn load_a(m: u32, k: u32) -> f32 {
    if (m >= p.m || k >= p.k) { return 0.0; }
    return a[m * p.a_row + k * p.a_col];
}

fn load_b(k: u32, n: u32) -> f32 {
    if (k >= p.k || n >= p.n) { return 0.0; }
    return b[k * p.b_row + n * p.b_col];
}

@compute @workgroup_size(16, 16)
fn tiled(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    let tid = lid.y * 16u + lid.x;
    var acc: array<array<f32, 8>, 8>;
    for (var k0 = 0u; k0 < p.k; k0 += TK) {
        // Each invocation stages 4 elements of each tile; the fastest-varying index follows
        // the operand's contiguous dimension so global reads coalesce.
        for (var l = 0u; l < 4u; l++) {
            let e = tid + l * THREADS;
            var m: u32; var ka: u32;
            if (p.a_col == 1u) { ka = e % TK; m = e / TK; } else { m = e % TILE; ka = e / TILE; }
            a_tile[ka * TILE + m] = load_a(row0 + m, k0 + ka);
            var n: u32; var kb: u32;
            if (p.b_col == 1u) { n = e % TILE; kb = e / TILE; } else { kb = e % TK; n = e / TK; }
            b_tile[kb * TILE + n] = load_b(k0 + kb, col0 + n);
        }
        workgroupBarrier();
        for (var k = 0u; k < TK; k++) {
            var af: array<f32, 8>;
            var bf: array<f32, 8>;
            for (var i = 0u; i < 8u; i++) {
                af[i] = a_tile[k * TILE + lid.y + 16u * i];
                bf[i] = b_tile[k * TILE + lid.x + 16u * i];
            }
            for (var i = 0u; i < 8u; i++) {
                for (var j = 0u; j < 8u; j++) {
                    acc[i][j] = fma(af[i], bf[j], acc[i][j]);
                }
            }
        }
        workgroupBarrier();
    }
    let last = arrayLength(&bias) - 1u;
    for (var i = 0u; i < 8u; i++) {
        let row = row0 + lid.y + 16u * i;
        if (row >= p.m) { continue; }
        for (var j = 0u; j < 8u; j++) {
            let col = col0 + lid.x + 16u * j;
            if (col < p.n) {
                c[row * p.n + col] = epilogue1(acc[i][j], bias[min(col, last)]);
            }
        }
    }
}
