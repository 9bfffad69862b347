//! The simulator's table and SVG chart.

use std::fmt::Write;

use super::{SimReport, BACKBLAZE_URL};

const TB: f64 = 1e12;
const GIB: f64 = (1u64 << 30) as f64;

fn pct(x: f64) -> String {
    format!("{:.2}%", x * 100.0)
}

pub fn table(r: &SimReport) -> String {
    let mut s = String::new();
    table_header(&mut s, r);
    table_rows(&mut s, r);
    table_legend(&mut s, r);
    s
}

/// The run's setting: fleet, failures, repair, data.
fn table_header(s: &mut String, r: &SimReport) {
    let (f, p) = (&r.fleet, &r.params);
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
    if p.hosts > 1 {
        let _ = writeln!(
            s,
            "hosts: {} (disk d on host d mod {}); hosts do not fail, only disks",
            p.hosts, p.hosts
        );
    }
    let _ = writeln!(
        s,
        "data: Backblaze Hard Drive Data and Stats ({BACKBLAZE_URL}), {}",
        f.health_file
    );
    let _ = writeln!(s);
}

/// One row per policy under a column header, and a note on stalled repairs.
fn table_rows(s: &mut String, r: &SimReport) {
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
    if r.params.hosts > 1 {
        let shared: Vec<String> = r
            .policies
            .iter()
            .map(|o| format!("{} {}", o.name, o.shared_host_placements))
            .collect();
        let _ = writeln!(
            s,
            "placements putting a replica on a host that already held one: {}",
            shared.join(", ")
        );
    }
}

/// What each column means, and the run time.
fn table_legend(s: &mut String, r: &SimReport) {
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
        r.params.replicas, r.elapsed_s
    );
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const COLORS: [&str; 4] = ["#888888", "#4e79a7", "#f28e2b", "#59a14f"];

/// A chart's metric: label, value of a policy's outcome, unit.
type Metric = (&'static str, fn(&super::Outcome) -> f64, &'static str);

const METRICS: [Metric; 5] = [
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

/// The chart's geometry (pixels): size, bars' top and base lines, widths of a metric's group
/// and of a bar.
struct Chart {
    w: f64,
    h: f64,
    top: f64,
    base: f64,
    group_w: f64,
    bar_w: f64,
}

/// A grouped bar chart: one group per metric, one bar per policy, each group scaled to its
/// own largest value (the metrics have different units), values written on the bars.
pub fn svg(r: &SimReport) -> String {
    let (w, h) = (1100.0, 470.0);
    let group_w = (w - 80.0) / METRICS.len() as f64;
    let c = Chart {
        w,
        h,
        top: 70.0,
        base: 360.0,
        group_w,
        bar_w: (group_w - 40.0) / r.policies.len().max(1) as f64,
    };
    let mut s = String::new();
    svg_title(&mut s, r, &c);
    for (g, metric) in METRICS.iter().enumerate() {
        svg_group(&mut s, r, &c, g, metric);
    }
    svg_caption(&mut s, r, &c);
    s.push_str("</svg>\n");
    s
}

/// The SVG header, the title and the policies' colour legend.
fn svg_title(s: &mut String, r: &SimReport, c: &Chart) {
    let (w, h) = (c.w, c.h);
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
}

/// Metric number `g`: a bar per policy with its value on top, a base line and the label.
fn svg_group(s: &mut String, r: &SimReport, c: &Chart, g: usize, metric: &Metric) {
    let (label, get, unit) = metric;
    let (top, base, group_w, bar_w) = (c.top, c.base, c.group_w, c.bar_w);
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
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{}</text>"#,
            x + (bar_w - 4.0) / 2.0,
            base - bh - 4.0,
            esc(&bar_text(*v))
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

/// A bar's value as written on it: whole numbers and large ones without decimals.
fn bar_text(v: f64) -> String {
    if v.fract() == 0.0 || v >= 100.0 {
        format!("{v:.0}")
    } else if v < 10.0 {
        format!("{v:.3}")
    } else {
        format!("{v:.1}")
    }
}

/// The lines under the chart: scaling, fleet and repair, drives, data source.
fn svg_caption(s: &mut String, r: &SimReport, c: &Chart) {
    let f = &r.fleet;
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
    for (i, line) in caption.iter().enumerate() {
        let _ = writeln!(
            s,
            r#"<text x="40" y="{}" font-size="11">{}</text>"#,
            c.base + 50.0 + i as f64 * 16.0,
            esc(line)
        );
    }
}
