//! Shard changes made by the sharding engine: shards defined or re-formed, and extents
//! moved between shards with a compare-and-set on extent version and both shards' epochs.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use super::{Errno, Fs, FsResult};
use crate::meta::{ExtentRec, ShardClass, ShardRec};
use crate::store::ExtentId;

/// Shards a pool may have (initial + formed by re-sharding); the engine reuses empty ones.
pub const SHARDS_MAX: usize = 1 << 16;

/// A shard to create (`id` None) or to re-form (an existing, empty shard, fenced by its
/// epoch).
#[derive(Clone, Debug)]
pub struct ShardDef {
    pub id: Option<u32>,
    pub expect_epoch: u64,
    pub class: ShardClass,
    pub disks: Vec<u32>,
}

/// One extent's move, ready to commit: copies of `version` were installed (and synced) on
/// `installed`, the disks of `to` that lacked one.
#[derive(Clone, Debug)]
pub struct MoveCommit {
    pub ino: u64,
    pub index: u64,
    pub version: u64,
    pub from: u32,
    pub from_epoch: u64,
    pub to: u32,
    pub to_epoch: u64,
    pub installed: Vec<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoveOutcome {
    Done,
    /// The extent was rewritten, deleted or moved meanwhile (a concurrent write wins).
    Stale,
    /// A shard's placement changed since the copy was planned.
    Fenced,
    /// Some disk of the target placement holds no copy.
    Incomplete,
}

impl Fs {
    /// Creates or re-forms shards in one batch; returns their ids (ESTALE for a re-form whose
    /// epoch moved on). Never two replicas on one disk.
    pub fn define_shards(&self, defs: Vec<ShardDef>) -> FsResult<Vec<FsResult<u32>>> {
        let _g = self.placement_lock.lock();
        let mut table = self.shards.read().clone();
        let mut b = self.meta.batch();
        let mut out = Vec::with_capacity(defs.len());
        let mut changed = Vec::new();
        for def in defs {
            let mut seen = HashSet::new();
            assert!(
                def.disks.iter().all(|d| seen.insert(*d)),
                "two replicas of a shard on one disk: {:?}",
                def.disks
            );
            let (id, epoch, old_disks) = match def.id {
                Some(id) => {
                    let Some(old) = table.get(id as usize) else {
                        out.push(Err(Errno::EINVAL));
                        continue;
                    };
                    if old.epoch != def.expect_epoch {
                        out.push(Err(Errno::ESTALE));
                        continue;
                    }
                    (id, old.epoch + 1, old.disks.clone())
                }
                None => {
                    if table.len() >= SHARDS_MAX {
                        out.push(Err(Errno::ENOSPC));
                        continue;
                    }
                    table.push(ShardRec {
                        epoch: 0,
                        disks: Vec::new(),
                        class: def.class,
                    });
                    ((table.len() - 1) as u32, 1, Vec::new())
                }
            };
            let rec = ShardRec {
                epoch,
                disks: def.disks,
                class: def.class,
            };
            b.put_shard(id, &rec);
            for d in &old_disks {
                if !rec.disks.contains(d) {
                    b.del_disk_shard(*d, id);
                }
            }
            for d in &rec.disks {
                b.put_disk_shard(*d, id);
            }
            table[id as usize] = rec.clone();
            changed.push((id, rec));
            out.push(Ok(id));
        }
        if b.is_empty() {
            return Ok(out);
        }
        if !self.placements_to_sink(&changed)? {
            // The map (a cluster pool's truth) refused: nothing is written here either.
            return Ok(out.into_iter().map(|r| r.and(Err(Errno::ESTALE))).collect());
        }
        self.meta.write(b)?;
        *self.shards.write() = table;
        Ok(out)
    }

    /// Commits moves whose copies are installed and durable: each is checked under the
    /// placement lock, `ns` and the extent's node lock (version, source shard and both
    /// epochs unchanged, every target disk holding a copy), then all pass in one batch that
    /// also clears their pending-move keys, the WAL is synced, and only then are the old
    /// copies off the new placement removed. A refused move's installed copies are removed.
    /// The caller holds `recovery_guard` from the installs to here.
    pub fn commit_moves(&self, moves: &[MoveCommit]) -> FsResult<Vec<MoveOutcome>> {
        let _p = self.placement_lock.lock();
        let _g = self.ns.lock();
        let mut out = Vec::with_capacity(moves.len());
        let mut reap = Vec::new();
        for m in moves {
            let id = ExtentId {
                ino: m.ino,
                index: m.index,
                version: m.version,
            };
            // The node lock orders this switch against a committer's (lock order: ns ->
            // node map -> one node); one batch per move keeps one node locked at a time.
            let node = self.node(m.ino);
            let mut guard = node.as_ref().map(|n| n.inner.lock());
            match self.check_move(m)? {
                Ok((cur, to)) => {
                    let rec = ExtentRec {
                        shard: m.to,
                        replicas: to.disks.clone(),
                        ..cur.clone()
                    };
                    let mut b = self.meta.batch();
                    b.put_extent(m.ino, m.index, &rec);
                    b.del_move(m.ino, m.index);
                    self.meta.write(b)?;
                    if let Some(g) = guard.as_mut() {
                        g.extents.remove(&m.index);
                    }
                    reap.extend(
                        cur.replicas
                            .iter()
                            .filter(|d| !to.disks.contains(d))
                            .map(|d| (*d, id)),
                    );
                    out.push(MoveOutcome::Done);
                }
                Err(o) => {
                    self.drop_unnamed_copies(m, &id)?;
                    out.push(o);
                }
            }
        }
        let done = out.iter().filter(|o| **o == MoveOutcome::Done).count();
        if done == 0 {
            return Ok(out);
        }
        // Old copies go only once the new placement is durable.
        self.meta.sync_wal().map_err(|e| {
            tracing::error!("cannot sync metadata after moves: {e:#}");
            Errno::EIO
        })?;
        for (d, id) in reap {
            if self.store.disk(d).is_some_and(|x| x.is_up()) {
                self.reap(d, id);
            }
        }
        self.stats
            .extents_moved
            .fetch_add(done as u64, Ordering::Relaxed);
        Ok(out)
    }

    /// A refused move's copies that no record names (the move's own) are removed.
    fn drop_unnamed_copies(&self, m: &MoveCommit, id: &ExtentId) -> FsResult<()> {
        let cur = self.meta.extent(m.ino, m.index)?;
        for d in &m.installed {
            let named = cur
                .as_ref()
                .is_some_and(|c| c.version == m.version && c.replicas.contains(d));
            if !named {
                if let Some(disk) = self.store.disk(*d) {
                    self.store.remove_extent(&disk, id);
                }
            }
        }
        Ok(())
    }

    fn check_move(&self, m: &MoveCommit) -> FsResult<Result<(ExtentRec, ShardRec), MoveOutcome>> {
        let Some(cur) = self.meta.extent(m.ino, m.index)? else {
            return Ok(Err(MoveOutcome::Stale));
        };
        if cur.version != m.version || cur.shard != m.from {
            return Ok(Err(MoveOutcome::Stale));
        }
        let table = self.shards.read();
        let (Some(from), Some(to)) = (table.get(m.from as usize), table.get(m.to as usize)) else {
            return Ok(Err(MoveOutcome::Fenced));
        };
        if from.epoch != m.from_epoch || to.epoch != m.to_epoch {
            return Ok(Err(MoveOutcome::Fenced));
        }
        let have: HashSet<u32> = self
            .store
            .readable(&cur.replicas)
            .into_iter()
            .chain(m.installed.iter().copied())
            .collect();
        if !to.disks.iter().all(|d| have.contains(d)) {
            return Ok(Err(MoveOutcome::Incomplete));
        }
        Ok(Ok((cur, to.clone())))
    }
}
