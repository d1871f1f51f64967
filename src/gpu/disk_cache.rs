//! wgpu's pipeline cache kept on disk, so that a fresh process does not compile every
//! pipeline again (Vulkan only: wgpu has no pipeline cache elsewhere). One file per adapter,
//! driver and wgnn version under the user's cache directory; a file that does not pass its
//! checksum is ignored. The cache is an optimization: any failure to read or write it is
//! logged and training goes on.
//!
//! `WGNN_PIPELINE_CACHE=off` disables it; `WGNN_PIPELINE_CACHE=DIR` puts it in DIR. The default
//! is `$XDG_CACHE_HOME/wgnn`, else `~/.cache/wgnn` (`%LOCALAPPDATA%\wgnn` on Windows).

use std::io::Read;
use std::path::{Path, PathBuf};

/// The environment variable that disables or places the cache.
pub const PIPELINE_CACHE_ENV: &str = "WGNN_PIPELINE_CACHE";

/// Starts every cache file: the format's name and version.
const MAGIC: &[u8; 8] = b"wgnnpc01";

/// Where the cache goes, as `WGNN_PIPELINE_CACHE` and the platform say; `None`: off.
pub fn default_dir() -> Option<PathBuf> {
    match std::env::var(PIPELINE_CACHE_ENV) {
        Ok(v) if v.eq_ignore_ascii_case("off") || v == "0" => return None,
        Ok(v) if !v.is_empty() => return Some(PathBuf::from(v)),
        _ => {}
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("LOCALAPPDATA")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("wgnn"))
}

/// The file for this adapter, driver and wgnn version in `dir`; `None` where wgpu keeps no
/// pipeline cache (every backend but Vulkan).
pub fn file_for(dir: &Path, info: &wgpu::AdapterInfo) -> Option<PathBuf> {
    let key = wgpu::util::pipeline_cache_key(info)?;
    // The driver and wgnn's version (its shaders) invalidate the cache too.
    let mut crc = crc32fast::Hasher::new();
    for part in [
        info.name.as_str(),
        info.driver.as_str(),
        info.driver_info.as_str(),
        env!("CARGO_PKG_VERSION"),
    ] {
        crc.update(part.as_bytes());
        crc.update(&[0]);
    }
    Some(dir.join(format!("{key}_{:08x}.bin", crc.finalize())))
}

/// The largest cache file read: a driver's pipeline cache for wgnn's few dozen pipelines is
/// kilobytes (108 bytes on lavapipe) to a few megabytes, so anything past this is not one.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// The cache data in `path`, if it is there, a regular file of at most [`MAX_FILE_BYTES`],
/// and whole. Anything else at the path (a FIFO, a device such as `/dev/zero`, a directory, a
/// huge file) is ignored with a warning, without being opened or read past the bound.
pub fn load(path: &Path) -> Option<Vec<u8>> {
    let bytes = match read_bounded(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            log::warn!("pipeline cache {}: {e}; compiling afresh", path.display());
            return None;
        }
    };
    match decode(&bytes) {
        Some(data) => Some(data.to_vec()),
        None => {
            log::warn!(
                "pipeline cache {}: damaged (checksum); compiling afresh",
                path.display()
            );
            None
        }
    }
}

/// The bytes of `path` when it is a regular file (links followed) of at most
/// [`MAX_FILE_BYTES`]. The type is looked at before opening, since opening a FIFO blocks until
/// a writer comes, and again on the open file, which is read through a bound whatever it
/// claims.
fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    let regular = |meta: &std::fs::Metadata| -> std::io::Result<u64> {
        if !meta.is_file() {
            return Err(std::io::Error::other(format!(
                "not a regular file ({:?})",
                meta.file_type()
            )));
        }
        if meta.len() > MAX_FILE_BYTES {
            return Err(std::io::Error::other(format!(
                "{} bytes, more than a pipeline cache's {MAX_FILE_BYTES}",
                meta.len()
            )));
        }
        Ok(meta.len())
    };
    regular(&std::fs::metadata(path)?)?;
    let file = std::fs::File::open(path)?;
    let len = regular(&file.metadata()?)?;
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::other(format!(
            "grew past a pipeline cache's {MAX_FILE_BYTES} bytes while read"
        )));
    }
    Ok(bytes)
}

/// Writes `data` to `path` whole or not at all (a temp file renamed over it); errors are
/// logged, not returned.
pub fn save(path: &Path, data: &[u8]) {
    let result = (|| -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let temp = path.with_extension(format!("{}.tmp", std::process::id()));
        std::fs::write(&temp, encode(data))?;
        std::fs::rename(&temp, path).inspect_err(|_| {
            let _ = std::fs::remove_file(&temp);
        })
    })();
    if let Err(e) = result {
        log::warn!("pipeline cache {}: not saved: {e}", path.display());
    }
}

/// MAGIC, the CRC-32 of the data (little-endian), the data.
fn encode(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 12);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    out.extend_from_slice(data);
    out
}

fn decode(bytes: &[u8]) -> Option<&[u8]> {
    let rest = bytes.strip_prefix(MAGIC)?;
    let (crc, data) = rest.split_at_checked(4)?;
    let crc = u32::from_le_bytes(crc.try_into().ok()?);
    (crc32fast::hash(data) == crc).then_some(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_cache_loads_back_and_a_damaged_one_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested").join("cache.bin");
        assert_eq!(load(&path), None);
        save(&path, b"pipeline bytes");
        assert_eq!(load(&path).as_deref(), Some(&b"pipeline bytes"[..]));
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(load(&path), None);
        std::fs::write(&path, &bytes[..6]).unwrap();
        assert_eq!(load(&path), None);
        // No temp file is left beside it.
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
    }

    #[test]
    fn only_regular_files_within_the_bound_are_read_and_nothing_blocks() {
        let dir = tempfile::tempdir().unwrap();
        // A directory at the path.
        let sub = dir.path().join("dir.bin");
        std::fs::create_dir(&sub).unwrap();
        assert_eq!(load(&sub), None);
        // A file past the bound (sparse: nothing is written) is not read.
        let big = dir.path().join("big.bin");
        let file = std::fs::File::create(&big).unwrap();
        file.set_len(MAX_FILE_BYTES + 1).unwrap();
        let err = read_bounded(&big).unwrap_err().to_string();
        assert!(err.contains("more than a pipeline cache's"), "{err}");
        assert_eq!(load(&big), None);
        #[cfg(unix)]
        {
            // A link to /dev/zero, which would read forever.
            let zero = dir.path().join("zero.bin");
            std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
            let err = read_bounded(&zero).unwrap_err().to_string();
            assert!(err.contains("not a regular file"), "{err}");
            // A FIFO with no writer, whose open would block: run on a thread so that a
            // regression fails the test instead of hanging it.
            let fifo = dir.path().join("fifo.bin");
            let made = std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .is_ok_and(|s| s.success());
            assert!(made, "mkfifo");
            let (send, receive) = std::sync::mpsc::channel();
            std::thread::spawn(move || send.send(load(&fifo)).unwrap());
            let loaded = receive.recv_timeout(std::time::Duration::from_secs(10));
            assert_eq!(loaded, Ok(None), "a FIFO at the cache path blocks the load");
        }
    }

    #[test]
    fn the_file_name_changes_with_the_driver() {
        let mut info = wgpu::AdapterInfo {
            name: "gpu".into(),
            vendor: 1,
            device: 2,
            device_type: wgpu::DeviceType::DiscreteGpu,
            device_pci_bus_id: String::new(),
            driver: "driver".into(),
            driver_info: "1.0".into(),
            backend: wgpu::Backend::Vulkan,
            subgroup_min_size: 32,
            subgroup_max_size: 32,
            transient_saves_memory: None,
            limit_bucket: None,
        };
        let dir = Path::new("/cache");
        let a = file_for(dir, &info).unwrap();
        info.driver_info = "1.1".into();
        assert_ne!(file_for(dir, &info).unwrap(), a);
        info.backend = wgpu::Backend::Metal;
        assert_eq!(file_for(dir, &info), None);
    }
}
