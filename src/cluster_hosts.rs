//! `host add` and the release half of `host remove` on a mounted cluster pool: a storage
//! host's registered disks claimed into the pool, or given back to the cluster, always in
//! the cluster map first (the claim is the truth; RocksDB follows). The drain between them
//! is recovery's (`Orchestrator::drain_host`).

use std::collections::HashSet;
use std::sync::Arc;

use anyhow::{bail, Context};

use foreshard_cluster::batch::{Change, Expect};
use foreshard_cluster::map::CasOutcome;
use foreshard_cluster::records::{decode, encode, DiskRecord};

use crate::cluster::{on_host, parse_remote, remote_path, Cluster};
use crate::cluster_init::{free_disks, FreeDisk};
use crate::fs::Fs;
use crate::meta::{DiskRec, DiskState};
use crate::store::Disk;

impl Cluster {
    /// The disks `host` registered that this pool may take: free ones, and this pool's own
    /// that a drain left `removed` here (they come back under new ids), unless the disk is
    /// in the pool again already under another id.
    fn claimable(&self, fs: &Fs, host: &str) -> anyhow::Result<Vec<FreeDisk>> {
        let disks = fs.store.disks();
        let uuid_of =
            |d: &Disk| parse_remote(&d.root.to_string_lossy()).map(|(_, u)| u.to_string());
        let live: HashSet<String> = disks
            .iter()
            .filter(|d| d.state() != DiskState::Removed)
            .filter_map(|d| uuid_of(d))
            .collect();
        let removed_here = |id: Option<u32>| {
            id.and_then(|id| fs.store.disk(id))
                .is_some_and(|d| d.state() == DiskState::Removed)
        };
        let mut out = self
            .rt()
            .block_on(free_disks(&self.map, Some(&self.conf.pool)))?;
        out.retain(|d| {
            let ours = d.rec.pool.as_deref() == Some(&self.conf.pool);
            d.rec.host == host
                && !live.contains(&d.uuid)
                && (d.rec.pool.is_none() || (ours && removed_here(d.rec.pool_disk)))
        });
        Ok(out)
    }

    /// `host add`: claims the host's free disks (one compare-and-swap transaction on their
    /// records, with this metadata host's term), then records them in RocksDB and the
    /// store. Returns their ids.
    pub fn add_host(self: &Arc<Self>, fs: &Fs, host: &str) -> anyhow::Result<Vec<u32>> {
        let _one = self.admin.lock();
        let free = self.claimable(fs, host)?;
        if free.is_empty() {
            bail!(
                "host {host} has no free disk: is it alive, its disks registered (`foreshard hosts`) and not claimed by a pool?"
            );
        }
        let first = fs.store.disks().iter().map(|d| d.id + 1).max().unwrap_or(0);
        let keys = self.map.keys();
        let op = rand::random();
        let claim = |(d, id): (&FreeDisk, u32)| {
            let rec = DiskRecord {
                pool: Some(self.conf.pool.clone()),
                pool_disk: Some(id),
                ..d.rec.clone()
            };
            Change::put(
                keys.disk(&d.uuid),
                Expect::Revision(d.revision),
                encode(op, &rec),
            )
        };
        // A node serves at most NODE_DISKS_MAX (64) disks: one transaction holds them all.
        let changes: Vec<Change> = free.iter().zip(first..).map(claim).collect();
        let term = self.term_compare()?;
        match self
            .rt()
            .block_on(self.map.cas(op, &changes, Some(&term)))?
        {
            CasOutcome::Applied { .. } => {}
            CasOutcome::Conflict { .. } => {
                bail!("the cluster map changed meanwhile: run host add again")
            }
            CasOutcome::Deposed => bail!("this host is no longer the active metadata host"),
        }
        if let Err(e) = record_disks(fs, host, &free, first) {
            // Nothing names the disks here: give the claims back (else the next open does).
            for (d, id) in free.iter().zip(first..) {
                let _ = self.free_disk(&d.uuid, id);
            }
            return Err(e);
        }
        let mut ids = Vec::new();
        for (d, id) in free.iter().zip(first..) {
            fs.store
                .add_disk(self.remote_disk(id, (host, &d.uuid), DiskState::Up));
            tracing::info!(disk = id, host, uuid = %d.uuid, "remote disk added");
            ids.push(id);
        }
        Ok(ids)
    }

    /// The release half of `host remove`: each of the host's disks that holds nothing of
    /// this pool any more (drained: `removed`; or `failed` and named by no shard and no
    /// extent) is marked removed here (durably), then freed in the map for any pool.
    /// Refuses while any still holds data, and when there is nothing left to release.
    pub fn release_host(&self, fs: &Fs, host: &str) -> anyhow::Result<Vec<u32>> {
        let _one = self.admin.lock();
        let disks: Vec<Arc<Disk>> = fs
            .store
            .disks()
            .into_iter()
            .filter(|d| on_host(d, host))
            .collect();
        if disks.is_empty() {
            bail!("host {host} has no disk in this pool");
        }
        // Reaps still queued may name the disks: done before they are given away.
        fs.drain_reaper();
        let named = named_disks(fs)?;
        for d in &disks {
            let done = match d.state() {
                DiskState::Removed => true,
                DiskState::Failed => !named.contains(&d.id),
                _ => false,
            };
            if !done {
                bail!(
                    "disk {} on host {host} is {} and still holds data: drain the host first (`foreshard host drain`)",
                    d.id,
                    d.state().name()
                );
            }
        }
        for d in disks.iter().filter(|d| d.state() == DiskState::Failed) {
            fs.set_disk_state(d.id, DiskState::Removed)?;
        }
        // Removed must be durable before another pool may take the disk.
        fs.meta.sync_wal()?;
        let mut out = Vec::new();
        for d in &disks {
            let path = d.root.to_string_lossy();
            let (_, uuid) = parse_remote(&path).expect("filtered");
            if self.free_disk(uuid, d.id)? {
                tracing::info!(disk = d.id, host, %uuid, "remote disk released to the cluster");
                out.push(d.id);
            }
        }
        if out.is_empty() {
            bail!("host {host}: its disks in this pool are released already");
        }
        Ok(out)
    }

    /// Claims in the map on this pool's behalf that RocksDB does not name (a crash or an
    /// error between `host add`'s claim and its RocksDB write): nothing was placed on
    /// them, so they are freed. Run at open.
    pub(crate) fn free_stranded_claims(&self, meta: &crate::meta::Meta) -> anyhow::Result<()> {
        let here: HashSet<String> = meta
            .disks()?
            .iter()
            .filter_map(|r| parse_remote(&r.path).map(|(_, u)| u.to_string()))
            .collect();
        let prefix = self.map.keys().disks();
        let snap = self.rt().block_on(self.map.read_prefix(&prefix))?;
        for kv in snap.kvs {
            let rec = decode::<DiskRecord>(&kv.key, &kv.value)?.body;
            let uuid = kv.key.trim_start_matches(&prefix);
            if rec.pool.as_deref() == Some(&self.conf.pool) && !here.contains(uuid) {
                tracing::warn!(%uuid, host = %rec.host, "freeing a disk claim this pool never recorded");
                self.free_disk(uuid, rec.pool_disk.unwrap_or(u32::MAX))?;
            }
        }
        Ok(())
    }

    /// Clears this pool's claim on disk `uuid` (pool disk `id`); false when the map gives it
    /// to no pool or another one already.
    fn free_disk(&self, uuid: &str, id: u32) -> anyhow::Result<bool> {
        let key = self.map.keys().disk(uuid);
        let rt = self.rt();
        let Some(kv) = rt.block_on(self.map.get(&key))? else {
            return Ok(false);
        };
        let rec = decode::<DiskRecord>(&key, &kv.value)?.body;
        if rec.pool.as_deref() != Some(&self.conf.pool) || rec.pool_disk != Some(id) {
            return Ok(false);
        }
        let op = rand::random();
        let freed = DiskRecord {
            pool: None,
            pool_disk: None,
            ..rec
        };
        let change = Change::put(key, Expect::Revision(kv.mod_revision), encode(op, &freed));
        let term = self.term_compare()?;
        let outcome = rt
            .block_on(self.map.cas(op, &[change], Some(&term)))
            .with_context(|| format!("releasing disk {id}"))?;
        match outcome {
            CasOutcome::Applied { .. } => Ok(true),
            CasOutcome::Conflict { .. } => {
                bail!("disk {uuid}: its record changed meanwhile; run host remove again")
            }
            CasOutcome::Deposed => bail!("this host is no longer the active metadata host"),
        }
    }
}

/// The new disks in RocksDB (durably), before the store uses them.
fn record_disks(fs: &Fs, host: &str, free: &[FreeDisk], first: u32) -> anyhow::Result<()> {
    let mut b = fs.meta.batch();
    for (d, id) in free.iter().zip(first..) {
        b.put_disk(&DiskRec {
            id,
            path: remote_path(host, &d.uuid),
            state: DiskState::Up,
        });
    }
    fs.meta.write(b)?;
    fs.meta.sync_wal()?;
    Ok(())
}

/// Disks some shard or extent record names.
fn named_disks(fs: &Fs) -> anyhow::Result<HashSet<u32>> {
    let mut used: HashSet<u32> = fs
        .shard_table()
        .iter()
        .flat_map(|s| s.disks.clone())
        .collect();
    fs.meta.each_extent(|_, _, e| used.extend(e.replicas))?;
    Ok(used)
}
