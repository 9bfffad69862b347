//! `host add` and the release half of `host remove` on a mounted cluster pool: a storage
//! host's registered disks claimed into the pool, or given back to the cluster, always in
//! the cluster map first (the claim is the truth; RocksDB follows). The drain between them
//! is recovery's (`Orchestrator::drain_host`).

use std::sync::Arc;

use anyhow::{bail, Context};

use foreshard_cluster::batch::{Change, Expect, TXN_RECORDS_MAX};
use foreshard_cluster::map::CasOutcome;
use foreshard_cluster::records::{decode, encode, DiskRecord};

use crate::cluster::{parse_remote, remote_path, Cluster};
use crate::cluster_init::{free_disks, FreeDisk};
use crate::fs::Fs;
use crate::meta::{DiskRec, DiskState};

/// Disks one `host add` claims (one transaction with the term compare); add again for more.
const HOST_ADD_DISKS_MAX: usize = TXN_RECORDS_MAX - 1;

impl Cluster {
    /// The disks `host` registered that this pool may take: free ones, and this pool's own
    /// that a drain released (state `removed` here, so they come back under new ids).
    fn claimable(&self, fs: &Fs, host: &str) -> anyhow::Result<Vec<FreeDisk>> {
        let mine_removed = |uuid: &str| {
            fs.store.disks().iter().any(|d| {
                d.state() == DiskState::Removed
                    && parse_remote(&d.root.to_string_lossy()).is_some_and(|(_, u)| u == uuid)
            })
        };
        let mut out = self
            .rt()
            .block_on(free_disks(&self.map, Some(&self.conf.pool)))?;
        out.retain(|d| {
            d.rec.host == host
                && (d.rec.pool.is_none()
                    || (d.rec.pool.as_deref() == Some(&self.conf.pool) && mine_removed(&d.uuid)))
        });
        Ok(out)
    }

    /// `host add`: claims the host's free disks (compare-and-swap on each record, with this
    /// metadata host's term), then records them in RocksDB and the store. Returns their ids.
    pub fn add_host(self: &Arc<Self>, fs: &Fs, host: &str) -> anyhow::Result<Vec<u32>> {
        let _one = self.admin.lock();
        let mut free = self.claimable(fs, host)?;
        if free.is_empty() {
            bail!(
                "host {host} has no free disk: is it alive, its disks registered (`foreshard hosts`) and not claimed by a pool?"
            );
        }
        if free.len() > HOST_ADD_DISKS_MAX {
            tracing::warn!(
                host,
                "host add takes {HOST_ADD_DISKS_MAX} disks; add again for the rest"
            );
            free.truncate(HOST_ADD_DISKS_MAX);
        }
        let first = fs.store.disks().iter().map(|d| d.id + 1).max().unwrap_or(0);
        let keys = self.map.keys();
        let op = rand::random();
        let changes: Vec<Change> = free
            .iter()
            .zip(first..)
            .map(|(d, id)| {
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
            })
            .collect();
        let term = self.term_compare()?;
        for (batch, outcome) in self
            .rt()
            .block_on(self.map.commit(op, changes, Some(&term)))?
        {
            match outcome {
                CasOutcome::Applied { .. } => {}
                CasOutcome::Conflict { .. } => bail!(
                    "the cluster map changed meanwhile ({} not as read): run host add again",
                    batch[0].key
                ),
                CasOutcome::Deposed => bail!("this host is no longer the active metadata host"),
            }
        }
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
    /// this pool any more (drained: `removed`; or `failed` and named by no shard) is marked
    /// removed here, then freed in the map for any pool. Refuses while any still holds data.
    pub fn release_host(&self, fs: &Fs, host: &str) -> anyhow::Result<Vec<u32>> {
        let _one = self.admin.lock();
        let disks: Vec<_> = fs
            .store
            .disks()
            .into_iter()
            .filter(|d| parse_remote(&d.root.to_string_lossy()).is_some_and(|(h, _)| h == host))
            .collect();
        if disks.is_empty() {
            bail!("host {host} has no disk in this pool");
        }
        let named: std::collections::HashSet<u32> = fs
            .shard_table()
            .iter()
            .flat_map(|s| s.disks.clone())
            .collect();
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
        let mut out = Vec::new();
        for d in &disks {
            if d.state() == DiskState::Failed {
                fs.set_disk_state(d.id, DiskState::Removed)?;
            }
            let (_, uuid) = parse_remote(&d.root.to_string_lossy())
                .map(|(h, u)| (h.to_string(), u.to_string()))
                .expect("filtered");
            if self.free_disk(&uuid, d.id)? {
                tracing::info!(disk = d.id, host, %uuid, "remote disk released to the cluster");
                out.push(d.id);
            }
        }
        Ok(out)
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
