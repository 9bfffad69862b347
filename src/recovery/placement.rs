//! Placement changes made by recovery: new targets for shards on disks that no longer take
//! data, and disks added to the pool.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{bail, Context};

use crate::fs::Fs;
use crate::meta::DiskState;
use crate::store::{read_label, Disk};

/// Gives every shard that names a disk no longer taking data a new placement. Targets: the
/// plan's when still valid, else the disk with the most free space after the copies already
/// assigned; disks `at_risk` only when no other has room. Returns (shards changed, shards
/// left without a target).
pub(super) fn replace_placements(
    fs: &Fs,
    shard_bytes: &[u64],
    planned: Option<&HashMap<(u32, u32), u32>>,
    at_risk: &dyn Fn(u32) -> bool,
) -> anyhow::Result<(usize, Vec<u32>)> {
    let disks = fs.store.disks();
    let mut p = Placer {
        room: disks
            .iter()
            .filter(|d| d.accepts_data() && !d.full.load(Ordering::Relaxed))
            .map(|d| (d.id, d.space().map(|s| s.1).unwrap_or(0)))
            .collect(),
        state: disks.iter().map(|d| (d.id, d.state())).collect(),
        host: disks.iter().map(|d| (d.id, d.host())).collect(),
        planned,
        at_risk,
        replicas: fs.cfg.replicas as usize,
    };
    let mut moved = 0;
    let mut no_target = Vec::new();
    let mut changes = Vec::new();
    for (s, rec) in fs.shard_table().into_iter().enumerate() {
        let s = s as u32;
        let need = shard_bytes.get(s as usize).copied().unwrap_or(0);
        let Some((new, complete)) = p.place(s, &rec.disks, need) else {
            continue;
        };
        if !complete {
            no_target.push(s);
        }
        if new != rec.disks {
            changes.push((s, rec.epoch, new));
        }
    }
    let log: Vec<(u32, Vec<u32>)> = changes.iter().map(|c| (c.0, c.2.clone())).collect();
    for ((s, to), r) in log.into_iter().zip(
        fs.set_placements(changes)
            .map_err(|e| anyhow::anyhow!("placement change failed: errno {}", e.0))?,
    ) {
        match r {
            Ok(epoch) => {
                moved += 1;
                tracing::info!(shard = s, epoch, to = ?to, "shard placement changed");
            }
            Err(e) => tracing::warn!(shard = s, "placement change refused: errno {}", e.0),
        }
    }
    Ok((moved, no_target))
}

/// Chooses replacement disks shard by shard, taking each choice's bytes off its room.
struct Placer<'a> {
    room: HashMap<u32, u64>,
    state: HashMap<u32, DiskState>,
    /// Each disk's storage host (all 0 on a single-host pool).
    host: HashMap<u32, u32>,
    planned: Option<&'a HashMap<(u32, u32), u32>>,
    at_risk: &'a dyn Fn(u32) -> bool,
    replicas: usize,
}

impl Placer<'_> {
    /// Shard `s`'s new disks, or None when its placement is fine as it is. The flag says
    /// whether the new placement is complete (enough disks, none draining).
    fn place(&mut self, s: u32, disks: &[u32], need: u64) -> Option<(Vec<u32>, bool)> {
        let bad: Vec<u32> = disks
            .iter()
            .copied()
            .filter(|d| !matches!(self.state.get(d), Some(DiskState::Up | DiskState::Suspect)))
            .collect();
        if bad.is_empty() && disks.len() >= self.replicas {
            return None;
        }
        let mut new = disks.to_vec();
        for b in &bad {
            let hint = self.planned.and_then(|p| p.get(&(s, *b)).copied());
            match self.pick(&new, &bad, need, hint) {
                Some(t) => {
                    let pos = new.iter().position(|x| x == b).expect("bad disk in shard");
                    new[pos] = t;
                    *self.room.get_mut(&t).expect("target has room") -= need;
                }
                None if self.state.get(b) == Some(&DiskState::Draining) => {}
                None => new.retain(|x| x != b),
            }
        }
        while new.len() < self.replicas {
            match self.pick(&new, &bad, need, None) {
                Some(t) => {
                    new.push(t);
                    *self.room.get_mut(&t).expect("target has room") -= need;
                }
                None => break,
            }
        }
        let draining = new
            .iter()
            .any(|d| self.state.get(d) == Some(&DiskState::Draining));
        let complete = new.len() >= self.replicas && !draining;
        Some((new, complete))
    }

    /// The plan's target when it is still valid, else the disk with the most room: disks
    /// at risk last, then disks on a host that holds another of the shard's live replicas
    /// (`bad` ones do not count; a single-host pool has one host, so this never decides).
    fn pick(&self, new: &[u32], bad: &[u32], need: u64, hint: Option<u32>) -> Option<u32> {
        let at_risk = self.at_risk;
        let host = |d: u32| self.host.get(&d).copied().unwrap_or(0);
        let used: HashSet<u32> = new
            .iter()
            .filter(|d| !bad.contains(d))
            .map(|d| host(*d))
            .collect();
        let best = self
            .room
            .iter()
            .filter(|(d, r)| !new.contains(d) && **r >= need)
            .max_by_key(|(d, r)| {
                let spread = !used.contains(&host(**d));
                (!at_risk(**d), spread, **r, std::cmp::Reverse(**d))
            })
            .map(|(d, _)| *d);
        if let Some(h) = hint {
            let valid = !new.contains(&h) && !at_risk(h);
            let spread_ok =
                best.is_none_or(|b| used.contains(&host(b)) || !used.contains(&host(h)));
            if valid && spread_ok && self.room.get(&h).is_some_and(|r| *r >= need) {
                return Some(h);
            }
        }
        best
    }
}

/// Checks and labels a new disk directory and adds it to the pool. Returns its id.
pub fn add_disk(fs: &Fs, path: &std::path::Path) -> anyhow::Result<u32> {
    use std::os::unix::fs::MetadataExt;
    let md =
        std::fs::metadata(path).with_context(|| format!("{}: cannot access", path.display()))?;
    if !md.is_dir() {
        bail!("{}: not a directory", path.display());
    }
    let c = std::fs::canonicalize(path)?;
    if let Some(why) = crate::store::root_exposure(&c) {
        bail!("{}: {why}", path.display());
    }
    if let Some(l) = read_label(&c)? {
        bail!(
            "{}: already belongs to pool {} (as disk {})",
            path.display(),
            l.pool_id,
            l.disk_id
        );
    }
    let mut next = 0;
    for d in fs.store.disks() {
        next = next.max(d.id + 1);
        if d.state() == DiskState::Removed {
            continue;
        }
        if d.root == c {
            bail!("{}: already disk {} of this pool", path.display(), d.id);
        }
        if let Ok(m) = std::fs::metadata(&d.root) {
            if (m.dev(), m.ino()) == (md.dev(), md.ino()) {
                bail!("{}: same directory as disk {}", path.display(), d.id);
            }
            if m.dev() == md.dev() {
                tracing::warn!(
                    "disk {} shares a filesystem with disk {}: one failure domain",
                    c.display(),
                    d.id
                );
            }
        }
    }
    crate::store::write_label(&c, &crate::store::Label::new(&fs.cfg.pool_id, next))?;
    let mut b = fs.meta.batch();
    b.put_disk(&crate::meta::DiskRec {
        id: next,
        path: c.to_string_lossy().into_owned(),
        state: DiskState::Up,
    });
    fs.meta.write(b)?;
    fs.meta.sync_wal()?;
    fs.store
        .add_disk(Arc::new(Disk::new(next, c.clone(), DiskState::Up)));
    tracing::info!(disk = next, path = %c.display(), "disk added");
    Ok(next)
}

/// Moves shard replicas onto a new disk until it holds its share of shard slots (taken from
/// the disks that hold the most). The recovery thread then copies the data.
pub fn rebalance_onto(fs: &Fs, new: u32) -> anyhow::Result<()> {
    let table = fs.shard_table();
    let live: HashSet<u32> = fs
        .store
        .disks()
        .iter()
        .filter(|d| d.accepts_data())
        .map(|d| d.id)
        .collect();
    let slots: usize = table.iter().map(|s| s.disks.len()).sum();
    let want = slots / live.len().max(1);
    let mut count: HashMap<u32, usize> = HashMap::new();
    for s in &table {
        for d in &s.disks {
            *count.entry(*d).or_default() += 1;
        }
    }
    let mut have = count.get(&new).copied().unwrap_or(0);
    // On a cluster pool the new disk must not join a shard that has a replica on its host
    // (other than the one it replaces); every local disk is host 0, so no check there.
    let host_of = |d: u32| fs.store.disk(d).map_or(0, |x| x.host());
    let new_host = host_of(new);
    let shares_host = |s: &crate::meta::ShardRec, from: u32| {
        new_host != 0
            && s.disks
                .iter()
                .any(|d| *d != from && host_of(*d) == new_host)
    };
    let mut changed: HashSet<u32> = HashSet::new();
    while have < want {
        let Some((&from, _)) = count
            .iter()
            .filter(|(d, _)| **d != new)
            .max_by_key(|(d, c)| (**c, std::cmp::Reverse(**d)))
        else {
            break;
        };
        let Some((sid, rec)) = table.iter().enumerate().find(|(i, s)| {
            s.disks.contains(&from)
                && !s.disks.contains(&new)
                && !changed.contains(&(*i as u32))
                && !shares_host(s, from)
        }) else {
            count.remove(&from);
            continue;
        };
        let sid = sid as u32;
        let disks: Vec<u32> = rec
            .disks
            .iter()
            .map(|d| if *d == from { new } else { *d })
            .collect();
        fs.set_placement(sid, rec.epoch, disks)
            .map_err(|e| anyhow::anyhow!("placement of shard {sid}: errno {}", e.0))?;
        changed.insert(sid);
        *count.get_mut(&from).expect("counted") -= 1;
        have += 1;
    }
    Ok(())
}
