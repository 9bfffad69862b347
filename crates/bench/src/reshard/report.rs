//! The re-sharding report: the trace and pool, the before/after table, the migration and
//! analyzer table, the per-disk rebuild bytes and the checks.

use serde_json::Value;

use super::analyze::num;
use crate::render::{medians_by_test, Part};
use crate::results::{Results, RESHARD_RUN_TESTS, RESHARD_TESTS};

const MIB: f64 = 1048576.0;

fn cell(test: &str, v: Option<f64>) -> String {
    let d = match test {
        "cross_fraction"
        | "cross_fraction_weighted"
        | "rebuild_median_mib"
        | "rebuild_max_mib"
        | "hot_mib" => 1,
        "shards_per_group" | "cpu_us_per_event" | "migration_s" => 2,
        t if t.ends_with("_mib") || t.ends_with("_mibs") || t == "gib_per_hour" => 1,
        _ => 0,
    };
    v.map_or("-".into(), |v| format!("{v:.d$}"))
}

fn header(r: &Results) -> Vec<Part> {
    let (t, s) = (&r.extra["trace_stats"], &r.extra["setup"]);
    let f = |k: &str| t[k].as_f64().unwrap_or(0.0);
    let trace = s["trace"].as_str().unwrap_or("?");
    let multi = if r.params.runs > 1 { " - medians" } else { "" };
    vec![
        Part::Line(format!(
            "foreshard re-sharding benchmark: {} (nproc={} kernel={} date={})",
            trace.rsplit('/').next().unwrap_or(trace),
            r.host.nproc,
            r.host.kernel,
            r.host.date
        )),
        Part::Line(format!(
            "trace: {} requests ({} reads, {} writes), {} distinct {:.0} MiB extents, span {:.1} h",
            t["requests"],
            t["reads"],
            t["writes"],
            t["extents"],
            f("extent_size_bytes") / MIB,
            f("span_hours")
        )),
        Part::Line(format!(
            "pool: {} disks ({}, {:.0} MiB each), {} replicas, {} extents; mount {}",
            r.host.ndisks,
            r.host.disk_kind,
            s["disk_bytes"].as_f64().unwrap_or(0.0) / MIB,
            s["replicas"],
            s["extent_size"].as_str().unwrap_or("?"),
            s["mount_args"].as_str().unwrap_or("")
        )),
        Part::Line(format!(
            "replay {}: {}; {} run(s){multi}",
            s["replay"].as_str().unwrap_or(""),
            r.configs[0].detail,
            r.params.runs
        )),
        Part::Line(format!("commit: {}", r.commit.as_deref().unwrap_or("?"))),
    ]
}

fn per_disk(m0: &Value) -> Vec<Part> {
    let rows = |w: &str| {
        m0["rebuild"][w]["per_disk"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let (b, a) = (rows("before"), rows("after"));
    b.iter()
        .zip(&a)
        .map(|(x, y)| {
            let f = |v: &Value| {
                format!(
                    "{:.1} MiB ({} shards)",
                    v["bytes"].as_f64().unwrap_or(0.0) / MIB,
                    v["hot_shards"]
                )
            };
            Part::Line(format!(
                "run 1, disk {} fails: hot-set rebuild {} before, {} after",
                x["disk"],
                f(x),
                f(y)
            ))
        })
        .collect()
}

/// The pair list, shard classes and the daemon's memory of the first run.
fn details(m0: &Value) -> Vec<Part> {
    let classes = |w: &str| {
        let c = m0["shards"][w]["by_class"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let each: Vec<String> = c.iter().map(|(k, n)| format!("{k} {n}")).collect();
        each.join(",")
    };
    let mib = |p: &str| num(m0, p).map_or("-".into(), |b| format!("{:.1}", b / MIB));
    let p = &m0["pairs"];
    vec![
        Part::Line(format!(
            "pairs: {} listed by heat --json of {} tracked; {} left out (an extent holds no data); groups of {}",
            p["listed"], p["tracked"], p["unplaced"], m0["groups"]["heat_groups"]
        )),
        Part::Line(format!("shards by class: {} before, {} after", classes("before"), classes("after"))),
        Part::Line(format!(
            "daemon RSS {} MiB, peak {} MiB (after the replay)",
            mib("analyzer.daemon.rss_bytes"),
            mib("analyzer.daemon.rss_peak_bytes")
        )),
    ]
}

fn checks(r: &Results) -> Vec<Part> {
    let runs = r.extra["runs"].as_array().cloned().unwrap_or_default();
    let Some(m0) = runs.first() else {
        return Vec::new();
    };
    let mism: f64 = runs
        .iter()
        .filter_map(|m| num(m, "replay.mismatches"))
        .sum();
    let mm = &m0["migration"]["plan"];
    let mut v = vec![
        Part::Line(format!(
            "plan: {} moves ({}), {} shards changed, {} formed; budget {:.1} MiB/s",
            mm["moves"], mm["by_reason"], mm["shards_changed"], mm["shards_formed"], num(m0, "migration.budget_bytes_per_s").unwrap_or(0.0) / MIB
        )),
        Part::Line(format!(
            "checks: replay verification {mism} mismatches in every run; fsck clean in every run ({} extents, {} replicas)",
            m0["fsck"]["extents"], m0["fsck"]["replicas_checked"]
        )),
    ];
    v.extend(details(m0));
    v.extend(per_disk(m0));
    for (i, m) in runs.iter().enumerate() {
        for w in m["warnings"].as_array().into_iter().flatten() {
            v.push(Part::Line(format!(
                "warning (run {}): {}",
                i + 1,
                w.as_str().unwrap_or("")
            )));
        }
    }
    v
}

pub fn parts(r: &Results) -> Vec<Part> {
    let mut v = header(r);
    v.push(Part::Gap);
    v.push(Part::Table(medians_by_test(
        r,
        &RESHARD_TESTS,
        &[("before", "before"), ("after", "after")],
        cell,
    )));
    v.push(Part::Gap);
    v.push(Part::Table(medians_by_test(
        r,
        &RESHARD_RUN_TESTS,
        &[("run", "run")],
        cell,
    )));
    v.push(Part::Gap);
    v.extend(checks(r));
    let cols = [("before", "before"), ("after", "after")];
    v.extend(crate::render::spreads(r, &RESHARD_TESTS, &cols, cell));
    v.extend(crate::render::spreads(
        r,
        &RESHARD_RUN_TESTS,
        &[("run", "run")],
        cell,
    ));
    v
}
