//! Namespace operations: lookup, create, link, unlink, rename, attributes, xattrs, readdir.
//! Each change is one metadata batch, taken under the `ns` lock.

use super::{now_ns, time_to_ns, Attr, Ctx, DirEntryOut, Errno, Fs, FsResult};
use crate::meta::{Batch, DirentVal, InodeRec, Kind, ROOT_INO};

const NAME_LEN_MAX: usize = 255;
const SYMLINK_LEN_MAX: usize = 4095;
const XATTR_NAME_LEN_MAX: usize = 255;
const XATTR_VALUE_LEN_MAX: usize = 64 * 1024;
/// Names plus values of one inode's xattrs: room for one largest value, and a bound on what
/// any user who may write one file can put into the metadata disk through it.
const XATTR_BYTES_PER_INODE_MAX: usize = 128 * 1024;
/// Xattrs per inode: 256 names of at most 255 bytes fit listxattr's 64 KiB.
const XATTR_COUNT_PER_INODE_MAX: usize = 256;
/// Entries returned by one readdir call; the adapter asks again from the last offset.
const READDIR_BATCH_MAX: usize = 512;

/// What a new inode is made of.
struct NewInode {
    kind: Kind,
    perm: u32,
    rdev: u32,
    symlink: Option<Vec<u8>>,
}

#[derive(Clone, Copy, Debug)]
pub enum TimeSet {
    Now,
    At(std::time::SystemTime),
}

#[derive(Clone, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
}

fn check_name(name: &[u8]) -> FsResult<()> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return Err(Errno::EINVAL);
    }
    if name.len() > NAME_LEN_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(())
}

impl Fs {
    /// Path of every reachable inode (first name found for hard-linked files).
    pub fn paths(&self) -> anyhow::Result<std::collections::HashMap<u64, String>> {
        let mut out = std::collections::HashMap::new();
        out.insert(ROOT_INO, "/".to_string());
        let mut stack = vec![(ROOT_INO, String::new())];
        while let Some((dir, prefix)) = stack.pop() {
            let mut kids = Vec::new();
            self.meta.read_dir(dir, 0, |e| {
                kids.push(e);
                true
            })?;
            for e in kids {
                let p = format!("{prefix}/{}", String::from_utf8_lossy(&e.name));
                if out.contains_key(&e.ino) {
                    continue;
                }
                out.insert(e.ino, p.clone());
                if e.kind == Kind::Dir {
                    stack.push((e.ino, p));
                }
            }
        }
        Ok(out)
    }

    /// Applies `f` to an inode's attributes (the in-memory node's if any) and adds the result
    /// to `b`. Caller holds `ns`.
    fn update_rec(
        &self,
        ino: u64,
        b: &mut Batch<'_>,
        f: impl FnOnce(&mut InodeRec),
    ) -> FsResult<InodeRec> {
        if let Some(node) = self.node(ino) {
            let mut n = node.inner.lock();
            f(&mut n.rec);
            b.put_inode(ino, &n.rec);
            n.rec_dirty = false;
            return Ok(n.rec.clone());
        }
        let mut rec = self.meta.inode(ino)?.ok_or(Errno::ENOENT)?;
        f(&mut rec);
        b.put_inode(ino, &rec);
        Ok(rec)
    }

    fn dir_rec(&self, ino: u64) -> FsResult<InodeRec> {
        let rec = self.rec(ino)?;
        if rec.kind != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        Ok(rec)
    }

    pub fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<Attr> {
        if name.len() > NAME_LEN_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        let ino = match name {
            b"." => parent,
            b".." => self.dir_rec(parent)?.parent,
            _ => self.meta.lookup(parent, name)?.ok_or(Errno::ENOENT)?.ino,
        };
        self.getattr(ino)
    }

    /// Creates a new inode named `name` in `parent`.
    fn make(&self, ctx: Ctx, parent: u64, name: &[u8], new: NewInode) -> FsResult<Attr> {
        let NewInode {
            kind,
            perm,
            rdev,
            symlink,
        } = new;
        check_name(name)?;
        let _g = self.ns.lock();
        let prec = self.dir_rec(parent)?;
        if prec.nlink == 0 {
            return Err(Errno::ENOENT);
        }
        if self.meta.lookup(parent, name)?.is_some() {
            return Err(Errno::EEXIST);
        }
        let now = now_ns();
        let mut perm = perm & 0o7777;
        // BSD group semantics under a set-group-ID directory.
        let gid = if prec.perm & libc::S_ISGID != 0 {
            if kind == Kind::Dir {
                perm |= libc::S_ISGID;
            }
            prec.gid
        } else {
            ctx.gid
        };
        let ino = self.meta.alloc_ino()?;
        let rec = InodeRec {
            kind,
            perm,
            uid: ctx.uid,
            gid,
            nlink: if kind == Kind::Dir { 2 } else { 1 },
            size: symlink.as_ref().map_or(0, |s| s.len() as u64),
            atime_ns: now,
            mtime_ns: now,
            ctime_ns: now,
            crtime_ns: now,
            rdev,
            parent: if kind == Kind::Dir { parent } else { 0 },
            symlink,
            alloc: 0,
        };
        let mut b = self.meta.batch();
        b.put_inode(ino, &rec);
        b.put_dirent(parent, name, ino, kind);
        self.update_rec(parent, &mut b, |p| {
            if kind == Kind::Dir {
                p.nlink += 1;
            }
            p.mtime_ns = now;
            p.ctime_ns = now;
        })?;
        self.meta.write(b)?;
        Ok(self.attr_of(ino, &rec))
    }

    pub fn mknod(
        &self,
        ctx: Ctx,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        rdev: u32,
    ) -> FsResult<Attr> {
        self.growable()?;
        let kind = Kind::from_mode(mode).unwrap_or(Kind::File);
        if kind == Kind::Dir || kind == Kind::Symlink {
            return Err(Errno::EINVAL);
        }
        self.make(
            ctx,
            parent,
            name,
            NewInode {
                kind,
                perm: mode & !umask,
                rdev,
                symlink: None,
            },
        )
    }

    pub fn create(
        &self,
        ctx: Ctx,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> FsResult<(Attr, u64)> {
        self.growable()?;
        let attr = self.make(
            ctx,
            parent,
            name,
            NewInode {
                kind: Kind::File,
                perm: mode & !umask,
                rdev: 0,
                symlink: None,
            },
        )?;
        let fh = self.open(attr.ino, flags)?;
        Ok((attr, fh))
    }

    pub fn mkdir(
        &self,
        ctx: Ctx,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
    ) -> FsResult<Attr> {
        self.growable()?;
        self.make(
            ctx,
            parent,
            name,
            NewInode {
                kind: Kind::Dir,
                perm: mode & !umask,
                rdev: 0,
                symlink: None,
            },
        )
    }

    pub fn symlink(&self, ctx: Ctx, parent: u64, name: &[u8], target: &[u8]) -> FsResult<Attr> {
        self.growable()?;
        if target.is_empty() {
            return Err(Errno::ENOENT);
        }
        if target.len() > SYMLINK_LEN_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        self.make(
            ctx,
            parent,
            name,
            NewInode {
                kind: Kind::Symlink,
                perm: 0o777,
                rdev: 0,
                symlink: Some(target.to_vec()),
            },
        )
    }

    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        self.rec(ino)?.symlink.ok_or(Errno::EINVAL)
    }

    pub fn link(&self, ino: u64, newparent: u64, newname: &[u8]) -> FsResult<Attr> {
        self.growable()?;
        check_name(newname)?;
        let _g = self.ns.lock();
        let prec = self.dir_rec(newparent)?;
        if prec.nlink == 0 {
            return Err(Errno::ENOENT);
        }
        if self.rec(ino)?.kind == Kind::Dir {
            return Err(Errno::EPERM);
        }
        if self.meta.lookup(newparent, newname)?.is_some() {
            return Err(Errno::EEXIST);
        }
        let now = now_ns();
        let mut b = self.meta.batch();
        let rec = self.update_rec(ino, &mut b, |r| {
            r.nlink += 1;
            r.ctime_ns = now;
        })?;
        b.put_dirent(newparent, newname, ino, rec.kind);
        self.update_rec(newparent, &mut b, |p| {
            p.mtime_ns = now;
            p.ctime_ns = now;
        })?;
        b.del_orphan(ino);
        self.meta.write(b)?;
        self.getattr(ino)
    }

    /// Drops one link of `ino` inside batch `b`; an inode left with no link is freed after the
    /// batch is written (returned true), or kept as an orphan while it is open.
    fn drop_link(&self, ino: u64, b: &mut Batch<'_>, now: i64) -> FsResult<bool> {
        let rec = self.update_rec(ino, b, |r| {
            if r.kind == Kind::Dir {
                r.nlink = 0;
            } else {
                r.nlink = r.nlink.saturating_sub(1);
            }
            r.ctime_ns = now;
        })?;
        if rec.nlink > 0 {
            return Ok(false);
        }
        // Recorded in the same batch, so a crash before the inode is freed leaves it to the
        // start-up cleanup instead of leaking it.
        b.put_orphan(ino);
        Ok(self.node(ino).is_none())
    }

    pub fn unlink(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        self.writable()?;
        let _g = self.ns.lock();
        self.dir_rec(parent)?;
        let ent = self.meta.lookup(parent, name)?.ok_or(Errno::ENOENT)?;
        if ent.kind == Kind::Dir {
            return Err(Errno::EISDIR);
        }
        let now = now_ns();
        let mut b = self.meta.batch();
        b.del_dirent(parent, name);
        self.update_rec(parent, &mut b, |p| {
            p.mtime_ns = now;
            p.ctime_ns = now;
        })?;
        let free = self.drop_link(ent.ino, &mut b, now)?;
        let files = if free {
            self.delete_inode_into(ent.ino, &mut b)?
        } else {
            Vec::new()
        };
        self.meta.write(b)?;
        self.remove_versions(ent.ino, files);
        Ok(())
    }

    pub fn rmdir(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        self.writable()?;
        if name == b"." {
            return Err(Errno::EINVAL);
        }
        if name == b".." {
            return Err(Errno::ENOTEMPTY);
        }
        let _g = self.ns.lock();
        self.dir_rec(parent)?;
        let ent = self.meta.lookup(parent, name)?.ok_or(Errno::ENOENT)?;
        if ent.kind != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        if !self.meta.dir_is_empty(ent.ino)? {
            return Err(Errno::ENOTEMPTY);
        }
        let now = now_ns();
        let mut b = self.meta.batch();
        b.del_dirent(parent, name);
        self.update_rec(parent, &mut b, |p| {
            p.nlink -= 1;
            p.mtime_ns = now;
            p.ctime_ns = now;
        })?;
        let free = self.drop_link(ent.ino, &mut b, now)?;
        if free {
            self.delete_inode_into(ent.ino, &mut b)?;
        }
        self.meta.write(b)?;
        Ok(())
    }

    /// True when `ino` is `dir` or lies below it.
    fn is_within(&self, mut ino: u64, dir: u64) -> FsResult<bool> {
        loop {
            if ino == dir {
                return Ok(true);
            }
            if ino == ROOT_INO {
                return Ok(false);
            }
            ino = self.rec(ino)?.parent;
        }
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        self.writable()?;
        check_name(newname)?;
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        if flags & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) != 0 || (noreplace && exchange)
        {
            return Err(Errno::EINVAL);
        }
        let _g = self.ns.lock();
        self.dir_rec(parent)?;
        if self.dir_rec(newparent)?.nlink == 0 {
            return Err(Errno::ENOENT);
        }
        let src = self.meta.lookup(parent, name)?.ok_or(Errno::ENOENT)?;
        let dst = self.meta.lookup(newparent, newname)?;
        if src.kind == Kind::Dir && self.is_within(newparent, src.ino)? {
            return Err(Errno::EINVAL);
        }
        let from = (parent, name);
        let to = (newparent, newname);
        match dst {
            Some(_) if noreplace => Err(Errno::EEXIST),
            Some(d) if d.ino == src.ino => Ok(()),
            Some(d) if exchange => {
                if d.kind == Kind::Dir && self.is_within(parent, d.ino)? {
                    return Err(Errno::EINVAL);
                }
                self.rename_exchange(from, src, to, d)
            }
            None if exchange => Err(Errno::ENOENT),
            _ => self.rename_move(from, src, to, dst),
        }
    }

    /// RENAME_EXCHANGE: the two entries swap inodes (called under the namespace lock).
    fn rename_exchange(
        &self,
        (parent, name): (u64, &[u8]),
        src: DirentVal,
        (newparent, newname): (u64, &[u8]),
        d: DirentVal,
    ) -> FsResult<()> {
        let now = now_ns();
        let mut b = self.meta.batch();
        let touch = |p: &mut InodeRec| {
            p.mtime_ns = now;
            p.ctime_ns = now;
        };
        b.put_dirent(parent, name, d.ino, d.kind);
        b.put_dirent(newparent, newname, src.ino, src.kind);
        if parent != newparent {
            let delta = i64::from(src.kind == Kind::Dir) - i64::from(d.kind == Kind::Dir);
            self.update_rec(parent, &mut b, |p| {
                p.nlink = (i64::from(p.nlink) - delta) as u32;
                touch(p)
            })?;
            self.update_rec(newparent, &mut b, |p| {
                p.nlink = (i64::from(p.nlink) + delta) as u32;
                touch(p)
            })?;
        } else {
            self.update_rec(parent, &mut b, touch)?;
        }
        self.update_rec(src.ino, &mut b, |r| {
            r.ctime_ns = now;
            if r.kind == Kind::Dir {
                r.parent = newparent;
            }
        })?;
        self.update_rec(d.ino, &mut b, |r| {
            r.ctime_ns = now;
            if r.kind == Kind::Dir {
                r.parent = parent;
            }
        })?;
        self.meta.write(b)?;
        Ok(())
    }

    /// A plain rename, over `dst` when there is one (called under the namespace lock). The
    /// replaced inode's extent files are removed only after the batch that stops naming them
    /// is written (`remove_versions`).
    fn rename_move(
        &self,
        (parent, name): (u64, &[u8]),
        src: DirentVal,
        (newparent, newname): (u64, &[u8]),
        dst: Option<DirentVal>,
    ) -> FsResult<()> {
        let now = now_ns();
        let mut b = self.meta.batch();
        let mut free = None;
        let mut replaced_dir = false;
        if let Some(d) = dst {
            match (src.kind == Kind::Dir, d.kind == Kind::Dir) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                (true, true) if !self.meta.dir_is_empty(d.ino)? => return Err(Errno::ENOTEMPTY),
                _ => {}
            }
            // The replaced directory's ".." no longer counts toward newparent (applied with
            // newparent's other changes below: one update per record and batch).
            replaced_dir = d.kind == Kind::Dir;
            if self.drop_link(d.ino, &mut b, now)? {
                free = Some(d.ino);
            }
        }
        b.del_dirent(parent, name);
        b.put_dirent(newparent, newname, src.ino, src.kind);
        let is_dir = src.kind == Kind::Dir;
        // Link counts: a moved directory's ".." leaves parent for newparent.
        let parent_loses = u32::from(is_dir && parent != newparent);
        let newparent_change = i64::from(is_dir && parent != newparent) - i64::from(replaced_dir);
        self.update_rec(parent, &mut b, |p| {
            p.nlink -= parent_loses;
            if parent == newparent {
                p.nlink = (i64::from(p.nlink) + newparent_change) as u32;
            }
            p.mtime_ns = now;
            p.ctime_ns = now;
        })?;
        if parent != newparent {
            self.update_rec(newparent, &mut b, |p| {
                p.nlink = (i64::from(p.nlink) + newparent_change) as u32;
                p.mtime_ns = now;
                p.ctime_ns = now;
            })?;
        }
        self.update_rec(src.ino, &mut b, |r| {
            r.ctime_ns = now;
            if is_dir {
                r.parent = newparent;
            }
        })?;
        let files = match free {
            Some(ino) => self.delete_inode_into(ino, &mut b)?,
            None => Vec::new(),
        };
        self.meta.write(b)?;
        if let Some(ino) = free {
            self.remove_versions(ino, files);
        }
        Ok(())
    }

    /// Permission checks for setattr are the kernel's (mounted with default_permissions).
    pub fn setattr(&self, _ctx: Ctx, ino: u64, sa: &SetAttr) -> FsResult<Attr> {
        self.writable()?;
        let node = self.acquire(ino)?;
        let res = (|| {
            let mut n = node.inner.lock();
            let now = now_ns();
            if let Some(size) = sa.size {
                Self::wait_inflight(&node, &mut n)?;
                match n.rec.kind {
                    Kind::Dir => return Err(Errno::EISDIR),
                    Kind::File => {}
                    _ => return Err(Errno::EINVAL),
                }
                self.set_size(ino, &mut n, size)?;
                n.rec.mtime_ns = now;
                n.rec.ctime_ns = now;
            }
            let r = &mut n.rec;
            if let Some(mode) = sa.mode {
                r.perm = mode & 0o7777;
                r.ctime_ns = now;
            }
            if sa.uid.is_some() || sa.gid.is_some() {
                if let Some(uid) = sa.uid {
                    r.uid = uid;
                }
                if let Some(gid) = sa.gid {
                    r.gid = gid;
                }
                // Changing the owner of a non-directory drops set-ID privileges.
                if r.kind != Kind::Dir && sa.mode.is_none() {
                    r.perm &= !libc::S_ISUID;
                    if r.perm & libc::S_IXGRP != 0 {
                        r.perm &= !libc::S_ISGID;
                    }
                }
                r.ctime_ns = now;
            }
            let t = |s: TimeSet| match s {
                TimeSet::Now => now,
                TimeSet::At(t) => time_to_ns(t),
            };
            if let Some(a) = sa.atime {
                r.atime_ns = t(a);
                r.ctime_ns = now;
            }
            if let Some(m) = sa.mtime {
                r.mtime_ns = t(m);
                r.ctime_ns = now;
            }
            let mut b = self.meta.batch();
            b.put_inode(ino, &n.rec);
            self.meta.write(b)?;
            n.rec_dirty = false;
            Ok(())
        })();
        self.release_node(ino)?;
        res?;
        self.getattr(ino)
    }

    /// Up to a batch of entries after `offset` (0 = from the start; "." and ".." come first).
    pub fn readdir(&self, ino: u64, offset: u64) -> FsResult<Vec<DirEntryOut>> {
        let rec = self.dir_rec(ino)?;
        let mut out = Vec::new();
        if offset < 1 {
            out.push(DirEntryOut {
                ino,
                offset: 1,
                kind: Kind::Dir,
                name: b".".to_vec(),
            });
        }
        if offset < 2 {
            out.push(DirEntryOut {
                ino: rec.parent.max(ROOT_INO),
                offset: 2,
                kind: Kind::Dir,
                name: b"..".to_vec(),
            });
        }
        self.meta.read_dir(ino, offset.max(2) + 1, |e| {
            out.push(DirEntryOut {
                ino: e.ino,
                offset: e.cookie,
                kind: e.kind,
                name: e.name,
            });
            out.len() < READDIR_BATCH_MAX
        })?;
        Ok(out)
    }

    pub fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], flags: i32) -> FsResult<()> {
        self.growable()?;
        if name.is_empty() || name.len() > XATTR_NAME_LEN_MAX {
            return Err(Errno::ERANGE);
        }
        if value.len() > XATTR_VALUE_LEN_MAX {
            return Err(Errno::E2BIG);
        }
        if name.starts_with(b"system.") {
            return Err(Errno::EOPNOTSUPP);
        }
        let _g = self.ns.lock();
        let (mut exists, mut others, mut bytes) = (false, 0, name.len() + value.len());
        for (n, v) in self.meta.xattrs_of(ino)? {
            if n == name {
                exists = true;
            } else {
                others += 1;
                bytes += n.len() + v.len();
            }
        }
        if bytes > XATTR_BYTES_PER_INODE_MAX || others >= XATTR_COUNT_PER_INODE_MAX {
            return Err(Errno::ENOSPC);
        }
        if flags & libc::XATTR_CREATE != 0 && exists {
            return Err(Errno::EEXIST);
        }
        if flags & libc::XATTR_REPLACE != 0 && !exists {
            return Err(Errno::ENODATA);
        }
        let mut b = self.meta.batch();
        b.put_xattr(ino, name, value);
        self.update_rec(ino, &mut b, |r| r.ctime_ns = now_ns())?;
        self.meta.write(b)?;
        Ok(())
    }

    pub fn getxattr(&self, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        self.rec(ino)?;
        self.meta.xattr(ino, name)?.ok_or(Errno::ENODATA)
    }

    /// Names, each followed by a NUL, as listxattr(2) returns them.
    pub fn listxattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        self.rec(ino)?;
        let mut out = Vec::new();
        for (name, _) in self.meta.xattrs_of(ino)? {
            out.extend_from_slice(&name);
            out.push(0);
        }
        Ok(out)
    }

    pub fn removexattr(&self, ino: u64, name: &[u8]) -> FsResult<()> {
        self.writable()?;
        let _g = self.ns.lock();
        if self.meta.xattr(ino, name)?.is_none() {
            return Err(Errno::ENODATA);
        }
        let mut b = self.meta.batch();
        b.del_xattr(ino, name);
        self.update_rec(ino, &mut b, |r| r.ctime_ns = now_ns())?;
        self.meta.write(b)?;
        Ok(())
    }
}
