//! Loss and accuracy totals over every rank: sums of what the metrics kernel sums, the
//! earliest non-finite loss, and the optimizer's non-finite flag (equal on every rank, since
//! every rank applies the same averaged gradients).

use super::{Communicator, DistError};
use crate::ops::reduce::{RawTotals, TOTALS_LEN, Totals};

/// The words of every rank's totals combined into one job's (rank 0's shape).
pub fn reduce_totals(comm: &dyn Communicator, mine: &RawTotals) -> Result<RawTotals, DistError> {
    if comm.size() == 1 {
        return Ok(*mine);
    }
    let mut all = vec![0f32; TOTALS_LEN * comm.size()];
    comm.all_gather(
        bytemuck::cast_slice(mine.as_slice()),
        bytemuck::cast_slice_mut(&mut all),
    )?;
    Ok(combine(all.chunks(TOTALS_LEN)))
}

/// Word layout as [`Totals::from_raw`] reads it.
fn combine<'a>(ranks: impl Iterator<Item = &'a [f32]>) -> RawTotals {
    let ranks: Vec<&[f32]> = ranks.collect();
    let mut out = [0f32; TOTALS_LEN];
    // Σ loss × count, correct, count, batches: sums (in f64, then back to the kernel's f32).
    for (word, slot) in out.iter_mut().enumerate().take(4) {
        *slot = ranks.iter().map(|r| f64::from(r[word])).sum::<f64>() as f32;
    }
    // The last batch's loss: rank 0's.
    out[4] = ranks[0][4];
    // The earliest step whose loss was not finite, on any rank.
    let earliest = ranks
        .iter()
        .filter(|r| Totals::from_raw(r).first_nonfinite_step.is_some())
        .min_by_key(|r| r[5].to_bits());
    if let Some(r) = earliest {
        out[5] = r[5];
        out[6] = r[6];
    }
    out[7] = ranks[0][7];
    // The optimizer's words: the first rank that flagged an update.
    let flagged = ranks
        .iter()
        .find(|r| Totals::from_raw(r).first_nonfinite_update.is_some())
        .unwrap_or(&ranks[0]);
    out[8..].copy_from_slice(&flagged[8..TOTALS_LEN]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_add_and_the_earliest_divergence_wins() {
        let mut a = [0f32; TOTALS_LEN];
        a[..5].copy_from_slice(&[10.0, 7.0, 8.0, 2.0, 1.25]);
        let mut b = a;
        b[..5].copy_from_slice(&[6.0, 5.0, 8.0, 2.0, 0.75]);
        b[5] = f32::from_bits(3);
        b[6] = 1.0;
        let out = combine([a.as_slice(), b.as_slice()].into_iter());
        let totals = Totals::from_raw(&out);
        assert_eq!(totals.weighted_loss, 16.0);
        assert_eq!(totals.correct, 12.0);
        assert_eq!(totals.count, 16.0);
        assert_eq!(totals.batches, 4);
        assert_eq!(totals.last_loss, 1.25);
        assert_eq!(totals.first_nonfinite_step, Some(3));
    }
}
