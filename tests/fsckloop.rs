//! fsck on a live pool (issue 18): a plain fsck changes nothing, and `fsck --repair` run over
//! and over while a drain, a recovery, an evacuation or a migration copies extents between
//! disks never takes a copy in flight for damage or debris. Each case writes 32 MiB, starts
//! its operation (slowed to 2 MiB/s so it runs for seconds), runs `fsck --repair` and a plain
//! `fsck` in a loop until the operation is done while every file is read, then checks every
//! file's blake3, full replication on exactly the shards' disks, and a clean final fsck.
//!
//! On a 1-replica pool there is no recovery case: a failed disk's extents have no other copy
//! to rebuild from (reads of them fail with EIO and recovery reports the shards lost, which
//! `tests/recovery.rs` covers). A drain, an evacuation and a migration all copy from a disk
//! that stays readable, so they run on both pools.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

const DISKS: usize = 4;
const FILES: usize = 16;
const FILE_BYTES: usize = 2 << 20;
/// Files made hot before a migration (re-sharding moves their extents to hot shards).
const HOT_FILES: usize = 4;
/// The disk drained, failed or evacuated.
const VICTIM: u64 = 1;
/// Longest an operation may take, fsck loop included.
const OP_SECS: u64 = 120;
/// Copies are paced (`rate`) so that each operation runs for several seconds.
const MOUNT_OPTS: [&str; 14] = [
    "--recovery-reservation",
    "512KiB",
    "--migration-chunk",
    "256KiB",
    "--reshard-interval-s",
    "0",
    "--shard-size-max",
    "16MiB",
    "--shard-size-min",
    "2MiB",
    "--risk-interval-s",
    "1",
    "--no-smartctl",
    "--missing-grace-ms=1000",
];

/// Copy rates (recovery, migration budget) that make the operation take 5-10 s: a victim
/// holds 8 MiB (1 replica) or 16 MiB (2 replicas) for a drain, a recovery or an evacuation
/// (at the migration budget); a migration moves the hot set, 16 extents (4 MiB, copied once
/// per replica).
fn rates(op: Op, replicas: u32) -> [&'static str; 2] {
    let r = if replicas == 1 { "1MiB" } else { "2MiB" };
    match op {
        Op::Migration => [r, "512KiB"],
        _ => [r, r],
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Drain,
    Recovery,
    Evacuation,
    Migration,
}

struct Case {
    p: Pool,
    op: Op,
    replicas: u32,
    health: PathBuf,
    files: HashMap<PathBuf, blake3::Hash>,
}

/// A smartmon.sh-style textfile with failing counters (as tests/risk.rs writes them).
fn failing_prom() -> String {
    let m = |name: &str, id: u32, v: u64| {
        format!(
            "smartmon_{name}_raw_value{{disk=\"/dev/sdb\",type=\"sat\",smart_id=\"{id}\"}} {v}\n"
        )
    };
    [
        m("reallocated_sector_ct", 5, 5000),
        m("current_pending_sector", 197, 2000),
        m("offline_uncorrectable", 198, 2000),
        m("power_on_hours", 9, 21000),
        m("temperature_celsius", 194, 36),
    ]
    .concat()
}

fn setup(op: Op, replicas: u32) -> Option<Case> {
    if !fuse_available() {
        return None;
    }
    let mut p = Pool::new(DISKS, replicas, "256KiB");
    let health = p.tmp.path().join("health");
    std::fs::create_dir(&health).unwrap();
    let pool = p.pool.to_str().unwrap().to_string();
    set_risk(&pool, &health, "0.06", "0.12");
    let mut opts = MOUNT_OPTS.to_vec();
    let [rr, mr] = rates(op, replicas);
    opts.extend(["--recovery-rate", rr, "--migration-rate", mr]);
    p.mount_with(&opts);
    let files = (0..FILES)
        .map(|i| {
            let path = p.path(&format!("f{i:02}"));
            let data = pattern(FILE_BYTES, 77 + i as u64);
            std::fs::write(&path, &data).unwrap();
            std::fs::File::open(&path).unwrap().sync_all().unwrap();
            (path, blake3::hash(&data))
        })
        .collect();
    p.wait_status(60, "agents ready", |v| v["agents"]["ready"] == true);
    Some(Case {
        p,
        op,
        replicas,
        health,
        files,
    })
}

/// Every file under each disk's `extents/` (extent files, temp files) with its size, inode
/// and modification time: what fsck could change on the disks.
fn listing(p: &Pool) -> BTreeMap<PathBuf, (u64, u64, i64, i64)> {
    let mut out = BTreeMap::new();
    for d in &p.disks {
        let Ok(buckets) = std::fs::read_dir(d.join("extents")) else {
            continue;
        };
        for b in buckets {
            for f in std::fs::read_dir(b.unwrap().path()).unwrap() {
                let f = f.unwrap();
                let m = f.metadata().unwrap();
                out.insert(f.path(), (m.len(), m.ino(), m.mtime(), m.mtime_nsec()));
            }
        }
    }
    out
}

fn fsck_json(p: &Pool, repair: bool) -> serde_json::Value {
    let mut a = vec!["fsck", p.pool.to_str().unwrap(), "--json"];
    if repair {
        a.push("--repair");
    }
    let o = run(&a);
    let text = String::from_utf8_lossy(&o.stdout);
    serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "fsck {a:?} gave no report ({e}): {text}{}",
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

/// Plants a stray extent file (a version no record names) on disk 0 and a temp file; a
/// plain fsck counts the stray as debris and changes nothing, neither on the disks nor in
/// the records. Returns (stray, temp).
fn plain_fsck_changes_nothing(p: &Pool) -> (PathBuf, PathBuf) {
    let (bucket, name) = listing(p)
        .keys()
        .find(|k| k.starts_with(&p.disks[0]))
        .map(|k| {
            (
                k.parent().unwrap().to_path_buf(),
                k.file_name().unwrap().to_owned(),
            )
        })
        .expect("disk 0 holds extents");
    let name = name.to_str().unwrap();
    let (ino, index) = name.rsplit_once('.').unwrap().0.split_once('.').unwrap();
    let stray = bucket.join(format!("{ino}.{index}.fffffffff0"));
    std::fs::copy(bucket.join(name), &stray).unwrap();
    let temp = bucket.join("fsckloop.r1.tmp");
    std::fs::write(&temp, b"a copy in flight").unwrap();
    let (files, shards) = (listing(p), p.json(&["shards"]));
    for _ in 0..2 {
        let r = fsck_json(p, false);
        assert_eq!(r["clean"], true, "{r:#}");
        assert!(
            r["debris"].as_u64().unwrap() >= 1,
            "the stray is debris: {r:#}"
        );
        assert!(r["problems"].as_array().unwrap().is_empty(), "{r:#}");
        assert_eq!(listing(p), files, "a plain fsck changed the disks");
        assert_eq!(
            p.json(&["shards"]),
            shards,
            "a plain fsck changed the records"
        );
    }
    (stray, temp)
}

/// Starts the case's operation on `VICTIM` (migration: on the files made hot).
fn start(c: &Case) {
    let pool = c.p.pool.to_str().unwrap();
    let victim = VICTIM.to_string();
    match c.op {
        Op::Drain => {
            let out = run_ok(&["disk", "remove", pool, &victim, "--no-wait"]);
            assert!(out.contains("draining"), "{out}");
        }
        Op::Recovery => {
            run_ok(&["disk", "fail", pool, &victim]);
        }
        Op::Evacuation => {
            let file = c.health.join(format!("{VICTIM}.prom"));
            std::fs::write(file.with_extension("tmp"), failing_prom()).unwrap();
            std::fs::rename(file.with_extension("tmp"), &file).unwrap();
        }
        Op::Migration => {
            for _ in 0..4 {
                drop_caches();
                for i in 0..HOT_FILES {
                    std::fs::read(c.p.path(&format!("f{i:02}"))).unwrap();
                }
            }
            std::thread::sleep(Duration::from_millis(200)); // the analyzer polls every 20 ms
            let v: serde_json::Value =
                serde_json::from_str(&run_ok(&["reshard", pool, "--json"])).unwrap();
            assert!(
                v["moves"].as_u64().unwrap() > 0,
                "nothing to migrate: {v:#}"
            );
            eprintln!(
                "plan: {} moves, {} bytes, {}",
                v["moves"], v["bytes_to_move"], v["by_reason"]
            );
        }
    }
}

/// Whether the operation is copying (from `status --json`).
fn in_flight(op: Op, v: &serde_json::Value) -> bool {
    match op {
        Op::Drain => disk_state(v, VICTIM) == "draining",
        Op::Recovery => v["recovery"]["state"] == "running",
        Op::Evacuation => v["risk"]["evacuation"]["state"] == "evacuating",
        Op::Migration => {
            v["migration"]["state"] == "migrating"
                || v["migration"]["pending_moves"].as_u64() > Some(0)
        }
    }
}

/// Whether the operation has finished and every extent has its replicas.
fn finished(op: Op, v: &serde_json::Value) -> bool {
    let idle = v["recovery"]["state"] != "running"
        && v["risk"]["evacuation"]["state"] != "evacuating"
        && v["migration"]["state"] != "migrating"
        && v["replica_health"]["under_replicated"] == 0;
    idle && match op {
        Op::Drain => disk_state(v, VICTIM) == "removed",
        Op::Recovery => v["recovery"]["state"] == "done",
        Op::Evacuation => v["risk"]["evacuation"]["evacuated"]
            .as_array()
            .is_some_and(|a| a.iter().any(|d| d.as_u64() == Some(VICTIM))),
        Op::Migration => {
            v["migration"]["pending_moves"] == 0 && v["migration"]["moves_done"].as_u64() > Some(0)
        }
    }
}

/// What one fsck in the loop may report while the operation runs: nothing, except (during
/// a recovery) the failed disk's extents with one replica short, which `--repair` restores.
fn check_report(op: Op, repair: bool, r: &serde_json::Value) {
    let problems: Vec<&str> = r["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    let allowed = |p: &&str| {
        op == Op::Recovery
            && p.contains("has 1 of 2 replicas")
            && (!repair || p.ends_with("(repaired)"))
    };
    assert!(
        problems.iter().all(allowed),
        "fsck{} during {op:?}: {r:#}",
        if repair { " --repair" } else { "" }
    );
    // A plain fsck counts the missing replicas of a recovery in flight as problems left.
    if repair || op != Op::Recovery {
        assert_eq!(r["clean"], true, "fsck during {op:?}: {r:#}");
    }
}

#[derive(Debug, Default)]
struct LoopStats {
    repairs: u64,
    plain: u64,
    /// fsck runs that began or ended while the operation was copying.
    overlapped: u64,
    repaired: u64,
    debris_removed: u64,
    /// Longest `fsck --repair` (it waits for the guard a copy in flight holds).
    repair_secs_max: f64,
    op_secs: f64,
}

/// Runs `fsck --repair` then a plain `fsck` over and over until the operation is done.
fn fsck_loop(c: &Case) -> LoopStats {
    let mut s = LoopStats::default();
    let t0 = Instant::now();
    loop {
        let before = c.p.json(&["status"]);
        if finished(c.op, &before) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(OP_SECS),
            "{:?} not done after {OP_SECS} s: {before:#}",
            c.op
        );
        let t = Instant::now();
        let r = fsck_json(&c.p, true);
        s.repair_secs_max = s.repair_secs_max.max(t.elapsed().as_secs_f64());
        check_report(c.op, true, &r);
        s.repairs += 1;
        s.repaired += r["repaired"].as_u64().unwrap();
        s.debris_removed += r["debris"].as_u64().unwrap();
        let plain = fsck_json(&c.p, false);
        check_report(c.op, false, &plain);
        s.plain += 1;
        if in_flight(c.op, &before) || in_flight(c.op, &c.p.json(&["status"])) {
            s.overlapped += 1;
        }
    }
    s.op_secs = t0.elapsed().as_secs_f64();
    s
}

/// Every extent has `replicas` copies on distinct disks that are up, exactly its shard's
/// placement, none on the victim (but after a migration, which keeps every disk).
fn check_placement(c: &Case) {
    let st = c.p.json(&["status"]);
    assert_eq!(st["replica_health"]["under_replicated"], 0, "{st:#}");
    let up = up_disks(&st);
    let ids = |v: &serde_json::Value| -> Vec<u64> {
        let mut x: Vec<u64> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        x.sort();
        x
    };
    let mut n = 0;
    for s in c.p.json(&["shards"])["shards"].as_array().unwrap() {
        let placed = ids(&s["disks"]);
        for e in s["extents"].as_array().unwrap() {
            let reps = ids(&e["replicas"]);
            assert_eq!(reps.len(), c.replicas as usize, "{e} in shard {}", s["id"]);
            assert_eq!(reps, placed, "{e} not on the disks of shard {}", s["id"]);
            assert!(
                reps.iter().all(|d| up.contains(d)),
                "{e} on a disk not up: {up:?}"
            );
            if c.op != Op::Migration {
                assert!(!reps.contains(&VICTIM), "{e} still on disk {VICTIM}");
            }
            n += 1;
        }
    }
    assert_eq!(
        n,
        FILES * FILE_BYTES / (256 << 10),
        "every extent has a record"
    );
}

/// The stray the loop's first repair removed is gone (through the reaper: within its delay);
/// the temp file is left to start-up cleanup.
fn check_debris(stray: &Path, temp: &Path) {
    let t0 = Instant::now();
    while stray.exists() && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !stray.exists(),
        "fsck --repair left the stray {}",
        stray.display()
    );
    assert!(
        temp.exists(),
        "fsck --repair removed a temp file of a mounted pool"
    );
}

fn run_case(op: Op, replicas: u32) {
    let Some(mut c) = setup(op, replicas) else {
        return;
    };
    let (stray, temp) = plain_fsck_changes_nothing(&c.p);
    let reader = Reader::start(&c.files);
    start(&c);
    let s = fsck_loop(&c);
    let (reads, errors) = reader.finish();
    eprintln!("{op:?}, {replicas} replica(s): {s:?}; {reads} file reads");
    assert_eq!(errors, 0, "reads failed during {op:?}");
    assert!(
        s.overlapped >= 2,
        "fsck ran too little during {op:?}: {s:?}"
    );
    assert!(
        s.debris_removed >= 1,
        "the planted stray was not removed: {s:?}"
    );
    check_all(&c.files);
    check_placement(&c);
    check_debris(&stray, &temp);
    let r = fsck_json(&c.p, false);
    assert_eq!(r["clean"], true, "{r:#}");
    assert!(r["problems"].as_array().unwrap().is_empty(), "{r:#}");
    // Quiet again: a plain fsck changes nothing.
    let files = listing(&c.p);
    fsck_json(&c.p, false);
    assert_eq!(listing(&c.p), files, "a plain fsck changed the disks");
    c.p.umount();
    let (clean, out) = c.p.fsck(false);
    assert!(clean, "offline: {out}");
}

#[test]
fn fsck_repair_loop_during_drain_2_replicas() {
    run_case(Op::Drain, 2);
}

#[test]
fn fsck_repair_loop_during_recovery_2_replicas() {
    run_case(Op::Recovery, 2);
}

#[test]
fn fsck_repair_loop_during_evacuation_2_replicas() {
    run_case(Op::Evacuation, 2);
}

#[test]
fn fsck_repair_loop_during_migration_2_replicas() {
    run_case(Op::Migration, 2);
}

#[test]
fn fsck_repair_loop_during_drain_1_replica() {
    run_case(Op::Drain, 1);
}

#[test]
fn fsck_repair_loop_during_evacuation_1_replica() {
    run_case(Op::Evacuation, 1);
}

#[test]
fn fsck_repair_loop_during_migration_1_replica() {
    run_case(Op::Migration, 1);
}
