// Folding a batch into the running loss/accuracy totals, shared by the metrics kernel and the
// losses that fold their own rows. The including shader declares
//   totals: array<f32> (read_write storage), laid out as
//   [loss·count summed over batches, correct, count, batches, last batch loss,
//    first non-finite step (bits of a u32), 1 if a loss was non-finite, 0]
// and calls fold_batch from one workgroup of TOTALS_WG invocations, each with its strided
// share of the rows' (scaled loss, correct, counted, 0) summed in row order: the tree below
// then gives the same total whichever kernel ran it.

const TOTALS_WG: u32 = 256u;

var<workgroup> totals_partial: array<vec4<f32>, TOTALS_WG>;

fn fold_batch(lid: u32, share: vec4<f32>) {
    totals_partial[lid] = share;
    workgroupBarrier();
    for (var width = TOTALS_WG / 2u; width > 0u; width /= 2u) {
        if (lid < width) { totals_partial[lid] += totals_partial[lid + width]; }
        workgroupBarrier();
    }
    if (lid == 0u) {
        let total = totals_partial[0];
        let loss = total.x;
        totals[0] += loss * total.z;
        totals[1] += total.y;
        totals[2] += total.z;
        totals[3] += 1.0;
        totals[4] = loss;
        // NaN and ±inf have an all-ones exponent; a float comparison could be optimized away
        // by compilers that assume finite math.
        let nonfinite = (bitcast<u32>(loss) & 0x7f800000u) == 0x7f800000u;
        if (nonfinite && totals[6] == 0.0) {
            totals[5] = bitcast<f32>(step.step_lo);
            totals[6] = 1.0;
        }
    }
}
