//! CIFAR-10 binary batches (`data_batch_N.bin`, `test_batch.bin`).
//!
//! Each record is one label byte followed by 3072 pixel bytes, channel-major
//! `3 x 32 x 32` (all red, then green, then blue), which is already the
//! `C x H x W` layout PyTorch uses.

use std::path::{Path, PathBuf};

use super::dataset::Dataset;
use super::error::DataError;
use super::file::read_bytes;

/// Shape of one image.
pub const IMAGE_SHAPE: [usize; 3] = [3, 32, 32];
/// Bytes of pixels per image.
pub const IMAGE_BYTES: usize = 3 * 32 * 32;
/// Bytes per record: the label byte plus the pixels.
pub const RECORD_SIZE: usize = 1 + IMAGE_BYTES;
/// CIFAR-10 has ten classes; larger label bytes mean a corrupt file.
pub const NUM_CLASSES: u8 = 10;

/// Parses one CIFAR-10 batch file; pixels are scaled to `[0, 1]` by /255.
pub fn parse(bytes: &[u8], path: &Path) -> Result<Dataset, DataError> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD_SIZE) {
        return Err(DataError::CifarRecordSize {
            path: path.to_path_buf(),
            len: bytes.len() as u64,
            record: RECORD_SIZE as u64,
        });
    }
    let count = bytes.len() / RECORD_SIZE;
    let mut features = Vec::with_capacity(count * IMAGE_BYTES);
    let mut labels = Vec::with_capacity(count);
    for (index, record) in bytes.chunks_exact(RECORD_SIZE).enumerate() {
        let Some((&label, pixels)) = record.split_first() else {
            continue; // unreachable: chunks_exact yields RECORD_SIZE bytes
        };
        if label >= NUM_CLASSES {
            return Err(DataError::BadLabel {
                path: path.to_path_buf(),
                location: format!("record {index} (byte offset {})", index * RECORD_SIZE),
                value: label.to_string(),
                reason: format!("cifar-10 labels must be < {NUM_CLASSES}"),
            });
        }
        labels.push(u32::from(label));
        features.extend(pixels.iter().map(|&b| f32::from(b) / 255.0));
    }
    Dataset::new(
        features,
        IMAGE_SHAPE.to_vec(),
        labels,
        path.display().to_string(),
    )
}

/// Reads one batch file.
pub fn load_file(path: &Path) -> Result<Dataset, DataError> {
    parse(&read_bytes(path)?, path)
}

/// Reads several batch files and concatenates them in order; `source`
/// names the result (e.g. the directory).
pub fn load_files(paths: &[PathBuf], source: &Path) -> Result<Dataset, DataError> {
    let mut all = Dataset::new(
        Vec::new(),
        IMAGE_SHAPE.to_vec(),
        Vec::new(),
        source.display().to_string(),
    )?;
    for path in paths {
        all.extend_from(&load_file(path)?)?;
    }
    if all.is_empty() {
        return Err(DataError::Empty {
            path: source.to_path_buf(),
        });
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// One record whose pixel `i` is `(i + seed) % 256`.
    fn record(label: u8, seed: usize) -> Vec<u8> {
        let mut r = vec![label];
        r.extend((0..IMAGE_BYTES).map(|i| ((i + seed) % 256) as u8));
        r
    }

    #[test]
    fn round_trip_two_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("data_batch_1.bin");
        let b = dir.path().join("data_batch_2.bin");
        std::fs::write(&a, [record(3, 0), record(9, 1)].concat()).unwrap();
        std::fs::write(&b, record(0, 2)).unwrap();
        let d = load_files(&[a, b], dir.path()).unwrap();
        assert_eq!(d.len(), 3);
        assert_eq!(d.labels, vec![3, 9, 0]);
        assert_eq!(d.sample_shape, vec![3, 32, 32]);
        // Sample 1, channel 2 (blue), row 0, col 5 = pixel index 2048 + 5.
        let v = d.sample(1).unwrap()[2048 + 5];
        assert_eq!(v, ((2048 + 5 + 1) % 256) as f32 / 255.0);
        assert_eq!(d.source, dir.path().display().to_string());
    }

    #[test]
    fn bad_length_names_length_and_record_size() {
        let err = parse(&[0u8; 3072], Path::new("c/x.bin")).unwrap_err();
        assert!(matches!(
            err,
            DataError::CifarRecordSize {
                len: 3072,
                record: 3073,
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            "c/x.bin: file length 3072 bytes is not a positive multiple of the 3073-byte cifar-10 record"
        );
        assert!(matches!(
            parse(&[], Path::new("e.bin")).unwrap_err(),
            DataError::CifarRecordSize { len: 0, .. }
        ));
    }

    #[test]
    fn label_ten_is_rejected_with_record_and_offset() {
        let bytes = [record(1, 0), record(10, 0)].concat();
        let err = parse(&bytes, Path::new("c/x.bin")).unwrap_err();
        assert!(matches!(err, DataError::BadLabel { .. }));
        assert_eq!(
            err.to_string(),
            "c/x.bin record 1 (byte offset 3073): bad label \"10\": cifar-10 labels must be < 10"
        );
    }

    #[test]
    fn no_files_is_empty() {
        let err = load_files(&[], Path::new("dir")).unwrap_err();
        assert!(matches!(err, DataError::Empty { .. }));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..7000)) {
            let _ = parse(&bytes, Path::new("x.bin"));
        }

        #[test]
        fn mutated_valid_files_never_panic(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = [record(1, 0), record(2, 5)].concat();
            for (i, b) in edits { let at = i.index(bytes.len()); bytes[at] = b; }
            bytes.truncate(cut.index(bytes.len() + 1));
            let _ = parse(&bytes, Path::new("x.bin"));
        }
    }
}
