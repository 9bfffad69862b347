//! lazyfs: a passthrough FUSE filesystem that models a power cut (after LazyFS). Built as
//! a cargo example for tests/powerloss.rs.
//!
//!     lazyfs UNDERLYING_DIR MOUNTPOINT
//!
//! Runs in the foreground until unmounted or killed. The model:
//! - Namespace operations (create, mkdir, unlink, rmdir, rename, link, symlink, chmod,
//!   chown, utimens) go to the underlying directory at once: they are durable at once. This
//!   is the pessimistic model: a deletion is durable before any data written before it.
//! - File data (writes and truncates) stays in the layer's memory, per inode, and reaches the
//!   underlying file only when that file is fsync'ed or fdatasync'ed (a FUSE FSYNC request).
//!   Reads and sizes are served from the in-memory copy.
//! - SIGKILL of the layer is the power cut: every unsynced copy is gone, the underlying
//!   directory holds what was synced.
//! - syncfs(2) on a FUSE mount is not forwarded to the daemon by the kernel, so it makes
//!   nothing durable here: only per-file fsync does.
//! - Memory is bounded: past `DIRTY_BYTES_MAX` of unsynced pages the file that became
//!   dirty first is written back and synced, as kernel writeback would do.
//! - Directory fsync also syncs the underlying directory (nothing is pending in the model).
//! - fallocate: plain allocation passes through (KEEP_SIZE) and a size growth waits in the
//!   copy like a truncate; punch/zero/collapse/insert write the copy back first.
//!
//! The underlying files are opened without O_DIRECT; the kernel serves O_DIRECT opens of
//! this mount by sending every read and write to the daemon (no page cache), which is what
//! the model needs anyway.

mod dirty;
mod fs;

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, under, mnt] = args.as_slice() else {
        eprintln!("usage: lazyfs UNDERLYING_DIR MOUNTPOINT");
        return ExitCode::from(2);
    };
    let fs = match fs::Lazy::new(PathBuf::from(under)) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("lazyfs: {under}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut cfg = fuser::Config::default();
    cfg.mount_options = vec![
        fuser::MountOption::FSName("lazyfs".into()),
        fuser::MountOption::Subtype("lazyfs".into()),
        // The kernel checks permissions from our attributes; access() is never sent.
        fuser::MountOption::DefaultPermissions,
    ];
    // Two threads: a request blocked on an underlying fsync leaves one to serve others.
    cfg.n_threads = Some(fs::THREADS);
    match fuser::mount(fs, mnt, &cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lazyfs: mount {mnt}: {e}");
            ExitCode::FAILURE
        }
    }
}
