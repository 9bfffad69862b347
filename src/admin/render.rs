//! Text renderings of the reports for the CLI: the status table and its recovery and
//! migration lines, the shards table.

use super::Status;
use crate::meta::DiskState;
use crate::recovery::RecoveryState;
use crate::util::fmt_bytes;

/// The `status` report as text: header and warnings, the disk table, then one line per
/// subsystem that reported.
pub fn status_table(s: &Status) -> String {
    let mut o = status_header(s);
    o += &disk_table(s);
    o += &host_table(s);
    o += &status_totals(s);
    if let Some(m) = &s.migration {
        o += &migration_line(m);
    }
    if let Some(r) = &s.risk {
        o += &risk_lines(r);
    }
    if let Some(r) = &s.recovery {
        o += &recovery_line(r);
    }
    o
}

/// Pool line, capacity, then (each followed by a blank line) health, metadata-full and the
/// FUSE transport.
fn status_header(s: &Status) -> String {
    let mut o = format!(
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
    if let Some(sb) = &s.standby {
        o.pop();
        o += &format!(
            "standby {}: {} (acknowledged WAL sequence {})\n\n",
            sb.host, sb.state, sb.acked_seq
        );
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
    o
}

fn disk_table(s: &Status) -> String {
    let mut o = format!(
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
    o
}

/// A cluster pool's storage hosts: their disks by state, and their space (nothing for a
/// single-host pool).
fn host_table(s: &Status) -> String {
    let mut hosts: std::collections::BTreeMap<&str, Vec<&super::DiskStatus>> = Default::default();
    for d in &s.disks {
        if let Some(h) = d.host.as_deref() {
            hosts.entry(h).or_default().push(d);
        }
    }
    if hosts.is_empty() {
        return String::new();
    }
    let mut o = format!(
        "\n{:<16} {:>5}  {:<28} {:>10} {:>10}\n",
        "HOST", "DISKS", "STATES", "USED", "FREE"
    );
    for (h, ds) in hosts {
        let mut states: std::collections::BTreeMap<&str, usize> = Default::default();
        for d in &ds {
            *states.entry(d.state.name()).or_default() += 1;
        }
        let states: Vec<String> = states.iter().map(|(s, n)| format!("{n} {s}")).collect();
        let used: u64 = ds.iter().map(|d| d.used_bytes).sum();
        let free: u64 = ds.iter().map(|d| d.free_bytes).sum();
        o += &format!(
            "{h:<16} {:>5}  {:<28} {:>10} {:>10}\n",
            ds.len(),
            states.join(", "),
            fmt_bytes(used),
            fmt_bytes(free)
        );
    }
    o
}

/// Shards and replica health, then I/O since mount, the agent pool and the analyzer.
fn status_totals(s: &Status) -> String {
    let h = &s.replica_health;
    let mut o = format!(
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
    o
}

/// Each disk's P(fail in 30 days) with its top factor, the riskiest shard, evacuation.
fn risk_lines(r: &crate::risk::service::Snapshot) -> String {
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
    let mut o = format!("risk P(fail 30d): {}\n", disks.join(", "));
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
