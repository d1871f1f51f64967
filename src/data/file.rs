//! Reading whole files, with transparent gzip decompression.

use std::borrow::Cow;
use std::io::Read;
use std::path::Path;

use flate2::read::MultiGzDecoder;

use super::error::DataError;

/// The two bytes every gzip stream starts with.
pub const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Reads a whole file into memory.
pub fn read_bytes(path: &Path) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Whether `bytes` start with the gzip magic.
pub fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&GZIP_MAGIC)
}

/// Returns `bytes` decompressed if they are gzip (judged by the magic bytes,
/// not the file name), else `bytes` unchanged.
pub fn gunzip_if_needed<'a>(bytes: &'a [u8], path: &Path) -> Result<Cow<'a, [u8]>, DataError> {
    if !is_gzip(bytes) {
        return Ok(Cow::Borrowed(bytes));
    }
    let mut out = Vec::new();
    // MultiGzDecoder: `cat a.gz b.gz` is a valid gzip file and gzip(1) reads all members.
    MultiGzDecoder::new(bytes)
        .read_to_end(&mut out)
        .map_err(|source| DataError::Gzip {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(Cow::Owned(out))
}

/// Formats up to `n` leading bytes as hex, for error messages.
pub fn hex_prefix(bytes: &[u8], n: usize) -> String {
    let shown: Vec<String> = bytes.iter().take(n).map(|b| format!("{b:02x}")).collect();
    if shown.is_empty() {
        "nothing (empty file)".to_string()
    } else {
        shown.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use std::io::Write;

    #[test]
    fn plain_bytes_pass_through() {
        let out = gunzip_if_needed(b"abc", Path::new("x")).unwrap();
        assert!(matches!(out, Cow::Borrowed(b"abc")));
    }

    #[test]
    fn gzip_is_detected_by_magic() {
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(b"hello").unwrap();
        let gz = enc.finish().unwrap();
        let out = gunzip_if_needed(&gz, Path::new("no-extension")).unwrap();
        assert_eq!(&*out, b"hello");
    }

    #[test]
    fn corrupt_gzip_names_the_path() {
        let err = gunzip_if_needed(&[0x1f, 0x8b, 0, 0], Path::new("d/x.gz")).unwrap_err();
        assert!(matches!(err, DataError::Gzip { .. }));
        assert!(err.to_string().starts_with("d/x.gz: gzip data is corrupt"));
    }

    #[test]
    fn missing_file_is_io_error_with_path() {
        let err = read_bytes(Path::new("/nonexistent/wgnn/file")).unwrap_err();
        assert!(matches!(err, DataError::Io { .. }));
        assert!(err.to_string().starts_with("/nonexistent/wgnn/file: "));
    }

    #[test]
    fn hex_prefix_formats() {
        assert_eq!(hex_prefix(&[0, 0xab, 3], 2), "00 ab");
        assert_eq!(hex_prefix(&[], 4), "nothing (empty file)");
    }
}
