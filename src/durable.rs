//! Durable changes to the disk, made as databases make them: a file is written under a temp
//! name beside its target, fsynced, renamed over the target, and the directory is fsynced, so
//! that neither a crash nor a power cut leaves a torn file or loses the rename.
//!
//! Every operation that changes the disk goes through this module and is counted, per
//! thread, so that tests can stop a program at each of them. A [`Failpoint`] names the k-th
//! operation and what happens there: the process aborts right after it (what `kill -9` at that
//! instant leaves behind), or — for tests that stay in one process — it happens and every
//! later operation on the thread fails as if the process had died, or it fails itself with an
//! error such as a full disk. The command line reads one from `WGNN_FAILPOINT`
//! ([`Failpoint::parse`]).

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The environment variable the command line reads a [`Failpoint`] from.
pub const FAILPOINT_ENV: &str = "WGNN_FAILPOINT";

/// What a failpoint does at its operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailAction {
    /// The operation happens, then the process aborts: nothing after it runs, not even the
    /// clean-up of temp files, as under `kill -9`.
    Abort,
    /// The operation happens, then every later operation on this thread fails without touching
    /// the disk: an in-process stand-in for [`FailAction::Abort`].
    Crash,
    /// The operation does not happen and fails with this error (`StorageFull` for a full
    /// disk); later operations run normally.
    Fail(io::ErrorKind),
}

/// Stops or fails the `at`-th disk operation (1-based) counted on this thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failpoint {
    pub at: u64,
    pub action: FailAction,
}

impl Failpoint {
    /// `K` (abort after the K-th operation), `K:abort`, `K:crash`, or `K:full` (the K-th
    /// operation fails as on a full disk).
    pub fn parse(text: &str) -> Option<Self> {
        let (at, action) = match text.split_once(':') {
            Some((at, action)) => (at, action),
            None => (text, "abort"),
        };
        let at = at.trim().parse().ok().filter(|&k| k > 0)?;
        let action = match action.trim() {
            "abort" => FailAction::Abort,
            "crash" => FailAction::Crash,
            "full" => FailAction::Fail(io::ErrorKind::StorageFull),
            _ => return None,
        };
        Some(Self { at, action })
    }
}

#[derive(Default)]
struct Counter {
    done: u64,
    failpoint: Option<Failpoint>,
    crashed: bool,
    trace: Vec<String>,
}

thread_local! {
    static COUNTER: RefCell<Counter> = RefCell::new(Counter::default());
}

/// Sets (or clears) this thread's failpoint and starts counting operations from zero.
pub fn set_failpoint(failpoint: Option<Failpoint>) {
    COUNTER.with(|c| {
        *c.borrow_mut() = Counter {
            failpoint,
            ..Counter::default()
        }
    });
}

/// The disk operations this thread has attempted since [`set_failpoint`], each described in
/// one line (`rename a → b`), in order.
pub fn trace() -> Vec<String> {
    COUNTER.with(|c| c.borrow().trace.clone())
}

/// Counts one operation and runs it, unless a failpoint says otherwise.
fn operation<T>(
    what: impl FnOnce() -> String,
    run: impl FnOnce() -> io::Result<T>,
) -> io::Result<T> {
    let (index, action) = COUNTER.with(|c| {
        let mut c = c.borrow_mut();
        if c.crashed {
            return Err(io::Error::other(
                "not run: the process stopped at an injected crash",
            ));
        }
        c.done += 1;
        c.trace.push(what());
        let action = c.failpoint.filter(|f| f.at == c.done).map(|f| f.action);
        Ok((c.done, action))
    })?;
    if let Some(FailAction::Fail(kind)) = action {
        return Err(io::Error::new(
            kind,
            format!("injected failure of disk operation {index}"),
        ));
    }
    let result = run();
    match action {
        Some(FailAction::Abort) => {
            let what = COUNTER.with(|c| c.borrow().trace.last().cloned().unwrap_or_default());
            eprintln!("{FAILPOINT_ENV}: stopping after disk operation {index} ({what})");
            std::process::abort();
        }
        Some(FailAction::Crash) => COUNTER.with(|c| c.borrow_mut().crashed = true),
        _ => {}
    }
    result
}

/// The temp name a file is written under before it replaces `path`: `.NAME.tmp-PID` beside
/// it, so that a crash leaves at most a hidden file that [`is_temp_file`] recognizes.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Whether a file name is one [`temp_path`] makes.
pub fn is_temp_file(name: &str) -> bool {
    name.strip_prefix('.')
        .and_then(|rest| rest.rsplit_once(".tmp-"))
        .is_some_and(|(stem, pid)| {
            !stem.is_empty() && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())
        })
}

/// Creates (or truncates) `path`, writes `bytes` and fsyncs the file: three operations.
pub fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let shown = path.display();
    let mut file = operation(|| format!("create {shown}"), || File::create(path))?;
    operation(
        || format!("write {} bytes to {shown}", bytes.len()),
        || file.write_all(bytes),
    )?;
    operation(|| format!("fsync {shown}"), || file.sync_all())
}

/// Renames `from` over `to` (atomically replacing it).
pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    operation(
        || format!("rename {} → {}", from.display(), to.display()),
        || std::fs::rename(from, to),
    )
}

/// Fsyncs a directory, so that the renames and removals in it survive a power cut. Windows
/// cannot open a directory for this, and commits them with the files.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    operation(
        || format!("fsync directory {}", dir.display()),
        || {
            #[cfg(unix)]
            File::open(dir)?.sync_all()?;
            Ok(())
        },
    )
}

/// Removes a file.
pub fn remove_file(path: &Path) -> io::Result<()> {
    operation(
        || format!("remove {}", path.display()),
        || std::fs::remove_file(path),
    )
}

/// Removes an empty directory.
pub fn remove_dir(path: &Path) -> io::Result<()> {
    operation(
        || format!("remove directory {}", path.display()),
        || std::fs::remove_dir(path),
    )
}

/// Creates a directory and its missing parents.
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    operation(
        || format!("create directory {}", path.display()),
        || std::fs::create_dir_all(path),
    )
}

/// Creates one directory; fails with `AlreadyExists` when it is there.
pub fn create_dir(path: &Path) -> io::Result<()> {
    operation(
        || format!("create directory {}", path.display()),
        || std::fs::create_dir(path),
    )
}

/// Points the symbolic link `link` at `target`, replacing what `link` was atomically (a new
/// link under a temp name, renamed over it).
#[cfg(unix)]
pub fn replace_symlink(target: &Path, link: &Path) -> io::Result<()> {
    let tmp = temp_path(link);
    let _ = std::fs::remove_file(&tmp);
    operation(
        || format!("symlink {} → {}", tmp.display(), target.display()),
        || std::os::unix::fs::symlink(target, &tmp),
    )?;
    rename(&tmp, link)
}

/// Writes `bytes` to `path` so that a crash or a power cut leaves either the old file or the
/// new one: [`write_synced`] under [`temp_path`], [`rename`] over `path`, and [`sync_dir`]
/// (five operations). A failure removes the temp file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_unsynced(path, bytes)?;
    sync_dir(parent(path))
}

/// [`write_atomic`] without the fsync of the directory, for several files whose renames one
/// [`sync_dir`] then makes durable together (four operations).
pub fn write_atomic_unsynced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = temp_path(path);
    let result = write_synced(&tmp, bytes).and_then(|()| rename(&tmp, path));
    if result.is_err() {
        let _ = remove_file(&tmp);
    }
    result
}

/// The directory holding `path` (`.` for a bare file name).
pub fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_atomic_write_is_five_operations_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        set_failpoint(None);
        write_atomic(&path, b"one").unwrap();
        assert_eq!(trace().len(), 5, "{:?}", trace());
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_failpoint_at_each_operation_leaves_the_old_file_or_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        for at in 1..=5 {
            std::fs::write(&path, b"old").unwrap();
            set_failpoint(Some(Failpoint {
                at,
                action: FailAction::Crash,
            }));
            let result = write_atomic(&path, b"new");
            let now = std::fs::read(&path).unwrap();
            // Until the rename (operation 4) the old file stands; from it on, the new one.
            assert_eq!(now, if at >= 4 { b"new" } else { b"old" }, "at {at}");
            assert_eq!(result.is_ok(), at == 5, "at {at}: {result:?}");
            for entry in std::fs::read_dir(dir.path()).unwrap() {
                let name = entry.unwrap().file_name().to_string_lossy().into_owned();
                if name != "f.bin" {
                    assert!(is_temp_file(&name) && at < 4, "at {at}: {name}");
                    std::fs::remove_file(dir.path().join(name)).unwrap();
                }
            }
        }
        set_failpoint(Some(Failpoint {
            at: 2,
            action: FailAction::Fail(io::ErrorKind::StorageFull),
        }));
        let err = write_atomic(&path, b"full").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temp removed"
        );
        set_failpoint(None);
    }

    #[test]
    fn failpoints_parse_and_temp_names_are_recognized() {
        assert_eq!(
            Failpoint::parse("7"),
            Some(Failpoint {
                at: 7,
                action: FailAction::Abort
            })
        );
        assert_eq!(
            Failpoint::parse("3:full").map(|f| f.action),
            Some(FailAction::Fail(io::ErrorKind::StorageFull))
        );
        assert_eq!(Failpoint::parse("0"), None);
        assert_eq!(Failpoint::parse("x"), None);
        assert_eq!(Failpoint::parse("2:later"), None);
        let tmp = temp_path(Path::new("d/checkpoint.safetensors"));
        let name = tmp.file_name().unwrap().to_str().unwrap();
        assert!(is_temp_file(name), "{name}");
        for other in [
            "checkpoint.safetensors",
            ".tmp-1",
            ".a.tmp-",
            ".a.tmp-1x",
            ".wgnn-lock",
        ] {
            assert!(!is_temp_file(other), "{other}");
        }
    }
}
