//! `foreshard risk POOL`: the text report, and argument checks.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::service::Snapshot;
use crate::util::fmt_bytes;

/// A health directory must exist; it is stored absolute (the daemon's cwd differs).
pub fn check_health_dir(d: &Path) -> anyhow::Result<PathBuf> {
    let c =
        std::fs::canonicalize(d).with_context(|| format!("health directory {}", d.display()))?;
    anyhow::ensure!(
        c.is_dir(),
        "health directory {}: not a directory",
        d.display()
    );
    Ok(c)
}

/// Per disk: P(fail in 30 days), level, source and top factors; then the shards most at
/// risk and evacuation progress.
pub fn risk_text(v: &serde_json::Value) -> anyhow::Result<String> {
    let mut o = String::new();
    let s: Snapshot = serde_json::from_value(v.clone()).context("bad risk report")?;
    let set = s.settings.clone().unwrap_or_default();
    if v.get("mounted").and_then(|m| m.as_bool()) == Some(false) {
        writeln!(
            o,
            "pool not mounted: scored now from the health files and the history the daemon kept"
        )?;
    }
    writeln!(
        o,
        "model: {} (Backblaze drive stats); warn at {:.0}%, evacuate at {:.0}%; health files: {}",
        s.model,
        set.warn * 100.0,
        set.evacuate * 100.0,
        set.health_dir
            .as_ref()
            .map_or("none".into(), |d| d.display().to_string())
    )?;
    writeln!(
        o,
        "{:>4}  {:>9}  {:<8}  {:<22}  top factors",
        "disk", "P(30d)", "level", "source"
    )?;
    for d in &s.disks {
        disk_lines(&mut o, d)?;
    }
    writeln!(
        o,
        "shards by P(lose every replica before repair, 30d) (repair at {}/s):",
        fmt_bytes(s.repair_rate_bytes_per_s as u64)
    )?;
    for sh in s.shards.iter().take(10) {
        writeln!(
            o,
            "  shard {:>5}  disks {:<12}  {:>9}  repair {:>7.0} s  P(loss) {:.3e}",
            sh.id,
            format!("{:?}", sh.disks),
            fmt_bytes(sh.bytes),
            sh.repair_s,
            sh.p_loss_30d
        )?;
    }
    if s.shards_total > 10 {
        writeln!(o, "  ({} shards in all)", s.shards_total)?;
    }
    if let Some(e) = &s.evacuation {
        writeln!(o, "{}", evacuation_line(e))?;
    }
    Ok(o)
}

/// One disk's row, then what foreshard itself saw and any health input problem.
fn disk_lines(o: &mut String, d: &super::service::DiskRisk) -> std::fmt::Result {
    let factors: Vec<String> = d
        .factors
        .iter()
        .map(|f| format!("{} +{:.2}", f.name, f.contribution))
        .collect();
    writeln!(
        o,
        "{:>4}  {:>8.3}%  {:<8}  {:<22}  {}",
        d.id,
        d.p_fail_30d * 100.0,
        d.level,
        d.source,
        if factors.is_empty() {
            "-".into()
        } else {
            factors.join(", ")
        }
    )?;
    let own = &d.own;
    if own.io_errors + own.checksum_errors + own.probe_timeouts + own.slow_intervals > 0 {
        writeln!(
            o,
            "        seen by foreshard: {} I/O errors, {} checksum failures, {} probe time-outs, {} slow intervals",
            own.io_errors, own.checksum_errors, own.probe_timeouts, own.slow_intervals
        )?;
    }
    if let Some(e) = &d.health_error {
        writeln!(o, "        health input problem: {e}")?;
    }
    Ok(())
}

pub fn evacuation_line(e: &crate::sharding::evacuate::EvacuationStatus) -> String {
    let mut l = format!(
        "evacuation: {} disks {:?}; {}/{} shards, {} of {} copied at {}/s (budget {}/s)",
        e.state,
        e.disks,
        e.shards_done,
        e.shards_total,
        fmt_bytes(e.bytes_done),
        fmt_bytes(e.bytes_total),
        fmt_bytes(e.rate_bytes_per_s as u64),
        fmt_bytes(e.rate_bytes_per_s_max),
    );
    if !e.evacuated.is_empty() {
        l.push_str(&format!("; evacuated: {:?}", e.evacuated));
    }
    if !e.shards_without_target.is_empty() {
        l.push_str(&format!(
            "; no target for shards {:?}",
            e.shards_without_target
        ));
    }
    l
}
