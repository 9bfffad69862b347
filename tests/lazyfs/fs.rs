//! The `fuser::Filesystem` of lazyfs: namespace calls pass through to the underlying
//! directory at once, file data goes to the per-inode `Dirty` copy until fsync.

use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, DirEntryExt, FileExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
    WriteFlags,
};

use crate::dirty::Dirty;

/// Request threads (see main).
pub const THREADS: usize = 2;
/// Unsynced pages kept in memory over all files; past it the oldest dirty file is written
/// back and synced (what kernel writeback would do long before a power cut).
pub const DIRTY_BYTES_MAX: u64 = 1 << 30;
/// Entries one directory listing may hold (a listing is read whole at opendir).
pub const DIR_ENTRIES_MAX: usize = 1 << 20;
/// Largest write the kernel sends.
const MAX_WRITE_BYTES: u32 = 1 << 20;
/// Every change goes through this mount, so cached attributes and entries stay right.
const TTL: Duration = Duration::from_secs(1);

/// A file the layer has open on the underlying directory: while it has open handles or
/// unsynced data.
struct Node {
    file: Arc<File>,
    opens: u32,
    dirty: Option<Dirty>,
}

enum Handle {
    /// An open file (requests carry its inode).
    File,
    Dir(Vec<(u64, FileType, OsString)>),
}

#[derive(Default)]
struct State {
    /// FUSE inode -> one underlying path naming it (renames rewrite it, unlinking the last
    /// link drops it).
    paths: HashMap<u64, PathBuf>,
    nodes: HashMap<u64, Node>,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
    /// Sum of `Dirty::bytes` over all nodes.
    dirty_bytes: u64,
    /// Orders files by when they became dirty.
    dirty_seq: u64,
}

pub struct Lazy {
    /// The underlying directory's st_ino: FUSE calls it 1.
    root_ino: u64,
    st: Mutex<State>,
}

fn errno(e: io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Converts a libc return value (-1 and errno on failure).
fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn kind(ft: std::fs::FileType) -> FileType {
    FileType::from_std(ft).unwrap_or(FileType::RegularFile)
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    if secs < 0 {
        return UNIX_EPOCH;
    }
    UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
}

impl Lazy {
    pub fn new(root: PathBuf) -> io::Result<Lazy> {
        let md = std::fs::metadata(&root)?;
        if !md.is_dir() {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        let mut st = State::default();
        st.paths.insert(1, root);
        st.next_fh = 1;
        Ok(Lazy {
            root_ino: md.ino(),
            st: Mutex::new(st),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicked request thread leaves the state as consistent as any other point.
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fuse_ino(&self, st_ino: u64) -> u64 {
        if st_ino == self.root_ino {
            1
        } else {
            st_ino
        }
    }

    fn attr(&self, md: &Metadata, st: &State) -> FileAttr {
        let ino = self.fuse_ino(md.ino());
        let size = match st.nodes.get(&ino).and_then(|n| n.dirty.as_ref()) {
            Some(d) => d.size,
            None => md.size(),
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: time(md.atime(), md.atime_nsec()),
            mtime: time(md.mtime(), md.mtime_nsec()),
            ctime: time(md.ctime(), md.ctime_nsec()),
            crtime: UNIX_EPOCH,
            kind: kind(md.file_type()),
            perm: (md.mode() & 0o7777) as u16,
            nlink: md.nlink() as u32,
            uid: md.uid(),
            gid: md.gid(),
            rdev: md.rdev() as u32,
            blksize: 4096,
            flags: 0,
        }
    }

    /// lstat of `path`, remembered as the path of its inode; the entry reply's attributes.
    fn enter(&self, st: &mut State, path: PathBuf) -> io::Result<FileAttr> {
        let md = std::fs::symlink_metadata(&path)?;
        let a = self.attr(&md, st);
        st.paths.insert(a.ino.0, path);
        Ok(a)
    }

    fn reply_entry(&self, path: PathBuf, reply: ReplyEntry) {
        let mut st = self.lock();
        match self.enter(&mut st, path) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    /// unlink and rmdir: `rm` the name; the inode is forgotten with its last link.
    fn remove(
        &self,
        parent: INodeNo,
        name: &OsStr,
        reply: ReplyEmpty,
        rm: impl FnOnce(&Path) -> io::Result<()>,
    ) {
        let mut st = self.lock();
        let r = child(&st, parent, name).and_then(|p| {
            let gone = last_link(&p, self);
            rm(&p)?;
            Ok(gone)
        });
        match r {
            Ok(gone) => {
                if let Some(ino) = gone {
                    forget(&mut st, ino);
                }
                reply.ok()
            }
            Err(e) => reply.error(errno(e)),
        }
    }
}

/// lstat of an inode: by its path, or by its open file once unlinked (fstat of an open
/// unlinked file).
fn stat(st: &State, ino: u64) -> io::Result<Metadata> {
    match (path_of(st, ino), st.nodes.get(&ino)) {
        (Ok(p), _) => std::fs::symlink_metadata(p),
        (Err(_), Some(n)) => n.file.metadata(),
        (Err(e), None) => Err(e),
    }
}

fn path_of(st: &State, ino: u64) -> io::Result<PathBuf> {
    st.paths
        .get(&ino)
        .cloned()
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
}

fn child(st: &State, parent: INodeNo, name: &OsStr) -> io::Result<PathBuf> {
    Ok(path_of(st, parent.0)?.join(name))
}

/// The open node of `ino`, opening its underlying file read-write when it has none.
fn node(st: &mut State, ino: u64) -> io::Result<&mut Node> {
    if !st.nodes.contains_key(&ino) {
        let path = path_of(st, ino)?;
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let n = Node {
            file: Arc::new(file),
            opens: 0,
            dirty: None,
        };
        st.nodes.insert(ino, n);
    }
    Ok(st.nodes.get_mut(&ino).expect("inserted above"))
}

/// The dirty copy of `ino`, started from its underlying file's current length.
fn dirty(st: &mut State, ino: u64) -> io::Result<(&File, &mut Dirty)> {
    st.dirty_seq += 1;
    let seq = st.dirty_seq;
    let n = node(st, ino)?;
    if n.dirty.is_none() {
        let len = n.file.metadata()?.len();
        n.dirty = Some(Dirty::new(len, seq));
    }
    let Node { file, dirty, .. } = n;
    Ok((&**file, dirty.as_mut().expect("made above")))
}

/// Runs a change to `ino`'s dirty copy and keeps the memory account.
fn change(
    st: &mut State,
    ino: u64,
    f: impl FnOnce(&File, &mut Dirty) -> io::Result<()>,
) -> io::Result<()> {
    let (file, d) = dirty(st, ino)?;
    let before = d.bytes();
    let r = f(file, d);
    let after = d.bytes();
    st.dirty_bytes = st.dirty_bytes + after - before;
    r?;
    while st.dirty_bytes > DIRTY_BYTES_MAX {
        let oldest = st
            .nodes
            .iter()
            .filter_map(|(i, n)| n.dirty.as_ref().map(|d| (d.since, *i)))
            .min();
        let Some((_, victim)) = oldest else { break };
        sync(st, victim)?;
    }
    Ok(())
}

/// Writes `ino`'s dirty copy back to its underlying file and syncs it (fsync, memory bound,
/// fallocate). The copy is dropped only once it is on the underlying file.
fn sync(st: &mut State, ino: u64) -> io::Result<()> {
    let Some(n) = st.nodes.get_mut(&ino) else {
        return Ok(());
    };
    let freed = match n.dirty.take() {
        Some(d) => {
            if let Err(e) = d.write_back(&n.file) {
                n.dirty = Some(d);
                return Err(e);
            }
            d.bytes()
        }
        None => {
            n.file.sync_data()?;
            0
        }
    };
    let idle = n.opens == 0;
    st.dirty_bytes -= freed;
    if idle {
        st.nodes.remove(&ino);
    }
    Ok(())
}

/// Forgets an inode whose last name is gone: its path, and its node unless still open
/// (writes to an open unlinked file are kept until its last close).
fn forget(st: &mut State, ino: u64) {
    st.paths.remove(&ino);
    if st.nodes.get(&ino).is_some_and(|n| n.opens == 0) {
        if let Some(d) = st.nodes.remove(&ino).and_then(|n| n.dirty) {
            st.dirty_bytes -= d.bytes();
        }
    }
}

/// After `from` was renamed to `to`: every path at or under `from` moves under `to` (and
/// the other way round for RENAME_EXCHANGE).
fn move_paths(st: &mut State, from: &Path, to: &Path, exchange: bool) {
    for p in st.paths.values_mut() {
        if let Ok(rest) = p.strip_prefix(from) {
            *p = join_rest(to, rest);
        } else if exchange {
            if let Ok(rest) = p.strip_prefix(to) {
                *p = join_rest(from, rest);
            }
        }
    }
}

fn join_rest(base: &Path, rest: &Path) -> PathBuf {
    if rest.as_os_str().is_empty() {
        base.to_path_buf()
    } else {
        base.join(rest)
    }
}

/// The inode a name is about to lose, if this was its last link (or it is a directory).
fn last_link(path: &Path, lazy: &Lazy) -> Option<u64> {
    let md = std::fs::symlink_metadata(path).ok()?;
    (md.is_dir() || md.nlink() <= 1).then(|| lazy.fuse_ino(md.ino()))
}

fn utimens(path: &Path, atime: Option<TimeOrNow>, mtime: Option<TimeOrNow>) -> io::Result<()> {
    let ts = |t: Option<TimeOrNow>| match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(TimeOrNow::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(TimeOrNow::SpecificTime(t)) => {
            let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
            libc::timespec {
                tv_sec: d.as_secs() as libc::time_t,
                tv_nsec: d.subsec_nanos() as libc::c_long,
            }
        }
    };
    let times = [ts(atime), ts(mtime)];
    let c = cstr(path)?;
    check(unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

/// The listing of a directory for one opendir: ".", ".." and its entries, with inodes.
fn listing(lazy: &Lazy, path: &Path) -> io::Result<Vec<(u64, FileType, OsString)>> {
    let md = std::fs::metadata(path)?;
    let up = std::fs::metadata(path.join(".."))?;
    let mut out = vec![
        (lazy.fuse_ino(md.ino()), FileType::Directory, ".".into()),
        (lazy.fuse_ino(up.ino()), FileType::Directory, "..".into()),
    ];
    for e in std::fs::read_dir(path)? {
        let e = e?;
        if out.len() >= DIR_ENTRIES_MAX {
            return Err(io::Error::from_raw_os_error(libc::EFBIG));
        }
        out.push((lazy.fuse_ino(e.ino()), kind(e.file_type()?), e.file_name()));
    }
    Ok(out)
}

fn new_handle(st: &mut State, h: Handle) -> FileHandle {
    let fh = st.next_fh;
    st.next_fh += 1;
    st.handles.insert(fh, h);
    FileHandle(fh)
}

/// Drops one open of `ino`; the node goes when nothing holds it: no unsynced data, or no
/// name left (an unlinked file's data can never be read or synced again).
fn close(st: &mut State, ino: u64) {
    let named = st.paths.contains_key(&ino);
    let Some(n) = st.nodes.get_mut(&ino) else {
        return;
    };
    n.opens = n.opens.saturating_sub(1);
    if n.opens == 0 && (n.dirty.is_none() || !named) {
        if let Some(d) = st.nodes.remove(&ino).and_then(|n| n.dirty) {
            st.dirty_bytes -= d.bytes();
        }
    }
}

impl fuser::Filesystem for Lazy {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let _ = config.set_max_write(MAX_WRITE_BYTES);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let p = child(&self.lock(), parent, name);
        match p {
            Ok(p) => self.reply_entry(p, reply),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let st = self.lock();
        let r = stat(&st, ino.0);
        match r {
            Ok(md) => reply.attr(&TTL, &self.attr(&md, &st)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
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
        let mut st = self.lock();
        let r = (|| {
            // Only mode, owner and times need the path: ftruncate of an open unlinked file
            // has none.
            let named = st.paths.get(&ino.0).cloned();
            let path = || {
                named
                    .clone()
                    .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
            };
            if let Some(m) = mode {
                let c = cstr(&path()?)?;
                check(unsafe { libc::chmod(c.as_ptr(), m & 0o7777) })?;
            }
            if uid.is_some() || gid.is_some() {
                std::os::unix::fs::lchown(path()?, uid, gid)?;
            }
            if let Some(len) = size {
                // A truncate is data: it waits in the copy like a write.
                change(&mut st, ino.0, |_, d| {
                    d.truncate(len);
                    Ok(())
                })?;
            }
            if atime.is_some() || mtime.is_some() {
                utimens(&path()?, atime, mtime)?;
            }
            Ok(self.attr(&stat(&st, ino.0)?, &st))
        })();
        match r {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let r = path_of(&self.lock(), ino.0).and_then(std::fs::read_link);
        match r {
            Ok(t) => reply.data(t.as_os_str().as_bytes()),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let r = child(&self.lock(), parent, name).and_then(|p| {
            std::fs::DirBuilder::new().mode(mode & 0o7777).create(&p)?;
            Ok(p)
        });
        match r {
            Ok(p) => self.reply_entry(p, reply),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, reply, |p| std::fs::remove_file(p));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, reply, |p| std::fs::remove_dir(p));
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let r = child(&self.lock(), parent, link_name).and_then(|p| {
            std::os::unix::fs::symlink(target, &p)?;
            Ok(p)
        });
        match r {
            Ok(p) => self.reply_entry(p, reply),
            Err(e) => reply.error(errno(e)),
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
        let mut st = self.lock();
        match rename(self, &mut st, (parent, name), (newparent, newname), flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
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
        let st = self.lock();
        let r = path_of(&st, ino.0).and_then(|from| {
            let to = child(&st, newparent, newname)?;
            std::fs::hard_link(from, &to)?;
            Ok(to)
        });
        drop(st);
        match r {
            // The entry remembers the new name; the old one stays valid for the inode too.
            Ok(p) => self.reply_entry(p, reply),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // Any flags (O_DIRECT, O_APPEND, access mode) are the kernel's business: the
        // underlying file is always open read-write without them.
        let mut st = self.lock();
        let r = node(&mut st, ino.0).map(|n| n.opens += 1);
        match r {
            Ok(()) => {
                let fh = new_handle(&mut st, Handle::File);
                reply.opened(fh, FopenFlags::empty())
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match read(&mut self.lock(), ino.0, offset, size as usize) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let r = change(&mut self.lock(), ino.0, |f, d| d.write(f, offset, data));
        match r {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close() makes nothing durable.
        reply.ok();
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
        let mut st = self.lock();
        if st.handles.remove(&fh.0).is_some() {
            close(&mut st, ino.0);
        }
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match sync(&mut self.lock(), ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut st = self.lock();
        let r = path_of(&st, ino.0).and_then(|p| listing(self, &p));
        match r {
            Ok(l) => {
                let fh = new_handle(&mut st, Handle::Dir(l));
                reply.opened(fh, FopenFlags::empty())
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let st = self.lock();
        let Some(Handle::Dir(l)) = st.handles.get(&fh.0) else {
            return reply.error(Errno::from_i32(libc::EBADF));
        };
        // Offsets are positions in the listing taken at opendir.
        for (i, (ino, k, name)) in l.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), i as u64 + 1, *k, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.lock().handles.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let r = path_of(&self.lock(), ino.0).and_then(|p| File::open(p)?.sync_all());
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match path_of(&self.lock(), 1).and_then(|p| statvfs(&p)) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let r = path_of(&self.lock(), ino.0).and_then(|p| {
            let c = cstr(&p)?;
            check(unsafe { libc::access(c.as_ptr(), mask.bits()) })
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut st = self.lock();
        match create(self, &mut st, parent, name, mode, flags) {
            Ok((a, fh)) => reply.created(&TTL, &a, Generation(0), fh, FopenFlags::empty()),
            Err(e) => reply.error(errno(e)),
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
        let r = fallocate(&mut self.lock(), ino.0, offset, length, mode);
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }
}

/// Plain allocation (mode 0 or KEEP_SIZE) reserves space on the underlying file at once
/// (harmless: no byte changes) and treats a size growth like a growing truncate, which is
/// data. Any other mode (punch, zero, collapse, insert) changes bytes on the underlying file,
/// so the copy is written back first and the call passes through.
fn fallocate(st: &mut State, ino: u64, off: u64, len: u64, mode: i32) -> io::Result<()> {
    let plain = mode & !libc::FALLOC_FL_KEEP_SIZE == 0;
    if !plain {
        sync(st, ino)?;
    }
    let n = node(st, ino)?;
    let fd = n.file.as_raw_fd();
    let pass = if plain {
        libc::FALLOC_FL_KEEP_SIZE
    } else {
        mode
    };
    let r = check(unsafe { libc::fallocate(fd, pass, off as libc::off_t, len as libc::off_t) });
    if r.is_ok() && mode == 0 {
        change(st, ino, |_, d| {
            d.truncate(d.size.max(off + len));
            Ok(())
        })?;
    }
    if st
        .nodes
        .get(&ino)
        .is_some_and(|n| n.opens == 0 && n.dirty.is_none())
    {
        st.nodes.remove(&ino);
    }
    r
}

fn statvfs(p: &Path) -> io::Result<libc::statvfs> {
    let c = cstr(p)?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    check(unsafe { libc::statvfs(c.as_ptr(), &mut s) })?;
    Ok(s)
}

/// Reads through the dirty copy if there is one, else from the underlying file.
fn read(st: &mut State, ino: u64, offset: u64, size: usize) -> io::Result<Vec<u8>> {
    let n = node(st, ino)?;
    let r = match &n.dirty {
        Some(d) => d.read(&n.file, offset, size),
        None => {
            let mut buf = vec![0u8; size];
            let mut done = 0;
            while done < size {
                match n.file.read_at(&mut buf[done..], offset + done as u64)? {
                    0 => break,
                    k => done += k,
                }
            }
            buf.truncate(done);
            Ok(buf)
        }
    };
    if n.opens == 0 && n.dirty.is_none() {
        st.nodes.remove(&ino);
    }
    r
}

fn rename(
    lazy: &Lazy,
    st: &mut State,
    (parent, name): (INodeNo, &OsStr),
    (newparent, newname): (INodeNo, &OsStr),
    flags: RenameFlags,
) -> io::Result<()> {
    let from = child(st, parent, name)?;
    let to = child(st, newparent, newname)?;
    let exchange = flags.contains(RenameFlags::RENAME_EXCHANGE);
    let moved = std::fs::symlink_metadata(&from)?.ino();
    // The inode a plain rename replaces loses that name (it is gone if it was the last).
    let replaced = if exchange {
        None
    } else {
        last_link(&to, lazy).filter(|i| *i != lazy.fuse_ino(moved))
    };
    let (cf, ct) = (cstr(&from)?, cstr(&to)?);
    check(unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            cf.as_ptr(),
            libc::AT_FDCWD,
            ct.as_ptr(),
            flags.bits(),
        )
    })?;
    if let Some(ino) = replaced {
        forget(st, ino);
    }
    move_paths(st, &from, &to, exchange);
    Ok(())
}

fn create(
    lazy: &Lazy,
    st: &mut State,
    parent: INodeNo,
    name: &OsStr,
    mode: u32,
    flags: i32,
) -> io::Result<(FileAttr, FileHandle)> {
    let path = child(st, parent, name)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(mode & 0o7777)
        .custom_flags(flags & libc::O_EXCL)
        .open(&path)?;
    let ino = lazy.fuse_ino(file.metadata()?.ino());
    st.paths.insert(ino, path.clone());
    match st.nodes.get_mut(&ino) {
        Some(n) => n.opens += 1,
        None => {
            let n = Node {
                file: Arc::new(file),
                opens: 1,
                dirty: None,
            };
            st.nodes.insert(ino, n);
        }
    }
    if flags & libc::O_TRUNC != 0 {
        change(st, ino, |_, d| {
            d.truncate(0);
            Ok(())
        })?;
    }
    let fh = new_handle(st, Handle::File);
    let a = lazy.enter(st, path)?;
    Ok((a, fh))
}
