//! The command line: init refusals leave nothing behind, clear errors, non-zero exits.

mod common;

use std::fs;
use std::path::Path;

use common::*;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn init(pool: &Path, disks: &[&Path], extra: &[&str]) -> std::process::Output {
    let mut a: Vec<String> = vec!["init".into(), pool.display().to_string()];
    for d in disks {
        a.push("--disk".into());
        a.push(d.display().to_string());
    }
    a.extend(extra.iter().map(|s| s.to_string()));
    run(&a.iter().map(|s| s.as_str()).collect::<Vec<_>>())
}

fn err(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn init_refuses_bad_disks_and_changes_nothing() {
    let t = tmp();
    let (d0, d1) = (t.path().join("d0"), t.path().join("d1"));
    fs::create_dir(&d0).unwrap();
    fs::create_dir(&d1).unwrap();
    let pool = t.path().join("pool");
    let file = t.path().join("file");
    fs::write(&file, b"x").unwrap();
    let missing = t.path().join("missing");
    let link = t.path().join("link");
    std::os::unix::fs::symlink(&d0, &link).unwrap();

    let cases: Vec<(Vec<&Path>, Vec<&str>, &str)> = vec![
        (vec![&d0, &missing], vec![], "cannot access"),
        (vec![&d0, &file], vec![], "not a directory"),
        (vec![&d0, &d0], vec![], "given twice"),
        (vec![&d0, &link], vec![], "given twice"),
        (vec![&d0], vec!["--replicas", "2"], "needs at least"),
        (
            vec![&d0, &d1],
            vec!["--extent-size", "3MiB"],
            "power of two",
        ),
        (vec![&d0, &d1], vec!["--replicas", "0"], "at least 1"),
    ];
    for (disks, extra, want) in cases {
        let o = init(&pool, &disks, &extra);
        assert!(!o.status.success(), "{disks:?} {extra:?} accepted");
        assert!(err(&o).contains(want), "{disks:?}: {}", err(&o));
        assert!(!pool.exists(), "refused init left the pool directory");
        assert!(
            fs::read_dir(&d0).unwrap().next().is_none(),
            "refused init touched a disk"
        );
    }
    // A good init, then: existing pool, disk of another pool.
    let o = init(&pool, &[&d0, &d1], &[]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(d0.join("foreshard.label").exists());
    let o = init(&pool, &[&d0, &d1], &[]);
    assert!(err(&o).contains("already exists"), "{}", err(&o));
    let d2 = t.path().join("d2");
    fs::create_dir(&d2).unwrap();
    let o = init(&t.path().join("pool2"), &[&d2, &d1], &[]);
    assert!(err(&o).contains("already belongs to pool"), "{}", err(&o));
    assert!(fs::read_dir(&d2).unwrap().next().is_none());
    assert!(!t.path().join("pool2").exists());
}

#[test]
fn init_warns_about_shared_filesystem() {
    let t = tmp();
    let (d0, d1) = (t.path().join("d0"), t.path().join("d1"));
    fs::create_dir(&d0).unwrap();
    fs::create_dir(&d1).unwrap();
    let o = init(&t.path().join("pool"), &[&d0, &d1], &[]);
    assert!(o.status.success());
    assert!(err(&o).contains("share one filesystem"), "{}", err(&o));
}

#[test]
fn commands_on_missing_or_bad_pools_fail_clearly() {
    let t = tmp();
    for cmd in ["status", "shards", "fsck"] {
        let o = run(&[cmd, t.path().join("nope").to_str().unwrap()]);
        assert!(!o.status.success());
        assert!(err(&o).contains("no such pool"), "{cmd}: {}", err(&o));
        let o = run(&[cmd, t.path().to_str().unwrap()]);
        assert!(!o.status.success());
        assert!(
            err(&o).contains("not a foreshard pool"),
            "{cmd}: {}",
            err(&o)
        );
    }
    let o = run(&[
        "mount",
        t.path().join("nope").to_str().unwrap(),
        t.path().to_str().unwrap(),
    ]);
    assert!(!o.status.success());
}

#[test]
fn offline_status_shards_fsck() {
    let t = tmp();
    let (d0, d1, d2) = (
        t.path().join("d0"),
        t.path().join("d1"),
        t.path().join("d2"),
    );
    for d in [&d0, &d1, &d2] {
        fs::create_dir(d).unwrap();
    }
    let pool = t.path().join("pool");
    assert!(init(&pool, &[&d0, &d1, &d2], &["--replicas", "2"])
        .status
        .success());
    let p = pool.to_str().unwrap();
    let s: serde_json::Value = serde_json::from_str(&run_ok(&["status", p, "--json"])).unwrap();
    assert_eq!(s["disks"].as_array().unwrap().len(), 3);
    for d in s["disks"].as_array().unwrap() {
        for k in ["id", "path", "state", "used_bytes", "free_bytes", "extents"] {
            assert!(d.get(k).is_some(), "status disk lacks {k}");
        }
        assert_eq!(d["state"], "up");
    }
    let sh: serde_json::Value = serde_json::from_str(&run_ok(&["shards", p, "--json"])).unwrap();
    assert_eq!(sh["extent_size_bytes"], 1 << 20);
    for s in sh["shards"].as_array().unwrap() {
        let disks = s["disks"].as_array().unwrap();
        assert_eq!(disks.len(), 2);
        assert_ne!(disks[0], disks[1]);
        assert!(s["epoch"].as_u64().unwrap() >= 1);
    }
    assert!(run(&["fsck", p]).status.success());
    assert!(run_ok(&["status", p]).contains("DISK"));
}

#[test]
fn mount_errors_are_clear() {
    if !fuse_available() {
        return;
    }
    let mut p = Pool::new(2, 1, "1MiB");
    let o = run(&[
        "mount",
        p.pool.to_str().unwrap(),
        p.tmp.path().join("nowhere").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(err(&o).contains("nowhere"), "{}", err(&o));
    p.mount();
    let other = p.tmp.path().join("mnt2");
    fs::create_dir(&other).unwrap();
    let o = run(&["mount", p.pool.to_str().unwrap(), other.to_str().unwrap()]);
    assert!(
        !o.status.success(),
        "second mount of a mounted pool is refused"
    );
    assert!(err(&o).contains("in use"), "{}", err(&o));
    let o = run(&["umount", other.to_str().unwrap()]);
    assert!(!o.status.success());
    p.umount();
    assert!(p.daemon_pid().is_none());
}

/// A small Backblaze-format file: 60 drives over 40 days, every 6th failing after its
/// reallocated and pending sector counts climb.
fn sim_health(dir: &Path) -> std::path::PathBuf {
    let mut text = String::from(
        "date,serial_number,model,capacity_bytes,failure,smart_5_raw,smart_9_raw,smart_197_raw\n",
    );
    for drive in 0..60u32 {
        let last = if drive % 6 == 0 { 20 + drive % 17 } else { 40 };
        for day in 0..last {
            let date = format!("2013-{:02}-{:02}", 4 + day / 30, 1 + day % 30);
            let climb = if drive % 6 == 0 {
                (day + 10).saturating_sub(last)
            } else {
                0
            };
            let failure = u8::from(drive % 6 == 0 && day == last - 1);
            text += &format!(
                "{date},D{drive},M,4000787030016,{failure},{},{},{}\n",
                climb * 40,
                9000 + day * 24,
                climb * 10
            );
        }
    }
    let p = dir.join("health.csv");
    fs::write(&p, text).unwrap();
    p
}

#[test]
fn sim_compares_the_four_policies_as_json() {
    let t = tmp();
    let h = sim_health(t.path());
    let h = h.to_str().unwrap();
    let svg = t.path().join("sim.svg");
    let args = [
        "sim",
        "--disks",
        "40",
        "--years",
        "1",
        "--health",
        h,
        "--all-drives",
        "--seed",
        "3",
        "--json",
        "--svg",
        svg.to_str().unwrap(),
    ];
    let out = run_ok(&args);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let pols = v["policies"].as_array().unwrap();
    let names: Vec<&str> = pols.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["random", "copyset", "risk", "risk+evacuate"]);
    for p in pols {
        for k in [
            "data_loss_events",
            "degraded_byte_hours",
            "rebuilt_bytes",
            "migrated_bytes",
        ] {
            assert!(p[k].is_number(), "{k} missing in {p}");
        }
    }
    assert!(v["fleet"]["failures"].as_u64().unwrap() > 0, "{v}");
    let again: serde_json::Value = serde_json::from_str(&run_ok(&args)).unwrap();
    for k in ["policies", "fleet"] {
        assert_eq!(again[k], v[k], "same seed, same {k}");
    }
    let chart = fs::read_to_string(&svg).unwrap();
    assert!(chart.contains("Data: Backblaze drive stats") && chart.ends_with("</svg>\n"));
    // The table names its data source.
    let table = run_ok(&[
        "sim",
        "--disks",
        "20",
        "--years",
        "0.2",
        "--health",
        h,
        "--all-drives",
    ]);
    assert!(
        table.contains("risk+evacuate") && table.contains("backblaze.com"),
        "{table}"
    );
}

#[test]
fn sim_refuses_bad_arguments_with_a_message() {
    let t = tmp();
    let h = sim_health(t.path());
    let h = h.to_str().unwrap();
    let bad_file = t.path().join("bad.csv");
    fs::write(
        &bad_file,
        "date,serial_number,failure\n2013-04-01,A,maybe\n",
    )
    .unwrap();
    let bad_file = bad_file.to_str().unwrap();
    for (bad, want) in [
        (
            vec!["--disks", "0", "--years", "1", "--health", h],
            "--disks",
        ),
        (
            vec![
                "--disks",
                "2",
                "--years",
                "1",
                "--health",
                h,
                "--replicas",
                "3",
            ],
            "needs at least 3 disks",
        ),
        (
            vec![
                "--disks",
                "10",
                "--years",
                "1",
                "--health",
                "/nonexistent/x.csv",
            ],
            "/nonexistent/x.csv",
        ),
        (vec!["--disks", "10", "--years", "1"], "--health"),
        (
            vec!["--disks", "10", "--years", "1", "--health", bad_file],
            "line 2",
        ),
    ] {
        let mut a = vec!["sim"];
        a.extend(bad.iter().copied());
        let o = run(&a);
        assert!(!o.status.success(), "{a:?} accepted");
        assert!(err(&o).contains(want), "{a:?}: {}", err(&o));
    }
}
