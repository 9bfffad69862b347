//! Failure risk end to end on a real mount: a health file (node_exporter textfile, as a
//! monitoring agent would write it) makes one disk's SMART counters climb; its risk must
//! rise and cross the evacuation threshold; its replicas must move off while every file
//! stays readable; a malformed file must be reported and ignored; and yanking the disk
//! afterwards must rebuild nothing.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// A smartmon.sh-style textfile for one disk.
fn prom(realloc: u64, pending: u64, uncorrectable: u64) -> String {
    format!(
        "# HELP smartmon_reallocated_sector_ct_raw_value SMART metric\n\
         # TYPE smartmon_reallocated_sector_ct_raw_value gauge\n\
         smartmon_reallocated_sector_ct_raw_value{{disk=\"/dev/sdb\",type=\"sat\",smart_id=\"5\"}} {realloc}\n\
         smartmon_current_pending_sector_raw_value{{disk=\"/dev/sdb\",type=\"sat\",smart_id=\"197\"}} {pending}\n\
         smartmon_offline_uncorrectable_raw_value{{disk=\"/dev/sdb\",type=\"sat\",smart_id=\"198\"}} {uncorrectable}\n\
         smartmon_power_on_hours_raw_value{{disk=\"/dev/sdb\",type=\"sat\",smart_id=\"9\"}} 21000\n\
         smartmon_temperature_celsius_raw_value{{disk=\"/dev/sdb\",type=\"sat\",smart_id=\"194\"}} 36\n"
    )
}

/// Replaces the file the way a collector should (write aside, rename over).
fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn disk_risk(p: &Pool, id: u64) -> serde_json::Value {
    let v = p.json(&["risk"]);
    v["disks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"].as_u64() == Some(id))
        .cloned()
        .unwrap_or_else(|| panic!("disk {id} in {v:#}"))
}

/// Polls `risk --json` for disk `id` until `f` holds.
fn wait_risk(
    p: &Pool,
    id: u64,
    what: &str,
    f: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let t0 = Instant::now();
    loop {
        let d = disk_risk(p, id);
        if f(&d) {
            return d;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}: {d:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn fill(p: &Pool, n: usize) -> HashMap<PathBuf, blake3::Hash> {
    (0..n)
        .map(|i| {
            let path = p.path(&format!("f{i:03}"));
            let data = pattern(4 << 20, 7 + i as u64);
            std::fs::write(&path, &data).unwrap();
            std::fs::File::open(&path).unwrap().sync_all().unwrap();
            (path, blake3::hash(&data))
        })
        .collect()
}

#[test]
fn climbing_counters_evacuate_the_disk_before_it_fails() {
    if !fuse_available() {
        return;
    }
    let mut p = Pool::new(4, 2, "1MiB");
    let health = p.tmp.path().join("health");
    std::fs::create_dir(&health).unwrap();
    let pool = p.pool.to_str().unwrap().to_string();
    // Settings change on an unmounted pool, and a bad one is refused.
    let o = run(&["risk", &pool, "--health-dir", "/nonexistent/health"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/health"));
    let o = run(&["risk", &pool, "--warn", "0.5", "--evacuate", "0.2"]);
    assert!(!o.status.success());
    set_risk(&pool, &health, "0.06", "0.12");
    p.mount_with(&[
        "--risk-interval-s",
        "1",
        "--migration-rate",
        "64MiB",
        "--reshard-interval-s",
        "0",
        "--no-smartctl",
    ]);
    let files = fill(&p, 24); // 96 MiB
    let healthy = wait_risk(&p, 0, "a first score", |d| {
        d["p_fail_30d"].as_f64().is_some()
    });
    assert_eq!(healthy["level"], "ok", "{healthy:#}");

    // The counters climb; the score follows.
    let file = health.join("1.prom");
    let mut last = 0.0;
    for (i, (r5, r197, r198)) in [(0, 0, 0), (40, 8, 8), (5000, 2000, 2000)]
        .into_iter()
        .enumerate()
    {
        write_atomic(&file, &prom(r5, r197, r198));
        let d = wait_risk(&p, 1, "the new counters", |d| {
            d["health"]["smart"]["5"].as_u64() == Some(r5)
        });
        let pf = d["p_fail_30d"].as_f64().unwrap();
        assert!(
            pf >= last,
            "step {i}: risk fell from {last} to {pf} as counters rose"
        );
        assert!(d["source"].as_str().unwrap().contains("1.prom"), "{d:#}");
        last = pf;
    }
    assert!(
        last >= 0.1,
        "failing counters must cross the threshold: {last}"
    );
    let d = disk_risk(&p, 1);
    assert_eq!(d["level"], "evacuate");
    assert!(
        d["factors"][0]["name"]
            .as_str()
            .unwrap()
            .starts_with("log_")
            || d["factors"][0]["name"]
                .as_str()
                .unwrap()
                .starts_with("growth_"),
        "top factor should be an error counter: {d:#}"
    );

    // Its replicas move off while files are read.
    let reader = Reader::start(&files);
    let v = p.wait_status(120, "disk 1 evacuated", |v| {
        v["risk"]["evacuation"]["evacuated"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x.as_u64() == Some(1)))
    });
    let (reads, errors) = reader.finish();
    assert_eq!(errors, 0, "reads failed during evacuation");
    assert!(reads > 0);
    let ev = &v["risk"]["evacuation"];
    assert!(ev["bytes_done"].as_u64().unwrap() >= 40 << 20, "{ev:#}");
    let d1 = v["disks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == 1)
        .unwrap();
    assert_eq!(d1["extents"], 0, "{d1:#}");
    assert_eq!(d1["shards"], 0, "{d1:#}");
    assert_eq!(
        disk_state(&v, 1),
        "up",
        "the disk stays in the pool, readable"
    );
    let text = run_ok(&["status", &pool]);
    assert!(text.contains("evacuation"), "{text}");
    let text = run_ok(&["risk", &pool]);
    assert!(text.contains("evacuate") && text.contains("log_"), "{text}");

    // A malformed file is reported by name and line; the last good score stays.
    write_atomic(
        &file,
        "smartmon_reallocated_sector_ct_raw_value{disk=\"/dev/sdb\",smart_id=\"5\"} many\n",
    );
    let d = wait_risk(&p, 1, "the parse error", |d| d["health_error"].is_string());
    let err = d["health_error"].as_str().unwrap();
    assert!(err.contains("1.prom") && err.contains('1'), "{err}");
    assert!(
        (d["p_fail_30d"].as_f64().unwrap() - last).abs() < 1e-9,
        "{d:#}"
    );

    // New data written now avoids the at-risk disk.
    let mut files = files;
    for i in 0..4 {
        let path = p.path(&format!("new{i}"));
        let data = pattern(2 << 20, 100 + i);
        std::fs::write(&path, &data).unwrap();
        files.insert(path, blake3::hash(&data));
    }
    let shards = p.json(&["shards"]);
    for s in shards["shards"].as_array().unwrap() {
        assert!(
            !s["disks"].as_array().unwrap().iter().any(|d| d == 1),
            "shard {} still placed on the at-risk disk",
            s["id"]
        );
    }
    // The disk now fails: nothing was left on it to rebuild.
    let out = p.inject(&["yank", p.disks[1].to_str().unwrap()]);
    assert!(out.contains("yanked"), "{out}");
    p.wait_status(60, "disk 1 failed", |v| disk_state(v, 1) == "failed");
    let r: serde_json::Value =
        serde_json::from_str(&run_ok(&["recover", &pool, "--wait", "--json"])).unwrap();
    assert_eq!(r["bytes_done"].as_u64().unwrap_or(0), 0, "{r:#}");
    assert!(
        r["lost_shards"].as_array().is_none_or(|a| a.is_empty()),
        "{r:#}"
    );
    check_all(&files);
    assert_fully_replicated(&p);
    p.umount();
    let (clean, out) = p.fsck(false);
    assert!(clean, "{out}");
}
