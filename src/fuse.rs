//! The `fuser::Filesystem` adapter: converts FUSE requests to core calls and back. No logic
//! of its own beyond type conversion, and moving requests that may wait on a disk off the
//! io_uring threads.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, Errno as FErrno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo,
    InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::fs::{Attr, Ctx, Errno, Fs, SetAttr, TimeSet};
use crate::meta::Kind;

/// Attributes and entries may be cached by the kernel this long; every change goes through
/// this mount, so the kernel's view only lags for changes made by fsck or repair.
const TTL: Duration = Duration::from_secs(1);
/// Largest request the kernel sends us.
pub const MAX_WRITE_BYTES: u32 = 1 << 20;

pub struct FuseFs {
    pub fs: Arc<Fs>,
    /// Ask the kernel for FUSE over io_uring at INIT (used only if it offers it).
    pub io_uring: bool,
    /// Workers for requests that may wait on a disk, started on first use.
    slow: std::sync::OnceLock<Offload>,
}

impl FuseFs {
    pub fn new(fs: Arc<Fs>, io_uring: bool) -> FuseFs {
        FuseFs {
            fs,
            io_uring,
            slow: std::sync::OnceLock::new(),
        }
    }

    /// Runs a request that may wait on a disk (fsync, fsyncdir; flush and release when
    /// `Fs::flush_may_wait`). Over io_uring it goes to a worker: a ring thread that waits
    /// serves nothing else, and a CPU has two, so a stalled disk would hold up that CPU's
    /// requests for files elsewhere (the entry it holds meanwhile is made up for by a spare
    /// one, see vendor/fuser/src/ring.rs). Over /dev/fuse (any thread takes any request), and
    /// when it will not wait, it runs here: a hop to a worker and back costs a small file's
    /// create or overwrite about a third of its rate (bench-fsync over io_uring).
    fn slow(&self, may_wait: bool, f: impl FnOnce() + Send + 'static) {
        if !may_wait || fuser::io_uring_threads() == 0 {
            return f();
        }
        self.slow.get_or_init(Offload::start).run(f);
    }
}

type SlowJob = Box<dyn FnOnce() + Send>;

/// Worker threads for `FuseFs::slow`, with a bounded queue.
struct Offload {
    tx: std::sync::mpsc::SyncSender<SlowJob>,
}

/// Requests waiting on disks at once off the ring threads; beyond the queue they run on the
/// ring thread (back-pressure).
const SLOW_THREADS: usize = 8;
const SLOW_QUEUE_MAX: usize = 64;

impl Offload {
    fn start() -> Offload {
        let (tx, rx) = std::sync::mpsc::sync_channel::<SlowJob>(SLOW_QUEUE_MAX);
        let rx = Arc::new(parking_lot::Mutex::new(rx));
        for i in 0..SLOW_THREADS {
            let rx = rx.clone();
            // A job that panics answers EIO (its reply's drop); the thread is restarted.
            let r = crate::supervise::spawn(format!("fuse-slow-{i}"), move || loop {
                let job = rx.lock().recv();
                match job {
                    Ok(job) => job(),
                    Err(_) => return,
                }
            });
            if let Err(e) = r {
                tracing::warn!("cannot start fuse-slow-{i}: {e}");
            }
        }
        Offload { tx }
    }

    fn run(&self, f: impl FnOnce() + Send + 'static) {
        use std::sync::mpsc::TrySendError;
        if let Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) =
            self.tx.try_send(Box::new(f))
        {
            job();
        }
    }
}

/// FUSE over io_uring: threads per CPU queue and entries (1 MiB payload each) per thread.
/// Two threads with one entry each beat one thread with two (paired rounds: unlink 11.7k-13.1k
/// vs 14.1k-14.9k/s, O_DIRECT 4 KiB reads 50k vs 64k-66k IOPS), and a request that blocks
/// (fsync) leaves the CPU's other thread to serve it.
pub const RING_THREADS_PER_CPU: usize = 2;
pub const RING_ENTRIES_PER_THREAD: usize = 1;

fn err(e: Errno) -> FErrno {
    FErrno::from_i32(e.0)
}

fn ctx(req: &Request) -> Ctx {
    Ctx {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

fn kind(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDev => FileType::CharDevice,
        Kind::BlockDev => FileType::BlockDevice,
    }
}

fn attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.crtime,
        kind: kind(a.kind),
        perm: a.perm as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: 1 << 20,
        flags: 0,
    }
}

fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(t),
    }
}

fn open_flags() -> FopenFlags {
    // All changes pass through this mount, so the page cache stays valid across opens.
    FopenFlags::FOPEN_KEEP_CACHE
}

impl fuser::Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_WRITE_BYTES);
        let _ = config.set_max_readahead(MAX_WRITE_BYTES);
        let _ = config.set_max_background(64);
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        let _ = config.add_capabilities(InitFlags::FUSE_MAX_PAGES);
        if self.io_uring
            && config
                .add_capabilities(InitFlags::FUSE_OVER_IO_URING)
                .is_err()
        {
            tracing::info!(
                "the kernel does not offer FUSE over io_uring (Linux 6.14+ with \
                 /sys/module/fuse/parameters/enable_uring = Y): using /dev/fuse"
            );
        }
        Ok(())
    }

    fn destroy(&mut self) {
        if let Err(e) = self.fs.flush_all().and_then(|_| self.fs.sync_all()) {
            tracing::error!("flush at unmount failed: errno {}", e.0);
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.fs.lookup(parent.0, name.as_bytes()) {
            Ok(a) => reply.entry(&TTL, &attr(&a), Generation(0)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0) {
            Ok(a) => reply.attr(&TTL, &attr(&a)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let sa = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time_set),
            mtime: mtime.map(time_set),
        };
        match self.fs.setattr(ctx(req), ino.0, &sa) {
            Ok(a) => reply.attr(&TTL, &attr(&a)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(err(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        match self
            .fs
            .mknod(ctx(req), parent.0, name.as_bytes(), mode, umask, rdev)
        {
            Ok(a) => reply.entry(&TTL, &attr(&a), Generation(0)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        match self
            .fs
            .mkdir(ctx(req), parent.0, name.as_bytes(), mode, umask)
        {
            Ok(a) => reply.entry(&TTL, &attr(&a), Generation(0)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.fs.unlink(parent.0, name.as_bytes()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.fs.rmdir(parent.0, name.as_bytes()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        match self.fs.symlink(
            ctx(req),
            parent.0,
            link_name.as_bytes(),
            target.as_os_str().as_bytes(),
        ) {
            Ok(a) => reply.entry(&TTL, &attr(&a), Generation(0)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match self.fs.rename(
            parent.0,
            name.as_bytes(),
            newparent.0,
            newname.as_bytes(),
            flags.bits(),
        ) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        match self.fs.link(ino.0, newparent.0, newname.as_bytes()) {
            Ok(a) => reply.entry(&TTL, &attr(&a), Generation(0)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.open(ino.0, flags.0) {
            Ok(fh) => reply.opened(FileHandle(fh), open_flags()),
            Err(e) => reply.error(err(e)),
        }
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.fs.read_as(ino.0, offset, size, stream(req, fh)) {
            Ok(d) => {
                reply.data(&d);
                self.fs.recycle(d);
            }
            Err(e) => reply.error(err(e)),
        }
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // The file's flags now (fcntl may have changed O_APPEND); writeback of a shared
        // mapping carries no flags of its own and never appends.
        let append =
            !write_flags.contains(WriteFlags::FUSE_WRITE_CACHE) && flags.0 & libc::O_APPEND != 0;
        match self
            .fs
            .write_as(fh.0, offset, data, stream(req, fh), Some(append))
        {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(err(e)),
        }
    }

    /// No ioctls here: ENOTTY, as any file without them answers. Quietly: isatty() on every
    /// Python open() lands here, and fuser's default logged a warning for each (1.6 MB of
    /// log per 10,000 files created).
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(FErrno::ENOTTY);
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let fs = self.fs.clone();
        self.slow(fs.flush_may_wait(ino.0), move || match fs.flush(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        });
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let fs = self.fs.clone();
        self.slow(fs.flush_may_wait(ino.0), move || match fs.release(fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let fs = self.fs.clone();
        self.slow(true, move || match fs.fsync(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut offset = offset;
        loop {
            let ents = match self.fs.readdir(ino.0, offset) {
                Ok(e) => e,
                Err(e) => return reply.error(err(e)),
            };
            if ents.is_empty() {
                break;
            }
            for e in ents {
                if reply.add(
                    INodeNo(e.ino),
                    e.offset,
                    kind(e.kind),
                    OsStr::from_bytes(&e.name),
                ) {
                    return reply.ok();
                }
                offset = e.offset;
            }
        }
        reply.ok()
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let fs = self.fs.clone();
        self.slow(true, move || match fs.sync_all() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // Test hook: a handler that panics is answered EIO and the session goes on.
        crate::supervise::fault_point("fuse-statfs");
        let s = self.fs.statfs();
        const BS: u64 = 4096;
        reply.statfs(
            s.total_bytes / BS,
            s.free_bytes / BS,
            s.free_bytes / BS,
            s.files_free.saturating_add(1_000_000),
            s.files_free,
            BS as u32,
            255,
            BS as u32,
        );
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        match self.fs.setxattr(ino.0, name.as_bytes(), value, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.fs.getxattr(ino.0, name.as_bytes()) {
            Ok(v) => xattr_reply(reply, &v, size),
            Err(e) => reply.error(err(e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.fs.listxattr(ino.0) {
            Ok(v) => xattr_reply(reply, &v, size),
            Err(e) => reply.error(err(e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.fs.removexattr(ino.0, name.as_bytes()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // Permission checks are the kernel's (default_permissions); only existence is ours.
        match self.fs.getattr(ino.0) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self
            .fs
            .create(ctx(req), parent.0, name.as_bytes(), mode, umask, flags)
        {
            Ok((a, fh)) => {
                reply.created(&TTL, &attr(&a), Generation(0), FileHandle(fh), open_flags())
            }
            Err(e) => reply.error(err(e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        match self.fs.fallocate(ino.0, offset, length, mode) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }
}

fn xattr_reply(reply: ReplyXattr, v: &[u8], size: u32) {
    if size == 0 {
        reply.size(v.len() as u32);
    } else if (size as usize) < v.len() {
        reply.error(FErrno::from_i32(libc::ERANGE));
    } else {
        reply.data(v);
    }
}

/// Mount options used for every foreshard mount.
pub fn config(threads: usize, io_uring: bool) -> fuser::Config {
    use fuser::MountOption as O;
    let mut c = fuser::Config::default();
    c.mount_options = vec![
        O::FSName("foreshard".into()),
        O::Subtype("foreshard".into()),
        O::DefaultPermissions,
    ];
    c.acl = fuser::SessionACL::All;
    c.n_threads = Some(threads);
    c.clone_fd = true;
    if io_uring {
        c.io_uring_threads = RING_THREADS_PER_CPU;
        c.io_uring_depth = RING_ENTRIES_PER_THREAD;
    }
    c
}

/// The access analyzer's stream of a request: its process, or its file handle when the
/// kernel does not say (writeback and readahead run without a pid).
fn stream(req: &Request, fh: FileHandle) -> u64 {
    match req.pid() {
        0 => fh.0 | 1 << 63,
        pid => u64::from(pid),
    }
}
