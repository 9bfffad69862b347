//! Access analysis and re-sharding end to end, on real mounts: the planted synthetic trace
//! (fixtures/planted.csv.gz, made by fixtures/gen-planted) is replayed through FUSE, the
//! analyzer must find its hot set and co-access groups, re-sharding must separate hot from
//! cold and keep groups together without changing a byte, and a migration killed with
//! kill -9 must resume at the next mount and lose nothing.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

const TRACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/planted.csv.gz");
const TRUTH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/planted.truth.json");
const SHARD_OPTS: [&str; 6] = [
    "--reshard-interval-s",
    "0",
    "--shard-size-max",
    "16MiB",
    "--shard-size-min",
    "2MiB",
];

type Ext = (String, u64);

fn ext(v: &serde_json::Value) -> Ext {
    (
        v["path"].as_str().unwrap().to_string(),
        v["index"].as_u64().unwrap(),
    )
}

fn drop_caches() {
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

fn hashes(mnt: &Path) -> HashMap<PathBuf, blake3::Hash> {
    drop_caches();
    ["vol0", "vol1"]
        .iter()
        .map(|v| {
            let p = mnt.join(v);
            let d = std::fs::read(&p).unwrap();
            (p, blake3::hash(&d))
        })
        .collect()
}

/// Replays the planted trace back to back with O_DIRECT (a block trace, so every request
/// reaches the filesystem), checking every read; waits until the analyzer has every event.
fn replay(p: &Pool) {
    let out = run_ok(&[
        "trace",
        "replay",
        TRACE,
        p.mnt.to_str().unwrap(),
        "--fast",
        "--direct",
        "--verify",
    ]);
    assert!(out.contains("0 mismatch"), "{out}");
    let t0 = Instant::now();
    loop {
        let h = p.json(&["heat"]);
        if h["stats"]["events_applied"].as_u64() >= Some(20_000) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "events: {:#}",
            h["stats"]
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn pairs_of(groups: &[Vec<Ext>]) -> HashSet<(Ext, Ext)> {
    let mut out = HashSet::new();
    for g in groups {
        for (i, a) in g.iter().enumerate() {
            for b in &g[i + 1..] {
                out.insert(if a < b {
                    (a.clone(), b.clone())
                } else {
                    (b.clone(), a.clone())
                });
            }
        }
    }
    out
}

fn precision_recall<T: Eq + std::hash::Hash>(found: &HashSet<T>, truth: &HashSet<T>) -> (f64, f64) {
    let hit = found.intersection(truth).count() as f64;
    (
        hit / found.len().max(1) as f64,
        hit / truth.len().max(1) as f64,
    )
}

/// Shard of every extent, from `shards --json`.
fn shard_map(p: &Pool) -> (HashMap<Ext, u64>, HashMap<u64, String>) {
    let s = p.json(&["shards"]);
    let mut at = HashMap::new();
    let mut class = HashMap::new();
    for sh in s["shards"].as_array().unwrap() {
        let id = sh["id"].as_u64().unwrap();
        class.insert(id, sh["class"].as_str().unwrap().to_string());
        for e in sh["extents"].as_array().unwrap() {
            at.insert(ext(e), id);
        }
    }
    (at, class)
}

#[test]
fn planted_trace_hot_set_and_groups_are_found_and_resharded() {
    if !fuse_available() {
        return;
    }
    let mut p = Pool::new(4, 2, "1MiB");
    p.mount_with(&SHARD_OPTS);
    replay(&p);
    let truth: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(TRUTH).unwrap()).unwrap();
    let heat = p.json(&["heat"]);

    // The hot set.
    let hot_truth: HashSet<Ext> = truth["hot"].as_array().unwrap().iter().map(ext).collect();
    let class: HashMap<Ext, String> = heat["extents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (ext(e), e["class"].as_str().unwrap().to_string()))
        .collect();
    let hot: HashSet<Ext> = class
        .iter()
        .filter(|(_, c)| *c == "hot")
        .map(|(e, _)| e.clone())
        .collect();
    let (prec, rec) = precision_recall(&hot, &hot_truth);
    eprintln!("hot set: precision {prec:.2} recall {rec:.2}");
    assert!(prec >= 0.9 && rec >= 0.9, "hot {hot:?} vs {hot_truth:?}");
    // Hottest first.
    let h: Vec<f64> = heat["extents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["read_heat"].as_f64().unwrap() + e["write_heat"].as_f64().unwrap())
        .collect();
    assert!(h.windows(2).all(|w| w[0] >= w[1]));

    // The groups. The nightly set is only ever read together within its hour, so replayed
    // back to back it is a co-access group too.
    let mut planted: Vec<Vec<Ext>> = truth["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_array().unwrap().iter().map(ext).collect())
        .collect();
    planted.push(
        truth["nightly"]
            .as_array()
            .unwrap()
            .iter()
            .map(ext)
            .collect(),
    );
    let found: Vec<Vec<Ext>> = heat["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_array().unwrap().iter().map(ext).collect())
        .collect();
    let (gp, gr) = precision_recall(&pairs_of(&found), &pairs_of(&planted));
    eprintln!("groups: pair precision {gp:.2} recall {gr:.2}");
    assert!(gp >= 0.9 && gr >= 0.9, "found {found:?}");

    // Re-shard.
    let before = hashes(&p.mnt);
    let dry = p.json(&["reshard", "--dry-run"]);
    assert!(dry["moves"].as_u64().unwrap() > 0, "{dry:#}");
    let out = run_ok(&["reshard", p.pool.to_str().unwrap(), "--wait", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["migration"]["moves_done"], v["plan"]["moves"], "{v:#}");
    // Hysteresis: planned again at once, nothing is left to do (checked before the reads
    // below, which are new co-accesses of their own).
    let again = p.json(&["reshard", "--dry-run"]);
    assert_eq!(again["moves"].as_u64(), Some(0), "{again:#}");
    let (at, shard_class) = shard_map(&p);
    let heat = p.json(&["heat"]);
    let class: HashMap<Ext, String> = heat["extents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (ext(e), e["class"].as_str().unwrap().to_string()))
        .collect();
    // No shard mixes hot and cold (never-seen extents are cold).
    let mut kinds: HashMap<u64, HashSet<String>> = HashMap::new();
    for (e, s) in &at {
        let c = class.get(e).cloned().unwrap_or_else(|| "cold".into());
        kinds.entry(*s).or_default().insert(c.clone());
        if c == "hot" {
            assert_eq!(shard_class[s], "hot", "hot extent {e:?} in shard {s}");
        }
    }
    for (s, k) in &kinds {
        assert!(
            !(k.contains("hot") && k.contains("cold")),
            "shard {s} mixes {k:?}"
        );
    }
    // Co-access pairs share a shard.
    let pairs = pairs_of(&planted);
    let together = pairs.iter().filter(|(a, b)| at[a] == at[b]).count();
    let frac = together as f64 / pairs.len() as f64;
    eprintln!("co-access pairs in one shard: {frac:.2}");
    assert!(frac >= 0.9);
    assert_eq!(hashes(&p.mnt), before, "data changed by re-sharding");
    let (clean, out) = p.fsck(false);
    assert!(clean, "{out}");
    // What was learned survives a remount (compared with what the analyzer held just before
    // it: the reads above added sequential co-accesses of their own).
    let learned = |h: &serde_json::Value| {
        let hot: HashSet<Ext> = h["extents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["class"] == "hot")
            .map(ext)
            .collect();
        let mut groups: Vec<Vec<Ext>> = h["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g.as_array().unwrap().iter().map(ext).collect())
            .collect();
        groups.sort();
        (hot, groups)
    };
    let before_umount = learned(&p.json(&["heat"]));
    p.umount();
    p.mount_with(&SHARD_OPTS);
    assert_eq!(learned(&p.json(&["heat"])), before_umount);
}

#[test]
fn kill_during_migration_resumes_and_loses_nothing() {
    if !fuse_available() {
        return;
    }
    let mut p = Pool::new(4, 2, "1MiB");
    let mut slow = SHARD_OPTS.to_vec();
    slow.extend(["--migration-rate", "2MiB", "--migration-chunk", "1MiB"]);
    p.mount_with(&slow);
    replay(&p);
    let before = hashes(&p.mnt);
    let (at_start, _) = shard_map(&p);
    let plan = p.json(&["reshard"]);
    let moves = plan["moves"].as_u64().unwrap();
    assert!(moves >= 10, "{plan:#}");
    p.wait_status(30, "migration under way", |s| {
        s["migration"]["moves_done"].as_u64().unwrap_or(0) >= 2
    });
    p.crash();
    // Nothing to ask a dead daemon: the committed moves are in the shard map (a move may go
    // to a hot shard or to a group's shard, in key order, so count shard changes).
    let done_before = {
        let (at, _) = shard_map(&p);
        at.iter()
            .filter(|(e, s)| at_start.get(e) != Some(s))
            .count()
    };
    assert!(
        done_before > 0 && (done_before as u64) < moves,
        "killed mid-migration: {done_before} of {moves} moves committed; plan {plan:#}"
    );
    let (clean, out) = p.fsck(false);
    assert!(clean, "after kill -9: {out}");
    p.mount_with(&SHARD_OPTS);
    let st = p.wait_status(120, "migration resumed and finished", |s| {
        s["migration"]["state"] == "idle" && s["migration"]["pending_moves"] == 0
    });
    eprintln!("resumed: {:#}", st["migration"]);
    assert!(st["migration"]["moves_done"].as_u64().unwrap() > 0);
    assert_eq!(hashes(&p.mnt), before, "data changed");
    let (clean, out) = p.fsck(false);
    assert!(clean, "{out}");
    // Every extent sits on exactly its shard's disks.
    let s = p.json(&["shards"]);
    for sh in s["shards"].as_array().unwrap() {
        let mut disks: Vec<u64> = sh["disks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        disks.sort();
        for e in sh["extents"].as_array().unwrap() {
            let mut r: Vec<u64> = e["replicas"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .collect();
            r.sort();
            assert_eq!(r, disks, "{e:#} in shard {}", sh["id"]);
        }
    }
}
