//! Making files durable without syncfs(2): one fdatasync per file and one fsync per
//! directory, all submitted at once to an io_uring so that the disks (and the journal
//! commits of one filesystem) work in parallel.
//!
//! syncfs is not used because FUSE and some network filesystems do not forward it (a disk
//! directory on one of them got no durability at all), and on a filesystem shared with other
//! programs it flushes their data too.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use io_uring::{opcode, types, IoUring};

/// Sync operations in flight on one ring; more wait for a free slot.
const RING_ENTRIES: usize = 64;

/// One thing to make durable: a file's data (fdatasync) or a directory's entries (fsync).
pub struct Target {
    /// Who it belongs to (a disk id): failures are reported by owner.
    pub owner: u32,
    pub path: PathBuf,
    pub dir: bool,
}

thread_local! {
    /// One ring per thread that syncs (FUSE workers, committers, the reaper): made once,
    /// never shared, so no lock is held across a sync.
    static RING: RefCell<Option<IoUring>> = const { RefCell::new(None) };
}

/// Makes every target durable. A target that no longer exists is skipped (a superseded
/// extent version removed meanwhile has nothing left to make durable). Returns the first
/// error of each owner that had one.
pub fn sync(targets: &[Target]) -> HashMap<u32, io::Error> {
    let mut failed: HashMap<u32, io::Error> = HashMap::new();
    let mut open: Vec<(u32, File, bool)> = Vec::with_capacity(targets.len());
    for t in targets {
        let mut o = OpenOptions::new();
        o.read(true);
        let mut flags = libc::O_CLOEXEC | libc::O_NOFOLLOW;
        if t.dir {
            flags |= libc::O_DIRECTORY;
        }
        match o.custom_flags(flags).open(&t.path) {
            Ok(f) => open.push((t.owner, f, t.dir)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                failed.entry(t.owner).or_insert(e);
            }
        }
    }
    let uring = RING.with(|r| {
        let mut r = r.borrow_mut();
        if r.is_none() {
            *r = IoUring::new(RING_ENTRIES as u32).ok();
        }
        let res = r.as_mut().map(|ring| sync_on_ring(ring, &open));
        if matches!(res, Some(Err(_))) {
            // Completions of ops already submitted may still arrive: a later call must not
            // read them as its own, so this ring is not used again.
            *r = None;
        }
        res
    });
    let results = match uring {
        Some(Ok(res)) => res,
        // No io_uring here (or the ring failed): one call at a time.
        _ => open.iter().map(|(_, f, dir)| sync_one(f, *dir)).collect(),
    };
    for ((owner, _, _), r) in open.iter().zip(results) {
        if let Err(e) = r {
            failed.entry(*owner).or_insert(e);
        }
    }
    failed
}

/// syncfs(2) of the filesystem holding `dir`, as a shortcut only: errors are ignored (the
/// per-file syncs after it report them).
pub fn syncfs_hint(dir: &std::path::Path) {
    let Ok(f) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(dir)
    else {
        return;
    };
    // SAFETY: f is an open descriptor.
    unsafe { libc::syncfs(f.as_raw_fd()) };
}

fn sync_one(f: &File, dir: bool) -> io::Result<()> {
    if dir {
        f.sync_all()
    } else {
        f.sync_data()
    }
}

/// Runs the syncs on `ring`, at most `RING_ENTRIES` at a time; one result per file, in order.
fn sync_on_ring(
    ring: &mut IoUring,
    files: &[(u32, File, bool)],
) -> io::Result<Vec<io::Result<()>>> {
    let mut results: Vec<Option<io::Result<()>>> = (0..files.len()).map(|_| None).collect();
    let (mut next, mut busy) = (0usize, 0usize);
    while next < files.len() || busy > 0 {
        while next < files.len() && busy < RING_ENTRIES {
            let (_, f, dir) = &files[next];
            let flags = if *dir {
                types::FsyncFlags::empty()
            } else {
                types::FsyncFlags::DATASYNC
            };
            let e = opcode::Fsync::new(types::Fd(f.as_raw_fd()))
                .flags(flags)
                .build()
                .user_data(next as u64);
            // SAFETY: the descriptor stays open until its completion is reaped below.
            if unsafe { ring.submission().push(&e) }.is_err() {
                break;
            }
            next += 1;
            busy += 1;
        }
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
        for cqe in ring.completion() {
            let i = cqe.user_data() as usize;
            let r = cqe.result();
            results[i] = Some(if r < 0 {
                Err(io::Error::from_raw_os_error(-r))
            } else {
                Ok(())
            });
            busy -= 1;
        }
    }
    Ok(results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(io::Error::other("sync not completed"))))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syncs_files_and_dirs_and_skips_missing_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut targets = Vec::new();
        for i in 0..150u32 {
            let p = dir.path().join(format!("f{i}"));
            std::fs::write(&p, vec![i as u8; 4096]).unwrap();
            targets.push(Target {
                owner: i % 3,
                path: p,
                dir: false,
            });
        }
        targets.push(Target {
            owner: 0,
            path: dir.path().to_path_buf(),
            dir: true,
        });
        targets.push(Target {
            owner: 1,
            path: dir.path().join("gone"),
            dir: false,
        });
        assert!(sync(&targets).is_empty());
        // A file where a directory is expected fails, for its owner only.
        targets.push(Target {
            owner: 7,
            path: dir.path().join("f1"),
            dir: true,
        });
        let failed = sync(&targets);
        assert_eq!(failed.keys().copied().collect::<Vec<_>>(), vec![7]);
    }
}
