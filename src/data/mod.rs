//! Datasets: file parsers, splits, preprocessing and batching.
//!
//! * [`load_splits`] gives a training and a test split ([`Splits`]) from a [`Source`] (a
//!   path, or the embedded MNIST digits): a given test file, else the source's own test
//!   split, else the last `holdout` fraction of a single file's rows — what `wgnn train`'s
//!   `--data`, `--test-data` and `--holdout` do:
//!
//!   ```
//!   use wgnn::data::{LoadOptions, Source, load_splits};
//!   let csv = Source::Path("data/breast_cancer.csv".into());
//!   let splits = load_splits(&csv, None, 0.2, &LoadOptions::default())?;
//!   assert_eq!((splits.train.len(), splits.test.len()), (455, 114));
//!   # Ok::<(), wgnn::data::DataError>(())
//!   ```
//! * [`load`] / [`load_with`] find and read one split of a dataset (MNIST IDX or
//!   CIFAR-10 directories, or a single `.csv`, `.safetensors`, `.bin` or
//!   idx3 file) into a [`Dataset`] of `f32` features and `u32` labels, as
//!   [`LoadOptions`] says for CSV files ([`LabelColumn`], header, delimiter).
//!   Pixel bytes are scaled to `[0, 1]` as torchvision's `ToTensor` does.
//! * Each format module also exposes a `parse(bytes, path)`-style function
//!   that never panics on malformed input, so it can be fuzzed directly.
//! * [`Transform::fit`] fits the lecture's preprocessing ([`Preprocess`]: per-channel
//!   standardization, PCA, whitening, …) on the training split; a model takes it as its
//!   first stage ([`crate::Model::with_preprocess`]), so it travels with the model's
//!   checkpoint. [`Normalization`] is `transforms.Normalize(mean, std)` applied to a
//!   dataset in place ([`Splits::normalize`], [`NormalizeMode`]), for data a model takes as
//!   it is.
//! * [`BatchOrder`] and [`Dataset::gather`] produce seeded, reproducible mini-batches.
//!
//! Every failure is a [`DataError`] naming the file and what is wrong.

pub mod batch;
pub mod cifar;
pub mod csv;
mod dataset;
mod detect;
pub mod embedded;
pub mod error;
pub mod file;
pub mod idx;
pub mod normalize;
pub mod npy;
pub mod prepare;
pub mod preprocess;
pub mod safetensors;

pub use batch::BatchOrder;
pub use csv::LabelColumn;
pub use dataset::{Dataset, Split};
pub use detect::{LoadOptions, is_csv, load, load_with};
pub use error::DataError;
pub use normalize::Normalization;
pub use npy::NpyArray;
pub use prepare::{NormalizeMode, Source, Splits, load_splits};
pub use preprocess::{FitLimits, Preprocess, PreprocessError, Transform};
