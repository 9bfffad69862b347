//! Whole-pool reports and checks: `status`, `shards`, `fsck`. Each works on an `Fs`, so the
//! daemon answers them over the control socket and the CLI runs them on an unmounted pool.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use crate::fs::{Fs, StatsSnapshot};
use crate::meta::DiskState;

mod fsck;
mod render;

pub use fsck::{fsck, FsckReport};
pub use render::{migration_line, recovery_line, shards_table, status_table};

#[derive(Serialize, Deserialize)]
pub struct DiskStatus {
    pub id: u32,
    pub path: String,
    pub state: DiskState,
    /// Bytes of extent replicas foreshard keeps on the disk.
    pub used_bytes: u64,
    /// Free bytes on the disk's filesystem.
    pub free_bytes: u64,
    pub total_bytes: u64,
    /// Extent replicas the disk holds.
    pub extents: u64,
    pub shards: u64,
    pub io_errors: u64,
    pub checksum_errors: u64,
    /// A write met ENOSPC on it (full is not failed).
    #[serde(default)]
    pub full: bool,
    #[serde(default)]
    pub fault: Option<crate::store::Fault>,
    /// The storage host of a cluster pool's disk (its path is `node://HOST/UUID`).
    #[serde(default)]
    pub host: Option<String>,
}

#[derive(Serialize, Deserialize)]
pub struct ReplicaHealth {
    pub extents: u64,
    pub replicas_expected: u64,
    pub replicas_present: u64,
    /// Extents with fewer live replicas than the pool's replica count.
    pub under_replicated: u64,
    /// Extents with no live replica at all.
    pub unavailable: u64,
}

#[derive(Serialize, Deserialize)]
pub struct ShardSummary {
    pub count: u64,
    pub with_failed_disk: u64,
}

#[derive(Serialize, Deserialize)]
pub struct Status {
    pub pool_id: String,
    pub mounted: bool,
    pub replicas: u32,
    pub extent_size_bytes: u64,
    pub capacity_bytes: u64,
    pub free_bytes: u64,
    pub disks: Vec<DiskStatus>,
    pub shards: ShardSummary,
    pub replica_health: ReplicaHealth,
    pub stats: Option<StatsSnapshot>,
    /// Recovery progress (mounted pools).
    #[serde(default)]
    pub recovery: Option<crate::recovery::RecoveryStatus>,
    /// The recovery agent pool and its limits (mounted pools).
    #[serde(default)]
    pub agents: Option<crate::agents::AgentStatus>,
    /// The access analyzer's counters and memory (mounted pools).
    #[serde(default)]
    pub access: Option<crate::access::AccessStats>,
    /// Re-sharding migration progress (mounted pools).
    #[serde(default)]
    pub migration: Option<crate::sharding::MigrationStatus>,
    /// Failure risk per disk and shard, and evacuation progress (mounted pools).
    #[serde(default)]
    pub risk: Option<crate::risk::service::Snapshot>,
    /// How the kernel's FUSE requests reach the daemon (mounted pools).
    #[serde(default)]
    pub fuse: Option<FuseTransport>,
    /// The daemon's own health: "ok", "degraded" (a thread panicked and was restarted) or
    /// "read-only" (writes refused), with the panics (mounted pools).
    #[serde(default)]
    pub health: Option<crate::supervise::Health>,
    /// The metadata filesystem's free space, its reserve, and whether it is full.
    #[serde(default)]
    pub metadata: Option<crate::metaspace::SpaceStatus>,
    /// A mounted cluster pool's standby metadata host, while one is connected.
    #[serde(default)]
    pub standby: Option<crate::cluster::StandbyStatus>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct FuseTransport {
    /// "io_uring" (one queue per CPU) or "/dev/fuse".
    pub transport: String,
    /// Threads serving io_uring queues (0 with /dev/fuse).
    pub ring_threads: usize,
}

impl FuseTransport {
    pub fn current() -> FuseTransport {
        let n = fuser::io_uring_threads();
        FuseTransport {
            transport: if n > 0 { "io_uring" } else { "/dev/fuse" }.into(),
            ring_threads: n,
        }
    }
}

pub fn status(fs: &Fs, mounted: bool) -> anyhow::Result<Status> {
    let all = fs.store.disks();
    let live: HashSet<u32> = all.iter().filter(|d| d.is_up()).map(|d| d.id).collect();
    let (h, used) = replica_health(fs, &live)?;
    let (shard_count, with_failed) = shards_per_disk(fs, &live);
    let disks = all
        .iter()
        .map(|d| {
            let path = d.root.to_string_lossy().into_owned();
            let host = crate::cluster::parse_remote(&path).map(|(h, _)| h.to_string());
            // A remote disk whose host does not answer would hold status up for seconds.
            let away = d.is_remote() && d.state() != DiskState::Up;
            let (total, free) = if away {
                (0, 0)
            } else {
                d.space().unwrap_or((0, 0))
            };
            let (u, n) = used.get(&d.id).copied().unwrap_or((0, 0));
            DiskStatus {
                id: d.id,
                path,
                host,
                state: d.state(),
                used_bytes: u,
                free_bytes: free,
                total_bytes: total,
                extents: n,
                shards: shard_count.get(&d.id).copied().unwrap_or(0),
                io_errors: d.io_errors.load(Ordering::Relaxed),
                checksum_errors: d.checksum_errors.load(Ordering::Relaxed),
                full: d.full.load(Ordering::Relaxed),
                fault: Some(d.fault()).filter(|f| *f != crate::store::Fault::default()),
            }
        })
        .collect();
    let st = fs.statfs();
    Ok(Status {
        pool_id: fs.cfg.pool_id.clone(),
        mounted,
        replicas: fs.cfg.replicas,
        extent_size_bytes: fs.cfg.extent_size,
        capacity_bytes: st.total_bytes,
        free_bytes: st.free_bytes,
        disks,
        shards: ShardSummary {
            count: fs.shard_count() as u64,
            with_failed_disk: with_failed,
        },
        replica_health: h,
        stats: mounted.then(|| fs.stats()),
        recovery: None,
        agents: None,
        access: None,
        migration: None,
        risk: None,
        fuse: None,
        health: None,
        standby: None,
        metadata: Some(fs.meta.space_status()),
    })
}

/// Per disk: (bytes, extent replicas) it holds.
type DiskUse = HashMap<u32, (u64, u64)>;

/// Replica health over every extent, and what each disk holds.
fn replica_health(fs: &Fs, live: &HashSet<u32>) -> anyhow::Result<(ReplicaHealth, DiskUse)> {
    let mut used: HashMap<u32, (u64, u64)> = HashMap::new();
    let mut h = ReplicaHealth {
        extents: 0,
        replicas_expected: 0,
        replicas_present: 0,
        under_replicated: 0,
        unavailable: 0,
    };
    fs.meta.each_extent(|_, _, e| {
        h.extents += 1;
        h.replicas_expected += u64::from(fs.cfg.replicas);
        let n = e.replicas.iter().filter(|d| live.contains(d)).count() as u64;
        h.replicas_present += n;
        if n < u64::from(fs.cfg.replicas) {
            h.under_replicated += 1;
        }
        if n == 0 {
            h.unavailable += 1;
        }
        for d in &e.replicas {
            let u = used.entry(*d).or_default();
            u.0 += u64::from(e.len);
            u.1 += 1;
        }
    })?;
    Ok((h, used))
}

/// Shards per disk, and how many shards have a disk that is not up.
fn shards_per_disk(fs: &Fs, live: &HashSet<u32>) -> (HashMap<u32, u64>, u64) {
    let mut shard_count: HashMap<u32, u64> = HashMap::new();
    let mut with_failed = 0;
    for i in 0..fs.shard_count() as u32 {
        let s = fs.shard(i);
        if s.disks.iter().any(|d| !live.contains(d)) {
            with_failed += 1;
        }
        for d in &s.disks {
            *shard_count.entry(*d).or_default() += 1;
        }
    }
    (shard_count, with_failed)
}
