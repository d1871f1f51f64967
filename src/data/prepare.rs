//! From what the user names to a train and a test split, normalized as the lecture does:
//! per-channel mean and std computed on the training split only, applied to both.

use std::path::{Path, PathBuf};

use super::{DataError, Dataset, LoadOptions, Normalization, Split, embedded, load_with};

/// Where the data comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The 10,000 MNIST digits compiled into wgnn (8,000 train, 2,000 test).
    EmbeddedMnist,
    /// A dataset directory (MNIST IDX, CIFAR-10) or a single file, as [`super::load`] finds
    /// them.
    Path(PathBuf),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::EmbeddedMnist => f.write_str(embedded::NAME),
            Source::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

/// How [`Splits::normalize`] prepares both splits in place: per-channel standardization
/// with the training split's statistics, or nothing for data already prepared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NormalizeMode {
    /// `transforms.Normalize(mean, std)` per channel (the default).
    #[default]
    PerChannel,
    /// The data as it is.
    None,
}

/// A training split and a test split ([`load_splits`]).
#[derive(Clone, Debug)]
pub struct Splits {
    /// What the model trains on (and the preprocessing is fitted on).
    pub train: Dataset,
    /// What it is evaluated on after each epoch.
    pub test: Dataset,
    /// How the test split was chosen, for the report.
    pub test_origin: String,
}

/// Loads the training data and its test split: `test` when given; else the source's own
/// test split (the embedded digits, an MNIST or CIFAR-10 directory); else the last
/// `holdout` fraction of the rows of a single file.
pub fn load_splits(
    source: &Source,
    test: Option<&Path>,
    holdout: f64,
    options: &LoadOptions,
) -> Result<Splits, DataError> {
    let (train, own_test) = match source {
        Source::EmbeddedMnist => (
            embedded::mnist(Split::Train)?,
            Some(embedded::mnist(Split::Test)?),
        ),
        Source::Path(p) if p.is_dir() => (
            load_with(p, Split::Train, options)?,
            Some(load_with(p, Split::Test, options)?),
        ),
        Source::Path(p) => (load_with(p, Split::Train, options)?, None),
    };
    if let Some(path) = test {
        let test = load_with(path, Split::Test, options)?;
        return Ok(Splits {
            train,
            test,
            test_origin: format!("{}", path.display()),
        });
    }
    if let Some(test) = own_test {
        let origin = format!("the test split of {source}");
        return Ok(Splits {
            train,
            test,
            test_origin: origin,
        });
    }
    if !(holdout > 0.0 && holdout < 1.0) {
        return Err(DataError::Split {
            message: format!("holdout fraction must be in (0, 1), got {holdout}"),
        });
    }
    let keep = ((train.len() as f64) * (1.0 - holdout)).round() as usize;
    let keep = keep.clamp(1, train.len().saturating_sub(1).max(1));
    let (rows, mut train) = (train.len(), train);
    let test_part = train.split_off(keep)?;
    let origin = format!(
        "the last {} of {rows} rows of {source} (holdout {holdout})",
        test_part.len(),
    );
    Ok(Splits {
        train,
        test: test_part,
        test_origin: origin,
    })
}

impl Splits {
    /// Fits the normalization on the training split and applies it to both.
    pub fn normalize(&mut self, mode: NormalizeMode) -> Result<Normalization, DataError> {
        let norm = match mode {
            NormalizeMode::PerChannel => Normalization::fit(&self.train)?,
            NormalizeMode::None => Normalization::identity(channels(&self.train.sample_shape)),
        };
        norm.apply(&mut self.train)?;
        norm.apply(&mut self.test)?;
        Ok(norm)
    }

    /// Fails when the test split's samples or classes do not fit the training split's.
    pub fn check_compatible(&self) -> Result<(), DataError> {
        if self.test.sample_shape != self.train.sample_shape {
            return Err(DataError::Split {
                message: format!(
                    "the test data's samples are shaped {:?} but the training data's {:?}",
                    self.test.sample_shape, self.train.sample_shape
                ),
            });
        }
        Ok(())
    }
}

/// Channels of a sample as [`Normalization`] counts them.
pub fn channels(sample_shape: &[usize]) -> usize {
    super::normalize::channel_layout(sample_shape).map_or(1, |(c, _)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_data_uses_its_own_test_split_and_normalizes_from_train_only() {
        let mut splits =
            load_splits(&Source::EmbeddedMnist, None, 0.2, &LoadOptions::default()).unwrap();
        assert_eq!((splits.train.len(), splits.test.len()), (8000, 2000));
        let norm = splits.normalize(NormalizeMode::PerChannel).unwrap();
        assert_eq!(norm.channels(), 1);
        // MNIST's pixel mean and std are about 0.13 and 0.31.
        assert!(
            (norm.mean()[0] - 0.13).abs() < 0.01 && (norm.std()[0] - 0.31).abs() < 0.01,
            "{norm:?}"
        );
        let mean: f64 = splits
            .train
            .features
            .iter()
            .map(|&v| f64::from(v))
            .sum::<f64>()
            / splits.train.features.len() as f64;
        assert!(mean.abs() < 1e-4);
    }

    #[test]
    fn a_single_file_holds_back_its_last_rows() {
        let csv = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/breast_cancer.csv");
        let splits = load_splits(&Source::Path(csv), None, 0.2, &LoadOptions::default()).unwrap();
        assert_eq!((splits.train.len(), splits.test.len()), (455, 114));
        assert!(splits.test_origin.contains("last 114 of 569"));
        let err = load_splits(
            &Source::Path(Path::new(env!("CARGO_MANIFEST_DIR")).join("data/breast_cancer.csv")),
            None,
            1.5,
            &LoadOptions::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("holdout"), "{err}");
    }
}
