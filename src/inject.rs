//! Fault injection on a pool's disks and daemon, for tests, benchmarks and operators trying
//! recovery by hand (`foreshard debug inject`): a disk that vanishes, bit rot in extent
//! files, a full disk, a daemon killed with SIGKILL. Faults inside the daemon's disk layer
//! (EIO, latency) go through the control socket instead (`Request::DiskFault`).
//!
//! Each function does one thing to the backing files and reports what it did; none of them
//! touches metadata, so what they break is exactly what a real fault breaks.

use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};

/// The file `fill` grows on a disk (and `unfill` removes).
pub const FILL_NAME: &str = "foreshard.fill";
/// Bytes `fill` leaves free, so the disk is full for extents but its filesystem still works.
pub const FILL_MARGIN_BYTES: u64 = 64 << 10;
/// The label every pool disk carries; an unmounted disk without it is an empty mountpoint.
const LABEL_NAME: &str = "foreshard.label";
/// Extent files `bitrot` looks at, at most (a disk of millions of files is sampled from the
/// first ones found).
const BITROT_SCAN_FILES_MAX: usize = 1 << 20;
/// How long `crash` waits for the killed daemon to be gone.
const CRASH_WAIT: Duration = Duration::from_secs(5);

/// What `yank` did.
pub struct Yanked {
    /// Wall-clock time just after the disk vanished (since the epoch), for benchmarks that
    /// time detection and recovery from the yank.
    pub at: Duration,
    pub how: String,
}

/// Makes the disk directory vanish under the daemon: a mounted disk is lazily unmounted
/// (its empty mountpoint stays, like a pulled drive's), a plain directory disk is renamed
/// to `DIR.yanked.<epoch-seconds>`.
pub fn yank(dir: &Path) -> anyhow::Result<Yanked> {
    if is_mountpoint(dir)? {
        let c = cstr(dir)?;
        // SAFETY: c is a valid NUL-terminated path.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
            let e = std::io::Error::last_os_error();
            bail!("cannot unmount {}: {e}", dir.display());
        }
        let at = since_epoch();
        let how = format!("lazily unmounted {} (umount -l)", dir.display());
        return Ok(Yanked { at, how });
    }
    if !dir.join(LABEL_NAME).exists() {
        bail!(
            "disk {} is not mounted and has no {LABEL_NAME}: already yanked?",
            dir.display()
        );
    }
    let secs = since_epoch().as_secs();
    let mut dest = PathBuf::from(format!("{}.yanked.{secs}", dir.display()));
    while dest.exists() {
        dest.as_mut_os_string().push(".1");
    }
    fs::rename(dir, &dest).with_context(|| format!("cannot rename {}", dir.display()))?;
    let at = since_epoch();
    let how = format!(
        "renamed plain directory disk {} to {}",
        dir.display(),
        dest.display()
    );
    Ok(Yanked { at, how })
}

/// One byte `bitrot` flipped.
pub struct Flip {
    pub path: PathBuf,
    pub offset: u64,
    pub old: u8,
}

/// Flips one byte (XOR 0xff) at a random offset in each of `n` distinct random non-empty
/// extent files of the disk (`DIR/extents/**`, not `*.tmp`), each synced. Returns the flips;
/// fewer than `n` when the disk has fewer files.
pub fn bitrot(dir: &Path, n: usize) -> anyhow::Result<Vec<Flip>> {
    use rand::seq::SliceRandom;
    use rand::Rng;
    if n == 0 {
        bail!("bitrot: N must be a positive integer");
    }
    let root = dir.join("extents");
    if !root.is_dir() {
        bail!(
            "disk {} has no extent files (no extents/ directory)",
            dir.display()
        );
    }
    let mut files = Vec::new();
    extent_files(&root, &mut files)?;
    if files.is_empty() {
        bail!("disk {} has no extent files", dir.display());
    }
    let mut rng = rand::rng();
    files.shuffle(&mut rng);
    files.truncate(n);
    let mut flips = Vec::with_capacity(files.len());
    for (path, size) in files {
        let offset = rng.random_range(0..size);
        flips.push(flip(&path, offset)?);
    }
    Ok(flips)
}

/// Collects non-empty regular files under `dir` that are not `*.tmp` (bounded).
fn extent_files(dir: &Path, out: &mut Vec<(PathBuf, u64)>) -> anyhow::Result<()> {
    let entries = fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    for e in entries {
        if out.len() >= BITROT_SCAN_FILES_MAX {
            return Ok(());
        }
        let e = e?;
        let ty = e.file_type()?;
        let path = e.path();
        if ty.is_dir() {
            extent_files(&path, out)?;
        } else if ty.is_file() && path.extension().is_none_or(|x| x != "tmp") {
            let size = e.metadata()?.len();
            if size > 0 {
                out.push((path, size));
            }
        }
    }
    Ok(())
}

fn flip(path: &Path, offset: u64) -> anyhow::Result<Flip> {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("bitrot: cannot open {}", path.display()))?;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset)?;
    f.write_all_at(&[b[0] ^ 0xff], offset)?;
    f.sync_all()?;
    Ok(Flip {
        path: path.to_path_buf(),
        offset,
        old: b[0],
    })
}

/// What `fill` did.
pub struct Filled {
    /// Size of the fill file afterwards.
    pub fill_bytes: u64,
    /// statfs free bytes afterwards (what root may still use).
    pub free_bytes: u64,
    /// statfs available bytes afterwards (what others may use).
    pub avail_bytes: u64,
    /// False when the disk was already full and nothing was written.
    pub grew: bool,
    pub notes: Vec<String>,
}

/// Fills the disk's filesystem up to `FILL_MARGIN_BYTES` with `DIR/foreshard.fill`
/// (fallocate, else zeros until ENOSPC). A plain directory disk shares the host's
/// filesystem, which this would fill: that needs `force`.
pub fn fill(dir: &Path, force: bool) -> anyhow::Result<Filled> {
    let mut notes = Vec::new();
    if !is_mountpoint(dir)? {
        notes.push(format!(
            "{} is a plain directory: filling it fills the host filesystem",
            dir.display()
        ));
        if !force {
            bail!(
                "{} is a plain directory (it shares the host filesystem): refusing to fill the host filesystem without --force",
                dir.display()
            );
        }
    }
    let path = dir.join(FILL_NAME);
    let (free, _) = space(dir)?;
    let grew = free > FILL_MARGIN_BYTES;
    if grew {
        let have = fs::metadata(&path).map_or(0, |m| m.len());
        let f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let len = have + free - FILL_MARGIN_BYTES;
        if fallocate(&f, len).is_err() {
            // ext4 keeps blocks back even from root, or fallocate is unsupported.
            notes.push(format!(
                "fallocate of {len} bytes failed; filling the rest with zeros until ENOSPC"
            ));
            zeros_until_full(&f)?;
        }
        sync_fs(&f);
    }
    let (free_bytes, avail_bytes) = space(dir)?;
    let fill_bytes = fs::metadata(&path).map_or(0, |m| m.len());
    Ok(Filled {
        fill_bytes,
        free_bytes,
        avail_bytes,
        grew,
        notes,
    })
}

fn fallocate(f: &fs::File, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = i64::try_from(len).map_err(|_| std::io::Error::other("length too large"))?;
    // SAFETY: the fd is open for the duration of the call.
    if unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Appends zeros until the filesystem says ENOSPC (any other error is one).
fn zeros_until_full(mut f: &fs::File) -> anyhow::Result<()> {
    let buf = vec![0u8; 1 << 20];
    loop {
        match f.write(&buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return Ok(()),
            Err(e) => return Err(anyhow::anyhow!("writing the fill file: {e}")),
        }
    }
}

/// Removes `DIR/foreshard.fill`; returns its size, or None when it was not there.
pub fn unfill(dir: &Path) -> anyhow::Result<Option<u64>> {
    let path = dir.join(FILL_NAME);
    let size = match fs::symlink_metadata(&path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(anyhow::anyhow!("{}: {e}", path.display())),
    };
    fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
    Ok(Some(size))
}

/// SIGKILLs the pool's daemon (pid in `POOL/daemon.pid`, checked to be a running foreshard
/// process) and waits (bounded) until it is gone or a zombie. Returns its pid and whether
/// it was gone in time.
pub fn crash(pool: &Path) -> anyhow::Result<(i32, bool)> {
    let pidfile = pool.join("daemon.pid");
    let text = match fs::read_to_string(&pidfile) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "pool {} is not mounted (no {})",
            pool.display(),
            pidfile.display()
        ),
        Err(e) => bail!("{}: {e}", pidfile.display()),
    };
    let first = text.lines().next().unwrap_or("").trim();
    let pid: i32 = match first.parse() {
        Ok(p) if p > 0 => p,
        _ => bail!("{}: no pid in it ('{first}')", pidfile.display()),
    };
    if !alive(pid) {
        bail!(
            "daemon {pid} of {} is not running (stale pid file)",
            pidfile.display()
        );
    }
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    if !cmdline.contains("foreshard") {
        bail!(
            "refusing to kill {pid}: not a foreshard process (cmdline: '{}')",
            cmdline.trim_end()
        );
    }
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
        bail!("cannot kill {pid}: {}", std::io::Error::last_os_error());
    }
    let start = Instant::now();
    while alive(pid) && start.elapsed() < CRASH_WAIT {
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((pid, !alive(pid)))
}

/// The process exists and is not a zombie.
fn alive(pid: i32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses and may hold anything.
    match stat.rfind(") ") {
        Some(i) => !stat[i + 2..].starts_with('Z'),
        None => false,
    }
}

/// Whether `dir` is a mount point, from /proc/self/mountinfo (st_dev comparisons miss bind
/// mounts of the same filesystem).
pub fn is_mountpoint(dir: &Path) -> anyhow::Result<bool> {
    let dir = fs::canonicalize(dir).with_context(|| format!("{}", dir.display()))?;
    let info = fs::read("/proc/self/mountinfo").context("cannot read /proc/self/mountinfo")?;
    let want = dir.as_os_str().as_bytes();
    Ok(info
        .split(|&b| b == b'\n')
        .filter_map(|line| line.split(|&b| b == b' ').nth(4))
        .any(|field| crate::util::unescape_mount_field(field) == want))
}

/// (free, available) bytes of the filesystem holding `dir`; root may use the free ones.
fn space(dir: &Path) -> anyhow::Result<(u64, u64)> {
    let c = cstr(dir)?;
    // SAFETY: statvfs is plain data; c is a valid path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        bail!(
            "statfs {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
    }
    let unit = st.f_frsize;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let free = st.f_bfree * unit;
    let avail = st.f_bavail * unit;
    Ok((if root { free } else { avail }, avail))
}

fn sync_fs(f: &fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: the fd is open for the duration of the call. Best effort, like `sync -f`.
    unsafe { libc::syncfs(f.as_raw_fd()) };
}

fn cstr(p: &Path) -> anyhow::Result<std::ffi::CString> {
    std::ffi::CString::new(p.as_os_str().as_bytes())
        .with_context(|| format!("{}: path holds a NUL byte", p.display()))
}

fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitrot_flips_one_byte_in_distinct_files() {
        let t = tempfile::tempdir().unwrap();
        let ext = t.path().join("extents/00");
        fs::create_dir_all(&ext).unwrap();
        for i in 0..5 {
            fs::write(ext.join(format!("e{i}")), vec![7u8; 100]).unwrap();
        }
        fs::write(ext.join("x.tmp"), vec![7u8; 100]).unwrap();
        fs::write(ext.join("empty"), b"").unwrap();
        let flips = bitrot(t.path(), 3).unwrap();
        assert_eq!(flips.len(), 3);
        let mut seen = std::collections::HashSet::new();
        for f in &flips {
            assert!(seen.insert(f.path.clone()), "distinct files");
            let data = fs::read(&f.path).unwrap();
            let changed: Vec<_> = (0..100).filter(|&i| data[i] != 7).collect();
            assert_eq!(changed, vec![f.offset as usize]);
            assert_eq!(data[f.offset as usize], 7 ^ 0xff);
        }
        // More than there are: every eligible file once, the .tmp and empty ones never.
        let flips = bitrot(t.path(), 50).unwrap();
        assert_eq!(flips.len(), 5);
        assert_eq!(fs::read(ext.join("x.tmp")).unwrap(), vec![7u8; 100]);
        assert!(bitrot(t.path(), 0).is_err());
        assert!(bitrot(&t.path().join("nope"), 1).is_err());
    }

    #[test]
    fn fill_refuses_a_plain_directory_without_force_and_unfill_is_idempotent() {
        let t = tempfile::tempdir().unwrap();
        let e = fill(t.path(), false).err().expect("refused");
        assert!(e.to_string().contains("--force"), "{e}");
        assert!(!t.path().join(FILL_NAME).exists(), "nothing written");
        assert_eq!(unfill(t.path()).unwrap(), None);
        fs::write(t.path().join(FILL_NAME), vec![0u8; 10]).unwrap();
        assert_eq!(unfill(t.path()).unwrap(), Some(10));
        assert!(!t.path().join(FILL_NAME).exists());
    }

    #[test]
    fn yank_renames_a_labelled_plain_directory_once() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("disk");
        fs::create_dir(&d).unwrap();
        assert!(yank(&d).is_err(), "no label: not a disk");
        fs::write(d.join(LABEL_NAME), b"x").unwrap();
        let y = yank(&d).unwrap();
        assert!(!d.exists() && y.how.contains(".yanked."), "{}", y.how);
        assert!(y.at.as_secs() > 1_000_000_000);
    }

    #[test]
    fn crash_refuses_missing_stale_and_foreign_pids() {
        let t = tempfile::tempdir().unwrap();
        assert!(crash(t.path())
            .unwrap_err()
            .to_string()
            .contains("not mounted"));
        fs::write(t.path().join("daemon.pid"), "abc\n").unwrap();
        assert!(crash(t.path()).unwrap_err().to_string().contains("no pid"));
        fs::write(t.path().join("daemon.pid"), "999999999\n").unwrap();
        assert!(crash(t.path()).unwrap_err().to_string().contains("stale"));
        // A live process that is not foreshard: this test's own parent shell or init.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        fs::write(t.path().join("daemon.pid"), format!("{}\n", child.id())).unwrap();
        let e = crash(t.path()).unwrap_err().to_string();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(e.contains("not a foreshard process"), "{e}");
    }

    #[test]
    fn the_root_is_a_mountpoint() {
        assert!(is_mountpoint(Path::new("/")).unwrap());
    }
}
