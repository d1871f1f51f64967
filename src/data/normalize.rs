//! Per-channel standardization, as `torchvision.transforms.Normalize(mean,
//! std)` with statistics computed on the training split only.
//!
//! # Convention
//!
//! * A **channel** is the first axis of the sample shape when a sample has two
//!   or more axes (images `C x H x W`: one mean and std per colour channel,
//!   pooled over all pixels and samples), and each single feature when the
//!   sample is 1-D (tabular `[F]`: one "channel" per feature, i.e. ordinary
//!   feature standardization). A 0-D sample is one channel.
//! * `std` is the population standard deviation (ddof = 0), accumulated in
//!   `f64` with a two-pass algorithm so that a channel with a large mean and a
//!   tiny spread is still measured accurately.
//! * A channel whose std is below [`MIN_STD`] (a constant feature) gets std 1,
//!   so it is only centred instead of blown up.
//! * Applying computes `(x - mean) / std` in `f32`, the same operations
//!   PyTorch performs on an `f32` tensor.

use super::dataset::{Dataset, checked_product};
use super::error::DataError;

/// Stds below this are replaced by 1.
pub const MIN_STD: f64 = 1e-12;

/// Per-channel mean and standard deviation.
#[derive(Clone, Debug, PartialEq)]
pub struct Normalization {
    mean: Vec<f32>,
    std: Vec<f32>,
}

/// How a sample shape splits into channels: `(channels, values per channel)`.
///
/// `[C, H, W]` gives `(C, H * W)`; `[F]` gives `(F, 1)`; `[]` gives `(1, 1)`.
/// Returns `None` if the sizes overflow `usize`.
pub fn channel_layout(sample_shape: &[usize]) -> Option<(usize, usize)> {
    match sample_shape {
        [] => Some((1, 1)),
        [features] => Some((*features, 1)),
        [channels, rest @ ..] => Some((*channels, checked_product(rest)?)),
    }
}

impl Normalization {
    /// Builds statistics from saved values. Both vectors must have the same
    /// length, every value must be finite and every std positive.
    pub fn new(mean: Vec<f32>, std: Vec<f32>) -> Result<Self, DataError> {
        let bad = |message: String| DataError::BadNormalization { message };
        if mean.len() != std.len() {
            return Err(bad(format!("{} means but {} stds", mean.len(), std.len())));
        }
        if let Some(i) = mean.iter().position(|m| !m.is_finite()) {
            return Err(bad(format!("mean of channel {i} is not finite")));
        }
        if let Some(i) = std.iter().position(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(bad(format!(
                "std of channel {i} must be positive and finite"
            )));
        }
        Ok(Normalization { mean, std })
    }

    /// Mean 0 and std 1 for every channel: applying it changes nothing.
    pub fn identity(channels: usize) -> Self {
        Normalization {
            mean: vec![0.0; channels],
            std: vec![1.0; channels],
        }
    }

    /// Computes per-channel statistics of `dataset` (call it on the training
    /// split only). Fails on an empty dataset or non-finite features.
    pub fn fit(dataset: &Dataset) -> Result<Self, DataError> {
        dataset.check_consistent()?;
        dataset.check_finite()?;
        if dataset.is_empty() {
            return Err(DataError::Empty {
                path: dataset.source.clone().into(),
            });
        }
        let (channels, per_channel) = layout(&dataset.sample_shape, &dataset.source)?;
        if channels == 0 || per_channel == 0 {
            // Samples hold no values, so there is nothing to measure.
            return Ok(Self::identity(channels));
        }
        let sample_len = channels * per_channel;
        let count = (dataset.len() * per_channel) as f64;

        let mut sum = vec![0f64; channels];
        for sample in dataset.features.chunks_exact(sample_len) {
            for (acc, values) in sum.iter_mut().zip(sample.chunks_exact(per_channel)) {
                *acc += values.iter().map(|&v| f64::from(v)).sum::<f64>();
            }
        }
        let mean: Vec<f64> = sum.iter().map(|s| s / count).collect();

        // Second pass over deviations: no cancellation for large means.
        let mut squares = vec![0f64; channels];
        for sample in dataset.features.chunks_exact(sample_len) {
            for ((acc, values), m) in squares
                .iter_mut()
                .zip(sample.chunks_exact(per_channel))
                .zip(&mean)
            {
                *acc += values
                    .iter()
                    .map(|&v| (f64::from(v) - m).powi(2))
                    .sum::<f64>();
            }
        }
        let std = squares
            .iter()
            .map(|sq| {
                let s = (sq / count).sqrt();
                if s < MIN_STD { 1.0 } else { s as f32 }
            })
            .collect();
        Ok(Normalization {
            mean: mean.iter().map(|&m| m as f32).collect(),
            std,
        })
    }

    /// Normalizes `dataset.features` in place. Fails if the dataset's channel
    /// count differs from the statistics'.
    pub fn apply(&self, dataset: &mut Dataset) -> Result<(), DataError> {
        dataset.check_consistent()?;
        self.apply_features(
            &mut dataset.features,
            &dataset.sample_shape,
            &dataset.source,
        )
    }

    /// Normalizes a row-major buffer of samples of `sample_shape` in place
    /// (e.g. inputs for prediction); `source` names it in errors.
    pub fn apply_features(
        &self,
        features: &mut [f32],
        sample_shape: &[usize],
        source: &str,
    ) -> Result<(), DataError> {
        let (channels, per_channel) = layout(sample_shape, source)?;
        if channels != self.channels() {
            return Err(DataError::ChannelMismatch {
                dataset: source.to_string(),
                expected: self.channels(),
                found: channels,
                shape: sample_shape.to_vec(),
            });
        }
        if channels == 0 || per_channel == 0 {
            return Ok(());
        }
        let sample_len = channels * per_channel;
        if !features.len().is_multiple_of(sample_len) {
            return Err(DataError::Inconsistent {
                dataset: source.to_string(),
                samples: features.len() / sample_len,
                shape: sample_shape.to_vec(),
                expected: (features.len() / sample_len * sample_len) as u64,
                found: features.len() as u64,
            });
        }
        for sample in features.chunks_exact_mut(sample_len) {
            for ((values, &m), &s) in sample
                .chunks_exact_mut(per_channel)
                .zip(&self.mean)
                .zip(&self.std)
            {
                for v in values {
                    *v = (*v - m) / s;
                }
            }
        }
        Ok(())
    }

    /// Number of channels.
    pub fn channels(&self) -> usize {
        self.mean.len()
    }

    /// Per-channel means.
    pub fn mean(&self) -> &[f32] {
        &self.mean
    }

    /// Per-channel standard deviations (never zero).
    pub fn std(&self) -> &[f32] {
        &self.std
    }
}

/// [`channel_layout`] with overflow reported as an error.
fn layout(sample_shape: &[usize], source: &str) -> Result<(usize, usize), DataError> {
    channel_layout(sample_shape)
        .filter(|(c, p)| c.checked_mul(*p).is_some())
        .ok_or_else(|| DataError::Inconsistent {
            dataset: source.to_string(),
            samples: 0,
            shape: sample_shape.to_vec(),
            expected: u64::MAX,
            found: 0,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f32, b: f64, tol: f64) -> bool {
        (f64::from(a) - b).abs() <= tol
    }

    #[test]
    fn layouts() {
        assert_eq!(channel_layout(&[3, 32, 32]), Some((3, 1024)));
        assert_eq!(channel_layout(&[1, 28, 28]), Some((1, 784)));
        assert_eq!(channel_layout(&[30]), Some((30, 1)));
        assert_eq!(channel_layout(&[]), Some((1, 1)));
        assert_eq!(channel_layout(&[2, usize::MAX, 2]), None);
    }

    #[test]
    fn image_statistics_pool_pixels_per_channel() {
        // 2 samples of shape [2, 1, 2]: channel 0 values {1,3,5,7}, channel 1 {10,10,10,10}.
        let d = Dataset::new(
            vec![1.0, 3.0, 10.0, 10.0, 5.0, 7.0, 10.0, 10.0],
            vec![2, 1, 2],
            vec![0, 1],
            "img",
        )
        .unwrap();
        let n = Normalization::fit(&d).unwrap();
        assert_eq!(n.mean(), &[4.0, 10.0]);
        // Population variance of {1,3,5,7} is 5.
        assert!(close(n.std()[0], 5f64.sqrt(), 1e-6));
        // Constant channel: std replaced by 1.
        assert_eq!(n.std()[1], 1.0);

        let mut d2 = d.clone();
        n.apply(&mut d2).unwrap();
        let s = 5f32.sqrt();
        assert_eq!(
            d2.features,
            vec![-3.0 / s, -1.0 / s, 0.0, 0.0, 1.0 / s, 3.0 / s, 0.0, 0.0]
        );
    }

    #[test]
    fn tabular_statistics_per_feature() {
        let d = Dataset::new(
            vec![0.0, 2.0, 4.0, 2.0, 8.0, 2.0],
            vec![2],
            vec![0, 0, 1],
            "tab",
        )
        .unwrap();
        let n = Normalization::fit(&d).unwrap();
        assert_eq!(n.channels(), 2);
        assert_eq!(n.mean(), &[4.0, 2.0]);
        // {0,4,8}: variance (16+0+16)/3.
        assert!(close(n.std()[0], (32f64 / 3.0).sqrt(), 1e-6));
        assert_eq!(n.std()[1], 1.0);
    }

    #[test]
    fn large_mean_tiny_std_is_stable() {
        // 10000 and the next f32 up (10000 + 2^-10), alternating: mean is
        // halfway, population std is exactly 2^-11. One-pass f32 E[x^2]-E[x]^2
        // would return 0 or garbage here.
        let hi = 10000.0f32 + 2f32.powi(-10);
        assert_ne!(hi, 10000.0);
        let features: Vec<f32> = (0..1000)
            .map(|i| if i % 2 == 0 { 10000.0 } else { hi })
            .collect();
        let d = Dataset::new(features, vec![1], vec![0; 1000], "big").unwrap();
        let n = Normalization::fit(&d).unwrap();
        assert!(close(n.mean()[0], 10000.0 + 2f64.powi(-11), 1e-3));
        assert_eq!(f64::from(n.std()[0]), 2f64.powi(-11));
    }

    #[test]
    fn apply_checks_channel_count() {
        let n = Normalization::identity(3);
        let mut d = Dataset::new(vec![1.0; 8], vec![2, 2, 2], vec![0], "cifarish").unwrap();
        let err = n.apply(&mut d).unwrap_err();
        assert!(matches!(
            err,
            DataError::ChannelMismatch {
                expected: 3,
                found: 2,
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            "cifarish: normalization has 3 channels, but samples of shape [2, 2, 2] have 2"
        );
    }

    #[test]
    fn identity_changes_nothing_and_apply_features_checks_length() {
        let n = Normalization::identity(2);
        let mut x = vec![1.0, -2.0, 3.0, 4.0];
        n.apply_features(&mut x, &[2], "p").unwrap();
        assert_eq!(x, vec![1.0, -2.0, 3.0, 4.0]);
        let mut odd = vec![1.0; 3];
        assert!(matches!(
            n.apply_features(&mut odd, &[2], "p").unwrap_err(),
            DataError::Inconsistent { .. }
        ));
    }

    #[test]
    fn new_validates() {
        assert!(Normalization::new(vec![0.0], vec![2.0]).is_ok());
        let err = Normalization::new(vec![0.0, 1.0], vec![1.0]).unwrap_err();
        assert_eq!(err.to_string(), "bad normalization: 2 means but 1 stds");
        assert!(Normalization::new(vec![0.0], vec![0.0]).is_err());
        assert!(Normalization::new(vec![f32::NAN], vec![1.0]).is_err());
    }

    #[test]
    fn fit_rejects_empty_and_non_finite() {
        let empty = Dataset::new(vec![], vec![4], vec![], "e").unwrap();
        assert!(matches!(
            Normalization::fit(&empty).unwrap_err(),
            DataError::Empty { .. }
        ));
        let nan = Dataset::new(vec![f32::NAN], vec![1], vec![0], "n").unwrap();
        assert!(matches!(
            Normalization::fit(&nan).unwrap_err(),
            DataError::NonFinite { .. }
        ));
    }
}
