//! `fsck [--repair]`: every replica of every extent and the metadata checked against itself.
//! Exact on a busy pool: what changed after fsck's view is looked at again before it is
//! called damage; a plain fsck changes nothing; `--repair` commits under `recovery_guard`
//! with a version compare-and-set.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::fs::Fs;
use crate::meta::{
    Batch, DirentVal, ExtentRec, InodeRec, Kind, View, CF_DIRENTS, CF_INODES, CF_ORPHANS,
    CF_XATTRS, ROOT_INO,
};
use crate::store::ExtentId;

#[derive(Serialize, Deserialize, Default)]
pub struct FsckReport {
    pub inodes: u64,
    pub extents: u64,
    pub replicas_checked: u64,
    pub bytes_verified: u64,
    pub problems: Vec<String>,
    pub repaired: u64,
    pub unrepaired: u64,
    /// Extent files no record names (left by a crash or an operation in flight): not
    /// damage; removed by the next mount or by `--repair`.
    #[serde(default)]
    pub debris: u64,
    pub clean: bool,
}

impl FsckReport {
    fn problem(&mut self, fixed: bool, msg: String) {
        tracing::warn!("fsck: {msg}{}", if fixed { " (repaired)" } else { "" });
        if fixed {
            self.problems.push(format!("{msg} (repaired)"));
            self.repaired += 1;
        } else {
            self.problems.push(msg);
            self.unrepaired += 1;
        }
    }
}

/// An extent file a record names: (disk, ino, index, version).
type LiveFile = (u32, u64, u64, u64);

/// Verifies every replica of every extent and the metadata against itself; with `repair`,
/// rewrites bad copies from a good replica, restores missing replicas, fixes link counts and
/// removes orphans.
pub fn fsck(fs: &Fs, repair: bool) -> anyhow::Result<FsckReport> {
    fs.drain_reaper();
    // One consistent view of the metadata; what changes after it is looked at again before
    // it is called damage.
    let view = fs.meta.view();
    let mut c = Fsck {
        fs,
        repair,
        r: FsckReport::default(),
        live_files: HashSet::new(),
    };
    let inodes: HashMap<u64, InodeRec> = view
        .all::<InodeRec>(CF_INODES)?
        .into_iter()
        .map(|(k, v)| (be_u64(&k), v))
        .collect();
    c.r.inodes = inodes.len() as u64;
    c.namespace(&view, &inodes)?;
    // After repairs above, a fresh view; else the same instant as the namespace checks.
    let view = if repair { fs.meta.view() } else { view };
    let mut exts: Vec<(u64, u64, ExtentRec)> = Vec::new();
    view.each_extent(|ino, index, e| exts.push((ino, index, e)))?;
    c.r.extents = exts.len() as u64;
    for (ino, index, e) in exts {
        c.extent(&inodes, ino, index, e)?;
    }
    c.debris()?;
    c.r.clean = c.r.unrepaired == 0;
    Ok(c.r)
}

fn be_u64(k: &[u8]) -> u64 {
    u64::from_be_bytes(k[..8].try_into().expect("keys start with a u64"))
}

/// One fsck run: the report it fills and the extent files the records name.
struct Fsck<'a> {
    fs: &'a Fs,
    repair: bool,
    r: FsckReport,
    live_files: HashSet<LiveFile>,
}

/// What the directory entries say about each inode.
#[derive(Default)]
struct Links {
    links: HashMap<u64, u32>,
    subdirs: HashMap<u64, u32>,
    dir_parent: HashMap<u64, u64>,
}

impl Fsck<'_> {
    /// Directory entries, link counts, parents and xattrs. Repairs go in one batch; the
    /// inodes no entry names are freed after it is written.
    fn namespace(&mut self, view: &View, inodes: &HashMap<u64, InodeRec>) -> anyhow::Result<()> {
        let orphans: HashSet<u64> = view.keys(CF_ORPHANS)?.iter().map(|k| be_u64(k)).collect();
        let mut b = self.fs.meta.batch();
        let links = self.dirents(view, inodes, &mut b)?;
        let mut dead = Vec::new();
        for (&ino, rec) in inodes {
            if self.inode(ino, rec, &links, &orphans, &mut b) {
                dead.push(ino);
            }
        }
        self.xattrs(view, inodes, &mut b)?;
        if self.repair && !b.is_empty() {
            self.fs.meta.write(b)?;
        }
        for ino in dead {
            self.fs
                .delete_inode(ino)
                .map_err(|e| anyhow::anyhow!("cannot free inode {ino}: errno {}", e.0))?;
        }
        Ok(())
    }

    fn dirents(
        &mut self,
        view: &View,
        inodes: &HashMap<u64, InodeRec>,
        b: &mut Batch,
    ) -> anyhow::Result<Links> {
        let mut l = Links::default();
        for (k, v) in view.all::<DirentVal>(CF_DIRENTS)? {
            let parent = be_u64(&k);
            let name = String::from_utf8_lossy(&k[16..]).into_owned();
            if crate::meta::dirent_key(parent, &k[16..]) != k {
                let msg = format!("directory entry {name:?} in {parent} has a wrong key");
                self.r.problem(false, msg);
            }
            match (inodes.get(&parent), inodes.get(&v.ino)) {
                (Some(p), Some(c)) if p.kind == Kind::Dir && c.kind == v.kind => {
                    *l.links.entry(v.ino).or_default() += 1;
                    if v.kind == Kind::Dir {
                        *l.subdirs.entry(parent).or_default() += 1;
                        l.dir_parent.insert(v.ino, parent);
                    }
                }
                _ => {
                    if self.repair {
                        b.del_dirent(parent, &k[16..]);
                    }
                    let msg = format!("directory entry {name:?} in {parent} points to missing or mismatched inode {}", v.ino);
                    self.r.problem(self.repair, msg);
                }
            }
        }
        Ok(l)
    }

    /// Checks one inode's link count and (directories) parent; returns whether it is an
    /// orphan to free.
    fn inode(
        &mut self,
        ino: u64,
        rec: &InodeRec,
        l: &Links,
        orphans: &HashSet<u64>,
        b: &mut Batch,
    ) -> bool {
        let n = l.links.get(&ino).copied().unwrap_or(0);
        if ino != ROOT_INO && n == 0 {
            // Unlinked while open: freed at its last close (or at the next mount).
            if orphans.contains(&ino) {
                return false;
            }
            let msg = format!("inode {ino} is not in any directory (orphan)");
            self.r.problem(self.repair, msg);
            return self.repair;
        }
        let want = if rec.kind == Kind::Dir {
            2 + l.subdirs.get(&ino).copied().unwrap_or(0)
        } else {
            n
        };
        let mut fixed = rec.clone();
        if rec.nlink != want {
            fixed.nlink = want;
            let msg = format!("inode {ino} has link count {} but {want} links", rec.nlink);
            self.r.problem(self.repair, msg);
        }
        if rec.kind == Kind::Dir {
            let p = match ino {
                ROOT_INO => ROOT_INO,
                _ => l.dir_parent.get(&ino).copied().unwrap_or(0),
            };
            if rec.parent != p {
                fixed.parent = p;
                let msg = format!(
                    "directory {ino} records parent {} but lives in {p}",
                    rec.parent
                );
                self.r.problem(self.repair, msg);
            }
        }
        if self.repair && &fixed != rec {
            b.put_inode(ino, &fixed);
        }
        false
    }

    fn xattrs(
        &mut self,
        view: &View,
        inodes: &HashMap<u64, InodeRec>,
        b: &mut Batch,
    ) -> anyhow::Result<()> {
        for k in view.keys(CF_XATTRS)? {
            let ino = be_u64(&k);
            if !inodes.contains_key(&ino) {
                if self.repair {
                    b.del_xattr(ino, &k[8..]);
                }
                let msg = format!("extended attribute of missing inode {ino}");
                self.r.problem(self.repair, msg);
            }
        }
        Ok(())
    }

    /// Every replica of one extent, every block; then its replica count.
    fn extent(
        &mut self,
        inodes: &HashMap<u64, InodeRec>,
        ino: u64,
        index: u64,
        e: ExtentRec,
    ) -> anyhow::Result<()> {
        if self.stray_extent(inodes, ino, index, &e)? {
            return Ok(());
        }
        for d in &e.replicas {
            self.live_files.insert((*d, ino, index, e.version));
        }
        let id = ExtentId {
            ino,
            index,
            version: e.version,
        };
        let bad = self.verify_replicas(&id, &e);
        // A version replaced since the view was taken is not damage, nor worth counting.
        if !bad.is_empty() && !self.repair_replicas(&id, bad) {
            return Ok(());
        }
        self.replica_count(ino, index, &e);
        Ok(())
    }

    /// An extent of a missing inode or past its end (checked again on a mounted pool, where
    /// the inode snapshot may predate a write): reported, and removed with `repair`.
    fn stray_extent(
        &mut self,
        inodes: &HashMap<u64, InodeRec>,
        ino: u64,
        index: u64,
        e: &ExtentRec,
    ) -> anyhow::Result<bool> {
        let fs = self.fs;
        let owner = inodes.get(&ino);
        let beyond = owner.is_some_and(|o| index * fs.cfg.extent_size >= o.size);
        let still_bad = || match fs.getattr(ino) {
            Ok(a) => a.kind != Kind::File || index * fs.cfg.extent_size >= a.size,
            Err(_) => true,
        };
        if !((owner.is_none_or(|o| o.kind != Kind::File) || beyond) && still_bad()) {
            return Ok(false);
        }
        let what = if beyond {
            "past the end of"
        } else {
            "of missing inode"
        };
        if self.repair {
            fs.cas_extent(ino, index, e.version, None)
                .map_err(|e| anyhow::anyhow!("errno {}", e.0))?;
        } else {
            for d in &e.replicas {
                self.live_files.insert((*d, ino, index, e.version));
            }
        }
        self.r
            .problem(self.repair, format!("extent {index} {what} file {ino}"));
        Ok(true)
    }

    /// Reads every block of each replica on an up disk; returns the bad ones and why.
    fn verify_replicas(&mut self, id: &ExtentId, e: &ExtentRec) -> Vec<(u32, String)> {
        let fs = self.fs;
        let mut bad = Vec::new();
        for d in &e.replicas {
            let Some(disk) = fs.store.disk(*d).filter(|d| d.is_up()) else {
                continue;
            };
            self.r.replicas_checked += 1;
            if let Err(err) = fs
                .store
                .read_verified(&disk, id, &e.sums, 0, e.len as usize)
            {
                bad.push((*d, err.to_string()));
                continue;
            }
            // A longer file has bytes the checksums do not cover (a remote disk's lengths
            // come from its scan, checked in `debris`).
            let len = match disk.is_remote() {
                true => u64::from(e.len),
                false => std::fs::metadata(disk.extent_path(id)).map_or(0, |m| m.len()),
            };
            if len != u64::from(e.len) {
                bad.push((*d, format!("length {len}, expected {}", e.len)));
            } else {
                self.r.bytes_verified += u64::from(e.len);
            }
        }
        bad
    }

    /// Reports (and with `repair` rewrites from a good copy) the bad replicas the extent
    /// still names. Returns false when the extent's version changed since the view.
    fn repair_replicas(&mut self, id: &ExtentId, mut bad: Vec<(u32, String)>) -> bool {
        let fs = self.fs;
        let (ino, index) = (id.ino, id.index);
        // A replica a drain, an evacuation or a migration dropped since (its file reaped)
        // is not damage: look again.
        let Some(now) = current_extent(fs, ino, index, id.version) else {
            return false;
        };
        bad.retain(|(d, _)| now.replicas.contains(d));
        for (d, why) in bad {
            let mut fixed = false;
            if self.repair {
                // Under the guard nothing drops this replica meanwhile; a copy it no longer
                // names is not rewritten (that would leave a stray).
                let _g = fs.recovery_guard();
                let Some(now) =
                    current_extent(fs, ino, index, id.version).filter(|c| c.replicas.contains(&d))
                else {
                    continue;
                };
                if let (Some(data), Some(disk)) =
                    (fs.read_good_copy(ino, index, &now), fs.store.disk(d))
                {
                    let fence = (now.shard, fs.shard(now.shard).epoch);
                    fixed = fs.store.rewrite_extent(&disk, id, &data, fence).is_ok();
                }
            }
            let msg = format!("inode {ino} extent {index} replica on disk {d}: {why}");
            self.r.problem(fixed, msg);
        }
        true
    }

    /// Fewer readable replicas than the pool keeps, looked at again (a recovery may have
    /// restored them since the view): reported, restored with `repair`.
    fn replica_count(&mut self, ino: u64, index: u64, e: &ExtentRec) {
        let fs = self.fs;
        let live = fs.store.readable(&e.replicas).len();
        let short = |e: &ExtentRec| (fs.store.readable(&e.replicas).len() as u32) < fs.cfg.replicas;
        if short(e) && current_extent(fs, ino, index, e.version).is_some_and(|c| short(&c)) {
            let fixed =
                self.repair && restore_replicas(fs, ino, index, e.version, &mut self.live_files);
            let msg = format!(
                "inode {ino} extent {index} has {live} of {} replicas",
                fs.cfg.replicas
            );
            self.r.problem(fixed, msg);
        }
    }

    /// Extent files on up disks that no record names: counted, and with `repair` removed
    /// through the reaper.
    fn debris(&mut self) -> anyhow::Result<()> {
        let fs = self.fs;
        for disk in fs.store.disks() {
            if !disk.is_up() {
                continue;
            }
            for (id, _) in disk.scan()? {
                // A file committed after the extent snapshot is referenced now: look again.
                let referenced_now = || {
                    fs.meta
                        .extent(id.ino, id.index)
                        .ok()
                        .flatten()
                        .is_some_and(|e| e.version == id.version && e.replicas.contains(&disk.id))
                };
                if self
                    .live_files
                    .contains(&(disk.id, id.ino, id.index, id.version))
                    || fs.is_open(id.ino)
                    || referenced_now()
                {
                    continue;
                }
                if !self.repair {
                    self.r.debris += 1;
                    continue;
                }
                // Recovery, evacuation and migration hold this from installing a copy until
                // it is committed (or removed): under it, an unnamed copy is not in flight.
                let _g = fs.recovery_guard();
                if !referenced_now() && !fs.is_open(id.ino) {
                    // Through the reaper: gone only once no durable record can name it.
                    fs.reap(disk.id, id);
                    self.r.debris += 1;
                    tracing::info!(disk = disk.id, "fsck: stray extent file {id:?} removed");
                }
            }
        }
        Ok(())
    }
}
/// The extent's record now, if it still has `version` (on a mounted pool, background work
/// and writes move on after fsck's view).
fn current_extent(fs: &Fs, ino: u64, index: u64, version: u64) -> Option<ExtentRec> {
    fs.meta
        .extent(ino, index)
        .ok()
        .flatten()
        .filter(|c| c.version == version)
}

/// Copies an under-replicated extent to live disks of its shard that lack it, then commits
/// the longer replica list. Returns whether the full count was reached.
fn restore_replicas(
    fs: &Fs,
    ino: u64,
    index: u64,
    version: u64,
    files: &mut HashSet<(u32, u64, u64, u64)>,
) -> bool {
    // Never at once with a recovery, evacuation or migration installing copies; the record
    // as it is under the guard, not as the view saw it (the CAS below only compares the
    // version: a replica list from before a recovery's commit would undo it).
    let _g = fs.recovery_guard();
    let Some(e) = current_extent(fs, ino, index, version) else {
        return false;
    };
    let e = &e;
    let live = fs.store.readable(&e.replicas);
    if live.len() >= fs.cfg.replicas as usize {
        return true;
    }
    let Some(data) = fs.read_good_copy(ino, index, e) else {
        return false;
    };
    let id = ExtentId {
        ino,
        index,
        version: e.version,
    };
    let mut replicas = live;
    let shard = fs.shard(e.shard);
    let candidates: Vec<u32> = shard
        .disks
        .iter()
        .copied()
        .chain(fs.store.disks().iter().map(|d| d.id))
        .filter(|d| !replicas.contains(d))
        .collect();
    for d in candidates {
        if replicas.len() >= fs.cfg.replicas as usize {
            break;
        }
        let Some(disk) = fs.store.disk(d).filter(|x| x.is_up()) else {
            continue;
        };
        if replicas.contains(&d) {
            continue;
        }
        let fence = (e.shard, fs.shard(e.shard).epoch);
        if fs.store.rewrite_extent(&disk, &id, &data, fence).is_ok() {
            replicas.push(d);
            files.insert((d, ino, index, e.version));
        }
    }
    let mut rec = e.clone();
    rec.replicas = replicas;
    fs.cas_extent(ino, index, e.version, Some(&rec)) == Ok(true)
        && rec.replicas.len() >= fs.cfg.replicas as usize
}
