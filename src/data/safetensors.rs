//! Datasets stored as safetensors: `x` (F32, shape `[N, ...]`) and `y`
//! (any integer dtype, shape `[N]`).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::{Dtype, SafeTensors};

use super::dataset::Dataset;
use super::error::DataError;
use super::file::read_bytes;

/// Name of the features tensor.
pub const FEATURES_KEY: &str = "x";
/// Name of the labels tensor.
pub const LABELS_KEY: &str = "y";

/// Reads a safetensors dataset file.
pub fn load(path: &Path) -> Result<Dataset, DataError> {
    parse(&read_bytes(path)?, path)
}

/// Parses safetensors bytes holding `x` and `y`. Other tensors are ignored.
/// A 1-D `x` of shape `[N]` gives samples of shape `[1]`.
pub fn parse(bytes: &[u8], path: &Path) -> Result<Dataset, DataError> {
    let (header_len, metadata) = read_metadata(bytes, path)?;
    // read_metadata checked that the header fits in the buffer.
    let body = 8usize
        .checked_add(header_len)
        .and_then(|start| bytes.get(start..))
        .ok_or_else(|| fail(path, "header length points past the end of the file".into()))?;

    let (x_info, x_data) = tensor(&metadata, body, FEATURES_KEY, path)?;
    let (y_info, y_data) = tensor(&metadata, body, LABELS_KEY, path)?;

    if x_info.dtype != Dtype::F32 {
        return Err(DataError::UnsupportedDtype {
            path: path.to_path_buf(),
            found: format!("{} for tensor \"x\"", x_info.dtype),
            supported: "x must be F32".to_string(),
        });
    }
    let Some((&n, rest)) = x_info.shape.split_first() else {
        return Err(fail(
            path,
            "x must have shape [N, ...], found a scalar".into(),
        ));
    };
    let sample_shape = if rest.is_empty() {
        vec![1]
    } else {
        rest.to_vec()
    };

    if y_info.shape.len() != 1 {
        return Err(fail(
            path,
            format!("y must have shape [N], found {:?}", y_info.shape),
        ));
    }
    let labels = decode_labels(y_info.dtype, y_data, path)?;
    if labels.len() != n {
        return Err(DataError::LengthMismatch {
            what: path.display().to_string(),
            images: n as u64,
            labels: labels.len() as u64,
        });
    }
    if n == 0 {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    let features: Vec<f32> = x_data
        .as_chunks::<4>()
        .0
        .iter()
        .map(|&b| f32::from_le_bytes(b))
        .collect();
    Dataset::new(features, sample_shape, labels, path.display().to_string())
}

/// Unlabelled samples (`wgnn predict`'s input): the tensor `x`, F32 or F64 (narrowed to f32),
/// shaped `[N, ...]`, as its values and its shape. Other tensors are ignored; every other
/// dtype is refused, naming the two that are read.
pub fn load_samples(path: &Path) -> Result<(Vec<f32>, Vec<usize>), DataError> {
    let bytes = read_bytes(path)?;
    let (header_len, metadata) = read_metadata(&bytes, path)?;
    let body = 8usize
        .checked_add(header_len)
        .and_then(|start| bytes.get(start..))
        .ok_or_else(|| fail(path, "header length points past the end of the file".into()))?;
    let (info, data) = tensor(&metadata, body, FEATURES_KEY, path)?;
    let values = match info.dtype {
        Dtype::F32 => data
            .as_chunks::<4>()
            .0
            .iter()
            .map(|&b| f32::from_le_bytes(b))
            .collect(),
        Dtype::F64 => data
            .as_chunks::<8>()
            .0
            .iter()
            .map(|&b| f64::from_le_bytes(b) as f32)
            .collect(),
        other => {
            return Err(DataError::UnsupportedDtype {
                path: path.to_path_buf(),
                found: format!("{other} for tensor \"x\""),
                supported: "samples in x must be F32 or F64 (a .npy file may hold integers)"
                    .to_string(),
            });
        }
    };
    Ok((values, info.shape.clone()))
}

/// Serializes a dataset as `x` (F32 `[N, sample_shape...]`) and `y`
/// (I64 `[N]`), the layout [`parse`] reads.
pub fn encode(dataset: &Dataset) -> Result<Vec<u8>, DataError> {
    dataset.check_consistent()?;
    let path = Path::new(&dataset.source);
    let x_bytes: Vec<u8> = dataset
        .features
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let y_bytes: Vec<u8> = dataset
        .labels
        .iter()
        .flat_map(|&v| i64::from(v).to_le_bytes())
        .collect();
    let mut x_shape = vec![dataset.len()];
    x_shape.extend_from_slice(&dataset.sample_shape);
    let view = |dtype, shape, data| {
        safetensors::tensor::TensorView::new(dtype, shape, data)
            .map_err(|e| fail(path, e.to_string()))
    };
    let tensors = [
        (FEATURES_KEY, view(Dtype::F32, x_shape, &x_bytes)?),
        (LABELS_KEY, view(Dtype::I64, vec![dataset.len()], &y_bytes)?),
    ];
    safetensors::serialize(tensors, None).map_err(|e| fail(path, e.to_string()))
}

/// Parses the header. The safetensors crate (0.8) adds the tensors' end offset to the header
/// length unchecked, which overflows (and panics in debug builds) on crafted offsets: offsets
/// past the end of the file are refused first, and a panic left over is still caught.
pub(crate) fn read_metadata(bytes: &[u8], path: &Path) -> Result<(usize, Metadata), DataError> {
    if let Some(end) = largest_data_offset(bytes)
        && end > bytes.len() as u64
    {
        return Err(fail(
            path,
            format!(
                "tensor data offsets reach byte {end} of a {}-byte file",
                bytes.len()
            ),
        ));
    }
    match catch_unwind(AssertUnwindSafe(|| SafeTensors::read_metadata(bytes))) {
        Ok(Ok(parsed)) => Ok(parsed),
        Ok(Err(e)) => Err(fail(path, e.to_string())),
        Err(_) => Err(fail(path, "tensor offsets in the header overflow".into())),
    }
}

/// The largest `data_offsets` value in the header, when the header reads as JSON (otherwise
/// the crate reports what is wrong with it).
fn largest_data_offset(bytes: &[u8]) -> Option<u64> {
    let len = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let header = bytes.get(8..8usize.checked_add(usize::try_from(len).ok()?)?)?;
    let value: serde_json::Value = serde_json::from_slice(header).ok()?;
    value
        .as_object()?
        .values()
        .filter_map(|tensor| tensor.get("data_offsets")?.as_array())
        .flatten()
        .filter_map(serde_json::Value::as_u64)
        .max()
}

/// Looks up a tensor and its bytes, slicing with checked bounds rather than
/// trusting the header.
pub(crate) fn tensor<'a>(
    metadata: &'a Metadata,
    body: &'a [u8],
    key: &str,
    path: &Path,
) -> Result<(&'a TensorInfo, &'a [u8]), DataError> {
    let Some(info) = metadata.info(key) else {
        let mut present: Vec<String> = metadata.tensors().into_keys().collect();
        present.sort();
        return Err(DataError::MissingTensor {
            path: path.to_path_buf(),
            key: key.to_string(),
            present,
        });
    };
    let (start, end) = info.data_offsets;
    let data = body.get(start..end).ok_or_else(|| {
        fail(
            path,
            format!(
                "tensor {key:?} offsets {start}..{end} exceed the {}-byte data section",
                body.len()
            ),
        )
    })?;
    Ok((info, data))
}

/// Decodes little-endian integer labels, rejecting negatives and values
/// beyond `u32`.
fn decode_labels(dtype: Dtype, data: &[u8], path: &Path) -> Result<Vec<u32>, DataError> {
    let wide: Vec<i128> = match dtype {
        Dtype::U8 => data.iter().map(|&b| i128::from(b)).collect(),
        Dtype::I8 => data.iter().map(|&b| i128::from(b as i8)).collect(),
        Dtype::U16 => widen(data, u16::from_le_bytes),
        Dtype::I16 => widen(data, i16::from_le_bytes),
        Dtype::U32 => widen(data, u32::from_le_bytes),
        Dtype::I32 => widen(data, i32::from_le_bytes),
        Dtype::U64 => widen(data, u64::from_le_bytes),
        Dtype::I64 => widen(data, i64::from_le_bytes),
        other => {
            return Err(DataError::UnsupportedDtype {
                path: path.to_path_buf(),
                found: format!("{other} for tensor \"y\""),
                supported: "y must be an integer type (I64, I32, I16, I8, U64, U32, U16 or U8)"
                    .to_string(),
            });
        }
    };
    wide.into_iter()
        .enumerate()
        .map(|(index, v)| {
            let reason = if v < 0 {
                "labels must be non-negative"
            } else {
                match u32::try_from(v) {
                    Ok(label) => return Ok(label),
                    Err(_) => "label is too large",
                }
            };
            Err(DataError::BadLabel {
                path: path.to_path_buf(),
                location: format!("sample {index}"),
                value: v.to_string(),
                reason: reason.to_string(),
            })
        })
        .collect()
}

/// Decodes `N`-byte little-endian integers (the safetensors crate has
/// already checked that `data` is a whole number of elements).
fn widen<const N: usize, T: Into<i128>>(data: &[u8], decode: fn([u8; N]) -> T) -> Vec<i128> {
    data.as_chunks::<N>()
        .0
        .iter()
        .map(|&b| decode(b).into())
        .collect()
}

fn fail(path: &Path, message: String) -> DataError {
    DataError::Safetensors {
        path: path.to_path_buf(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use safetensors::tensor::TensorView;

    fn p() -> &'static Path {
        Path::new("d/set.safetensors")
    }

    /// Serializes named tensors given as (name, dtype, shape, bytes).
    fn write(tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
        let views: Vec<(&str, TensorView)> = tensors
            .iter()
            .map(|(n, d, s, b)| (*n, TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        safetensors::serialize(views, None).unwrap()
    }

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn x(n: usize) -> (&'static str, Dtype, Vec<usize>, Vec<u8>) {
        let vals: Vec<f32> = (0..n * 6).map(|i| i as f32 * 0.5).collect();
        ("x", Dtype::F32, vec![n, 2, 3], f32s(&vals))
    }

    #[test]
    fn samples_to_predict_are_f32_or_f64_and_nothing_else_is_offered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        let f64s: Vec<u8> = [0.5f64, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        std::fs::write(&path, write(&[("x", Dtype::F64, vec![1, 2], f64s)])).unwrap();
        assert_eq!(load_samples(&path).unwrap(), (vec![0.5, -2.0], vec![1, 2]));
        for (dtype, width) in [
            (Dtype::F16, 2),
            (Dtype::I32, 4),
            (Dtype::I64, 8),
            (Dtype::U8, 1),
        ] {
            let bytes = write(&[("x", dtype, vec![1, 2], vec![0; 2 * width])]);
            std::fs::write(&path, bytes).unwrap();
            let err = load_samples(&path).unwrap_err().to_string();
            assert!(err.contains(&format!("{dtype} for tensor \"x\"")), "{err}");
            assert!(err.contains("must be F32 or F64"), "{err}");
        }
    }

    #[test]
    fn round_trip_every_integer_label_dtype() {
        let cases: Vec<(Dtype, Vec<u8>)> = vec![
            (Dtype::U8, vec![1, 0]),
            (Dtype::I8, vec![1, 0]),
            (
                Dtype::U16,
                [1u16, 0].iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
            (
                Dtype::I16,
                [1i16, 0].iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
            (
                Dtype::U32,
                [1u32, 0].iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
            (
                Dtype::I32,
                [1i32, 0].iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
            (
                Dtype::U64,
                [1u64, 0].iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
            (
                Dtype::I64,
                [1i64, 0].iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
        ];
        for (dtype, y) in cases {
            let bytes = write(&[x(2), ("y", dtype, vec![2], y)]);
            let d = parse(&bytes, p()).unwrap();
            assert_eq!(d.labels, vec![1, 0], "{dtype}");
            assert_eq!(d.sample_shape, vec![2, 3]);
            assert_eq!(d.features[7], 3.5);
        }
    }

    #[test]
    fn encode_then_load_from_file() {
        let d = Dataset::new(vec![1.0, -2.0, 3.5, 4.0], vec![2], vec![4, 1], "mem").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.safetensors");
        std::fs::write(&path, encode(&d).unwrap()).unwrap();
        let back = load(&path).unwrap();
        assert_eq!(back.features, d.features);
        assert_eq!(back.labels, d.labels);
        assert_eq!(back.sample_shape, d.sample_shape);
    }

    #[test]
    fn one_dimensional_x_gives_scalar_samples() {
        let bytes = write(&[
            ("x", Dtype::F32, vec![2], f32s(&[1.0, 2.0])),
            ("y", Dtype::U8, vec![2], vec![0, 1]),
        ]);
        assert_eq!(parse(&bytes, p()).unwrap().sample_shape, vec![1]);
    }

    #[test]
    fn missing_key_lists_present_keys() {
        let bytes = write(&[x(1), ("labels", Dtype::U8, vec![1], vec![0])]);
        let err = parse(&bytes, p()).unwrap_err();
        assert!(matches!(err, DataError::MissingTensor { .. }));
        assert_eq!(
            err.to_string(),
            "d/set.safetensors: missing tensor \"y\"; tensors present: [labels, x]"
        );
    }

    #[test]
    fn wrong_dtypes() {
        let bytes = write(&[
            ("x", Dtype::F64, vec![1, 1], vec![0; 8]),
            ("y", Dtype::U8, vec![1], vec![0]),
        ]);
        let err = parse(&bytes, p()).unwrap_err();
        assert!(matches!(err, DataError::UnsupportedDtype { .. }));
        assert!(
            err.to_string()
                .contains("F64 for tensor \"x\"; x must be F32"),
            "{err}"
        );
        let bytes = write(&[x(1), ("y", Dtype::F32, vec![1], f32s(&[0.0]))]);
        let err = parse(&bytes, p()).unwrap_err();
        assert!(
            err.to_string()
                .contains("F32 for tensor \"y\"; y must be an integer type")
        );
    }

    #[test]
    fn count_mismatch() {
        let bytes = write(&[x(2), ("y", Dtype::U8, vec![3], vec![0, 1, 2])]);
        let err = parse(&bytes, p()).unwrap_err();
        assert!(matches!(
            err,
            DataError::LengthMismatch {
                images: 2,
                labels: 3,
                ..
            }
        ));
        assert_eq!(err.to_string(), "d/set.safetensors: 2 samples but 3 labels");
        let bytes = write(&[x(2), ("y", Dtype::U8, vec![2, 1], vec![0, 1])]);
        assert!(
            parse(&bytes, p())
                .unwrap_err()
                .to_string()
                .contains("y must have shape [N]")
        );
    }

    #[test]
    fn negative_and_huge_labels() {
        let y: Vec<u8> = [0i64, -3].iter().flat_map(|v| v.to_le_bytes()).collect();
        let err = parse(&write(&[x(2), ("y", Dtype::I64, vec![2], y)]), p()).unwrap_err();
        assert!(matches!(err, DataError::BadLabel { .. }));
        assert_eq!(
            err.to_string(),
            "d/set.safetensors sample 1: bad label \"-3\": labels must be non-negative"
        );
        let y: Vec<u8> = [1u64 << 40].iter().flat_map(|v| v.to_le_bytes()).collect();
        let err = parse(&write(&[x(1), ("y", Dtype::U64, vec![1], y)]), p()).unwrap_err();
        assert!(err.to_string().contains("too large"));
    }

    #[test]
    fn empty_dataset() {
        let bytes = write(&[
            ("x", Dtype::F32, vec![0, 3], vec![]),
            ("y", Dtype::U8, vec![0], vec![]),
        ]);
        assert!(matches!(
            parse(&bytes, p()).unwrap_err(),
            DataError::Empty { .. }
        ));
    }

    #[test]
    fn unparsable_header() {
        let err = parse(b"\x05\0\0\0\0\0\0\0{oops", p()).unwrap_err();
        assert!(matches!(err, DataError::Safetensors { .. }));
        assert!(
            err.to_string()
                .starts_with("d/set.safetensors: safetensors: invalid JSON")
        );
        let err = parse(b"abc", p()).unwrap_err();
        assert!(err.to_string().contains("header too small"));
    }

    #[test]
    fn overflowing_offsets_are_an_error_not_a_panic() {
        // Eight U8 tensors each claiming usize::MAX / 8 bytes: their end
        // offset plus the header length overflows inside the crate.
        let size = usize::MAX / 8;
        let entries: Vec<String> = (0..8)
            .map(|i| {
                format!(
                    "\"t{i}\":{{\"dtype\":\"U8\",\"shape\":[{size}],\"data_offsets\":[{},{}]}}",
                    i * size,
                    (i + 1) * size
                )
            })
            .collect();
        let header = format!("{{{}}}", entries.join(","));
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        let err = parse(&bytes, p()).unwrap_err();
        assert!(matches!(err, DataError::Safetensors { .. }));
        assert!(err.to_string().contains("offsets reach byte"), "{err}");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = parse(&bytes, p());
        }

        #[test]
        fn mutated_valid_files_never_panic(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = write(&[x(2), ("y", Dtype::I32, vec![2], vec![1, 0, 0, 0, 2, 0, 0, 0])]);
            for (i, b) in edits { let at = i.index(bytes.len()); bytes[at] = b; }
            bytes.truncate(cut.index(bytes.len() + 1));
            let _ = parse(&bytes, p());
        }

        #[test]
        fn mutated_header_digits_never_panic(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..10), 1..4),
        ) {
            // Replace digits inside the JSON header with other digits so
            // shapes and offsets change while the header stays valid JSON.
            let mut bytes = write(&[x(2), ("y", Dtype::U8, vec![2], vec![1, 0])]);
            let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
            let digits: Vec<usize> = (8..header_end).filter(|&i| bytes[i].is_ascii_digit()).collect();
            for (i, d) in edits { let at = digits[i.index(digits.len())]; bytes[at] = b'0' + d; }
            let _ = parse(&bytes, p());
        }
    }
}
