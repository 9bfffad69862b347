//! Whole-pool reports and checks: `status`, `shards`, `fsck`. Each works on an `Fs`, so the
//! daemon answers them over the control socket and the CLI runs them on an unmounted pool.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use crate::fs::{Fs, StatsSnapshot};
use crate::meta::{
    DirentVal, DiskState, ExtentRec, InodeRec, Kind, CF_DIRENTS, CF_INODES, CF_ORPHANS, CF_XATTRS,
    ROOT_INO,
};
use crate::recovery::RecoveryState;
use crate::store::ExtentId;
use crate::util::fmt_bytes;

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
    let disks = fs.store.disks();
    let mut used: HashMap<u32, (u64, u64)> = HashMap::new();
    let mut h = ReplicaHealth {
        extents: 0,
        replicas_expected: 0,
        replicas_present: 0,
        under_replicated: 0,
        unavailable: 0,
    };
    let live: HashSet<u32> = disks.iter().filter(|d| d.is_up()).map(|d| d.id).collect();
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
    let disks = disks
        .iter()
        .map(|d| {
            let (total, free) = d.space().unwrap_or((0, 0));
            let (u, n) = used.get(&d.id).copied().unwrap_or((0, 0));
            DiskStatus {
                id: d.id,
                path: d.root.to_string_lossy().into_owned(),
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
        metadata: Some(fs.meta.space_status()),
    })
}

pub fn status_table(s: &Status) -> String {
    let mut o = String::new();
    o += &format!(
        "pool {}  ({}, {} replica(s), extent {})\ncapacity {}  free {}\n\n",
        s.pool_id,
        if s.mounted { "mounted" } else { "not mounted" },
        s.replicas,
        fmt_bytes(s.extent_size_bytes),
        fmt_bytes(s.capacity_bytes),
        fmt_bytes(s.free_bytes)
    );
    if let Some(h) = s
        .health
        .as_ref()
        .filter(|h| h.state != crate::supervise::HealthState::Ok)
    {
        o.pop();
        o += &format!("pool {}", h.state.as_str().to_uppercase());
        if let Some(why) = &h.writes_refused {
            o += &format!(": writes refused ({why})");
        }
        o += "\n";
        for p in &h.panics {
            let then = if p.restarted {
                "restarted"
            } else {
                "not restarted"
            };
            o += &format!("  thread {} panicked ({then}): {}\n", p.thread, p.message);
        }
        o += "\n";
    }
    if let Some(m) = s.metadata.as_ref().filter(|m| m.full) {
        o.pop();
        o += &format!(
            "METADATA FULL: new files and writes get ENOSPC until its filesystem has {} free (now {}); rm works\n\n",
            fmt_bytes(m.resume_bytes),
            fmt_bytes(m.free_bytes)
        );
    }
    if let Some(f) = &s.fuse {
        o.pop();
        if f.ring_threads > 0 {
            o += &format!(
                "fuse requests via io_uring ({} threads)\n\n",
                f.ring_threads
            );
        } else {
            o += &format!("fuse requests via {}\n\n", f.transport);
        }
    }
    o += &format!(
        "{:>4}  {:<8} {:>10} {:>10} {:>9} {:>7} {:>6} {:>6}  {}\n",
        "DISK", "STATE", "USED", "FREE", "EXTENTS", "SHARDS", "IOERR", "CSUM", "PATH"
    );
    for d in &s.disks {
        o += &format!(
            "{:>4}  {:<8} {:>10} {:>10} {:>9} {:>7} {:>6} {:>6}  {}\n",
            d.id,
            if d.full && d.state == DiskState::Up {
                "full"
            } else {
                d.state.name()
            },
            fmt_bytes(d.used_bytes),
            fmt_bytes(d.free_bytes),
            d.extents,
            d.shards,
            d.io_errors,
            d.checksum_errors,
            d.path
        );
    }
    let h = &s.replica_health;
    o += &format!(
        "\nshards: {} ({} on a failed disk)\nextents: {}  replicas {}/{}  under-replicated {}  unavailable {}\n",
        s.shards.count,
        s.shards.with_failed_disk,
        h.extents,
        h.replicas_present,
        h.replicas_expected,
        h.under_replicated,
        h.unavailable
    );
    if let Some(st) = &s.stats {
        o += &format!(
            "since mount: read {}  written {}  bad replica reads {}  repaired {}  degraded writes {}\n",
            fmt_bytes(st.bytes_read),
            fmt_bytes(st.bytes_written),
            st.replica_read_failures,
            st.repairs_done,
            st.degraded_writes
        );
    }
    if let Some(a) = &s.agents {
        o += &format!(
            "recovery agents: {} ({}{}), {} ring(s), buffers {} of {}, queue depth {}, open files {}/{}, plan {} extents, reserved {}\n",
            a.agents,
            a.mode,
            if a.ready { ", ready" } else { ", planning" },
            a.rings,
            fmt_bytes(a.buffer_bytes),
            fmt_bytes(a.buffer_bytes_max),
            a.queue_depth,
            a.fds_open,
            a.fds_max,
            a.plan_extents,
            fmt_bytes(a.reserved_bytes)
        );
    }
    if let Some(a) = &s.access {
        o += &format!(
            "access analyzer: {} events ({} dropped), {} extents tracked, {} pairs, memory {} (max {}), cpu {} ms\n",
            a.events_applied,
            a.events_dropped,
            a.extents_tracked,
            a.pairs_tracked,
            fmt_bytes(a.memory_bytes as u64),
            fmt_bytes(a.memory_bytes_max as u64),
            a.cpu_ms
        );
    }
    if let Some(m) = &s.migration {
        o += &migration_line(m);
    }
    if let Some(r) = &s.risk {
        let disks: Vec<String> = r
            .disks
            .iter()
            .map(|d| {
                let top = d
                    .factors
                    .first()
                    .map_or(String::new(), |f| format!(" ({})", f.name));
                format!(
                    "{} {:.2}%{}{}",
                    d.id,
                    d.p_fail_30d * 100.0,
                    top,
                    match d.level.as_str() {
                        "ok" => String::new(),
                        l => format!(" [{l}]"),
                    }
                )
            })
            .collect();
        o += &format!("risk P(fail 30d): {}\n", disks.join(", "));
        if let Some(sh) = r.shards.first() {
            o += &format!(
                "riskiest shard: {} on {:?}, P(lose every replica before repair) {:.2e}\n",
                sh.id, sh.disks, sh.p_loss_30d
            );
        }
        if let Some(e) = &r.evacuation {
            if e.state != crate::sharding::evacuate::EvacuationState::Idle || !e.disks.is_empty() {
                o += &crate::risk::report::evacuation_line(e);
                o += "\n";
            }
        }
    }
    if let Some(r) = &s.recovery {
        o += &recovery_line(r);
    }
    o
}

/// One line on the re-sharding migration (status, reshard).
pub fn migration_line(m: &crate::sharding::MigrationStatus) -> String {
    format!(
        "re-sharding: {}, {}/{} moves ({} of {}), {} copied at {}/s (budget {}/s), {} retried, {} dropped; {} copied since mount\n",
        m.state,
        m.moves_done,
        m.moves_total,
        fmt_bytes(m.bytes_done),
        fmt_bytes(m.bytes_total),
        fmt_bytes(m.bytes_copied),
        fmt_bytes(m.rate_bytes_per_s as u64),
        fmt_bytes(m.rate_bytes_per_s_max),
        m.moves_retried,
        m.moves_dropped,
        fmt_bytes(m.bytes_moved_since_mount)
    )
}

/// One-paragraph summary of a recovery (status, recover).
pub fn recovery_line(r: &crate::recovery::RecoveryStatus) -> String {
    let mut o = String::new();
    if r.state == RecoveryState::Idle {
        return "recovery: idle (no failure seen since mount)\n".into();
    }
    o += &format!(
        "recovery: {}  {} of {} ({} of {} extents), {}/s{}{}\n",
        r.state,
        fmt_bytes(r.bytes_done),
        fmt_bytes(r.bytes_total),
        r.extents_done,
        r.extents_total,
        fmt_bytes(r.rate_bytes_per_s as u64),
        r.eta_s
            .filter(|_| r.state == RecoveryState::Running)
            .map(|e| format!(", ETA {e:.0} s"))
            .unwrap_or_default(),
        r.activation_us
            .map(|a| format!(", activation {:.2} ms", a as f64 / 1e3))
            .unwrap_or_default()
    );
    for f in &r.failures {
        o += &format!("  disk {} failed: {}\n", f.disk, f.reason);
    }
    if r.state == RecoveryState::Running {
        for sp in r
            .shards
            .iter()
            .filter(|s| s.bytes_done < s.bytes_total)
            .take(8)
        {
            o += &format!(
                "  shard {:>4} -> disks {:?} (epoch {}): {} of {}{}\n",
                sp.id,
                sp.disks,
                sp.epoch,
                fmt_bytes(sp.bytes_done),
                fmt_bytes(sp.bytes_total),
                sp.eta_s
                    .map(|e| format!(", ETA {e:.0} s"))
                    .unwrap_or_default()
            );
        }
    }
    if !r.shards_without_target.is_empty() {
        o += &format!(
            "  {} shard(s) have no target disk (add a disk): {:?}\n",
            r.shards_without_target.len(),
            r.shards_without_target
        );
    }
    for l in &r.lost_shards {
        o += &format!(
            "  LOST shard {}: {} extent(s) with no surviving replica, files: {}\n",
            l.id,
            l.extents,
            l.files.join(", ")
        );
    }
    o
}

pub fn shards_table(s: &crate::sharding::report::Shards) -> String {
    let mut o = format!(
        "{:>6} {:>6} {:>8} {:>10} {:>8}  EXTENTS (path:index)\n",
        "SHARD", "EPOCH", "CLASS", "DISKS", "COUNT"
    );
    for sh in &s.shards {
        let disks = sh
            .disks
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let mut list: Vec<String> = sh
            .extents
            .iter()
            .take(4)
            .map(|e| format!("{}:{}", e.path.as_deref().unwrap_or("(unlinked)"), e.index))
            .collect();
        if sh.extents.len() > 4 {
            list.push(format!("... {} more", sh.extents.len() - 4));
        }
        o += &format!(
            "{:>6} {:>6} {:>8} {:>10} {:>8}  {}\n",
            sh.id,
            sh.epoch,
            sh.class.name(),
            disks,
            sh.extents.len(),
            list.join(" ")
        );
    }
    o
}

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

/// Verifies every replica of every extent and the metadata against itself; with `repair`,
/// rewrites bad copies from a good replica, restores missing replicas, fixes link counts and
/// removes orphans.
pub fn fsck(fs: &Fs, repair: bool) -> anyhow::Result<FsckReport> {
    fs.drain_reaper();
    // One consistent view of the metadata; what changes after it is looked at again before
    // it is called damage.
    let view = fs.meta.view();
    let mut r = FsckReport::default();
    let problem = |r: &mut FsckReport, fixed: bool, msg: String| {
        tracing::warn!("fsck: {msg}{}", if fixed { " (repaired)" } else { "" });
        r.problems.push(if fixed {
            format!("{msg} (repaired)")
        } else {
            msg
        });
        if fixed {
            r.repaired += 1;
        } else {
            r.unrepaired += 1;
        }
    };
    let inodes: HashMap<u64, InodeRec> = view
        .all::<InodeRec>(CF_INODES)?
        .into_iter()
        .map(|(k, v)| (u64::from_be_bytes(k[..8].try_into().unwrap()), v))
        .collect();
    r.inodes = inodes.len() as u64;
    let orphans: HashSet<u64> = view
        .keys(CF_ORPHANS)?
        .iter()
        .map(|k| u64::from_be_bytes(k[..8].try_into().unwrap()))
        .collect();
    let mut links: HashMap<u64, u32> = HashMap::new();
    let mut subdirs: HashMap<u64, u32> = HashMap::new();
    let mut dir_parent: HashMap<u64, u64> = HashMap::new();
    let mut b = fs.meta.batch();
    for (k, v) in view.all::<DirentVal>(CF_DIRENTS)? {
        let parent = u64::from_be_bytes(k[..8].try_into().unwrap());
        let name = String::from_utf8_lossy(&k[16..]).into_owned();
        if crate::meta::dirent_key(parent, &k[16..]) != k {
            problem(
                &mut r,
                false,
                format!("directory entry {name:?} in {parent} has a wrong key"),
            );
        }
        match (inodes.get(&parent), inodes.get(&v.ino)) {
            (Some(p), Some(c)) if p.kind == Kind::Dir && c.kind == v.kind => {
                *links.entry(v.ino).or_default() += 1;
                if v.kind == Kind::Dir {
                    *subdirs.entry(parent).or_default() += 1;
                    dir_parent.insert(v.ino, parent);
                }
            }
            _ => {
                if repair {
                    b.del_dirent(parent, &k[16..]);
                }
                problem(&mut r, repair, format!("directory entry {name:?} in {parent} points to missing or mismatched inode {}", v.ino));
            }
        }
    }
    let mut dead = Vec::new();
    for (ino, rec) in &inodes {
        let ino = *ino;
        let n = links.get(&ino).copied().unwrap_or(0);
        if ino != ROOT_INO && n == 0 {
            // Unlinked while open: freed at its last close (or at the next mount).
            if orphans.contains(&ino) {
                continue;
            }
            if repair {
                dead.push(ino);
            }
            problem(
                &mut r,
                repair,
                format!("inode {ino} is not in any directory (orphan)"),
            );
            continue;
        }
        let want = if rec.kind == Kind::Dir {
            2 + subdirs.get(&ino).copied().unwrap_or(0)
        } else {
            n
        };
        let mut fixed = rec.clone();
        if rec.nlink != want {
            fixed.nlink = want;
            problem(
                &mut r,
                repair,
                format!("inode {ino} has link count {} but {want} links", rec.nlink),
            );
        }
        if rec.kind == Kind::Dir {
            let p = if ino == ROOT_INO {
                ROOT_INO
            } else {
                dir_parent.get(&ino).copied().unwrap_or(0)
            };
            if rec.parent != p {
                fixed.parent = p;
                problem(
                    &mut r,
                    repair,
                    format!(
                        "directory {ino} records parent {} but lives in {p}",
                        rec.parent
                    ),
                );
            }
        }
        if repair && &fixed != rec {
            b.put_inode(ino, &fixed);
        }
    }
    for k in view.keys(CF_XATTRS)? {
        let ino = u64::from_be_bytes(k[..8].try_into().unwrap());
        if !inodes.contains_key(&ino) {
            if repair {
                b.del_xattr(ino, &k[8..]);
            }
            problem(
                &mut r,
                repair,
                format!("extended attribute of missing inode {ino}"),
            );
        }
    }
    if repair && !b.is_empty() {
        fs.meta.write(b)?;
    }
    for ino in dead {
        fs.delete_inode(ino)
            .map_err(|e| anyhow::anyhow!("cannot free inode {ino}: errno {}", e.0))?;
    }

    // Data: every replica of every extent, every block.
    let mut exts: Vec<(u64, u64, ExtentRec)> = Vec::new();
    // After repairs above, a fresh view; else the same instant as the namespace checks.
    let view = if repair { fs.meta.view() } else { view };
    view.each_extent(|ino, index, e| exts.push((ino, index, e)))?;
    r.extents = exts.len() as u64;
    let mut live_files: HashSet<(u32, u64, u64, u64)> = HashSet::new();
    for (ino, index, e) in exts {
        let owner = inodes.get(&ino);
        let beyond = owner.is_some_and(|o| index * fs.cfg.extent_size >= o.size);
        // On a mounted pool the inode snapshot may predate a write: look again before judging.
        let still_bad = || match fs.getattr(ino) {
            Ok(a) => a.kind != Kind::File || index * fs.cfg.extent_size >= a.size,
            Err(_) => true,
        };
        if (owner.is_none_or(|o| o.kind != Kind::File) || beyond) && still_bad() {
            let what = if beyond {
                "past the end of"
            } else {
                "of missing inode"
            };
            if repair {
                fs.cas_extent(ino, index, e.version, None)
                    .map_err(|e| anyhow::anyhow!("errno {}", e.0))?;
            } else {
                for d in &e.replicas {
                    live_files.insert((*d, ino, index, e.version));
                }
            }
            problem(&mut r, repair, format!("extent {index} {what} file {ino}"));
            continue;
        }
        for d in &e.replicas {
            live_files.insert((*d, ino, index, e.version));
        }
        let id = ExtentId {
            ino,
            index,
            version: e.version,
        };
        let mut bad = Vec::new();
        for d in &e.replicas {
            let Some(disk) = fs.store.disk(*d).filter(|d| d.is_up()) else {
                continue;
            };
            r.replicas_checked += 1;
            match fs
                .store
                .read_verified(&disk, &id, &e.sums, 0, e.len as usize)
            {
                Ok(_) => {
                    // A longer file has bytes the checksums do not cover.
                    let len = std::fs::metadata(disk.extent_path(&id))
                        .map(|m| m.len())
                        .unwrap_or(0);
                    if len != u64::from(e.len) {
                        bad.push((*d, format!("length {len}, expected {}", e.len)));
                    } else {
                        r.bytes_verified += u64::from(e.len);
                    }
                }
                Err(err) => bad.push((*d, err.to_string())),
            }
        }
        let path_of = |ino| format!("inode {ino}");
        // A version replaced since the view was taken, or a replica a drain, an evacuation
        // or a migration dropped since (its file reaped), is not damage: look again.
        if !bad.is_empty() {
            let Some(now) = current_extent(fs, ino, index, e.version) else {
                continue;
            };
            bad.retain(|(d, _)| now.replicas.contains(d));
        }
        for (d, why) in bad {
            let mut fixed = false;
            if repair {
                // Under the guard nothing drops this replica meanwhile; a copy it no longer
                // names is not rewritten (that would leave a stray).
                let _g = fs.recovery_guard();
                let Some(now) =
                    current_extent(fs, ino, index, e.version).filter(|c| c.replicas.contains(&d))
                else {
                    continue;
                };
                if let Some(data) = fs.read_good_copy(ino, index, &now) {
                    if let Some(disk) = fs.store.disk(d) {
                        fixed = fs.store.rewrite_extent(&disk, &id, &data).is_ok();
                    }
                }
            }
            problem(
                &mut r,
                fixed,
                format!("{} extent {index} replica on disk {d}: {why}", path_of(ino)),
            );
        }
        let live_disks = fs.store.readable(&e.replicas);
        // Looked at again: a recovery may have restored the replicas since the view.
        let short = |e: &ExtentRec| (fs.store.readable(&e.replicas).len() as u32) < fs.cfg.replicas;
        if short(&e) && current_extent(fs, ino, index, e.version).is_some_and(|c| short(&c)) {
            let fixed = repair && restore_replicas(fs, ino, index, e.version, &mut live_files);
            problem(
                &mut r,
                fixed,
                format!(
                    "inode {ino} extent {index} has {} of {} replicas",
                    live_disks.len(),
                    fs.cfg.replicas
                ),
            );
        }
    }
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
            if live_files.contains(&(disk.id, id.ino, id.index, id.version))
                || fs.is_open(id.ino)
                || referenced_now()
            {
                continue;
            }
            if !repair {
                r.debris += 1;
                continue;
            }
            // Recovery, evacuation and migration hold this from installing a copy until it
            // is committed (or removed): under it, an unnamed copy is not in flight.
            let _g = fs.recovery_guard();
            if !referenced_now() && !fs.is_open(id.ino) {
                // Through the reaper: gone only once no durable record can name it.
                fs.reap(disk.id, id);
                r.debris += 1;
                tracing::info!(disk = disk.id, "fsck: stray extent file {id:?} removed");
            }
        }
    }
    r.clean = r.unrepaired == 0;
    Ok(r)
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
        if fs.store.rewrite_extent(&disk, &id, &data).is_ok() {
            replicas.push(d);
            files.insert((d, ino, index, e.version));
        }
    }
    let mut rec = e.clone();
    rec.replicas = replicas;
    fs.cas_extent(ino, index, e.version, Some(&rec)) == Ok(true)
        && rec.replicas.len() >= fs.cfg.replicas as usize
}
