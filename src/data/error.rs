//! The one error type of the `data` module.
//!
//! Every variant names where the problem is (a file path, or the dataset's
//! `source` string for in-memory checks) and what is wrong, with the numbers
//! needed to find it: line and column for text formats, byte offsets or
//! sample indices for binary ones, expected versus found for sizes.

use std::path::PathBuf;

/// Everything that can go wrong while reading, checking or batching data.
///
/// Messages are single lines that start with the path or dataset name, e.g.
/// `data/x.csv line 7: expected 31 columns, found 30`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// Preprocessing that cannot be fitted or was asked wrongly.
    #[error(transparent)]
    Preprocess(#[from] super::preprocess::PreprocessError),
    /// The file or directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// File or directory concerned.
        path: PathBuf,
        /// Underlying I/O error.
        source: std::io::Error,
    },

    /// The file starts like gzip (1f 8b) but does not decompress.
    #[error("{}: gzip data is corrupt: {source}", path.display())]
    Gzip {
        /// File or directory concerned.
        path: PathBuf,
        /// Underlying I/O error.
        source: std::io::Error,
    },

    /// The leading magic bytes are not those of the expected format.
    #[error("{}: bad magic bytes for {format}: expected {expected}, found {found}", path.display())]
    BadMagic {
        /// File or directory concerned.
        path: PathBuf,
        /// Format that was expected.
        format: &'static str,
        /// Expected leading bytes (hex).
        expected: String,
        /// Leading bytes found (hex).
        found: String,
    },

    /// The element type recorded in the file is not one this reader handles.
    #[error("{}: unsupported dtype {found}; {supported}", path.display())]
    UnsupportedDtype {
        /// File or directory concerned.
        path: PathBuf,
        /// The dtype in the file.
        found: String,
        /// What is supported instead.
        supported: String,
    },

    /// A header field is inconsistent (dimension count, size overflow, ...).
    #[error("{}: bad header: {message}", path.display())]
    BadHeader {
        /// File or directory concerned.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// The byte length does not match what the header promises (too short or
    /// with trailing bytes).
    #[error("{}: {what}: expected {expected} bytes, found {found}", path.display())]
    Truncated {
        /// File or directory concerned.
        path: PathBuf,
        /// Which part of the file, or which files.
        what: &'static str,
        /// Bytes required.
        expected: u64,
        /// Bytes present.
        found: u64,
    },

    /// A CIFAR-10 file whose length is not a positive multiple of a record.
    #[error(
        "{}: file length {len} bytes is not a positive multiple of the {record}-byte cifar-10 record",
        path.display()
    )]
    CifarRecordSize {
        /// File or directory concerned.
        path: PathBuf,
        /// Actual file length in bytes.
        len: u64,
        /// Record size in bytes.
        record: u64,
    },

    /// A text file that is not valid UTF-8.
    #[error("{} line {line}: invalid utf-8 at byte offset {offset}", path.display())]
    NotUtf8 {
        /// File or directory concerned.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Byte offset of the first invalid byte.
        offset: usize,
    },

    /// A CSV row with a different number of cells than the first row.
    #[error("{} line {line}: expected {expected} columns, found {found}", path.display())]
    CsvRowWidth {
        /// File or directory concerned.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Columns in the first row.
        expected: usize,
        /// Columns in this row.
        found: usize,
    },

    /// A CSV feature cell that cannot be used (1-based line and column).
    #[error("{} line {line}, column {column}: {reason}: {text:?}", path.display())]
    CsvCell {
        /// File or directory concerned.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// 1-based column number.
        column: usize,
        /// The offending cell, trimmed.
        text: String,
        /// Why it is rejected.
        reason: &'static str,
    },

    /// The CSV label column could not be chosen.
    #[error("{}: {message}", path.display())]
    CsvLabelColumn {
        /// File or directory concerned.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// A label that is not a valid class index (`location` is e.g. `line 7`
    /// or `sample 3`).
    #[error("{} {location}: bad label {value:?}: {reason}", path.display())]
    BadLabel {
        /// File or directory concerned.
        path: PathBuf,
        /// Where: `line N`, `sample N` or `record N (byte offset M)`.
        location: String,
        /// The label as written in the file.
        value: String,
        /// Why it is rejected.
        reason: String,
    },

    /// A label at or above the number of classes the model has.
    #[error(
        "{dataset}: sample {index} has label {label}, but there are only {num_classes} classes"
    )]
    LabelOutOfRange {
        /// The dataset's `source`.
        dataset: String,
        /// 0-based sample index.
        index: usize,
        /// The label value.
        label: u32,
        /// Number of classes allowed.
        num_classes: usize,
    },

    /// Labels whose largest would leave most classes empty: an outlier, named.
    #[error(
        "{dataset}: sample {sample} has label {label}, but only {distinct} distinct labels occur ({values}): an outlier would make a model of {} classes",
        u64::from(*label) + 1
    )]
    SparseLabels {
        /// The dataset's `source`.
        dataset: String,
        /// The sample holding the largest label, as the source numbers it.
        sample: usize,
        label: u32,
        distinct: usize,
        /// The first distinct labels, for the message.
        values: String,
    },

    /// A NaN or infinite feature value.
    #[error("{dataset}: sample {sample}, feature {feature} is not finite ({value})")]
    NonFinite {
        /// The dataset's `source`.
        dataset: String,
        /// 0-based sample index, as the source numbers it.
        sample: usize,
        /// 0-based flat feature index within the sample.
        feature: usize,
        /// The value (NaN or infinite).
        value: f32,
    },

    /// The safetensors header or layout is unusable.
    #[error("{}: safetensors: {message}", path.display())]
    Safetensors {
        /// File or directory concerned.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// A required tensor is not in the safetensors file.
    #[error("{}: missing tensor {key:?}; tensors present: [{}]", path.display(), present.join(", "))]
    MissingTensor {
        /// File or directory concerned.
        path: PathBuf,
        /// Tensor name that was looked up.
        key: String,
        /// Tensor names the file does hold, sorted.
        present: Vec<String>,
    },

    /// Features and labels disagree on the number of samples.
    #[error("{what}: {images} samples but {labels} labels")]
    LengthMismatch {
        /// Which part of the file, or which files.
        what: String,
        /// Number of samples (images or feature rows).
        images: u64,
        /// Number of labels.
        labels: u64,
    },

    /// The data holds no samples.
    #[error("{}: no samples", path.display())]
    Empty {
        /// File or directory concerned.
        path: PathBuf,
    },

    /// The path is neither a dataset file nor a directory holding one.
    #[error("{}: not a dataset; expected {expected}", path.display())]
    NotADataset {
        /// File or directory concerned.
        path: PathBuf,
        /// What would have been accepted.
        expected: String,
    },

    /// A malformed or unsupported `.npy` file.
    #[error("{}: npy: {message}", path.display())]
    Npy {
        /// File or directory concerned.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// Normalization statistics with a different channel count than the data.
    #[error(
        "{dataset}: normalization has {expected} channels, but samples of shape {shape:?} have {found}"
    )]
    ChannelMismatch {
        /// The dataset's `source`.
        dataset: String,
        /// Channels of the statistics.
        expected: usize,
        /// Channels of the samples.
        found: usize,
        /// Sample shape.
        shape: Vec<usize>,
    },

    /// Normalization statistics that cannot be used.
    #[error("bad normalization: {message}")]
    BadNormalization {
        /// What is wrong.
        message: String,
    },

    /// A row index past the end of the dataset.
    #[error("{dataset}: index {index} is out of range for {len} samples")]
    IndexOutOfRange {
        /// The dataset's `source`.
        dataset: String,
        /// The index requested.
        index: usize,
        /// Number of samples.
        len: usize,
    },

    /// A rank outside its job.
    #[error("rank {rank} of {ranks} processes: the rank must be below the number of processes")]
    Shard { rank: usize, ranks: usize },

    /// Fewer samples than processes, with every rank's share cut to whole samples.
    #[error("{len} sample(s) for {ranks} processes with --drop-last: every rank's share is empty")]
    TooFewForRanks { len: usize, ranks: usize },

    /// A batch size of zero.
    #[error("batch size must be at least 1, got {batch_size}")]
    BatchSize {
        /// The batch size given.
        batch_size: usize,
    },

    /// A dataset whose feature buffer does not match its shape and labels.
    #[error(
        "{dataset}: {found} feature values, expected {expected} ({samples} samples of shape {shape:?})"
    )]
    Inconsistent {
        /// The dataset's `source`.
        dataset: String,
        /// Number of samples (labels).
        samples: usize,
        /// Sample shape.
        shape: Vec<usize>,
        /// Feature values implied by shape and labels.
        expected: u64,
        /// Feature values present.
        found: u64,
    },
    /// A train/test split that cannot be made or does not fit together.
    #[error("{message}")]
    Split {
        /// What is wrong.
        message: String,
    },
}
