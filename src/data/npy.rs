//! NumPy `.npy` support: reading numeric arrays as `f32` and writing `<f4` arrays.
//!
//! The reader takes what `np.save` writes for floats (`f4`, `f8`) and integers (`u1`, `i1`,
//! `i2`, `u2`, `i4`, `u4`, `i8`, `u8`) in either byte order (`<`, `>`; `|` for single bytes),
//! in C or Fortran order (`fortran_order: True`, transposed into C order). A `uint8` (`|u1`)
//! array is taken to hold pixels and is scaled to `[0, 1]` exactly as the IDX and CIFAR-10
//! loaders scale pixel bytes, `f32::from(byte) / 255.0` (torchvision's `ToTensor`), so an
//! image saved from NumPy gives the same features as the same image read from those files.
//! Other integers are converted unscaled (as `ToTensor` leaves them), `f8` rounded to `f32`.
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

/// An array read as `f32` (see the module docs for how each dtype converts), with its shape.
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

/// Parses `.npy` bytes holding a numeric array of a dtype the module docs list, in C or
/// Fortran order; the result is in C order.
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

    let dtype = Dtype::parse(&header.descr).ok_or_else(|| DataError::UnsupportedDtype {
        path: path.to_path_buf(),
        found: format!("{:?}", header.descr),
        supported: unsupported_hint(&header.descr),
    })?;
    let item_size = dtype.item_size();
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
    let values = dtype.decode(data);
    let data = if header.fortran_order {
        fortran_to_c(&values, &header.shape)
    } else {
        values
    };
    Ok(NpyArray {
        shape: header.shape,
        data,
    })
}

/// The element types the reader converts to `f32`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    F4,
    F8,
    /// Pixels: scaled to `[0, 1]`.
    U1,
    I1,
    I2,
    U2,
    I4,
    U4,
    I8,
    U8,
}

/// A `descr` this reader handles: an element type and its byte order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Dtype {
    kind: Kind,
    big_endian: bool,
}

impl Dtype {
    /// Parses a `descr` such as `<f4`, `>i8` or `|u1`. The byte order is `<` or `>` (`=`,
    /// native, is read too); single-byte types may also carry `|`, as NumPy writes them.
    fn parse(descr: &str) -> Option<Dtype> {
        let mut chars = descr.chars();
        let order = chars.next()?;
        let kind = match chars.as_str() {
            "f4" => Kind::F4,
            "f8" => Kind::F8,
            "u1" => Kind::U1,
            "i1" => Kind::I1,
            "i2" => Kind::I2,
            "u2" => Kind::U2,
            "i4" => Kind::I4,
            "u4" => Kind::U4,
            "i8" => Kind::I8,
            "u8" => Kind::U8,
            _ => return None,
        };
        let big_endian = match order {
            '<' => false,
            '>' => true,
            '=' => cfg!(target_endian = "big"),
            '|' if matches!(kind, Kind::U1 | Kind::I1) => false,
            _ => return None,
        };
        Some(Dtype { kind, big_endian })
    }

    fn item_size(self) -> usize {
        match self.kind {
            Kind::U1 | Kind::I1 => 1,
            Kind::I2 | Kind::U2 => 2,
            Kind::F4 | Kind::I4 | Kind::U4 => 4,
            Kind::F8 | Kind::I8 | Kind::U8 => 8,
        }
    }

    /// Every element of `data` (a whole number of items) as `f32`.
    fn decode(self, data: &[u8]) -> Vec<f32> {
        let be = self.big_endian;
        match self.kind {
            Kind::F4 => items(data, be, f32::from_le_bytes),
            Kind::F8 => items(data, be, |b| f64::from_le_bytes(b) as f32),
            // As idx.rs and cifar.rs scale pixel bytes.
            Kind::U1 => items(data, be, |[b]| f32::from(b) / 255.0),
            Kind::I1 => items(data, be, |b| f32::from(i8::from_le_bytes(b))),
            Kind::I2 => items(data, be, |b| f32::from(i16::from_le_bytes(b))),
            Kind::U2 => items(data, be, |b| f32::from(u16::from_le_bytes(b))),
            Kind::I4 => items(data, be, |b| i32::from_le_bytes(b) as f32),
            Kind::U4 => items(data, be, |b| u32::from_le_bytes(b) as f32),
            Kind::I8 => items(data, be, |b| i64::from_le_bytes(b) as f32),
            Kind::U8 => items(data, be, |b| u64::from_le_bytes(b) as f32),
        }
    }
}

/// Converts each `N`-byte item, handed to `value` in little-endian byte order.
fn items<const N: usize>(
    data: &[u8],
    big_endian: bool,
    value: impl Fn([u8; N]) -> f32,
) -> Vec<f32> {
    data.as_chunks::<N>()
        .0
        .iter()
        .map(|&item| {
            let mut item = item;
            if big_endian {
                item.reverse();
            }
            value(item)
        })
        .collect()
}

/// What to say about a `descr` the reader does not take.
fn unsupported_hint(descr: &str) -> String {
    let code = descr.trim_start_matches(['<', '>', '=', '|']);
    let advice = match code.chars().next() {
        Some('f') => "convert it with a.astype(np.float32)",
        Some('c') => "complex values have no f32 equivalent; save the real part",
        Some('b') => "convert booleans with a.astype(np.uint8) (then read as pixels) or np.float32",
        Some('U' | 'S' | 'O' | 'V') => "save a numeric array",
        _ => "save a float32 array",
    };
    format!(
        "supported: floats f4 and f8, integers u1 (pixels, scaled to [0, 1]), i1, i2, u2, i4, \
         u4, i8 and u8, little- or big-endian; {advice}"
    )
}

/// Reorders `values`, stored in Fortran (column-major) order with `shape`, into C order.
fn fortran_to_c(values: &[f32], shape: &[usize]) -> Vec<f32> {
    if shape.len() < 2 {
        return values.to_vec();
    }
    // Fortran strides: the first index varies fastest.
    let strides: Vec<usize> = shape
        .iter()
        .scan(1usize, |stride, &d| {
            let this = *stride;
            *stride = stride.saturating_mul(d);
            Some(this)
        })
        .collect();
    let mut index = vec![0usize; shape.len()];
    let mut offset = 0usize;
    let mut out = Vec::with_capacity(values.len());
    for _ in 0..values.len() {
        out.push(values[offset]);
        // Next C-order index: the last axis varies fastest.
        for axis in (0..shape.len()).rev() {
            index[axis] += 1;
            offset += strides[axis];
            if index[axis] < shape[axis] {
                break;
            }
            offset -= strides[axis] * shape[axis];
            index[axis] = 0;
        }
    }
    out
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
            "descr" if p.peek_is('[') => {
                return Err(
                    "structured dtypes (record arrays) are not supported; save a plain numeric array"
                        .to_string(),
                );
            }
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

    /// Whether `c` is next (after whitespace).
    fn peek_is(&mut self, c: char) -> bool {
        self.skip_ws();
        self.rest().starts_with(c)
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
    fn integers_and_big_endian_by_hand() {
        let header = |descr: &str| {
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': (2,), }}")
        };
        // uint8 pixels are divided by 255, as the IDX and CIFAR-10 loaders do.
        let a = parse(&raw(&header("|u1"), &[0, 255]), p()).unwrap();
        assert_eq!(a.data, vec![0.0, 1.0]);
        let a = parse(&raw(&header("|u1"), &[51, 20]), p()).unwrap();
        assert_eq!(a.data, vec![51.0 / 255.0, 20.0 / 255.0]);
        // Other integers are converted as they are.
        let a = parse(&raw(&header("|i1"), &[0xff, 7]), p()).unwrap();
        assert_eq!(a.data, vec![-1.0, 7.0]);
        let a = parse(&raw(&header(">i2"), &[0xff, 0xfe, 1, 0]), p()).unwrap();
        assert_eq!(a.data, vec![-2.0, 256.0]);
        let a = parse(&raw(&header("<u2"), &[0xff, 0xfe, 1, 0]), p()).unwrap();
        assert_eq!(a.data, vec![65279.0, 1.0]);
        let be: Vec<u8> = [1.5f32, -3.0]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect();
        assert_eq!(
            parse(&raw(&header(">f4"), &be), p()).unwrap().data,
            vec![1.5, -3.0]
        );
        let be: Vec<u8> = [-7i64, 1 << 40]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect();
        assert_eq!(
            parse(&raw(&header(">i8"), &be), p()).unwrap().data,
            vec![-7.0, (1u64 << 40) as f32]
        );
    }

    #[test]
    fn fortran_order_is_transposed_into_c_order() {
        // A 2×3 array [[0, 1, 2], [3, 4, 5]] stored column by column.
        let payload: Vec<u8> = [0.0f32, 3.0, 1.0, 4.0, 2.0, 5.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let bytes = raw(
            "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }",
            &payload,
        );
        let a = parse(&bytes, p()).unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.data, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        // 3-d: element (i, j, k) = 100i + 10j + k of a 2×3×4 array sits at i + 2j + 6k.
        let shape = [2, 3, 4];
        let mut fortran = vec![0.0f32; 24];
        for i in 0..2 {
            for j in 0..3 {
                for k in 0..4 {
                    fortran[i + 2 * j + 6 * k] = (100 * i + 10 * j + k) as f32;
                }
            }
        }
        let c: Vec<f32> = (0..24)
            .map(|n| (100 * (n / 12) + 10 * (n / 4 % 3) + n % 4) as f32)
            .collect();
        assert_eq!(fortran_to_c(&fortran, &shape), c);
        // 0-d, 1-d and empty arrays are the same in both orders.
        assert_eq!(fortran_to_c(&[1.0, 2.0], &[2]), vec![1.0, 2.0]);
        assert_eq!(fortran_to_c(&[], &[3, 0, 2]), Vec::<f32>::new());
        let bytes = raw(
            "{'descr': '<f4', 'fortran_order': True, 'shape': (), }",
            &4.0f32.to_le_bytes(),
        );
        assert_eq!(parse(&bytes, p()).unwrap().data, vec![4.0]);
    }

    #[test]
    fn other_dtypes_are_rejected() {
        for (descr, hint) in [
            ("<f2", "a.astype(np.float32)"),
            (">c8", "complex"),
            ("|b1", "booleans"),
            ("<U3", "numeric array"),
            ("|O", "numeric array"),
            ("|f4", "f4 and f8"),
            ("<M8[ns]", "float32"),
        ] {
            let header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': (1,), }}");
            let err = parse(&raw(&header, &[0; 8]), p()).unwrap_err();
            assert!(matches!(err, DataError::UnsupportedDtype { .. }), "{descr}");
            let text = err.to_string();
            assert!(
                text.starts_with(&format!("out/x.npy: unsupported dtype \"{descr}\"")),
                "{text}"
            );
            assert!(text.contains(hint), "{text}");
        }
        let header = "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }";
        let err = parse(&raw(header, &[0; 4]), p()).unwrap_err();
        assert!(err.to_string().contains("structured dtypes"), "{err}");
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
            let fortran = raw(
                "{'descr': '>i2', 'fortran_order': True, 'shape': (2, 3, 2), }",
                &[7; 24],
            );
            for base in [encode(&[2, 3], &[1.0; 6], p()).unwrap(), fortran] {
                let mut bytes = base;
                for &(i, b) in &edits { let at = i.index(bytes.len()); bytes[at] = b; }
                bytes.truncate(cut.index(bytes.len() + 1));
                let _ = parse(&bytes, p());
            }
        }

        #[test]
        fn fortran_order_matches_index_arithmetic(
            shape in proptest::collection::vec(0usize..5, 0..5),
        ) {
            // Element at C-order position n holds its own Fortran-order offset.
            let len: usize = shape.iter().product();
            let strides: Vec<usize> = (0..shape.len())
                .map(|a| shape[..a].iter().product())
                .collect();
            let expected: Vec<f32> = (0..len)
                .map(|mut n| {
                    let mut offset = 0;
                    for a in (0..shape.len()).rev() {
                        offset += (n % shape[a]) * strides[a];
                        n /= shape[a];
                    }
                    offset as f32
                })
                .collect();
            let fortran: Vec<f32> = (0..len).map(|v| v as f32).collect();
            prop_assert_eq!(fortran_to_c(&fortran, &shape), expected);
        }

        #[test]
        fn arbitrary_headers_never_panic(header in "[{}()'\": ,<>fFiTrueals0-9_\\-\n]{0,80}") {
            let _ = parse(&raw(&header, &[0; 8]), p());
        }
    }
}
