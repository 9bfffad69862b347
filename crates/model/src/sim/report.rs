//! The simulator's table and SVG chart.

use std::fmt::Write;

use super::{SimReport, BACKBLAZE_URL};

const TB: f64 = 1e12;
const GIB: f64 = (1u64 << 30) as f64;

fn pct(x: f64) -> String {
    format!("{:.2}%", x * 100.0)
}

pub fn table(r: &SimReport) -> String {
    let (f, p) = (&r.fleet, &r.params);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "foreshard sim: {} disks x {} years ({} days), {} replicas, {:.0} GiB shards, \
         {:.1} TB disks {:.0}% full at the start ({} shards), seed {}",
        f.disks,
        f.years,
        f.days,
        p.replicas,
        p.shard_bytes as f64 / GIB,
        p.capacity_bytes as f64 / TB,
        p.fill * 100.0,
        r.policies.first().map_or(0, |o| o.shards),
        p.seed
    );
    let _ = writeln!(
        s,
        "fleet: {} disk failures, annualized failure rate {} (the file's: {} over {} {}drives, \
         {} of them failed)",
        f.failures,
        pct(f.fleet_afr),
        pct(f.file_afr),
        f.drives_used,
        if f.held_out_only { "held-out " } else { "" },
        f.failing_drives_used
    );
    if f.held_out_only {
        let _ = writeln!(
            s,
            "       disks follow the daily histories of the {} of {} drives the failure model \
             was not trained on (--all-drives: all)",
            f.drives_used, f.drives_in_file
        );
    }
    let _ = writeln!(
        s,
        "repair: {:.0} MB/s per shard stream, {} streams per disk, detection {:.0} s; \
         warning at p >= {}, evacuation at p >= {} with {:.0} MB/s per disk",
        p.repair_bytes_per_s / 1e6,
        p.repair_streams,
        p.detect_s,
        p.risk_warn,
        p.evacuate_p,
        p.evacuate_bytes_per_s / 1e6
    );
    let _ = writeln!(
        s,
        "data: Backblaze Hard Drive Data and Stats ({BACKBLAZE_URL}), {}",
        f.health_file
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<14} {:>9} {:>10} {:>14} {:>11} {:>12} {:>17} {:>16} {:>9} {:>8}",
        "policy",
        "data-loss",
        "expected",
        "degraded TB-h",
        "rebuilt TB",
        "migrated TB",
        "failures (w/data)",
        "evacuated (fail)",
        "max degr",
        "repair h"
    );
    for o in &r.policies {
        let _ = writeln!(
            s,
            "{:<14} {:>9} {:>10.4} {:>14.1} {:>11.1} {:>12.1} {:>17} {:>16} {:>9} {:>8.2}",
            o.name,
            o.data_loss_events,
            o.expected_data_loss_events,
            o.degraded_byte_hours / TB,
            o.rebuilt_bytes as f64 / TB,
            o.migrated_bytes as f64 / TB,
            format!("{} ({})", o.failures, o.failures_with_data),
            format!(
                "{} ({})",
                o.evacuations_started, o.failures_after_evacuation
            ),
            o.max_degraded_shards,
            o.mean_repair_hours
        );
    }
    let stalled: u64 = r.policies.iter().map(|o| o.repairs_stalled).sum();
    if stalled > 0 {
        let _ = writeln!(
            s,
            "note: {stalled} repair attempts found no disk with room (retried daily)"
        );
    }
    let _ = write!(
        s,
        "\n\
         data-loss: shards that lost every replica (each then re-created elsewhere)\n\
         expected: sum over repairs of P(every disk still holding the shard fails before the \
         repair is done), from the disks' risk\n\
         degraded: bytes x hours below {} live replicas; rebuilt: copied after failures; \
         migrated: copied off at-risk disks before they failed\n\
         evacuated: disks drained at the evacuation threshold (fail: of them, failed later); \
         max degr: most shards degraded at once\n\
         repair h: mean hours from a failure to the replica restored (detection, waiting for \
         a stream, copy)\n\
         simulated in {:.1} s\n",
        p.replicas, r.elapsed_s
    );
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const COLORS: [&str; 4] = ["#888888", "#4e79a7", "#f28e2b", "#59a14f"];

/// A grouped bar chart: one group per metric, one bar per policy, each group scaled to its
/// own largest value (the metrics have different units), values written on the bars.
pub fn svg(r: &SimReport) -> String {
    type Metric = (&'static str, fn(&super::Outcome) -> f64, &'static str);
    let metrics: [Metric; 5] = [
        ("data-loss events", |o| o.data_loss_events as f64, ""),
        (
            "expected data-loss events",
            |o| o.expected_data_loss_events,
            "",
        ),
        (
            "degraded byte-hours",
            |o| o.degraded_byte_hours / TB,
            " TB-h",
        ),
        ("rebuilt bytes", |o| o.rebuilt_bytes as f64 / TB, " TB"),
        ("migrated bytes", |o| o.migrated_bytes as f64 / TB, " TB"),
    ];
    let (w, h) = (1100.0, 470.0);
    let (top, base) = (70.0, 360.0);
    let group_w = (w - 80.0) / metrics.len() as f64;
    let bar_w = (group_w - 40.0) / r.policies.len().max(1) as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>"#
    );
    let f = &r.fleet;
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="16">{}</text>"#,
        w / 2.0,
        esc(&format!(
            "foreshard sim: {} disks x {} years, {} replicas, {} failures (seed {})",
            f.disks, f.years, r.params.replicas, f.failures, r.params.seed
        ))
    );
    for (k, o) in r.policies.iter().enumerate() {
        let x = 40.0 + k as f64 * 160.0;
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="38" width="12" height="12" fill="{}"/><text x="{}" y="49">{}</text>"#,
            COLORS[k % COLORS.len()],
            x + 16.0,
            esc(&o.name)
        );
    }
    for (g, (label, get, unit)) in metrics.iter().enumerate() {
        let gx = 40.0 + g as f64 * group_w;
        let vals: Vec<f64> = r.policies.iter().map(get).collect();
        let max = vals.iter().copied().fold(0.0, f64::max);
        for (k, v) in vals.iter().enumerate() {
            let bh = if max > 0.0 {
                v / max * (base - top - 20.0)
            } else {
                0.0
            };
            let x = gx + 20.0 + k as f64 * bar_w;
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{bh:.1}" fill="{}"><title>{}: {}</title></rect>"#,
                base - bh,
                bar_w - 4.0,
                COLORS[k % COLORS.len()],
                esc(&r.policies[k].name),
                esc(label)
            );
            let text = if v.fract() == 0.0 || *v >= 100.0 {
                format!("{v:.0}")
            } else if *v < 10.0 {
                format!("{v:.3}")
            } else {
                format!("{v:.1}")
            };
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{}</text>"#,
                x + (bar_w - 4.0) / 2.0,
                base - bh - 4.0,
                esc(&text)
            );
        }
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{base}" x2="{:.1}" y2="{base}" stroke="black"/>"#,
            gx + 10.0,
            gx + group_w - 10.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            gx + group_w / 2.0,
            base + 18.0,
            esc(&if unit.is_empty() {
                label.to_string()
            } else {
                format!("{label} ({})", unit.trim())
            })
        );
    }
    let caption = [
        format!(
            "Each group is scaled to its largest value. Fleet AFR {:.2}% (the file's {:.2}%); \
             repair {:.0} MB/s per stream, {} streams per disk.",
            f.fleet_afr * 100.0,
            f.file_afr * 100.0,
            r.params.repair_bytes_per_s / 1e6,
            r.params.repair_streams
        ),
        format!(
            "Disk histories: {} {}drives of {}.",
            f.drives_used,
            if f.held_out_only { "held-out " } else { "" },
            f.health_file
        ),
        format!(
            "Data: Backblaze drive stats (Backblaze Hard Drive Data and Stats, {BACKBLAZE_URL})."
        ),
    ];
    for (i, c) in caption.iter().enumerate() {
        let _ = writeln!(
            s,
            r#"<text x="40" y="{}" font-size="11">{}</text>"#,
            base + 50.0 + i as f64 * 16.0,
            esc(c)
        );
    }
    s.push_str("</svg>\n");
    s
}
