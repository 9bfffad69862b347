//! `disk online`: a failed disk comes back (its label matches). Its extent files are verified
//! against the metadata; intact copies of current versions become replicas again, the disk
//! rejoins each shard where it holds more than the member recovery put in its place, and
//! stale or damaged files are removed. Recovery then copies only what the disk lacks, and
//! copies planned for the shards it rejoined are dropped (their epoch moved on).

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::fs::Fs;
use crate::meta::{DiskState, ExtentRec};
use crate::store::{Disk, ExtentId, ReadError};

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct OnlineReport {
    pub disk: u32,
    /// Extent files found on the disk.
    pub files: u64,
    /// Current versions whose every checksum block matched, replicas again.
    pub reused_extents: u64,
    pub reused_bytes: u64,
    /// Older versions and files no record names.
    pub stale_removed: u64,
    /// Current versions that failed verification (short, or a checksum mismatch).
    pub damaged_removed: u64,
    /// Intact copies of shards the disk did not rejoin (their new member held more).
    pub redundant_removed: u64,
    /// Shards whose placement took the disk back.
    pub shards_rejoined: u64,
}

/// What the disk's files turned out to be.
#[derive(Default)]
struct Verified {
    files: u64,
    /// (inode, index) -> the intact current version found, and its length.
    intact: HashMap<(u64, u64), (u64, u32)>,
    stale: Vec<ExtentId>,
    damaged: Vec<ExtentId>,
}

/// Brings failed disk `id` back (see the module doc). On error the disk stays failed and
/// nothing that the metadata names is lost.
pub fn online_disk(fs: &Fs, id: u32) -> anyhow::Result<OnlineReport> {
    let d = check(fs, id)?;
    let v = match verify(fs, &d) {
        Ok(v) => v,
        Err(e) => {
            fs.store.drop_fds(id);
            return Err(e);
        }
    };
    // Never at once with a recovery, evacuation, migration or fsck repair installing copies.
    let _g = fs.recovery_guard();
    let mut report = OnlineReport {
        disk: id,
        files: v.files,
        ..OnlineReport::default()
    };
    drop_unusable(fs, &d, &v, &mut report)?;
    fs.set_disk_state(id, DiskState::Up)?;
    let rejoined = rejoin_shards(fs, id, &v)?;
    report.shards_rejoined = rejoined as u64;
    reuse_intact(fs, &d, &v, &mut report)?;
    fs.meta.sync_wal()?;
    tracing::info!(disk = id, ?report, "disk online");
    Ok(report)
}

/// The disk must be failed, carry this pool's label for its id, and pass a probe.
fn check(fs: &Fs, id: u32) -> anyhow::Result<Arc<Disk>> {
    let d = fs
        .store
        .disk(id)
        .with_context(|| format!("no disk {id} in this pool"))?;
    match d.state() {
        DiskState::Failed => {}
        DiskState::Removed => bail!(
            "disk {id} was removed from the pool (it holds none of its data): \
             empty the directory and `disk add` it"
        ),
        s => bail!(
            "disk {id} is {}, not failed: nothing to bring back",
            s.name()
        ),
    }
    d.check_label(&fs.cfg.pool_id)
        .with_context(|| format!("disk {id} stays failed"))?;
    if let Some(why) = crate::store::root_exposure(&d.root) {
        bail!("disk {id} stays failed: {}: {why}", d.root.display());
    }
    d.probe().with_context(|| {
        format!(
            "disk {id} stays failed: its probe (write, fsync, read back in {}) failed",
            d.root.display()
        )
    })?;
    Ok(d)
}

/// Reads every extent file of the disk and checks it against the current record.
fn verify(fs: &Fs, d: &Disk) -> anyhow::Result<Verified> {
    let files = d
        .scan()
        .with_context(|| format!("disk {}: cannot list its extent files", d.id))?;
    let mut v = Verified {
        files: files.len() as u64,
        ..Verified::default()
    };
    for (id, _) in files {
        let Some(rec) = fs.meta.extent(id.ino, id.index)? else {
            v.stale.push(id);
            continue;
        };
        if rec.version != id.version {
            v.stale.push(id);
            continue;
        }
        match fs
            .store
            .read_verified(d, &id, &rec.sums, 0, rec.len as usize)
        {
            Ok(_) => {
                v.intact.insert((id.ino, id.index), (id.version, rec.len));
            }
            Err(ReadError::Corrupt(why)) => {
                tracing::warn!(disk = d.id, ?id, "damaged copy: {why}");
                v.damaged.push(id);
            }
            Err(ReadError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(ReadError::Io(e)) => bail!(
                "disk {} stays failed: reading {} failed: {e}",
                d.id,
                d.extent_path(&id).display()
            ),
        }
    }
    // Written before the failure, perhaps never synced (a barrier that failed on it).
    let files: Vec<(u32, ExtentId)> = v
        .intact
        .iter()
        .map(|(&(ino, index), &(version, _))| {
            let id = ExtentId {
                ino,
                index,
                version,
            };
            (d.id, id)
        })
        .collect();
    if let Some(e) = fs.store.sync_extents(&files).remove(&d.id) {
        bail!(
            "disk {} stays failed: cannot sync its extent files: {e}",
            d.id
        );
    }
    Ok(v)
}

/// While the disk is still failed (nothing writes to it): records that name it without an
/// intact copy stop naming it, that is made durable, then stale and damaged files go.
fn drop_unusable(fs: &Fs, d: &Disk, v: &Verified, report: &mut OnlineReport) -> anyhow::Result<()> {
    let mut named = Vec::new();
    fs.meta.each_extent(|ino, index, e| {
        let intact = v.intact.get(&(ino, index)).map(|x| x.0) == Some(e.version);
        if e.replicas.contains(&d.id) && !intact {
            named.push((ino, index, e));
        }
    })?;
    for (ino, index, e) in named {
        let rec = ExtentRec {
            replicas: e.replicas.iter().copied().filter(|r| *r != d.id).collect(),
            ..e.clone()
        };
        // A record that changed meanwhile was written without the failed disk.
        fs.cas_extent(ino, index, e.version, Some(&rec))
            .map_err(|e| anyhow::anyhow!("metadata: errno {}", e.0))?;
    }
    // No durable record names these files from here on: removed in place (the reaper
    // would remove them later by name, when a new copy of the same version may be there).
    fs.meta.sync_wal()?;
    for id in &v.stale {
        fs.store.remove_extent(d, id);
    }
    for id in &v.damaged {
        fs.store.remove_extent(d, id);
    }
    report.stale_removed = v.stale.len() as u64;
    report.damaged_removed = v.damaged.len() as u64;
    Ok(())
}

/// Puts the disk back into each shard where its intact copies outweigh the member holding
/// the least of that shard (usually the target recovery chose in its place), or where the
/// shard is short of replicas. Returns how many shards changed.
fn rejoin_shards(fs: &Fs, id: u32, v: &Verified) -> anyhow::Result<usize> {
    let mut ours: HashMap<u32, u64> = HashMap::new();
    let mut held: HashMap<(u32, u32), u64> = HashMap::new();
    fs.meta.each_extent(|ino, index, e| {
        if v.intact.get(&(ino, index)).map(|x| x.0) == Some(e.version) {
            *ours.entry(e.shard).or_default() += u64::from(e.len).max(1);
        }
        for r in fs.store.readable(&e.replicas) {
            *held.entry((e.shard, r)).or_default() += u64::from(e.len).max(1);
        }
    })?;
    let table = fs.shard_table();
    let mut changes = Vec::new();
    for (s, bytes) in ours {
        let Some(rec) = table.get(s as usize) else {
            continue;
        };
        if rec.disks.contains(&id) {
            continue;
        }
        let mut disks = rec.disks.clone();
        if disks.len() < fs.cfg.replicas as usize {
            disks.push(id);
        } else {
            let least = (0..disks.len())
                .min_by_key(|i| held.get(&(s, disks[*i])).copied().unwrap_or(0))
                .expect("a shard has disks");
            if held.get(&(s, disks[least])).copied().unwrap_or(0) >= bytes {
                continue;
            }
            disks[least] = id;
        }
        changes.push((s, rec.epoch, disks));
    }
    let results = fs
        .set_placements(changes)
        .map_err(|e| anyhow::anyhow!("metadata: errno {}", e.0))?;
    // A refused change (a migration moved the shard meanwhile) leaves the disk out of it.
    Ok(results.iter().filter(|r| r.is_ok()).count())
}

/// Intact copies become replicas of the shards the disk is in (copies the placement no
/// longer needs are dropped, as a recovery commit does); the rest are removed.
fn reuse_intact(fs: &Fs, d: &Disk, v: &Verified, report: &mut OnlineReport) -> anyhow::Result<()> {
    let table = fs.shard_table();
    for (&(ino, index), &(version, len)) in &v.intact {
        let id = ExtentId {
            ino,
            index,
            version,
        };
        let cur = fs.meta.extent(ino, index)?.filter(|c| c.version == version);
        let Some(cur) = cur else {
            // Rewritten or removed since it was verified: a version nobody names.
            fs.reap(d.id, id);
            report.stale_removed += 1;
            continue;
        };
        let placement = table.get(cur.shard as usize).map(|s| s.disks.clone());
        let placement = placement.unwrap_or_default();
        if !placement.contains(&d.id) {
            if !cur.replicas.contains(&d.id) {
                fs.store.remove_extent(d, &id);
                report.redundant_removed += 1;
            }
            // Still named: a source until recovery's commit to the new member drops it.
            continue;
        }
        let (rec, dropped) = fs.with_replica(&cur, &placement, d.id);
        if rec.replicas != cur.replicas
            && !fs
                .cas_extent(ino, index, version, Some(&rec))
                .map_err(|e| anyhow::anyhow!("metadata: errno {}", e.0))?
        {
            fs.reap(d.id, id);
            report.stale_removed += 1;
            continue;
        }
        for r in dropped {
            if fs.store.disk(r).is_some_and(|x| x.is_up()) {
                fs.reap(r, id);
            }
        }
        report.reused_extents += 1;
        report.reused_bytes += u64::from(len);
    }
    Ok(())
}
