// Folding a batch into the running loss/accuracy totals, shared by the metrics kernel and the
// losses that fold their own rows. The including shader declares
//   totals: array<f32> (read_write storage), TOTALS_LEN words per member, laid out as
//   [loss·count summed over batches, correct, count, batches, last batch loss,
//    first non-finite step (bits of a u32), 1 if a loss was non-finite, 0,
//    and four words the optimizer keeps (shaders/optim.wgsl)]
//   steps: array<Step> (shaders/step.wgsl)
// and calls fold_batch from one workgroup of TOTALS_WG invocations per member, each with its
// strided share of the member's rows' (scaled loss, correct, counted, 0) summed in row order:
// the tree below then gives the same total whichever kernel ran it. A frozen member's totals
// stay as they were.

const TOTALS_WG: u32 = 256u;
const TOTALS_LEN: u32 = 12u;

var<workgroup> totals_partial: array<vec4<f32>, TOTALS_WG>;

fn fold_batch(lid: u32, share: vec4<f32>, member: u32) {
    totals_partial[lid] = share;
    workgroupBarrier();
    for (var width = TOTALS_WG / 2u; width > 0u; width /= 2u) {
        if (lid < width) { totals_partial[lid] += totals_partial[lid + width]; }
        workgroupBarrier();
    }
    let step = steps[member];
    if (lid == 0u && step.frozen == 0u) {
        let t = member * TOTALS_LEN;
        let total = totals_partial[0];
        let loss = total.x;
        totals[t] += loss * total.z;
        totals[t + 1u] += total.y;
        totals[t + 2u] += total.z;
        totals[t + 3u] += 1.0;
        totals[t + 4u] = loss;
        // NaN and ±inf have an all-ones exponent; a float comparison could be optimized away
        // by compilers that assume finite math.
        let nonfinite = (bitcast<u32>(loss) & 0x7f800000u) == 0x7f800000u;
        if (nonfinite && totals[t + 6u] == 0.0) {
            totals[t + 5u] = bitcast<f32>(step.step_lo);
            totals[t + 6u] = 1.0;
        }
    }
}
