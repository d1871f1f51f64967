// The bias gradient of the Linear before a loss, from the loss kernel that runs as one
// workgroup of TOTALS_WG invocations per member (shaders/totals.wgsl): dbias[j] = Σ_r
// grad[r, j] over the member's grad [n, c] (at grad_base; its dbias at dbias_base). Summed as the column_sum kernel (shaders/reduce.wgsl) sums with SUM_ROWS
// invocations per column (its ROWS), so the bits are the ones it would give. The including
// shader declares grad and dbias, and makes the workgroup's writes to grad visible first
// (storageBarrier).

override SUM_ROWS: u32 = 1u;

var<workgroup> column_partial: array<f32, TOTALS_WG>;

fn column_sums(lid: u32, n: u32, c: u32, grad_base: u32, dbias_base: u32) {
    let per_block = TOTALS_WG / SUM_ROWS;
    let j_in = lid % per_block;
    let g = lid / per_block;
    for (var j0 = 0u; j0 < c; j0 += per_block) {
        let j = j0 + j_in;
        var s = 0.0;
        if (j < c) {
            for (var r = g; r < n; r += SUM_ROWS) { s += grad[grad_base + r * c + j]; }
        }
        if (SUM_ROWS > 1u) {
            column_partial[lid] = s;
            workgroupBarrier();
            for (var width = SUM_ROWS / 2u; width > 0u; width /= 2u) {
                if (g < width) { column_partial[lid] += column_partial[lid + width * per_block]; }
                workgroupBarrier();
            }
            s = column_partial[j_in];
            // Every lane has read its total before the next block's partials overwrite it.
            workgroupBarrier();
        }
        if (g == 0u && j < c) { dbias[dbias_base + j] = s; }
    }
}
