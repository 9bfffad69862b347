//! The recovery report: scripts/bench-recovery's table (medians per configuration), the
//! targets, and the foreground table (one row per recovery profile) with the ordering check.

use serde_json::{json, Value};

use super::fg::{nominal_share, PROFILES};
use super::timing::ordered;
use crate::render::{medians_by_test, target_lines, Part, Table};
use crate::results::{Results, FOREGROUND_TESTS, RECOVERY_TESTS};

const COLUMNS: [(&str, &str); 4] = [
    ("fs-pool", "foreshard-pool"),
    ("fs-reactive", "foreshard-reactive"),
    ("plain", "plain-copy"),
    ("btrfs", "btrfs"),
];

fn decimals(test: &str) -> usize {
    match test {
        "detect_ms" | "bytes_mib" => 0,
        "full_s" | "fg_kept" | "rec_s" | "rec_share" | "fg_idle_daemon_counted" => 2,
        _ => 1,
    }
}

fn cell(test: &str, v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.*}", decimals(test)))
}

/// The profiles that ran, in their order.
fn profiles(r: &Results) -> Vec<&'static str> {
    let ran = |p: &str| r.samples.iter().any(|s| s.config == format!("fg-{p}"));
    PROFILES.iter().copied().filter(|p| ran(p)).collect()
}

/// Whether fg kept decreases and the recovery rate increases over the profiles.
pub fn ordering(r: &Results) -> Value {
    let ps = profiles(r);
    let med = |t: &str| {
        ps.iter()
            .map(|p| r.median(t, &format!("fg-{p}")))
            .collect::<Vec<_>>()
    };
    json!({
        "fg_kept": ordered(&med("fg_kept"), true),
        "rec_mibs": ordered(&med("rec_mibs"), false),
    })
}

fn header(r: &Results) -> Vec<Part> {
    let (h, p, s) = (&r.host, &r.params, &r.extra["setup"]);
    let runs = if p.runs > 1 { " (medians)" } else { "" };
    let mut v = vec![
        Part::Line(format!("foreshard recovery benchmark: nproc={} kernel={} date={}", h.nproc, h.kernel, h.date)),
        Part::Line(format!(
            "{} disks, {}, {} replicas; {} files, {} MiB of data; {} run(s){runs}; --missing-grace-ms {}",
            h.ndisks, h.disk_kind, s["replicas"], p.nfiles, p.file_mib, p.runs, s["missing_grace_ms"]
        )),
    ];
    for c in r
        .configs
        .iter()
        .filter(|c| !c.detail.is_empty() && !c.name.starts_with("fg-"))
    {
        v.push(Part::Line(format!("{}: {}", c.name, c.detail)));
    }
    v.push(Part::Line(format!(
        "commit: {}",
        r.commit.as_deref().unwrap_or("?")
    )));
    v
}

fn foreground(r: &Results) -> Vec<Part> {
    let ps = profiles(r);
    if ps.is_empty() {
        return Vec::new();
    }
    let s = &r.extra["setup"];
    let mut head = vec!["profile".to_string(), "profile share".into()];
    head.extend(FOREGROUND_TESTS[..6].iter().map(|t| t.1.to_string()));
    let rows = ps
        .iter()
        .map(|p| {
            let mut row = vec![
                p.to_string(),
                format!("{:.2}", nominal_share(p).unwrap_or(0.0)),
            ];
            row.extend(
                FOREGROUND_TESTS[..6]
                    .iter()
                    .map(|t| cell(t.0, r.median(t.0, &format!("fg-{p}")))),
            );
            row
        })
        .collect();
    let mut v = vec![
        Part::Gap,
        Part::Line(format!(
            "foreground reads during recovery: {} MiB of data + a {} MiB client file; fio, 1 MiB O_DIRECT sequential reads of the client file; {} s alone, then disk1 yanked {} s into a second run",
            s["fg_data_mib"], s["fg_client_mib"], s["fg_idle_s"], s["fg_lead_s"]
        )),
        Part::Gap,
        Part::Table(Table { head, rows }),
        Part::Gap,
        Part::Line("fg during = reads completed between detection and done / that window; kept = during / idle; recovery = bytes_total / (done - detected); share = recovery / (recovery + fg during).".into()),
    ];
    let o = ordering(r);
    for (k, what) in [
        ("fg_kept", "fg kept decreases"),
        ("rec_mibs", "recovery rate increases"),
    ] {
        let vals: Vec<String> = ps
            .iter()
            .map(|p| cell("rec_s", r.median(k, &format!("fg-{p}"))))
            .collect();
        let ok = match o[k].as_bool() {
            None => "n/a",
            Some(true) => "yes",
            Some(false) => "NO",
        };
        v.push(Part::Line(format!(
            "ordering (expected, informative): {what} {}: {ok} ({})",
            ps.join(" -> "),
            vals.join(", ")
        )));
    }
    v
}

/// btrfs's failed device per run (from the raw records).
fn btrfs_devices(r: &Results) -> Option<String> {
    let runs = r.extra.get("runs")?.as_array()?;
    let each: Vec<String> = runs
        .iter()
        .filter_map(|run| {
            let b = &run["configs"]["btrfs"];
            let mib = b["bytes"].as_f64()? / 1048576.0;
            Some(format!(
                "devid {} ({mib:.0} MiB of data)",
                b["failed_devid"]
            ))
        })
        .collect();
    (!each.is_empty()).then(|| format!("btrfs failed device per run: {}", each.join(", ")))
}

pub fn parts(r: &Results) -> Vec<Part> {
    let mut v = header(r);
    v.push(Part::Gap);
    let cols: Vec<(&str, &str)> = COLUMNS
        .iter()
        .copied()
        .filter(|c| r.configs.iter().any(|x| x.name == c.0))
        .collect();
    v.push(Part::Table(medians_by_test(
        r,
        &RECOVERY_TESTS,
        &cols,
        cell,
    )));
    v.push(Part::Gap);
    v.push(Part::Line("targets (informative):".into()));
    v.extend(
        target_lines(r)
            .into_iter()
            .map(|l| Part::Line(format!("  {l}"))),
    );
    v.push(Part::Gap);
    v.push(Part::Line("detection = detected_at - T0 (yank); activation = first re-replicated extent - detection; foreshard time = done - T0; rate = bytes / (done - detected). btrfs: time and rate of 'btrfs replace' alone (no detection). plain-copy: 2 parallel cp + sync of the same bytes.".into()));
    v.extend(btrfs_devices(r).map(Part::Line));
    v.extend(crate::render::spreads(r, &RECOVERY_TESTS, &cols, cell));
    v.extend(foreground(r));
    let fg: Vec<(String, String)> = profiles(r)
        .iter()
        .map(|p| (format!("fg-{p}"), p.to_string()))
        .collect();
    let fg: Vec<(&str, &str)> = fg.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    if !fg.is_empty() {
        let spread = crate::render::spreads(r, &FOREGROUND_TESTS[..6], &fg, cell);
        // The ratios were listed with the main table's spreads.
        v.extend(spread.into_iter().filter(|p| !matches!(p, Part::Line(_))));
    }
    v
}
