//! Minimal NumPy `.npy` support: reading little-endian `<f4`/`<f8` C-order
//! arrays (as `f32`) and writing `<f4` arrays.
//!
//! Format: the magic `\x93NUMPY`, a major and minor version byte, the header
//! length (`u16` LE for version 1, `u32` LE for versions 2 and 3), then a
//! Python dict literal such as
//! `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }` padded with
//! spaces and a newline so that the data starts at a multiple of 64 bytes.

use std::path::Path;

use super::dataset::checked_product;
use super::error::DataError;
use super::file::{hex_prefix, read_bytes};

/// The six bytes every `.npy` file starts with.
pub const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// An `f32` array with its shape (C order).
#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray {
    /// Dimensions; empty for a 0-d (scalar) array.
    pub shape: Vec<usize>,
    /// Elements in C (row-major) order.
    pub data: Vec<f32>,
}

/// Reads a `.npy` file.
pub fn load(path: &Path) -> Result<NpyArray, DataError> {
    parse(&read_bytes(path)?, path)
}

/// Writes `data` with `shape` as a version 1.0 `<f4` `.npy` file.
pub fn save(path: &Path, shape: &[usize], data: &[f32]) -> Result<(), DataError> {
    let bytes = encode(shape, data, path)?;
    std::fs::write(path, bytes).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Encodes `data` with `shape` as `<f4` `.npy` bytes (version 1.0, or 2.0
/// if the header would not fit in 64 KiB). `path` is only used in errors.
pub fn encode(shape: &[usize], data: &[f32], path: &Path) -> Result<Vec<u8>, DataError> {
    if checked_product(shape) != Some(data.len()) {
        return Err(npy_error(
            path,
            format!("shape {shape:?} does not hold {} values", data.len()),
        ));
    }
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let shape_text = match dims.as_slice() {
        [one] => format!("({one},)"),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}");
    // Version 1 stores the header length in 2 bytes, version 2 in 4.
    let (version, len_bytes) = if header.len() + 1 + 10 <= usize::from(u16::MAX) {
        (1u8, 2)
    } else {
        (2u8, 4)
    };
    let prefix = MAGIC.len() + 2 + len_bytes;
    let total = (prefix + header.len() + 1).next_multiple_of(64);
    let pad = total - prefix - header.len() - 1;
    header.extend(std::iter::repeat_n(' ', pad));
    header.push('\n');

    let mut out = Vec::with_capacity(total + data.len() * 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[version, 0]);
    let too_long = || npy_error(path, "header too long".to_string());
    if version == 1 {
        let len = u16::try_from(header.len()).map_err(|_| too_long())?;
        out.extend_from_slice(&len.to_le_bytes());
    } else {
        let len = u32::try_from(header.len()).map_err(|_| too_long())?;
        out.extend_from_slice(&len.to_le_bytes());
    }
    out.extend_from_slice(header.as_bytes());
    out.extend(data.iter().flat_map(|v| v.to_le_bytes()));
    Ok(out)
}

/// Parses `.npy` bytes holding a little-endian `<f4` or `<f8` C-order array;
/// `<f8` values are rounded to `f32`.
pub fn parse(bytes: &[u8], path: &Path) -> Result<NpyArray, DataError> {
    if !bytes.starts_with(MAGIC) {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            format: "npy",
            expected: hex_prefix(MAGIC, 6),
            found: hex_prefix(bytes, 6),
        });
    }
    let truncated = |expected: usize| DataError::Truncated {
        path: path.to_path_buf(),
        what: "npy header",
        expected: expected as u64,
        found: bytes.len() as u64,
    };
    let (major, minor) = match bytes.get(6..8) {
        Some(&[major, minor]) => (major, minor),
        _ => return Err(truncated(8)),
    };
    let (header_len, header_start): (usize, usize) = match major {
        1 => match bytes.get(8..10) {
            Some(&[a, b]) => (usize::from(u16::from_le_bytes([a, b])), 10),
            _ => return Err(truncated(10)),
        },
        2 | 3 => match bytes.get(8..12) {
            Some(&[a, b, c, d]) => (u32::from_le_bytes([a, b, c, d]) as usize, 12),
            _ => return Err(truncated(12)),
        },
        _ => {
            return Err(npy_error(
                path,
                format!("unsupported format version {major}.{minor} (1.0, 2.0 and 3.0 are)"),
            ));
        }
    };
    let header_end = header_start.saturating_add(header_len);
    let Some(header) = bytes.get(header_start..header_end) else {
        return Err(truncated(header_end));
    };
    let header = std::str::from_utf8(header)
        .map_err(|_| npy_error(path, "header is not valid text".to_string()))?;
    let header = parse_header(header).map_err(|m| npy_error(path, m))?;

    if header.fortran_order {
        return Err(npy_error(
            path,
            "fortran_order=True is not supported; save a C-order array (np.ascontiguousarray)"
                .to_string(),
        ));
    }
    let item_size = match header.descr.as_str() {
        "<f4" => 4,
        "<f8" => 8,
        other => {
            return Err(DataError::UnsupportedDtype {
                path: path.to_path_buf(),
                found: format!("{other:?}"),
                supported: "only little-endian float arrays ('<f4' or '<f8') are supported"
                    .to_string(),
            });
        }
    };
    let data = bytes.get(header_end..).unwrap_or_default();
    // Compare sizes in u128 before allocating, so a lying shape cannot
    // request a huge buffer or overflow.
    let expected = header
        .shape
        .iter()
        .try_fold(item_size as u128, |acc, &d| acc.checked_mul(d as u128));
    if expected != Some(data.len() as u128) {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            what: match expected {
                Some(e) if e > data.len() as u128 => "npy data is truncated",
                None => "npy shape is too large",
                _ => "npy data has trailing bytes",
            },
            expected: expected.map_or(u64::MAX, |e| u64::try_from(e).unwrap_or(u64::MAX)),
            found: data.len() as u64,
        });
    }
    let values = if item_size == 4 {
        data.as_chunks::<4>()
            .0
            .iter()
            .map(|&b| f32::from_le_bytes(b))
            .collect()
    } else {
        data.as_chunks::<8>()
            .0
            .iter()
            .map(|&b| f64::from_le_bytes(b) as f32)
            .collect()
    };
    Ok(NpyArray {
        shape: header.shape,
        data: values,
    })
}

/// The three header entries this reader understands.
#[derive(Debug, PartialEq)]
struct Header {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// Parses the header dict; the error is a message without the path.
fn parse_header(text: &str) -> Result<Header, String> {
    let mut p = Cursor { text, pos: 0 };
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    p.expect('{')?;
    loop {
        p.skip_ws();
        if p.eat('}') {
            break;
        }
        let key = p.string()?;
        p.expect(':')?;
        match key.as_str() {
            "descr" => descr = Some(p.string()?),
            "fortran_order" => fortran = Some(p.boolean()?),
            "shape" => shape = Some(p.tuple()?),
            other => return Err(format!("unexpected header key {other:?}")),
        }
        p.skip_ws();
        if !p.eat(',') {
            p.expect('}')?;
            break;
        }
    }
    let missing = |k: &str| format!("header has no {k:?} entry");
    Ok(Header {
        descr: descr.ok_or_else(|| missing("descr"))?,
        fortran_order: fortran.ok_or_else(|| missing("fortran_order"))?,
        shape: shape.ok_or_else(|| missing("shape"))?,
    })
}

/// A tiny scanner over the header text (a Python literal).
struct Cursor<'a> {
    text: &'a str,
    pos: usize,
}

impl Cursor<'_> {
    fn rest(&self) -> &str {
        self.text.get(self.pos..).unwrap_or_default()
    }

    fn skip_ws(&mut self) {
        let rest = self.rest();
        self.pos += rest.len() - rest.trim_start().len();
    }

    /// Consumes `c` (after whitespace) if it is next.
    fn eat(&mut self, c: char) -> bool {
        self.skip_ws();
        if self.rest().starts_with(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(self.unexpected(&format!("{c:?}")))
        }
    }

    fn unexpected(&self, wanted: &str) -> String {
        let found: String = self.rest().chars().take(12).collect();
        format!(
            "header: expected {wanted} at offset {}, found {found:?}",
            self.pos
        )
    }

    /// A single- or double-quoted string without escapes.
    fn string(&mut self) -> Result<String, String> {
        self.skip_ws();
        let rest = self.rest();
        let Some(quote) = rest.chars().next().filter(|c| *c == '\'' || *c == '"') else {
            return Err(self.unexpected("a quoted string"));
        };
        let body = rest.get(1..).unwrap_or_default();
        let Some(end) = body.find(quote) else {
            return Err(self.unexpected("a closing quote"));
        };
        let value = body.get(..end).unwrap_or_default().to_string();
        self.pos += end + 2;
        Ok(value)
    }

    fn boolean(&mut self) -> Result<bool, String> {
        self.skip_ws();
        for (word, value) in [("True", true), ("False", false)] {
            if self.rest().starts_with(word) {
                self.pos += word.len();
                return Ok(value);
            }
        }
        Err(self.unexpected("True or False"))
    }

    /// A tuple of non-negative integers: `()`, `(3,)`, `(2, 3)`, `(2, 3,)`.
    fn tuple(&mut self) -> Result<Vec<usize>, String> {
        self.expect('(')?;
        let mut dims = Vec::new();
        loop {
            if self.eat(')') {
                return Ok(dims);
            }
            dims.push(self.integer()?);
            if !self.eat(',') {
                self.expect(')')?;
                return Ok(dims);
            }
        }
    }

    fn integer(&mut self) -> Result<usize, String> {
        self.skip_ws();
        let rest = self.rest();
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        // Python 2 era writers emit `3L`; digits alone are enough here.
        let value = rest
            .get(..digits)
            .and_then(|d| d.parse::<usize>().ok())
            .ok_or_else(|| self.unexpected("a dimension (non-negative integer)"))?;
        self.pos += digits;
        if self.rest().starts_with('L') {
            self.pos += 1;
        }
        Ok(value)
    }
}

fn npy_error(path: &Path, message: String) -> DataError {
    DataError::Npy {
        path: path.to_path_buf(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p() -> &'static Path {
        Path::new("out/x.npy")
    }

    /// Builds a v1.0 file with a custom header and payload.
    fn raw(header: &str, payload: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn write_then_read_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pred.npy");
        let data = [1.5f32, -2.0, 0.25, 7.0, 8.0, 9.0];
        save(&path, &[2, 3], &data).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        // Data starts on a 64-byte boundary as numpy requires.
        assert_eq!((bytes.len() - 24) % 64, 0);
        assert!(
            std::str::from_utf8(&bytes[10..bytes.len() - 24])
                .unwrap()
                .starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }")
        );
        let back = load(&path).unwrap();
        assert_eq!(back.shape, vec![2, 3]);
        assert_eq!(back.data, data);
    }

    #[test]
    fn one_and_zero_dimensional_shapes() {
        let bytes = encode(&[3], &[1.0, 2.0, 3.0], p()).unwrap();
        let back = parse(&bytes, p()).unwrap();
        assert_eq!(back.shape, vec![3]);
        let scalar = parse(&encode(&[], &[4.0], p()).unwrap(), p()).unwrap();
        assert_eq!((scalar.shape, scalar.data), (vec![], vec![4.0]));
        let empty = parse(&encode(&[0, 5], &[], p()).unwrap(), p()).unwrap();
        assert_eq!(empty.shape, vec![0, 5]);
        let err = encode(&[2, 2], &[1.0], p()).unwrap_err();
        assert!(
            err.to_string()
                .contains("shape [2, 2] does not hold 1 values")
        );
    }

    #[test]
    fn reads_f8_and_numpy_style_headers() {
        let payload: Vec<u8> = [0.5f64, -1.25]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let bytes = raw(
            "{\"descr\":\"<f8\",\"fortran_order\":False,\"shape\":(2,)}\n",
            &payload,
        );
        let a = parse(&bytes, p()).unwrap();
        assert_eq!((a.shape, a.data), (vec![2], vec![0.5, -1.25]));
        let bytes = raw(
            "{'shape': (1L, 1L), 'fortran_order': False, 'descr': '<f4'}   \n",
            &[0, 0, 128, 63],
        );
        assert_eq!(parse(&bytes, p()).unwrap().data, vec![1.0]);
    }

    #[test]
    fn version_2_header() {
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }\n";
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&[2, 0]);
        bytes.extend_from_slice(&(header.len() as u32).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&2.0f32.to_le_bytes());
        assert_eq!(parse(&bytes, p()).unwrap().data, vec![2.0]);
    }

    #[test]
    fn fortran_order_is_rejected() {
        let bytes = raw(
            "{'descr': '<f4', 'fortran_order': True, 'shape': (1,), }",
            &[0; 4],
        );
        let err = parse(&bytes, p()).unwrap_err();
        assert!(matches!(err, DataError::Npy { .. }));
        assert!(
            err.to_string()
                .starts_with("out/x.npy: npy: fortran_order=True is not supported")
        );
    }

    #[test]
    fn other_dtypes_are_rejected() {
        for descr in ["<i8", ">f4", "|u1", "<f2"] {
            let header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': (1,), }}");
            let err = parse(&raw(&header, &[0; 8]), p()).unwrap_err();
            assert!(matches!(err, DataError::UnsupportedDtype { .. }), "{descr}");
            assert!(err.to_string().contains(descr), "{err}");
        }
    }

    #[test]
    fn bad_magic() {
        let err = parse(b"PK\x03\x04zip", p()).unwrap_err();
        assert!(matches!(err, DataError::BadMagic { .. }));
        assert_eq!(
            err.to_string(),
            "out/x.npy: bad magic bytes for npy: expected 93 4e 55 4d 50 59, found 50 4b 03 04 7a 69"
        );
    }

    #[test]
    fn truncated_data_and_header() {
        let mut bytes = encode(&[2, 2], &[1.0; 4], p()).unwrap();
        bytes.pop();
        let err = parse(&bytes, p()).unwrap_err();
        assert!(matches!(
            err,
            DataError::Truncated {
                expected: 16,
                found: 15,
                ..
            }
        ));
        assert!(
            err.to_string()
                .contains("npy data is truncated: expected 16 bytes, found 15")
        );
        let err = parse(&bytes[..20], p()).unwrap_err();
        assert!(matches!(
            err,
            DataError::Truncated {
                what: "npy header",
                ..
            }
        ));
        let huge = raw(
            &format!(
                "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}",
                usize::MAX,
                usize::MAX
            ),
            &[],
        );
        assert!(matches!(
            parse(&huge, p()).unwrap_err(),
            DataError::Truncated { .. }
        ));
    }

    #[test]
    fn malformed_headers() {
        for (header, needle) in [
            (
                "{'descr': '<f4', 'shape': (1,)}",
                "no \"fortran_order\" entry",
            ),
            (
                "{'descr': '<f4', 'fortran_order': Maybe, 'shape': (1,)}",
                "expected True or False",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}",
                "expected a dimension",
            ),
            ("{'descr: '<f4'}", "expected ':'"),
            ("{'x': 1}", "unexpected header key \"x\""),
        ] {
            let err = parse(&raw(header, &[]), p()).unwrap_err();
            assert!(matches!(err, DataError::Npy { .. }), "{header}");
            assert!(err.to_string().contains(needle), "{err}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = parse(&bytes, p());
            let mut with_magic = MAGIC.to_vec();
            with_magic.extend_from_slice(&bytes);
            let _ = parse(&with_magic, p());
        }

        #[test]
        fn mutated_valid_files_never_panic(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = encode(&[2, 3], &[1.0; 6], p()).unwrap();
            for (i, b) in edits { let at = i.index(bytes.len()); bytes[at] = b; }
            bytes.truncate(cut.index(bytes.len() + 1));
            let _ = parse(&bytes, p());
        }

        #[test]
        fn arbitrary_headers_never_panic(header in "[{}()'\": ,<>fFiTrueals0-9_\\-\n]{0,80}") {
            let _ = parse(&raw(&header, &[0; 8]), p());
        }
    }
}
