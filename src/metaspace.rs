//! The metadata filesystem running full.
//!
//! RocksDB stops every write on ENOSPC (a hard background error) and recovers by itself once
//! space is back: its SstFileManager retries every 5 s. Meanwhile nothing could be freed,
//! since `rm` is itself a metadata write. So a pool keeps `POOL/meta.reserve`, a
//! preallocated file released when the metadata filesystem fills (a metadata write failed
//! with ENOSPC, or free space fell below a quarter of the reserve). From then on, until free
//! space is back above twice the reserve, requests that add metadata get ENOSPC at once and
//! requests that free it (unlink, rmdir, truncate, removexattr) go through, waiting for
//! RocksDB's recovery when they must. When space is back the reserve is made again and
//! writes resume, without a remount.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The reserve file, in the pool directory (beside `meta/`, on the same filesystem).
pub const RESERVE_FILE: &str = "meta.reserve";
/// The reserve is this fraction of the metadata filesystem...
const RESERVE_FRACTION: u64 = 32;
/// ...within these bounds.
const RESERVE_BYTES_MIN: u64 = 1 << 20;
const RESERVE_BYTES_MAX: u64 = 128 << 20;
/// RocksDB's write buffers are at most this (bounded memory)...
const WRITE_BUFFER_BYTES_MAX: u64 = 32 << 20;
/// ...and at least this.
const WRITE_BUFFER_BYTES_MIN: u64 = 256 << 10;
/// RocksDB's info log rolls over at this fraction of the filesystem, within these bounds.
const LOG_FRACTION: u64 = 64;
const LOG_FILE_BYTES_MIN: u64 = 256 << 10;
const LOG_FILE_BYTES_MAX: u64 = 8 << 20;

/// Space-dependent sizes, from the metadata filesystem's size.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    pub reserve_bytes: u64,
    /// RocksDB resumes after ENOSPC once a write buffer's worth is free: a quarter of the
    /// reserve, so the released reserve lets it.
    pub write_buffer_bytes: u64,
    pub log_file_bytes: u64,
}

impl Sizes {
    pub fn for_total(total: u64) -> Sizes {
        let reserve_bytes = (total / RESERVE_FRACTION).clamp(RESERVE_BYTES_MIN, RESERVE_BYTES_MAX);
        Sizes {
            reserve_bytes,
            write_buffer_bytes: (reserve_bytes / 4)
                .clamp(WRITE_BUFFER_BYTES_MIN, WRITE_BUFFER_BYTES_MAX),
            log_file_bytes: (total / LOG_FRACTION).clamp(LOG_FILE_BYTES_MIN, LOG_FILE_BYTES_MAX),
        }
    }

    /// For the filesystem holding `dir` (or its parent when it does not exist yet).
    pub fn of(dir: &Path) -> Sizes {
        let at = if dir.exists() {
            dir
        } else {
            dir.parent().unwrap_or(dir)
        };
        // Unknown (statvfs failed): the sizes of a large filesystem.
        Sizes::for_total(free_and_total(at).map_or(u64::MAX, |(_, t)| t))
    }
}
/// Free space is looked at no more often than this on the request path.
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// True when a metadata error is the filesystem being full (RocksDB reports ENOSPC as an IO
/// error carrying the strerror text).
pub fn is_no_space(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::ENOSPC))
            || c.to_string().contains("No space left on device")
    })
}

/// What `status` shows of the metadata filesystem's space.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SpaceStatus {
    /// Free bytes on the metadata filesystem (for unprivileged users).
    pub free_bytes: u64,
    pub reserve_bytes: u64,
    /// Whether the reserve file is in place (false while full, or if it could not be made).
    pub reserve_held: bool,
    /// Full: requests that add metadata get ENOSPC until `free_bytes` is back to `resume_bytes`.
    pub full: bool,
    pub resume_bytes: u64,
}

pub struct MetaSpace {
    /// The metadata directory (its filesystem is the one watched).
    dir: PathBuf,
    reserve: PathBuf,
    reserve_bytes: u64,
    full: AtomicBool,
    /// When free space is next looked at, in ms since `epoch`: every write asks `is_full`,
    /// so the common answer is one atomic load, and statvfs runs at most every `CHECK_EVERY`.
    due_ms: AtomicU64,
    epoch: Instant,
}

fn free_and_total(dir: &Path) -> std::io::Result<(u64, u64)> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())?;
    // SAFETY: zeroed statvfs is a valid out-parameter; c is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let f = st.f_frsize;
    // What unprivileged users may use: root's share is kept out (ext4's `-m`), and ext4
    // keeps more that even root cannot use, so f_bfree would overstate what is left.
    let free = st.f_bavail;
    Ok((free * f, st.f_blocks * f))
}

/// Allocates `len` bytes of `path` (fallocate, or zeros where it is not supported).
fn make_reserve(path: &Path, len: u64) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    if f.metadata()?.blocks() * 512 >= len {
        return Ok(());
    }
    // SAFETY: f is an open file descriptor.
    if unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len as libc::off_t) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
        return Err(e);
    }
    let zeros = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        f.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    f.sync_data()
}

use std::os::unix::fs::MetadataExt;

impl MetaSpace {
    /// Watches the filesystem of `meta_dir` (the pool's `meta/`); the reserve goes beside it.
    /// Makes the reserve when there is room for it; releases it at once when space is short.
    pub fn open(meta_dir: &Path, sizes: &Sizes) -> MetaSpace {
        let pool = meta_dir.parent().unwrap_or(meta_dir);
        let s = MetaSpace {
            dir: meta_dir.to_path_buf(),
            reserve: pool.join(RESERVE_FILE),
            reserve_bytes: sizes.reserve_bytes,
            full: AtomicBool::new(false),
            due_ms: AtomicU64::new(CHECK_EVERY.as_millis() as u64),
            epoch: Instant::now(),
        };
        // At `init` the metadata directory does not exist yet.
        let at = if meta_dir.exists() { meta_dir } else { pool };
        match free_and_total(at) {
            Ok((free, _)) if free < s.reserve_bytes / 4 => s.on_full("free space is short"),
            Ok(_) => s.try_reserve(),
            Err(e) => tracing::warn!("{}: cannot read free space: {e}", at.display()),
        }
        s
    }

    fn reserve_held(&self) -> bool {
        fs::symlink_metadata(&self.reserve).is_ok_and(|m| m.blocks() * 512 >= self.reserve_bytes)
    }

    fn try_reserve(&self) {
        if let Err(e) = make_reserve(&self.reserve, self.reserve_bytes) {
            let _ = fs::remove_file(&self.reserve);
            tracing::warn!(
                "{}: cannot make the metadata reserve of {} bytes ({e}): a full metadata filesystem will need space freed outside foreshard",
                self.reserve.display(),
                self.reserve_bytes
            );
        }
    }

    /// The metadata filesystem is full: release the reserve so frees can go through, and
    /// refuse what adds metadata until space is back.
    pub fn on_full(&self, why: &str) {
        if self.full.swap(true, Ordering::SeqCst) {
            return;
        }
        let released = fs::remove_file(&self.reserve).is_ok();
        tracing::error!(
            "metadata filesystem of {} is full ({why}): {}new files and writes get ENOSPC until {} bytes are free there",
            self.dir.display(),
            if released { "released the reserve; " } else { "" },
            self.resume_bytes()
        );
        self.due_ms.store(
            self.now_ms() + CHECK_EVERY.as_millis() as u64,
            Ordering::Relaxed,
        );
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The full state as last seen (no check).
    pub fn full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }

    fn resume_bytes(&self) -> u64 {
        2 * self.reserve_bytes
    }

    /// Whether requests that add metadata are refused. Looks at free space at most every
    /// `CHECK_EVERY`: enters the full state when it is short, and leaves it (making the
    /// reserve again) when it is back and `probe` (a tiny metadata write) succeeds, i.e.
    /// RocksDB has recovered.
    pub fn is_full(&self, probe: impl FnOnce() -> anyhow::Result<()>) -> bool {
        let full = self.full.load(Ordering::Relaxed);
        let (now, due) = (self.now_ms(), self.due_ms.load(Ordering::Relaxed));
        let next = now + CHECK_EVERY.as_millis() as u64;
        // One caller looks; the others go on with the state as last seen.
        if now < due
            || self
                .due_ms
                .compare_exchange(due, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return full;
        }
        let Ok((free, _)) = free_and_total(&self.dir) else {
            return full;
        };
        if !full {
            if free < self.reserve_bytes / 4 {
                self.on_full("free space is short");
                return true;
            }
            return false;
        }
        if free < self.resume_bytes() {
            return true;
        }
        if let Err(e) = probe() {
            tracing::info!("metadata space is back, but metadata writes still fail: {e:#}");
            return true;
        }
        self.try_reserve();
        self.full.store(false, Ordering::SeqCst);
        tracing::info!(
            "metadata filesystem of {} has {free} bytes free again: writes resume",
            self.dir.display()
        );
        false
    }

    pub fn status(&self) -> SpaceStatus {
        SpaceStatus {
            free_bytes: free_and_total(&self.dir).map_or(0, |(f, _)| f),
            reserve_bytes: self.reserve_bytes,
            reserve_held: self.reserve_held(),
            full: self.full.load(Ordering::Relaxed),
            resume_bytes: self.resume_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_scale_with_the_filesystem_within_bounds() {
        let small = Sizes::for_total(64 << 20);
        assert_eq!(small.reserve_bytes, 2 << 20);
        assert_eq!(small.write_buffer_bytes, 512 << 10);
        let big = Sizes::for_total(1 << 40);
        assert_eq!(big.reserve_bytes, RESERVE_BYTES_MAX);
        assert_eq!(big.write_buffer_bytes, WRITE_BUFFER_BYTES_MAX);
        assert_eq!(big.log_file_bytes, LOG_FILE_BYTES_MAX);
        let tiny = Sizes::for_total(1 << 20);
        assert_eq!(tiny.reserve_bytes, RESERVE_BYTES_MIN);
        assert_eq!(tiny.write_buffer_bytes, WRITE_BUFFER_BYTES_MIN);
        // RocksDB resumes with a write buffer's worth free: the released reserve gives it.
        for t in [1u64 << 20, 64 << 20, 1 << 30, 1 << 40] {
            let s = Sizes::for_total(t);
            assert!(s.write_buffer_bytes <= s.reserve_bytes, "{s:?}");
        }
    }

    #[test]
    fn no_space_is_recognised_through_contexts_and_rocksdb_text() {
        let io = anyhow::Error::from(std::io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(is_no_space(&io.context("write batch")));
        let text = anyhow::anyhow!("IO error: No space left on device: While appending to file");
        assert!(is_no_space(&text));
        assert!(!is_no_space(&anyhow::anyhow!("Corruption: bad block")));
    }

    #[test]
    fn full_releases_the_reserve_and_space_back_makes_it_again() {
        let d = tempfile::tempdir().unwrap();
        let meta = d.path().join("meta");
        fs::create_dir(&meta).unwrap();
        let sizes = Sizes::for_total(64 << 20);
        let s = MetaSpace::open(&meta, &sizes);
        assert!(s.reserve_held(), "made at open");
        assert!(!s.full());
        s.on_full("test");
        assert!(s.full());
        assert!(!d.path().join(RESERVE_FILE).exists(), "released");
        // Not yet looked at again: still full.
        assert!(s.is_full(|| Ok(())));
        s.due_ms.store(0, Ordering::Relaxed);
        // Space is there, but metadata writes still fail: still full.
        assert!(s.is_full(|| anyhow::bail!("still stopped")));
        s.due_ms.store(0, Ordering::Relaxed);
        assert!(!s.is_full(|| Ok(())));
        assert!(s.reserve_held(), "made again");
        assert!(s.status().reserve_held && !s.status().full);
    }
}
