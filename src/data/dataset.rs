//! The in-memory labelled dataset every parser produces.

use super::error::DataError;

/// Which part of a dataset directory to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    /// The training files (`train-*` for MNIST, `data_batch_*.bin` for CIFAR-10).
    Train,
    /// The test files (`t10k-*` for MNIST, `test_batch.bin` for CIFAR-10).
    Test,
}

/// A labelled classification dataset held in memory as `f32` features.
///
/// Invariant (checked by [`Dataset::new`] and by every parser):
/// `features.len() == labels.len() * sample_len()`. The fields are public for
/// convenience; methods never panic if a caller breaks the invariant, they
/// return [`DataError::Inconsistent`] or [`DataError::IndexOutOfRange`].
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Samples, row-major `[len, sample_shape...]`.
    pub features: Vec<f32>,
    /// Shape of one sample, e.g. `[1, 28, 28]`, `[3, 32, 32]`, `[30]`.
    pub sample_shape: Vec<usize>,
    /// Class index per sample.
    pub labels: Vec<u32>,
    /// Where it came from (for error messages and reports).
    pub source: String,
    /// The index in `source` of the first sample (non-zero for a split's later part), so
    /// that messages name a sample as the file numbers it.
    pub first_sample: usize,
}

impl Dataset {
    /// Builds a dataset, checking that the feature buffer matches
    /// `labels.len()` samples of `sample_shape`.
    pub fn new(
        features: Vec<f32>,
        sample_shape: Vec<usize>,
        labels: Vec<u32>,
        source: impl Into<String>,
    ) -> Result<Self, DataError> {
        let dataset = Dataset {
            features,
            sample_shape,
            labels,
            source: source.into(),
            first_sample: 0,
        };
        dataset.check_consistent()?;
        Ok(dataset)
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Number of `f32` values in one sample (the product of `sample_shape`).
    ///
    /// Saturates at `usize::MAX` instead of overflowing, which can only happen
    /// if the public fields were set by hand to an absurd shape.
    pub fn sample_len(&self) -> usize {
        checked_product(&self.sample_shape).unwrap_or(usize::MAX)
    }

    /// Number of classes implied by the labels: the largest label plus one
    /// (0 for an empty dataset).
    pub fn num_classes(&self) -> usize {
        self.labels
            .iter()
            .max()
            .map_or(0, |&max| (max as usize).saturating_add(1))
    }

    /// The classes of a model for these datasets' labels (the largest plus one), refusing
    /// labels that would make most of them empty: a label far above the others (`100000`
    /// among 0 and 1, `1e9`) is an outlier to fix, named with its sample, not a reason to
    /// build that many outputs. Up to two classes are always fine.
    pub fn infer_classes(datasets: &[&Dataset]) -> Result<usize, DataError> {
        let largest = datasets
            .iter()
            .filter_map(|d| {
                let (i, &label) = d.labels.iter().enumerate().max_by_key(|(_, l)| **l)?;
                Some((label, d, i))
            })
            .max_by_key(|(label, _, _)| *label);
        let Some((largest, dataset, index)) = largest else {
            return Ok(0);
        };
        let classes = largest as usize + 1;
        let mut seen = std::collections::BTreeSet::new();
        for d in datasets {
            seen.extend(d.labels.iter().copied());
        }
        if classes > 2 && seen.len() * 2 < classes {
            let shown: Vec<String> = seen.iter().take(8).map(u32::to_string).collect();
            let more = if seen.len() > 8 { ", …" } else { "" };
            return Err(DataError::SparseLabels {
                dataset: dataset.source.clone(),
                sample: dataset.first_sample + index,
                label: largest,
                distinct: seen.len(),
                values: format!("{}{more}", shown.join(", ")),
            });
        }
        Ok(classes)
    }

    /// The features of sample `index`, or `None` past the end.
    pub fn sample(&self, index: usize) -> Option<&[f32]> {
        let n = self.sample_len();
        let start = index.checked_mul(n)?;
        self.features.get(start..start.checked_add(n)?)
    }

    /// Checks `features.len() == len() * sample_len()`.
    pub fn check_consistent(&self) -> Result<(), DataError> {
        let expected = checked_product(&self.sample_shape).and_then(|n| n.checked_mul(self.len()));
        if expected != Some(self.features.len()) {
            return Err(DataError::Inconsistent {
                dataset: self.source.clone(),
                samples: self.len(),
                shape: self.sample_shape.clone(),
                expected: expected.map_or(u64::MAX, |e| e as u64),
                found: self.features.len() as u64,
            });
        }
        Ok(())
    }

    /// Splits into the first `n` samples and the rest (both keep `source`).
    pub fn split_at(&self, n: usize) -> Result<(Dataset, Dataset), DataError> {
        self.check_consistent()?;
        if n > self.len() {
            return Err(DataError::IndexOutOfRange {
                dataset: self.source.clone(),
                index: n,
                len: self.len(),
            });
        }
        // Consistency was checked above, so `n * sample_len` fits in `features`.
        let cut = n.saturating_mul(self.sample_len()).min(self.features.len());
        let (x_head, x_tail) = self.features.split_at(cut);
        let (y_head, y_tail) = self.labels.split_at(n);
        let part = |x: &[f32], y: &[u32], first: usize| Dataset {
            features: x.to_vec(),
            sample_shape: self.sample_shape.clone(),
            labels: y.to_vec(),
            source: self.source.clone(),
            first_sample: self.first_sample + first,
        };
        Ok((part(x_head, y_head, 0), part(x_tail, y_tail, n)))
    }

    /// Like [`Dataset::split_at`], in place: keeps the first `n` samples and returns the
    /// rest, copying only the rest (a train/test split then needs no second copy of the
    /// training part).
    pub fn split_off(&mut self, n: usize) -> Result<Dataset, DataError> {
        self.check_consistent()?;
        if n > self.len() {
            return Err(DataError::IndexOutOfRange {
                dataset: self.source.clone(),
                index: n,
                len: self.len(),
            });
        }
        let cut = n.saturating_mul(self.sample_len()).min(self.features.len());
        let tail = Dataset {
            features: self.features[cut..].to_vec(),
            sample_shape: self.sample_shape.clone(),
            labels: self.labels[n..].to_vec(),
            source: self.source.clone(),
            first_sample: self.first_sample + n,
        };
        self.features.truncate(cut);
        self.features.shrink_to_fit();
        self.labels.truncate(n);
        self.labels.shrink_to_fit();
        Ok(tail)
    }

    /// Fails on the first NaN or infinite feature, naming its sample (as the source numbers
    /// it) and feature index (flat index within the sample).
    pub fn check_finite(&self) -> Result<(), DataError> {
        let n = self.sample_len().max(1);
        match self.features.iter().position(|v| !v.is_finite()) {
            None => Ok(()),
            Some(pos) => Err(DataError::NonFinite {
                dataset: self.source.clone(),
                sample: self.first_sample + pos / n,
                feature: pos % n,
                value: self.features.get(pos).copied().unwrap_or(f32::NAN),
            }),
        }
    }

    /// Fails on the first label `>= num_classes`.
    pub fn check_labels(&self, num_classes: usize) -> Result<(), DataError> {
        match self
            .labels
            .iter()
            .position(|&label| label as usize >= num_classes)
        {
            None => Ok(()),
            Some(index) => Err(DataError::LabelOutOfRange {
                dataset: self.source.clone(),
                index: self.first_sample + index,
                label: self.labels.get(index).copied().unwrap_or(u32::MAX),
                num_classes,
            }),
        }
    }

    /// Appends `other`'s samples (used to join CIFAR-10 batch files).
    pub fn extend_from(&mut self, other: &Dataset) -> Result<(), DataError> {
        if other.sample_shape != self.sample_shape {
            return Err(DataError::BadHeader {
                path: other.source.clone().into(),
                message: format!(
                    "sample shape {:?} differs from {:?} in {}",
                    other.sample_shape, self.sample_shape, self.source
                ),
            });
        }
        other.check_consistent()?;
        self.features.extend_from_slice(&other.features);
        self.labels.extend_from_slice(&other.labels);
        Ok(())
    }
}

/// Product of `dims`, or `None` on overflow.
pub(crate) fn checked_product(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Dataset {
        Dataset::new(
            (0..12).map(|v| v as f32).collect(),
            vec![2, 2],
            vec![0, 2, 1],
            "tiny",
        )
        .unwrap()
    }

    #[test]
    fn basic_accessors() {
        let d = tiny();
        assert_eq!(d.len(), 3);
        assert!(!d.is_empty());
        assert_eq!(d.sample_len(), 4);
        assert_eq!(d.num_classes(), 3);
        assert_eq!(d.sample(1).unwrap(), &[4.0, 5.0, 6.0, 7.0]);
        assert!(d.sample(3).is_none());
        let empty = Dataset::new(vec![], vec![5], vec![], "e").unwrap();
        assert_eq!(empty.num_classes(), 0);
        assert!(empty.is_empty());
    }

    #[test]
    fn new_rejects_inconsistent_buffers() {
        let err = Dataset::new(vec![0.0; 7], vec![2, 2], vec![0, 1], "bad").unwrap_err();
        assert!(matches!(
            err,
            DataError::Inconsistent {
                expected: 8,
                found: 7,
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            "bad: 7 feature values, expected 8 (2 samples of shape [2, 2])"
        );
    }

    #[test]
    fn split_at_partitions_rows() {
        let d = tiny();
        let (a, b) = d.split_at(1).unwrap();
        assert_eq!(a.labels, vec![0]);
        assert_eq!(a.features, vec![0.0, 1.0, 2.0, 3.0]);
        assert_eq!(b.labels, vec![2, 1]);
        assert_eq!(b.features.len(), 8);
        assert_eq!(b.features[0], 4.0);
        let (all, none) = d.split_at(3).unwrap();
        assert_eq!(all, d);
        assert!(none.is_empty());
        let err = d.split_at(4).unwrap_err();
        assert_eq!(
            err.to_string(),
            "tiny: index 4 is out of range for 3 samples"
        );
    }

    #[test]
    fn split_off_keeps_the_head_and_later_messages_number_samples_as_the_file() {
        let mut d = tiny();
        let tail = d.split_off(1).unwrap();
        assert_eq!(d.labels, vec![0]);
        assert_eq!(d.features, vec![0.0, 1.0, 2.0, 3.0]);
        assert_eq!(d.features.capacity(), 4);
        assert_eq!((tail.labels.clone(), tail.first_sample), (vec![2, 1], 1));
        let (_, mut last) = tail.split_at(1).unwrap();
        assert_eq!(last.first_sample, 2);
        last.features[3] = f32::INFINITY;
        let err = last.check_finite().unwrap_err();
        assert_eq!(
            err.to_string(),
            "tiny: sample 2, feature 3 is not finite (inf)"
        );
        let err = last.check_labels(1).unwrap_err();
        assert!(err.to_string().contains("sample 2 has label 1"), "{err}");
        assert!(d.split_off(5).is_err());
    }

    #[test]
    fn classes_are_inferred_and_an_outlier_label_is_named() {
        let labels =
            |v: &[u32]| Dataset::new(vec![0.0; v.len()], vec![1], v.to_vec(), "d.csv").unwrap();
        let train = labels(&[0, 1, 1, 0]);
        assert_eq!(Dataset::infer_classes(&[&train]).unwrap(), 2);
        let ten = labels(&(0..10).collect::<Vec<_>>());
        assert_eq!(Dataset::infer_classes(&[&ten, &train]).unwrap(), 10);
        // One class of three missing is fine; 100000 among 0 and 1 is not.
        assert_eq!(Dataset::infer_classes(&[&labels(&[0, 2])]).unwrap(), 3);
        let mut test = labels(&[1, 0, 100_000, 1]);
        test.first_sample = 455;
        let err = Dataset::infer_classes(&[&train, &test]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "d.csv: sample 457 has label 100000, but only 3 distinct labels occur (0, 1, 100000): \
             an outlier would make a model of 100001 classes"
        );
        assert_eq!(Dataset::infer_classes(&[]).unwrap(), 0);
    }

    #[test]
    fn check_finite_names_sample_and_feature() {
        let mut d = tiny();
        assert!(d.check_finite().is_ok());
        d.features[6] = f32::NAN;
        d.features[9] = f32::INFINITY;
        let err = d.check_finite().unwrap_err();
        assert!(matches!(
            err,
            DataError::NonFinite {
                sample: 1,
                feature: 2,
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            "tiny: sample 1, feature 2 is not finite (NaN)"
        );
    }

    #[test]
    fn check_labels_names_index_and_label() {
        let d = tiny();
        assert!(d.check_labels(3).is_ok());
        let err = d.check_labels(2).unwrap_err();
        assert!(matches!(
            err,
            DataError::LabelOutOfRange {
                index: 1,
                label: 2,
                num_classes: 2,
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            "tiny: sample 1 has label 2, but there are only 2 classes"
        );
    }

    #[test]
    fn extend_from_appends_and_checks_shape() {
        let mut d = tiny();
        let other = tiny();
        d.extend_from(&other).unwrap();
        assert_eq!(d.len(), 6);
        assert_eq!(d.features.len(), 24);
        let odd = Dataset::new(vec![0.0; 3], vec![3], vec![0], "odd").unwrap();
        assert!(d.extend_from(&odd).is_err());
    }

    #[test]
    fn absurd_public_shape_does_not_panic() {
        let d = Dataset {
            features: vec![1.0],
            sample_shape: vec![usize::MAX, 4],
            labels: vec![0],
            source: "x".into(),
            first_sample: 0,
        };
        assert_eq!(d.sample_len(), usize::MAX);
        assert!(d.check_consistent().is_err());
        assert!(d.split_at(1).is_err());
        assert!(d.sample(0).is_none());
        assert!(d.check_finite().is_ok());
    }
}
