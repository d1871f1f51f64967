//! MNIST IDX files (`*-idx3-ubyte` images, `*-idx1-ubyte` labels), plain or
//! gzipped.
//!
//! Layout: a big-endian header `00 00 <type> <ndim>`, then `ndim` big-endian
//! `u32` dimensions, then the elements. Only type `0x08` (unsigned byte) is
//! supported, which is what MNIST and Fashion-MNIST use.

use std::path::{Path, PathBuf};

use super::dataset::{Dataset, checked_product};
use super::error::DataError;
use super::file::{gunzip_if_needed, hex_prefix, read_bytes};

/// IDX type code for unsigned bytes.
pub const TYPE_U8: u8 = 0x08;

/// Images decoded from an idx3 file, scaled to `[0, 1]`.
#[derive(Clone, Debug, PartialEq)]
pub struct IdxImages {
    /// Number of images.
    pub count: usize,
    /// Image height.
    pub rows: usize,
    /// Image width.
    pub cols: usize,
    /// Pixels, row-major `[count, rows, cols]`, each `byte / 255`.
    pub pixels: Vec<f32>,
}

/// Parses an idx3 images file (gzip or plain bytes). Pixels are divided by
/// 255 as torchvision's `ToTensor` does.
pub fn parse_images(bytes: &[u8], path: &Path) -> Result<IdxImages, DataError> {
    let bytes = gunzip_if_needed(bytes, path)?;
    let (dims, data) = parse_u8_array(&bytes, path, 3, "images")?;
    let [count, rows, cols] = dims.as_slice() else {
        return Err(bad_header(path, "images must have 3 dimensions"));
    };
    Ok(IdxImages {
        count: *count,
        rows: *rows,
        cols: *cols,
        pixels: data.iter().map(|&b| f32::from(b) / 255.0).collect(),
    })
}

/// Parses an idx1 labels file (gzip or plain bytes).
pub fn parse_labels(bytes: &[u8], path: &Path) -> Result<Vec<u32>, DataError> {
    let bytes = gunzip_if_needed(bytes, path)?;
    let (_dims, data) = parse_u8_array(&bytes, path, 1, "labels")?;
    Ok(data.iter().map(|&b| u32::from(b)).collect())
}

/// Loads an images file and its labels file into a dataset of shape
/// `[1, rows, cols]` per sample.
pub fn load_pair(images_path: &Path, labels_path: &Path) -> Result<Dataset, DataError> {
    let images = parse_images(&read_bytes(images_path)?, images_path)?;
    let labels = parse_labels(&read_bytes(labels_path)?, labels_path)?;
    if images.count != labels.len() {
        return Err(DataError::LengthMismatch {
            what: format!("{} and {}", images_path.display(), labels_path.display()),
            images: images.count as u64,
            labels: labels.len() as u64,
        });
    }
    if labels.is_empty() {
        return Err(DataError::Empty {
            path: images_path.to_path_buf(),
        });
    }
    Dataset::new(
        images.pixels,
        vec![1, images.rows, images.cols],
        labels,
        images_path.display().to_string(),
    )
}

/// Candidate labels files for an images file: the file name with `idx3`
/// replaced by `idx1` and `images` by `labels`, with and without `.gz`.
/// Empty if the name contains neither.
pub fn labels_paths_for(images_path: &Path) -> Vec<PathBuf> {
    let Some(name) = images_path.file_name().and_then(|n| n.to_str()) else {
        return Vec::new();
    };
    let renamed = name.replace("idx3", "idx1").replace("images", "labels");
    if renamed == name {
        return Vec::new();
    }
    let mut names = vec![renamed.clone()];
    // Accept a gzipped labels file next to plain images and vice versa.
    match renamed.strip_suffix(".gz") {
        Some(plain) => names.push(plain.to_string()),
        None => names.push(format!("{renamed}.gz")),
    }
    names
        .into_iter()
        .map(|n| images_path.with_file_name(n))
        .collect()
}

/// Checks the header and length; returns the dimensions and the data bytes.
/// The size is checked against the actual byte count before anything is
/// allocated, so a lying header cannot cause a huge allocation.
fn parse_u8_array<'a>(
    bytes: &'a [u8],
    path: &Path,
    want_ndim: u8,
    what: &'static str,
) -> Result<(Vec<usize>, &'a [u8]), DataError> {
    let Some(&[m0, m1, dtype, ndim]) = bytes.first_chunk::<4>() else {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            what: "idx header",
            expected: 4,
            found: bytes.len() as u64,
        });
    };
    if [m0, m1] != [0, 0] {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            format: "idx",
            expected: "00 00".to_string(),
            found: hex_prefix(bytes, 2),
        });
    }
    if dtype != TYPE_U8 {
        return Err(DataError::UnsupportedDtype {
            path: path.to_path_buf(),
            found: format!("0x{dtype:02x} ({})", type_name(dtype)),
            supported: "only 0x08 (unsigned byte) idx files are supported".to_string(),
        });
    }
    if ndim != want_ndim {
        return Err(bad_header(
            path,
            &format!("{what} must have {want_ndim} dimension(s), found {ndim}"),
        ));
    }
    let header_len = 4 + 4 * usize::from(ndim);
    let Some(dim_bytes) = bytes.get(4..header_len) else {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            what: "idx header",
            expected: header_len as u64,
            found: bytes.len() as u64,
        });
    };
    let dims: Vec<usize> = dim_bytes
        .as_chunks::<4>()
        .0
        .iter()
        .map(|&c| u32::from_be_bytes(c) as usize)
        .collect();
    let data = bytes.get(header_len..).unwrap_or_default();
    // u128 cannot overflow for three u32 factors, unlike usize on 32-bit targets.
    let expected = dims.iter().fold(1u128, |acc, &d| acc * d as u128);
    if expected != data.len() as u128 || checked_product(&dims).is_none() {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            what: if expected > data.len() as u128 {
                "idx data is truncated"
            } else {
                "idx data has trailing bytes"
            },
            expected: u64::try_from(expected).unwrap_or(u64::MAX),
            found: data.len() as u64,
        });
    }
    Ok((dims, data))
}

fn bad_header(path: &Path, message: &str) -> DataError {
    DataError::BadHeader {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// Human name of an IDX type code, for error messages.
fn type_name(code: u8) -> &'static str {
    match code {
        0x08 => "unsigned byte",
        0x09 => "signed byte",
        0x0b => "short",
        0x0c => "int",
        0x0d => "float",
        0x0e => "double",
        _ => "unknown type",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use proptest::prelude::*;
    use std::io::Write;

    /// Encodes an IDX u8 array.
    fn encode(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut out = vec![0, 0, TYPE_U8, dims.len() as u8];
        for d in dims {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out.extend_from_slice(data);
        out
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    fn p() -> &'static Path {
        Path::new("mnist/train-images-idx3-ubyte")
    }

    #[test]
    fn parses_images_and_scales() {
        let pixels: Vec<u8> = (0..12).map(|v| v * 20).collect();
        let img = parse_images(&encode(&[3, 2, 2], &pixels), p()).unwrap();
        assert_eq!((img.count, img.rows, img.cols), (3, 2, 2));
        assert_eq!(img.pixels.len(), 12);
        assert_eq!(img.pixels[0], 0.0);
        assert_eq!(img.pixels[1], 20.0 / 255.0);
        let full = parse_images(&encode(&[1, 1, 1], &[255]), p()).unwrap();
        assert_eq!(full.pixels, vec![1.0]);
    }

    #[test]
    fn parses_gzipped_labels() {
        let labels = parse_labels(&gzip(&encode(&[4], &[7, 0, 9, 3])), p()).unwrap();
        assert_eq!(labels, vec![7, 0, 9, 3]);
    }

    #[test]
    fn round_trip_through_files_gz_and_plain() {
        let dir = tempfile::tempdir().unwrap();
        let img_path = dir.path().join("train-images-idx3-ubyte.gz");
        let pixels: Vec<u8> = (0..2 * 28 * 28).map(|i| (i % 256) as u8).collect();
        std::fs::write(&img_path, gzip(&encode(&[2, 28, 28], &pixels))).unwrap();
        // Plain labels next to gzipped images: found via the `.gz`-less candidate.
        std::fs::write(
            dir.path().join("train-labels-idx1-ubyte"),
            encode(&[2], &[5, 1]),
        )
        .unwrap();
        let candidates = labels_paths_for(&img_path);
        let labels_path = candidates.iter().find(|c| c.exists()).unwrap();
        let d = load_pair(&img_path, labels_path).unwrap();
        assert_eq!(d.sample_shape, vec![1, 28, 28]);
        assert_eq!(d.labels, vec![5, 1]);
        assert_eq!(d.features[300], (300 % 256) as f32 / 255.0);
        assert_eq!(d.source, img_path.display().to_string());
    }

    #[test]
    fn labels_path_naming() {
        let dotted = labels_paths_for(Path::new("d/t10k-images.idx3-ubyte"));
        assert_eq!(dotted[0], Path::new("d/t10k-labels.idx1-ubyte"));
        assert_eq!(dotted[1], Path::new("d/t10k-labels.idx1-ubyte.gz"));
        assert!(labels_paths_for(Path::new("d/whatever.bin")).is_empty());
    }

    #[test]
    fn bad_magic() {
        let mut bytes = encode(&[1], &[1]);
        bytes[0] = 0x12;
        let err = parse_labels(&bytes, p()).unwrap_err();
        assert!(matches!(err, DataError::BadMagic { .. }));
        assert!(
            err.to_string().contains("expected 00 00, found 12 00"),
            "{err}"
        );
    }

    #[test]
    fn unsupported_dtype_says_only_u8() {
        let mut bytes = encode(&[1], &[0, 0, 0, 0]);
        bytes[2] = 0x0d;
        let err = parse_labels(&bytes, p()).unwrap_err();
        assert!(matches!(err, DataError::UnsupportedDtype { .. }));
        let msg = err.to_string();
        assert!(
            msg.contains("0x0d (float)") && msg.contains("only 0x08"),
            "{msg}"
        );
    }

    #[test]
    fn wrong_ndim() {
        let err = parse_images(&encode(&[4], &[1, 2, 3, 4]), p()).unwrap_err();
        assert!(matches!(err, DataError::BadHeader { .. }));
        assert!(
            err.to_string()
                .contains("must have 3 dimension(s), found 1"),
            "{err}"
        );
    }

    #[test]
    fn truncated_and_trailing_data() {
        let err = parse_images(&encode(&[2, 2, 2], &[0; 7]), p()).unwrap_err();
        assert!(matches!(
            err,
            DataError::Truncated {
                expected: 8,
                found: 7,
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            "mnist/train-images-idx3-ubyte: idx data is truncated: expected 8 bytes, found 7"
        );
        let err = parse_labels(&encode(&[2], &[0; 3]), p()).unwrap_err();
        assert!(
            err.to_string()
                .contains("trailing bytes: expected 2 bytes, found 3")
        );
        let err = parse_images(&[0, 0, 8, 3, 0, 0], p()).unwrap_err();
        assert!(matches!(
            err,
            DataError::Truncated {
                expected: 16,
                found: 6,
                ..
            }
        ));
        let err = parse_images(&[0, 0], p()).unwrap_err();
        assert!(matches!(
            err,
            DataError::Truncated {
                expected: 4,
                found: 2,
                ..
            }
        ));
    }

    #[test]
    fn huge_header_dims_do_not_allocate() {
        let bytes = encode(&[u32::MAX, u32::MAX, u32::MAX], &[1, 2, 3]);
        let err = parse_images(&bytes, p()).unwrap_err();
        assert!(matches!(err, DataError::Truncated { found: 3, .. }));
    }

    #[test]
    fn mismatched_counts() {
        let dir = tempfile::tempdir().unwrap();
        let ip = dir.path().join("a-images-idx3-ubyte");
        let lp = dir.path().join("a-labels-idx1-ubyte");
        std::fs::write(&ip, encode(&[2, 1, 1], &[0, 1])).unwrap();
        std::fs::write(&lp, encode(&[3], &[0, 1, 2])).unwrap();
        let err = load_pair(&ip, &lp).unwrap_err();
        assert!(matches!(
            err,
            DataError::LengthMismatch {
                images: 2,
                labels: 3,
                ..
            }
        ));
        assert!(err.to_string().ends_with("2 samples but 3 labels"));
        std::fs::write(&ip, encode(&[0, 1, 1], &[])).unwrap();
        std::fs::write(&lp, encode(&[0], &[])).unwrap();
        assert!(matches!(
            load_pair(&ip, &lp).unwrap_err(),
            DataError::Empty { .. }
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_images(&bytes, p());
            let _ = parse_labels(&bytes, p());
        }

        #[test]
        fn mutated_valid_files_never_panic(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
            cut in any::<prop::sample::Index>(),
            gz in any::<bool>(),
        ) {
            let pixels: Vec<u8> = (0..2 * 3 * 3).collect();
            let mut bytes = encode(&[2, 3, 3], &pixels);
            if gz { bytes = gzip(&bytes); }
            for (i, b) in edits { let at = i.index(bytes.len()); bytes[at] = b; }
            bytes.truncate(cut.index(bytes.len() + 1));
            let _ = parse_images(&bytes, p());
            let _ = parse_labels(&bytes, p());
        }
    }
}
