use std::path::{Path, PathBuf};

use super::*;

/// A small Backblaze-format file: `drives` drives over 40 days; every `fail_every`-th drive
/// fails between day 20 and 39, its reallocated (5) and pending (197) sector counts climbing
/// over the 12 days before (the drives announce themselves); the others stay clean.
pub(crate) fn synthetic(dir: &Path, drives: usize, fail_every: usize) -> PathBuf {
    let mut text = String::from(
        "date,serial_number,model,capacity_bytes,failure,smart_1_raw,smart_5_raw,smart_9_raw,smart_194_raw,smart_197_raw\n",
    );
    let mut x: u64 = 0x9e37_79b9;
    let mut rnd = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for drive in 0..drives {
        let fails = fail_every > 0 && drive % fail_every == 0;
        let last = if fails { 20 + rnd() % 20 } else { 40 };
        for day in 0..last {
            let date = if day < 30 {
                format!("2013-04-{:02}", day + 1)
            } else {
                format!("2013-05-{:02}", day - 29)
            };
            let climb = if fails {
                (day + 12).saturating_sub(last)
            } else {
                0
            };
            let failure = u8::from(fails && day == last - 1);
            text += &format!(
                "{date},SYN{drive:04},SYN MODEL,4000787030016,{failure},0,{},{},30,{}\n",
                climb * 40,
                10_000 + day * 24,
                climb * 15
            );
        }
    }
    let p = dir.join("drives.csv");
    std::fs::write(&p, text).unwrap();
    p
}

fn args(health: &Path, disks: usize, years: f64) -> SimArgs {
    SimArgs {
        disks,
        years,
        health: health.to_path_buf(),
        seed: 7,
        json: false,
        svg: None,
        model: None,
        replicas: 2,
        capacity_tb: 4.0,
        fill: 0.7,
        shard_size_gib: 256.0,
        repair_rate_mb_s: 100.0,
        repair_streams: 2,
        detect_s: 300.0,
        risk_warn: 0.05,
        evacuate_p: 0.1,
        evacuate_rate_mb_s: 50.0,
        scatter: 4,
        sample: 32,
        hosts: 1,
        all_drives: true,
    }
}

fn checked(a: &SimArgs) -> SimReport {
    let mut p = a.params().unwrap();
    p.check_invariants = true;
    simulate_with(a, p).unwrap()
}

fn by_name<'a>(r: &'a SimReport, name: &str) -> &'a Outcome {
    r.policies.iter().find(|o| o.name == name).unwrap()
}

#[test]
fn the_same_seed_gives_the_same_results() {
    let dir = tempfile::tempdir().unwrap();
    let f = synthetic(dir.path(), 120, 6);
    let a = args(&f, 60, 1.0);
    let json = |r: &SimReport| serde_json::to_string(&(&r.policies, &r.fleet)).unwrap();
    let (r1, r2) = (simulate(&a).unwrap(), simulate(&a).unwrap());
    assert_eq!(json(&r1), json(&r2));
    let names: Vec<&str> = r1.policies.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["random", "copyset", "risk", "risk+evacuate"]);
    // Every policy sees the same failures.
    assert!(r1.fleet.failures > 0);
    assert!(r1.policies.iter().all(|o| o.failures == r1.fleet.failures));
    let mut b = a.clone();
    b.seed = 8;
    assert_ne!(json(&simulate(&b).unwrap()), json(&r1));
}

#[test]
fn the_fleet_fails_at_the_files_rate() {
    let dir = tempfile::tempdir().unwrap();
    let f = synthetic(dir.path(), 200, 10);
    let mut a = args(&f, 400, 3.0);
    a.fill = 0.3;
    let r = simulate(&a).unwrap();
    let (fleet, file) = (r.fleet.fleet_afr, r.fleet.file_afr);
    // 20 failures in 200 x ~38 drive-days: about 96% a year.
    assert!(file > 0.5, "{file}");
    assert!(
        (fleet / file - 1.0).abs() < 0.15,
        "fleet {fleet} vs file {file}"
    );
}

#[test]
fn three_replicas_lose_nothing_on_a_small_healthy_fleet() {
    let dir = tempfile::tempdir().unwrap();
    // One drive in 40 fails: a few failures a year in 40 disks.
    let f = synthetic(dir.path(), 200, 40);
    let mut a = args(&f, 40, 2.0);
    a.replicas = 3;
    let r = checked(&a);
    assert!(r.fleet.failures > 0);
    for o in &r.policies {
        assert_eq!(o.data_loss_events, 0, "{o:?}");
        // Evacuation may empty every failing disk in time; the others rebuild.
        assert!(o.rebuilt_bytes > 0 || o.name == "risk+evacuate", "{o:?}");
    }
}

#[test]
fn evacuation_moves_data_off_announced_failures_before_they_happen() {
    let dir = tempfile::tempdir().unwrap();
    let f = synthetic(dir.path(), 200, 8);
    let r = checked(&args(&f, 100, 2.0));
    let (random, evac) = (by_name(&r, "random"), by_name(&r, "risk+evacuate"));
    assert!(evac.migrated_bytes > 0, "{evac:?}");
    assert!(evac.evacuations_started > 0);
    assert!(
        evac.rebuilt_bytes < random.rebuilt_bytes / 2,
        "{evac:?} vs {random:?}"
    );
    assert!(evac.degraded_byte_hours < random.degraded_byte_hours);
    // Only evacuation migrates.
    for o in &r.policies[..3] {
        assert_eq!(o.migrated_bytes, 0, "{o:?}");
    }
}

/// Bookkeeping holds every simulated day under stress: nearly full disks, frequent failures,
/// slow repairs; the invariant check (`Sim::check`) asserts that a disk's space is its
/// replicas plus reservations and never above capacity, and that no shard has more than
/// `replicas` copies (live plus repairs) or two on one disk.
#[test]
fn bytes_are_conserved_and_full_disks_never_receive() {
    let dir = tempfile::tempdir().unwrap();
    let f = synthetic(dir.path(), 100, 3);
    for replicas in [1, 2, 3] {
        let mut a = args(&f, 12, 1.0);
        a.replicas = replicas;
        a.fill = 0.9;
        a.repair_rate_mb_s = 5.0;
        a.repair_streams = 1;
        a.evacuate_rate_mb_s = 5.0;
        let r = checked(&a);
        for o in &r.policies {
            assert!(o.failures > 10, "{o:?}");
            if replicas == 1 {
                // One replica: every failure of a disk with data loses it.
                assert!(o.data_loss_events > 0, "{o:?}");
            }
        }
    }
}

#[test]
fn replicas_spread_over_hosts_while_enough_have_room() {
    let dir = tempfile::tempdir().unwrap();
    let f = synthetic(dir.path(), 200, 8);
    let mut a = args(&f, 100, 1.0);
    a.replicas = 3;
    a.fill = 0.5;
    a.hosts = 4;
    let r = checked(&a);
    for o in &r.policies {
        assert!(o.repairs > 0 || o.migrated_bytes > 0, "{o:?}");
        // Copysets are cut from random permutations, blind to hosts.
        let shared = o.name == "copyset";
        assert_eq!(o.shared_host_placements > 0, shared, "{o:?}");
    }
    let table = report::table(&r);
    assert!(
        table.contains("hosts: 4 (disk d on host d mod 4)"),
        "{table}"
    );
    assert!(table.contains("random 0, copyset "), "{table}");
    // Two hosts for three replicas: every placement shares one, and that is counted.
    a.hosts = 2;
    let r = checked(&a);
    let risk = by_name(&r, "risk");
    assert!(risk.shared_host_placements >= risk.shards, "{risk:?}");
    // One host: nothing counted, and the report reads as before hosts existed.
    a.hosts = 1;
    let r = checked(&a);
    assert!(r.policies.iter().all(|o| o.shared_host_placements == 0));
    let json = serde_json::to_string(&r).unwrap();
    assert!(!json.contains("hosts"), "{json}");
    assert!(!report::table(&r).contains("host"));
}

#[test]
fn bad_input_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let f = synthetic(dir.path(), 20, 5);
    let err = |a: &SimArgs| format!("{:#}", simulate(a).expect_err("refused"));
    let mut a = args(&f, 0, 1.0);
    assert!(err(&a).contains("--disks"), "{}", err(&a));
    a.disks = 2;
    a.replicas = 3;
    assert!(err(&a).contains("--replicas 3 needs at least 3 disks"));
    a.replicas = 2;
    a.years = 0.0;
    assert!(err(&a).contains("--years"));
    a.years = 1.0;
    a.hosts = 0;
    assert!(err(&a).contains("--hosts"), "{}", err(&a));
    a.hosts = 3;
    assert!(err(&a).contains("--hosts must be between 1 and --disks"));
    a.hosts = 1;
    a.health = dir.path().join("missing.csv");
    assert!(err(&a).contains("missing.csv"), "{}", err(&a));
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "date,serial_number,failure\n2013-04-01,A,7\n").unwrap();
    a.health = bad;
    let e = err(&a);
    assert!(e.contains("line 2") && e.contains("failure"), "{e}");
    let nodrives = dir.path().join("empty.csv");
    std::fs::write(&nodrives, "date,serial_number,failure\n").unwrap();
    a.health = nodrives;
    assert!(err(&a).contains("no drive rows"));
}

#[test]
fn the_chart_and_table_name_every_policy_and_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let f = synthetic(dir.path(), 60, 6);
    let r = simulate(&args(&f, 30, 0.5)).unwrap();
    let svg = report::svg(&r);
    assert!(svg.starts_with("<?xml") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("Data: Backblaze drive stats"));
    well_formed(&svg);
    let table = report::table(&r);
    for name in ["random", "copyset", "risk", "risk+evacuate"] {
        assert!(svg.contains(&format!(">{name}<")), "{name}");
        assert!(table.contains(name));
    }
    assert!(table.contains(BACKBLAZE_URL));
}

/// Every element is closed in order, and text holds no bare `<` or `&`.
fn well_formed(xml: &str) {
    let mut stack: Vec<&str> = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find('<') {
        let text = &rest[..i];
        assert!(
            !text.contains('>')
                && text
                    .replace("&amp;", "")
                    .replace("&lt;", "")
                    .replace("&gt;", "")
                    .replace("&quot;", "")
                    .find('&')
                    .is_none(),
            "bad text {text:?}"
        );
        let j = rest[i..].find('>').expect("tag closed") + i;
        let tag = &rest[i + 1..j];
        rest = &rest[j + 1..];
        if tag.starts_with('?') {
            continue;
        }
        let name = tag
            .trim_start_matches('/')
            .split([' ', '/'])
            .next()
            .unwrap();
        if let Some(end) = tag.strip_prefix('/') {
            assert_eq!(stack.pop(), Some(end.trim()), "unbalanced </{end}>");
        } else if !tag.ends_with('/') {
            stack.push(name);
        }
    }
    assert!(stack.is_empty(), "unclosed {stack:?}");
}

#[test]
fn by_default_only_drives_the_model_never_saw_make_the_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let f = synthetic(dir.path(), 200, 8);
    let mut a = args(&f, 20, 0.2);
    a.all_drives = false;
    let r = simulate(&a).unwrap();
    let model = fleet::load_model(None).unwrap();
    let held_out = (0..200)
        .filter(|d| model.is_test(&format!("SYN{d:04}")))
        .count();
    assert!(r.fleet.held_out_only);
    assert_eq!(
        (r.fleet.drives_used, r.fleet.drives_in_file),
        (held_out, 200)
    );
    assert!(report::table(&r).contains("not trained on"));
}
