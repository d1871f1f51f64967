//! Datasets: file parsers, normalization and batching.
//!
//! * [`load`] / [`load_with`] find and read a dataset (MNIST IDX or
//!   CIFAR-10 directories, or a single `.csv`, `.safetensors`, `.bin` or
//!   idx3 file) into a [`Dataset`] of `f32` features and `u32` labels.
//!   Pixel bytes are scaled to `[0, 1]` as torchvision's `ToTensor` does.
//! * Each format module also exposes a `parse(bytes, path)`-style function
//!   that never panics on malformed input, so it can be fuzzed directly.
//! * [`Normalization`] is `transforms.Normalize(mean, std)` fitted on the
//!   training split; [`BatchOrder`] and [`Dataset::gather`] produce seeded,
//!   reproducible mini-batches.
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
pub use preprocess::{FitLimits, Preprocess, PreprocessError, Transform};
