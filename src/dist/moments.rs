//! SyncBatchNorm's statistics over the global batch: each rank reduces its own rows to a mean
//! and a biased variance (shifted sums, as the single-process kernel), and the ranks' moments
//! are combined in f64 with Chan's parallel formula, as `torch.nn.SyncBatchNorm` combines its
//! all-gathered means and variances — never E[x²] − E[x]² over the global batch.

/// One rank's batch moments of a layer's D features: `rows` samples, then D means and D
/// biased variances (as the `local_moments` kernel leaves them in `saved`).
#[derive(Clone, Debug, PartialEq)]
pub struct RankMoments {
    pub rows: u64,
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
}

/// The global batch's per-feature mean and biased variance from every rank's.
pub fn combine_moments(ranks: &[RankMoments]) -> (Vec<f32>, Vec<f32>) {
    let d = ranks.first().map_or(0, |r| r.mean.len());
    let total: f64 = ranks.iter().map(|r| r.rows as f64).sum();
    let mut mean = vec![0f32; d];
    let mut var = vec![0f32; d];
    for f in 0..d {
        let m: f64 = ranks
            .iter()
            .map(|r| r.rows as f64 * f64::from(r.mean[f]))
            .sum::<f64>()
            / total;
        // Σ over ranks of (within-rank M2 + between-rank spread).
        let m2: f64 = ranks
            .iter()
            .map(|r| {
                let n = r.rows as f64;
                let delta = f64::from(r.mean[f]) - m;
                n * f64::from(r.var[f]) + n * delta * delta
            })
            .sum();
        mean[f] = m as f32;
        var[f] = (m2 / total) as f32;
    }
    (mean, var)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moments(rows: &[f64]) -> (f64, f64) {
        let n = rows.len() as f64;
        let mean = rows.iter().sum::<f64>() / n;
        let var = rows.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        (mean, var)
    }

    #[test]
    fn combined_moments_are_those_of_the_whole_batch_even_far_from_zero() {
        // Mean 1e4, spread 1e-2: E[x²] − E[x]² in f32 would lose the variance entirely.
        let parts: [&[f64]; 3] = [
            &[1e4 + 0.01, 1e4 - 0.02, 1e4 + 0.005],
            &[1e4 + 0.03],
            &[1e4 - 0.01, 1e4],
        ];
        let ranks: Vec<RankMoments> = parts
            .iter()
            .map(|rows| {
                let (m, v) = moments(rows);
                RankMoments {
                    rows: rows.len() as u64,
                    mean: vec![m as f32],
                    var: vec![v as f32],
                }
            })
            .collect();
        let all: Vec<f64> = parts.concat();
        let (m, v) = moments(&all);
        let (mean, var) = combine_moments(&ranks);
        assert!((f64::from(mean[0]) - m).abs() <= 1e-3, "{} vs {m}", mean[0]);
        // Each rank's f32 mean carries ~5e-4 of rounding at 1e4; the variance stays within 2 %.
        assert!(
            ((f64::from(var[0]) - v) / v).abs() < 0.02,
            "{} vs {v}",
            var[0]
        );
    }

    #[test]
    fn one_rank_combines_to_itself() {
        let one = RankMoments {
            rows: 7,
            mean: vec![0.25, -3.0],
            var: vec![2.0, 0.5],
        };
        assert_eq!(combine_moments(&[one]), (vec![0.25, -3.0], vec![2.0, 0.5]));
    }
}
